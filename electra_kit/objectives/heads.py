"""Heads and embedding-sharing pieces that live with the objective, not the backbone."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..backbone import Backbone


def init_embeddings(backbone: Backbone, std: float = 0.02) -> None:
    """ELECTRA's initialisation of the token and positional embeddings: N(0, 0.02).

    The libraries' own defaults (N(0, 1) in reformer and performer) make the tied LM head start
    with logits of standard deviation ~sqrt(emb_dim): a generator loss of 40 instead of ln(V).
    """
    modules = [backbone.get_token_embedding(), backbone.get_position_embedding()]
    with torch.no_grad():
        for module in modules:
            if module is None:
                continue
            for param in module.parameters():
                if param.ndim >= 2:
                    param.normal_(0.0, std)


def init_weights(module: nn.Module, std: float = 0.02) -> None:
    """Google ELECTRA's (and BERT's) initialisation of every weight: truncated normal N(0, std)
    cut at 2 std for each matrix (linear, embedding), zero biases, LayerNorm at (1, 0).

    The libraries' defaults (Kaiming-uniform linears, N(0, 1) embeddings) give a far larger spread
    at ELECTRA's widths; bench/recipe_factors.py measures what each choice does to learning.
    """
    with torch.no_grad():
        for name, param in module.named_parameters():
            if param.ndim >= 2:
                nn.init.trunc_normal_(param, 0.0, std, -2 * std, 2 * std)
            elif name.endswith("bias"):
                param.zero_()
        for sub in module.modules():
            if isinstance(sub, nn.LayerNorm) and sub.elementwise_affine:
                nn.init.ones_(sub.weight)
                if sub.bias is not None:
                    nn.init.zeros_(sub.bias)


class GeneratorHead(nn.Module):
    """ELECTRA's generator head: dense -> GELU -> LayerNorm -> logits tied to the token embedding.

    Applied only to the hidden states of masked positions: for small models the vocabulary
    projection over every position costs more than the encoder itself.
    """

    def __init__(self, backbone: Backbone):
        super().__init__()
        self.dense = nn.Linear(backbone.hidden_dim, backbone.emb_dim)
        # a backbone may name its LayerNorm epsilon (Google's ELECTRA: 1e-12) so exports match exactly
        self.norm = nn.LayerNorm(backbone.emb_dim, eps=getattr(backbone, "layer_norm_eps", 1e-5))
        self.bias = nn.Parameter(torch.zeros(backbone.num_tokens))
        # a plain attribute, not a submodule: the embedding already belongs to the backbone
        self._backbone = [backbone]

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        x = self.norm(F.gelu(self.dense(hidden)))  # (b, k, e)
        weight = self._backbone[0].get_token_embedding().weight  # (V, e), read each call: sharing may swap it
        return F.linear(x, weight, self.bias)  # (b, k, V)


class DiscriminatorHead(nn.Module):
    """ELECTRA's discriminator head: dense -> GELU -> dense(1), one logit per token."""

    def __init__(self, hidden_dim: int):
        super().__init__()
        self.dense = nn.Linear(hidden_dim, hidden_dim)
        self.out = nn.Linear(hidden_dim, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.out(F.gelu(self.dense(hidden))).squeeze(-1)  # (b, n)


class GDESEmbedding(nn.Module):
    """DeBERTa-v3 gradient-disentangled embedding sharing (He et al. 2021, arXiv 2111.09543).

    The discriminator sees ``stop_gradient(E_generator) + delta``, ``delta`` starting at zero, so
    the discriminator loss never pulls on the generator's embedding.
    """

    def __init__(self, source: nn.Module):
        super().__init__()
        self.source = source
        self.delta = nn.Parameter(torch.zeros_like(source.weight))

    @property
    def weight(self) -> torch.Tensor:
        return self.source.weight.detach() + self.delta  # (V, e)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(input_ids, self.weight)  # (b, n, e)


class HiddenLayerExtractor(nn.Module):
    """Runs ``net`` and returns the output of one of its layers (by module name or child index).

    Kept for the seed wrapper's ``discr_layer``: lets a raw language model serve as discriminator
    without a hand-written head.
    """

    def __init__(self, net: nn.Module, layer: str | int = -2):
        super().__init__()
        self.net = net
        self.layer = layer
        self._hidden = None
        self._handle = None

    def _find_layer(self) -> nn.Module:
        if isinstance(self.layer, str):
            found = dict(self.net.named_modules()).get(self.layer)
        else:
            children = list(self.net.children())
            found = children[self.layer] if -len(children) <= self.layer < len(children) else None
        if found is None:
            names = [n for n, _ in self.net.named_children()]
            raise ValueError(f"discr_layer={self.layer!r} not found in {type(self.net).__name__}; children: {names}")
        return found

    def _hook(self, _module, _inputs, output):
        self._hidden = output

    def forward(self, x: torch.Tensor, **kwargs) -> torch.Tensor:
        if self.layer == -1:
            return self.net(x, **kwargs)
        if self._handle is None:
            self._handle = self._find_layer().register_forward_hook(self._hook)
        self.net(x, **kwargs)
        hidden, self._hidden = self._hidden, None
        if hidden is None:
            raise RuntimeError(f"discr_layer={self.layer!r} produced no output during the forward pass")
        return hidden
