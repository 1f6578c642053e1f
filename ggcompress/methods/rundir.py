"""The output folder of a training command: never destroyed before success, resumable only when ours.

A training run needs a folder while it works (checkpoints for --resume) yet must not touch an existing
output until it succeeds. So:

- OUT absent: OUT itself is the work folder, created only after the inputs loaded, with a marker file
  in OUT/training naming this tool. If the run fails before its first checkpoint, OUT is removed again;
  after one, OUT stays as a resumable training state (and says so).
- OUT holds an unfinished run of this command (the marker) and --resume: work in it.
- OUT exists and --force: work in a hidden folder beside OUT (`.OUT.tmp-PID-...`), swapped in by a
  rename only when the run succeeded; a failed or killed run leaves OUT exactly as it was.
- --resume on any other existing folder is refused: it is not this tool's training state.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggcompress import __version__
from ggcompress.errors import GGError, describe_os_error
from ggcompress.io.checkpoint import (
    _umask,
    check_output_path,
    log,
    make_parent,
    missing_parents,
    output_error,
    pid_alive,
    remove_empty_folders,
    replace_output,
    temp_prefix,
)

#: Marker of an unfinished training run, inside the run's training folder.
MARKER = "ggcompress-run.json"


@dataclass
class RunFolder:
    """Where a training command works (`work`) and how its result becomes `out`."""

    out: Path
    command: str
    train_dir: str
    report_name: str
    schema: str
    mode: str = "fresh"  # "fresh" (OUT absent), "resume" (OUT is our unfinished run), "staged" (--force)
    work: Path | None = None
    _made: list[Path] | None = None

    @property
    def marker(self) -> Path:
        assert self.work is not None
        return self.work / self.train_dir / MARKER

    def finished_report(self) -> dict[str, Any] | None:
        """The report of a finished run of this command in OUT, or None."""
        path = self.out / self.report_name
        if not path.is_file():
            return None
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) and doc.get("schema") == self.schema else None

    def is_unfinished_run(self) -> bool:
        """OUT holds the training state this command wrote (its marker names this tool and command)."""
        path = self.out / self.train_dir / MARKER
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError):
            return False
        return isinstance(doc, dict) and (doc.get("tool"), doc.get("command")) == ("ggcompress", self.command)

    def plan(self, inputs: list[str], *, resume: bool, force: bool) -> None:
        """Decide the mode and check the output, touching nothing (call before loading the inputs)."""
        exists = self.out.exists() or self.out.is_symlink()
        ours = exists and self.out.is_dir() and self.is_unfinished_run()
        if resume and ours:
            self.mode = "resume"
            check_output_path(self.out, inputs, force=True, kind="folder")
            return
        if exists and not force:
            if resume:
                raise GGError(
                    f"{self.out}: --resume needs a folder an unfinished `ggcompress {self.command}` run "
                    f"wrote (no {self.train_dir}/{MARKER} in it) — give that folder, or --force to replace "
                    "this one")
            if ours:
                raise GGError(f"{self.out}: holds an unfinished {self.command} run — continue it with "
                              "--resume, or start over with --force")
        check_output_path(self.out, inputs, force=force, kind="folder")
        self.mode = "staged" if exists else "fresh"

    def start(self, settings: dict[str, Any]) -> Path:
        """Create the work folder and its marker (after the inputs loaded); returns the work folder."""
        try:
            if self.mode == "resume":
                self.work = self.out
                _clean_dead_run_temps(self.out, self.train_dir)
                return self.work
            self._made = missing_parents(self.out)
            if self.mode == "staged":
                self.work = Path(tempfile.mkdtemp(prefix=temp_prefix(self.out, "tmp"),
                                                  dir=make_parent(self.out)))
                os.chmod(self.work, 0o777 & ~_umask())  # mkdtemp makes 0700; follow the umask
            else:
                self.out.mkdir(parents=True)
                self.work = self.out
            self.marker.parent.mkdir(parents=True, exist_ok=True)
            self.marker.write_text(json.dumps({
                "tool": "ggcompress", "command": self.command, "version": __version__,
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "settings": settings,
            }, indent=1, default=str) + "\n")
        except FileExistsError:
            raise GGError(f"{self.out}: appeared while the inputs loaded — rerun (with --force to replace "
                          "it)") from None
        except OSError as e:
            self.abort()
            raise output_error(self.out, e) from e
        except BaseException:  # SIGTERM / Ctrl-C while the folder or its marker is being created
            self.abort()
            raise
        return self.work

    def commit(self) -> Path:
        """The run succeeded: a staged folder replaces OUT in one rename; OUT itself just stays."""
        assert self.work is not None
        if self.mode != "staged":
            return self.out
        try:
            replace_output(self.work, self.out)
        except OSError as e:
            raise GGError(describe_os_error(e, self.out, "replace it") + " — the previous one is kept"
                          ) from None
        self.work = self.out
        return self.out

    def abort(self) -> str | None:
        """The run failed: remove what it created unless it holds a checkpoint to resume from.

        Returns a note for the user when a resumable state was kept, else None.
        """
        if self.work is None or self.mode == "resume":
            return None
        if self.mode == "staged":
            shutil.rmtree(self.work, ignore_errors=True)
            return None
        train = self.work / self.train_dir
        if any(train.glob("*/checkpoints/step-*/state.json")) or any(train.glob("*/final/result.json")):
            return (f"{self.out}: holds the training state of this unfinished run — continue it with "
                    "--resume (same settings)")
        shutil.rmtree(self.work, ignore_errors=True)
        remove_empty_folders(self._made or [])
        return None


#: Temp names inside a run folder: `.tmp-step-000004-PID`, `.tmp-final-PID`, `.tmp-model-PID`,
#: `.backslash_report.json.tmp-PID`.
_RUN_TEMP = re.compile(r"^\..*tmp-(?:.*-)?(?P<pid>\d+)$")


def _clean_dead_run_temps(out: Path, train_dir: str) -> None:
    """On --resume: remove the half-written checkpoints/files a killed run of OUT left inside it."""
    folders = [out, *out.glob(f"{train_dir}/*"), *out.glob(f"{train_dir}/*/checkpoints")]
    for folder in folders:
        if not folder.is_dir():
            continue
        for p in folder.iterdir():
            m = _RUN_TEMP.match(p.name)
            if m is None or pid_alive(int(m["pid"])):
                continue
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            log.warning("removed %s, left by a killed run (pid %s)", p, m["pid"])
