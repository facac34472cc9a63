"""The golden outputs (tests/golden.py): every command, seeded on the fixture pairs, gives the numbers recorded
in tests/golden/outputs.json. A refactor must not move them; a change meant to move results records them anew."""
import json

import pytest

import golden


@pytest.mark.slow
def test_every_command_gives_the_recorded_numbers(tmp_path):
    expected = json.loads(golden.OUTPUTS.read_text(encoding="utf-8"))
    got = json.loads(json.dumps(golden.produce(tmp_path)))  # the same JSON round trip the recording took
    problems = golden.compare(expected, got)
    assert not problems, "\n".join(problems[:40])
    assert sum(len(v) for v in expected.values()) > 500  # the check covers every command, not a few numbers


def test_the_comparison_notices_a_moved_number():
    expected = {"train": {"loss": 0.5, "pairs": 8}, "data": {"hh": {"texts": "ab"}}}
    assert golden.compare(expected, expected) == []
    assert golden.compare(expected, {**expected, "train": {"loss": 0.5 + 1e-7, "pairs": 8}}) == []
    moved = golden.compare(expected, {"train": {"loss": 0.51, "pairs": 8}, "data": {"hh": {"texts": "ac"}}})
    assert moved == ["data.hh: texts: ab → ac", "train: loss: 0.5 → 0.51"]
    assert golden.compare(expected, {"train": expected["train"]}) == ["data: missing now"]
    snr = {"run": {"eval.margin_snr.high": 26.036}}
    assert golden.compare(snr, {"run": {"eval.margin_snr.high": 26.033}}) == []  # rounding between CPUs
    assert golden.compare(snr, {"run": {"eval.margin_snr.high": 26.1}}) != []
