"""The CLI's error boundary and output safety, case by case, through the command line (issue 10).

Every case asserts the three things a user of a checkpoint tool needs: one `error:` line naming the
path and what to do (never a traceback), the right exit code (1 failure, 2 usage, 130 SIGINT, 143
SIGTERM), and no data lost: an existing output is byte-identical afterwards, and no partial output,
temp file or empty folder is left behind. I/O faults are injected where the bytes are written (the
file objects of the writers) or, where the machine allows mounting, on a real full / read-only tmpfs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from ggcompress import fixtures
from ggcompress.cli import cli
from ggcompress.errors import GGError, Terminated
from ggcompress.io import checkpoint as ckio
from ggcompress.io.checkpoint import clean_stale_temps, temp_prefix

sys.path.insert(0, str(Path(__file__).parent))
from tinylm import build_model_folder  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    train_txt, _ = fixtures.text()
    path = tmp_path_factory.mktemp("corpus") / "train.txt"
    path.write_text(train_txt.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def tiny(corpus, tmp_path_factory) -> Path:
    return build_model_folder(tmp_path_factory.mktemp("tiny") / "tiny", corpus.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def packed(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("packed") / "tiny.ggz"
    assert CliRunner().invoke(cli, ["pack", str(tiny), "-o", str(out)]).exit_code == 0
    return out


@pytest.fixture(scope="module")
def rf8(tiny, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rf8") / "q"
    assert CliRunner().invoke(cli, ["quantize-rf8", str(tiny), "-o", str(out)]).exit_code == 0
    return out


def run(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(cli, list(args), env=env)


def one_error_line(res, *needles: str) -> str:
    """The result failed with exit 1 and exactly one `error:` line holding every needle; no traceback."""
    assert res.exit_code == 1, (res.exit_code, res.output)
    assert "Traceback" not in res.output, res.output
    errors = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(errors) == 1, res.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])
    return errors[0]


def snapshot(path: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under `path` (or of `path` itself): 'was anything lost'."""
    if path.is_file():
        return {"": hashlib.sha256(path.read_bytes()).hexdigest()}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def leftovers(folder: Path) -> list[str]:
    """Hidden temp files of the writers left in `folder`."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and
                  any(f".{k}-" in p.name for k in ckio.TEMP_KINDS))


class _FullFile:
    """A writable file object that raises ENOSPC once `budget` bytes were written through any of them."""

    def __init__(self, raw, budget: list[int]):
        self._raw, self._budget = raw, budget

    def write(self, data):
        n = len(data.encode()) if isinstance(data, str) else len(memoryview(data).cast("B"))
        self._budget[0] -= n
        if self._budget[0] < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._raw.write(data)

    def __getattr__(self, name):
        return getattr(self._raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._raw.close()


@pytest.fixture
def full_disk(monkeypatch):
    """Make every file the writers open for writing run out of space after `budget[0]` bytes."""
    budget = [0]
    real_open, real_fdopen = open, os.fdopen

    def fake_open(file, mode="r", *a, **k):
        f = real_open(file, mode, *a, **k)
        return _FullFile(f, budget) if any(c in mode for c in "wa+") else f

    def fake_fdopen(fd, mode="r", *a, **k):
        f = real_fdopen(fd, mode, *a, **k)
        return _FullFile(f, budget) if any(c in mode for c in "wa+") else f

    import builtins

    monkeypatch.setattr(os, "fdopen", fake_fdopen)
    monkeypatch.setattr(builtins, "open", fake_open)  # transformers' save_pretrained writes its JSON so
    return budget


# ---------------------------------------------------------------------------------------------- boundary


def test_expected_failure_is_one_line_exit_1(tmp_path) -> None:
    one_error_line(run("pack", str(tmp_path / "nope"), "-o", str(tmp_path / "o.ggz")), "nope", "no such file")


@pytest.mark.parametrize("where", ["before", "after", "env"])
def test_debug_shows_the_traceback_before_or_after_the_subcommand(tmp_path, where) -> None:
    args = ["pack", str(tmp_path / "nope"), "-o", str(tmp_path / "o.ggz")]
    args = {"before": ["--debug", *args], "after": [*args, "--debug"], "env": args}[where]
    res = run(*args, env={"GGCOMPRESS_DEBUG": "1"} if where == "env" else {"GGCOMPRESS_DEBUG": ""})
    assert res.exit_code == 1
    assert "Traceback" in res.stderr and "GGError" in res.stderr
    assert res.stderr.rstrip().splitlines()[-1].startswith("error: ")


def test_usage_error_is_exit_2(tmp_path) -> None:
    res = run("pack", "x", "-o", str(tmp_path / "o.ggz"), "--coder", "zip")
    assert res.exit_code == 2 and "Traceback" not in res.output


def test_a_bug_is_one_line_with_a_debug_hint(tiny, tmp_path, monkeypatch) -> None:
    import ggcompress.codec.pack as pack_mod

    def broken(*a, **k):
        raise TypeError("unsupported operand type(s) for +: 'int' and 'str'")

    monkeypatch.setattr(pack_mod, "_pack_one", broken)
    res = run("pack", str(tiny), "-o", str(tmp_path / "o.ggz"))
    line = one_error_line(res, "internal error", "TypeError", "--debug")
    assert "bug" in line
    assert not (tmp_path / "o.ggz").exists()


@pytest.mark.parametrize("exc, code, word",
                         [(KeyboardInterrupt, 130, "Ctrl-C"), (Terminated, 143, "SIGTERM")])
def test_interrupt_exit_codes_in_process(tiny, tmp_path, monkeypatch, exc, code, word) -> None:
    """Ctrl-C → 130 (not click's `Aborted!` + 1), SIGTERM → 143; the writer's partial output is gone."""
    import ggcompress.codec.pack as pack_mod

    real = pack_mod._Container.add
    calls = [0]

    def add(self, blob):
        calls[0] += 1
        if calls[0] == 3:
            raise exc()
        return real(self, blob)

    monkeypatch.setattr(pack_mod._Container, "add", add)
    res = run("pack", str(tiny), "-o", str(tmp_path / "o.ggz"))
    assert res.exit_code == code, res.output
    assert "Aborted!" not in res.output and "Traceback" not in res.output and word in res.stderr
    assert os.listdir(tmp_path) == []


def test_nul_byte_in_paths(tiny, tmp_path) -> None:
    one_error_line(run("pack", str(tiny), "-o", str(tmp_path / "a\x00b.ggz")), "NUL byte")
    res = CliRunner().invoke(cli, ["pack", "-", "-o", str(tmp_path / "o.ggz")], input=f"{tiny}\x00x\n")
    one_error_line(res, "NUL byte")
    assert os.listdir(tmp_path) == []


def test_diff_on_unreadable_reports(tmp_path) -> None:
    (tmp_path / "dir").mkdir()
    one_error_line(run("diff", str(tmp_path / "dir"), str(tmp_path / "dir")), str(tmp_path / "dir"))
    one_error_line(run("diff", str(tmp_path / "missing.json"), str(tmp_path / "missing.json")),
                   "missing.json")


# ---------------------------------------------------------------------------------------------- OSError


@pytest.mark.parametrize("command", ["pack", "quantize-rf8", "unpack", "dequantize", "init"])
def test_name_too_long(command, tiny, packed, rf8, tmp_path) -> None:
    src = {"unpack": packed, "dequantize": rf8}.get(command, tiny)
    out = tmp_path / ("n" * 300)
    one_error_line(run(command, str(src), "-o", str(out)), "n" * 20, "too long", "shorter name")
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("command", ["pack", "quantize-rf8", "unpack", "dequantize", "init"])
def test_parent_is_a_file(command, tiny, packed, rf8, tmp_path) -> None:
    src = {"unpack": packed, "dequantize": rf8}.get(command, tiny)
    (tmp_path / "file").write_text("keep me")
    one_error_line(run(command, str(src), "-o", str(tmp_path / "file" / "out")), "is a file, not a folder")
    assert (tmp_path / "file").read_text() == "keep me"


def test_force_never_replaces_a_folder_by_a_file_or_a_device(tiny, tmp_path) -> None:
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "precious.txt").write_text("x")
    one_error_line(run("pack", str(tiny), "-o", str(tmp_path / "folder"), "--force"), "is a folder")
    assert (tmp_path / "folder" / "precious.txt").read_text() == "x"
    one_error_line(run("pack", str(tiny), "-o", os.devnull, "--force"), "device")
    assert Path(os.devnull).is_char_device()


@pytest.mark.parametrize("command", ["pack", "quantize-rf8", "unpack", "dequantize", "init"])
def test_disk_full_mid_write_keeps_the_existing_output(command, tiny, packed, rf8, tmp_path,
                                                       full_disk) -> None:
    src = {"unpack": packed, "dequantize": rf8}.get(command, tiny)
    out = tmp_path / ("o.ggz" if command == "pack" else "o")
    if command == "pack":
        out.write_bytes(b"the previous container")
    else:
        out.mkdir()
        (out / "config.json").write_text('{"previous": true}')
    before = snapshot(out)
    # A few KB in, when the writers have started (init: its config.json; its weights go through Rust).
    full_disk[0] = 100 if command == "init" else 3000
    res = run(command, str(src), "-o", str(out), "--force")
    full_disk[0] = 1 << 40
    line = one_error_line(res, str(out), "no space left")
    assert ".tmp-" not in line and ".data-" not in line  # names the output, not a hidden temp file
    assert snapshot(out) == before and leftovers(tmp_path) == []


@pytest.mark.parametrize("errcode, words", [(errno.EROFS, "read-only"), (errno.EACCES, "permission denied")])
def test_unwritable_output_folder(tiny, tmp_path, monkeypatch, errcode, words) -> None:
    """EROFS / EACCES as the kernel reports them when the writer creates its temp file (root ignores
    chmod, so the error is injected at mkstemp/mkdtemp)."""
    def refuse(*a, **k):
        raise OSError(errcode, os.strerror(errcode), str(tmp_path / ".x.tmp-1"))

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    one_error_line(run("pack", str(tiny), "-o", str(tmp_path / "o.ggz")), str(tmp_path / "o.ggz"), words)
    one_error_line(run("quantize-rf8", str(tiny), "-o", str(tmp_path / "q" / "deep")), words)
    assert os.listdir(tmp_path) == []  # not even the parent folders it would have created


def _can_mount() -> bool:
    if os.geteuid() != 0 or not Path("/proc/mounts").exists():
        return False
    with tempfile.TemporaryDirectory() as d:
        ok = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", d], capture_output=True)
        if ok.returncode != 0:
            return False
        subprocess.run(["umount", d], check=True)
    return True


@pytest.fixture
def small_fs(tmp_path):
    """A real 48 KiB tmpfs: real ENOSPC, and EROFS after a read-only remount."""
    if not _can_mount():
        pytest.skip("needs root and mount(8) to make a small real file system")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48k", "tmpfs", str(mnt)], check=True)
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.parametrize("command", ["pack", "quantize-rf8", "unpack", "dequantize", "init"])
def test_real_full_and_read_only_file_system(command, tiny, packed, rf8, small_fs) -> None:
    src = {"unpack": packed, "dequantize": rf8}.get(command, tiny)
    out = small_fs / "out"
    one_error_line(run(command, str(src), "-o", str(out)), str(out), "no space left")
    assert os.listdir(small_fs) == []
    subprocess.run(["mount", "-o", "remount,ro", str(small_fs)], check=True)
    one_error_line(run(command, str(src), "-o", str(out)), str(out), "read-only")


# ---------------------------------------------------------------------------------------------- eval


def test_eval_markdown_is_checked_before_the_evaluation(tiny, tmp_path, monkeypatch) -> None:
    import ggcompress.integrations.evaluation as evaluation  # cli.eval imports evaluate() when it runs

    def never(*a, **k):
        raise AssertionError("the evaluation ran although its --markdown file cannot be written")

    monkeypatch.setattr(evaluation, "evaluate", never)
    (tmp_path / "file").write_text("x")
    text = tmp_path / "t.txt"
    text.write_text("some text\n")
    base = ["eval", str(tiny), "--tasks", "none", "--text", str(text), "--markdown"]
    one_error_line(run(*base, str(tmp_path / "file" / "r.md")), "is a file, not a folder")
    one_error_line(run(*base, str(tmp_path / ("m" * 300 + ".md"))), "too long")
    one_error_line(run(*base, str(tmp_path / "file")), "already exists")


def test_eval_results_survive_a_full_disk(tiny, corpus, tmp_path, full_disk, monkeypatch) -> None:
    import ggcompress.cli.eval as eval_cli

    md = tmp_path / "r.md"
    full_disk[0] = 1 << 40
    real_render = eval_cli.render_markdown

    def render_then_fill_the_disk(report):
        full_disk[0] = 10  # the evaluation is done; the disk fills up just before the file is written
        return real_render(report)

    monkeypatch.setattr(eval_cli, "render_markdown", render_then_fill_the_disk)
    res = run("eval", str(tiny), "--tasks", "none", "--text", str(corpus), "--max-tokens", "64",
              "--window", "32", "--json", "--markdown", str(md))
    one_error_line(res, str(md), "no space left", "table above")
    doc = json.loads(res.stdout)  # the JSON report came out before the file failed
    assert doc["models"][0]["text"]["ppl"] > 1
    assert not md.exists() and leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------------- stale temps


def test_stale_temps_of_killed_runs_are_removed_live_ones_kept(tiny, tmp_path) -> None:
    out = tmp_path / "o.ggz"
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    stale_file = tmp_path / (temp_prefix(out, "data").replace(f"-{os.getpid()}-", f"-{dead.pid}-") + "abc")
    stale_dir = tmp_path / (temp_prefix(out, "tmp").replace(f"-{os.getpid()}-", f"-{dead.pid}-") + "def")
    live = tmp_path / (temp_prefix(out, "tmp") + "mine")  # this process: alive
    other_host = tmp_path / f".o.ggz.tmp-{dead.pid}-00000000-xyz"
    legacy = tmp_path / ".o.ggz.tmp-k3j4h5"  # older versions: no pid
    unrelated = tmp_path / ".other.ggz.tmp-1-00000000-x"
    stale_file.write_bytes(b"x" * 1000)
    stale_dir.mkdir()
    (stale_dir / "shard").write_bytes(b"y")
    for p in (live, other_host, legacy, unrelated):
        p.write_bytes(b"z")
    res = run("pack", str(tiny), "-o", str(out))
    assert res.exit_code == 0, res.output
    assert not stale_file.exists() and not stale_dir.exists()
    assert live.exists() and other_host.exists() and legacy.exists() and unrelated.exists()
    assert f"removed {stale_file.name}" in res.stderr and f"removed {stale_dir.name}" in res.stderr
    assert legacy.name in res.stderr and "older version" in res.stderr
    assert clean_stale_temps(out) == []


# ---------------------------------------------------------------------------------------------- outputs


def _backslash(tiny: Path, data: Path, out: Path, *extra: str):
    return run("backslash", str(tiny), "--data", str(data), "-o", str(out), "--rate-steps", "2",
               "--recover-steps", "0", "--block-size", "32", "--batch-size", "2", "--eval-blocks", "2",
               *extra)


def _precious(folder: Path) -> dict[str, str]:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text('{"mine": 1}')
    (folder / "model.safetensors").write_bytes(b"weights I trained for a week")
    return snapshot(folder)


@pytest.mark.parametrize("case, needle", [
    ("missing", "no such file"),
    ("empty", "empty corpus"),
    ("binary", "UTF-8"),
    ("bert", "not a causal language model"),
    ("cuda", "cannot move the model to device"),
])
def test_backslash_failures_touch_nothing(case, needle, tiny, corpus, tmp_path) -> None:
    if case == "cuda":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA: the no-CUDA case cannot happen here")
    (tmp_path / "empty.txt").write_text("\n")
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe\x00bad" * 100)
    data = {"missing": tmp_path / "missing.txt", "empty": tmp_path / "empty.txt",
            "binary": tmp_path / "binary.txt", "bert": corpus, "cuda": corpus}[case]
    model = fixtures.minilm() if case == "bert" else tiny
    extra = ("--device", "cuda") if case == "cuda" else ()
    kept = tmp_path / "kept"
    before = _precious(kept)
    one_error_line(_backslash(model, data, kept, "--force", *extra), needle)
    assert snapshot(kept) == before  # --force replaces only on success
    fresh = tmp_path / "deep" / "fresh"
    one_error_line(_backslash(model, data, fresh, *extra), needle)
    assert not (tmp_path / "deep").exists()  # no empty OUT, no empty parent
    assert leftovers(tmp_path) == []


def test_backslash_resume_refuses_a_folder_it_did_not_write(tiny, corpus, tmp_path) -> None:
    out = tmp_path / "someone-elses-model"
    before = _precious(out)
    one_error_line(_backslash(tiny, corpus, out, "--resume"), str(out), "--resume needs a folder")
    assert snapshot(out) == before


def test_backslash_interrupted_fresh_run_leaves_resumable_state_or_nothing(tiny, corpus, tmp_path,
                                                                            monkeypatch) -> None:
    import ggcompress.methods.backslash as bs

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(bs, "measure", boom)  # before the first step: nothing worth keeping
    res = _backslash(tiny, corpus, tmp_path / "o")
    assert res.exit_code == 130 and not (tmp_path / "o").exists()
    monkeypatch.undo()
    kept = tmp_path / "kept"
    before = _precious(kept)
    monkeypatch.setattr(bs, "_write_model", boom)  # after training, --force onto an existing OUT
    res = _backslash(tiny, corpus, kept, "--force")
    assert res.exit_code == 130 and snapshot(kept) == before and leftovers(tmp_path) == []
    monkeypatch.undo()
    res = _backslash(tiny, corpus, kept, "--force")
    assert res.exit_code == 0, res.output
    assert json.loads((kept / "backslash_report.json").read_text())["schema"] == "ggcompress.backslash/1"
    assert "mine" not in (kept / "config.json").read_text() and leftovers(tmp_path) == []


def test_deepshape_and_init_force_keep_output_on_failure(tiny, corpus, tmp_path) -> None:
    kept = tmp_path / "kept"
    before = _precious(kept)
    one_error_line(run("deepshape", str(tiny), "--data", str(tmp_path / "missing.txt"), "-o", str(kept),
                       "--force"), "no such file")
    one_error_line(run("init", str(tmp_path / "missing"), "-o", str(kept), "--force"), "no such file")
    one_error_line(run("pack", str(tmp_path / "missing"), "-o", str(kept / "model.safetensors"), "--force"),
                   "no such file")
    assert snapshot(kept) == before and leftovers(tmp_path) == []


def test_writer_failure_leaves_no_new_folders(tmp_path) -> None:
    target = tmp_path / "a" / "b" / "c.md"
    with pytest.raises(GGError, match="is a folder"):
        ckio.atomic_write_bytes(tmp_path, b"x", force=True)
    with pytest.raises(KeyboardInterrupt):
        with ckio.CheckpointWriter(tmp_path / "a" / "b" / "ckpt") as w:
            w.write_json("x.json", {})
            raise KeyboardInterrupt
    assert not (tmp_path / "a").exists() and not target.exists()


# ---------------------------------------------------------------------------------------------- signals


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    # A shell runs background jobs with SIGINT ignored, and a child inherits that (Python then installs no
    # KeyboardInterrupt handler): give the CLI the default disposition a user's terminal gives it.
    return subprocess.Popen([sys.executable, "-m", "ggcompress", *args], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for(proc: subprocess.Popen, cond, what: str) -> None:
    deadline = time.monotonic() + 300  # generous: the machine is shared; the condition is what matters
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"ggcompress ended (exit {proc.returncode}) before {what}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_mid_pack_keeps_the_old_output(sig, code, minilm_dir, tmp_path) -> None:
    out = tmp_path / "m.ggz"
    out.write_bytes(b"the previous container")
    proc = _start(["pack", str(minilm_dir), "-o", str(out), "--force"], tmp_path)
    _wait_for(proc, lambda: any(f".data-{proc.pid}-" in n for n in os.listdir(tmp_path)), "its side file")
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "Aborted!" not in err and "error: " in err
    assert out.read_bytes() == b"the previous container" and leftovers(tmp_path) == []


def test_sigterm_mid_training_removes_the_fresh_output(tiny, corpus, tmp_path) -> None:
    out = tmp_path / "bs"
    proc = _start(["backslash", str(tiny), "--data", str(corpus), "-o", str(out), "--rate-steps", "100000",
                   "--recover-steps", "0", "--block-size", "32", "--batch-size", "2", "--save-every", "0",
                   "--eval-blocks", "2"], tmp_path)
    _wait_for(proc, lambda: (out / "training" / "ggcompress-run.json").exists(), "its run folder")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and not out.exists() and leftovers(tmp_path) == []


def test_backslash_interrupted_after_training_keeps_state_and_resume_cleans_up(tiny, corpus, tmp_path,
                                                                               monkeypatch) -> None:
    import ggcompress.methods.backslash as bs

    def boom(*a, **k):
        raise KeyboardInterrupt

    out = tmp_path / "o"
    monkeypatch.setattr(bs, "round_trip_", boom)  # right after training finished
    res = _backslash(tiny, corpus, out)
    assert res.exit_code == 130 and "continue it with --resume" in res.stderr
    monkeypatch.undo()
    one_error_line(_backslash(tiny, corpus, out), "unfinished backslash run", "--resume")
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    half = out / "training" / "backslash" / f".tmp-step-000009-{dead.pid}"  # a checkpoint cut by SIGKILL
    half.mkdir(parents=True)
    res = _backslash(tiny, corpus, out, "--resume")
    assert res.exit_code == 0, res.output
    assert f"left by a killed run (pid {dead.pid})" in res.stderr and not half.exists()
    assert not (out / "training").exists() and (out / "backslash_report.json").is_file()


def test_replacing_an_output_is_undone_when_the_final_rename_fails(tmp_path, monkeypatch) -> None:
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"previous")
    new = tmp_path / "new"
    new.mkdir()
    real = os.replace

    def second_rename_fails(src, dst):
        if Path(src) == new:
            raise Terminated()  # SIGTERM between moving the old output aside and renaming the new one in
        return real(src, dst)

    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(Terminated):
        ckio.replace_output(new, out)
    monkeypatch.undo()
    assert (out / "model.safetensors").read_bytes() == b"previous" and leftovers(tmp_path) == []


def test_a_previous_output_moved_aside_by_a_killed_run_is_restored(tiny, tmp_path) -> None:
    """SIGKILL exactly between the two renames of --force: the next run puts the old output back
    (deleting it as a stale temp would lose it)."""
    out = tmp_path / "o.ggz"
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    aside = tmp_path / (temp_prefix(out, "old").replace(f"-{os.getpid()}-", f"-{dead.pid}-") + "q")
    aside.mkdir()
    (aside / "old").write_bytes(b"the previous container")
    res = run("pack", str(tiny), "-o", str(out))
    one_error_line(res, "already exists")  # it is back, so a run without --force refuses to replace it
    assert out.read_bytes() == b"the previous container" and not aside.exists()
    assert "restored" in res.stderr
