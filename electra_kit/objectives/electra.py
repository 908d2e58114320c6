"""The ELECTRA objective (Clark et al. 2020, arXiv 2003.10555) over any two backbones.

``Electra`` keeps the constructor of the original electra-pytorch wrapper, so its README
examples run with only the import changed, and also takes registry ``Backbone``s directly;
then it adds the heads itself, shares embeddings (``tied``, ``gdes`` or ``none``) and computes
the generator's vocabulary logits only at masked positions.

``forward`` returns the total loss (a tensor: ``loss.backward()`` works) that also carries the
parts under the original's names (``loss.mlm_loss``, ``loss.disc_loss``, ``loss.gen_acc``, ...).
``compute`` returns the same as a plain ``ElectraOutput`` for training code.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F
from torch import nn

import gin

from ..backbone import Backbone
from .base import Objective
from .contracts import check_hidden, check_input_ids, check_output, is_compiling
from .heads import DiscriminatorHead, GDESEmbedding, GeneratorHead, HiddenLayerExtractor, init_embeddings, init_weights
from .masking import MaskedPositions, check_token_ids, mask_tokens, sample_categorical, slot_count
from .metrics import MeanAccumulator, roc_auc
from .noise import GLOBAL_RNG, Noise, draw_ahead

SHARING_MODES = ("tied", "gdes", "none")
# "electra": every weight from a truncated N(0, 0.02), as Google's ELECTRA; "library": each
# backbone library's own initialisation, with only the embeddings drawn from N(0, 0.02)
WEIGHT_INITS = ("electra", "library")


@dataclass
class ElectraOutput:
    loss: torch.Tensor
    mlm_loss: torch.Tensor
    disc_loss: torch.Tensor
    gen_acc: torch.Tensor
    disc_acc: torch.Tensor
    disc_precision: torch.Tensor
    disc_recall: torch.Tensor
    disc_labels: torch.Tensor  # (b, n) float, 1 = replaced
    disc_predictions: torch.Tensor  # (b, n) float, 1 = predicted replaced
    disc_logits: torch.Tensor  # (b, n)
    attention_mask: torch.Tensor  # (b, n) bool
    # (weight, sum, count) of each token-mean loss: loss == sum(w * s / c). A data-parallel
    # trainer divides by the counts summed over ranks, so N processes match one exactly.
    loss_terms: list = field(default_factory=list)

    def metrics(self) -> dict[str, torch.Tensor]:
        """Detached scalars for logging; no host-device sync happens here."""
        return {
            "loss": self.loss.detach(),
            "gen_loss": self.mlm_loss.detach(),
            "disc_loss": self.disc_loss.detach(),
            "gen_acc": self.gen_acc,
            "disc_acc": self.disc_acc,
            "disc_precision": self.disc_precision,
            "disc_recall": self.disc_recall,
        }


class ElectraLoss(torch.Tensor):
    """The total loss, carrying the other outputs as attributes (``loss.mlm_loss`` ...)."""

    # operations on it give plain tensors, so nothing downstream sees the subclass
    __torch_function__ = torch._C._disabled_torch_function_impl

    @property
    def loss(self) -> torch.Tensor:  # the original's namedtuple field, for ``results.loss.backward()``
        return self


def _ends_in_sigmoid(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and len(module) > 0 and isinstance(module[-1], nn.Sigmoid)


@gin.configurable
class Electra(Objective):
    """The generator masks-and-fills, the discriminator spots the replaced tokens; ``pair`` (``BackbonePair`` or
    ``RawPair``, chosen by the modules given) says how the two networks are built around and called."""

    def __init__(
        self,
        generator: nn.Module,
        discriminator: nn.Module,
        *,
        num_tokens: int | None = None,
        discr_dim: int = -1,
        discr_layer: str | int = -1,
        mask_prob: float = 0.15,
        replace_prob: float = 0.85,
        random_token_prob: float = 0.0,
        mask_token_id: int = 2,
        pad_token_id: int = 0,
        mask_ignore_token_ids=(),
        disc_weight: float = 50.0,
        gen_weight: float = 1.0,
        temperature: float = 1.0,
        embedding_sharing: str = "tied",
        share_position_embedding: bool = True,
        embedding_init_std: float | None = 0.02,
        weight_init: str = "library",
    ):
        super().__init__()
        self._check_probs(mask_prob, replace_prob, random_token_prob, temperature)
        self.pair = pair_for(generator, discriminator)
        self.generator = generator
        self.discriminator = discriminator
        self.mask_prob, self.replace_prob = mask_prob, replace_prob
        self.random_token_prob, self.temperature = random_token_prob, temperature
        self.mask_token_id, self.pad_token_id = mask_token_id, pad_token_id
        self.disc_weight, self.gen_weight = disc_weight, gen_weight
        self.embedding_sharing = embedding_sharing
        self.weight_init = weight_init  # recorded in the model folder: a random-init baseline repeats it

        if weight_init not in WEIGHT_INITS:
            raise ValueError(f"weight_init={weight_init!r}; choose one of {WEIGHT_INITS}")
        self.num_tokens = self.pair.setup(self, num_tokens=num_tokens, discr_dim=discr_dim, discr_layer=discr_layer,
                                          sharing=embedding_sharing, share_positions=share_position_embedding,
                                          init_std=embedding_init_std)
        check_token_ids(self.num_tokens, mask_token_id=mask_token_id, pad_token_id=pad_token_id,
                        mask_ignore_token_ids=tuple(mask_ignore_token_ids))
        self._register_token_pools(sorted({*mask_ignore_token_ids, pad_token_id}))

    def _register_token_pools(self, ignore: list[int]) -> None:
        """The ids masking never picks, and (``random_token_prob > 0``) the ids a random replacement draws from."""
        self.register_buffer("ignore_ids", torch.tensor(ignore, dtype=torch.long), persistent=False)
        pool = None
        if self.random_token_prob > 0:
            if self.num_tokens is None:
                raise ValueError("random_token_prob > 0 needs num_tokens (the vocabulary size) to draw random tokens")
            every = torch.arange(self.num_tokens)
            pool = every[~torch.isin(every, torch.tensor([*ignore, self.mask_token_id]))]
        self.register_buffer("random_token_pool", pool, persistent=False)

    @staticmethod
    def _check_probs(mask_prob, replace_prob, random_token_prob, temperature):
        if not 0 < mask_prob <= 1:
            raise ValueError(f"mask_prob must be in (0, 1], got {mask_prob}")
        if replace_prob < 0 or random_token_prob < 0 or replace_prob + random_token_prob > 1:
            raise ValueError(
                f"replace_prob ({replace_prob}) + random_token_prob ({random_token_prob}) must lie in [0, 1]"
            )
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")

    @property
    def encoder(self) -> nn.Module:
        """The model people keep: the discriminator."""
        return self.discriminator

    def backbones(self) -> dict[str, nn.Module]:
        return {"discriminator": self.discriminator, "generator": self.generator}

    def folder_parts(self) -> dict[str, nn.Module]:
        generator = nn.ModuleDict({"backbone": self.generator, "head": self.generator_head})
        return {"encoder_head": self.discriminator_head, "generator": generator}

    def folder_config(self) -> dict:
        return {"embedding_sharing": self.embedding_sharing}

    # ---- the objective --------------------------------------------------------------------------

    def _mask(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, noise: Noise = GLOBAL_RNG) -> MaskedPositions:
        return mask_tokens(
            input_ids,
            attention_mask,
            ignore_ids=self.ignore_ids,
            mask_prob=self.mask_prob,
            mask_token_id=self.mask_token_id,
            replace_prob=self.replace_prob,
            random_token_prob=self.random_token_prob,
            random_token_pool=self.random_token_pool,
            noise=noise,
        )

    def _noise_plan(self, b: int, n: int) -> list[tuple[str, tuple[int, ...], int]]:
        """The draws of one ``compute``, in order: masking (choose_positions, corrupt), then sampling."""
        k = slot_count(n, self.mask_prob)
        plan = [("rand", (b,), 0), ("rand", (b, n), 0), ("rand", (b, k), 0)]
        if self.random_token_prob > 0:
            plan.append(("randint", (b, k), self.random_token_pool.numel()))
        return plan + [("rand", (b, k), 0)]

    @staticmethod
    def _backbone_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
        """What registry backbones get: None (their no-padding path, e.g. SDPA without a mask) when no
        position is padding and that is known without a host-device sync: a CPU tensor, outside
        torch.compile. Otherwise the mask itself; the losses always use the mask."""
        if attention_mask.device.type == "cpu" and not is_compiling() and bool(attention_mask.all()):
            return None
        return attention_mask

    def compute(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, *, noise: Noise | None = None, **kwargs
    ) -> ElectraOutput:
        """``noise``: where masking and sampling draw their randomness (default: torch's global RNG)."""
        noise = noise or GLOBAL_RNG
        check_input_ids(input_ids, self.num_tokens, self.generator, "generator")
        if noise.generator is not None and is_compiling():
            noise = draw_ahead(noise, self._noise_plan(*input_ids.shape), input_ids.device)
        if attention_mask is None:
            attention_mask = input_ids != self.pad_token_id
        attention_mask = attention_mask.bool()
        masked = self._mask(input_ids, attention_mask, noise)
        valid = masked.valid.float()  # (b, K)

        backbone_mask = self.pair.backbone_mask(self, attention_mask)
        gen_logits = self.pair.generator_logits(self, masked, backbone_mask, kwargs)  # (b, K, V)
        # rows (b*K, V), not (b, V, K): log-softmax over contiguous memory, ~2x faster on CPU
        token_loss = F.cross_entropy(
            gen_logits.float().flatten(0, 1), masked.labels.flatten(), reduction="none"
        ).view_as(masked.labels)  # (b, K)
        n_masked = valid.sum().clamp(min=1.0)
        mlm_loss = (token_loss * valid).sum() / n_masked

        with torch.no_grad():  # no gradient flows from the discriminator into the generator's sample
            sampled = sample_categorical(gen_logits.detach(), self.temperature, noise)  # (b, K)
            sampled = torch.where(masked.valid, sampled, masked.labels)
            disc_input = input_ids.scatter(1, masked.positions, sampled)  # (b, n)
            disc_labels = ((disc_input != input_ids) & attention_mask).float()  # a lucky sample is "original"

        disc_logits = self.pair.discriminator_logits(self, disc_input, backbone_mask, kwargs)  # (b, n)
        real = attention_mask.float()
        n_real = real.sum().clamp(min=1.0)
        token_bce = F.binary_cross_entropy_with_logits(disc_logits.float(), disc_labels, reduction="none")
        disc_loss = (token_bce * real).sum() / n_real
        loss = self.gen_weight * mlm_loss + self.disc_weight * disc_loss

        with torch.no_grad():
            gen_acc = ((gen_logits.argmax(-1) == masked.labels).float() * valid).sum() / n_masked
            disc_pred = (disc_logits > 0).float() * real
            disc_acc = ((disc_pred == disc_labels).float() * real).sum() / n_real
            true_pos = (disc_pred * disc_labels).sum()
            precision = true_pos / disc_pred.sum().clamp(min=1.0)
            recall = true_pos / disc_labels.sum().clamp(min=1.0)
        terms = [(self.gen_weight, (token_loss * valid).sum(), n_masked), (self.disc_weight, (token_bce * real).sum(), n_real)]
        return ElectraOutput(
            loss, mlm_loss, disc_loss, gen_acc, disc_acc, precision, recall,
            disc_labels, disc_pred, disc_logits, attention_mask, terms,
        )

    def forward(self, input_ids, attention_mask=None, *, return_output: bool = False, **kwargs):
        """The total loss with its parts attached, or (``return_output``) the ``ElectraOutput``."""
        out = self.compute(input_ids, attention_mask, **kwargs)
        if return_output:
            return out
        loss = out.loss.as_subclass(ElectraLoss)
        for f in fields(out):
            if f.name != "loss":
                setattr(loss, f.name, getattr(out, f.name))
        return loss

    @torch.no_grad()
    def evaluate(self, batches) -> dict[str, float]:
        """Mean losses/accuracies over ``batches`` plus the discriminator's ROC AUC."""
        acc, scores, labels = MeanAccumulator(), [], []
        for batch in batches:
            out = self(batch["input_ids"], batch["attention_mask"], return_output=True)  # forward: FSDP hooks run
            acc.add(out.metrics(), weight=float(batch["input_ids"].shape[0]))
            real = out.attention_mask
            scores.append(out.disc_logits[real].float().cpu())
            labels.append(out.disc_labels[real].cpu())
        result = acc.result()
        if scores:
            result["disc_auc"] = roc_auc(torch.cat(scores), torch.cat(labels))
        return result


# ---- the two kinds of network pair -------------------------------------------------------------------
# Electra's modules stay its own attributes (generator, discriminator, *_head: the checkpoint keys); a pair
# holds no state and says how to build around them and call them.


class BackbonePair:
    """Two registry ``Backbone``s (hidden states in, hidden states out): Electra shares their embeddings, adds the
    heads, and computes the generator's vocabulary logits only at the masked slots."""

    @staticmethod
    def setup(m: Electra, *, num_tokens, sharing, share_positions, init_std, **_raw_only) -> int:
        """Initialise the backbones (before sharing, so a shared table is drawn once), share their embeddings, add
        and initialise the heads; returns the vocabulary size."""
        gen, disc = m.generator, m.discriminator
        if m.weight_init == "electra":
            init_weights(gen, init_std or 0.02)
            init_weights(disc, init_std or 0.02)
        elif init_std is not None:
            init_embeddings(gen, init_std)
            init_embeddings(disc, init_std)
        _check_vocabularies(gen, disc, num_tokens, sharing)
        if sharing == "tied":
            disc.set_token_embedding(gen.get_token_embedding())
        elif sharing == "gdes":
            disc.set_token_embedding(GDESEmbedding(gen.get_token_embedding()))
        gen_pos, disc_pos = gen.get_position_embedding(), disc.get_position_embedding()
        # Position modules are called differently by each library, so they are shared only
        # between two backbones of the same adapter class (and shape); token embeddings always.
        if sharing == "tied" and share_positions and gen_pos is not None and disc_pos is not None:
            shapes = [tuple(p.shape) for p in gen_pos.parameters()], [tuple(p.shape) for p in disc_pos.parameters()]
            if type(gen) is type(disc) and shapes[0] == shapes[1]:
                disc.set_position_embedding(gen_pos)
        m.generator_head = GeneratorHead(gen)
        m.discriminator_head = DiscriminatorHead(disc.hidden_dim)
        if m.weight_init == "electra":
            init_weights(m.generator_head, init_std or 0.02)
            init_weights(m.discriminator_head, init_std or 0.02)
        return gen.num_tokens

    @staticmethod
    def backbone_mask(m: Electra, attention_mask: torch.Tensor) -> torch.Tensor | None:
        return m._backbone_mask(attention_mask)

    @staticmethod
    def generator_logits(m: Electra, masked: MaskedPositions, attention_mask, kwargs) -> torch.Tensor:
        """Vocabulary logits at the masked slots only: (b, K, V)."""
        hidden = m.generator(masked.corrupted, attention_mask=attention_mask)  # (b, n, d_g)
        check_hidden(hidden, masked.corrupted, m.generator, "generator")
        index = masked.positions[..., None].expand(-1, -1, hidden.shape[-1])  # (b, K, d_g)
        return m.generator_head(hidden.gather(1, index))  # (b, K, V)

    @staticmethod
    def discriminator_logits(m: Electra, disc_input, attention_mask, kwargs) -> torch.Tensor:
        hidden = m.discriminator(disc_input, attention_mask=attention_mask)  # (b, n, d)
        check_hidden(hidden, disc_input, m.discriminator, "discriminator")
        return m.discriminator_head(hidden)  # (b, n)


class RawPair:
    """Two raw modules, the original electra-pytorch contract: the generator returns vocabulary logits at every
    position, the discriminator one logit per token (``discr_dim`` > 0: a linear layer on its ``discr_layer``)."""

    @staticmethod
    def setup(m: Electra, *, num_tokens, discr_dim, discr_layer, **_registry_only) -> int | None:
        if discr_dim > 0:
            m.discriminator = nn.Sequential(HiddenLayerExtractor(m.discriminator, layer=discr_layer),
                                            nn.Linear(discr_dim, 1))
        m._disc_logits_net = m.discriminator
        if _ends_in_sigmoid(m.discriminator):
            # The original applies a logits loss on top of this sigmoid (a double sigmoid).
            # We read the logits before it instead; the module itself is left as the user built it.
            warnings.warn(
                "electra-kit: the discriminator ends in nn.Sigmoid; its loss is computed from the logits "
                "before the sigmoid (the original electra-pytorch applied a second sigmoid here)",
                UserWarning,
                stacklevel=3,
            )
            m._disc_logits_net = m.discriminator[:-1]
        return num_tokens

    @staticmethod
    def backbone_mask(m: Electra, attention_mask: torch.Tensor) -> torch.Tensor:
        return attention_mask  # unused: raw modules get only the caller's keyword arguments, as in the original

    @staticmethod
    def generator_logits(m: Electra, masked: MaskedPositions, attention_mask, kwargs) -> torch.Tensor:
        logits = m.generator(masked.corrupted, **kwargs)  # (b, n, V): a raw LM computes all positions
        check_output(logits, (*masked.corrupted.shape, m.num_tokens), m.generator, "generator",
                     "vocabulary logits (batch, seq, num_tokens)")
        index = masked.positions[..., None].expand(-1, -1, logits.shape[-1])
        return logits.gather(1, index)

    @staticmethod
    def discriminator_logits(m: Electra, disc_input, attention_mask, kwargs) -> torch.Tensor:
        logits = m._disc_logits_net(disc_input, **kwargs)  # (b, n) or (b, n, 1)
        if not isinstance(logits, torch.Tensor) or logits.numel() != disc_input.numel():
            check_output(logits, (*disc_input.shape, 1), m.discriminator, "discriminator", "logits (batch, seq, 1)")
        return logits.reshape(disc_input.shape)  # (b, n)


def pair_for(generator: nn.Module, discriminator: nn.Module) -> type[BackbonePair] | type[RawPair]:
    registry = isinstance(generator, Backbone), isinstance(discriminator, Backbone)
    if registry[0] != registry[1]:
        raise TypeError(
            "Electra takes two registry Backbones or two raw modules, not one of each: "
            f"generator is {type(generator).__name__}, discriminator is {type(discriminator).__name__}"
        )
    return BackbonePair if registry[0] else RawPair


def _check_vocabularies(gen: Backbone, disc: Backbone, num_tokens: int | None, sharing: str) -> None:
    if sharing not in SHARING_MODES:
        raise ValueError(f"embedding_sharing={sharing!r}; choose one of {SHARING_MODES}")
    if gen.num_tokens != disc.num_tokens:
        raise ValueError(f"generator and discriminator vocabularies differ ({gen.num_tokens} vs {disc.num_tokens} tokens)")
    if num_tokens is not None and num_tokens != gen.num_tokens:
        raise ValueError(f"num_tokens={num_tokens} but the backbones were built with {gen.num_tokens} tokens")
    if sharing != "none" and gen.emb_dim != disc.emb_dim:
        raise ValueError(
            f"embedding_sharing={sharing!r} needs equal embedding sizes, but generator emb_dim={gen.emb_dim} "
            f"and discriminator emb_dim={disc.emb_dim}: set the same emb_dim on both backbones "
            "(ELECTRA-Small uses 128) or use embedding_sharing='none'"
        )
