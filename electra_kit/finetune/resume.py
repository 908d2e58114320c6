"""What lets a fine-tuning run resume: the request it records, the check that a resume asks the same, and what a
run killed at any instant left (finished seeds, the kept model). The rest is the training loop's checkpoints."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

from ..rundir.checkpoint import file_sha256
from ..rundir.directory import RunDirError

REQUEST = "finetune.json"  # what the run was asked: a resume must ask the same
SEED_RESULT = "result.json"  # in seed_N/: written when the seed is done
# what a resume may change: which seeds, and where and how they run
RESUME_MAY_CHANGE = ("seeds", "first_seed", "threads", "device", "progress")


def fine_tuning_request(model_dir, spec, cfg) -> dict:
    """The model, the files (path and content) and every setting that decides a seed's result."""
    def file(path) -> dict:
        return {"path": str(Path(path).resolve()), "sha256": file_sha256(Path(path))}

    return {"model": str(Path(model_dir).resolve()), "train": file(spec.train), "eval": file(spec.eval),
            "task": {k: v for k, v in asdict(spec).items() if k not in ("train", "eval")},
            "recipe": {k: v for k, v in asdict(cfg).items() if k not in RESUME_MAY_CHANGE}}


def check_request(run_dir: Path, now: dict) -> None:
    """Refuse a resume that would continue ``run_dir`` with another model, other files or other settings,
    naming each difference as the flag that makes it."""
    path = run_dir / REQUEST
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunDirError(nothing_to_resume(run_dir)) from None
    except (OSError, ValueError) as exc:
        raise RunDirError(f"--resume: {path} cannot be read ({exc}); choose another --run-dir") from None
    if not isinstance(before, dict):
        raise RunDirError(f"--resume: {path} is not a fine-tuning request; choose another --run-dir")
    differences = [] if before.get("model") == now["model"] else [f"--model {before.get('model')} (now {now['model']})"]
    for name in ("train", "eval"):
        old = before.get(name) if isinstance(before.get(name), dict) else {}
        if old.get("path") != now[name]["path"]:
            differences.append(f"--{name} {old.get('path')} (now {now[name]['path']})")
        elif old.get("sha256") != now[name]["sha256"]:
            differences.append(f"--{name} {now[name]['path']} as it was then (its content has changed since)")
    for group in ("task", "recipe"):
        old = before.get(group) if isinstance(before.get(group), dict) else {}
        differences += [_flag(key, old.get(key), value) for key, value in now[group].items()
                        if key not in old or old[key] != value]
    if differences:
        raise RunDirError(f"--resume: {run_dir} was fine-tuned with {'; '.join(differences)}. Resume with the same "
                          f"model, files and settings (only --seeds, --first-seed, --threads and --device may "
                          f"change), or start a new run with another --run-dir")


def _flag(key: str, old, new) -> str:
    if key == "header":  # the flag says the opposite
        return f"--no-header {old is False} (now {new is False})"
    return f"--{key.replace('_', '-')} {old} (now {new})"


def nothing_to_resume(run_dir: Path) -> str:
    return (f"--resume: nothing to resume in {run_dir} (no {REQUEST}: not a fine-tuning run directory, or one "
            f"written before fine-tuning could resume); start a new run with another --run-dir")


def finished_seed(seed_dir: Path) -> dict | None:
    """The result a seed wrote when it was done; None for a seed not done (or a result.json not whole)."""
    try:
        result = json.loads((seed_dir / SEED_RESULT).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return result if isinstance(result, dict) and "metrics" in result else None
