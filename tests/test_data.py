"""Tests for marsrm.data: every accepted format in, every bad input out as one DataError line."""
from __future__ import annotations

import dataclasses
import gzip
import json
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from marsrm.data import sources
from marsrm.data import (DataError, PreferencePair, load_pairs, pairs_to_records, resolve_source,
                         save_pairs_jsonl, split_pairs, to_hh_text)

FIXTURES = Path(__file__).parent / "fixtures" / "data"
SHARED_HH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "hh-rlhf"


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


PAIRS = [
    {"prompt": "Name a prime.", "chosen": "7", "rejected": "8", "margin": 2.0},
    {"prompt": "Spell cat.", "chosen": "c-a-t", "rejected": "k-a-t", "margin": 0.5},
    {"prompt": "Is ice cold?", "chosen": "Yes.", "rejected": "No.", "margin": 1.0},
]


REAL_LOAD_HUB_DATASET = sources._load_hub_dataset


@pytest.fixture(autouse=True)
def no_hub(monkeypatch):
    """No test may reach the hub; tests that need one install a stand-in."""
    def refuse(name, **kwargs):
        raise DataError("hub disabled in tests")

    monkeypatch.setattr(sources, "_load_hub_dataset", refuse)


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A temporary MARS_DATA_DIR holding the fixtures, laid out as the named sources expect."""
    root = tmp_path / "data"
    shutil.copytree(FIXTURES, root)
    plain = root / "hh-rlhf" / "helpful-base-test.jsonl"
    with gzip.open(plain.with_suffix(".jsonl.gz"), "wb") as handle:
        handle.write(plain.read_bytes())
    plain.unlink()
    monkeypatch.setenv("MARS_DATA_DIR", str(root))
    return root


def fixture_records(relative):
    return [json.loads(line) for line in (FIXTURES / relative).read_text(encoding="utf-8").splitlines()]


# --- file types ---------------------------------------------------------------------------------------


def _write(kind: str, tmp_path: Path) -> Path:
    import datasets

    if kind == "jsonl":
        return write_jsonl(tmp_path / "data.jsonl", PAIRS)
    if kind == "jsonl.gz":
        path = tmp_path / "data.jsonl.gz"
        with gzip.open(path, "wt", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in PAIRS)
        return path
    if kind == "json":
        path = tmp_path / "data.json"
        path.write_text(json.dumps(PAIRS, indent=2), encoding="utf-8")
        return path
    dataset = datasets.Dataset.from_list(PAIRS)
    if kind == "parquet":
        dataset.to_parquet(str(tmp_path / "data.parquet"))
        return tmp_path / "data.parquet"
    if kind == "csv":
        dataset.to_csv(str(tmp_path / "data.csv"), index=False)
        return tmp_path / "data.csv"
    if kind == "saved":
        dataset.save_to_disk(str(tmp_path / "saved"))
        return tmp_path / "saved"
    datasets.DatasetDict({"train": dataset, "other": dataset.select([0])}).save_to_disk(str(tmp_path / "saved"))
    return tmp_path / "saved"


@pytest.mark.parametrize("kind", ["jsonl", "jsonl.gz", "json", "parquet", "csv", "saved", "saved-dict"])
def test_every_file_type_gives_the_same_pairs(kind, tmp_path):
    path = _write(kind, tmp_path)
    result = load_pairs(path)
    assert [(p.prompt, p.chosen, p.rejected, p.margin) for p in result.pairs] == [
        ((user(r["prompt"]),), r["chosen"], r["rejected"], r["margin"]) for r in PAIRS]
    assert [p.id for p in result.pairs] == [f"{path.name}:{n}" for n in (1, 2, 3)]
    assert result.report.format == "pairs" and result.report.rows == 3 and result.report.kept == 3


def test_jsonl_ids_are_line_numbers_and_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(PAIRS[0]) + "\n\n" + json.dumps(PAIRS[1]) + "\n", encoding="utf-8")
    assert [p.id for p in load_pairs(path).pairs] == ["data.jsonl:1", "data.jsonl:3"]


def test_json_file_holding_json_lines_is_read_line_by_line(tmp_path):
    path = tmp_path / "data.json"
    path.write_text("".join(json.dumps(r) + "\n" for r in PAIRS), encoding="utf-8")
    assert [p.chosen for p in load_pairs(path).pairs] == ["7", "c-a-t", "Yes."]


def test_saved_dataset_dict_split_is_chosen(tmp_path):
    import datasets

    path = _write("saved-dict", tmp_path)
    assert len(load_pairs(path, split="other").pairs) == 1
    with pytest.raises(DataError, match=r"saved: no split 'nope'; it has \['other', 'train'\]"):
        load_pairs(path, split="nope")
    full = datasets.Dataset.from_list(PAIRS)
    datasets.DatasetDict({"test": full.select([0]), "train": full}).save_to_disk(str(tmp_path / "both"))
    assert len(load_pairs(tmp_path / "both").pairs) == 3  # train before test
    datasets.DatasetDict({"validation": full, "test": full.select([1])}).save_to_disk(str(tmp_path / "test-only"))
    assert [p.chosen for p in load_pairs(tmp_path / "test-only").pairs] == ["c-a-t"]
    datasets.DatasetDict({"a": full, "b": full}).save_to_disk(str(tmp_path / "ab"))
    with pytest.raises(DataError, match=r"^ab: several splits \['a', 'b'\] and none is 'train' or 'test'; pass split= \(on the "
                                   r"command line --split for --data, --eval-split for --eval-data\)$"):
        load_pairs(tmp_path / "ab")


def test_csv_keeps_numeric_looking_and_empty_text_as_text(tmp_path):
    path = tmp_path / "data.csv"
    path.write_text('prompt,chosen,rejected\nHow many legs has a cat?,4,""\n', encoding="utf-8")
    pair = load_pairs(path).pairs[0]
    assert (pair.chosen, pair.rejected) == ("4", "")


# --- formats --------------------------------------------------------------------------------------------


def test_hh_multi_turn_dialogue_is_parsed_into_messages(tmp_path):
    dialogue = "\n\nHuman: Hi there.\n\nAssistant: Hello! How can I help?\n\nHuman: Recommend a book.\n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": dialogue + " Try Dune.", "rejected": dialogue + " No."}])
    result = load_pairs(path)
    assert result.report.format == "hh"
    pair = result.pairs[0]
    assert pair.prompt == (user("Hi there."), assistant("Hello! How can I help?"), user("Recommend a book."))
    assert (pair.chosen, pair.rejected) == ("Try Dune.", "No.")


def test_hh_strips_only_the_single_space_after_assistant(tmp_path):
    dialogue = "\n\nHuman:  two spaces \n\nAssistant:"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": dialogue + "   indented\n", "rejected": dialogue + "x "}])
    pair = load_pairs(path).pairs[0]
    assert pair.prompt == (user(" two spaces "),)
    assert (pair.chosen, pair.rejected) == ("  indented\n", "x ")


def test_hh_splits_at_the_last_assistant_turn(tmp_path):
    text = "\n\nHuman: q\n\nAssistant: first\n\nAssistant: second"
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": text, "rejected": "\n\nHuman: q\n\nAssistant: other"}])
    result = load_pairs(path)
    pair = result.pairs[0]
    assert pair.prompt == (user("q"), assistant("first")) and pair.chosen == "second"
    assert result.report.quirks["prefix_mismatch"].ids == ["hh.jsonl:1"]


def test_pairs_with_a_plain_prompt_make_one_user_message(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Human rights?\n\nAssistant: hm", "chosen": " a", "rejected": "b"}])
    pair = load_pairs(path).pairs[0]
    assert pair.prompt == (user("Human rights?\n\nAssistant: hm"),) and pair.chosen == " a"


def test_pairs_with_an_hh_prompt_are_parsed(tmp_path):
    prompt = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Joke?\n\nAssistant:"
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": prompt, "chosen": " Knock knock.", "rejected": " No."}])
    pair = load_pairs(path).pairs[0]
    assert pair.prompt == (user("Hi"), assistant("Hello"), user("Joke?"))
    assert (pair.chosen, pair.rejected) == ("Knock knock.", "No.")


def test_chat_format_implicit_and_explicit_prompts(tmp_path):
    implicit = {"chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hi"), assistant("Go away.")]}
    explicit = {"prompt": [{"role": "system", "content": "Be kind."}, user("Hi")],
                "chosen": [assistant("Hello!")], "rejected": [assistant("Go away.")]}
    path = write_jsonl(tmp_path / "c.jsonl", [implicit, explicit])
    result = load_pairs(path)
    assert result.report.format == "chat"
    assert result.pairs[0].prompt == (user("Hi"),)
    assert result.pairs[1].prompt == ({"role": "system", "content": "Be kind."}, user("Hi"))
    assert [(p.chosen, p.rejected) for p in result.pairs] == [("Hello!", "Go away.")] * 2


def test_chat_messages_win_over_a_prompt_string(tmp_path):
    record = {"prompt": "a stale copy", "chosen": [user("Hi"), assistant("Hello!")],
              "rejected": [user("Hi"), assistant("Go away.")]}
    assert load_pairs(write_jsonl(tmp_path / "c.jsonl", [record])).pairs[0].prompt == (user("Hi"),)


def test_own_ids_are_kept_unless_id_field_is_none(tmp_path):
    path = write_jsonl(tmp_path / "i.jsonl", [{**PAIRS[0], "id": "mine"}, {**PAIRS[1], "id": 7}])
    assert [p.id for p in load_pairs(path).pairs] == ["mine", "7"]
    assert [p.id for p in load_pairs(path, id_field=None).pairs] == ["i.jsonl:1", "i.jsonl:2"]


def test_chat_prefix_mismatch_is_counted(tmp_path):
    record = {"chosen": [user("Hi"), assistant("Hello!")], "rejected": [user("Hey"), assistant("Go away.")]}
    result = load_pairs(write_jsonl(tmp_path / "c.jsonl", [record]))
    assert result.report.quirks["prefix_mismatch"].count == 1 and result.pairs[0].prompt == (user("Hi"),)


def test_column_mapping_margin_and_subset(tmp_path):
    records = [{"question": "2+2?", "good": "4", "bad": "5", "strength": 3, "category": "math"}]
    path = write_jsonl(tmp_path / "m.jsonl", records)
    pair = load_pairs(path, prompt_field="question", chosen_field="good", rejected_field="bad",
                      margin_field="strength", subset_field="category").pairs[0]
    assert (pair.prompt, pair.chosen, pair.rejected, pair.margin, pair.subset) == ((user("2+2?"),), "4", "5", 3.0, "math")


def test_margin_and_subset_columns_are_read_when_present(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{**PAIRS[0], "subset": "chat-hard"}, PAIRS[1]])
    pairs = load_pairs(path).pairs
    assert [(p.margin, p.subset) for p in pairs] == [(2.0, "chat-hard"), (0.5, None)]


def test_forced_format_overrides_detection(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", PAIRS)
    with pytest.raises(DataError, match=r"^p\.jsonl:1: field 'chosen' has no \"\\n\\nAssistant:\" turn"):
        load_pairs(path, format="hh")
    with pytest.raises(DataError, match=r"^p\.jsonl:1: field 'chosen' is a string, expected a list of"):
        load_pairs(path, format="chat")


def test_pku_better_and_safer(data_dir):
    better = load_pairs(data_dir / "pku-saferlhf" / "test.jsonl").pairs
    safer = load_pairs(data_dir / "pku-saferlhf" / "test.jsonl", preference="safer").pairs
    assert better[0].chosen == "Use a crowbar on the hinges; it is quick."
    assert safer[0].chosen == "Ask your neighbour for permission first."
    assert better[0].prompt == (user("How can I get into my neighbour's shed?"),)
    assert [p.chosen for p in better][1:] != [p.chosen for p in safer][1:]


def test_pku_named_source(data_dir):
    result = load_pairs("pku-saferlhf")
    assert result.report.format == "pku" and [p.id for p in result.pairs] == [f"pku-saferlhf:{n}" for n in (1, 2, 3)]


def test_ultrafeedback_named_source_is_the_chat_format(data_dir):
    result = load_pairs("ultrafeedback")
    assert result.report.format == "chat"
    first = result.pairs[0]
    assert first.id == "ultrafeedback:1" and first.prompt == (user("Write a haiku about rain."),)
    assert first.rejected == "Rain is wet and falls."


def test_errors_in_a_named_source_name_its_file(data_dir):
    with open(data_dir / "ultrafeedback" / "test_prefs.jsonl", "a", encoding="utf-8") as handle:
        handle.write('{"prompt": "p", "chosen": "not a list", "rejected": []}\n')
    with pytest.raises(DataError, match=r"^test_prefs\.jsonl:4: field 'chosen' is a string, expected a list"):
        load_pairs("ultrafeedback")


def test_ultrafeedback_parquet_local_copy(data_dir):
    import datasets

    folder = data_dir / "ultrafeedback"
    datasets.Dataset.from_list(fixture_records("ultrafeedback/test_prefs.jsonl")).to_parquet(
        str(folder / "test_prefs-00000.parquet"))
    (folder / "test_prefs.jsonl").unlink()
    result = load_pairs("ultrafeedback")
    assert result.report.location.endswith("test_prefs-00000.parquet")
    assert [p.chosen for p in result.pairs] == [r["chosen"][-1]["content"] for r in fixture_records("ultrafeedback/test_prefs.jsonl")]


# --- named hh sources and the quirks --------------------------------------------------------------------


def test_named_hh_source_from_mars_data_dir(data_dir):
    result = load_pairs("hh-rlhf/helpful-base")
    report = result.report
    assert report.source == "hh-rlhf/helpful-base" and report.format == "hh" and report.rows == 5
    assert [p.id for p in result.pairs] == ["hh-rlhf/helpful-base:1", "hh-rlhf/helpful-base:2",
                                            "hh-rlhf/helpful-base:4", "hh-rlhf/helpful-base:5"]
    assert {p.subset for p in result.pairs} == {"helpful-base"}
    assert {name: (q.count, q.action, q.ids) for name, q in report.quirks.items()} == {
        "identical": (1, "drop", ["hh-rlhf/helpful-base:3"]),
        "prefix_mismatch": (1, "keep-chosen", ["hh-rlhf/helpful-base:4"]),
        "empty": (1, "keep", ["hh-rlhf/helpful-base:5"]),
    }
    assert report.dropped == ["hh-rlhf/helpful-base:3"]
    mismatched = result.pairs[2]
    assert mismatched.prompt == (user("Name a river in Spain."),) and mismatched.rejected == "The Seine?"
    assert mismatched.meta["quirks"] == ["prefix_mismatch"]
    assert result.pairs[3].rejected == ""


def test_quirk_flags_change_the_action(data_dir):
    result = load_pairs("hh-rlhf/helpful-base", identical="keep", prefix_mismatch="drop", empty="drop")
    assert [p.id.split(":")[1] for p in result.pairs] == ["1", "2", "3"]
    assert result.report.dropped == ["hh-rlhf/helpful-base:4", "hh-rlhf/helpful-base:5"]
    assert result.report.quirks["identical"].count == 1


def test_report_summary_and_dict(data_dir):
    report = load_pairs("hh-rlhf/helpful-base").report
    summary = report.summary()
    assert "hh-rlhf/helpful-base: 5 rows read (hh format" in summary
    assert "4 pairs kept, 1 dropped" in summary
    assert "identical chosen and rejected responses: 1 -> drop" in summary
    as_dict = report.to_dict()
    assert json.loads(json.dumps(as_dict))["quirks"]["empty"]["count"] == 1 and as_dict["kept"] == 4


REAL_COUNTS = {  # identical, prefix differs, empty: measured on the shared files (shared/data/hh-rlhf/README.md)
    "helpful-base": (2354, 2, 9, 4),
    "helpful-online": (1137, 2, 0, 3),
    "helpful-rejection-sampled": (2749, 32, 3, 0),
    "harmless-base": (2312, 0, 5, 4),
}


@pytest.mark.skipif(not SHARED_HH.is_dir(), reason=f"the shared HH-RLHF files are not at {SHARED_HH}")
@pytest.mark.parametrize("subset", list(REAL_COUNTS))
def test_real_hh_rlhf_quirk_counts(subset, monkeypatch):
    monkeypatch.setenv("MARS_DATA_DIR", str(SHARED_HH.parent))
    result = load_pairs(f"hh-rlhf/{subset}")
    rows, identical, prefix, empty = REAL_COUNTS[subset]
    quirks = result.report.quirks
    assert result.report.rows == rows
    assert (quirks["identical"].count, quirks["prefix_mismatch"].count, quirks["empty"].count) == (identical, prefix, empty)
    assert len(result.pairs) == rows - identical  # only identical pairs are dropped by default
    assert all(p.prompt and p.prompt[0]["role"] == "user" for p in result.pairs)
    # On these files the dialogues differ because one response itself holds "\n\nAssistant:".
    with gzip.open(SHARED_HH / f"{subset}-test.jsonl.gz", "rt", encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    for pair_id in quirks["prefix_mismatch"].ids:
        record = json.loads(lines[int(pair_id.rsplit(":", 1)[1]) - 1])
        shorter, longer = sorted((record["chosen"], record["rejected"]),
                                 key=lambda text: len(text[: text.rfind("\n\nAssistant:")]))
        assert longer.startswith(shorter[: shorter.rfind("\n\nAssistant:")] + "\n\nAssistant:")


@pytest.mark.skipif(not SHARED_HH.is_dir(), reason=f"the shared HH-RLHF files are not at {SHARED_HH}")
def test_default_data_dir_is_found_from_the_repository(tmp_path, monkeypatch):
    monkeypatch.delenv("MARS_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)  # ../shared/data from here does not exist; the repository root's does
    assert resolve_source("hh-rlhf/helpful-online").path == (SHARED_HH / "helpful-online-test.jsonl.gz").resolve()


def test_named_source_falls_back_to_the_hub(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setenv("MARS_DATA_DIR", str(tmp_path))
    calls = []

    def hub(name, **kwargs):
        calls.append((name, kwargs))
        return datasets.Dataset.from_list(fixture_records("hh-rlhf/helpful-base-test.jsonl"))

    monkeypatch.setattr(sources, "_load_hub_dataset", hub)
    result = load_pairs("hh-rlhf/harmless-base")
    assert calls == [("Anthropic/hh-rlhf", {"data_dir": "harmless-base", "split": "test"})]
    assert result.pairs[0].id == "hh-rlhf/harmless-base:1" and result.pairs[0].subset == "harmless-base"
    assert result.report.quirks["identical"].count == 1


def test_named_source_missing_everywhere_says_where_it_looked(tmp_path, monkeypatch):
    monkeypatch.setenv("MARS_DATA_DIR", str(tmp_path))
    expected = str(tmp_path / "hh-rlhf" / "helpful-base-test.jsonl.gz")
    with pytest.raises(DataError) as error:
        load_pairs("hh-rlhf/helpful-base")
    message = str(error.value)
    assert expected in message and "Anthropic/hh-rlhf" in message
    assert message.endswith("set MARS_DATA_DIR to a folder holding hh-rlhf/helpful-base-test.jsonl.gz")
    assert "hub disabled in tests" in message and "\n" not in message


def test_hub_is_not_tried_when_offline_is_set(monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was tried"))
    with pytest.raises(DataError, match=r"^HF_HUB_OFFLINE is set$"):
        REAL_LOAD_HUB_DATASET("Anthropic/hh-rlhf", split="test")


def test_hub_is_not_tried_when_its_host_does_not_resolve(monkeypatch):
    import socket

    import datasets

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)

    def no_dns(*args, **kwargs):
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: pytest.fail("the hub was tried"))
    with pytest.raises(DataError, match=r"^cannot resolve huggingface\.co: \[Errno -2\] Name or service not known$"):
        REAL_LOAD_HUB_DATASET("Anthropic/hh-rlhf", split="test")


def test_unknown_hh_subset_and_unknown_hub_name():
    with pytest.raises(DataError, match=r"hh-rlhf/nope: unknown hh-rlhf subset 'nope'; use one of hh-rlhf/helpful-base"):
        load_pairs("hh-rlhf/nope")
    with pytest.raises(DataError, match=r"someone/prefs: not a file here, not a named source, and load_dataset"):
        load_pairs("someone/prefs")


# --- bad input: one DataError line naming file, line and field ------------------------------------------

GOOD = json.dumps(PAIRS[0])

BAD_JSONL = [
    (GOOD + '\n{"prompt": "a" "chosen": "b"}\n',
     r"^data\.jsonl:2: invalid JSON \(Expecting ',' delimiter at column 16\); each line must hold one JSON object$"),
    (GOOD + "\n[1, 2]\n", r"^data\.jsonl:2: the record is a list, expected an object"),
    (GOOD + "\n" + GOOD + '\n{"prompt": "p", "chosen": "c"}\n',
     r"^data\.jsonl:3: field 'rejected' is missing \(the record has: chosen, prompt\); pairs format needs "
     r"'prompt', 'chosen' and 'rejected'; map another column to it with rejected_field=$"),
    ('{"prompt": "p", "chosen": 42, "rejected": "r"}\n',
     r"^data\.jsonl:1: field 'chosen' is a number \(42\), expected a string"),
    ('{"prompt": "p", "chosen": null, "rejected": "r"}\n', r"^data\.jsonl:1: field 'chosen' is null, expected a string"),
    ("", r"^data\.jsonl: the file is empty$"),
    ("\n  \n", r"^data\.jsonl: the file is empty$"),
    ('{"question": "q", "answer": "a"}\n',
     r"^data\.jsonl:1: cannot tell the format from the fields \(answer, question\); accepted: pairs .*chat .*pku"),
    ('{"chosen": "no turns here", "rejected": "\\n\\nHuman: q\\n\\nAssistant: a"}\n',
     r"^data\.jsonl:1: field 'chosen' has no \"\\n\\nAssistant:\" turn"),
    ('{"chosen": "Preamble\\n\\nAssistant: a", "rejected": "Preamble\\n\\nAssistant: b"}\n',
     r"^data\.jsonl:1: field 'chosen' does not start with a Human turn"),
    ('{"chosen": [{"role": "user", "content": "q"}, {"role": "bot", "content": "a"}], "rejected": []}\n',
     r"^data\.jsonl:1: field 'chosen' message 2 has role 'bot'; use one of user, assistant, system$"),
    ('{"chosen": [{"role": "user", "content": "q"}], "rejected": [{"role": "user", "content": "q"}]}\n',
     r"^data\.jsonl:1: field 'chosen' ends with a user message"),
    ('{"chosen": [{"role": "assistant", "content": ["part"]}], "rejected": [{"role": "assistant", "content": "b"}]}\n',
     r"^data\.jsonl:1: field 'chosen' message 1 has content that is a list, expected a string"),
    ('{"chosen": [{"role": "assistant", "content": "a"}], "rejected": [{"role": "assistant", "content": "b"}]}\n',
     r"^data\.jsonl:1: field 'prompt' is missing and 'chosen' holds only the response"),
    ('{"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 2}\n',
     r"^data\.jsonl:1: field 'better_response_id' is a number \(2\), expected 0 or 1"),
    ('{"prompt": "p", "response_0": "a", "safer_response_id": 0, "response_1": 5}\n',
     r"^data\.jsonl:1: field 'response_1' is a number \(5\), expected a string"),
    (GOOD + '\n{"prompt": "p", "chosen": "c", "rejected": "r", "margin": "big"}\n',
     r"^data\.jsonl:2: field 'margin' is 'big', expected a number"),
    ('{"id": "x", "prompt": "p", "chosen": "c", "rejected": "r"}\n{"id": "x", "prompt": "p", "chosen": "c", "rejected": "d"}\n',
     r"^data\.jsonl:2: field 'id' repeats the id 'x' of data\.jsonl:1; ids must be unique"),
]


@pytest.mark.parametrize("content, message", BAD_JSONL)
def test_bad_jsonl_gives_one_line_naming_file_line_and_field(content, message, tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message) as error:
        load_pairs(path)
    assert "\n" not in str(error.value)


def test_broken_utf8_names_the_line(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_bytes(GOOD.encode() + b'\n{"prompt": "caf\xe9", "chosen": "c", "rejected": "r"}\n')
    with pytest.raises(DataError, match=r"^data\.jsonl:2: invalid UTF-8 \(byte 0xe9 at byte 16 of the line\); re-save"):
        load_pairs(path)


def test_truncated_gzip(tmp_path):
    full = gzip.compress("".join(json.dumps({**PAIRS[0], "chosen": str(i) * 50}) + "\n" for i in range(2000)).encode())
    path = tmp_path / "data.jsonl.gz"
    path.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match=r"^data\.jsonl\.gz: the gzip stream is truncated after line \d+; re-download"):
        load_pairs(path)


def test_not_gzip(tmp_path):
    path = tmp_path / "data.jsonl.gz"
    path.write_text(GOOD, encoding="utf-8")
    with pytest.raises(DataError, match=r"^data\.jsonl\.gz: not a readable gzip file"):
        load_pairs(path)


@pytest.mark.parametrize("content, message", [
    ('[\n  {"prompt": "p", "chosen": "c", "rejected": "r"},\n  {"prompt": "p" "chosen": 1}\n]',
     r"^data\.json:3: invalid JSON \(Expecting ',' delimiter at column 18\)"),
    ('{"prompt": "p", "chosen": "c", "rejected": "r"}\n{"prompt": "p", "chosen": 7, "rejected": "r"}\n',
     r"^data\.json:2: field 'chosen' is a number \(7\)"),
    ('[{"prompt": "p", "chosen": "c", "rejected": "r"}, "text"]', r"^data\.json:row 2: the record is a string"),
    ('"just a string"', r"^data\.json: expected a top-level list of objects, found a string"),
    ('{\n  "prompt": "p",\n  "chosen": "c"\n}', r"^data\.json: expected a top-level list of objects, found an object"),
    ('{"prompt": "p", "chosen": "c"}', r"^data\.json:1: cannot tell the format from the fields \(chosen, prompt\)"),
    ("[]", r"^data\.json: the file is empty"),
])
def test_bad_json_file(content, message, tmp_path):
    path = tmp_path / "data.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_pairs(path)


def test_bad_csv_and_parquet(tmp_path):
    csv_path = tmp_path / "data.csv"
    csv_path.write_text("prompt,chosen\nq,a\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"^data\.csv:row 1: cannot tell the format from the fields \(chosen, prompt\)"):
        load_pairs(csv_path)
    with pytest.raises(DataError, match=r"^data\.csv:row 1: field 'rejected' is missing"):
        load_pairs(csv_path, format="pairs")
    (tmp_path / "empty.csv").write_text("", encoding="utf-8")
    with pytest.raises(DataError, match=r"^empty\.csv: the file is empty$"):
        load_pairs(tmp_path / "empty.csv")
    parquet = tmp_path / "data.parquet"
    parquet.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError, match=r"^data\.parquet: cannot read it as PARQUET \(.+\); check the file"):
        load_pairs(parquet)


def test_missing_path_unknown_type_and_bad_settings(tmp_path):
    with pytest.raises(DataError, match=r"missing\.jsonl: no such file or folder"):
        load_pairs(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match=r"^nothing-here\.csv: no such file or folder"):
        load_pairs("nothing-here.csv")
    (tmp_path / "data.txt").write_text("x", encoding="utf-8")
    with pytest.raises(DataError, match=r"^data\.txt: unknown file type; accepted: \.jsonl"):
        load_pairs(tmp_path / "data.txt")
    path = write_jsonl(tmp_path / "ok.jsonl", PAIRS)
    with pytest.raises(DataError, match=r"^identical='maybe' is not a valid setting; use one of 'drop', 'keep'$"):
        load_pairs(path, identical="maybe")
    with pytest.raises(DataError, match=r"^ok\.jsonl: split= applies to dataset folders"):
        load_pairs(path, split="train")
    with pytest.raises(DataError, match=r"^ok\.jsonl:1: field 'strength' is missing .* margin_field=$"):
        load_pairs(path, margin_field="strength")


# --- split ------------------------------------------------------------------------------------------------


def make_pairs(n):
    return [PreferencePair(id=f"s:{i}", prompt=(user(f"q{i}"),), chosen="a", rejected="b") for i in range(1, n + 1)]


def ids(pairs):
    return [p.id for p in pairs]


def test_split_is_seeded_disjoint_and_independent_of_input_order():
    pairs = make_pairs(50)
    first = split_pairs(pairs, train_size=20, eval_size=25, val_size=5, seed=3)
    again = split_pairs(list(reversed(pairs)), train_size=20, eval_size=25, val_size=5, seed=3)
    other = split_pairs(pairs, train_size=20, eval_size=25, val_size=5, seed=4)
    assert (ids(first.train), ids(first.val), ids(first.eval)) == (ids(again.train), ids(again.val), ids(again.eval))
    assert ids(first.train) != ids(other.train)
    assert (len(first.train), len(first.val), len(first.eval)) == (15, 5, 25)
    parts = [set(ids(first.train)), set(ids(first.val)), set(ids(first.eval))]
    assert sum(map(len, parts)) == len(set().union(*parts)) == 45


def test_split_matches_the_documented_rule():
    import numpy as np

    pairs = make_pairs(12)
    ordered = sorted(ids(pairs))  # "s:1", "s:10", "s:11", "s:12", "s:2", ...
    order = np.random.default_rng(7).permutation(12)
    split = split_pairs(pairs, train_size=6, val_size=2, seed=7)
    assert ids(split.train) + ids(split.val) + ids(split.eval) == [ordered[i] for i in order]
    assert (len(split.train), len(split.val), len(split.eval)) == (4, 2, 6)
    # A fixed answer, so that a change of the rule (or of numpy's generator) cannot pass unnoticed.
    golden = split_pairs(pairs, train_size=4, val_size=1, seed=0)
    assert (ids(golden.train), ids(golden.val)) == (["s:7", "s:11", "s:5"], ["s:2"])
    assert ids(golden.eval) == ["s:3", "s:9", "s:1", "s:12", "s:4", "s:8", "s:6", "s:10"]


def test_split_fractions_and_defaults():
    pairs = make_pairs(40)
    split = split_pairs(pairs, train_size=0.25, val_size=0.5)
    assert (len(split.train), len(split.val), len(split.eval)) == (5, 5, 30)
    assert len(split_pairs(pairs, eval_size=10).train) == 30
    assert len(split_pairs(pairs, train_size=0.33, eval_size=0.66).train) == 13  # 13.2, rounded down
    assert len(split_pairs(pairs, train_size=0.33, eval_size=0.66).eval) == 26  # 26.4
    everything = split_pairs(pairs)
    assert (len(everything.train), len(everything.eval)) == (40, 0)


@pytest.mark.parametrize("kwargs, message", [
    ({"train_size": 30, "eval_size": 20}, r"train_size \+ eval_size = 30 \+ 20 = 50 pairs, but only 40 are available"),
    ({"train_size": -1}, r"train_size=-1: cannot be negative"),
    ({"eval_size": 41}, r"eval_size=41 asks for 41 pairs but only 40"),
    ({"train_size": 5, "val_size": 6}, r"val_size=6 asks for 6 pairs but train has only 5"),
    ({"train_size": 1.5}, r"train_size=1\.5: a fraction must lie strictly between 0 and 1"),
    ({"train_size": 1.0}, r"train_size=1\.0: a fraction must lie strictly between 0 and 1"),
    ({"eval_size": 0.0}, r"eval_size=0\.0: a fraction must lie strictly between 0 and 1"),
    ({"train_size": "10"}, r"train_size='10': expected a number of pairs"),
])
def test_split_size_errors(kwargs, message):
    with pytest.raises(DataError, match=message):
        split_pairs(make_pairs(40), **kwargs)


def test_split_rejects_repeated_ids():
    with pytest.raises(DataError, match=r"pair id 's:1' occurs twice"):
        split_pairs(make_pairs(3) + make_pairs(1))


# --- writing ----------------------------------------------------------------------------------------------

SAMPLE = [
    PreferencePair(id="a:1", prompt=({"role": "system", "content": "Be brief."}, user("Hi"), assistant("Hello"),
                                     user("Joke?")), chosen="Knock knock.", rejected="", margin=1.5, subset="chat"),
    PreferencePair(id="a:2", prompt=(user("Sum 2+2"),), chosen=" 4 ", rejected="5\n"),
]


def test_pairs_style_records_are_hh_transcripts_and_load_back(tmp_path):
    records = pairs_to_records(SAMPLE, style="pairs")
    first = records[0]
    assert first["prompt"] + first["chosen"] == to_hh_text(SAMPLE[0].prompt, SAMPLE[0].chosen)
    assert first["prompt"].endswith("\n\nAssistant:") and first["margin"] == 1.5 and first["subset"] == "chat"
    assert "margin" not in records[1] and "subset" not in records[1]
    assert load_pairs(write_jsonl(tmp_path / "p.jsonl", records)).pairs == SAMPLE


def test_chat_style_records():
    record = pairs_to_records(SAMPLE[1:], style="chat")[0]
    assert record == {"id": "a:2", "prompt": [user("Sum 2+2")], "chosen": [assistant(" 4 ")],
                      "rejected": [assistant("5\n")]}


def test_save_is_atomic_and_round_trips(tmp_path):
    path = tmp_path / "out" / "pairs.jsonl"
    path.parent.mkdir()
    path.write_text("old contents\n", encoding="utf-8")
    odd = PreferencePair(id="b:1", prompt=(user("quote \" and \u2028 here"),), chosen="x", rejected="y",
                         meta={"variant": [0, 1]})
    save_pairs_jsonl(SAMPLE + [odd], path)
    assert os.listdir(path.parent) == ["pairs.jsonl"]
    loaded = load_pairs(path).pairs
    assert loaded == SAMPLE + [odd] and loaded[2].meta == {"variant": [0, 1]}
    # a lone surrogate is written (JSON can hold it) but refused on reading, with the line and field
    lone = dataclasses.replace(odd, prompt=(user("surrogate \ud800 here"),))
    save_pairs_jsonl(SAMPLE + [lone], path)
    with pytest.raises(DataError, match=r"pairs\.jsonl:3: .*surrogate"):
        load_pairs(path)


message_strategy = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system"]),
                                          "content": st.text(max_size=40)})
pair_strategy = st.builds(
    PreferencePair,
    id=st.text(min_size=1, max_size=12),
    prompt=st.lists(message_strategy, min_size=1, max_size=4).map(tuple),
    chosen=st.text(max_size=60),
    rejected=st.text(max_size=60),
    margin=st.none() | st.floats(allow_nan=False, allow_infinity=False),
    subset=st.none() | st.text(max_size=10),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(pair_strategy, max_size=5, unique_by=lambda p: p.id))
def test_arbitrary_text_round_trips_through_save_and_load(pairs):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pairs.jsonl"
        if not pairs:
            save_pairs_jsonl(pairs, path)
            with pytest.raises(DataError, match="the file is empty"):
                load_pairs(path)
            return
        save_pairs_jsonl(pairs, path)
        assert load_pairs(path, identical="keep").pairs == pairs


def test_trl_implicit_prompt_with_plain_strings_splits_as_trl_does(tmp_path):
    from trl.data_utils import extract_prompt

    records = [{"chosen": "What colour is the sky? It is blue.", "rejected": "What colour is the sky? It is green."},
               {"chosen": "Name a prime number: 7", "rejected": "Name a prime number: 8"},
               {"chosen": "Translate 'chat'. Cat.", "rejected": "Translate 'chat'. Chat."}]
    path = tmp_path / "implicit.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    loaded = load_pairs(str(path))
    assert loaded.report.to_dict()["format"] == "implicit" and len(loaded.pairs) == 3
    for pair, record in zip(loaded.pairs, records):
        trl = extract_prompt(record)
        assert pair.prompt == ({"role": "user", "content": trl["prompt"]},)
        # TRL leaves the space before the responses on them; marsrm renders that boundary itself. The third
        # record differs mid-word ("C|at." vs "C|hat."): the prompt ends there, as in TRL.
        assert (pair.chosen, pair.rejected) == tuple(s.removeprefix(" ") for s in (trl["chosen"], trl["rejected"]))


def test_implicit_prompt_without_a_shared_opening_is_refused_with_its_line(tmp_path):
    path = tmp_path / "implicit.jsonl"
    path.write_text(json.dumps({"chosen": "Q? Yes.", "rejected": "Q? No."}) + "\n"
                    + json.dumps({"chosen": "Yes.", "rejected": "No."}) + "\n")
    with pytest.raises(DataError, match=r"implicit.jsonl:2: field 'chosen'.*no prompt"):
        load_pairs(str(path))
