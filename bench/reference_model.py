"""The two sides of bench/reference_electra.py and the metric code they share.

The reference is ELECTRA as Google's code (github.com/google-research/electra, ``run_pretraining.py``
and ``pretrain/pretrain_helpers.py``) builds it, on Hugging Face's port of the networks:

- generator ``ElectraForMaskedLM`` and discriminator ``ElectraForPreTraining``, each from its own
  ``ElectraConfig``; the generator's whole ``electra.embeddings`` block (token, position and
  token-type tables and their LayerNorm) is the discriminator's too, each model keeping its own
  ``embeddings_project``; the generator's output layer is tied to the token table;
- every weight matrix drawn from a truncated normal N(0, 0.02) cut at 2 std, biases 0, LayerNorm (1, 0);
- masking: ``max(1, round(0.15 * n))`` of the n non-special real tokens of each sequence, chosen
  uniformly; 85% of them become [MASK], the rest keep their token (no random tokens);
- the generator's vocabulary logits only at masked positions (``gather_positions``); the
  discriminator sees a sample from softmax(logits) at each (no gradient through the sample);
  labels = sampled != original; loss = MLM cross-entropy + 50 * BCE over real tokens.

Its masking and sampling are written here independently of electra_kit/objectives/masking.py, so that a
fault there shows up as a difference between the curves.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

METRICS = ["gen_loss", "gen_acc", "disc_loss", "disc_auc", "disc_precision", "disc_recall", "disc_acc",
           "replaced_fraction"]


# ------------------------------------------------------------------------------ the reference
def google_init(module: nn.Module, std: float = 0.02) -> None:
    """ELECTRA's initializer: truncated normal for every matrix, zero biases, LayerNorm at (1, 0)."""
    with torch.no_grad():
        for sub in module.modules():
            if isinstance(sub, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(sub.weight, 0.0, std, -2 * std, 2 * std)
                if getattr(sub, "bias", None) is not None:
                    sub.bias.zero_()
            elif isinstance(sub, nn.LayerNorm):
                nn.init.ones_(sub.weight)
                nn.init.zeros_(sub.bias)
        lm_bias = getattr(module, "generator_lm_head", None)
        if lm_bias is not None:
            lm_bias.bias.zero_()


def freeze_x_transformers_biases(encoder: nn.Module) -> int:
    """Zero and freeze the biases x-transformers' encoder does not have; returns how many tensors.

    x-transformers builds q/k/v and the attention output projection without biases, and its
    LayerNorms have a gain only; it has no token-type table (in HF, one more learned vector added to
    every embedding). Freezing those at zero in HF's encoder (heads untouched) measures how much of
    the kit-vs-reference gap is that design choice.
    """
    token_types = getattr(getattr(encoder, "embeddings", None), "token_type_embeddings", None)
    frozen = [] if token_types is None else [token_types.weight]
    for name, sub in encoder.named_modules():
        attention = ".attention." in f".{name}." and isinstance(sub, nn.Linear)
        if (attention or isinstance(sub, nn.LayerNorm)) and getattr(sub, "bias", None) is not None:
            frozen.append(sub.bias)
    with torch.no_grad():
        for bias in frozen:
            bias.zero_()
            bias.requires_grad_(False)
    return len(frozen)


class ReferenceElectra(nn.Module):
    def __init__(self, generator, discriminator, *, mask_id: int, special_ids, mask_prob=0.15, replace_prob=0.85,
                 disc_weight=50.0, temperature=1.0):
        super().__init__()
        self.generator, self.discriminator = generator, discriminator
        self.mask_id, self.mask_prob, self.replace_prob = mask_id, mask_prob, replace_prob
        self.disc_weight, self.temperature = disc_weight, temperature
        self.register_buffer("special_ids", torch.tensor(sorted(special_ids)), persistent=False)

    def mask(self, input_ids, attention_mask, noise: torch.Generator):
        """(masked (b, n) bool, corrupted (b, n)): Google's ``pretrain_helpers.mask`` without random tokens."""
        candidates = attention_mask & ~torch.isin(input_ids, self.special_ids)  # (b, n)
        n_cand = candidates.sum(dim=1)  # (b,)
        k = torch.minimum(torch.round(self.mask_prob * n_cand).clamp(min=1), n_cand)  # (b,)
        scores = torch.rand(input_ids.shape, generator=noise).masked_fill(~candidates, 2.0)  # non-candidates last
        rank = scores.argsort(dim=1).argsort(dim=1)  # (b, n): each position's place in a random order
        masked = rank < k[:, None]
        to_mask = masked & (torch.rand(input_ids.shape, generator=noise) < self.replace_prob)
        return masked, torch.where(to_mask, torch.full_like(input_ids, self.mask_id), input_ids)

    def compute(self, input_ids, attention_mask, noise: torch.Generator) -> dict:
        attention_mask = attention_mask.bool()
        masked, corrupted = self.mask(input_ids, attention_mask, noise)
        gen = self.generator
        hidden = gen.electra(corrupted, attention_mask=attention_mask.long()).last_hidden_state  # (b, n, d_g)
        logits = gen.generator_lm_head(gen.generator_predictions(hidden[masked]))  # (M, V)
        labels = input_ids[masked]  # (M,)
        token_nll = F.cross_entropy(logits.float(), labels, reduction="none")  # (M,)
        with torch.no_grad():
            probs = torch.softmax(logits.float() / self.temperature, dim=-1)
            sampled = torch.multinomial(probs, 1, generator=noise).squeeze(-1)  # (M,)
            disc_input = input_ids.masked_scatter(masked, sampled)  # (b, n)
            disc_labels = ((disc_input != input_ids) & attention_mask).float()
        disc_logits = self.discriminator(disc_input, attention_mask=attention_mask.long()).logits  # (b, n)
        real = attention_mask
        bce = F.binary_cross_entropy_with_logits(disc_logits.float(), disc_labels, reduction="none")
        loss = token_nll.mean() + self.disc_weight * bce[real].mean()
        return {"loss": loss, "nll_sum": token_nll.detach().sum(), "n_masked": labels.numel(),
                "correct": (logits.argmax(-1) == labels).sum(), "logits": disc_logits.detach()[real],
                "labels": disc_labels[real]}


def own_embedding_norm(generator, discriminator) -> None:
    """Give the discriminator its own embedding LayerNorm, tables still shared: the kit's layout.

    Google's ELECTRA shares the whole embedding block (tables and LayerNorm); the kit's backbones
    share the token and position tables, and each keeps the LayerNorm of its own encoder.
    """
    shared = generator.electra.embeddings
    own = copy.copy(shared)  # a shallow copy: the same tables ...
    own._modules = dict(shared._modules)
    own.LayerNorm = copy.deepcopy(shared.LayerNorm)  # ... and a LayerNorm of its own
    discriminator.electra.embeddings = own


def build_reference(kit_model, data, cfg, *, dropout: float, bias_free: bool = False,
                    own_emb_norm: bool = False) -> ReferenceElectra:
    """The reference at the kit model's shapes and the kit's objective settings."""
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    gen_bb, disc_bb = kit_model.generator, kit_model.discriminator

    def config(backbone) -> ElectraConfig:
        kw = backbone.backbone_kwargs  # what the registry built the kit's backbone with
        if backbone.backbone_name != "transformer":
            raise SystemExit(f"reference_electra: the kit side must use the 'transformer' backbone, "
                             f"not {backbone.backbone_name!r}")
        return ElectraConfig(
            vocab_size=backbone.num_tokens, embedding_size=backbone.emb_dim, hidden_size=backbone.hidden_dim,
            num_hidden_layers=kw["depth"], num_attention_heads=kw["heads"],
            intermediate_size=kw.get("ff_mult", 4) * backbone.hidden_dim, max_position_embeddings=data.max_seq_len,
            hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout, pad_token_id=data.special.pad_id,
            hidden_act="gelu", attn_implementation="sdpa",
        )

    torch.manual_seed(cfg.seed)
    generator, discriminator = ElectraForMaskedLM(config(gen_bb)), ElectraForPreTraining(config(disc_bb))
    google_init(generator)
    google_init(discriminator)
    discriminator.electra.embeddings = generator.electra.embeddings  # shared embeddings, own projections
    if own_emb_norm:
        own_embedding_norm(generator, discriminator)
    if bias_free:
        freeze_x_transformers_biases(generator.electra)
        freeze_x_transformers_biases(discriminator.electra)
    assert generator.generator_lm_head.weight is generator.electra.embeddings.word_embeddings.weight
    return ReferenceElectra(
        generator, discriminator, mask_id=data.special.mask_id,
        special_ids=(data.special.cls_id, data.special.sep_id, data.special.pad_id),
        mask_prob=kit_model.mask_prob, replace_prob=kit_model.replace_prob, disc_weight=kit_model.disc_weight,
        temperature=kit_model.temperature,
    )


# ------------------------------------------------------------------------------ both sides
def make_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW, no decay on 1-d parameters: for HF's ELECTRA exactly Google's rule (biases, LayerNorm)."""
    params = [p for p in model.parameters() if p.requires_grad]  # shared parameters once
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.adam_betas), eps=cfg.adam_eps)


def make_schedule(optimizer, cfg) -> torch.optim.lr_scheduler.LambdaLR:
    """The kit's: linear warmup over ``cfg.effective_warmup`` steps, then linear decay to zero."""
    warmup, total = cfg.effective_warmup, cfg.steps
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: (s + 1) / warmup if s < warmup else max(0.0, (total - s) / max(1, total - warmup)))


class _Side:
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler

    def __init__(self, model: nn.Module):
        self.model = model

    def compute(self, batch: dict, noise: torch.Generator) -> dict:
        raise NotImplementedError

    def train_step(self, batch: dict, noise: torch.Generator, max_grad_norm: float) -> float:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        out = self.compute(batch, noise)
        out["loss"].backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_grad_norm)
        self.optimizer.step()
        self.schedule.step()
        return float(out["loss"].detach())

    def eval_step(self, batch: dict, noise: torch.Generator) -> dict:
        return self.compute(batch, noise)


class ReferenceSide(_Side):
    def compute(self, batch, noise):
        return self.model.compute(batch["input_ids"], batch["attention_mask"], noise)


class KitSide(_Side):
    """electra_kit's Electra, its masking and sampling drawing from ``noise`` as under the Trainer."""

    def compute(self, batch, noise):
        from electra_kit.objectives.masking import Noise

        out = self.model.compute(batch["input_ids"], batch["attention_mask"], noise=Noise(noise))
        (_, nll_sum, n_masked), real = out.loss_terms[0], out.attention_mask
        return {"loss": out.loss, "nll_sum": nll_sum.detach(), "n_masked": float(n_masked),
                "correct": out.gen_acc * n_masked, "logits": out.disc_logits.detach()[real],
                "labels": out.disc_labels[real]}


# ------------------------------------------------------------------------------ metrics
@dataclass
class EvalParts:
    nll_sum: float = 0.0
    correct: float = 0.0
    n_masked: float = 0.0
    logits: list = field(default_factory=list)
    labels: list = field(default_factory=list)

    def add(self, out: dict) -> None:
        self.nll_sum += float(out["nll_sum"])
        self.correct += float(out["correct"])
        self.n_masked += float(out["n_masked"])
        self.logits.append(out["logits"].float().flatten())
        self.labels.append(out["labels"].float().flatten())


def eval_metrics(parts: EvalParts) -> dict:
    """One metric code for both sides, over every real token of the held-out batches."""
    from sklearn.metrics import precision_score, recall_score, roc_auc_score

    logits, labels = torch.cat(parts.logits), torch.cat(parts.labels)
    y, pred = labels.numpy().astype(int), (logits > 0).numpy().astype(int)
    both_classes = 0 < y.sum() < len(y)
    return {
        "gen_loss": parts.nll_sum / max(parts.n_masked, 1.0),
        "gen_acc": parts.correct / max(parts.n_masked, 1.0),
        "disc_loss": float(F.binary_cross_entropy_with_logits(logits, labels)),
        "disc_auc": float(roc_auc_score(y, logits.numpy())) if both_classes else float("nan"),
        "disc_precision": float(precision_score(y, pred, zero_division=0)),
        "disc_recall": float(recall_score(y, pred, zero_division=0)),
        "disc_acc": float((pred == y).mean()),
        "replaced_fraction": float(y.mean()),
    }
