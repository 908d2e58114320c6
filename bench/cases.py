"""The cases the benchmarks time: which models (electra-kit's and its peers') are built at which shape.

A case is named ``family/backbone[+option]``:

- ``kit/<backbone>``: electra-kit's ``Electra`` over two registry backbones (vocabulary logits only
  at the ``K = ceil(0.15 n)`` masked slots).
- ``orig/<backbone>``: the original ``electra-pytorch`` 0.1.2 ``Electra`` wrapped around the *same*
  modules (electra-kit's ``GeneratorHead`` at every position, ``DiscriminatorHead`` as (b, n, 1)).
- ``hf``: Hugging Face ``ElectraForMaskedLM`` + ``ElectraForPreTraining`` (same sizes, embeddings
  shared, LM head tied, dropout 0, SDPA attention) under that same wrapper.

Options (several may follow one another, e.g. ``kit/transformer+compile+nomask``): ``+compile``
(torch.compile), ``+bf16`` (autocast), ``+fullvocab`` (kit only: the generator head at every position, an
ablation), ``+eager`` (hf only: attention written out in PyTorch ops, the (b, h, n, n) scores
materialised, instead of SDPA's fused kernel), ``+backbones`` (kit only: the two encoders alone, a
diagnostic of what the objective adds), ``+nomask`` (kit only: the backbones get no attention mask, where
``Electra`` passes its all-true one on CUDA and under torch.compile: what that mask costs, e.g. SDPA off
its flash kernel; the losses still use the mask, and on packed batches the step computes the same).

One step of every case: ``zero_grad`` -> forward (the objective's total loss) -> ``backward`` ->
``AdamW.step`` (fused where torch has it), on packed random ids (``[CLS] ... [SEP]``, no padding).
How the steps are timed and measured is bench/measure.py's business.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
from dataclasses import dataclass

import torch
from torch import nn

PAD, UNK, MASK, CLS, SEP = 0, 1, 2, 3, 4
BACKBONES = ("transformer", "reformer", "performer")
ORIG_PIP = "pip install --no-deps electra-pytorch==0.1.2"
HF_PIP = "pip install -c constraints/cpu.txt -e '.[bench]'"


@dataclass(frozen=True)
class Shape:
    vocab: int
    emb: int
    d_dim: int  # discriminator: hidden, layers, heads, FFN
    d_depth: int
    d_heads: int
    d_ff: int
    g_dim: int  # generator: hidden, layers, heads, FFN
    g_depth: int
    g_heads: int
    g_ff: int
    seq: int


SHAPES = {
    # ELECTRA paper (Clark et al. 2020), Table 6; generator 1/4 (Small) and 1/3 (Base) of the width
    "small": Shape(30522, 128, 256, 12, 4, 1024, 64, 12, 1, 256, 128),
    "base": Shape(30522, 768, 768, 12, 12, 3072, 256, 12, 4, 1024, 512),
    "tiny": Shape(1000, 32, 64, 2, 2, 256, 32, 1, 1, 128, 64),
}


def flops_per_token(s: Shape) -> float:
    """Training FLOPs per token of the nominal model; see the module docstring."""
    k_frac = math.ceil(0.15 * s.seq) / s.seq

    def encoder(d, depth, ff):
        proj = s.emb * d if s.emb != d else 0
        return depth * (4 * d * d + 2 * d * ff) + proj

    dense = 6 * (encoder(s.g_dim, s.g_depth, s.g_ff) + encoder(s.d_dim, s.d_depth, s.d_ff))
    attention = 12 * s.seq * (s.g_depth * s.g_dim + s.d_depth * s.d_dim)
    heads = 6 * k_frac * (s.g_dim * s.emb + s.emb * s.vocab) + 6 * (s.d_dim * s.d_dim + s.d_dim)
    return dense + attention + heads


# ------------------------------------------------------------------------------------ models


def _backbone(name: str, s: Shape, role: str, options: dict | None = None):
    from electra_kit import create_backbone

    if role == "generator":
        dim, depth, heads, ff = s.g_dim, s.g_depth, s.g_heads, s.g_ff
    else:
        dim, depth, heads, ff = s.d_dim, s.d_depth, s.d_heads, s.d_ff
    return create_backbone(name, num_tokens=s.vocab, dim=dim, depth=depth, heads=heads, max_seq_len=s.seq,
                           emb_dim=s.emb, ff_mult=ff // dim, **(options or {}))


def build_kit(backbone: str, s: Shape, options: dict | None = None):
    """electra-kit's Electra; ``options``: extra keywords for both backbones (e.g. ``bucket_size``)."""
    from electra_kit import Electra

    return Electra(_backbone(backbone, s, "generator", options), _backbone(backbone, s, "discriminator", options),
                   mask_token_id=MASK, pad_token_id=PAD, mask_ignore_token_ids=(CLS, SEP))


class FullVocabGenerator(nn.Module):
    """Backbone + electra-kit's GeneratorHead at every position: (b, n) -> (b, n, V)."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, ids):
        return self.head(self.backbone(ids))  # (b, n, V)


class DiscriminatorWithHead(nn.Module):
    """Backbone + electra-kit's DiscriminatorHead: (b, n) -> (b, n, 1)."""

    def __init__(self, backbone, head):
        super().__init__()
        self.backbone, self.head = backbone, head

    def forward(self, ids):
        return self.head(self.backbone(ids))[..., None]  # (b, n, 1)


class LogitsOf(nn.Module):
    """A Hugging Face model that returns its ``.logits`` tensor, as the original wrapper wants."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, ids):
        return self.model(input_ids=ids).logits  # (b, n, V) or (b, n)


def build_orig(backbone: str, s: Shape, options: dict | None = None):
    from electra_pytorch import Electra as OrigElectra

    kit = build_kit(backbone, s, options)  # the same modules, embeddings tied exactly as electra-kit ties them
    gen = FullVocabGenerator(kit.generator, kit.generator_head)
    disc = DiscriminatorWithHead(kit.discriminator, kit.discriminator_head)
    return OrigElectra(gen, disc, mask_token_id=MASK, pad_token_id=PAD, mask_ignore_token_ids=[CLS, SEP])


def build_hf(s: Shape, attention: str = "sdpa"):
    from electra_pytorch import Electra as OrigElectra
    from transformers import ElectraConfig, ElectraForMaskedLM, ElectraForPreTraining

    def config(dim, depth, heads, ff):
        return ElectraConfig(vocab_size=s.vocab, embedding_size=s.emb, hidden_size=dim, num_hidden_layers=depth,
                             num_attention_heads=heads, intermediate_size=ff, max_position_embeddings=max(512, s.seq),
                             hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, attn_implementation=attention)

    gen = ElectraForMaskedLM(config(s.g_dim, s.g_depth, s.g_heads, s.g_ff))
    disc = ElectraForPreTraining(config(s.d_dim, s.d_depth, s.d_heads, s.d_ff))
    gen.electra.embeddings = disc.electra.embeddings  # token, position, type embeddings and their LayerNorm
    gen.generator_lm_head.weight = disc.electra.embeddings.word_embeddings.weight  # the tied LM head
    return OrigElectra(LogitsOf(gen), LogitsOf(disc), mask_token_id=MASK, pad_token_id=PAD,
                       mask_ignore_token_ids=[CLS, SEP])


def case_names(args) -> list[str]:
    names = []
    for b in args.backbones:
        names.append(f"kit/{b}")
        if args.compile:
            names.append(f"kit/{b}+compile")
        if "orig" in args.peers:
            names.append(f"orig/{b}")
    if "hf" in args.peers:
        names.append("hf")
    for extra in args.extra:
        names.append(extra)
    return names


def missing_peers(peers) -> list[str]:
    missing = []
    if peers and importlib.util.find_spec("electra_pytorch") is None:
        missing.append(f"electra-pytorch (both peers run under its wrapper; {ORIG_PIP})")
    if "hf" in peers and importlib.util.find_spec("transformers") is None:
        missing.append(f"transformers (the Hugging Face pair; {HF_PIP})")
    return missing


class Case:
    """One model + optimizer + a step function. ``options``: extra backbone keywords per backbone name."""

    def __init__(self, name: str, s: Shape, device: torch.device, amp: str, options: dict | None = None):
        self.name, self.shape, self.device = name, s, device
        torch.manual_seed(0)
        base, *flags = name.split("+")
        family, _, backbone = base.partition("/")
        self.backbone = backbone or "hf"
        self.family = family
        kwargs = (options or {}).get(backbone)
        if family == "kit":
            model = build_kit(backbone, s, kwargs)
            self._loss = lambda m, ids: m(ids, ids != PAD, return_output=True).loss
        elif family == "orig":
            model = build_orig(backbone, s, kwargs)
            self._loss = lambda m, ids: m(ids).loss
        elif family == "hf":
            model = build_hf(s, attention="eager" if "eager" in flags else "sdpa")
            self._loss = lambda m, ids: m(ids).loss
        else:
            raise SystemExit(f"unknown case {name!r}; cases look like kit/transformer, orig/reformer, hf")
        for option in flags:
            if option not in OPTIONS:
                raise SystemExit(f"unknown option +{option} in {name!r}; options: {', '.join('+' + o for o in OPTIONS)}")
        if "fullvocab" in flags:
            if family != "kit":
                raise SystemExit("+fullvocab is an ablation of electra-kit's objective: kit/<backbone>+fullvocab")
            model.pair = full_vocab_pair()
        if "eager" in flags and family != "hf":
            raise SystemExit("+eager is Hugging Face's attention without SDPA: hf+eager")
        if "backbones" in flags:
            if family != "kit":
                raise SystemExit("+backbones is a diagnostic of electra-kit's objective: kit/<backbone>+backbones")
            self._loss = _backbones_only_loss
        if "nomask" in flags:
            if family != "kit":
                raise SystemExit("+nomask is an ablation of electra-kit's objective: kit/<backbone>+nomask")
            model._backbone_mask = _no_backbone_mask
        self.model = model.to(device).train()
        params = list({id(p): p for p in model.parameters() if p.requires_grad}.values())
        self.n_params = sum(p.numel() for p in params)
        self.optimizer = make_optimizer(params, device)
        self.forward_model = torch.compile(self.model) if "compile" in flags else self.model
        self.amp = "bf16" if "bf16" in flags else amp

    def step(self, ids: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        amp = torch.autocast(self.device.type, dtype=torch.bfloat16) if self.amp == "bf16" else contextlib.nullcontext()
        with amp:  # backward too, as electra-kit's Trainer does: Reformer's reversible layers recompute in it
            loss = self._loss(self.forward_model, ids)
            loss.backward()
        self.optimizer.step()


OPTIONS = ("compile", "bf16", "fullvocab", "eager", "backbones", "nomask")


def _backbones_only_loss(model, ids: torch.Tensor) -> torch.Tensor:
    """Diagnostic: the two encoders alone on the step's ids (no masking, heads, sampling or losses);
    against ``kit/<backbone>`` it shows what electra-kit's objective adds to a step."""
    return model.generator(ids).mean() + model.discriminator(ids).mean()


def _no_backbone_mask(attention_mask: torch.Tensor) -> None:
    """Ablation of ``Electra._backbone_mask``: the backbones never get the mask (right only without padding)."""
    return None


def full_vocab_pair():
    """Ablation of electra-kit's Electra: the generator head at every position, then the K slots."""
    from electra_kit.objectives.electra import BackbonePair

    class FullVocabPair(BackbonePair):
        @staticmethod
        def generator_logits(m, masked, attention_mask, kwargs):
            hidden = m.generator(masked.corrupted, attention_mask=attention_mask)  # (b, n, d_g)
            logits = m.generator_head(hidden)  # (b, n, V)
            index = masked.positions[..., None].expand(-1, -1, logits.shape[-1])  # (b, K, V)
            return logits.gather(1, index)

    return FullVocabPair


def make_optimizer(params, device: torch.device) -> torch.optim.Optimizer:
    """The same AdamW for every case: fused where torch has it (CUDA; CPU since torch 2.4)."""
    try:
        return torch.optim.AdamW(params, lr=1e-4, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, lr=1e-4)


def make_batches(s: Shape, batch: int, device: torch.device, count: int = 4) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(count):
        ids = torch.randint(5, s.vocab, (batch, s.seq), generator=g)  # (b, n) packed: no padding
        ids[:, 0], ids[:, -1] = CLS, SEP
        out.append(ids.to(device))
    return out
