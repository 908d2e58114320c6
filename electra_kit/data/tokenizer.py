"""WordPiece tokenizers: train one (BERT-style, fixed special ids), or load a user's own.

A trained tokenizer always has ``[PAD]=0, [UNK]=1, [MASK]=2, [CLS]=3, [SEP]=4``, so the objective's
defaults (``pad_token_id=0``, ``mask_token_id=2``) match it. A user's ``tokenizer.json`` or BERT
``vocab.txt`` keeps its own ids: look them up with :func:`special_ids`, never assume them.

Everything here works on a Hugging Face ``tokenizers.Tokenizer``; reading the corpus is data.py's
job, this file only sees an iterator of texts.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

from ..rundir.atomic import atomic_write

PAD, UNK, MASK, CLS, SEP = "[PAD]", "[UNK]", "[MASK]", "[CLS]", "[SEP]"
SPECIAL_TOKENS = (PAD, UNK, MASK, CLS, SEP)  # this order gives the ids 0..4 of a trained vocab
REQUIRED_SPECIAL_TOKENS = (PAD, MASK, CLS, SEP)  # [UNK] may be absent from a user's tokenizer
# Bump when the trained pipeline changes, so cached vocabularies from older code are not reused.
TOKENIZER_FORMAT_VERSION = 2  # 2: deterministic training (train_wordpiece)
MIN_FREQUENCY = 2  # as BertWordPieceTokenizer; rarer words become sub-words, so a small corpus
# may give fewer than ``vocab_size`` entries: always use the tokenizer's real size.
TOKENIZER_FILE = "tokenizer.json"


@dataclass(frozen=True)
class SpecialIds:
    pad_id: int
    unk_id: int | None
    mask_id: int
    cls_id: int
    sep_id: int

    def by_role(self) -> dict[str, int | None]:
        """``{"pad": 0, "unk": 1, ...}``: the form objectives (``special_token_kwargs``) and model folders take."""
        return {"pad": self.pad_id, "unk": self.unk_id, "mask": self.mask_id, "cls": self.cls_id, "sep": self.sep_id}


def _bert_pipeline(tok: Tokenizer, lowercase: bool) -> Tokenizer:
    """BERT normalizer (clean text, CJK split, lowercase + NFD + strip accents when ``lowercase``),
    BERT pre-tokenizer (whitespace + punctuation), ``##`` WordPiece decoder."""
    tok.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    return tok


def _add_post_processor(tok: Tokenizer) -> Tokenizer:
    """``[CLS] A [SEP]`` for users who call ``tok.encode`` directly (electra-kit itself encodes
    with ``add_special_tokens=False`` and adds them, so any user tokenizer behaves the same)."""
    cls_id, sep_id = tok.token_to_id(CLS), tok.token_to_id(SEP)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{CLS} $A {SEP}",
        pair=f"{CLS} $A {SEP} $B:1 {SEP}:1",
        special_tokens=[(CLS, cls_id), (SEP, sep_id)],
    )
    return tok


def _wordpiece_trainer(vocab_size: int, special_tokens: list[str], alphabet: list[str] | None = None):
    return trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=MIN_FREQUENCY,
        show_progress=False,
        special_tokens=special_tokens,
        limit_alphabet=1000 if alphabet is None else len(alphabet),
        initial_alphabet=alphabet or [],
        continuing_subword_prefix="##",
    )


def _train_once(texts: Iterable, trainer, lowercase: bool) -> dict[str, int]:
    tok = _bert_pipeline(Tokenizer(models.WordPiece(unk_token=UNK)), lowercase)
    _interruptible(lambda: tok.train_from_iterator(texts, trainer))
    return tok.get_vocab(with_added_tokens=False)


def _replayable(texts) -> Callable[[], Iterable]:
    """A zero-argument function giving a fresh stream of ``texts`` each call."""
    if callable(texts):
        return texts
    if iter(texts) is texts:  # a one-shot iterator: held in memory to be read twice
        texts = list(texts)
    return lambda: texts


def train_wordpiece(texts: Iterable[str | list[str]] | Callable[[], Iterable[str | list[str]]],
                    vocab_size: int = 30522, lowercase: bool = True) -> Tokenizer:
    """Train a BERT-style WordPiece vocabulary from texts (or lists of texts): the same texts give the same
    ``tokenizer.json``, byte for byte, in any process.

    The ``tokenizers`` trainer alone does not: it numbers the continuing-subword pieces (``##e``) in hash-map
    order, and breaks ties between equally frequent merges by those numbers (huggingface/tokenizers#1794), so two
    runs differ in ids and in the last entries. Here a first pass (no merges) finds the alphabet and its ``##``
    forms; the second pass is given them, sorted, as fixed entries after the special tokens, so every id and
    every tie is decided by the text alone. The vocabulary is then rebuilt as a plain WordPiece model (the
    fixed entries are ordinary vocabulary, not added tokens). Only word counts are held, never the corpus.

    ``texts`` is read twice: pass a list, or a function returning a fresh stream (a one-shot iterator is held
    in memory). Residual: with more than 1000 distinct characters, a tie in frequency at the 1000th decides
    which characters are kept, still in hash-map order.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size={vocab_size} must exceed the {len(SPECIAL_TOKENS)} special tokens")
    fresh = _replayable(texts)
    first = _train_once(fresh(), _wordpiece_trainer(0, list(SPECIAL_TOKENS)), lowercase)
    singles = sorted(t for t in first if t not in SPECIAL_TOKENS and not t.startswith("##"))
    continuing = sorted(t for t in first if t.startswith("##") and len(t) > 2)
    fixed = list(SPECIAL_TOKENS) + singles + continuing
    vocab = _train_once(fresh(), _wordpiece_trainer(vocab_size, fixed, singles), lowercase)
    ids = [vocab.get(t) for t in SPECIAL_TOKENS]
    if ids != list(range(len(SPECIAL_TOKENS))):  # a tokenizers release that changed the order
        got = dict(zip(SPECIAL_TOKENS, ids, strict=True))
        raise RuntimeError(f"trained special token ids {got} are not 0..4")
    tok = _bert_pipeline(Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK, continuing_subword_prefix="##")),
                         lowercase)
    tok.add_special_tokens(list(SPECIAL_TOKENS))  # ids unchanged: in vocab
    return _add_post_processor(tok)


_abandoned: list = []  # vocabulary workers left running by a Ctrl-C (see leave_if_work_abandoned)


def _interruptible(work) -> None:
    """Run ``work`` in a worker thread while this one waits, so Ctrl-C stops at once: the Rust trainer
    would not look at Python's signals until it returned (minutes on a large corpus). The abandoned
    worker is a daemon thread; the command line then leaves without Python's shutdown
    (:func:`leave_if_work_abandoned`)."""
    import threading

    failure: list[BaseException] = []

    def target():
        try:
            work()
        except BaseException as exc:  # re-raised in the caller's thread
            failure.append(exc)

    worker = threading.Thread(target=target, name="electra-kit-vocab", daemon=True)
    worker.start()
    try:
        while worker.is_alive():
            worker.join(0.1)
    except BaseException:
        _abandoned.append(worker)
        raise
    if failure:
        raise failure[0]


def leave_if_work_abandoned(code: int) -> None:
    """End the process now with ``code`` if Ctrl-C abandoned a vocabulary training in it. The Rust trainer's
    own threads call back into Python (for the next text) and can still be doing so; Python's shutdown ends
    such a thread mid-call and glibc aborts the process ("FATAL: exception not rethrown", exit -6) after the
    run had already stopped cleanly: seen in 1 of 4 interrupted runs, also after the Python worker had ended.
    For the command line only: a library caller keeps its process."""
    import os
    import sys

    if _abandoned:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _read_vocab_txt(path: str, lowercase: bool) -> Tokenizer:
    vocab: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            token = line.rstrip("\r\n")
            if token and token not in vocab:
                vocab[token] = len(vocab)  # a BERT vocab.txt: the id is the line number
    if not vocab:
        raise ValueError(f"{path}: empty vocabulary")
    if UNK not in vocab:  # WordPiece cannot encode an unknown word without it: add it after the others
        warnings.warn(f"electra-kit: {path} has no {UNK}; added as id {len(vocab)} for words outside the vocabulary",
                      RuntimeWarning, stacklevel=3)
        vocab[UNK] = len(vocab)
    tok = _bert_pipeline(Tokenizer(models.WordPiece(vocab=vocab, unk_token=UNK)), lowercase)
    tok.add_special_tokens([t for t in SPECIAL_TOKENS if t in vocab])  # ids unchanged: in vocab
    special_ids(tok, source=path)  # fail here, naming the file, if any is missing
    return _add_post_processor(tok)


def load_tokenizer(path: str | os.PathLike, lowercase: bool = True) -> Tokenizer:
    """Load a ``tokenizer.json``, a BERT ``vocab.txt`` (one token a line; ``lowercase`` picks the
    uncased or cased BERT pipeline), or a folder holding either (e.g. a saved model folder)."""
    path = os.path.expanduser(os.fspath(path))
    if os.path.isdir(path):
        for name in (TOKENIZER_FILE, "vocab.txt"):
            if os.path.isfile(os.path.join(path, name)):
                return load_tokenizer(os.path.join(path, name), lowercase)
        raise FileNotFoundError(f"{path}: folder holds neither {TOKENIZER_FILE} nor vocab.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"tokenizer file {path!r} does not exist")
    if path.endswith(".json"):
        try:
            tok = Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a tokenizers tokenizer.json ({e})") from e
        special_ids(tok, source=path)
        _check_unk(tok, path)
        return tok
    return _read_vocab_txt(path, lowercase)


def _check_unk(tok: Tokenizer, path: str) -> None:
    """A WordPiece model whose unknown-word token is not in its vocabulary fails on the first unknown word."""
    import json

    model = json.loads(tok.to_str()).get("model") or {}
    unk = model.get("unk_token")
    if model.get("type") == "WordPiece" and unk is not None and tok.token_to_id(unk) is None:
        raise ValueError(f"{path}: the WordPiece model's unknown-word token {unk!r} is not in its vocabulary; add it "
                         f"(words outside the vocabulary cannot be encoded without it)")


def save_tokenizer(tok: Tokenizer, path: str | os.PathLike) -> str:
    """Write ``tokenizer.json`` atomically (temporary name + rename); ``path`` is a folder or a
    ``.json`` file. Returns the file written."""
    path = os.fspath(path)
    if not path.endswith(".json"):
        path = os.path.join(path, TOKENIZER_FILE)
    atomic_write(path, writer=lambda tmp: tok.save(str(tmp)))
    return path


def special_ids(tok: Tokenizer, source: str = "tokenizer") -> SpecialIds:
    """Look the special tokens up by name; raise naming ``source`` when a required one is missing."""
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t in REQUIRED_SPECIAL_TOKENS if ids[t] is None]
    if missing:
        raise ValueError(f"{source}: tokenizer lacks special token(s) {', '.join(missing)}; "
                         f"electra-kit needs {', '.join(REQUIRED_SPECIAL_TOKENS)}")
    return SpecialIds(ids[PAD], ids[UNK], ids[MASK], ids[CLS], ids[SEP])


def tokenizer_vocab_size(tok: Tokenizer) -> int:
    """Rows an embedding needs: every id the tokenizer can emit, added tokens included."""
    return max(tok.get_vocab_size(with_added_tokens=True), max(tok.get_vocab(True).values()) + 1)


def tokenizer_fingerprint(tok: Tokenizer) -> str:
    return hashlib.sha256(tok.to_str().encode("utf-8")).hexdigest()[:16]
