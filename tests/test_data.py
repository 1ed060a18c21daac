"""Dataset readers: the shared TSV format, CSV, JSONL, label handling, and errors that name file and line."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from adapterdeploy.datasets import Example, read_dataset, subset
from adapterdeploy.errors import DataError

REPO = Path(__file__).resolve().parent.parent
DEMO_DATA = REPO / "examples" / "data"
SHARED_DATA = REPO.parent / "shared" / "data"


def _write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    p = tmp_path / name
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def test_tsv_single_texts_shared_format(tmp_path):
    p = _write(tmp_path, "train.tsv", 'label\ttext\n1\t"quoted" start , no quoting\n0\ta bad film\n1\tgreat\n')
    d = read_dataset(p)
    assert len(d) == 3 and not d.text_pair
    assert d.problem_type == "single_label_classification" and d.labels == ("0", "1")
    # With CSV quoting on, a row starting with '"' would swallow the following rows.
    assert d.examples[0] == Example('"quoted" start , no quoting', None, 1)
    assert d.line_numbers == (2, 3, 4)
    assert d.label_counts() == {"0": 1, "1": 2}
    assert len(d.sha256) == 64


def test_tsv_pairs_shared_format(tmp_path):
    p = _write(tmp_path, "pairs.tsv", 'label\ttext_a\ttext_b\n1\tHe said "yes".\tHe agreed.\n0\tA cat.\tA dog.\n')
    d = read_dataset(p)
    assert d.text_pair
    assert d.examples == (Example('He said "yes".', "He agreed.", 1), Example("A cat.", "A dog.", 0))


def test_example_is_frozen():
    ex = Example("a", None, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ex.text = "b"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("task", "split", "rows", "pair"),
    [
        ("sst2", "train", 1500, False),
        ("sst2", "dev", 400, False),
        ("mrpc", "train", 1500, True),
        ("mrpc", "dev", 400, True),
    ],
)
def test_demo_sample_reads(task, split, rows, pair):
    d = read_dataset(DEMO_DATA / task / f"{split}.tsv")
    assert len(d) == rows and d.text_pair is pair and d.labels == ("0", "1")


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data is not present beside this checkout")
@pytest.mark.parametrize(
    ("rel", "rows", "ones"), [("mrpc/train.tsv", 4076, 2753), ("rte/dev.tsv", 277, 131), ("cola/dev.tsv", 1043, 721)]
)
def test_shared_data_counts_match_its_readme(rel, rows, ones):
    d = read_dataset(SHARED_DATA / rel)
    assert len(d) == rows and d.label_counts()["1"] == ones


def test_csv_quoted_fields_and_named_columns(tmp_path):
    p = _write(tmp_path, "d.csv", 'id,sentence,label\n7,"hello, ""world""",pos\n8,"two\nlines",neg\n9,plain,pos\n')
    d = read_dataset(p)
    assert d.labels == ("neg", "pos")  # string labels: sorted names
    assert [ex.text for ex in d.examples] == ['hello, "world"', "two\nlines", "plain"]
    assert [ex.label for ex in d.examples] == [1, 0, 1]
    assert d.line_numbers == (2, 3, 5)  # the multi-line field takes lines 3-4


def test_csv_explicit_columns_and_label_order(tmp_path):
    p = _write(tmp_path, "d.csv", "q,a,y\nwhy,because,no\nwho,me,yes\n")
    d = read_dataset(p, text_column="q", text_pair_column="a", label_column="y", labels=["yes", "no"])
    assert d.text_pair and d.labels == ("yes", "no")
    assert [ex.label for ex in d.examples] == [1, 0]


def test_jsonl_pairs_blank_lines_and_label_indices(tmp_path):
    rows = [{"text_a": "a b", "text_b": "c", "label": 2}, {"text_a": "d", "text_b": "e f", "label": 0}]
    p = _write(tmp_path, "d.jsonl", json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n")
    d = read_dataset(p)
    assert d.text_pair and d.labels == ("0", "1", "2")
    assert d.examples[0] == Example("a b", "c", 2)
    assert d.line_numbers == (1, 3)


def test_regression_labels(tmp_path):
    p = _write(tmp_path, "sts.tsv", "label\ttext_a\ttext_b\n3.8\ta\tb\n0.25\tc\td\n5\te\tf\n")
    d = read_dataset(p)
    assert d.problem_type == "regression" and d.labels == () and d.num_labels == 1
    assert [ex.label for ex in d.examples] == [3.8, 0.25, 5.0]


def test_integer_floats_are_classes_unless_regression_asked(tmp_path):
    p = _write(tmp_path, "d.tsv", "label\ttext\n1.0\ta\n0.0\tb\n")
    assert read_dataset(p).labels == ("0", "1")
    assert read_dataset(p, problem_type="regression").problem_type == "regression"


def test_eval_file_uses_the_training_labels(tmp_path):
    tr = read_dataset(_write(tmp_path, "tr.jsonl", '{"text": "x", "label": "b"}\n{"text": "y", "label": "c"}\n'))
    ev = read_dataset(
        _write(tmp_path, "ev.jsonl", '{"text": "z", "label": "c"}\n'), labels=tr.labels, problem_type=tr.problem_type
    )
    assert ev.labels == ("b", "c") and ev.examples[0].label == 1


def test_unlabelled_rows_when_labels_not_required(tmp_path):
    d = read_dataset(_write(tmp_path, "p.tsv", "text\nhello\nworld\n"), require_labels=False)
    assert [ex.label for ex in d.examples] == [None, None]


def test_trailing_blank_lines_are_not_rows(tmp_path):
    assert len(read_dataset(_write(tmp_path, "d.tsv", "label\ttext\n1\ta\n0\tb\n\n\n"))) == 2


# (file name, content, extra read_dataset kwargs, expected line, words the message must contain)
BAD = [
    ("empty.tsv", "", {}, 1, "empty"),
    ("blank.tsv", "\n  \n", {}, 1, "empty"),
    ("header.tsv", "label\ttext\n", {}, 2, "no rows"),
    ("fields.tsv", "label\ttext\n1\tok\n0\ttoo\tmany\n", {}, 3, "3 field(s), the header has 2"),
    ("few.tsv", "label\ttext_a\ttext_b\n1\ta\tb\n0\tonly one\n", {}, 3, "2 field(s)"),
    ("gap.tsv", "label\ttext\n1\ta\n\n0\tb\n", {}, 3, "empty line"),
    ("range.tsv", "label\ttext\n1\ta\n2\tb\n", {"labels": ["0", "1"]}, 3, "out of range"),
    ("neg.tsv", "label\ttext\n1\ta\n-1\tb\n", {}, 3, "out of range"),
    ("typo.tsv", "label\ttext\n1\ta\n0\tb\nl\tc\n", {}, 4, "not a number"),
    ("unknown.tsv", "label\ttext\n1\ta\nmaybe\tb\n", {"labels": ["0", "1"]}, 3, "not one of the labels"),
    ("regr.tsv", "label\ttext\n1.5\ta\nhigh\tb\n", {"problem_type": "regression"}, 3, "not a finite number"),
    ("notext.tsv", "label\ttext\n1\ta\n0\t   \n", {}, 3, "empty text"),
    ("nopair.tsv", "label\ttext_a\ttext_b\n1\ta\tb\n0\tc\t\n", {}, 3, "empty text pair"),
    ("nocol.tsv", "label\tbody\n1\ta\n", {}, 1, "no text column"),
    ("nolabel.tsv", "text\na\n", {}, 1, "no label column"),
    ("dupe.tsv", "label\ttext\ttext\n1\ta\tb\n", {}, 1, "repeats"),
    ("badcol.csv", "text,label\na,1\n", {"text_column": "sentence"}, 1, "no text column 'sentence'"),
    ("quote.csv", 'text,label\n"a,1\n', {}, 2, "malformed"),
    ("json.jsonl", '{"text": "a", "label": 1}\n{"text": "b", "label": \n', {}, 2, "not valid JSON"),
    ("list.jsonl", '{"text": "a", "label": 1}\n[1, 2]\n', {}, 2, "JSON object"),
    ("key.jsonl", '{"text": "a", "label": 1}\n{"label": 0}\n', {}, 2, "missing key"),
    ("num.jsonl", '{"text": "a", "label": 1}\n{"text": 5, "label": 0}\n', {}, 2, "must be a string"),
    ("utf8.tsv", b"label\ttext\n1\tok\n0\tbad \xff byte\n", {}, 3, "UTF-8"),
]


@pytest.mark.parametrize(("name", "content", "kwargs", "line", "words"), BAD, ids=[b[0] for b in BAD])
def test_bad_files_name_file_and_line(tmp_path, name, content, kwargs, line, words):
    p = _write(tmp_path, name, content)
    with pytest.raises(DataError) as info:
        read_dataset(p, **kwargs)
    msg = str(info.value)
    assert f"{p}:{line}:" in msg, msg
    assert words in msg, msg


def test_missing_file_and_unknown_format(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_dataset(tmp_path / "nope.tsv")
    with pytest.raises(DataError, match="extension"):
        read_dataset(_write(tmp_path, "data.xlsx", "x"))
    assert len(read_dataset(_write(tmp_path, "data.dat", "label\ttext\n1\ta\n"), fmt="tsv")) == 1


def test_single_class_name_is_refused(tmp_path):
    with pytest.raises(DataError, match="at least 2 labels"):
        read_dataset(_write(tmp_path, "d.tsv", "label\ttext\nyes\ta\nyes\tb\n"))


def test_subset_is_seeded_and_keeps_file_order(tmp_path):
    body = "".join(f"{i % 2}\trow {i}\n" for i in range(50))
    d = read_dataset(_write(tmp_path, "d.tsv", "label\ttext\n" + body))
    a, b, c = subset(d, 10, seed=1), subset(d, 10, seed=1), subset(d, 10, seed=2)
    assert len(a) == 10 and a.examples == b.examples and a.examples != c.examples
    assert list(a.line_numbers) == sorted(a.line_numbers)
    assert all(a.examples[i].text == f"row {a.line_numbers[i] - 2}" for i in range(10))
    assert subset(d, None) is d and subset(d, 500) is d


def test_readers_and_metrics_do_not_import_torch():
    """The runtime's ``check --eval`` reuses them on installs without torch."""
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import adapterdeploy.datasets, adapterdeploy.metrics\n"
        "assert 'transformers' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
