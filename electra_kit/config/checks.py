"""Every configuration value checked before anything is built, each error naming its binding.

A table per configurable (``TRAIN``, ``BUILD_DATA``): parameter -> (what it must be, a test).
The configurables call :func:`check_values` first thing, so a wrong type (``train.lr='fast'``)
or an impossible value (``train.eval_every=0``) is one sentence, not a traceback from deep inside
torch. This module imports nothing of electra-kit, so any layer may use it.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable


class ConfigValueError(ValueError):
    """A configured value of the wrong type or range; the message names the binding."""


def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _path(v) -> bool:
    return isinstance(v, (str, os.PathLike)) and bool(os.fspath(v))


def _device(v) -> bool:
    if not isinstance(v, str):
        return False
    if v == "auto":
        return True
    import torch

    try:
        torch.device(v)
    except (RuntimeError, ValueError):
        return False
    return True


Check = tuple[str, Callable[[object], bool]]

POSITIVE_INT: Check = ("a positive integer", lambda v: _int(v) and v >= 1)
NON_NEGATIVE_INT: Check = ("an integer >= 0", lambda v: _int(v) and v >= 0)
POSITIVE_NUMBER: Check = ("a finite number > 0", lambda v: _number(v) and v > 0)
NON_NEGATIVE_NUMBER: Check = ("a finite number >= 0", lambda v: _number(v) and v >= 0)
BOOL: Check = ("True or False", lambda v: isinstance(v, bool))


def one_of(*choices) -> Check:
    return (f"one of {', '.join(map(repr, choices))}", lambda v: v in choices)


TRAIN: dict[str, Check] = {
    "steps": POSITIVE_INT,
    "batch_size": POSITIVE_INT,
    "lr": POSITIVE_NUMBER,
    "warmup_steps": NON_NEGATIVE_INT,
    "warmup_cap": ("None or a number in (0, 1]", lambda v: v is None or (_number(v) and 0 < v <= 1)),
    "weight_decay": NON_NEGATIVE_NUMBER,
    "layer_decay": ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1),
    "adam_betas": ("two numbers in [0, 1), e.g. (0.9, 0.999)",
                   lambda v: isinstance(v, (tuple, list)) and len(v) == 2 and all(_number(b) and 0 <= b < 1 for b in v)),
    "adam_eps": POSITIVE_NUMBER,
    "max_grad_norm": ("a number > 0", lambda v: isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0),
    "grad_accum_steps": POSITIVE_INT,
    "log_every": POSITIVE_INT,
    "eval_every": POSITIVE_INT,
    "eval_batches": POSITIVE_INT,
    "checkpoint_every": POSITIVE_INT,
    "keep_checkpoints": POSITIVE_INT,
    "device": ("'auto', 'cpu', 'cuda' or 'cuda:N'", _device),
    "precision": one_of("auto", "bf16", "fp32"),
    "compile": ("True, False or 'auto'", lambda v: isinstance(v, bool) or v == "auto"),
    "strategy": one_of("ddp", "fsdp"),
    "seed": NON_NEGATIVE_INT,
    "threads": ("None or a positive integer", lambda v: v is None or (_int(v) and v >= 1)),
    "max_bad_steps": POSITIVE_INT,
    "progress": BOOL,
}

BUILD_DATA: dict[str, Check] = {
    "corpus": ("None (the default corpus), a path or glob, or a list of them",
               lambda v: v is None or _path(v) or (isinstance(v, (list, tuple)) and all(_path(p) for p in v))),
    "vocab_size": ("an integer > 5 (the special tokens take 5)", lambda v: _int(v) and v > 5),
    "lowercase": BOOL,
    "max_seq_len": ("an integer >= 3", _int),  # the range has its own message in build_data
    "eval_fraction": ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1),
    "min_eval_sequences": NON_NEGATIVE_INT,
    "cache_dir": ("None or a folder path", lambda v: v is None or _path(v)),
    "text_field": ("a non-empty string", lambda v: isinstance(v, str) and bool(v)),
    "seed": NON_NEGATIVE_INT,
    "vocab_sample_mb": ("None (the whole corpus) or a number of megabytes > 0", lambda v: v is None or (_number(v) and v > 0)),
}


def check_values(configurable: str, values: dict, table: dict[str, Check]) -> None:
    """Raise :class:`ConfigValueError` for the first value in ``values`` that fails its ``table`` entry."""
    for name, (expected, ok) in table.items():
        if name in values and not ok(values[name]):
            raise ConfigValueError(f"{configurable}.{name}={values[name]!r}: must be {expected}")


def check_writable_dir(path: str | os.PathLike, what: str) -> None:
    """Create ``path`` if needed and prove it writable now, before hours are spent on what goes in it."""
    path = os.fspath(path)
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write-test-{os.getpid()}")
        with open(probe, "w") as f:
            f.write("ok")
        os.unlink(probe)
    except OSError as exc:
        raise ConfigValueError(f"{what} {path} is not writable ({exc.strerror or exc}); choose another") from None
