"""Atomic checkpoints that a killed run resumes from, bit for bit.

A checkpoint is a folder ``step_00001000/`` holding the model weights (safetensors), the
optimizer/scheduler/RNG state (a torch file read back with ``weights_only=True``), the trainer
state (JSON), the operative gin config, the run's tokenizer, and a manifest of SHA-256 sums written last. It is built
under a temporary name and renamed into place, so a crash mid-write leaves the previous
checkpoint as the latest; a truncated or corrupt one fails its manifest and is skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .atomic import recover_all, remove_stale_temps, staged_dir

MANIFEST = "manifest.json"
REQUIRED_FILES = ("model.safetensors", "state.pt", "trainer_state.json", "operative_config.gin")
TOKENIZER_FILE = "tokenizer.json"  # carried since the run itself is restored from the checkpoint
PREFIX = "step_"


class CheckpointError(RuntimeError):
    pass


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_file(path: Path, write) -> None:
    write(path)
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def save_weights(state: dict[str, torch.Tensor], path: Path) -> None:
    """safetensors of a full state dict; tensors shared under several names (tied embeddings)
    are stored once and the other names recorded as aliases."""
    unique, aliases, seen = {}, {}, {}
    for name, tensor in state.items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape), tensor.stride())
        if tensor.numel() and key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            unique[name] = tensor.detach().contiguous()
    save_file(unique, str(path), metadata={"aliases": json.dumps(aliases)})


def _save_torch(state: dict, path: Path) -> None:
    with open(path, "wb") as f:  # Python's file: a full disk is an OSError (torch's own writer: a RuntimeError)
        torch.save(state, f)


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    state = load_file(str(path))
    for name, canonical in aliases.items():
        state[name] = state[canonical]
    return state


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    *,
    model_state: dict[str, torch.Tensor],
    torch_state: dict,
    trainer_state: dict,
    operative_config: str,
    keep: int = 3,
    files: dict[str, str] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically, then keep only the newest ``keep``.

    ``files``: more text files to carry (name -> content), e.g. the run's ``tokenizer.json``."""
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(ckpt_dir)  # leftovers of killed writers, our own names only
    final = ckpt_dir / f"{PREFIX}{step:08d}"
    # re-saving the same step (end of run right after a periodic save) swaps the folder whole
    with staged_dir(final) as tmp:
        _write_file(tmp / "model.safetensors", lambda p: save_weights(model_state, p))
        _write_file(tmp / "state.pt", lambda p: _save_torch(torch_state, p))
        _write_file(tmp / "trainer_state.json", lambda p: p.write_text(json.dumps(trainer_state, indent=1)))
        _write_file(tmp / "operative_config.gin", lambda p: p.write_text(operative_config))
        for name, text in (files or {}).items():
            _write_file(tmp / name, lambda p, text=text: p.write_text(text, encoding="utf-8"))
        sums = {f.name: file_sha256(f) for f in sorted(tmp.iterdir())}
        _write_file(tmp / MANIFEST, lambda p: p.write_text(json.dumps({"step": step, "sha256": sums}, indent=1)))
    for old in list_checkpoints(ckpt_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def list_checkpoints(ckpt_dir: Path) -> list[Path]:
    """Finished checkpoint folders, newest first (temporary ones are ignored)."""
    if not Path(ckpt_dir).is_dir():
        return []
    recover_all(ckpt_dir)  # a same-step re-save cut between its two renames (filesystems without exchange)
    found = [p for p in Path(ckpt_dir).iterdir() if p.is_dir() and p.name.startswith(PREFIX)]
    return sorted(found, key=lambda p: p.name, reverse=True)


def _manifest_sums(path: Path) -> dict[str, str] | str:
    """The manifest's ``{file: sha256}``, or what is wrong with it; its shape is never trusted."""
    try:
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        return f"unreadable manifest: {exc}"
    sums = manifest.get("sha256") if isinstance(manifest, dict) else None
    if not isinstance(sums, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in sums.items()):
        return "the manifest is not a {file: sha256} record"
    bad = [name for name in sums if name in ("", ".", "..") or "/" in name or "\\" in name or name == MANIFEST]
    if bad:
        return f"the manifest names files outside the checkpoint: {bad[:3]}"
    missing = [name for name in REQUIRED_FILES if name not in sums]
    if missing:
        return f"the manifest does not list {', '.join(missing)}"
    step = manifest.get("step")
    if not isinstance(step, int) or (path.name.startswith(PREFIX) and path.name != f"{PREFIX}{step:08d}"):
        return f"the manifest is for step {step!r}, not this folder's"
    return sums


def verify(path: Path) -> str | None:
    """None if the checkpoint is intact, else what is wrong with it."""
    if not (path / MANIFEST).is_file():
        return "no manifest (the write never finished)"
    sums = _manifest_sums(path)
    if isinstance(sums, str):
        return sums
    for name, expected in sums.items():
        f = path / name
        if not f.is_file():
            return f"{name} is missing"
        if file_sha256(f) != expected:
            return f"{name} does not match its checksum (truncated or corrupt)"
    return None


def latest_valid_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest intact checkpoint; corrupt ones are reported and skipped."""
    for path in list_checkpoints(ckpt_dir):
        problem = verify(path)
        if problem is None:
            return path
        warnings.warn(f"electra-kit: checkpoint {path} is unusable ({problem}); trying the previous one", RuntimeWarning, stacklevel=2)
    return None


def load_checkpoint(path: Path) -> tuple[dict, dict, dict]:
    """``(model_state, torch_state, trainer_state)`` of an intact checkpoint; nothing is unpickled."""
    path = Path(path)
    model_state = load_weights(path / "model.safetensors")
    torch_state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
    trainer_state = json.loads((path / "trainer_state.json").read_text())
    return model_state, torch_state, trainer_state


def check_fits(path: Path, model_state: dict, model: torch.nn.Module) -> None:
    """Raise ``CheckpointError`` unless ``model_state`` has exactly the model's names and shapes."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in model_state.items()}
    missing, unexpected = sorted(expected.keys() - got.keys()), sorted(got.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & got.keys() if expected[k] != got[k])
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{label}: {names[:3]}" for label, names in
            (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong)) if names
        )
        raise CheckpointError(
            f"checkpoint {path} does not fit this model (was it written by another config?): {detail}. "
            f"Resume with the config that wrote it (its operative_config.gin is in the checkpoint)"
        )
