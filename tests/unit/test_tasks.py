import numpy as np
import pytest

from peer.data.tasks import load_task
from peer.errors import ConfigError, DataError, UsageError


def test_offline_movie_reviews_is_balanced_real_text():
    task = load_task("movie-reviews")
    assert task.num_labels == 2
    assert len(task.train_texts) > 8000 and len(task.val_texts) == 1000
    assert 0.45 < task.train_labels.mean() < 0.55
    assert all(isinstance(t, str) and len(t) > 5 for t in task.train_texts[:50])


def test_validation_split_does_not_depend_on_anything_but_the_data():
    assert load_task("movie-reviews").val_texts[:5] == load_task("movie-reviews").val_texts[:5]


def test_trec_has_six_classes():
    task = load_task("trec")
    assert task.num_labels == 6 and set(np.unique(task.train_labels)) == set(range(6))


def test_csv_with_string_labels_and_pairs(tmp_path):
    path = tmp_path / "d.csv"
    rows = ["text,text_pair,label"] + [f"q{i},s{i},{'yes' if i % 2 else 'no'}" for i in range(40)]
    path.write_text("\n".join(rows))
    task = load_task(f"csv:{path}")
    assert task.num_labels == 2 and task.train_pairs is not None
    assert len(task.train_texts) + len(task.val_texts) == 40


def test_jsonl_integer_labels(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join(f'{{"sentence": "s{i}", "label": {i % 3}}}' for i in range(30)))
    task = load_task(f"jsonl:{path}")
    assert task.num_labels == 3 and task.train_pairs is None


@pytest.mark.parametrize(
    "name, error",
    [
        ("csv:/nonexistent.csv", DataError),
        ("imagenet", ConfigError),
        ("glue/cola", ConfigError),
    ],
)
def test_bad_task_names(name, error):
    with pytest.raises(error):
        load_task(name)


def test_csv_missing_label_column(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text\nhello\nworld\n")
    with pytest.raises(ValueError, match="needs a 'text'"):
        load_task(f"csv:{path}")


def test_glue_path_maps_columns_and_the_matched_validation_split(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def fake_load_dataset(path, name):
        assert (path, name) == ("nyu-mll/glue", "mnli")
        split = lambda n: datasets.Dataset.from_dict(  # noqa: E731
            {
                "premise": [f"p{i}" for i in range(n)],
                "hypothesis": [f"h{i}" for i in range(n)],
                "label": [i % 3 for i in range(n)],
            }
        )
        return datasets.DatasetDict(train=split(9), validation_matched=split(3), validation_mismatched=split(2))

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    task = load_task("glue/mnli")
    assert task.num_labels == 3 and len(task.train_texts) == 9 and len(task.val_texts) == 3
    assert task.train_pairs[0] == "h0" and task.val_labels.tolist() == [0, 1, 2]


def test_glue_without_hub_access_says_what_to_do(monkeypatch):
    datasets = pytest.importorskip("datasets")

    def offline(*args, **kwargs):
        raise ConnectionError("no route to host")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(UsageError, match="offline, use --task movie-reviews"):
        load_task("glue/sst2")
