"""Property tests: the CSV reader and the tokenizer on hostile input.

Files are built from rows whose fate is known: good rows are written the way pandas
writes them (csv.writer, tab, minimal quoting) and must come back exactly, in order;
malformed rows must be skipped with a warning naming their line; arbitrary text must
never crash the reader.
"""

import csv
import io
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from data import DataError, MalformedRowWarning, default_tokenizer, read_rows, registry

PROPERTY_SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)

# Any character but the record separator; surrogates cannot be encoded as UTF-8.
_chars = st.characters(blacklist_categories=("Cs",), blacklist_characters="\n")
_short = st.text(_chars, min_size=1, max_size=40)
_long = st.builds(lambda text, times: text * times, st.text(_chars, min_size=1, max_size=8), st.integers(2_000, 40_000))
text_field = st.one_of(_short, _short, _long).filter(lambda s: s.strip())

_LABEL_TEXTS = {
    "sst": st.builds(lambda v, fmt: fmt.format(v), st.integers(0, 4),
                     st.sampled_from(["{}", "{}.0", " {} ", "+{}", "0{}"])),
    "para": st.sampled_from(["0", "1", "0.0", "1.0"]),
    "sts": st.one_of(
        st.floats(0, 5, allow_nan=False).map(repr),
        st.integers(0, 50).map(lambda v: f"{v / 10:.1f}"),
    ),
    "cfimdb": st.sampled_from(["0", "1", "1.0"]),
}
_OUT_OF_RANGE = {
    "sst": ["5", "-1", "7.0", "100", "1e3"],
    "para": ["2", "-1", "0.5", "2.0"],
    "sts": ["5.01", "-0.1", "1e9", "-5"],
    "cfimdb": ["2", "-1", "0.5"],
}
_NOT_NUMBERS = ["nan", "inf", "-inf", "1_0", "\u0663", "0x1", "1e", "--1", "1.0.0", "true", "½"]


def _csv_line(fields) -> str:
    out = io.StringIO()
    csv.writer(out, delimiter="\t", quoting=csv.QUOTE_MINIMAL, lineterminator="\n").writerow(fields)
    return out.getvalue()[:-1]


FAMILIES = registry()


def _header(spec, labeled: bool) -> list[str]:
    """The CS224N files' header: an unnamed pandas index, the id, the text columns, the label if labeled."""
    return ["", "id", *spec.text_columns, *([spec.label_column] if labeled else [])]


@st.composite
def good_row(draw, family, labeled):
    row_id = draw(_short.filter(lambda s: s.strip()))
    texts = [draw(text_field) for _ in family.text_columns]
    label = draw(_LABEL_TEXTS[family.name]) if labeled else None
    return {"id": row_id, "texts": texts, "label": label}


@st.composite
def bad_line(draw, family, labeled):
    """(line, reason fragment) for a row that must be skipped."""
    row = draw(good_row(family, labeled))
    fields = [str(draw(st.integers(0, 10**6))), row["id"], *row["texts"], *([row["label"]] if labeled else [])]
    kinds = ["missing field", "extra field", "empty text", "empty id", "unbalanced", "after quote", "blank"]
    if labeled:
        kinds += ["empty label", "out of range", "not a number"]
    kind = draw(st.sampled_from(kinds))
    if kind == "missing field":
        return _csv_line(fields[:-1]), "fields, expected"
    if kind == "extra field":
        return _csv_line(fields + [draw(_short)]), "fields, expected"
    if kind == "empty text":
        column = draw(st.integers(0, len(family.text_columns) - 1))
        fields[2 + column] = draw(st.sampled_from(["", " ", "\t", "\u3000 \x1c"]))
        return _csv_line(fields), f"empty {family.text_columns[column]}"
    if kind == "empty id":
        fields[1] = draw(st.sampled_from(["", "  "]))
        return _csv_line(fields), "empty id"
    if kind == "unbalanced":
        # An opening quote with no closing one anywhere after it on the line.
        column = 2 + draw(st.integers(0, len(family.text_columns) - 1))
        head = _csv_line(fields[:column])
        tail = "\t".join(f.replace('"', "").replace("\t", " ") for f in fields[column:])
        return f'{head}\t"{tail}', "bad quoting"
    if kind == "after quote":
        fields[2] = '"' + fields[2].replace('"', '""') + '"x'
        return "\t".join(f if i == 2 else _csv_line([f]) for i, f in enumerate(fields)), "bad quoting"
    if kind == "blank":
        return draw(st.sampled_from(["", " ", "\t \t"])), "blank line"
    if kind == "empty label":
        fields[-1] = ""
        return _csv_line(fields), "empty label"
    if kind == "out of range":
        fields[-1] = draw(st.sampled_from(_OUT_OF_RANGE[family.name]))
        reason = "not an integer class" if fields[-1] == "0.5" else "outside"
        return _csv_line(fields), reason
    fields[-1] = draw(st.one_of(st.sampled_from(_NOT_NUMBERS), st.text("abcdefghijklmnopqrstuvwxyz", min_size=1)))
    return _csv_line(fields), "is not a number"


@st.composite
def task_file(draw):
    family = FAMILIES[draw(st.sampled_from(sorted(FAMILIES)))]
    labeled = draw(st.booleans())
    good = draw(st.lists(good_row(family, labeled), max_size=8))
    bad = draw(st.lists(bad_line(family, labeled), max_size=8))
    order = draw(st.permutations([("good", i) for i in range(len(good))] + [("bad", i) for i in range(len(bad))]))
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    return family, labeled, good, bad, order, newline


def _read_recording(path, family):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = read_rows(path, family)
        except DataError as e:
            result = e
    return result, [str(w.message) for w in caught if issubclass(w.category, MalformedRowWarning)]


@PROPERTY_SETTINGS
@given(case=task_file())
def test_good_rows_survive_and_bad_rows_are_reported(tmp_path_factory, case):
    family, labeled, good, bad, order, newline = case
    lines, expected_bad = [_csv_line(_header(family, labeled))], {}
    for number, (kind, i) in enumerate(order):
        if kind == "good":
            row = good[i]
            lines.append(_csv_line([number, row["id"], *row["texts"], *([row["label"]] if labeled else [])]))
        else:
            line, reason = bad[i]
            lines.append(line)
            expected_bad[len(lines)] = reason
    path = tmp_path_factory.mktemp("prop") / "rows.csv"
    path.write_bytes(newline.join(lines).encode("utf-8") + newline.encode())

    result, messages = _read_recording(path, family)
    if not good:
        assert isinstance(result, DataError) and "no rows to load" in str(result)
    else:
        assert not isinstance(result, DataError), result
        good_in_order = [good[i] for kind, i in order if kind == "good"]
        assert result.ids == [r["id"].strip() for r in good_in_order]
        for column, texts in enumerate(result.sentences):
            assert texts == [r["texts"][column].strip() for r in good_in_order]
        if labeled:
            assert result.labels.dtype == family.label_dtype
            expected = np.array([float(r["label"]) for r in good_in_order]).astype(family.label_dtype)
            np.testing.assert_array_equal(result.labels, expected)
        else:
            assert result.labels is None
    row_messages = [m for m in messages if "row skipped" in m]
    assert len(row_messages) == len(bad)
    for message, (line_number, reason) in zip(row_messages, sorted(expected_bad.items())):
        assert message.startswith(f"{path}: line {line_number}") and reason in message, (message, reason)
    if bad:
        assert f"skipped {len(bad)} malformed row(s) of {len(order)}" in messages[-1]


@PROPERTY_SETTINGS
@given(
    family=st.sampled_from(sorted(FAMILIES)),
    body=st.lists(st.text(st.characters(blacklist_categories=("Cs",)), max_size=200), max_size=10),
    raw_tail=st.binary(max_size=30),
)
def test_arbitrary_content_never_crashes_the_reader(tmp_path_factory, family, body, raw_tail):
    family = FAMILIES[family]
    path = tmp_path_factory.mktemp("fuzz") / "rows.csv"
    path.write_bytes(("\n".join([_csv_line(_header(family, True)), *body]) + "\n").encode() + raw_tail)
    result, messages = _read_recording(path, family)
    if isinstance(result, DataError):
        assert str(path) in str(result)
        return
    low, high = family.label_range
    assert all(low <= v <= high for v in result.labels.tolist())
    assert all(i and i == i.strip() for i in result.ids)
    assert all(t and t == t.strip() for texts in result.sentences for t in texts)
    skipped = len([m for m in messages if "row skipped" in m])
    lines = path.read_bytes().decode("utf-8").split("\n")
    assert len(result) + skipped == len(lines) - 1 - (lines[-1] == "")


@pytest.fixture(scope="module")
def tokenizer():
    return default_tokenizer()


_any_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=300)


@PROPERTY_SETTINGS
@given(
    texts=st.lists(st.one_of(_any_text, _long), min_size=1, max_size=6),
    pair=st.booleans(),
    max_length=st.sampled_from([8, 32, 128]),
)
def test_tokenizer_handles_any_text(tokenizer, texts, pair, max_length):
    # Without "[", no text spells a special token such as "[SEP]": those become the special token itself,
    # as in the reference tokenizer (tests/test_tokenizer.py), and would be counted below.
    texts = [t.replace("[", "(") for t in texts]
    if pair:
        # Pairs stay short: the tokenizers library keeps every overflow window of a
        # truncated pair (windows of a times windows of b), so two texts of a few
        # thousand words each take gigabytes. Reported against bert_flax/tokenizer.py.
        texts = [t[:300] for t in texts]
    pairs = list(reversed(texts)) if pair else None
    ids, type_ids = tokenizer.encode(texts, pairs, max_length=max_length)
    assert len(ids) == len(type_ids) == len(texts)
    for x, t in zip(ids, type_ids):
        assert x.dtype == np.int32 and len(x) == len(t) <= max_length
        assert x[0] == tokenizer.cls_id and x[-1] == tokenizer.sep_id
        assert np.all((x >= 0) & (x < tokenizer.vocab_size))
        assert (x == tokenizer.sep_id).sum() == (2 if pair else 1)
        assert set(np.unique(t).tolist()) <= ({0, 1} if pair else {0})
