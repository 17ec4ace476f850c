"""Files a user parses are JSON that every parser reads: no NaN or Infinity."""

import json
import math

import pytest

from peer import strict_json
from peer.daemon.persistence import EVENTS_LOG, ROUNDS_LOG, FolderStore, Persistence
from peer.tools.plots import load_run


def _strict(text: str):
    def refuse(constant: str):
        raise AssertionError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_are_null_at_any_depth_and_the_rest_is_untouched():
    value = {"loss": math.nan, "x": [1.5, math.inf, (-math.inf, 2)], "n": 3, "s": "NaN", "ok": True}
    want = {"loss": None, "x": [1.5, None, [None, 2]], "n": 3, "s": "NaN", "ok": True}
    assert _strict(strict_json.dumps(value)) == want
    assert math.isnan(strict_json.number(None)) and strict_json.number(0.25) == 0.25


def test_a_consensus_rounds_line_is_strict_json_and_plots_read_it_and_an_earlier_nan(tmp_path):
    files = Persistence(FolderStore(tmp_path))
    files.log_round({"round": 0, "train_loss": 0.7, "neighbours": []})
    files.log_round({"round": 1, "train_loss": math.nan, "neighbours": []})  # a round that trains nothing
    files.append_event({"event": "settled", "weight": math.inf})
    lines = [_strict(text) for text in (tmp_path / ROUNDS_LOG).read_text().splitlines()]
    assert [line["train_loss"] for line in lines] == [0.7, None]
    assert _strict((tmp_path / EVENTS_LOG).read_text())["weight"] is None
    with (tmp_path / ROUNDS_LOG).open("a") as f:  # a line of an earlier version
        f.write('{"round": 2, "train_loss": NaN, "neighbours": []}\n')
    curves = load_run(tmp_path)
    assert curves.loss[1] == pytest.approx(0.7) and math.isnan(curves.loss[2]) and math.isnan(curves.loss[3])
