"""What a fine-tuning run is asked to do. One field per setting carries its default, its check and its help:
the ``electra-kit finetune`` flags, their checks and the defaults their help shows are derived from it
(:func:`add_flags`), never restated by hand."""

from __future__ import annotations

import argparse
from dataclasses import MISSING, dataclass, field, fields

from ..config.checks import (
    NON_NEGATIVE_INT,
    NON_NEGATIVE_NUMBER,
    POSITIVE_INT,
    POSITIVE_NUMBER,
    TRAIN,
    Check,
    ConfigValueError,
    _int,
    _number,
    one_of,
)

FRACTION: Check = ("a number in [0, 1)", lambda v: _number(v) and 0 <= v < 1)


def setting(default, help: str, check: Check | None = None, *, flag: bool = True, type=None, choices=None):
    """A field of :class:`FinetuneConfig`; ``flag``: offered on the command line as ``--name-with-dashes``."""
    return field(default=default, metadata={"help": help, "check": check, "flag": flag, "type": type,
                                            "choices": choices})


@dataclass
class FinetuneConfig:
    lr: float = setting(3e-4, "peak learning rate of the head (ELECTRA-Small's)", POSITIVE_NUMBER)
    layer_decay: float = setting(0.8, "layer-wise learning-rate decay",
                                 ("a number in (0, 1]", lambda v: _number(v) and 0 < v <= 1))
    warmup_fraction: float = setting(0.1, "of the steps, spent warming the learning rate up", FRACTION)
    # the most; the best epoch on the validation split is kept (bench/RESULTS.md, issue 11 s. 8)
    epochs: float = setting(20.0, "the most epochs trained; the best on --val-fraction is kept", POSITIVE_NUMBER)
    batch_size: int = setting(32, "examples per step", POSITIVE_INT)
    eval_batch_size: int = setting(128, "examples per evaluation batch", POSITIVE_INT, flag=False)
    weight_decay: float = setting(0.0, "AdamW's weight decay", NON_NEGATIVE_NUMBER)
    adam_eps: float = setting(1e-6, "AdamW's epsilon", POSITIVE_NUMBER, flag=False)
    max_grad_norm: float = setting(1.0, "gradient clipping", POSITIVE_NUMBER, flag=False)
    dropout: float = setting(0.1, "dropout of the encoder and the head", FRACTION)
    max_seq_len: int | None = setting(None, "tokens per example (default: the model's)",
                                      ("an integer >= 5 (room for [CLS] text [SEP] pair [SEP])",
                                       lambda v: _int(v) and v >= 5), type=int)
    seeds: int = setting(1, "fine-tune N times (seeds first-seed..), report each and the median", POSITIVE_INT)
    first_seed: int = setting(0, "the first fine-tuning seed", NON_NEGATIVE_INT)
    threads: int | None = setting(None, "CPU threads (default: $OMP_NUM_THREADS, else the idle cores)",
                                  TRAIN["threads"], type=int)
    pooling: str = setting("cls", "what the classification head reads: the first token or the mean of all tokens",
                           one_of("cls", "mean"), choices=("cls", "mean"))
    random_init: bool = setting(False, "same architecture and tokenizer, untrained weights (the no-pretraining "
                                "baseline)")
    val_fraction: float = setting(0.1, "of --train, held out (seeded) to choose the epoch; 0: the last epoch",
                                  FRACTION)
    split_seed: int = setting(0, "the validation split's seed (the same split for every seed)", NON_NEGATIVE_INT,
                              flag=False)
    # 0: stopping early cut pretrained encoders off before the decaying lr let them improve; random init lost
    # nothing by training every epoch (bench/RESULTS.md, issue 29 s. 16)
    patience: int | None = setting(0, "stop after N epochs without a better validation score (0: never)",
                                   ("an integer >= 0 (0: never stop early)", lambda v: _int(v) and v >= 0),
                                   type=int)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N", TRAIN["device"])
    progress: bool = setting(True, "the progress bar", flag=False)  # the CLI offers --no-progress

    def __post_init__(self):
        for f in fields(self):
            check, value = f.metadata.get("check"), getattr(self, f.name)
            if check is not None and value is not None and not check[1](value):
                raise ConfigValueError(f"--{f.name.replace('_', '-')} {value!r}: must be {check[0]}")


def add_flags(parser: argparse.ArgumentParser, cls=FinetuneConfig) -> None:
    """One ``--flag`` per field of ``cls`` offered on the command line, its help ending in the field's default.
    A flag not given parses to None: the dataclass's default applies (see :func:`from_flags`)."""
    for f in fields(cls):
        if not f.metadata.get("flag"):
            continue
        name, default = "--" + f.name.replace("_", "-"), f.default if f.default is not MISSING else None
        if isinstance(default, bool):
            parser.add_argument(name, action="store_true", default=None, help=f.metadata["help"])
            continue
        kind = f.metadata.get("type") or type(default)
        parser.add_argument(name, type=kind, choices=f.metadata.get("choices"),
                            help=f.metadata["help"] if default is None else f"{f.metadata['help']} ({default})")


def from_flags(args: argparse.Namespace, cls=FinetuneConfig, **fixed):
    """``cls`` from the flags ``add_flags`` made (those given; the defaults for the rest) and ``fixed`` values."""
    given = {f.name: getattr(args, f.name) for f in fields(cls) if f.metadata.get("flag")}
    return cls(**{k: v for k, v in given.items() if v is not None}, **fixed)
