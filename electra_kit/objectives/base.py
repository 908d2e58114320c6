"""The Objective interface: all that the runner, the trainer and the model folder know of an objective.

An objective is an ``nn.Module`` over registry backbones. It says

- what it builds from the data's special tokens (:meth:`Objective.special_token_kwargs`);
- its loss terms and metrics: ``forward(input_ids, attention_mask, return_output=True, noise=...)``
  returns an output with ``loss`` (a scalar to differentiate), ``loss_terms`` (``(weight, sum,
  count)`` of each token-mean part, so that ``loss == sum(w * s / c)``: a data-parallel trainer
  divides by the counts summed over ranks) and ``metrics()`` (detached 0-d tensors, no host sync);
- its evaluation (:meth:`evaluate`: means over batches, plus whatever needs all of them, e.g. AUC);
- the backbones it trains, by role (:meth:`backbones`), the one people keep (:attr:`encoder`), and
  what else the model folder keeps (:meth:`folder_parts`, :meth:`folder_config`);
- what it reports as parameters (:meth:`report_params`).

Objectives are found by name in the registry (entry-point group ``electra_kit.objectives``), or
given as a gin reference: ``pretrain.objective = @MaskedLM`` or ``pretrain.objective = 'mlm'``.
"""

from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

import gin

from ..backbone import Backbone
from .noise import Noise


class Objective(nn.Module):
    """Base class of the pretraining objectives (``Electra``, ``MaskedLM``, plugins)."""

    @classmethod
    def special_token_kwargs(cls, special_ids: dict[str, int]) -> dict:
        """Constructor arguments from the data's special token ids (``pad``, ``unk``, ``mask``, ``cls``,
        ``sep``). The default suits masking objectives: mask with [MASK], never mask [CLS]/[SEP]/pad."""
        return dict(mask_token_id=special_ids["mask"], pad_token_id=special_ids["pad"],
                    mask_ignore_token_ids=(special_ids["cls"], special_ids["sep"]))

    encoder: Backbone  # the backbone people keep after pretraining (an attribute or a property)

    def backbones(self) -> dict[str, Backbone]:
        """Every backbone the objective trains, by role; each must fit the data's vocabulary and length."""
        return {"encoder": self.encoder}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *,
                return_output: bool = False, noise: Noise | None = None):
        raise NotImplementedError

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict]) -> dict[str, float]:
        raise NotImplementedError

    def folder_parts(self) -> dict[str, nn.Module]:
        """What the model folder keeps besides the encoder: ``{file stem: module}`` (saved as safetensors)."""
        return {}

    def folder_config(self) -> dict:
        """JSON-able settings the model folder's config.json records besides the backbones."""
        return {}

    def report_params(self) -> dict:
        """Parameters to record with a run: each role's backbone name and size."""
        params = {}
        for role, backbone in {"encoder": self.encoder, **self.backbones()}.items():
            params[f"{role}.backbone"] = getattr(backbone, "backbone_name", type(backbone).__name__)
            params[f"{role}.params"] = sum(p.numel() for p in backbone.parameters())
        return params


@gin.configurable
def pretrain(*, objective="electra"):
    """The gin-configurable choice of objective: a registered name or a class (``@Electra``)."""
    return objective


def resolve_objective(choice) -> type[Objective]:
    """The ``Objective`` class named by ``pretrain.objective``; a clear error for anything else."""
    if isinstance(choice, str):
        from ..registry import get_objective

        choice = get_objective(choice)
    if not (isinstance(choice, type) and issubclass(choice, Objective)):
        raise TypeError(f"pretrain.objective = {choice!r} is not an electra_kit Objective subclass "
                        "(see electra_kit.objectives.base)")
    return choice
