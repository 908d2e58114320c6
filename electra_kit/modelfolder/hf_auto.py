"""Register electra-kit's model folders with Hugging Face transformers' Auto classes, lazily.

After ``import electra_kit``, ``AutoConfig`` / ``AutoModel`` / ``AutoTokenizer.from_pretrained(MODEL_DIR)``
and ``pipeline("feature-extraction", model=MODEL_DIR)`` load any electra-kit model folder (the classes
are in hf_model.py). transformers' model classes take seconds to import, more than electra_kit
itself, so ``import electra_kit`` does not import them: :func:`install` registers at once when
transformers is already imported, and otherwise right after the first ``import transformers``.

Without ``import electra_kit`` (a fresh process, a tool that only knows transformers),
``AutoModel.from_pretrained(MODEL_DIR, trust_remote_code=True)`` loads the folder through config.json's
``auto_map``, which names the classes in ``modeling_electra_kit.py`` beside it: a few lines that import
them from electra-kit (which must be installed, with the backbone's library; the file says so when it is
not). remote_code.py writes both.
"""

from __future__ import annotations

import importlib.util
import sys
import warnings


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
