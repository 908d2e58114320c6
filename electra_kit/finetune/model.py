"""The fine-tuning model and its batches, in the shape the training loop knows (the objective interface).

``SequenceModel`` is a backbone plus ELECTRA's sequence head on the first token ([CLS]):
dropout -> dense(d, d) -> GELU -> dropout -> dense(d, k) (k classes, or 1 output for regression),
trained with cross-entropy or mean squared error. ``forward(..., labels=..., return_output=True)``
gives the trainer its loss, loss terms and metrics; ``evaluate`` gives the task metrics.
``layer_groups()`` lists its parameters by depth for layer-wise learning-rate decay, with the
head at depth ``L + 2`` as in ELECTRA's ``_get_layer_lrs``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data.batches import BatchIterator
from ..objectives.base import Objective
from .tasks import task_metrics


class ClassificationHead(nn.Module):
    """ELECTRA's sequence head on the first token's hidden state."""

    def __init__(self, hidden_dim: int, n_outputs: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.dense = nn.Linear(hidden_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, n_outputs)
        for layer in (self.dense, self.out):  # BERT's initialisation
            nn.init.normal_(layer.weight, std=0.02)
            nn.init.zeros_(layer.bias)

    def forward(self, first: torch.Tensor) -> torch.Tensor:  # (b, d)
        return self.out(self.dropout(F.gelu(self.dense(self.dropout(first)))))  # (b, k)


@dataclass
class TaskOutput:
    loss: torch.Tensor
    logits: torch.Tensor  # (b, k)
    loss_terms: list = field(default_factory=list)  # [(1.0, sum, count)]

    def metrics(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.detach()}


def task_loss(task: str, logits: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    if task == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), y.float(), reduction=reduction)
    return F.cross_entropy(logits.float(), y, reduction=reduction)


POOLINGS = ("cls", "mean")


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor, pooling: str) -> torch.Tensor:
    """One vector per sequence: the first token's (ELECTRA's ``[CLS]``) or the mean of the real tokens'.

    ELECTRA's discriminator never gets a learning signal at ``[CLS]`` (it is never replaced), so
    after a short pretraining its hidden state there carries little; the mean uses every token.
    """
    if pooling == "cls":
        return hidden[:, 0]  # (b, d)
    weights = attention_mask.to(hidden.dtype)[..., None]  # (b, n, 1)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)  # (b, d)


class SequenceModel(Objective):
    """``task_config``: what the model folder records of the task besides its type and pooling (labels,
    columns, ...), so that the folder alone says how to use the model."""

    def __init__(self, backbone: nn.Module, n_outputs: int, dropout: float, task: str = "classification",
                 pooling: str = "cls", task_config: dict | None = None):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling={pooling!r}; choose one of {POOLINGS}")
        self.backbone, self.pooling = backbone, pooling
        self.head = ClassificationHead(backbone.hidden_dim, n_outputs, dropout)
        self.task, self.n_outputs = task, n_outputs
        self.task_config = dict(task_config or {})

    @property
    def encoder(self) -> nn.Module:
        return self.backbone

    def logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.backbone(input_ids, attention_mask=attention_mask)  # (b, n, d)
        return self.head(pool(hidden, attention_mask, self.pooling))  # (b, k)

    def forward(self, input_ids, attention_mask, *, labels=None, return_output: bool = False, noise=None):
        logits = self.logits(input_ids, attention_mask)
        if not return_output:
            return logits
        total = task_loss(self.task, logits, labels, reduction="sum")
        count = torch.tensor(float(len(labels)), device=logits.device)
        return TaskOutput(total / count, logits, [(1.0, total, count)])

    def folder_parts(self) -> dict[str, nn.Module]:
        return {"classifier_head": self.head}

    def folder_config(self) -> dict:
        return {"task": {"type": self.task, "n_outputs": self.n_outputs, "pooling": self.pooling, **self.task_config}}

    def layer_groups(self) -> list[list[nn.Parameter]]:
        groups = [list(g) for g in self.backbone.layer_groups()]
        covered = {id(p) for g in groups for p in g}
        groups[-1] += [p for p in self.backbone.parameters() if id(p) not in covered]
        return [*groups, [], list(self.head.parameters())]  # depth L + 1 is empty: the head sits at L + 2

    @torch.no_grad()
    def predict(self, batches) -> tuple[np.ndarray, np.ndarray, float]:
        """(labels, predictions, mean loss) over ``batches``, in their order."""
        ys, preds, loss, n = [], [], 0.0, 0
        for batch in batches:
            logits = self(batch["input_ids"], batch["attention_mask"]).float()  # (b, k)
            y = batch["labels"]
            loss += float(task_loss(self.task, logits, y, reduction="sum"))
            n += len(y)
            ys.append(y.cpu().numpy())
            preds.append((logits.squeeze(-1) if self.task == "regression" else logits.argmax(-1)).cpu().numpy())
        return np.concatenate(ys), np.concatenate(preds), loss / max(n, 1)

    def evaluate(self, batches) -> dict[str, float]:
        y, pred, loss = self.predict(batches)
        return {**task_metrics(self.task, y, pred, self.n_outputs if self.task != "regression" else 0), "loss": loss}


# ------------------------------------------------------------------------------------- batches
def collate(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of token ids padded to the longest: ``(ids, mask)``, each (b, n)."""
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)  # (b, n)
    mask = torch.zeros((len(rows), n), dtype=torch.bool)  # (b, n)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.tensor(r)
        mask[i, : len(r)] = True
    return ids, mask


class LabeledBatches(BatchIterator):
    """Infinite shuffled batches ``{input_ids, attention_mask, labels}`` of labelled rows, each padded
    to its longest row; one seeded permutation per epoch, resumable like pretraining's batches."""

    def __init__(self, rows: list[list[int]], labels: np.ndarray, batch_size: int, *, seed: int, pad_id: int):
        super().__init__(rows, batch_size, seed=seed, drop_last=False, pad_id=pad_id)
        self.labels = torch.from_numpy(labels)

    def _batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        ids, mask = collate([self.dataset[int(i)] for i in idx], self.pad_id)
        return {"input_ids": ids, "attention_mask": mask, "labels": self.labels[torch.from_numpy(idx.astype(np.int64))]}


def length_ordered(rows: list[list[int]], batch_size: int):
    """Row indices in batches, rows of similar length together (less padding). Evaluation and
    prediction both batch this way, so a saved model predicts exactly what it was scored on."""
    order = np.argsort([len(r) for r in rows], kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start:start + batch_size]


def eval_batches(rows: list[list[int]], labels: np.ndarray, batch_size: int, pad_id: int, device):
    """Finite batches in :func:`length_ordered` order; labels stay with their rows."""
    for idx in length_ordered(rows, batch_size):
        ids, mask = collate([rows[i] for i in idx], pad_id)
        yield {"input_ids": ids.to(device), "attention_mask": mask.to(device),
               "labels": torch.from_numpy(labels[idx]).to(device)}
