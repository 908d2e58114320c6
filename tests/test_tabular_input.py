"""Tabular input (CSV, TSV, JSONL) is read by one reader (tasks.read_rows) for finetune and predict, never as a
plain dict: a column named twice, a non-finite JSON number, a JSON list/number/true where text belongs, a byte that
is not UTF-8 are each one line naming file, line and column, exit 2, and no output; a seeded property test over
many random bad files checks that none of them ever gives a result."""

import csv
import json
import random

import pytest
import torch
from conftest import error_lines

from electra_kit.cli import main
from electra_kit.finetune.classifier import Classifier
from electra_kit.finetune.predict import predict_file
from electra_kit.finetune.tasks import TaskError, read_labeled


class Echo(Classifier):
    """A classifier stand-in: every text gets label 'a' (no model to load; the reader is what is tested)."""

    def __init__(self):
        super().__init__(torch.nn.Identity(), None, {"task": {"type": "classification", "labels": ["a", "b"],
                                                              "columns": {"text": "text", "pair": None,
                                                                          "label": "label"}}})

    def predict(self, texts, pairs=None, *, batch_size=128):
        assert all(isinstance(t, str) for t in texts)
        return [{"label": "a", "score": 1.0, "scores": {"a": 1.0, "b": 0.0}} for _ in texts]


def one_line_naming(exc, *parts):
    message = str(exc.value)
    assert "\n" not in message and all(p in message for p in parts), message


# ---- each cause, once --------------------------------------------------------------------------------------------


def test_a_column_named_twice_is_refused_in_csv_and_jsonl(tmp_path):
    csv_path = tmp_path / "t.csv"
    csv_path.write_text("text,label,label\nthe nation,yes,7\nthe people,no,9\n")
    with pytest.raises(TaskError) as exc:
        read_labeled(csv_path)
    one_line_naming(exc, f"{csv_path}:1:", "'label'", "twice")
    with pytest.raises(TaskError) as exc:
        predict_file(Echo(), csv_path, tmp_path / "out.csv")
    one_line_naming(exc, f"{csv_path}:1:")
    jsonl = tmp_path / "t.jsonl"
    jsonl.write_text('{"text": "a", "label": "x"}\n{"text": "the nation", "label": "y", "text": "other"}\n')
    with pytest.raises(TaskError) as exc:
        predict_file(Echo(), jsonl, tmp_path / "out.jsonl")
    one_line_naming(exc, f"{jsonl}:2:", "'text'", "twice")
    assert not (tmp_path / "out.csv").exists() and not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_a_non_finite_json_label_is_refused_by_column(tmp_path, value):
    path = tmp_path / "t.jsonl"
    path.write_text(f'{{"text": "a", "label": 1.5}}\n{{"text": "b", "label": {value}}}\n')
    with pytest.raises(TaskError) as exc:
        read_labeled(path)
    one_line_naming(exc, f"{path}:2:", "column 'label'", value, "not a finite number")


@pytest.mark.parametrize("value, named", [("[1, 2]", "a JSON list"), ("3", "a number"), ("true", "true/false"),
                                          ('{"a": 1}', "a JSON object")])
def test_json_that_is_not_text_is_never_predicted_on_as_its_repr(tmp_path, value, named):
    path = tmp_path / "t.jsonl"
    path.write_text(f'{{"text": "fine"}}\n{{"text": {value}}}\n')
    with pytest.raises(TaskError) as exc:
        predict_file(Echo(), path, tmp_path / "out.jsonl")
    one_line_naming(exc, f"{path}:2:", "column 'text'", named)
    assert not (tmp_path / "out.jsonl").exists()


def test_a_file_that_is_not_utf8_is_named_with_its_line(tmp_path):
    path = tmp_path / "t.tsv"
    path.write_bytes(b"text\tlabel\nthe nation\t1\ncaf\xe9\t0\n")
    with pytest.raises(TaskError) as exc:
        read_labeled(path)
    one_line_naming(exc, f"{path}:3:", "not UTF-8", "0xe9")


@pytest.fixture
def model_dir(tmp_path):
    from test_run_dir import tiny_electra

    from electra_kit.data.tokenizer import train_wordpiece
    from electra_kit.modelfolder.pretrained import save_pretrained

    tok = train_wordpiece(["the nation and the people of the union"] * 20, vocab_size=50)
    return save_pretrained(tiny_electra(), tmp_path / "model", tokenizer=tok, special_ids={"pad": 0, "mask": 2})


@pytest.mark.parametrize("rows, flags, named", [
    ("text,label,label\n" + "".join(f"the nation {i},{i % 2},{i}\n" for i in range(8)), [], "named twice"),
    ("text,label\n" + "".join(f"the nation {i},{i % 2}\n" for i in range(8)),
     ["--text-column", "label", "--label-column", "label"], "--text-column and --label-column both name"),
])
def test_finetune_refuses_a_second_label_column_and_one_column_in_two_roles(tmp_path, model_dir, capsys, rows, flags,
                                                                           named):
    train = tmp_path / "train.csv"
    train.write_text(rows)
    code = main(["finetune", "--model", str(model_dir), "--train", str(train), "--eval", str(train), "--no-tracking",
                 "--no-progress", "--run-dir", str(tmp_path / "ft"), *flags])
    assert code == 2
    err = error_lines(capsys.readouterr().err)
    assert len(err.splitlines()) == 1 and named in err
    assert not (tmp_path / "ft").exists()


# ---- the property: a bad row never gives a result ----------------------------------------------------------------

WORDS = ["the", "nation", "people", "union", "caf\u00e9", "na\u00efve", "\u4e2d\u6587", "a,b", 'say "hi"']
NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "-1e400"]
NOT_TEXT = ["[1, 2]", "3", "2.5", "true", "false", '{"k": "v"}', "[]"]
NOT_LABEL = ["[1]", '{"k": 1}', "[]"]
BAD_BYTES = [b"\xff", b"\xe9", b"\xc3\x28", b"\xed\xa0\x80", b"\xf0\x28\x8c\x28", b"\x80"]


def good_table(rng):
    n = rng.randint(1, 6)
    rows = [{"text": " ".join(rng.choices(WORDS, k=rng.randint(1, 4))), "label": rng.choice(["a", "b"]),
             "id": str(i)} for i in range(n)]
    return ["text", "label", "id"], rows


def bad_jsonl(rng, columns, rows):
    """JSONL lines with one random fault; the line it is on."""
    lines = [json.dumps(r, ensure_ascii=rng.random() < 0.5) for r in rows]
    i = rng.randrange(len(lines))
    fault = rng.choice(["duplicate", "non-finite", "not-text", "not-label", "bytes"])
    row = dict(rows[i])
    if fault == "duplicate":
        key = rng.choice(columns)
        body = ", ".join(f"{json.dumps(k)}: {json.dumps(v)}" for k, v in row.items())
        lines[i] = "{" + body + f", {json.dumps(key)}: {json.dumps('other')}" + "}"
    elif fault in ("non-finite", "not-text", "not-label"):
        key = {"non-finite": rng.choice(columns), "not-text": "text", "not-label": "label"}[fault]
        value = rng.choice({"non-finite": NON_FINITE, "not-text": NOT_TEXT, "not-label": NOT_LABEL}[fault])
        if fault == "non-finite" and rng.random() < 0.3:
            value = f"[1, {value}]"  # hidden in a list
        row[key] = "\0"
        lines[i] = json.dumps(row).replace('"\\u0000"', value)
    data = [line.encode("utf-8") for line in lines]
    if fault == "bytes":
        cut = rng.randrange(len(data[i]) + 1)
        data[i] = data[i][:cut] + rng.choice(BAD_BYTES) + data[i][cut:]
    return b"".join(d + b"\n" for d in data), i + 1


def bad_table(rng, columns, rows, sep):
    """CSV/TSV with a column named twice or a byte that is not UTF-8; the line it is on."""
    header = list(columns)
    lines = [sep.join(header)] + [sep.join(r[c].replace(",", " ") if sep == "," else r[c] for c in columns)
                                  for r in rows]
    if rng.random() < 0.5:
        extra = rng.choice(columns)
        lines[0] = sep.join([*header, extra])
        for k in range(1, len(lines)):
            lines[k] += sep + "x"
        data, line = [s.encode("utf-8") for s in lines], 1
    else:
        data = [s.encode("utf-8") for s in lines]
        k = rng.randrange(len(data))
        cut = rng.randrange(len(data[k]) + 1)
        data[k] = data[k][:cut] + rng.choice(BAD_BYTES) + data[k][cut:]
        line = k + 1
    return b"".join(d + b"\n" for d in data), line


def write_good(path, kind, columns, rows):
    if kind == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return
    if kind == "tsv":  # as GLUE's: no quoting
        path.write_text("".join("\t".join(r) + "\n" for r in [columns, *([r[c] for c in columns] for r in rows)]),
                        encoding="utf-8")
        return
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows([r[c] for c in columns] for r in rows)


def test_random_bad_rows_never_give_a_result(tmp_path):
    rng = random.Random(2026)
    for case in range(300):
        columns, rows = good_table(rng)
        kind = rng.choice(["jsonl", "csv", "tsv"])
        path = tmp_path / f"c{case}.{kind}"
        out = tmp_path / f"c{case}.out.{kind}"
        if case % 25 == 0:  # the same tables without a fault read and predict fine
            write_good(path, kind, columns, rows)
            assert read_labeled(path)[0].texts == [r["text"] for r in rows]
            assert predict_file(Echo(), path, out).rows == len(rows)
            continue
        if kind == "jsonl":
            data, line = bad_jsonl(rng, columns, rows)
        else:
            data, line = bad_table(rng, columns, rows, "," if kind == "csv" else "\t")
        path.write_bytes(data)
        with pytest.raises(TaskError) as exc:
            read_labeled(path)  # finetune's reader
        one_line_naming(exc, f"{path}:{line}:")
        with pytest.raises(TaskError) as exc:
            predict_file(Echo(), path, out)
        one_line_naming(exc, f"{path}:{line}:")
        assert not out.exists(), f"case {case}: {data!r}"
    assert not list(tmp_path.glob(".*tmp*"))
