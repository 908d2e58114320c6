"""``--resume`` restores a run; it never rebuilds one from today's files.

The run's own config is read from its run directory (the checkpoint's copy if that is missing),
and the tokenizer from the checkpoint, so an empty cache, another machine or a ``touch`` of the
corpus cannot change a token id. Bindings given with ``--resume`` may change only what does not
alter what is learned (``RESUMABLE``); each change is printed. Fingerprints stored in every
checkpoint (the data's token stream and split, the operative config) are compared after the
build, and a resume against other data or another config is refused with the reason.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import gin

from ..config import gin_config
from ..rundir import checkpoint as ckpt

# bindings a resumed run may change: the length of the run, logging, evaluation and checkpoint cadence
RESUMABLE = ("train.steps", "train.log_every", "train.eval_every", "train.eval_batches", "train.checkpoint_every",
             "train.keep_checkpoints", "train.progress", "tracking.uri", "tracking.experiment", "tracking.enabled")
RUN_CONFIG = "operative_config.gin"
# compared through the data fingerprint instead: a resume passes the checkpoint's tokenizer itself
COMPARED_ELSEWHERE = ("build_data.tokenizer",)


class ResumeError(RuntimeError):
    """A resume that would not continue the same run; the message says what differs."""


def flatten(config_text: str) -> dict[str, str]:
    """``{binding: value}`` of a gin config string, macros resolved into the values that use them (gin's own
    parser: :func:`~electra_kit.config.gin_config.flatten_gin_config`); the macros themselves are left out, so
    ``TRAIN_STEPS = 16`` reads as the change of ``train.steps`` it makes."""
    return {k: v for k, v in gin_config.flatten_gin_config(config_text).items() if "." in k}


def _fixed(entries: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in entries.items() if k not in RESUMABLE and k not in COMPARED_ELSEWHERE}


def config_fingerprint(operative_config: str) -> str:
    """Of everything in the operative config that a resume may not change."""
    fixed = _fixed(flatten(operative_config))
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:16]


def _differences(old: dict[str, str], new: dict[str, str]) -> list[str]:
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return [f"{k}: {old.get(k, '(unset)')} -> {new.get(k, '(unset)')}" for k in keys]


def run_config_file(run_dir: Path, checkpoint: Path | None) -> Path:
    own = Path(run_dir) / RUN_CONFIG
    return own if own.is_file() or checkpoint is None else checkpoint / RUN_CONFIG


def parse_run_config(run_dir: Path, checkpoint: Path | None, config_files: list[str], bindings: list[str]) -> list[Path]:
    """Parse the run's own config plus the ``RESUMABLE`` bindings; refuse other changes before anything is built.
    ``checkpoint`` None: a run stopped before its first checkpoint, restarted from its run directory's config.
    Returns the config files the run was started from, as its checkpoint records them (none where it has none)."""
    state = json.loads((checkpoint / "trainer_state.json").read_text()) if checkpoint is not None else {}
    recorded = [Path(p) for p in state.get("config_files", [])]
    if config_files and recorded:
        given = [gin_config.resolve_config(f) for f in config_files]
        if given != recorded:
            raise ResumeError(
                f"--resume continues {run_dir} with its own config (from {', '.join(p.name for p in recorded)}); "
                f"the config files given ({', '.join(config_files)}) are not the ones it ran with: drop them, "
                f"or start a new run")
    source = run_config_file(run_dir, checkpoint)
    gin_config.parse([str(source)], [])
    before = flatten(gin.config_str())
    gin_config.parse([str(source)], bindings)
    after = flatten(gin.config_str())
    changes = _differences(before, after)
    refused = [c for c in changes if c.split(":", 1)[0] not in RESUMABLE]
    if refused:
        raise ResumeError(
            f"--resume: these bindings would change the run in {run_dir}, not continue it: {'; '.join(refused)}. "
            f"On resume only {', '.join(RESUMABLE)} may change; start a new run for anything else")
    for change in changes:
        print(f"electra-kit: --resume: {change}", file=sys.stderr)
    return recorded


def check_steps(checkpoint: Path, steps: int) -> None:
    """A resume can lengthen a run, not shorten it below what is already trained."""
    done = json.loads((checkpoint / "trainer_state.json").read_text()).get("step", 0)
    if steps < done:
        raise ResumeError(f"--resume: train.steps={steps} is below the {done} steps {checkpoint.name} has already "
                          f"trained; give train.steps >= {done}")


def checkpoint_tokenizer(checkpoint: Path):
    """The tokenizer the run trained with, from its checkpoint (None for checkpoints of older versions)."""
    path = checkpoint / ckpt.TOKENIZER_FILE
    if not path.is_file():
        print(f"electra-kit: --resume: {checkpoint} carries no tokenizer (written by an older electra-kit); "
              f"the tokenizer is rebuilt from the corpus and may assign other ids", file=sys.stderr)
        return None
    from tokenizers import Tokenizer

    try:
        return Tokenizer.from_file(str(path))
    except Exception as exc:  # tokenizers raises a bare Exception
        raise ResumeError(f"--resume: {path} cannot be read ({exc}); the checkpoint is damaged") from None


def data_record(data) -> dict:
    return {"fingerprint": data.fingerprint, "n_tokens": int(data.n_tokens), "n_files": len(data.files)}


def check_same_run(checkpoint: Path, data, operative_config: str) -> None:
    """Refuse a resume whose data or fixed config differ from the checkpoint's."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    old = state.get("data_identity")
    if isinstance(old, dict) and old.get("fingerprint") not in (None, data.fingerprint):
        raise ResumeError(
            f"--resume refused: the training data differ from those the run in {checkpoint.parent.parent} was "
            f"trained on (now {data.n_tokens} tokens from {len(data.files)} files; then {old.get('n_tokens')} tokens "
            f"from {old.get('n_files')} files; the corpus content, tokenizer or split changed). Restore that "
            f"corpus, or start a new run")
    stored = checkpoint / RUN_CONFIG
    diff = _differences(_fixed(flatten(stored.read_text())), _fixed(flatten(operative_config)))
    if diff:
        raise ResumeError(
            f"--resume refused: the config now differs from the one {checkpoint.name} was written with: "
            f"{'; '.join(diff[:5])}{' ...' if len(diff) > 5 else ''} (another electra-kit version, or an edited "
            f"{RUN_CONFIG}?). Start a new run, or resume with the version that wrote it")


def continue_command(run_dir: Path, *, tracking: bool, tracking_uri: str | None, experiment: str | None) -> str:
    """The command that resumes exactly this run (its config and tokenizer come from the run directory)."""
    import shlex

    parts = ["electra-kit", "run", "--run-dir", str(run_dir), "--resume"]
    if not tracking:
        parts.append("--no-tracking")
    if tracking_uri:
        parts += ["--tracking-uri", tracking_uri]
    if experiment:
        parts += ["--experiment", experiment]
    return shlex.join(parts)
