"""Issue 28: reproducible vocabularies and token streams, and corpora in the formats users keep them."""

import hashlib
import shutil
from pathlib import Path

import pytest

from electra_kit.data import build as data


def _digest(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _build(corpus, cache, **kw):
    return data.build_data(corpus=str(corpus), vocab_size=kw.pop("vocab_size", 2000), cache_dir=str(cache),
                           eval_fraction=0.0, **kw)


# --------------------------------------------------------------------------------------------- reproducible
def test_two_fresh_caches_and_a_copied_corpus_give_identical_tokenizer_and_tokens(small_corpus, tmp_path):
    """The bare `tokenizers` trainer differs run to run, in ids and entries (tokenizers#1794); ours must not."""
    copy = tmp_path / "elsewhere" / "corpus"
    shutil.copytree(small_corpus, copy)
    builds = [_build(small_corpus, tmp_path / "cache1"), _build(small_corpus, tmp_path / "cache2"),
              _build(copy, tmp_path / "cache3")]
    assert len({_digest(b.tokenizer_source) for b in builds}) == 1
    assert len({_digest(b.token_path) for b in builds}) == 1
    assert len({b.fingerprint for b in builds}) == 1
    assert builds[0].vocab_size == 2000


def test_train_wordpiece_is_deterministic_and_keeps_special_ids():
    from electra_kit.data.tokenizer import train_wordpiece

    texts = [f"word{i % 37} piece{i % 11}ing the {'x' * (i % 7)}ation" for i in range(400)]
    one, two = train_wordpiece(texts, 120), train_wordpiece(iter(texts), 120)
    assert one.to_str() == two.to_str()
    assert [one.token_to_id(t) for t in ("[PAD]", "[UNK]", "[MASK]", "[CLS]", "[SEP]")] == [0, 1, 2, 3, 4]
    assert one.get_added_tokens_decoder().keys() == {0, 1, 2, 3, 4}  # the pinned alphabet is plain vocabulary
    assert one.encode("word1 pieceing", add_special_tokens=False).tokens[0] == "word1"
