"""Labeled text for fine-tuning: JSONL / CSV / TSV files, their columns and labels, and the metrics.

Files. The format follows the suffix (``.jsonl``/``.json``: one JSON object a line; ``.csv``;
``.tsv``/``.txt``: tab-separated) unless given. TSV is read without quote processing, the way
GLUE's files must be read (their sentences hold unmatched quotes). A header row names the
columns; a file without one (GLUE's CoLA) is read with ``header=False`` and its columns are
named ``0``, ``1``, ... . A UTF-8 byte-order mark is ignored. :func:`read_rows` is the one reader of
these files (finetune and predict): a column named twice (a header, a JSON object), a byte that is not
UTF-8, a non-finite JSON number and a JSON list, number or true/false where text belongs are refused,
naming file, line and column.

Columns. Named explicitly, or found among the usual names, pairs first: GLUE's ``sentence1`` /
``sentence2`` (RTE, MNLI, STS-B, WNLI), ``question1`` / ``question2`` (QQP), ``#1 String`` /
``#2 String`` (MRPC), ``question`` / ``sentence`` (QNLI), then ``premise`` / ``hypothesis``,
``text`` / ``text_pair``; a single text in ``text``, ``sentence`` or ``question``; the label in
``label``, ``gold_label`` (MNLI), ``score`` (STS-B), ``is_duplicate`` (QQP) or ``Quality`` (MRPC).

Task type. ``auto`` is regression when every training label is a number and at least one is
written as a real number (``3.8``, ``5.000``, a JSON float); otherwise classification, whose
label set is the training file's. An evaluation label the training file never has is an error
(nothing could predict it); training labels missing from a small evaluation file are only warned
about.
"""

from __future__ import annotations

import csv
import io
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.stats
from sklearn.metrics import f1_score, matthews_corrcoef

FORMATS = ("auto", "jsonl", "csv", "tsv")
TASK_TYPES = ("auto", "classification", "regression")
PAIR_COLUMNS = [("sentence1", "sentence2"), ("question1", "question2"), ("#1 String", "#2 String"),
                ("question", "sentence"), ("premise", "hypothesis"), ("text", "text_pair"), ("text_a", "text_b")]
TEXT_COLUMNS = ["text", "sentence", "question"]
LABEL_COLUMNS = ["label", "gold_label", "score", "is_duplicate", "Quality"]


class TaskError(ValueError):
    """A fine-tuning file that cannot be used; the message names the file (and line or column)."""


@dataclass
class Columns:
    text: str
    pair: str | None
    label: str


@dataclass
class LabeledTexts:
    path: str
    texts: list[str]
    pairs: list[str] | None
    labels: list  # raw values: str / int / float / bool
    lines: list[int] = field(default_factory=list)  # source line of each example


def _format(path: Path, fmt: str) -> str:
    if fmt not in FORMATS:
        raise TaskError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt != "auto":
        return fmt
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if suffix == ".csv":
        return "csv"
    if suffix in (".tsv", ".txt", ".tab"):
        return "tsv"
    raise TaskError(f"{path}: cannot tell the format from the suffix {suffix!r}; pass --format jsonl, csv or tsv")


def read_rows(path: str | Path, fmt: str = "auto", header: bool = True) -> tuple[list[str], list[tuple[int, dict]]]:
    """``(column names, [(line number, {column: value})])`` of a JSONL, CSV or TSV file: the one reader of
    tabular input (finetune and predict). A column named twice, a byte that is not UTF-8 and a non-finite
    JSON number (``NaN``, ``Infinity``, ``1e999``) are refused as :class:`TaskError` naming file and line."""
    path = Path(path)
    if not path.is_file():
        raise TaskError(f"{path}: no such file")
    kind = _format(path, fmt)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise TaskError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                        "save the file as UTF-8") from None
    rows: list[tuple[int, dict]] = []
    f = io.StringIO(text, newline="")
    if kind == "jsonl":
        columns: list[str] = []
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            obj = _json_row(path, lineno, line)
            columns += [k for k in obj if k not in columns]
            rows.append((lineno, obj))
    else:
        if kind == "tsv":
            reader = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        else:
            reader = csv.reader(f)
        limit = csv.field_size_limit(FIELD_LIMIT)  # long documents are fine; csv's default stops at 128 KiB
        try:
            records = [(reader.line_num, r) for r in reader if any(cell.strip() for cell in r)]
        except csv.Error as exc:
            raise TaskError(f"{path}:{reader.line_num + 1}: not valid {kind.upper()} ({exc})") from None
        finally:
            csv.field_size_limit(limit)
        if not records:
            raise TaskError(f"{path} is empty")
        if header:
            columns = [c.strip() for c in records[0][1]]
            _check_header(path, records[0][0], columns)
            records = records[1:]
        else:
            columns = [str(i) for i in range(max(len(r) for _, r in records))]
        for lineno, r in records:
            if len(r) > len(columns):
                raise TaskError(f"{path}:{lineno}: {len(r)} fields but the header has {len(columns)}")
            rows.append((lineno, dict(zip(columns, r, strict=False))))
    if not rows:
        raise TaskError(f"{path} is empty" if not columns else f"{path} has a header but no rows")
    return columns, rows


def _check_header(path: Path, lineno: int, columns: list[str]) -> None:
    first: dict[str, int] = {}
    for i, name in enumerate(columns, 1):
        if name in first:
            raise TaskError(f"{path}:{lineno}: column {name!r} is named twice in the header (fields {first[name]} "
                            f"and {i}); rename one")
        first[name] = i


class _NonFinite:
    """A JSON ``NaN``/``Infinity``/``-Infinity`` (or a number too large for a float), kept to be refused by column."""

    def __init__(self, text: str):
        self.text = text


def _finite_float(text: str) -> float | _NonFinite:
    value = float(text)
    return value if math.isfinite(value) else _NonFinite(text)


def _holds_non_finite(value) -> _NonFinite | None:
    if isinstance(value, _NonFinite):
        return value
    inner = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next(filter(None, map(_holds_non_finite, inner)), None)


def _json_row(path: Path, lineno: int, line: str) -> dict:
    """One JSONL line as an object: json with a hook that refuses a key given twice (a dict would keep the
    last) and number hooks that mark a non-finite value (refused below, naming its column)."""
    def unique(pairs: list[tuple[str, object]]) -> dict:
        seen = set()
        for key, _ in pairs:
            if key in seen:
                raise TaskError(f"{path}:{lineno}: key {key!r} is given twice in one object; name each column once")
            seen.add(key)
        return dict(pairs)

    try:
        obj = json.loads(line, object_pairs_hook=unique, parse_constant=_NonFinite, parse_float=_finite_float)
    except json.JSONDecodeError as exc:
        raise TaskError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise TaskError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
    for key, value in obj.items():
        bad = _holds_non_finite(value)
        if bad is not None:
            raise TaskError(f"{path}:{lineno}: column {key!r}: {bad.text} is not a finite number")
    return obj


_JSON_TYPES = {dict: "a JSON object", list: "a JSON list", bool: "true/false", int: "a number", float: "a number"}


def text_value(path, lineno: int, row: dict, name: str) -> str:
    """The text in column ``name``: a string that is not empty (a JSON number, list ... is refused, by name)."""
    value = row.get(name)
    if value is None or value == "":
        raise TaskError(f"{path}:{lineno}: no value in column {name!r}")
    if not isinstance(value, str):
        raise TaskError(f"{path}:{lineno}: column {name!r} holds {_JSON_TYPES.get(type(value), type(value).__name__)}, "
                        "not text; quote it as a JSON string")
    return value


def label_value(path, lineno: int, row: dict, name: str):
    """The label in column ``name``: text, a (finite) number or true/false; not empty, a list or an object."""
    value = row.get(name)
    if value is None or value == "":
        raise TaskError(f"{path}:{lineno}: no value in column {name!r}")
    if isinstance(value, (dict, list)):
        raise TaskError(f"{path}:{lineno}: column {name!r} holds {_JSON_TYPES[type(value)]}; a label is text, "
                        "a number or true/false")
    return value


def resolve_columns(columns: list[str], path, *, text: str | None = None, pair: str | None = None,
                    label: str | None = None) -> Columns:
    """The text, text-pair and label columns: as given, else found among the usual names."""
    listed = ", ".join(repr(c) for c in columns)
    for name, option in ((text, "--text-column"), (pair, "--pair-column"), (label, "--label-column")):
        if name is not None and name not in columns:
            raise TaskError(f"{path}: no column {name!r} ({option}); its columns are {listed}")
    if text is None:
        found = next(((a, b) for a, b in PAIR_COLUMNS if a in columns and b in columns), None)
        if found is not None:
            text, pair = found[0], pair or found[1]
        else:
            text = next((c for c in TEXT_COLUMNS if c in columns), None)
        if text is None:
            raise TaskError(f"{path}: no text column among {listed}; name it with --text-column"
                            " (a 0-based column number for a file read with --no-header)")
    if label is None:
        label = next((c for c in LABEL_COLUMNS if c in columns and c not in (text, pair)), None)
        if label is None:
            raise TaskError(f"{path}: no label column among {listed}; name it with --label-column")
    distinct_columns({"--text-column": text, "--pair-column": pair, "--label-column": label})
    return Columns(text, pair, label)


def distinct_columns(roles: dict[str, str | None]) -> None:
    """Refuse one column in two roles (a text that is also its label, a pair of one text twice)."""
    named = [(option, name) for option, name in roles.items() if name is not None]
    for i, (option, name) in enumerate(named):
        for other, same in named[i + 1:]:
            if same == name:
                raise TaskError(f"{option} and {other} both name column {name!r}; each must be a different column")


def read_labeled(path, *, fmt: str = "auto", header: bool = True, text: str | None = None,
                 pair: str | None = None, label: str | None = None) -> tuple[LabeledTexts, Columns]:
    columns, rows = read_rows(path, fmt, header)
    cols = resolve_columns(columns, path, text=text, pair=pair, label=label)
    texts, pairs, labels, lines = [], [] if cols.pair else None, [], []
    for lineno, row in rows:
        texts.append(text_value(path, lineno, row, cols.text))
        if pairs is not None:
            pairs.append(text_value(path, lineno, row, cols.pair))
        labels.append(label_value(path, lineno, row, cols.label))
        lines.append(lineno)
    return LabeledTexts(str(path), texts, pairs, labels, lines), cols


# ---------------------------------------------------------------------------------------- labels
def _as_number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        number = float(str(value).strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _written_as_real(value) -> bool:
    if isinstance(value, float):
        return True
    return isinstance(value, str) and any(ch in value for ch in ".eE") and _as_number(value) is not None


def label_key(value) -> str:
    """Classification labels compare as text: JSON ``1`` and CSV ``"1"`` are the same label."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


FIELD_LIMIT = 64 << 20  # characters in one CSV/TSV field
MANY_CLASSES = 20  # more distinct whole-number labels than this look like scores, not classes


def infer_task(labels: list, task: str = "auto") -> str:
    if task not in TASK_TYPES:
        raise TaskError(f"unknown task type {task!r}; choose one of {', '.join(TASK_TYPES)}")
    if task != "auto":
        return task
    numbers = sum(_as_number(v) is not None for v in labels)
    if numbers == len(labels) and any(_written_as_real(v) for v in labels):
        return "regression"
    if len(labels) > numbers >= 0.5 * len(labels):
        odd = next(v for v in labels if _as_number(v) is None)
        warnings.warn(f"electra-kit: --task auto: {numbers} of {len(labels)} labels are numbers but some are not "
                      f"(e.g. {odd!r}), so every label is treated as a class; pass --task regression (and fix those "
                      f"labels) if they are scores", UserWarning, stacklevel=2)
    elif numbers == len(labels) and len({label_key(v) for v in labels}) > MANY_CLASSES:
        warnings.warn(f"electra-kit: --task auto: {len({label_key(v) for v in labels})} distinct whole-number labels "
                      f"are treated as classes; pass --task regression if they are scores", UserWarning, stacklevel=2)
    return "classification"


def label_set(labels: list) -> list[str]:
    keys = {label_key(v) for v in labels}
    if all(_as_number(k) is not None for k in keys):
        return sorted(keys, key=lambda k: float(k))
    return sorted(keys)


def encode_labels(data: LabeledTexts, task: str, classes: list[str] | None, train_path=None) -> np.ndarray:
    """Class indices (``int64``) or regression targets (``float32``); errors name file and line."""
    if task == "regression":
        out = []
        for value, lineno in zip(data.labels, data.lines, strict=True):
            number = _as_number(value)
            if number is None:
                raise TaskError(f"{data.path}:{lineno}: label {value!r} is not a number (the task is regression)")
            out.append(number)
        return np.asarray(out, dtype=np.float32)
    index = {c: i for i, c in enumerate(classes)}
    keys = [label_key(v) for v in data.labels]
    unknown = sorted({k for k in keys if k not in index})
    if unknown:
        where = next(line for k, line in zip(keys, data.lines, strict=True) if k == unknown[0])
        raise TaskError(
            f"label set mismatch: {data.path} has label(s) {', '.join(map(repr, unknown))} (first at line {where}) "
            f"that the training file {train_path} never has; its labels are {', '.join(map(repr, classes))}"
        )
    missing = sorted(set(classes) - set(keys))
    if missing and train_path is not None:
        warnings.warn(f"electra-kit: {data.path} has no example of label(s) {', '.join(map(repr, missing))}",
                      UserWarning, stacklevel=2)
    return np.asarray([index[k] for k in keys], dtype=np.int64)


# --------------------------------------------------------------------------------------- metrics
def _correlation(fn, x: np.ndarray, y: np.ndarray) -> float:
    """A SciPy correlation, 0 where it is undefined (a constant input, e.g. early in training)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(fn(x, y)[0])


def pearson(x: np.ndarray, y: np.ndarray) -> float:
    return _correlation(scipy.stats.pearsonr, x, y)


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    return _correlation(scipy.stats.spearmanr, x, y)


def task_metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray, n_classes: int = 0) -> dict[str, float]:
    """Classification: accuracy, F1 (of the second class when there are two, as GLUE's MRPC and
    QQP; macro-averaged otherwise), macro F1 and Matthews correlation (scikit-learn). Regression:
    Spearman, Pearson (SciPy) and mean squared error."""
    if task == "regression":
        return {"spearman": spearman(y_true, y_pred), "pearson": pearson(y_true, y_pred),
                "mse": float(np.mean((np.asarray(y_true, np.float64) - y_pred) ** 2))}
    labels = list(range(n_classes))
    per_class = f1_score(y_true, y_pred, labels=labels, average=None, zero_division=0.0)
    return {"accuracy": float(np.mean(y_true == y_pred)), "f1": float(per_class[1] if n_classes == 2 else per_class.mean()),
            "macro_f1": float(per_class.mean()), "mcc": _mcc(y_true, y_pred)}


def _mcc(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    with warnings.catch_warnings():  # one class only (a small split): sklearn warns, and gives 0 as we want
        warnings.simplefilter("ignore", UserWarning)
        return float(matthews_corrcoef(y_true, y_pred))


def primary_metric(task: str) -> str:
    return "spearman" if task == "regression" else "accuracy"
