"""The one model a fine-tuning run keeps: which seed (the best validation score), its model folder, and what
results.json says of it."""

from __future__ import annotations

from pathlib import Path

from ..modelfolder.pretrained import read_config, save_pretrained
from .model import SequenceModel


def selected_epoch(result: dict) -> dict:
    """A seed result's record of the epoch it kept ({} if none was recorded)."""
    return next((e for e in result["epochs"] if e["epoch"] == result["selected_epoch"]), {})


def keep_seed(new: dict, old: dict, metric: str) -> bool:
    """Whether seed result ``new`` replaces ``old`` as the kept model: a better score on the validation
    split (ties keep the earlier seed); without a split, the later seed. Never the evaluation file's score."""
    key = f"val_{metric}"
    new_epoch, old_epoch = selected_epoch(new), selected_epoch(old)
    if key not in new_epoch or key not in old_epoch:
        return True
    return new_epoch[key] > old_epoch[key]


def save_kept_model(model_dir, model: SequenceModel, result: dict, folder: Path) -> None:
    """Write ``model`` as a model folder (pretrained.py's, plus the task), atomically."""
    from tokenizers import Tokenizer

    config = read_config(model_dir)
    operative = Path(model_dir) / "operative_config.gin"
    model.task_config["finetuned_from"] = str(Path(model_dir).resolve())
    model.task_config["epoch"] = result["selected_epoch"]
    save_pretrained(model, folder, tokenizer=Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json")),
                    special_ids=config.get("special_ids"), max_seq_len=config.get("max_seq_len"),
                    operative_config=operative.read_text(encoding="utf-8") if operative.is_file() else "")


def kept_model_record(result: dict, folder: Path, metric: str) -> dict:
    """What results.json says of the kept model: where it is, which seed and epoch, why, and its scores."""
    epoch = selected_epoch(result)
    chosen_by = f"val_{metric}" if f"val_{metric}" in epoch else "last seed (no validation split)"
    return {"path": str(folder.resolve()), "seed": result["seed"], "epoch": result["selected_epoch"],
            "chosen_by": chosen_by, **({chosen_by: epoch[chosen_by]} if chosen_by in epoch else {}),
            "metrics": result["metrics"]}


def kept_in(folder: Path) -> tuple[int, int] | None:
    """(seed, epoch) of the model a run's model folder holds; None when there is none."""
    try:
        task = read_config(folder).get("task", {})
        return task["seed"], task["epoch"]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
