"""``electra-kit predict MODEL --input FILE``: a fine-tuned model's labels and scores for a file of texts.

JSONL, CSV or TSV in (by suffix, as ``finetune`` reads them: tasks.py), the same format out: every input
column kept, then ``label`` and ``score`` (the label's probability; the predicted value for regression)
and the probability of each label, as ``score_<label>`` columns (CSV/TSV) or a ``scores`` object (JSONL).
When the input already has one of these names (an evaluation file's gold ``label``), all of them are
prefixed ``predicted_``.
The output is written atomically (atomic.py), and never replaces an input (the input file, anything in the
model folder), a special file or a folder (guard.py).
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

from ..modelfolder.pretrained import resolve_model_dir
from ..rundir.atomic import atomic_write
from ..rundir.guard import check_output, is_devnull
from .classifier import BATCH_SIZE, Classifier, load_classifier
from .tasks import (
    PAIR_COLUMNS,
    TEXT_COLUMNS,
    TaskError,
    _format,
    distinct_columns,
    label_key,
    label_value,
    read_rows,
    text_value,
)


@dataclass
class PredictResult:
    output: Path
    rows: int
    columns: list[str]  # the columns added
    accuracy: float | None = None  # against the input's gold labels, when it has the training label column


def default_output(path: Path) -> Path:
    return path.with_name(f"{path.stem}.predictions{path.suffix}")


def _text_columns(classifier: Classifier, columns: list[str], path, text: str | None, pair: str | None):
    """The text (and pair) column: as given, else the one the model was fine-tuned on, else a usual name."""
    listed = ", ".join(repr(c) for c in columns)
    for name, option in ((text, "--text-column"), (pair, "--pair-column")):
        if name is not None and name not in columns:
            raise TaskError(f"{path}: no column {name!r} ({option}); its columns are {listed}")
    trained = classifier.task.get("columns") or {}
    if text is None:
        usual = [a for a, _ in PAIR_COLUMNS] if trained.get("pair") else TEXT_COLUMNS
        candidates = [trained.get("text"), *usual]
        text = next((c for c in candidates if c and c in columns), None)
        if text is None:
            raise TaskError(f"{path}: no text column among {listed} (the model was fine-tuned on "
                            f"{trained.get('text')!r}); name it with --text-column")
    if trained.get("pair") and pair is None:
        partners = [trained["pair"], *(b for a, b in PAIR_COLUMNS if a == text)]
        pair = next((c for c in partners if c in columns), None)
        if pair is None:
            raise TaskError(f"{path}: the model was fine-tuned on text pairs ({trained.get('text')!r}, "
                            f"{trained['pair']!r}) but no second text column is among {listed}; name it with --pair-column")
    if pair is not None and not trained.get("pair"):
        raise TaskError(f"--pair-column {pair!r}: the model was fine-tuned on single texts")
    distinct_columns({"--text-column": text, "--pair-column": pair})
    return text, pair


def predict_file(model, input_path, output_path=None, *, text_column: str | None = None,
                 pair_column: str | None = None, batch_size: int = BATCH_SIZE, fmt: str = "auto",
                 header: bool = True) -> PredictResult:
    input_path = Path(input_path)
    output_path = Path(output_path) if output_path else default_output(input_path)
    models = [] if isinstance(model, Classifier) else [model, resolve_model_dir(model)]
    # the write rule of every command; /dev/null (the accuracy alone) is allowed, and then nothing is written
    check_output(output_path, inputs=[input_path, *models], kind="file", devnull=True)
    classifier = model if isinstance(model, Classifier) else load_classifier(model)
    kind = _format(input_path, fmt)
    columns, rows = read_rows(input_path, kind, header)
    text, pair = _text_columns(classifier, columns, input_path, text_column, pair_column)
    texts = [text_value(input_path, lineno, row, text) for lineno, row in rows]
    pairs = [text_value(input_path, lineno, row, pair) for lineno, row in rows] if pair else None
    answers = classifier.predict(texts, pairs, batch_size=batch_size)

    accuracy = _accuracy(classifier, rows, answers, input_path)  # before writing: it checks the gold labels
    added, out_rows = [], []
    for (_, row), answer in zip(rows, answers, strict=True):
        extra = {"label": answer["label"]} if "label" in answer else {}
        extra["score"] = answer["score"]
        if "scores" in answer:
            if kind == "jsonl":
                extra["scores"] = answer["scores"]
            else:
                extra.update({f"score_{k}": v for k, v in answer["scores"].items()})
        if any(k in columns for k in extra):  # all renamed alike (every row has the same keys), or none
            extra = {f"predicted_{k}": v for k, v in extra.items()}
        added = list(extra)
        out_rows.append({**row, **extra})

    if is_devnull(output_path):
        pass  # never replaced: writing to it would be discarding
    elif kind == "jsonl":
        data = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in out_rows)
        atomic_write(output_path, data)
    else:
        _write_table(output_path, kind, columns + added, out_rows, header)
    return PredictResult(output_path, len(rows), added, accuracy)


def _write_table(path: Path, kind: str, columns: list[str], rows: list[dict], header: bool) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            if kind == "tsv":  # as GLUE's files are read: no quoting, so no field may hold a tab or newline
                writer = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_NONE, quotechar=None, escapechar=None,
                                    lineterminator="\n")  # quotechar None: a text's " is written as it was read
            else:
                writer = csv.writer(f, lineterminator="\n")
            if header:
                writer.writerow(columns)
            for row in rows:
                writer.writerow(["" if row.get(c) is None else row.get(c) for c in columns])

    try:
        atomic_write(path, writer=write)
    except csv.Error as exc:
        raise TaskError(f"{path}: cannot be written as TSV ({exc}): a value holds a tab or newline; "
                        "write CSV or JSONL instead") from None


def _accuracy(classifier: Classifier, rows, answers, path) -> float | None:
    gold = (classifier.task.get("columns") or {}).get("label")
    if classifier.task["type"] == "regression" or not gold or any(gold not in r or r[gold] in (None, "")
                                                                   for _, r in rows):
        return None
    labels = [label_value(path, lineno, r, gold) for lineno, r in rows]  # a JSON list is no gold label
    hits = sum(label_key(v) == a["label"] for v, a in zip(labels, answers, strict=True))
    return hits / len(rows)
