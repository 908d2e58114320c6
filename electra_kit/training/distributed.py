"""torchrun / DDP / FSDP: the only module that touches torch.distributed.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) the process group is initialised with
NCCL on GPUs and gloo on CPU; otherwise everything here is a cheap single-process no-op.
``strategy='fsdp'`` shards parameters, gradients and optimizer state over the ranks (FSDP2,
``fully_shard``) for models too big for one card; checkpoints are always full (unsharded)
state dicts, so a run can resume under another strategy or number of processes.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

STRATEGIES = ("ddp", "fsdp")
_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


@dataclass
class DistContext:
    """This process's place in a torchrun job (a single process: rank 0 of 1) and the only door to
    torch.distributed: wrapping the model (DDP or FSDP), collectives, whole state dicts for checkpoints."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "ddp"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def sharded(self) -> bool:
        return self.enabled and self.strategy == "fsdp"

    def wrap(self, model: nn.Module, device: torch.device) -> nn.Module:
        if not self.enabled:
            return model
        if self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            # one FSDP unit per layer found in a ModuleList (gathered one at a time), innermost first
            containers = (nn.ModuleList, nn.ModuleDict, nn.Sequential)
            blocks = [b for m in model.modules() if isinstance(m, nn.ModuleList) for b in m
                      if isinstance(b, nn.Module) and not isinstance(b, containers)
                      and any(p.requires_grad for p in b.parameters())]
            for block in reversed(blocks):
                fully_shard(block)
            fully_shard(model)  # the rest (embeddings, heads) as the root unit
            return model
        ids = [device.index] if device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def no_sync(self, model: nn.Module, skip: bool):
        """Skip the gradient all-reduce (DDP) or reduce-scatter (FSDP) on accumulation micro-steps."""
        if not (self.enabled and skip):
            return contextlib.nullcontext()
        if self.strategy == "fsdp":
            return _fsdp_no_sync(model)
        return model.no_sync()

    # Full state dicts in the plain (unsharded) formats, whatever the strategy. Under FSDP these
    # are collectives: every rank calls them, and rank 0 receives the tensors.
    def model_state(self, model: nn.Module) -> dict:
        if not self.sharded:
            return unwrap(model).state_dict()
        return get_model_state_dict(model, options=_FULL)

    def optimizer_state(self, model: nn.Module, optimizer) -> dict:
        if not self.sharded:
            return optimizer.state_dict()
        by_name = get_optimizer_state_dict(model, optimizer, options=_FULL)  # keyed by parameter name
        if not by_name:  # ranks other than 0 receive nothing
            return {}
        index = {name: i for i, name in enumerate(n for g in by_name["param_groups"] for n in g["params"])}
        return {
            "state": {index[name]: v for name, v in by_name["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in by_name["param_groups"]],
        }

    def load_model_state(self, model: nn.Module, state: dict) -> None:
        if not self.sharded:
            unwrap(model).load_state_dict(state)
            return
        set_model_state_dict(model, state, options=StateDictOptions(full_state_dict=True))

    def load_optimizer_state(self, model: nn.Module, optimizer, state: dict) -> None:
        if not self.sharded:
            optimizer.load_state_dict(state)
            return
        names = {id(p): n for n, p in model.named_parameters()}
        order = [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
        by_name = {
            "state": {order[int(i)]: v for i, v in state["state"].items()},
            "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in state["param_groups"]],
        }
        set_optimizer_state_dict(model, optimizer, by_name, options=StateDictOptions(full_state_dict=True))

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

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


@contextlib.contextmanager
def _fsdp_no_sync(model: nn.Module):
    model.set_requires_gradient_sync(False)
    try:
        yield
    finally:
        model.set_requires_gradient_sync(True)


def init_from_env(device_type: str, strategy: str = "ddp") -> DistContext:
    if strategy not in STRATEGIES:
        raise ValueError(f"train.strategy={strategy!r}; choose one of {STRATEGIES}")
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext(strategy=strategy)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if device_type == "cuda" else "gloo"
    if device_type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    return DistContext(rank=rank, world_size=world, local_rank=local, strategy=strategy)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
