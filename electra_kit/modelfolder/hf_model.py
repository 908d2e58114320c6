"""An electra-kit model folder as a Hugging Face ``transformers`` model, config and tokenizer.

transformers picks the classes from config.json's ``model_type``; ``save_pretrained`` writes
``"model_type": "electra-kit"`` and this module registers these classes under it when it is loaded. They wrap the kit's
own loader, so every registered backbone (built-in or plugin) works, and the weights are read from
``encoder.safetensors`` exactly as ``load_pretrained`` reads them. Importing this module imports
transformers: hf_auto.py imports it once transformers is imported anyway.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_model
from tokenizers import processors
from transformers import (
    AutoConfig,
    AutoModel,
    AutoTokenizer,
    PreTrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)
from transformers.modeling_outputs import BaseModelOutput

from ..data.tokenizer import SPECIAL_TOKENS, special_ids
from ..registry import create_backbone
from .pretrained import MODEL_TYPE, load_pretrained, read_config
from .remote_code import add_remote_code


class ElectraKitConfig(PreTrainedConfig):
    """config.json of a model folder; its keys (encoder, max_seq_len, special_ids, ...) become attributes."""

    model_type = MODEL_TYPE
    attribute_map = {"hidden_size": "hidden_dim"}  # the name pipelines and users look for

    encoder: dict | None = None  # {"name": registry name, "kwargs": the builder's arguments}
    hidden_dim: int | None = None
    max_seq_len: int | None = None
    special_ids: dict | None = None


class ElectraKitModel(PreTrainedModel):
    """The folder's encoder (ELECTRA's discriminator): ``last_hidden_state`` ``(b, n, hidden_dim)``."""

    config_class = ElectraKitConfig
    base_model_prefix = "backbone"
    main_input_name = "input_ids"

    def __init__(self, config: ElectraKitConfig, backbone=None):
        super().__init__(config)
        if backbone is None:  # from_config: untrained, initialised as the backbone's library does
            backbone = create_backbone(config.encoder["name"], **config.encoder["kwargs"])
        self.backbone = backbone
        self.post_init()

    def _init_weights(self, module) -> None:
        """The backbone initialises itself; transformers' default init would overwrite it."""

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, config=None, **kwargs):
        """Load a local model folder with the kit's own strict loader (``encoder.safetensors``).

        Honoured: ``config``, ``dtype`` (or ``torch_dtype``), ``device_map`` as one device. The other
        transformers loading options (quantisation, sharding, hub downloads) do not apply here.
        """
        folder = Path(pretrained_model_name_or_path)
        if not folder.is_dir():
            raise OSError(f"{pretrained_model_name_or_path}: electra-kit models load from a local model folder; "
                          f"download a Hub repository first (huggingface_hub.snapshot_download)")
        if config is None:
            config = ElectraKitConfig.from_pretrained(folder)
        encoder = load_pretrained(folder)
        model = cls(config, backbone=encoder.backbone)
        dtype = kwargs.get("dtype", kwargs.get("torch_dtype"))
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)  # "bfloat16", as in config files
        if isinstance(dtype, torch.dtype):
            model.to(dtype)
        device = kwargs.get("device_map")
        if isinstance(device, (str, int, torch.device)) and device != "auto":
            model.to(device)
        return model.eval()

    def save_pretrained(self, save_directory, **kwargs) -> None:
        """Write the kit's layout for the encoder (config.json + encoder.safetensors + the remote-code file), which
        ``from_pretrained`` and ``load_pretrained`` both read. transformers' saving options are not used."""
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        self.config.auto_map = add_remote_code(folder, {})["auto_map"]  # loads with trust_remote_code=True too
        self.config.save_pretrained(folder)
        save_model(self.backbone, str(folder / "encoder.safetensors"))

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None,
                token_type_ids: torch.Tensor | None = None, return_dict: bool | None = None,
                **kwargs) -> BaseModelOutput | tuple:
        """``token_type_ids`` are accepted and ignored: the kit's encoders have no segment embedding."""
        mask = None if attention_mask is None else attention_mask.bool()  # (b, n), True at real tokens
        hidden = self._encode(input_ids, mask)  # (b, n, d)
        if return_dict is False:
            return (hidden,)
        return BaseModelOutput(last_hidden_state=hidden)

    def _encode(self, ids: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """A backbone whose output depends on the padding (Reformer's LSH buckets follow the padded
        length) gets the padding ``Encoder.encode`` gives it, to ``max_seq_len``, so that a text has the
        same hidden states here as in electra-kit."""
        n = ids.shape[1]
        target = self.config.max_seq_len or self.backbone.max_seq_len
        if self.backbone.honours_padding_mask or n >= target:
            return self.backbone(ids, attention_mask=mask)  # (b, n, d)
        pad_id = (self.config.special_ids or {}).get("pad_id", 0)
        mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask
        ids = F.pad(ids, (0, target - n), value=pad_id)  # (b, target)
        mask = F.pad(mask, (0, target - n), value=False)  # (b, target)
        return self.backbone(ids, attention_mask=mask)[:, :n]  # (b, n, d)


class ElectraKitTokenizerFast(PreTrainedTokenizerFast):
    """The folder's tokenizer.json, encoding as electra-kit does: ``[CLS] text [SEP]`` (``[CLS] a
    [SEP] b [SEP]`` for pairs) whatever post-processor the file has, since the kit adds these tokens
    itself; ``model_max_length`` is the folder's ``max_seq_len``."""

    model_input_names = ["input_ids", "attention_mask"]  # no token_type_ids: no segment embedding

    def __init__(self, tokenizer_file=None, tokenizer_object=None, **kwargs):
        from tokenizers import Tokenizer

        tok = tokenizer_object if tokenizer_object is not None else Tokenizer.from_file(tokenizer_file)
        ids = special_ids(tok, source=tokenizer_file or "tokenizer")
        kwargs["post_processor"] = processors.TemplateProcessing(
            single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
            special_tokens=[("[CLS]", ids.cls_id), ("[SEP]", ids.sep_id)],
        )
        names = ("pad_token", "unk_token", "mask_token", "cls_token", "sep_token")  # SPECIAL_TOKENS' order
        for name, token in zip(names, SPECIAL_TOKENS, strict=True):
            if tok.token_to_id(token) is not None:  # never add a token the embedding has no row for
                kwargs.setdefault(name, token)
        super().__init__(tokenizer_object=tok, **kwargs)

    @classmethod
    def convert_to_native_format(cls, trust_remote_code=False, **kwargs):
        return kwargs  # keep ``tokenizer_file`` for __init__ (transformers would rebuild the backend from its parts)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        folder = Path(pretrained_model_name_or_path)
        if (folder / "config.json").is_file() and "model_max_length" not in kwargs:
            max_len = read_config(folder).get("max_seq_len")
            if max_len:
                kwargs["model_max_length"] = max_len
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)


# exist_ok: loading this module again (importlib.reload) re-registers the new classes
AutoConfig.register(MODEL_TYPE, ElectraKitConfig, exist_ok=True)
AutoModel.register(ElectraKitConfig, ElectraKitModel, exist_ok=True)
AutoTokenizer.register(ElectraKitConfig, fast_tokenizer_class=ElectraKitTokenizerFast, exist_ok=True)
