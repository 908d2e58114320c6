"""The one way a file or folder replaces another: build it beside the target, then rename.

A reader, or a writer killed at any instruction, sees the old version or the new one, never a
mix and never neither: a new file goes in with ``os.replace``; a new folder is swapped with the
old one in a single ``renameat2(RENAME_EXCHANGE)`` (Linux), and the old one is deleted only after
the new one is in place. Where the exchange is not available, the old folder is first renamed to
a backup sibling and :func:`recover_dir` puts it back if the writer died between the two renames.

A write that fails (a full disk, a folder made read-only) raises an ``OSError`` that names the target, whichever
writer failed: Python's ``write`` and numpy's ``tofile`` name no file, and writers in Rust (safetensors,
tokenizers) raise their own exceptions, which carry the OS's error code as ``(os error N)``.

Temporary names are ``.<name>.tmp-<pid>-<random>`` beside the target (same filesystem, so the
rename is atomic; unique, so two writers never share one). Ones left by a killed process (its
PID no longer running) are removed the next time the same target is written.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


_OS_ERROR = re.compile(r"\(os error (\d+)\)")


def failed_write(exc: BaseException, target: Path) -> OSError | None:
    """``exc`` as an ``OSError`` naming ``target``, if it is a failure of the OS (see the module docstring)."""
    if isinstance(exc, OSError):
        return exc if exc.filename is not None else OSError(exc.errno, exc.strerror or str(exc), str(target))
    m = _OS_ERROR.search(str(exc)) if isinstance(exc, Exception) else None
    return OSError(int(m[1]), os.strerror(int(m[1])), str(target)) if m else None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _temp_prefix(target: Path, kind: str) -> str:
    return f".{target.name}.{kind}-{os.getpid()}-"


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old)-(?P<pid>\d+)-[^/]*$")


def remove_stale_temps(folder: Path, name: str | None = None) -> None:
    """Delete temporaries in ``folder`` (of target ``name``, or of any) whose writer is dead.

    Only names of our own pattern are touched; a backup (``old``) whose target is missing is
    left for :func:`recover_dir`."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        m = _TEMP.match(path.name)
        if not m or (name is not None and m["name"] != name):
            continue
        pid = int(m["pid"])
        if pid == os.getpid() or _pid_alive(pid):
            continue
        if m["kind"] == "old" and not (folder / m["name"]).exists():
            continue
        _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


def _umask() -> int:
    """The process's umask, read without changing it where Linux says it (``os.umask`` both sets and gets)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def plain_mode(path: Path, *, folder: bool = False) -> None:
    """Give a temporary made by ``mkstemp`` (0600) or ``mkdtemp`` (0700), or a file a library wrote that way
    (safetensors' ``save_file``), the mode a plain ``open``/``mkdir`` would: 0666 (0777 for a folder or an
    executable) less the user's umask, so a folder shared with a team stays readable to it."""
    executable = folder or os.stat(path).st_mode & 0o100
    os.chmod(path, (0o777 if executable else 0o666) & ~_umask())


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def atomic_write(path: str | os.PathLike, data: str | bytes | None = None, *,
                 writer: Callable[[Path], object] | None = None) -> Path:
    """Write ``data`` (or call ``writer(tmp_path)``) to a temporary sibling, fsync, rename onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path, "tmp"))
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            if data is not None:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        if writer is not None:
            writer(tmp)
        plain_mode(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        _remove(tmp)
        if (named := failed_write(exc, path)) not in (None, exc):
            raise named from exc
        raise
    return path


def publish_file(path: str | os.PathLike, writer: Callable[[Path], object]) -> bool:
    """Write ``path`` only if absent (a cache entry several processes may race to create): built
    under a temporary name, then linked into place; True if ours won. Nothing is ever overwritten."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=_temp_prefix(path, "tmp"))
    os.close(fd)
    tmp = Path(name)
    try:
        writer(tmp)
        plain_mode(tmp)
        _fsync_file(tmp)
        try:
            os.link(tmp, path)  # atomic create-if-absent
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links
            if path.exists():
                return False
            os.replace(tmp, path)
            return True
    except Exception as exc:
        if (named := failed_write(exc, path)) not in (None, exc):
            raise named from exc
        raise
    finally:
        _remove(tmp)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically; False where the OS or filesystem cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_in(tmp: Path, target: Path, *, replace: bool) -> None:
    """Put the finished folder ``tmp`` at ``target``; an old ``target`` is deleted only afterwards."""
    tmp, target = Path(tmp), Path(target)
    if not target.exists() and not target.is_symlink():
        os.rename(tmp, target)  # fails (rather than merging) if someone made a non-empty target meanwhile
    elif not replace:
        raise FileExistsError(f"{target} exists")
    elif _exchange(tmp, target):
        _remove(tmp)  # now holds the old version
    else:
        backup = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target, "old")))
        os.rmdir(backup)
        os.rename(target, backup)
        os.rename(tmp, target)
        _remove(backup)
    fsync_dir(target.parent)


def recover_dir(target: Path) -> None:
    """Put back the old version of ``target`` if its writer died between the two renames of the fallback swap."""
    target = Path(target)
    if target.exists() or not target.parent.is_dir():
        return
    for backup in sorted(target.parent.iterdir()):
        m = _TEMP.match(backup.name)
        if m and m["name"] == target.name and m["kind"] == "old" and not _pid_alive(int(m["pid"])):
            os.rename(backup, target)
            return


def recover_all(folder: Path) -> None:
    """:func:`recover_dir` for every target in ``folder`` whose swap was cut short."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for name in {m["name"] for p in folder.iterdir() if (m := _TEMP.match(p.name)) and m["kind"] == "old"}:
        recover_dir(folder / name)


def _settle_tree(folder: Path) -> None:
    """Plain modes (:func:`plain_mode`) and fsync for everything in a staged folder, before it is swapped in."""
    for root, dirs, files in os.walk(folder):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):  # chmod would follow a link out of the folder
                plain_mode(Path(root) / name)
            _fsync_file(Path(root) / name)
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                plain_mode(Path(root) / name, folder=True)
        fsync_dir(Path(root))


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike, *, replace: bool = True) -> Iterator[Path]:
    """``with staged_dir(folder) as tmp: write into tmp`` -- on success ``tmp`` becomes ``folder``
    (replacing an old one only if ``replace``); on any error the temporary folder is removed and
    ``folder`` is untouched."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_dir(target)
    remove_stale_temps(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=_temp_prefix(target, "tmp")))
    try:
        yield tmp
        plain_mode(tmp, folder=True)
        _settle_tree(tmp)
        swap_in(tmp, target, replace=replace)
    except BaseException as exc:
        _remove(tmp)
        if (named := failed_write(exc, target)) not in (None, exc):
            raise named from exc
        raise
