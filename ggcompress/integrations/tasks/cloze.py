"""Multiple-choice sentence completion ("cloze") items made deterministically from real text.

Why: a compressed model must keep choosing plausible continuations, and a multiple-choice task needs
no download if its items come from text we already have. Each item is one real sentence cut in
half: the context is the previous sentence (when there is one) plus the first half; the true
ending is the second half; the three distractors are second halves of sentences of about the same
length taken from *other* documents, so only coherence with the context tells them apart (chance
is 25%). Nothing is invented: every choice is a real sentence fragment.

The shipped ``ggc_cloze.jsonl`` was made from the Wikipedia validation text of
``ggcompress.fixtures.text()`` with::

    python -m ggcompress.integrations.tasks.cloze VALIDATION.txt \
        -o ggcompress/integrations/tasks/ggc_cloze.jsonl

Run the same on your own text to make a domain-specific task (see docs/eval.md).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from ggcompress.errors import GGError
from ggcompress.integrations.tasks import documents

N_CHOICES = 4
MIN_WORDS, MAX_WORDS = 12, 40  # sentences shorter than this make trivial halves; longer ones run on
LENGTH_SLACK = 2  # distractor endings differ from the true one by at most this many words

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z\"'(])")
_ABBREVIATION = re.compile(r"\b([A-Z]|Mr|Mrs|Ms|Dr|St|Jr|Sr|Mt|vs|etc|No|Co|Inc|Ltd|U\.S)\.$")


@dataclass(frozen=True)
class _Sentence:
    doc: int  # which blank-line-separated document it came from
    previous: str  # the sentence before it in the same paragraph, or ""
    head: str  # first half of the words
    tail: str  # second half: the true ending

    @property
    def tail_words(self) -> int:
        return len(self.tail.split())


def _sentences(paragraph: str) -> list[str]:
    """Split one paragraph into sentences; merges splits made after common abbreviations."""
    out: list[str] = []
    for piece in _SENTENCE_END.split(paragraph.strip()):
        if out and _ABBREVIATION.search(out[-1]):
            out[-1] = f"{out[-1]} {piece}"
        else:
            out.append(piece)
    return out


def _usable(sentence: str) -> bool:
    words = sentence.split()
    return (MIN_WORDS <= len(words) <= MAX_WORDS and sentence[0].isupper() and sentence.endswith(".")
            and sentence.count("(") == sentence.count(")") and sentence.count('"') % 2 == 0)


def _candidates(text: str) -> list[_Sentence]:
    found: list[_Sentence] = []
    for d, doc in enumerate(documents(text)):
        for paragraph in doc.splitlines():
            previous = ""
            for sentence in _sentences(paragraph):
                if _usable(sentence):
                    words = sentence.split()
                    cut = len(words) // 2
                    found.append(_Sentence(d, previous, " ".join(words[:cut]), " ".join(words[cut:])))
                previous = sentence
    return found


def make_items(text: str, *, n: int = 300, seed: int = 0) -> list[dict]:
    """Up to ``n`` cloze items from ``text``, the same for the same text and seed.

    Each item is ``{"id", "doc", "context", "choices", "label"}`` with ``choices[label]`` the true
    ending. Needs at least two documents so distractors can come from a different one.
    """
    candidates = _candidates(text)
    if len({c.doc for c in candidates}) < 2:
        raise GGError("cloze: the text needs at least two blank-line-separated documents with full sentences")
    rng = random.Random(seed)
    order = list(range(len(candidates)))
    rng.shuffle(order)
    items: list[dict] = []
    for i in order:
        if len(items) == n:
            break
        true = candidates[i]
        pool = sorted({c.tail for c in candidates
                       if c.doc != true.doc and abs(c.tail_words - true.tail_words) <= LENGTH_SLACK
                       and c.tail != true.tail})
        if len(pool) < N_CHOICES - 1:
            continue
        choices = rng.sample(pool, N_CHOICES - 1)
        label = rng.randrange(N_CHOICES)
        choices.insert(label, true.tail)
        context = f"{true.previous} {true.head}".strip()
        items.append({"doc": true.doc, "context": context, "choices": choices, "label": label, "_pos": i})
    items.sort(key=lambda item: item.pop("_pos"))  # reading order: items from one article stay together
    for k, item in enumerate(items):
        item["id"] = k
    return [{"id": it["id"], "doc": it["doc"], "context": it["context"], "choices": it["choices"],
             "label": it["label"]} for it in items]


def write_jsonl(items: list[dict], path: Path) -> None:
    """One item per line, UTF-8, stable key order (so regenerating gives the same bytes)."""
    path.write_text("".join(json.dumps(it, ensure_ascii=False) + "\n" for it in items), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ggcompress.integrations.tasks.cloze",
                                     description="Make multiple-choice cloze items (JSONL) from a text file.")
    parser.add_argument("text", type=Path, help="UTF-8 text; documents separated by blank lines")
    parser.add_argument("-o", "--output", type=Path, required=True, help="JSONL file to write")
    parser.add_argument("-n", type=int, default=300, help="number of items (default 300)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        items = make_items(args.text.read_text(encoding="utf-8"), n=args.n, seed=args.seed)
    except (GGError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    write_jsonl(items, args.output)
    print(f"{args.output}: {len(items)} items", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
