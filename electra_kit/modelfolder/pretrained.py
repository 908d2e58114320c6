"""The finished model folder: what a run leaves for people to use.

    model/
      config.json            backbone names + arguments, objective, special token ids
      encoder.safetensors    the discriminator (ELECTRA) or the MLM encoder: the model to keep
      encoder_head.safetensors   its pretraining head (replaced-token detection or LM head)
      generator.safetensors  ELECTRA's generator backbone and LM head
      tokenizer.json         Hugging Face tokenizers format
      operative_config.gin   what actually ran
      modeling_electra_kit.py    transformers' trust_remote_code entry (config.json's auto_map; remote_code.py)

``load_pretrained(folder)`` rebuilds the encoder through the registry; no pickle is involved.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model
from torch import nn

from ..backbone import Backbone
from ..objectives.heads import GDESEmbedding
from ..registry import create_backbone
from ..rundir.atomic import recover_dir, staged_dir
from ..rundir.guard import mark
from .remote_code import add_remote_code

FORMAT_VERSION = 1
MODEL_TYPE = "electra-kit"  # config.json's key for transformers' AutoConfig (hf_auto.py registers it)


def _standalone(backbone: Backbone) -> Backbone:
    """A copy that owns its embeddings (a GDES embedding becomes a plain one with its effective weight)."""
    clone = copy.deepcopy(backbone)
    emb = clone.get_token_embedding()
    if isinstance(emb, GDESEmbedding):
        plain = nn.Embedding(*emb.weight.shape)
        plain.weight.data.copy_(emb.weight.detach())
        clone.set_token_embedding(plain)
    return clone


def _backbone_config(backbone: Backbone) -> dict:
    if backbone.backbone_name is None:
        raise ValueError("only backbones made by create_backbone can be saved (the folder must say how to rebuild them)")
    return {"name": backbone.backbone_name, "kwargs": backbone.backbone_kwargs}


def save_pretrained(model: nn.Module, folder: Path, *, tokenizer=None, special_ids: dict | None = None,
                    operative_config: str = "", max_seq_len: int | None = None) -> Path:
    """Write the model folder of an :class:`~electra_kit.objectives.base.Objective` over registry backbones."""
    folder = Path(folder)
    encoder = _standalone(model.encoder)
    config = {
        "model_type": MODEL_TYPE,
        "format_version": FORMAT_VERSION,
        "objective": type(model).__name__,
        "encoder": _backbone_config(encoder),
        "hidden_dim": encoder.hidden_dim,
        "max_seq_len": max_seq_len or encoder.max_seq_len,
        "special_ids": special_ids or {},
        "weight_init": getattr(model, "weight_init", "library"),
    }
    # a unique temporary folder, swapped in whole: the old folder goes only once the new one is there
    with staged_dir(folder) as tmp:
        save_model(encoder, str(tmp / "encoder.safetensors"))
        for stem, module in model.folder_parts().items():
            save_model(module, str(tmp / f"{stem}.safetensors"))
        for role, backbone in model.backbones().items():
            if backbone is not model.encoder:  # e.g. ELECTRA's generator: the folder says how to rebuild it
                config[role] = _backbone_config(backbone)
        config.update(model.folder_config())
        (tmp / "operative_config.gin").write_text(operative_config)
        if tokenizer is not None:
            tokenizer.save(str(tmp / "tokenizer.json"))
        config = add_remote_code(tmp, config)  # AutoModel.from_pretrained(folder, trust_remote_code=True)
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        mark(tmp, "model")  # what --overwrite of another command must never replace (guard.py)
    return folder


class Encoder(nn.Module):
    """A pretrained encoder: text or token ids in, per-token hidden states out."""

    def __init__(self, backbone: Backbone, tokenizer=None, config: dict | None = None):
        super().__init__()
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.config = config or {}

    @property
    def hidden_dim(self) -> int:
        return self.backbone.hidden_dim

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.backbone(input_ids, attention_mask=attention_mask)  # (b, n, d)

    def tokenize(self, texts: list[str], max_seq_len: int | None = None) -> dict[str, torch.Tensor]:
        if self.tokenizer is None:
            raise ValueError("this model folder has no tokenizer.json; pass token ids to forward() instead")
        from ..data.build import encode_texts

        n = max_seq_len or self.config.get("max_seq_len") or self.backbone.max_seq_len
        ids, mask = encode_texts(self.tokenizer, texts, n)
        return {"input_ids": ids, "attention_mask": mask}

    @torch.no_grad()
    def encode(self, texts: list[str], max_seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Hidden states ``(b, n, d)`` and the attention mask for a list of texts."""
        batch = self.tokenize(texts, max_seq_len)
        device = next(self.parameters()).device
        ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
        return self.forward(ids, mask), mask


def load_weights_into(module: nn.Module, path: Path, **kwargs) -> tuple[list[str], list[str]]:
    """``safetensors.load_model`` whose failures (truncated file, other shapes) name the file, in one line;
    returns its (missing, unexpected) keys."""
    from safetensors import SafetensorError

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: the model folder is incomplete")
    try:
        return load_model(module, str(path), **kwargs)
    except (SafetensorError, RuntimeError, OSError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: cannot be loaded ({reason[:300]}); the model folder is damaged or does not "
                         f"match its config.json") from None


def resolve_model_dir(path: str | Path) -> Path:
    """A model folder, or a run directory holding one in ``model/`` (what ``run`` and ``finetune`` leave)."""
    path = Path(path)
    if not (path / "config.json").is_file() and (path / "model" / "config.json").is_file():
        return path / "model"
    return path


def read_config(folder: Path) -> dict:
    folder = Path(folder)
    recover_dir(folder)  # a save killed mid-swap on a filesystem without atomic exchange
    path = folder / "config.json"
    if not path.is_file():
        hint = f" (did you mean {folder / 'model'}?)" if (folder / "model" / "config.json").is_file() else ""
        raise FileNotFoundError(f"{folder} is not an electra-kit model folder: {path.name} is missing{hint}")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); the model folder is damaged") from None
    if not isinstance(config, dict) or not isinstance(config.get("encoder"), dict) \
            or not {"name", "kwargs"} <= config["encoder"].keys():
        raise ValueError(f"{path}: not an electra-kit model config (no encoder name and kwargs)")
    return config


# The encoder's name in its objective, where that is not "encoder" (Electra.backbones()'s role names).
_ENCODER_ROLES = {"Electra": "discriminator"}


def folder_parts(config: dict) -> dict[str, str]:
    """The backbones ``load_pretrained`` can load from a folder with this config: ``{part name: config key}``.
    ``encoder`` is there under its role's name too (ELECTRA's ``discriminator``)."""
    role = _ENCODER_ROLES.get(config.get("objective"), "encoder")
    parts = {"encoder": "encoder", role: "encoder"}
    if isinstance(config.get("generator"), dict) and {"name", "kwargs"} <= config["generator"].keys():
        parts["generator"] = "generator"
    return parts


def load_pretrained(folder: str | Path, *, part: str = "encoder", map_location: str = "cpu") -> Encoder:
    """Load the encoder (default; ELECTRA's ``discriminator``) or the ``generator`` backbone from a model folder.
    A part the folder does not hold is an error that lists the ones it does."""
    folder = Path(folder)
    config = read_config(folder)
    parts = folder_parts(config)
    if part not in parts:
        raise ValueError(f"load_pretrained(part={part!r}): {folder} ({config.get('objective', 'model')} folder) "
                         f"holds the parts {', '.join(repr(p) for p in parts)}")
    part = parts[part]
    spec = config[part]
    backbone = create_backbone(spec["name"], **spec["kwargs"])
    if part == "encoder":
        load_weights_into(backbone, folder / "encoder.safetensors", device=map_location)
    else:
        wrapper = nn.ModuleDict({"backbone": backbone})
        missing, _ = load_weights_into(wrapper, folder / "generator.safetensors", strict=False, device=map_location)
        if missing:  # strict=False skips the head; the backbone must be there whole
            raise ValueError(f"{folder / 'generator.safetensors'}: holds no weights for {len(missing)} of the generator "
                             f"backbone's tensors (e.g. {sorted(missing)[0]}); the model folder is damaged")
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
    encoder = Encoder(backbone, tokenizer, config)
    encoder.eval()
    return encoder
