"""A fine-tuned model in use: ``load_classifier(folder).predict(texts, pairs=None)``.

``electra-kit finetune`` keeps the model of the seed chosen on the validation split as ``RUN_DIR/model/``,
a model folder like pretraining's (pretrained.py) whose ``config.json`` adds ``task``: its type, labels,
text/pair columns, ``max_seq_len``, pooling and seed. ``encoder.safetensors`` is the fine-tuned encoder
(``load_pretrained`` loads it alone), ``classifier_head.safetensors`` the head on top.

Texts are encoded as fine-tuning encoded them (:func:`encode_examples`) and batched as its evaluation
batched them (length-ordered, 128 a batch), with the random numbers a backbone draws at inference
(Reformer's LSH hashes) seeded as in that evaluation: predicting the evaluation file on CPU gives
exactly the metrics ``finetune`` reported.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..data.tokenizer import special_ids
from ..modelfolder.pretrained import load_pretrained, load_weights_into, read_config, resolve_model_dir
from .model import SequenceModel, collate, length_ordered

HEAD_FILE = "classifier_head.safetensors"
BATCH_SIZE = 128  # finetune's evaluation batch: the same batches give the same numbers


def load_tokenizer(model_dir: str | Path):
    from tokenizers import Tokenizer

    path = Path(model_dir) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"{model_dir} has no tokenizer.json: fine-tuning needs the tokenizer the model was trained with")
    tok = Tokenizer.from_file(str(path))
    tok.no_truncation()  # encode_examples truncates pairs itself, longest first
    tok.no_padding()
    return tok


def encode_examples(tok, texts: list[str], pairs: list[str] | None, max_seq_len: int) -> list[list[int]]:
    """``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]`` token ids, truncated longest-first."""
    ids = special_ids(tok)
    a_all = [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]
    if pairs is None:
        return [[ids.cls_id, *a[: max_seq_len - 2], ids.sep_id] for a in a_all]
    b_all = [e.ids for e in tok.encode_batch(pairs, add_special_tokens=False)]
    rows = []
    for a, b in zip(a_all, b_all, strict=True):
        a, b = list(a), list(b)
        while len(a) + len(b) > max_seq_len - 3:
            (a if len(a) >= len(b) else b).pop()
        rows.append([ids.cls_id, *a, ids.sep_id, *b, ids.sep_id])
    return rows


class Classifier(nn.Module):
    """A fine-tuned :class:`SequenceModel` with its tokenizer and task: texts in, labels and scores out."""

    def __init__(self, model: SequenceModel, tokenizer, config: dict):
        super().__init__()
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.task: dict = config["task"]

    @property
    def labels(self) -> list[str] | None:
        """The class names, by output index (None for regression)."""
        return self.task.get("labels")

    def _rows(self, texts, pairs) -> list[list[int]]:
        texts = [texts] if isinstance(texts, str) else list(texts)
        pairs = [pairs] if isinstance(pairs, str) else None if pairs is None else list(pairs)
        pair_column = (self.task.get("columns") or {}).get("pair")
        if pair_column and pairs is None:
            raise ValueError(f"this model was fine-tuned on text pairs (second text in column {pair_column!r}); "
                             "pass pairs=[...] as well")
        if not pair_column and pairs is not None:
            raise ValueError("this model was fine-tuned on single texts; pass no pairs")
        if pairs is not None and len(pairs) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(pairs)} pairs")
        bad = next((x for x in [*texts, *(pairs or [])] if not isinstance(x, str)), None)
        if bad is not None:
            raise TypeError(f"texts must be strings, got {type(bad).__name__} ({bad!r})")
        return encode_examples(self.tokenizer, texts, pairs, self.task["max_seq_len"])

    @torch.no_grad()
    def logits(self, texts, pairs=None, *, batch_size: int = BATCH_SIZE) -> torch.Tensor:
        """The head's outputs ``(n, k)`` (``k = 1`` for regression), in the order of ``texts``."""
        rows = self._rows(texts, pairs)
        device = next(self.parameters()).device
        out = torch.empty((len(rows), self.model.n_outputs))  # (n, k)
        pad_id = special_ids(self.tokenizer).pad_id
        devices = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):  # the caller's random state is left as it was
            torch.manual_seed(self.task.get("rng_seed", 0))
            for idx in length_ordered(rows, batch_size):
                ids, mask = collate([rows[i] for i in idx], pad_id)  # (b, n), (b, n)
                out[torch.from_numpy(idx)] = self.model(ids.to(device), mask.to(device)).float().cpu()
        return out

    def predict(self, texts, pairs=None, *, batch_size: int = BATCH_SIZE) -> list[dict]:
        """One dict per text: ``{"label", "score", "scores": {label: probability}}`` for classification
        (``score`` is the chosen label's probability), ``{"score": value}`` for regression."""
        logits = self.logits(texts, pairs, batch_size=batch_size)
        if self.task["type"] == "regression":
            return [{"score": float(v)} for v in logits[:, 0]]
        probs = logits.softmax(-1)  # (n, k)
        best = logits.argmax(-1)  # as finetune's evaluation chose: on the logits
        return [{"label": self.labels[int(i)], "score": float(p[i]),
                 "scores": dict(zip(self.labels, map(float, p), strict=True))} for i, p in zip(best, probs, strict=True)]


def load_classifier(folder: str | Path, *, map_location: str = "cpu") -> Classifier:
    """The fine-tuned model in ``folder`` (``RUN_DIR/model`` of ``electra-kit finetune``, or the run directory)."""
    folder = resolve_model_dir(folder)
    config = read_config(folder)
    task = config.get("task")
    if not isinstance(task, dict):
        raise ValueError(f"{folder} is not a fine-tuned model folder (its config.json has no task); fine-tune it with "
                         "`electra-kit finetune`, or load its encoder with load_pretrained")
    encoder = load_pretrained(folder, part="encoder", map_location=map_location)
    model = SequenceModel(encoder.backbone, task["n_outputs"], 0.0, task["type"], task["pooling"])
    load_weights_into(model.head, folder / HEAD_FILE, device=map_location)
    classifier = Classifier(model, load_tokenizer(folder), config)
    return classifier.eval()
