"""Instruction data: the row formats people have, the offline tasks asked as instructions, clear errors."""

import json

import pytest

from peer.data.instructions import (
    MAX_CANDIDATES,
    NO_CATEGORY,
    Message,
    closed_answer_set,
    load_instruction_task,
    parse_row,
)
from peer.data.tasks import TREC_CLASSES, load_task
from peer.errors import ConfigError, DataError, UsageError


def _jsonl(tmp_path, rows, name="d.jsonl"):
    path = tmp_path / name
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def test_the_three_row_formats_give_prompt_and_answer():
    assert parse_row({"prompt": "2+2?", "completion": "4"}, "f:1") == ((Message("user", "2+2?"),), "4")
    assert parse_row({"prompt": "2+2?", "response": "4"}, "f:1")[1] == "4"
    alpaca = parse_row({"instruction": "Add.", "input": "2 and 2", "output": "4"}, "f:1")
    assert alpaca == ((Message("user", "Add.\n\n2 and 2"),), "4")
    assert parse_row({"instruction": "Say hi.", "input": "", "output": "hi"}, "f:1")[0] == (Message("user", "Say hi."),)
    chat = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": "4"},
    ]
    prompt, answer = parse_row({"messages": chat}, "f:1")
    assert prompt == (Message("system", "Be brief."), Message("user", "2+2?")) and answer == "4"
    assert parse_row({"messages": json.dumps(chat)}, "f:1")[1] == "4"  # a CSV cell holds the list as JSON


@pytest.mark.parametrize(
    "row, says",
    [
        ({"text": "x", "label": 1}, "no instruction found"),
        ({"prompt": "x"}, "'completion' must be non-empty"),
        ({"instruction": "x", "output": "  "}, "'output' must be non-empty"),
        ({"messages": [{"role": "user", "content": "hi"}]}, "at least two messages"),
        ({"messages": [{"role": "user", "content": "a"}, {"role": "user", "content": "b"}]}, "assistant's answer"),
        ({"messages": [{"role": "robot", "content": "a"}, {"role": "assistant", "content": "b"}]}, "'role' of"),
        ({"messages": [{"role": "system", "content": "a"}, {"role": "assistant", "content": "b"}]}, "no user message"),
        ({"messages": "[not json"}, "not a JSON list"),
    ],
)
def test_a_malformed_row_names_its_place_and_what_is_wrong(row, says):
    with pytest.raises(DataError, match=f"^data.jsonl:7: .*{says}"):
        parse_row(row, "data.jsonl:7")


def test_jsonl_file_with_categories_and_a_closed_answer_set(tmp_path):
    rows = [{"prompt": f"q{i}", "completion": ["yes", "no"][i % 2], "category": f"topic{i % 3}"} for i in range(40)]
    task = load_instruction_task(f"jsonl:{_jsonl(tmp_path, rows)}")
    assert task.categories == ["topic0", "topic1", "topic2"] and task.num_labels == 3
    assert task.candidates == ("no", "yes")
    assert len(task.train) + len(task.val) == 40 and len(task.val) == 4
    assert sorted(set(task.train_labels.tolist())) == [0, 1, 2]


def test_a_user_named_category_column_and_open_answers(tmp_path):
    rows = [{"instruction": f"Write {i}.", "output": f"answer number {i}", "source": f"lab{i % 2}"} for i in range(30)]
    task = load_instruction_task(f"jsonl:{_jsonl(tmp_path, rows)}", category_column="source")
    assert task.categories == ["lab0", "lab1"]
    assert task.candidates is None  # 30 different answers: scored token by token, not as a closed set
    without = load_instruction_task(f"jsonl:{_jsonl(tmp_path, rows, 'e.jsonl')}")  # no 'category' column
    assert without.categories == [NO_CATEGORY]


def test_csv_file_with_chats_and_alpaca_rows_mixed(tmp_path):
    chat = json.dumps([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    path = tmp_path / "d.csv"
    lines = ["messages,instruction,output"] + [f'"{chat.replace(chr(34), chr(34) * 2)}",,' for _ in range(10)]
    lines += [",Greet.,hello" for _ in range(10)]
    path.write_text("\n".join(lines) + "\n")
    task = load_instruction_task(f"csv:{path}")
    examples = task.train + task.val
    assert {e.completion for e in examples} == {"hello"}
    assert {e.prompt[-1].content for e in examples} == {"hi", "Greet."}


def test_errors_in_files_name_the_file_and_line(tmp_path):
    good = {"prompt": "q", "completion": "a"}
    path = _jsonl(tmp_path, [good, good, {"prompt": "q"}, good])
    with pytest.raises(DataError, match=r"d\.jsonl:3: 'completion' must be non-empty"):
        load_instruction_task(f"jsonl:{path}")
    path = _jsonl(tmp_path, [good, "{oops", good])
    with pytest.raises(DataError, match=r"d\.jsonl:2: not a JSON object"):
        load_instruction_task(f"jsonl:{path}")
    path = _jsonl(tmp_path, [dict(good, category="a"), good])
    with pytest.raises(DataError, match=r"d\.jsonl:2: no 'category'"):
        load_instruction_task(f"jsonl:{path}")
    csv_path = tmp_path / "d.csv"
    csv_path.write_text("prompt,completion\nq,a\nq,\nq,a\n")
    with pytest.raises(DataError, match=r"d\.csv:3: 'completion' must be non-empty"):
        load_instruction_task(f"csv:{csv_path}")
    csv_path.write_text("prompt,completion\nq,a\n\n\nq,\nq,a\n")  # blank lines still count
    with pytest.raises(DataError, match=r"d\.csv:5: 'completion' must be non-empty"):
        load_instruction_task(f"csv:{csv_path}")
    with pytest.raises(DataError, match="does not exist"):
        load_instruction_task(f"jsonl:{tmp_path / 'missing.jsonl'}")
    with pytest.raises(ConfigError, match="unknown task 'glue/sst2' for --task-type causal-lm"):
        load_instruction_task("glue/sst2")


def test_closed_answer_sets_are_small_and_repeated():
    assert closed_answer_set(["a", "b"] * 4) == ("a", "b")
    assert closed_answer_set(["a", "b", "c"]) is None  # each used once: not a closed set
    many = [f"x{i}" for i in range(MAX_CANDIDATES + 1)] * 10
    assert closed_answer_set(many) is None


def test_trec_asked_as_instructions_keeps_the_texts_split_and_classes():
    source, task = load_task("trec"), load_instruction_task("trec")
    assert len(task.train) == len(source.train_texts) and len(task.val) == len(source.val_texts)
    first = task.val[0]
    assert first.prompt[-1].content.endswith(source.val_texts[0])
    assert first.completion == task.candidates[source.val_labels[0]]
    assert len(task.candidates) == len(TREC_CLASSES) and task.candidates[TREC_CLASSES.index("LOC")] == "a location"
    assert (task.val_labels == source.val_labels).all()


def test_movie_reviews_and_synthetic_answers_match_their_labels():
    reviews = load_instruction_task("movie-reviews")
    source = load_task("movie-reviews")
    assert [e.completion for e in reviews.val[:20]] == [["negative", "positive"][y] for y in source.val_labels[:20]]
    synthetic = load_instruction_task("synthetic")
    good = next(e for e in synthetic.train if "great" in e.prompt[-1].content and "awful" not in e.prompt[-1].content)
    assert good.completion == "positive"


def test_a_hub_dataset_in_a_row_format_with_its_own_test_split(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def fake_load_dataset(path):
        assert path == "someone/instructions"
        rows = lambda n: datasets.Dataset.from_dict(  # noqa: E731
            {"instruction": [f"Echo {i}." for i in range(n)], "input": [""] * n, "output": [str(i) for i in range(n)]}
        )
        return datasets.DatasetDict(train=rows(12), test=rows(3))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_instruction_task("hf:someone/instructions")
    assert len(task.train) == 12 and len(task.val) == 3 and task.val[2].completion == "2"


def test_a_hub_dataset_without_hub_access_or_in_no_known_format_says_so(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(
        UsageError, match=r"could not load someone/x from the Hugging Face hub .*offline, use --task trec"
    ):
        load_instruction_task("hf:someone/x")
    monkeypatch.setattr(
        datasets, "load_dataset", lambda path: datasets.DatasetDict(train=datasets.Dataset.from_dict({"text": ["a"]}))
    )
    with pytest.raises(DataError, match="hf:someone/x train row 1: no instruction found"):
        load_instruction_task("hf:someone/x")
