"""What lets transformers load a model folder without ``import electra_kit``: ``trust_remote_code=True``.

config.json's ``auto_map`` names the classes of ``modeling_electra_kit.py``, a file beside it that imports
them from electra-kit (hf_model.py): ``AutoModel.from_pretrained(folder, trust_remote_code=True)`` then
loads any folder in a process that never imported electra_kit. The file says what to install where
electra-kit is missing. Standard library only: save_pretrained, export and hf_model all write it.
"""

from __future__ import annotations

from pathlib import Path

MODELING_FILE = "modeling_electra_kit.py"
AUTO_MAP = {
    "AutoConfig": "modeling_electra_kit.ElectraKitConfig",
    "AutoModel": "modeling_electra_kit.ElectraKitModel",
    "AutoTokenizer": [None, "modeling_electra_kit.ElectraKitTokenizerFast"],
}
MODELING_CODE = '''"""An electra-kit model folder for Hugging Face transformers' ``trust_remote_code=True``.

config.json's ``auto_map`` names the classes below, so that ``AutoConfig`` / ``AutoModel`` /
``AutoTokenizer.from_pretrained(THIS_FOLDER, trust_remote_code=True)`` load the folder without an
``import electra_kit`` first. The classes are electra-kit's own (electra_kit/modelfolder/hf_model.py):
electra-kit and the backbone's library must be installed: pip install 'electra-kit[transformers]'.
"""

try:
    from electra_kit.modelfolder.hf_model import ElectraKitConfig, ElectraKitModel, ElectraKitTokenizerFast
except ImportError as exc:
    raise ImportError(
        "This model folder was written by electra-kit and loads only where electra-kit is installed, with its "
        "backbone's library: pip install 'electra-kit[transformers]' (a plugin backbone needs its plugin too). "
        f"The import failed: {exc}"
    ) from exc

__all__ = ["ElectraKitConfig", "ElectraKitModel", "ElectraKitTokenizerFast"]
'''


def add_remote_code(folder: Path, config: dict) -> dict:
    """Write ``modeling_electra_kit.py`` into ``folder``; return ``config`` with its ``auto_map`` (config.json's)."""
    (Path(folder) / MODELING_FILE).write_text(MODELING_CODE, encoding="utf-8")
    return {**config, "auto_map": AUTO_MAP}
