"""torchrun / DDP: the only module that touches torch.distributed.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) the process group is initialised with
NCCL on GPUs and gloo on CPU; otherwise everything here is a cheap single-process no-op.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: nn.Module, skip: bool):
        """Skip the gradient all-reduce on accumulation micro-steps."""
        if self.enabled and skip:
            return model.no_sync()
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def all_true(self, flag: bool, device: torch.device) -> bool:
        """True only if ``flag`` holds on every rank (e.g. "stop now" after a signal on one)."""
        if not self.enabled:
            return flag
        t = torch.tensor([0 if flag else 1], device=device)
        dist.all_reduce(t)
        return int(t.item()) == 0

    def any_true(self, flag: bool, device: torch.device) -> bool:
        if not self.enabled:
            return flag
        t = torch.tensor([1 if flag else 0], device=device)
        dist.all_reduce(t)
        return int(t.item()) > 0

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.enabled:
            tensor = tensor.clone()
            dist.all_reduce(tensor)
        return tensor

    def broadcast_object(self, obj=None):
        """Rank 0's ``obj`` on every rank (e.g. the tokenizer, so all ranks share one vocabulary)."""
        if not self.enabled:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.enabled and dist.is_initialized():
            dist.destroy_process_group()


def init_from_env(device_type: str) -> DistContext:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
