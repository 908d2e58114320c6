"""Batches over packed sequences: seeded, sharded over ranks, resumable bit for bit.

:class:`BatchIterator` is infinite, one seeded permutation per epoch; ``batch_size`` is the
GLOBAL batch: rank ``r`` of ``world_size`` takes positions ``r::world_size`` of each global batch,
so the ranks together see exactly what one process with the same ``batch_size`` sees. Its position
(epoch, global batches done, seed) resumes bit-for-bit, with any ``world_size``.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch


def split_sequences(n: int, eval_fraction: float, min_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train ids, eval ids), disjoint, each ascending; eval chosen by a seeded permutation."""
    n_eval = 0 if eval_fraction <= 0 else max(min_eval, round(eval_fraction * n))
    if n_eval >= n:
        raise ValueError(f"corpus gives {n} sequences, not more than the {n_eval} eval sequences asked "
                         f"(eval_fraction={eval_fraction}, min_eval_sequences={min_eval}); use a larger "
                         f"corpus, a shorter max_seq_len or fewer eval sequences")
    perm = np.random.default_rng([seed, 0xE7A1]).permutation(n)
    id_dtype = np.uint32 if n < 2**32 else np.int64
    return np.sort(perm[n_eval:]).astype(id_dtype), np.sort(perm[:n_eval]).astype(id_dtype)


# ---------------------------------------------------------------------------------- batches
def _collate(rows: np.ndarray, pad_id: int, pin_memory: bool) -> dict[str, torch.Tensor]:
    input_ids = torch.from_numpy(rows)  # (b, n) int64
    batch = {"input_ids": input_ids, "attention_mask": input_ids != pad_id}
    if pin_memory and torch.cuda.is_available():
        batch = {k: v.pin_memory() for k, v in batch.items()}
    return batch


def _rows(dataset, idx: np.ndarray) -> np.ndarray:
    if hasattr(dataset, "get_batch"):
        return dataset.get_batch(idx)
    return np.stack([np.asarray(dataset[int(i)], dtype=np.int64) for i in idx])


class BatchIterator:
    """Infinite batches ``{"input_ids": (b, n) long, "attention_mask": (b, n) bool}``.

    ``batch_size`` is the global batch; this rank yields ``batch_size // world_size`` rows,
    positions ``rank::world_size`` of each global batch. Epoch ``e`` is the permutation drawn from
    ``(seed, e)``. ``state_dict()`` counts global batches, so resuming is exact, even with another
    ``world_size``. ``drop_last=False`` (a short last batch each epoch) is for one process only.
    """

    def __init__(self, dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 drop_last: bool = True, pin_memory: bool = False, pad_id: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        if batch_size < 1 or batch_size % world_size:
            raise ValueError(f"global batch_size={batch_size} must be a positive multiple of "
                             f"world_size={world_size}")
        if not drop_last and world_size > 1:
            raise ValueError("drop_last=False would give ranks unequal batches; use drop_last=True "
                             "with world_size > 1")
        self.n = len(dataset)
        if self.n < batch_size and drop_last:
            raise ValueError(f"dataset has {self.n} sequences, fewer than one batch of {batch_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, int(seed)
        self.rank, self.world_size, self.drop_last = rank, world_size, drop_last
        self.pin_memory, self.pad_id = pin_memory, pad_id
        self.local_batch_size = batch_size // world_size
        self.epoch, self.index = 0, 0
        self._perm: tuple[int, int, np.ndarray] | None = None  # (seed, epoch, permutation)

    @property
    def batches_per_epoch(self) -> int:
        return self.n // self.batch_size if self.drop_last else math.ceil(self.n / self.batch_size)

    def _permutation(self) -> np.ndarray:
        if self._perm is None or self._perm[:2] != (self.seed, self.epoch):
            perm = np.random.default_rng([self.seed, self.epoch]).permutation(self.n)
            self._perm = (self.seed, self.epoch, perm)
        return self._perm[2]

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        if self.index >= self.batches_per_epoch:
            self.epoch, self.index = self.epoch + 1, 0
        b = self.batch_size
        global_batch = self._permutation()[self.index * b:(self.index + 1) * b]
        self.index += 1
        return self._batch(global_batch[self.rank::self.world_size])

    def _batch(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        """This rank's rows ``idx`` of the dataset as a batch (a subclass may collate otherwise)."""
        rows = _rows(self.dataset, idx)  # (b / world_size, n)
        return _collate(rows, self.pad_id, self.pin_memory)

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index, self.seed = int(state["epoch"]), int(state["index"]), int(state["seed"])


class EvalIterator:
    """Finite, fixed order, re-iterable. Rank ``r`` takes sequences ``r::world_size`` in batches of
    ``batch_size // world_size``; ranks may differ by one batch, so reduce sums once at the end."""

    def __init__(self, dataset, batch_size: int, rank: int = 0, world_size: int = 1,
                 pin_memory: bool = False, pad_id: int = 0):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"rank={rank} is not in [0, world_size={world_size})")
        self.dataset, self.pin_memory, self.pad_id = dataset, pin_memory, pad_id
        self.local_batch_size = max(1, batch_size // world_size)
        self.positions = np.arange(rank, len(dataset), world_size)

    def __len__(self) -> int:
        return math.ceil(len(self.positions) / self.local_batch_size)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        b = self.local_batch_size
        for s in range(0, len(self.positions), b):
            yield _collate(_rows(self.dataset, self.positions[s:s + b]), self.pad_id, self.pin_memory)
