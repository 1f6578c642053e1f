"""Offline lm-eval tasks shipped with ggcompress, made runnable from any working directory.

- ``ggc_perplexity``: loglikelihood_rolling over the documents of ``--text FILE`` (word / byte
  perplexity, bits per byte).
- ``ggc_cloze``: 4-way multiple-choice sentence completion from ``ggc_cloze.jsonl`` (real Wikipedia
  sentences; see ``cloze.py``).

lm-eval resolves a task's ``data_files`` against the process's working directory, not the YAML's
folder, so the YAMLs here cannot be used in place. ``materialize`` writes copies whose data paths
are absolute (plus the perplexity documents) into a temporary include folder for one run.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from ggcompress.errors import GGError

TASK_DIR = Path(__file__).parent
#: task name -> the data file its YAML names (relative to TASK_DIR, or written per run).
SHIPPED = {"ggc_perplexity": "ggc_perplexity.jsonl", "ggc_cloze": "ggc_cloze.jsonl"}
#: tasks whose data is the user's --text file, written per run.
TEXT_TASKS = frozenset({"ggc_perplexity"})


def documents(text: str) -> list[str]:
    """Blank-line-separated blocks of ``text`` (one article each in the fixture text), stripped."""
    return [block.strip() for block in re.split(r"\n\s*\n", text) if block.strip()]


def read_text(path: Path) -> str:
    """The UTF-8 contents of a --text file, with one clear error line if it cannot be used."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise GGError(f"{path}: no such text file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise GGError(f"{path}: cannot read it as UTF-8 text ({exc})") from None
    if not text.strip():
        raise GGError(f"{path}: the text file is empty")
    return text


def materialize(dest: Path, *, text: Path | None = None) -> list[str]:
    """Write runnable copies of the shipped tasks into ``dest`` and return their names.

    ``ggc_perplexity`` is written only when ``text`` is given (its documents come from it). Each copy
    keeps its datasets cache inside ``dest`` so runs leave nothing in the user's HF cache.
    """
    import yaml  # comes with the eval extra (lm-eval, datasets)

    dest.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data_name in SHIPPED.items():
        if name in TEXT_TASKS:
            if text is None:
                continue
            data = dest / data_name
            docs = documents(read_text(text))
            data.write_text("".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in docs),
                            encoding="utf-8")
        else:
            data = TASK_DIR / data_name
        config = yaml.safe_load((TASK_DIR / f"{name}.yaml").read_text(encoding="utf-8"))
        config["dataset_kwargs"] = {**config.get("dataset_kwargs", {}),
                                    "data_files": {"test": str(data.resolve())},
                                    "cache_dir": str((dest / "datasets-cache").resolve())}
        (dest / f"{name}.yaml").write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        written.append(name)
    return written
