"""Instruction data for causal language models: prompts, the answers to learn, and a category per example.

Task names with ``--task-type causal-lm`` (``--task``):

- ``trec`` (offline default): the TREC questions, phrased as an instruction: "What kind of answer does
  this question ask for?" → ``a location``, ``a person``, ``a number``, ``a description``, ``an entity``
  or ``an abbreviation``. A closed answer set: accuracy by scoring the six answers.
- ``movie-reviews`` (offline): "Is this movie review positive or negative?" → ``positive`` / ``negative``.
- ``synthetic``: the keyword sentences of the classification task, answered ``positive`` / ``negative``;
  learnable by the tiny random Llama of the tests.
- ``jsonl:PATH`` / ``csv:PATH``: your own data, one example per row, in any of the formats people
  already have (the first that a row matches):

  - ``messages``: a chat, a list of ``{"role", "content"}``; the last message is the assistant's
    answer, everything before it the prompt (rendered with the tokenizer's chat template). In a CSV
    file the cell holds the list as JSON.
  - ``prompt`` and ``completion`` (or ``response``).
  - ``instruction``, optional ``input``, ``output`` (Alpaca): the prompt is the instruction, then a
    blank line and the input when there is one.

  An optional category column (``--category-column``, default ``category``) says what the label-skew
  and Dirichlet partitions split by; without it every row is in one category (use ``--partition iid``).
  When the answers form a small closed set (at most ``MAX_CANDIDATES`` distinct answers, each used at
  least ``MIN_USES_PER_CANDIDATE`` times on average), accuracy is measured by scoring every candidate
  answer; otherwise by the answer tokens predicted right (teacher-forced).
- ``hf:DATASET`` or ``hf:DATASET:CONFIG``: a Hugging Face dataset in one of the row formats (needs the
  hub): its ``train`` split, and its ``validation`` or ``test`` split when it has one.

Files and offline tasks hold out a fixed validation split (seed 0), as the classification tasks do.
Pure data: no tokenizer, no model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from peer.data import tasks as classification
from peer.errors import ConfigError, DataError, UsageError

ROLES = ("system", "user", "assistant")
SYSTEM, USER, ASSISTANT = ROLES
DEFAULT_CATEGORY_COLUMN = "category"
NO_CATEGORY = "all"
# A closed answer set is scored candidate by candidate: worth it only for a few, often repeated answers.
MAX_CANDIDATES = 20
MIN_USES_PER_CANDIDATE = 4


@dataclass(frozen=True)
class Message:
    role: str
    content: str


@dataclass(frozen=True)
class Example:
    """One instruction: the prompt (a chat without the answer), the answer to learn, its category."""

    prompt: tuple[Message, ...]
    completion: str
    category: int


@dataclass
class InstructionTask:
    name: str
    train: list[Example]
    val: list[Example]
    categories: list[str]
    candidates: tuple[str, ...] | None = None  # the closed answer set, when there is one

    def __post_init__(self) -> None:
        if not self.train:
            raise DataError(f"task {self.name!r} has no training examples")
        if self.candidates is not None:
            unknown = {e.completion for e in self.val} - set(self.candidates)
            if unknown:
                raise DataError(f"task {self.name!r}: validation answers outside the candidates: {sorted(unknown)[:3]}")

    @property
    def train_labels(self) -> np.ndarray:
        """The category of every training example: what the partitions split by."""
        return np.asarray([e.category for e in self.train], dtype=np.int64)

    @property
    def val_labels(self) -> np.ndarray:
        return np.asarray([e.category for e in self.val], dtype=np.int64)

    @property
    def num_labels(self) -> int:
        return len(self.categories)


def user_prompt(text: str) -> tuple[Message, ...]:
    return (Message(USER, text),)


def available_instruction_tasks() -> list[str]:
    return ["trec", "movie-reviews", "synthetic", "jsonl:PATH", "csv:PATH", "hf:DATASET"]


def load_instruction_task(name: str, category_column: str = DEFAULT_CATEGORY_COLUMN) -> InstructionTask:
    """Load an instruction task by name (see the module docstring); errors name the file and line."""
    if name in PHRASINGS:
        return _phrased(name)
    if name.startswith(("csv:", "jsonl:")):
        kind, path = name.split(":", 1)
        return _from_file(Path(path), kind, category_column)
    if name.startswith("hf:"):
        return _from_hub(name.split(":", 1)[1], category_column)
    raise ConfigError(
        f"unknown task {name!r} for --task-type causal-lm; choose one of {', '.join(available_instruction_tasks())}"
    )


@dataclass(frozen=True)
class Phrasing:
    """A labelled text task asked as an instruction: the question, and the answer for each label."""

    instruction: str
    answers: tuple[str, ...]


PHRASINGS = {
    # TREC's coarse classes in the order of classification.TREC_CLASSES: ABBR DESC ENTY HUM LOC NUM
    "trec": Phrasing(
        "What kind of answer does this question ask for?",
        ("an abbreviation", "a description", "an entity", "a person", "a location", "a number"),
    ),
    "movie-reviews": Phrasing("Is this movie review positive or negative?", ("negative", "positive")),
    "synthetic": Phrasing("Positive or negative?", ("positive", "negative")),  # its label 0 is the good words
}


def _phrased(name: str) -> InstructionTask:
    """The labelled task of the same name (same texts, same validation split), asked as instructions:
    the instruction as the system message, the text as the user's. (The system message also replaces
    a chat template's default one: SmolLM2's costs 20 of a TREC prompt's 55 tokens.)"""
    source = classification.load_task(name)
    phrasing = PHRASINGS[name]
    system = Message(SYSTEM, phrasing.instruction)

    def examples(texts: list[str], labels: np.ndarray) -> list[Example]:
        return [
            Example((system, Message(USER, text)), phrasing.answers[int(label)], int(label))
            for text, label in zip(texts, labels)
        ]

    return InstructionTask(
        name=name,
        train=examples(source.train_texts, source.train_labels),
        val=examples(source.val_texts, source.val_labels),
        categories=list(phrasing.answers),
        candidates=phrasing.answers,
    )


def _text(value, where: str, column: str) -> str:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise DataError(f"{where}: '{column}' must be non-empty text, got {str(value)[:40]!r}")


def _messages(value, where: str) -> tuple[tuple[Message, ...], str]:
    """A chat's prompt (every message but the last) and answer (the last, the assistant's)."""
    if isinstance(value, str):  # a CSV cell
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise DataError(f"{where}: 'messages' is not a JSON list ({exc.msg})") from None
    if not isinstance(value, list) or len(value) < 2:
        raise DataError(f"{where}: 'messages' must be a list of at least two messages (a prompt and the answer)")
    chat = []
    for n, message in enumerate(value):
        if not isinstance(message, dict) or message.get("role") not in ROLES:
            raise DataError(f"{where}: message {n} needs a 'role' of {', '.join(ROLES)} and a 'content'")
        chat.append(Message(message["role"], _text(message.get("content"), where, f"messages[{n}].content")))
    if chat[-1].role != ASSISTANT:
        raise DataError(f"{where}: the last message must be the assistant's answer, got role {chat[-1].role!r}")
    if not any(m.role == USER for m in chat[:-1]):
        raise DataError(f"{where}: 'messages' has no user message before the answer")
    return tuple(chat[:-1]), chat[-1].content


def _present(row: dict, column: str) -> bool:
    return row.get(column) not in (None, "")


def parse_row(row: dict, where: str) -> tuple[tuple[Message, ...], str]:
    """The prompt and answer of one row in any of the supported formats; a row in none names itself."""
    if _present(row, "messages"):
        return _messages(row["messages"], where)
    if _present(row, "prompt"):
        answer_column = "completion" if _present(row, "completion") or not _present(row, "response") else "response"
        return user_prompt(_text(row["prompt"], where, "prompt")), _text(row.get(answer_column), where, answer_column)
    if _present(row, "instruction"):
        prompt = _text(row["instruction"], where, "instruction")
        if _present(row, "input"):
            prompt = f"{prompt}\n\n{_text(row['input'], where, 'input')}"
        return user_prompt(prompt), _text(row.get("output"), where, "output")
    raise DataError(
        f"{where}: no instruction found; a row needs 'messages', 'prompt' and 'completion', "
        f"or 'instruction' and 'output' (columns: {', '.join(sorted(map(str, row)))[:120]})"
    )


def _examples(numbered_rows, where_of, category_column: str) -> tuple[list[tuple[tuple[Message, ...], str, str]], bool]:
    parsed = []
    has_categories = any(_present(row, category_column) for _, row in numbered_rows)
    for line, row in numbered_rows:
        where = where_of(line)
        prompt, answer = parse_row(row, where)
        if has_categories and not _present(row, category_column):
            raise DataError(f"{where}: no '{category_column}' (other rows have one; every row needs it)")
        parsed.append((prompt, answer, str(row.get(category_column, NO_CATEGORY)) if has_categories else NO_CATEGORY))
    return parsed, has_categories


def closed_answer_set(answers: list[str]) -> tuple[str, ...] | None:
    """The candidate answers when they form a small, often repeated set (see the module docstring)."""
    distinct = sorted(set(answers))
    if len(distinct) <= MAX_CANDIDATES and len(answers) >= MIN_USES_PER_CANDIDATE * len(distinct):
        return tuple(distinct)
    return None


def _task(name: str, train_rows, val_rows, candidates_from: list[str]) -> InstructionTask:
    categories = sorted({c for _, _, c in train_rows + val_rows})

    def examples(rows) -> list[Example]:
        return [Example(prompt, answer, categories.index(category)) for prompt, answer, category in rows]

    candidates = closed_answer_set(candidates_from)
    return InstructionTask(name, examples(train_rows), examples(val_rows), categories, candidates)


def _from_file(path: Path, kind: str, category_column: str) -> InstructionTask:
    numbered = classification.read_rows(path, kind)
    rows, _ = _examples(numbered, lambda line: f"{path}:{line}", category_column)
    if len(rows) < 2:
        raise DataError(f"{path}: need at least two instructions, found {len(rows)}")
    val, train = classification.holdout_order(len(rows))
    return _task(f"{kind}:{path.name}", [rows[i] for i in train], [rows[i] for i in val], [r[1] for r in rows])


VALIDATION_SPLITS = ("validation", "test")


def _from_hub(name: str, category_column: str) -> InstructionTask:
    import datasets  # imported here: slow to import, and only this path needs it

    dataset, _, config = name.partition(":")  # hf:DATASET or hf:DATASET:CONFIG (gsm8k:main)
    try:
        ds = datasets.load_dataset(dataset, config) if config else datasets.load_dataset(dataset)
    except Exception as exc:  # no hub access: say so instead of a long traceback
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise UsageError(
            f"could not load {dataset} from the Hugging Face hub ({first}); offline, use --task trec, "
            "movie-reviews, jsonl:PATH or csv:PATH"
        ) from None
    if "train" not in ds:
        raise DataError(f"hf:{dataset} has no 'train' split (it has {', '.join(ds)})")

    def parsed(split: str):
        return _examples(list(enumerate(ds[split], 1)), lambda n: f"hf:{dataset} {split} row {n}", category_column)[0]

    train = parsed("train")
    held = next((s for s in VALIDATION_SPLITS if s in ds), None)
    if held is not None:
        val = parsed(held)
    else:
        val_idx, train_idx = classification.holdout_order(len(train))
        train, val = [train[i] for i in train_idx], [train[i] for i in val_idx]
    return _task(f"hf:{dataset}", train, val, [r[1] for r in train + val])
