"""What a command may replace: one rule for every command that writes (DESIGN.md, convention 10).

A command never replaces, and never writes inside,

- one of its own inputs: the output resolves (symlinks, ``..``, hard links) to an input, lies inside
  an input folder, or, being a folder replaced whole, holds an input;
- a special file: a FIFO, a device (``/dev/null`` included: replacing it would leave a regular file
  where the system's device was) or a socket;
- a folder electra-kit did not make, or made for something else: a folder the kit makes (a run
  directory, a model folder, an export) carries the marker file ``.electra-kit.json`` saying what it
  is; an output folder is replaced only when it is empty or is a kit-made folder of the same kind, and
  a run directory's contents belong to its run.

:func:`check_output` says so in one line naming the path (an :class:`OutputError`, a ``ValueError``:
the command line exits 2) before anything is written; :func:`mark` puts the marker in a folder being made.
"""

from __future__ import annotations

import fnmatch
import json
import os
import stat
from collections.abc import Iterable
from pathlib import Path

MARKER = ".electra-kit.json"
KINDS = ("file", "folder", "run")  # what the output is: a file replaced whole, a folder replaced whole, a run directory


class OutputError(ValueError):
    """An output that would replace what it must not; the message names it and says what to do."""


def mark(folder: str | os.PathLike, kind: str) -> None:
    """Say in ``folder`` (being made by electra-kit) what it is: ``run``, ``model`` or ``export``."""
    Path(folder, MARKER).write_text(json.dumps({"made_by": "electra-kit", "kind": kind}) + "\n", encoding="utf-8")


def made_as(folder: str | os.PathLike) -> str | None:
    """What electra-kit made ``folder`` as (its marker's kind), or None where it did not make it."""
    try:
        marker = json.loads(Path(folder, MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker.get("kind") if isinstance(marker, dict) and marker.get("made_by") == "electra-kit" else None


def special_kind(path: Path) -> str | None:
    """``FIFO``, ``device`` or ``socket`` where ``path`` (followed through links) is one, else None."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return None
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    if stat.S_ISSOCK(mode):
        return "socket"
    return None


def is_devnull(path: str | os.PathLike) -> bool:
    """Whether ``path`` is (a link to) the null device: an output a command may write to, never replace."""
    try:
        return os.path.samefile(path, os.devnull)
    except OSError:
        return False


def _same(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_output(path: str | os.PathLike, *, inputs: Iterable = (), kind: str = "file", made: str | None = None,
                 replace: bool = False, option: str = "--output", writes: Iterable[str] = (),
                 devnull: bool = False) -> Path:
    """Refuse ``path`` as an output of a command reading ``inputs``; returns it as a ``Path``.

    ``kind``: ``file`` (replaced whole), ``folder`` (replaced whole; ``made`` is the marker kind it
    may replace, and only with ``replace``) or ``run`` (a run directory written into: ``writes`` are
    the names, glob patterns, the run writes at its top, none of which may be an input). ``devnull``:
    the null device is allowed (the caller then writes nothing, see :func:`is_devnull`)."""
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; one of {', '.join(KINDS)}")
    out = Path(path)
    if devnull and kind == "file" and is_devnull(out):
        return out
    dst = out.resolve()
    special = special_kind(out)
    if special is not None:
        raise OutputError(f"{option} {out} is a {special}, not a regular {'file' if kind == 'file' else 'folder'}: "
                          f"electra-kit never replaces a special file; name a new path")
    for given in inputs:
        if given is not None:
            _check_not_input(out, dst, Path(given), kind, option, writes)
    above = next((p for p in dst.parents if p.exists()), None)
    if above is not None and not above.is_dir():
        raise OutputError(f"{option} {out} is under {above}, which is a file, not a folder; choose another path")
    owner = _kit_folder_above(dst)
    if owner is not None:
        folder, what = owner
        raise OutputError(f"{option} {out} is inside {folder}, a {what} folder electra-kit made for something else; "
                          f"choose a path outside it")
    if kind == "file":
        if out.is_dir():
            raise OutputError(f"{option} {out} is a folder; name a file")
        return out
    if out.exists() and not out.is_dir():
        raise OutputError(f"{option} {out} is a file, not a folder; choose another path")
    if kind == "folder" and Path.cwd().resolve().is_relative_to(dst):
        raise OutputError(f"{option} {out} is or holds the current folder: it is never replaced; choose a new folder")
    if kind == "folder" and out.is_dir() and any(out.iterdir()):
        found = made_as(out)
        if found is None:
            raise OutputError(f"{option} {out} is a folder electra-kit did not make (no {MARKER}) and it is not "
                              f"empty: it is never replaced; choose a new or empty folder")
        if found != made:
            raise OutputError(f"{option} {out} is a {found} folder, not {_article(made)} {made} folder: it is never "
                              f"replaced by this command; choose a new or empty folder")
        if not replace:
            raise OutputError(f"{option} {out} exists and is not empty; pass --overwrite to replace it")
    return out


def _check_not_input(out: Path, dst: Path, given: Path, kind: str, option: str, writes: Iterable[str]) -> None:
    """``out`` (resolved: ``dst``) is not the input ``given``, inside it, or (unless a run directory that writes
    none of it) around it."""
    src = given.resolve()
    if _same(out, given):
        raise OutputError(f"{option} {out} is an input of this command ({given}); choose another path")
    if src.is_dir() and dst.is_relative_to(src):
        raise OutputError(f"{option} {out} is inside the input folder {given}: writing it would change "
                          f"that input; choose a path outside {given}")
    if src.is_relative_to(dst) and kind != "run":
        raise OutputError(f"{option} {out} holds the input {given}: replacing it would destroy that input; "
                          f"choose another path")
    if kind == "run" and src.is_relative_to(dst):
        top = src.relative_to(dst).parts[0]
        if any(fnmatch.fnmatchcase(top, pattern) for pattern in writes):
            raise OutputError(f"{option} {out}: the run would write {dst / top}, which is the input {given}; "
                              f"choose another run directory")


def _article(word: str | None) -> str:
    return "an" if word and word[0] in "aeiou" else "a"


def _kit_folder_above(dst: Path) -> tuple[Path, str] | None:
    """The nearest folder above ``dst`` that electra-kit made (a run directory, a model folder ...)."""
    for folder in dst.parents:
        found = made_as(folder)
        if found is not None:
            return folder, found
    return None
