"""The trained causal-LM fixture, built at a tiny recipe (the real one takes tens of minutes: CI never
builds it). Checks what the real build relies on: the same recipe gives the same bytes, training
beats the unigram floor, and the folder is an ordinary HF causal LM with a manifest."""

import hashlib
import json

import pytest
import torch

from ggcompress import fixtures, wikilm

# ~0.1M params on a 150k-character prefix: ~10 s of CPU a build.
TINY = wikilm.WikiLMRecipe(vocab=384, hidden=64, layers=2, heads=2, intermediate=128, block_size=64,
                           batch_size=8, steps=200, lr=1e-2, warmup_steps=10, log_every=20, eval_every=100,
                           eval_blocks=16, train_chars=150_000)


def _digests(folder) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())
            if p.name != fixtures.MANIFEST}


@pytest.fixture(scope="module")
def two_builds(tmp_path_factory, text_files):
    mp = pytest.MonkeyPatch()
    mp.setattr(fixtures, "text", lambda: text_files)
    out = []
    for tag in ("a", "b"):
        mp.setenv("GGCOMPRESS_CACHE", str(tmp_path_factory.mktemp(tag)))
        out.append(fixtures.wiki_lm(TINY))
    mp.undo()
    return out


def test_same_recipe_same_bytes(two_builds):
    a, b = two_builds
    assert a.name == b.name == wikilm.fixture_name(TINY) != wikilm.fixture_name()
    assert _digests(a) == _digests(b)
    ma, mb = fixtures.read_manifest(a), fixtures.read_manifest(b)
    assert ma["training"]["curve"] == mb["training"]["curve"]
    assert ma["validation"] == mb["validation"]


def test_trains_below_the_unigram_floor(two_builds):
    m = fixtures.read_manifest(two_builds[0])
    assert m["recipe"] == json.loads(json.dumps(TINY.__dict__))
    curve = m["training"]["curve"]
    assert len(curve) == TINY.steps // TINY.log_every and curve[-1]["loss"] < curve[0]["loss"]
    # The floor is the add-one unigram of the same train tokens on the same positions; a model that
    # learned any context must be below it (margin: 0.1 nats, about a 10% perplexity gap).
    assert m["validation"]["loss"] < m["unigram_validation"]["loss"] - 0.1
    assert m["safetensors"]["dtypes"] == {"F32": m["safetensors"]["params"]}


def test_folder_loads_as_causal_lm_and_reproduces_its_loss(two_builds, text_files):
    from ggcompress.methods.train import load_causal_lm, pack, perplexity, tokenize

    folder = two_builds[0]
    model, tok, _ = load_causal_lm(folder)
    assert model.config.model_type == "llama" and tok.eos_token_id is not None
    val = pack(tokenize(text_files[1].read_text().split("\n\n"), tok), TINY.block_size)
    # Same blocks, same fp32 weights: the reloaded model must give the manifest's figure (1e-6
    # relative: batch composition is the same, only the summation order could differ).
    got = perplexity(model, val, batch_size=TINY.batch_size)["loss"]
    assert got == pytest.approx(fixtures.read_manifest(folder)["validation"]["loss"], rel=1e-6)
    assert torch.isfinite(torch.tensor(got))
