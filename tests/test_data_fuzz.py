"""Input fuzzing for marsrm.data: any file ends in validated pairs or in one DataError line naming it.

Hypothesis writes files of every kind `load_pairs` reads (.jsonl, .jsonl.gz, .json, .csv, .parquet) from
random bytes, from valid records of each format bent out of shape (wrong types, missing, extra, duplicate
and look-alike fields, formats mixed in one file) and from byte-level damage (flips, truncation, broken
UTF-8, control characters, cut gzip streams). Every load runs under a time limit, so a hang fails.
The cases run are counted and printed at the end of the module (docs/RELIABILITY.md quotes the figures).
"""
from __future__ import annotations

import contextlib
import csv
import gzip
import io
import json
import math
import os
import re
import shutil
import signal
import tempfile
import time
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from marsrm.data import formats, readers
from marsrm.data import ROLES, DataError, LoadResult, PreferencePair, load_pairs, save_pairs_jsonl

KINDS = ("jsonl", "jsonl.gz", "json", "csv", "parquet")
LOAD_LIMIT_S = 20  # per load: generous, so only a real hang trips it
CASES: Counter = Counter()  # (kind, "loaded" | "DataError") -> number of loads checked
SLOWEST = {"seconds": 0.0}
FOLDERS: dict[str, Path] = {}  # "files": where examples are written, set by the module fixture


def fuzz_settings(max_examples: int):
    return settings(max_examples=max_examples, derandomize=True, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.large_base_example])


@pytest.fixture(scope="module", autouse=True)
def private_tempdir(tmp_path_factory, request):
    """Loads get a temporary folder of their own (checked empty after each load); the counts are reported."""
    root = tmp_path_factory.mktemp("fuzz")
    loader_tmp = root / "loader-tmp"
    loader_tmp.mkdir()
    FOLDERS["files"] = root
    started = time.perf_counter()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tempfile, "tempdir", str(loader_tmp))
        yield loader_tmp
    total = sum(CASES.values())
    if not total:
        return
    by_kind = {kind: {outcome: CASES[kind, outcome] for outcome in ("loaded", "DataError")}
               for kind in sorted({kind for kind, _ in CASES})}
    summary = {"cases": total, "loaded": sum(v["loaded"] for v in by_kind.values()),
               "DataError": sum(v["DataError"] for v in by_kind.values()), "by_kind": by_kind,
               "seconds": round(time.perf_counter() - started, 1), "slowest_load_s": round(SLOWEST["seconds"], 2)}
    (tmp_path_factory.getbasetemp() / "data_fuzz_counts.json").write_text(json.dumps(summary, indent=2))
    line = (f"data fuzz: {total} load_pairs cases checked ({summary['loaded']} loaded and validated, "
            f"{summary['DataError']} one-line DataError) in {summary['seconds']} s; slowest load "
            f"{summary['slowest_load_s']} s; by kind: " + ", ".join(f"{kind} {sum(v.values())}"
                                                                   for kind, v in by_kind.items()))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        if reporter is not None:
            reporter.write_line("\n" + line)
        else:
            print(line)


# --- the property ------------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the alarm; a BaseException, so no `except Exception` in the loader can turn it into a DataError."""


@contextlib.contextmanager
def time_limit(seconds: float):
    def on_alarm(signum, frame):
        raise Hang(f"load_pairs ran past {seconds} s")

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def assert_valid(result: LoadResult) -> None:
    """Every pair validated; no record lost without a trace (kept, or dropped by a quirk rule and listed)."""
    report = result.report
    assert isinstance(result, LoadResult) and report.rows > 0
    assert report.kept == len(result.pairs) and report.rows == report.kept + len(report.dropped)
    for pair in result.pairs:
        assert isinstance(pair, PreferencePair)
        assert isinstance(pair.id, str) and pair.id
        assert isinstance(pair.prompt, tuple) and pair.prompt
        for message in pair.prompt:
            assert message["role"] in ROLES and isinstance(message["content"], str)
        assert isinstance(pair.chosen, str) and isinstance(pair.rejected, str)
        assert pair.margin is None or (isinstance(pair.margin, float) and math.isfinite(pair.margin))
        assert pair.subset is None or isinstance(pair.subset, str)
    assert len({pair.id for pair in result.pairs}) == len(result.pairs)


def check_load(path: Path, kind: str, **kwargs) -> LoadResult | DataError:
    """load_pairs(path) ends in validated pairs or in one DataError line that starts with the file's name."""
    started = time.perf_counter()
    try:
        with time_limit(LOAD_LIMIT_S):
            result = load_pairs(path, **kwargs)
    except DataError as error:
        message = str(error)
        assert len(message.splitlines()) == 1 and "\n" not in message and "\r" not in message, message[:300]
        assert message.startswith(path.name), message[:300]
        assert len(message) < 1000, f"a {len(message)}-character message: {message[:300]}"
        outcome, label = error, "DataError"
    else:
        assert_valid(result)
        outcome, label = result, "loaded"
    SLOWEST["seconds"] = max(SLOWEST["seconds"], time.perf_counter() - started)
    leftovers = os.listdir(tempfile.gettempdir())
    assert not leftovers, f"the load left {leftovers} in the temporary folder"
    CASES[kind, label] += 1
    return outcome


@contextlib.contextmanager
def example_file(name: str, content: bytes):
    """`content` written as `name` in a folder of its own, removed afterwards (hypothesis runs many)."""
    folder = Path(tempfile.mkdtemp(dir=FOLDERS["files"], prefix="example-"))
    try:
        path = folder / name
        path.write_bytes(content)
        yield path
    finally:
        shutil.rmtree(folder, ignore_errors=True)


# --- strategies: records -----------------------------------------------------------------------------------


class Obj(list):
    """A JSON object as (key, value) pairs, so that one object can repeat a key (JSON keeps the last)."""


class Raw(str):
    """JSON text written as is: what json.dumps cannot write (a 5,000-digit integer) or will not."""


SPECIALS = ["\x00", "\x01", "\x1b", "\x7f", "\t", "\r", "\n", "\u2028", "\x85", "\ufeff", "\ud800", "\"", "\\",
            ",", "\n\nHuman:", "\n\nAssistant:", "\n\nSystem:", "Human: ", " ", "é", "😀"]
texts = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(SPECIALS)), max_size=4).map("".join)
FIELDS = ["prompt", "chosen", "rejected", "response_0", "response_1", "better_response_id", "safer_response_id",
          "margin", "subset", "id", "meta", "messages", "Prompt", "CHOSEN", "chosen ", "", "a\nb", "role", "content"]
field_names = st.one_of(st.sampled_from(FIELDS), texts)
RAW_VALUES = [Raw("1" * 5000), Raw("[" * 3000 + "]" * 3000), Raw('{"a":' * 2000 + "1" + "}" * 2000), Raw("NaN"),
              Raw("-Infinity"), Raw("1e999"), Raw("-0"), Raw('"\\ud800"'), Raw('"\\u0000"')]
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | texts | st.sampled_from(RAW_VALUES),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(field_names, inner, max_size=3),
    max_leaves=8)

messages = st.fixed_dictionaries({"role": st.sampled_from(ROLES), "content": texts})
turns = st.lists(st.tuples(st.sampled_from(["Human", "Assistant"]), texts), min_size=1, max_size=3)


def transcript(dialogue, response):
    return "".join(f"\n\n{speaker}: {text}" for speaker, text in dialogue) + f"\n\nAssistant: {response}"


clean_extras = st.fixed_dictionaries({}, optional={
    "margin": st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 10),
                        st.sampled_from(["1.5", " 2 ", "", None])),
    "subset": st.one_of(texts, st.none()),
    "meta": st.dictionaries(st.text(max_size=5), st.integers() | texts, max_size=2),
})
wild_extras = st.fixed_dictionaries({}, optional={
    "margin": st.one_of(st.floats(), st.integers(), st.sampled_from(["1.5", "nan", "inf", "", "big", Raw("1" * 400)])),
    "subset": st.one_of(texts, st.none()),
    "id": st.one_of(texts, st.integers(), st.just("")),
    "meta": json_values,
})
pairs_records = st.fixed_dictionaries({
    "prompt": st.one_of(texts, turns.map(lambda t: transcript(t, "").rstrip(" ")), st.lists(messages, max_size=3)),
    "chosen": texts, "rejected": texts})
hh_records = st.tuples(turns, texts, texts, st.booleans()).map(lambda t: {
    "chosen": transcript(t[0], t[1]), "rejected": transcript(t[0] if t[3] else t[0][:1], t[2])})
chat_records = st.tuples(st.lists(messages, max_size=3), texts, texts, st.booleans()).map(lambda t: {
    **({"prompt": t[0]} if t[3] else {}),
    "chosen": ([] if t[3] else t[0]) + [{"role": "assistant", "content": t[1]}],
    "rejected": ([] if t[3] else t[0]) + [{"role": "assistant", "content": t[2]}]})
choice_ids = st.sampled_from([0, 1, 1.0, 0.0, "1", " 0", 2, -1, None, True, 0.5, "x"])
pku_records = st.fixed_dictionaries({"prompt": texts, "response_0": texts, "response_1": texts,
                                     "better_response_id": choice_ids, "safer_response_id": choice_ids})
FORMATS = {"pairs": pairs_records, "hh": hh_records, "chat": chat_records, "pku": pku_records}


@st.composite
def records(draw, fmt: str, bend: bool):
    """One record of format `fmt` (a random one for "mixed"); when `bend`, maybe bent: a field retyped,
    dropped, added, repeated or named like another format's, or the whole record not an object at all."""
    if fmt == "mixed":
        fmt = draw(st.sampled_from(sorted(FORMATS)))
    record = Obj({**draw(FORMATS[fmt]), **draw(wild_extras if bend else clean_extras)}.items())
    changes = ["retype", "drop", "add", "repeat", "not-an-object"]
    for change in draw(st.lists(st.sampled_from(changes), min_size=1, max_size=2)) if bend else []:
        if change == "retype" and record:
            index = draw(st.integers(0, len(record) - 1))
            record[index] = (record[index][0], draw(json_values))
        elif change == "drop" and record:
            del record[draw(st.integers(0, len(record) - 1))]
        elif change in ("add", "repeat"):
            key = draw(st.sampled_from([k for k, _ in record] or FIELDS)) if change == "repeat" else draw(field_names)
            record.append((key, draw(json_values)))
        elif change == "not-an-object":
            return draw(json_values)
    return record


def record_lists(bend: bool, max_size: int = 4):
    """Records of one format (or of several, "mixed"); when `bend`, each is bent out of shape or left whole."""
    return st.sampled_from(sorted(FORMATS) + ["mixed"]).flatmap(lambda fmt: st.lists(
        st.one_of(records(fmt, bend=False), records(fmt, bend=True)) if bend else records(fmt, bend=False),
        min_size=1, max_size=max_size))


# --- strategies: files -------------------------------------------------------------------------------------


def dump(value, ascii_only: bool) -> str:
    """JSON text, writing Obj's repeated keys and Raw text as they are."""
    if isinstance(value, Raw):
        return str(value)
    if isinstance(value, Obj):
        return "{" + ", ".join(f"{json.dumps(str(k), ensure_ascii=ascii_only)}: {dump(v, ascii_only)}"
                               for k, v in value) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(dump(v, ascii_only) for v in value) + "]"
    if isinstance(value, dict):
        return dump(Obj(value.items()), ascii_only)
    return json.dumps(value, ensure_ascii=ascii_only)


def utf8(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # a lone surrogate becomes the invalid bytes ED A0 80


def cell(value) -> str:
    return value if isinstance(value, str) else dump(value, False)


def table(rows) -> tuple[list[str], list[list]]:
    """Records as (header, rows): the first object's keys, repeats kept; other records fill what they have."""
    header = next(([str(k) for k, _ in row] for row in rows if isinstance(row, Obj)), ["value"])
    filled = []
    for row in rows:
        values = dict(row) if isinstance(row, Obj) else {"value": row}
        filled.append([values.get(column) for column in header])
    return header, filled


def to_csv(rows) -> bytes:
    header, filled = table(rows)
    out = io.StringIO(newline="")
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows([["" if v is None else cell(v) for v in row] for row in filled])
    return utf8(out.getvalue())


def to_parquet(rows) -> bytes:
    """Each column typed when pyarrow can type it (numbers, message lists), else as text; all text if the typed
    table cannot be written (an empty object is a struct with no fields)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    header, filled = table(rows)
    names = [utf8(name).decode("utf-8", "replace") for name in header]
    texts_by_column = [[None if row[i] is None else utf8(cell(row[i])).decode("utf-8", "replace") for row in filled]
                       for i in range(len(header))]

    def typed(index):
        try:
            return pa.array([None if isinstance(row[index], Raw) else row[index] for row in filled])
        except (pa.ArrowException, OverflowError, TypeError, ValueError):
            return pa.array(texts_by_column[index], type=pa.string())

    for columns in ([typed(i) for i in range(len(header))], [pa.array(t, type=pa.string()) for t in texts_by_column]):
        sink = io.BytesIO()
        try:
            pq.write_table(pa.Table.from_arrays(columns, names=names), sink)
            return sink.getvalue()
        except (pa.ArrowException, ValueError):
            continue
    raise AssertionError("text columns always write")


@st.composite
def json_lines(draw, rows) -> bytes:
    ascii_only = draw(st.booleans())
    newline = draw(st.sampled_from(["\n", "\r\n", "\n\n"]))
    bom = "\ufeff" if draw(st.booleans()) else ""
    return utf8(bom + "".join(dump(row, ascii_only) + newline for row in rows))


@st.composite
def file_content(draw, kind: str) -> bytes:
    """A file of `kind`: random bytes, or records written in it, each case as one of: clean (valid records),
    bent (wrong shapes), damaged (byte-level damage) or both."""
    case = draw(st.sampled_from(["clean", "bent", "damaged", "bent+damaged", "random"]))
    if case == "random":
        prefix = {"jsonl.gz": b"\x1f\x8b\x08\x00", "parquet": b"PAR1", "json": b"[", "jsonl": b"{"}.get(kind, b"")
        return draw(st.sampled_from([b"", prefix])) + draw(st.binary(max_size=300))
    rows = draw(record_lists(bend="bent" in case))
    if kind in ("jsonl", "jsonl.gz"):
        content = draw(json_lines(rows))
    elif kind == "json":
        layout = draw(st.sampled_from(["list", "list-indented", "lines", "one"]))
        if layout == "lines":
            content = draw(json_lines(rows))
        elif layout == "one":
            content = utf8(dump(rows[0], draw(st.booleans())))
        else:
            text = dump(rows, False)
            if layout == "list-indented":
                with contextlib.suppress(ValueError, RecursionError):  # what json cannot read back stays as is
                    text = json.dumps(json.loads(text), indent=2, ensure_ascii=False)
            content = utf8(text)
    elif kind == "csv":
        content = to_csv(rows)
    else:
        content = to_parquet(rows)
    if "damaged" not in case:
        return gzip.compress(content, mtime=0) if kind == "jsonl.gz" else content
    if kind == "jsonl.gz":  # damage to the text inside, or to the compressed stream
        inside = draw(st.booleans())
        content = gzip.compress(draw(damage(content)) if inside else content, mtime=0)
        return content if inside else draw(damage(content))
    return draw(damage(content))


BROKEN_UTF8 = [b"\xc3", b"\xe2\x82", b"\xff", b"\xfe", b"\xc0\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"]
CONTROL = [b"\x00", b"\x01", b"\x1b", b"\x7f", b"\r", b"\x0b", b"\x0c", b"\n"]


@st.composite
def damage(draw, content: bytes) -> bytes:
    """Byte-level damage: flipped bytes, a cut at a random offset, broken UTF-8, control characters."""
    for change in draw(st.lists(st.sampled_from(["flip", "cut", "utf8", "control", "delete"]), min_size=1,
                                max_size=3)):
        at = draw(st.integers(0, len(content)))
        if change == "flip" and content:
            at = min(at, len(content) - 1)
            content = content[:at] + bytes([content[at] ^ draw(st.integers(1, 255))]) + content[at + 1:]
        elif change == "cut":
            content = content[:at]
        elif change in ("utf8", "control"):
            content = content[:at] + draw(st.sampled_from(BROKEN_UTF8 if change == "utf8" else CONTROL)) + content[at:]
        elif change == "delete":
            content = content[:at] + content[at + 1:]
    return content


file_names = st.sampled_from(["data", "my pairs", "données-ü", "x.y"])
load_options = st.fixed_dictionaries({}, optional={  # the settings that change which checks a record meets
    "format": st.sampled_from(["auto", "pairs", "hh", "chat", "pku"]),
    "preference": st.sampled_from(["better", "safer"]),
    "identical": st.sampled_from(["drop", "keep"]), "empty": st.sampled_from(["keep", "drop"]),
    "prefix_mismatch": st.sampled_from(["keep-chosen", "drop"]), "id_field": st.sampled_from([None, "id", "prompt"])})


def fuzz_test(kind: str, max_examples: int, vary_settings: bool = False):
    """A hypothesis test loading `max_examples` generated files of `kind` (with varied settings if asked)."""
    @fuzz_settings(max_examples)
    @given(name=file_names, content=file_content(kind), options=load_options if vary_settings else st.just({}))
    def test(name, content, options):
        with example_file(f"{name}.{kind}", content) as path:
            check_load(path, kind, **options)

    return test


# --- the fuzz tests: one per kind, sized so the module runs in well under a minute on two cores ---------------

test_fuzz_jsonl = fuzz_test("jsonl", 500, vary_settings=True)
test_fuzz_jsonl_gz = fuzz_test("jsonl.gz", 250)
test_fuzz_json = fuzz_test("json", 300)
test_fuzz_csv = fuzz_test("csv", 150)
test_fuzz_parquet = fuzz_test("parquet", 80)


def valid_gzip(rows: int = 400) -> bytes:
    return gzip.compress("".join(json.dumps({"prompt": f"q{i}", "chosen": "c" * 40, "rejected": f"r{i}"}) + "\n"
                                 for i in range(rows)).encode(), mtime=0)


VALID_GZIP = valid_gzip()


@fuzz_settings(max_examples=120)
@given(cut=st.integers(0, len(VALID_GZIP)))
def test_fuzz_truncated_gzip(cut):
    """A valid .jsonl.gz cut at any offset: the whole file loads, or the error says the stream is cut."""
    with example_file("cut.jsonl.gz", VALID_GZIP[:cut]) as path:
        outcome = check_load(path, "jsonl.gz")
    if cut == len(VALID_GZIP):
        assert isinstance(outcome, LoadResult) and len(outcome.pairs) == 400
    else:
        assert isinstance(outcome, DataError)
        assert "truncated" in str(outcome) or "not a readable gzip file" in str(outcome) or "empty" in str(outcome)


# --- huge fields: one 10 MB case per reader, not in every example --------------------------------------------

HUGE = "x" * (10 * 1024 * 1024)


@pytest.mark.parametrize("kind", KINDS)
def test_a_10_mb_field_loads(kind):
    record = Obj([("prompt", "q"), ("chosen", HUGE), ("rejected", "r")])
    content = {"jsonl": lambda: utf8(dump(record, False) + "\n"), "jsonl.gz": lambda: gzip.compress(
        utf8(dump(record, False) + "\n"), compresslevel=1), "json": lambda: utf8(dump([record], False)),
               "csv": lambda: to_csv([record]), "parquet": lambda: to_parquet([record])}[kind]()
    with example_file(f"huge.{kind}", content) as path:
        started = time.perf_counter()
        result = check_load(path, kind)
        assert time.perf_counter() - started < LOAD_LIMIT_S
    assert isinstance(result, LoadResult) and result.pairs[0].chosen == HUGE


@pytest.mark.parametrize("content", [
    '{"chosen": [{"role": "%s", "content": "q"}], "rejected": []}' % HUGE,  # quoted in the message
    '{"%s": 1}' % HUGE,  # a column name
    '{"prompt": "p", "chosen": "c", "rejected": "r", "margin": "%s"}' % HUGE,
])
def test_a_10_mb_value_in_an_error_is_cut_short(content):
    with example_file("huge.jsonl", content.encode()) as path:
        error = check_load(path, "jsonl")
    assert isinstance(error, DataError) and len(str(error)) < 1000


def test_a_10_mb_csv_header_cell():
    with example_file("huge.csv", f"prompt,chosen,{HUGE}\np,c,r\n".encode()) as path:
        assert isinstance(check_load(path, "csv"), DataError)


# --- every input that broke the guarantee (found by the fuzzer or by reading the loader), pinned ---------------

GOOD = '"prompt": "p", "chosen": "c", "rejected": "r"'
FOUND = [
    ("deep.jsonl", "[" * 100_000, r"^deep\.jsonl:1: invalid JSON \(nested too deeply to read\)"),  # RecursionError
    ("deep.json", "[" * 100_000, r"^deep\.json: invalid JSON \(nested too deeply to read\)$"),
    ("long.jsonl", '{"x": %s}' % ("1" * 5000), r"^long\.jsonl:1: invalid JSON \(an integer with more than 4300"),
    ("long.json", '[{"x": %s}]' % ("1" * 5000), r"^long\.json: invalid JSON \(an integer with more than 4300"),
    ("m.jsonl", "{%s, \"margin\": %s}" % (GOOD, "9" * 400),  # OverflowError in float()
     r"^m\.jsonl:1: field 'margin' is a number \(9+\.\.\.9+\), expected a finite number"),
    ("m.jsonl", '{%s, "margin": NaN}' % GOOD, r"^m\.jsonl:1: field 'margin' is a number \(nan\), expected a finite"),
    ("m.jsonl", '{%s, "margin": "-inf"}' % GOOD, r"^m\.jsonl:1: field 'margin' is '-inf', expected a finite number"),
    ("k.jsonl", '{"a\\nb": 1}', r"^k\.jsonl:1: cannot tell the format from the fields \('a\\nb'\)"),  # 2 lines
    ("k.jsonl", '{"a\\nb": 1, "prompt": "p", "chosen": "c"}',
     r"^k\.jsonl:1: cannot tell the format from the fields \('a\\nb', chosen, prompt\)"),
    ("i.jsonl", '{"id": "", %s}' % GOOD, r"^i\.jsonl:1: field 'id' is an empty string; give every pair an id"),
    ("p.jsonl", '{"prompt": [], "chosen": "c", "rejected": "r"}', r"^p\.jsonl:1: field 'prompt' is an empty list"),
    ("dup.csv", "prompt,chosen,chosen,rejected\np,c,d,r\n", r"^dup\.csv:1: the header names column 'chosen' twice"),
    ("blank.csv", ",chosen,rejected\np,c,r\n", r"^blank\.csv:1: the header leaves column 1 unnamed"),
    ("nul.csv", "prompt,ch\x00osen,rejected\np,c,r\n",
     r"^nul\.csv:1: the header's column 2 \('ch\\x00osen'\) holds a NUL"),
    ("head.csv", "prompt,chosen,rejected\n\n", r"^head\.csv: the file is empty \(a header but no rows\)$"),
    ("utf.csv", b"prompt,chosen,rejected\np,caf\xe9,r\n", r"^utf\.csv:2: invalid UTF-8 \(byte 0xe9\)"),
    ("late.csv", b"prompt,chosen,rejected\np,c,r\np,caf\xe9,r\n", r"^late\.csv:3: invalid UTF-8 \(byte 0xe9\)"),
]


@pytest.mark.parametrize("name, content, message", FOUND)
def test_found_inputs_give_one_line_errors(name, content, message):
    with example_file(name, content if isinstance(content, bytes) else content.encode()) as path:
        error = check_load(path, name.split(".", 1)[1])
    assert isinstance(error, DataError), error
    assert re.search(message, str(error)), str(error)


def test_found_a_csv_with_a_byte_order_mark_loads():
    """Excel's "CSV UTF-8" starts with a BOM: the header's first name kept it, pandas's did not, and the read failed."""
    with example_file("excel.csv", "\ufeffprompt,chosen,rejected\np,c,r\n".encode()) as path:
        pair = check_load(path, "csv").pairs[0]
    assert (pair.prompt[0]["content"], pair.chosen, pair.rejected) == ("p", "c", "r")


def test_found_a_float_response_id_picks_that_response():
    """A float column (1.0) used to index a tuple: TypeError."""
    content = '{"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 1.0}\n'
    with example_file("pku.jsonl", content.encode()) as path:
        pair = check_load(path, "jsonl").pairs[0]
    assert (pair.chosen, pair.rejected) == ("b", "a")


def test_found_a_json_record_holding_a_line_separator_is_one_record():
    """str.splitlines counted U+2028 inside a string as a line break, so one record was 'not a list'."""
    with example_file("one.json", '{"prompt": "a\u2028b", "chosen": "c", "rejected": "r"}'.encode()) as path:
        assert check_load(path, "json").pairs[0].prompt == ({"role": "user", "content": "a\u2028b"},)


def test_found_parquet_with_two_columns_of_one_name():
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    pq.write_table(pa.Table.from_arrays([pa.array([v]) for v in "pcdr"], names=["prompt", "chosen", "chosen",
                                                                                 "rejected"]), sink)
    with example_file("dup.parquet", sink.getvalue()) as path:
        error = check_load(path, "parquet")
    assert str(error) == "dup.parquet: the schema names column 'chosen' twice; rename one of them"


def test_found_parquet_text_that_is_not_utf8():
    """Arrow reads Parquet strings without checking them: a UnicodeDecodeError came out of the row loop."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = io.BytesIO()
    messages = [[{"role": "assistant", "content": "ok"}], [{"role": "assistant", "content": "café"}]]
    pq.write_table(pa.table({"prompt": ["p", "q"], "chosen": messages, "rejected": messages[:1] * 2}), sink,
                   compression="none", use_dictionary=False)
    with example_file("text.parquet", sink.getvalue().replace("café".encode(), b"caf\xff\xfe")) as path:
        error = check_load(path, "parquet")
    assert str(error).startswith("text.parquet:row 2: field 'chosen' cannot be read ('utf-8' codec can't decode")


@pytest.mark.parametrize("kind", ["csv", "parquet"])
def test_found_a_rewritten_file_is_read_anew(kind):
    """datasets' cache knew a file by path and modification time: a rewrite keeping the time gave the old rows."""
    with example_file(f"same.{kind}", b"") as path:
        for chosen in ("old", "new"):
            path.write_bytes(to_csv([Obj([("prompt", "p"), ("chosen", chosen), ("rejected", "r")])]) if kind == "csv"
                             else to_parquet([Obj([("prompt", "p"), ("chosen", chosen), ("rejected", "r")])]))
            if chosen == "old":
                stamp = os.stat(path)
            else:
                os.utime(path, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
            assert check_load(path, kind).pairs[0].chosen == chosen


def test_found_a_read_that_fails_is_a_data_error(monkeypatch):
    """An OSError while reading (EIO, a file gone from a network mount) escaped as itself."""
    def failing_open(path, mode="r", *args, **kwargs):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(readers, "open", failing_open, raising=False)
    with example_file("gone.jsonl", b"{}") as path:
        error = check_load(path, "jsonl")
    assert str(error) == "gone.jsonl: cannot read it ([Errno 5] Input/output error)"


# --- collisions and mixed formats -------------------------------------------------------------------------------


def test_colliding_names_resolve_as_documented():
    """A repeated key keeps its last value (as json does); 'Prompt' is not 'prompt'."""
    content = '{"Prompt": "wrong", "prompt": "p", "chosen": "first", "rejected": "r", "chosen": "last"}\n'
    with example_file("dup.jsonl", content.encode()) as path:
        pair = check_load(path, "jsonl").pairs[0]
    assert (pair.prompt[0]["content"], pair.chosen) == ("p", "last")


@pytest.mark.parametrize("lines, message", [
    (['{"chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], '
      '"rejected": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "b"}]}',
      '{"chosen": "\\n\\nHuman: q\\n\\nAssistant: a", "rejected": "\\n\\nHuman: q\\n\\nAssistant: b"}'],
     r"^mixed\.jsonl:2: field 'chosen' is a string, expected a list of \{role, content\} messages"),
    (['{' + GOOD + '}', '{"prompt": "p", "response_0": "a", "response_1": "b", "better_response_id": 0}'],
     r"^mixed\.jsonl:2: field 'chosen' is missing \(the record has: better_response_id, prompt, response_0, "),
])
def test_mixed_formats_in_one_file(lines, message):
    """The format is decided by the first record; a later record of another format is named by line and field."""
    with example_file("mixed.jsonl", "\n".join(lines).encode()) as path:
        error = check_load(path, "jsonl")
    assert isinstance(error, DataError) and re.search(message, str(error)), error


def test_a_record_with_both_pairs_and_pku_fields():
    """prompt + chosen + rejected + response_0/1 but no *_response_id: a pairs record; with one, a pku record."""
    pairs = '{' + GOOD + ', "response_0": "a", "response_1": "b"}'
    with example_file("both.jsonl", pairs.encode()) as path:
        result = check_load(path, "jsonl")
    assert result.report.format == "pairs" and result.pairs[0].chosen == "c"
    with example_file("both.jsonl", pairs.replace("}", ', "safer_response_id": 1}').encode()) as path:
        result = check_load(path, "jsonl", preference="safer")
    assert result.report.format == "pku" and result.pairs[0].chosen == "b"


# --- no half-written output ------------------------------------------------------------------------------------

SAVED = [PreferencePair(id=f"s:{i}", prompt=({"role": "user", "content": f"q{i}"},), chosen="c", rejected="r")
         for i in range(5)]


def folder_state(folder: Path) -> dict:
    return {p.name: p.read_bytes() for p in folder.iterdir()}


@pytest.mark.parametrize("previous", [None, b"previous contents\n"])
@pytest.mark.parametrize("fail_after", [0, 1, 3])
def test_a_save_that_fails_midway_leaves_the_old_file_or_none(previous, fail_after, monkeypatch, tmp_path):
    """The serializer raises after `fail_after` records, or the disk fills halfway through the write."""
    path = tmp_path / "pairs.jsonl"
    if previous is not None:
        path.write_bytes(previous)
    before = folder_state(tmp_path)
    real_dumps, calls = json.dumps, []

    def failing_dumps(*args, **kwargs):
        calls.append(1)
        if len(calls) > fail_after:
            raise RuntimeError("serializer failed")
        return real_dumps(*args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(formats.json, "dumps", failing_dumps)
        with pytest.raises(RuntimeError, match="serializer failed"):
            save_pairs_jsonl(SAVED, path)
    assert folder_state(tmp_path) == before

    real_write_text = Path.write_text

    def disk_full(self, text, *args, **kwargs):
        real_write_text(self, text[: len(text) // 2], *args, **kwargs)
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", disk_full)
        with pytest.raises(OSError, match="No space left"):
            save_pairs_jsonl(SAVED[: fail_after + 1], path)
    assert folder_state(tmp_path) == before


def test_a_pair_that_cannot_be_written_leaves_no_file(tmp_path):
    """A meta value JSON cannot write, in the 4th of 5 pairs: nothing is written, not the first three."""
    bad = SAVED[:3] + [PreferencePair(id="s:x", prompt=SAVED[0].prompt, chosen="c", rejected="r",
                                      meta={"model": object()})] + SAVED[3:]
    with pytest.raises(TypeError):
        save_pairs_jsonl(bad, tmp_path / "pairs.jsonl")
    assert list(tmp_path.iterdir()) == []
