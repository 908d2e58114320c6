"""Register electra-kit's model folders with Hugging Face transformers' Auto classes, lazily; and the
remote-code shim every model folder carries.

After ``import electra_kit``, ``AutoConfig`` / ``AutoModel`` / ``AutoTokenizer.from_pretrained(MODEL_DIR)``
and ``pipeline("feature-extraction", model=MODEL_DIR)`` load any electra-kit model folder (the classes
are in hf_model.py). transformers' model classes take seconds to import, more than electra_kit
itself, so ``import electra_kit`` does not import them: :func:`install` registers at once when
transformers is already imported, and otherwise right after the first ``import transformers``.

Without ``import electra_kit`` (a fresh process, a tool that only knows transformers),
``AutoModel.from_pretrained(MODEL_DIR, trust_remote_code=True)`` loads the folder through config.json's
``auto_map``, which names the classes in ``modeling_electra_kit.py`` beside it: a few lines that import
them from electra-kit (which must be installed, with the backbone's library; the file says so when it is
not). :func:`add_remote_code` writes both.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings
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


def register() -> None:
    """Register the config, model and tokenizer classes under ``model_type`` "electra-kit"."""
    from . import hf_model  # noqa: F401  (registers as it finishes loading, even when it is what imported transformers)


def _register_quietly() -> None:
    try:
        register()
    except Exception as exc:  # an incompatible transformers must not break the user's own import of it
        warnings.warn(f"electra-kit: could not register its models with transformers' Auto classes: "
                      f"{type(exc).__name__}: {exc}", RuntimeWarning, stacklevel=2)


class _AfterImport:
    """A meta-path finder that lets the other finders find ``transformers`` and registers once the
    module has executed (the standard library has no post-import hook). It stays in place until then:
    a mere ``importlib.util.find_spec("transformers")`` (libraries probe for it) executes nothing."""

    def find_spec(self, name, path=None, target=None):
        if name != "transformers":
            return None
        finders = (f for f in sys.meta_path if f is not self and hasattr(f, "find_spec"))
        spec = next((s for s in (f.find_spec(name, path, target) for f in finders) if s is not None), None)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            exec_module = spec.loader.exec_module  # patched on this spec's loader (a new one per find_spec)

            def exec_then_register(module):
                try:
                    exec_module(module)
                finally:
                    del spec.loader.exec_module  # back to the loader's own method
                if self in sys.meta_path:
                    sys.meta_path.remove(self)
                _register_quietly()

            spec.loader.exec_module = exec_then_register
        return spec


def install() -> None:
    """Register now if transformers is imported, else when it is; nothing when it is not installed."""
    if "transformers" in sys.modules:
        _register_quietly()
    elif importlib.util.find_spec("transformers") is not None \
            and not any(isinstance(f, _AfterImport) for f in sys.meta_path):
        sys.meta_path.insert(0, _AfterImport())
