"""What a training run is asked to do (``TrainConfig``, bound as ``train.*`` in gin through ``configured_train``),
and the choices its ``auto`` values resolve to on this machine: device, precision, compilation."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import gin

from ..config.checks import TRAIN, check_values
from .optim import warmup_steps


@dataclass
class TrainConfig:
    steps: int = 1000
    batch_size: int = 128  # global: split across ranks and accumulation micro-steps
    lr: float = 5e-4
    warmup_steps: int = 10000
    warmup_cap: float | None = 0.1  # warmup is at most this fraction of ``steps`` (short runs reach the peak lr)
    weight_decay: float = 0.01
    layer_decay: float = 1.0  # < 1: layer-wise lr decay over the model's layer_groups() (fine-tuning)
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-6
    max_grad_norm: float = 1.0
    grad_accum_steps: int = 1
    log_every: int = 10
    eval_every: int = 1000
    eval_batches: int = 10
    checkpoint_every: int = 1000
    keep_checkpoints: int = 3
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto (bf16 autocast where the device does bf16 natively: native_bf16) | bf16 | fp32
    compile: bool | str = "auto"  # auto: compile runs of COMPILE_AUTO_STEPS or more (compile_wanted)
    strategy: str = "ddp"  # multi-process: ddp (replicate) | fsdp (shard parameters, grads, optimizer state)
    seed: int = 0
    threads: int | None = None  # CPU threads; None: $OMP_NUM_THREADS, else the cores not busy (threads.py)
    max_bad_steps: int = 5  # non-finite loss/gradient steps in a row before the run stops
    progress: bool = True

    def __post_init__(self):
        check_values("train", vars(self), TRAIN)  # each binding checked before anything is built

    @property
    def effective_warmup(self) -> int:
        return warmup_steps(self.steps, self.warmup_steps, self.warmup_cap)


# ``train.*`` in a gin file binds this one: TrainConfig with the bindings. TrainConfig itself reads no gin, so
# fine-tuning, which builds its own, never inherits a pretraining config parsed earlier in the same process.
configured_train = gin.external_configurable(TrainConfig, "train")

# Measured on the 2-core CPU of bench/RESULTS.md (ELECTRA-Small shape, bf16): compiling took 20 s and cut the
# step from 611 to 516 ms, so it repays itself after about 200 steps; 2,000 leaves room for slower compiles
# (75 s measured under load) and smaller gains (+3% in fp32). Fine-tuning never compiles: its batches vary in length.
COMPILE_AUTO_STEPS = 2000


def compile_wanted(cfg: TrainConfig, model=None) -> bool:
    """``train.compile``: True, False, or ``'auto'`` = runs of at least COMPILE_AUTO_STEPS steps whose backbones
    all say compiling pays (``Backbone.compile_pays``: the transformer does; Reformer gains nothing, Performer
    fails to compile)."""
    if cfg.compile != "auto":
        return bool(cfg.compile)
    backbones = model.backbones().values() if hasattr(model, "backbones") else []
    return cfg.steps >= COMPILE_AUTO_STEPS and bool(backbones) and all(getattr(b, "compile_pays", False) for b in backbones)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"train.device={name!r} but no CUDA device is available; use 'cpu' or 'auto'")
    return device


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 natively (what ``precision='auto'`` autocasts to bf16 on): CUDA with bf16, or
    a CPU with AVX512-BF16 or AMX. Measured (bench/RESULTS.md, issue 14): on an AVX512-BF16 CPU, bf16 stepped 1.25x
    faster and its loss curve and final discriminator AUC stayed within seed noise of fp32 over 1,000 steps."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:  # not Linux: fp32
        return False
    return device.type == "cpu" and ("avx512_bf16" in flags or "amx_bf16" in flags)
