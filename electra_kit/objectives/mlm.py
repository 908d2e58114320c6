"""BERT-style masked language modelling on one backbone: the baseline ELECTRA is measured against.

Selected in gin with ``pretrain.objective = @MaskedLM`` (see gin/mlm_small.gin). Shares the
masking code and the tied LM head with ELECTRA's generator, so the two differ only in the
objective.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

import gin

from ..backbone import Backbone
from .base import Objective
from .contracts import check_hidden, check_input_ids
from .heads import GeneratorHead, init_embeddings, init_weights
from .masking import check_token_ids, mask_tokens
from .metrics import MeanAccumulator
from .noise import GLOBAL_RNG, Noise


@dataclass
class MLMOutput:
    loss: torch.Tensor
    mlm_loss: torch.Tensor
    gen_acc: torch.Tensor
    loss_terms: list = field(default_factory=list)  # (weight, sum, count), as in ElectraOutput

    def metrics(self) -> dict[str, torch.Tensor]:
        return {"loss": self.loss.detach(), "gen_loss": self.mlm_loss.detach(), "gen_acc": self.gen_acc}


@gin.configurable
class MaskedLM(Objective):
    def __init__(
        self,
        encoder: Backbone,
        *,
        mask_prob: float = 0.15,
        replace_prob: float = 0.8,
        random_token_prob: float = 0.1,
        mask_token_id: int = 2,
        pad_token_id: int = 0,
        mask_ignore_token_ids=(),
        embedding_init_std: float | None = 0.02,
        weight_init: str = "library",
    ):
        super().__init__()
        if not isinstance(encoder, Backbone):
            raise TypeError(f"MaskedLM needs a registry Backbone, got {type(encoder).__name__}")
        check_token_ids(encoder.num_tokens, mask_token_id=mask_token_id, pad_token_id=pad_token_id,
                        mask_ignore_token_ids=tuple(mask_ignore_token_ids))
        if weight_init not in ("electra", "library"):
            raise ValueError(f"weight_init={weight_init!r}; choose 'electra' or 'library'")
        if weight_init == "electra":  # the same choices as Electra's, so the baseline is like for like
            init_weights(encoder, embedding_init_std or 0.02)
        elif embedding_init_std is not None:
            init_embeddings(encoder, embedding_init_std)
        self.encoder, self.weight_init = encoder, weight_init
        self.head = GeneratorHead(encoder)
        if weight_init == "electra":
            init_weights(self.head, embedding_init_std or 0.02)
        self.mask_prob, self.replace_prob, self.random_token_prob = mask_prob, replace_prob, random_token_prob
        self.mask_token_id, self.pad_token_id = mask_token_id, pad_token_id
        ignore = sorted({*mask_ignore_token_ids, pad_token_id})
        self.register_buffer("ignore_ids", torch.tensor(ignore, dtype=torch.long), persistent=False)
        every = torch.arange(encoder.num_tokens)
        pool = every[~torch.isin(every, torch.tensor([*ignore, mask_token_id]))]
        self.register_buffer("random_token_pool", pool, persistent=False)

    def folder_parts(self) -> dict[str, nn.Module]:
        return {"encoder_head": self.head}

    def compute(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, noise: Noise | None = None
    ) -> MLMOutput:
        check_input_ids(input_ids, self.encoder.num_tokens, self.encoder, "encoder")
        if attention_mask is None:
            attention_mask = input_ids != self.pad_token_id
        masked = mask_tokens(
            input_ids,
            attention_mask.bool(),
            ignore_ids=self.ignore_ids,
            mask_prob=self.mask_prob,
            mask_token_id=self.mask_token_id,
            replace_prob=self.replace_prob,
            random_token_prob=self.random_token_prob,
            random_token_pool=self.random_token_pool,
            noise=noise or GLOBAL_RNG,
        )
        hidden = self.encoder(masked.corrupted, attention_mask=attention_mask.bool())  # (b, n, d)
        check_hidden(hidden, masked.corrupted, self.encoder, "encoder")
        index = masked.positions[..., None].expand(-1, -1, hidden.shape[-1])  # (b, K, d)
        logits = self.head(hidden.gather(1, index))  # (b, K, V)
        valid = masked.valid.float()
        n_masked = valid.sum().clamp(min=1.0)
        token_loss = F.cross_entropy(logits.float().transpose(1, 2), masked.labels, reduction="none")  # (b, K)
        total = (token_loss * valid).sum()
        loss = total / n_masked
        with torch.no_grad():
            acc = ((logits.argmax(-1) == masked.labels).float() * valid).sum() / n_masked
        return MLMOutput(loss, loss, acc, [(1.0, total, n_masked)])

    def forward(self, input_ids, attention_mask=None, *, return_output: bool = False, noise: Noise | None = None):
        out = self.compute(input_ids, attention_mask, noise=noise)
        return out if return_output else out.loss

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        acc = MeanAccumulator()
        for batch in batches:
            out = self(batch["input_ids"], batch["attention_mask"], return_output=True)  # forward: FSDP hooks run
            acc.add(out.metrics(), float(len(batch["input_ids"])))
        return acc.result()
