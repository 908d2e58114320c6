"""``electra-kit export MODEL_DIR [--format auto|hf|portable] OUT_DIR``: a trained model folder for other tools.

- ``--format auto`` (the default): ``hf`` where the backbone implements the hook below, else the
  portable folder; exit 0 either way, and the message says which was written. Every portable folder
  loads with ``transformers``' ``AutoModel.from_pretrained(OUT_DIR, trust_remote_code=True)`` too
  (config.json's ``auto_map`` names the small modeling file beside it, remote_code.py).
- ``--format hf``: when the encoder's backbone class implements the optional hook
  ``Backbone.export_hf`` (the ``hf-electra`` backbone of ``plugins/electra-kit-hf`` does), that hook
  writes a folder ``transformers`` loads with ``from_pretrained``. No other backbone has a
  ``transformers`` architecture that computes the same function, so for them we write the
  portable folder instead, say what it does and does not cover, and return ``EXIT_NOT_HF`` (3):
  a script that goes on to ``from_pretrained`` stops here, with the portable folder in hand.
- ``--format portable``: the model folder as it is (safetensors weights, config.json,
  tokenizer.json, operative_config.gin), exit 0. A folder saved before config.json carried
  ``model_type`` gets it in the copy, so transformers' ``AutoModel`` loads the copy (hf_auto.py).

Both add ``tokenizer_config.json`` beside ``tokenizer.json``, so ``AutoTokenizer.from_pretrained``
loads the tokenizer offline whatever the backbone. electra-kit never imports a plugin here: the
registry builds the backbone named in config.json and we look for the hook on its class.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from ..backbone import Backbone
from ..registry import UnknownBackboneError, create_backbone
from ..rundir.atomic import staged_dir
from ..rundir.guard import check_output, mark
from .pretrained import MODEL_TYPE, read_config
from .remote_code import MODELING_FILE, add_remote_code

FORMATS = ("auto", "hf", "portable")
EXIT_NOT_HF = 3  # --format hf asked, portable folder written

_SPECIAL = {"pad_token": "[PAD]", "unk_token": "[UNK]", "mask_token": "[MASK]", "cls_token": "[CLS]",
            "sep_token": "[SEP]"}


@dataclass
class ExportResult:
    out_dir: Path
    format: str  # what was written: "hf" or "portable"
    message: str


def write_hf_tokenizer(model_dir: Path, out_dir: Path) -> list[str]:
    """Copy ``tokenizer.json`` and write a ``tokenizer_config.json`` that ``AutoTokenizer`` loads.

    A BERT-style pipeline (ours) becomes ``ElectraTokenizerFast`` with the normaliser's own
    lowercase/accent flags (the class would otherwise re-apply its defaults); anything else is a
    plain ``PreTrainedTokenizerFast`` over the same tokenizer.json. Returns the files written.
    """
    src = Path(model_dir) / "tokenizer.json"
    if not src.is_file():
        return []
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    if src.resolve() != (out_dir / src.name).resolve():
        shutil.copyfile(src, out_dir / src.name)
    tok = json.loads(src.read_text(encoding="utf-8"))
    vocab = (tok.get("model") or {}).get("vocab") or {}
    added = {t["content"] for t in tok.get("added_tokens", [])}
    norm = tok.get("normalizer") or {}
    if norm.get("type") == "BertNormalizer":
        config = {"tokenizer_class": "ElectraTokenizerFast", "do_lower_case": norm.get("lowercase", True),
                  "strip_accents": norm.get("strip_accents"), "tokenize_chinese_chars": norm.get("handle_chinese_chars", True)}
    else:
        config = {"tokenizer_class": "PreTrainedTokenizerFast"}
    config["model_max_length"] = read_config(model_dir).get("max_seq_len") or 512
    config.update({k: t for k, t in _SPECIAL.items() if t in vocab or t in added})
    (out_dir / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    return ["tokenizer.json", "tokenizer_config.json"]


def _not_hf_message(name: str, out_dir: Path) -> str:
    return (
        f"electra-kit export: the '{name}' backbone has no Hugging Face transformers equivalent, so {out_dir} "
        "is NOT a folder transformers can load on its own (ElectraForPreTraining); with electra-kit installed, "
        "AutoModel/AutoTokenizer/pipeline load it after `import electra_kit`, or with trust_remote_code=True.\n"
        f"Written instead: the portable folder: weights as safetensors (encoder.safetensors = the discriminator, "
        "encoder_head.safetensors, generator.safetensors), config.json (backbone names + arguments), "
        "tokenizer.json + tokenizer_config.json (AutoTokenizer.from_pretrained loads these), operative_config.gin, "
        f"{MODELING_FILE}.\n"
        f"Load it with electra_kit.load_pretrained('{out_dir}') (needs electra-kit and the backbone's library), "
        "or read the weights with safetensors in any framework.\n"
        "Only backbones that implement Backbone.export_hf export to transformers, e.g. 'hf-electra' "
        "(pip install plugins/electra-kit-hf). Exit status 3 says this happened."
    )


def _portable_message(name: str, out_dir: Path, format: str) -> str:
    why = (f" (--format auto: the '{name}' backbone has no Hugging Face transformers architecture; "
           "only backbones that implement Backbone.export_hf, e.g. 'hf-electra', export one)") if format == "auto" else ""
    return (f"electra-kit export: wrote the portable folder {out_dir}{why}: safetensors weights, config.json, "
            f"tokenizer.json + tokenizer_config.json, operative_config.gin and {MODELING_FILE}. Load it with "
            f"electra_kit.load_pretrained('{out_dir}'), or with transformers: "
            f"AutoModel.from_pretrained('{out_dir}', trust_remote_code=True) (needs electra-kit installed)")


def export(model_dir: str | Path, out_dir: str | Path, *, format: str = "auto", overwrite: bool = False) -> ExportResult:
    """Export ``model_dir`` (a folder written by ``save_pretrained``) to ``out_dir``."""
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    config = read_config(model_dir)  # FileNotFoundError naming the folder when it is not one
    _check_out_dir(model_dir, out_dir, overwrite)
    backbone = None
    if format in ("hf", "auto"):
        spec = config["encoder"]
        try:
            backbone = create_backbone(spec["name"], **spec["kwargs"])
        except UnknownBackboneError as exc:
            raise ValueError(f"{model_dir} was trained with backbone '{spec['name']}', which is not installed "
                             f"here ({exc}); install the plugin that provides it to export this folder") from exc
    # written beside out_dir and swapped in at the end: an old out_dir goes only once the new one is there
    with staged_dir(out_dir, replace=True) as tmp:
        if backbone is not None and type(backbone).export_hf is not Backbone.export_hf:
            summary = backbone.export_hf(model_dir, tmp).strip("\n")
            if (model_dir / "operative_config.gin").is_file() and not (tmp / "operative_config.gin").exists():
                shutil.copyfile(model_dir / "operative_config.gin", tmp / "operative_config.gin")  # provenance
            written = "hf"
            message = f"electra-kit export: wrote {out_dir} for Hugging Face transformers.\n{summary}"
        else:
            shutil.copytree(model_dir, tmp, dirs_exist_ok=True)
            write_hf_tokenizer(model_dir, tmp)
            # a folder saved before model_type or auto_map: the copy loads in AutoModel (with trust_remote_code too)
            config = add_remote_code(tmp, {"model_type": MODEL_TYPE, **config})
            (tmp / "config.json").write_text(json.dumps(config, indent=2))
            written = "portable"
            message = (_not_hf_message(config["encoder"]["name"], out_dir) if format == "hf"
                       else _portable_message(config["encoder"]["name"], out_dir, format))
        mark(tmp, "export")  # --overwrite replaces this folder later, and no folder without it (guard.py)
    return ExportResult(out_dir, written, message)


def _run_dir_of(model_dir: Path) -> Path | None:
    """The run directory a model folder sits in (``RUN/model``), if it is one."""
    parent = model_dir.parent
    marks = ("checkpoints", "summary.json", "metrics.jsonl", "operative_config.gin")
    return parent if any((parent / m).exists() for m in marks) else None


def _check_out_dir(model_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """The write rule of every command (guard.py): never the model folder, its run directory or anything
    in them, never the current folder, and only an earlier export is replaced (with ``--overwrite``)."""
    check_output(out_dir, inputs=[model_dir, _run_dir_of(model_dir.resolve())], kind="folder",
                 made="export", replace=overwrite, option="export OUT_DIR")
