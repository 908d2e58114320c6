"""What a run reports about the machine and code it ran on: MLflow tags."""

from __future__ import annotations

import contextlib
import os
import platform
import shlex
import socket
import sys


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
