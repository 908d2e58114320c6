"""What a run reports about itself: its gin config as MLflow params, and the machine and code as tags."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import socket
import sys


class _Ref:
    """A gin reference or macro inside a parsed value: repr() gives its gin text, or a macro's value."""

    def __init__(self, text: str, macros: dict | None = None, name: str | None = None):
        self.text, self.macros, self.name = text, macros, name

    def __repr__(self) -> str:
        if self.macros is not None and self.name in self.macros:
            return repr(self.macros[self.name])
        return self.text


def flatten_gin_config(operative_config_str: str) -> dict[str, str]:
    """gin's operative config text -> {"scope/Configurable.param": "value"}, with macros resolved.

    Values keep gin's syntax (``'reformer'``, ``0.0005``, ``@generator/backbone()``, containers on one line),
    except that ``%MACRO`` is replaced by its value, so that two runs' params differ where their values do.
    The macros are params too, under their own name (``HIDDEN``). Parsed with gin's own parser.
    """
    from gin import config_parser

    macros: dict[str, object] = {}

    class Delegate(config_parser.ParserDelegate):
        def configurable_reference(self, scoped_name, evaluate):
            return _Ref(f"@{scoped_name}()" if evaluate else f"@{scoped_name}")

        def macro(self, name):
            return _Ref(f"%{name}", macros, name)

    out: dict[str, str] = {}
    statements = [st for st in config_parser.ConfigParser(operative_config_str, Delegate())
                  if isinstance(st, config_parser.BindingStatement)]
    for st in statements:
        if not st.arg_name:  # a macro definition: NAME = value
            macros["/".join(p for p in (st.scope, st.selector) if p)] = st.value
    for st in statements:
        key = "/".join(p for p in (st.scope, st.selector) if p)
        out[f"{key}.{st.arg_name}" if st.arg_name else key] = repr(st.value)
    return out


def system_tags() -> dict[str, str]:
    """MLflow's own source tags (user, entry point, git commit of the code that runs), plus versions, command
    line, host, CPU and GPU facts."""
    from importlib.metadata import PackageNotFoundError, version

    from mlflow.tracking.context.registry import resolve_tags

    def pkg(name: str) -> str:
        try:
            return version(name)
        except PackageNotFoundError:
            return "unknown"

    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), cpu)
    tags = {**resolve_tags(), "electra_kit.version": pkg("electra-kit"), "electra_kit.mlflow_version": pkg("mlflow"),
            "electra_kit.python": platform.python_version(), "electra_kit.command": shlex.join(sys.argv),
            "electra_kit.hostname": socket.gethostname(), "electra_kit.cpu": cpu,
            "electra_kit.cpu_count": str(os.cpu_count() or 0)}
    with contextlib.suppress(ImportError):
        import torch

        tags["electra_kit.torch_version"] = torch.__version__
        tags["electra_kit.device"] = "cuda" if torch.cuda.is_available() else "cpu"
        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            tags.update({"electra_kit.gpu_name": props.name, "electra_kit.gpu_count": str(torch.cuda.device_count()),
                         "electra_kit.gpu_memory_gb": f"{props.total_memory / 2**30:.1f}",
                         "electra_kit.cuda_version": str(torch.version.cuda)})
    return tags
