"""The Backbone contract, checked where a backbone's output enters an objective.

A backbone maps token ids ``(b, n)`` to hidden states ``(b, n, hidden_dim)``. One that returns another
shape would fail deep in torch (``mat1 and mat2 shapes cannot be multiplied``) or, one token short, not at
all (the masked positions rarely reach the last one); ids beyond the vocabulary would be a bare IndexError
in an embedding. These checks say which backbone broke which rule, in one line.

They cost nothing on an accelerator: shapes are Python ints, and the id range is read only from a CPU
tensor outside ``torch.compile`` (no host-device sync per step). On an accelerator the ids are checked
once, at build time, against the data's vocabulary (``build_objective`` in training/pretrain.py).
"""

from __future__ import annotations

import torch
from torch import nn


class BackboneContractError(ValueError):
    """A backbone's output, or the ids given to it, break the Backbone contract; the message names the backbone."""


def is_compiling() -> bool:
    """True while torch.compile traces (no tensor value may be read then)."""
    compiling = getattr(torch.compiler, "is_compiling", None)  # torch >= 2.3
    return bool(compiling()) if compiling is not None else torch._dynamo.is_compiling()


def describe_backbone(module: nn.Module, role: str) -> str:
    """``the generator backbone 'reformer' (Reformer)``: the registry name where it has one, and the class."""
    name = getattr(module, "backbone_name", None)
    cls = type(module).__name__
    return f"the {role} backbone '{name}' ({cls})" if name else f"the {role} {cls}"


def check_output(output, expected: tuple[int | None, ...], module: nn.Module, role: str, what: str) -> None:
    """Raise naming ``module`` unless ``output`` is a tensor of shape ``expected`` (None: any size there)."""
    shape = tuple(output.shape) if isinstance(output, torch.Tensor) else None
    if shape is None or len(shape) != len(expected) or any(e is not None and s != e for s, e in zip(shape, expected, strict=True)):
        got = f"shape {shape}" if shape is not None else f"a {type(output).__name__}"
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise BackboneContractError(f"{describe_backbone(module, role)} returned {what} of {got}; expected {want}")


def check_hidden(hidden, input_ids: torch.Tensor, backbone: nn.Module, role: str) -> None:
    """``hidden`` must be ``(b, n, hidden_dim)`` for ``input_ids`` of shape ``(b, n)``."""
    check_output(hidden, (*input_ids.shape, backbone.hidden_dim), backbone, role,
                 "hidden states (batch, seq, hidden_dim)")


def check_input_ids(input_ids: torch.Tensor, num_tokens: int | None, module: nn.Module, role: str) -> None:
    """``input_ids`` must be ``(b, n)`` integers; on a CPU tensor outside torch.compile, ids in ``0..num_tokens-1``."""
    if input_ids.dim() != 2 or input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        raise BackboneContractError(f"input_ids must be (batch, seq) integer token ids, got {input_ids.dtype} of "
                                    f"shape {tuple(input_ids.shape)}")
    if num_tokens is None or input_ids.numel() == 0 or input_ids.device.type != "cpu" or is_compiling():
        return
    low, high = (int(v) for v in torch.aminmax(input_ids))
    if low < 0 or high >= num_tokens:
        bad = high if high >= num_tokens else low
        raise BackboneContractError(
            f"token id {bad} is outside the vocabulary of {describe_backbone(module, role)}: {num_tokens} tokens "
            f"(ids 0..{num_tokens - 1}); the tokenizer and the backbone's num_tokens disagree")
