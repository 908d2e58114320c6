"""Corpus reading a hostile file tree cannot fool: each file once, any suffix case, no quadratic words."""

import json
import os
import time

import pytest

from electra_kit.data.build import build_data
from electra_kit.data.corpus import iter_documents, resolve_corpus
from electra_kit.data.tokenizer import load_tokenizer


def test_symlinked_folders_and_link_loops_read_each_file_once(tmp_path):
    root = tmp_path / "c"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_text("alpha\n")
    (root / "sub" / "B.TXT").write_text("beta\n")
    (root / "again").symlink_to(root / "sub")
    (root / "sub" / "loop").symlink_to(root)
    files = resolve_corpus(str(root))
    assert sorted(os.path.basename(f) for f in files) == ["B.TXT", "a.txt"]
    assert len(resolve_corpus([str(root), str(root / "a.txt"), str(root / "again" / "B.TXT")])) == 2


def test_suffixes_are_matched_in_any_case(tmp_path):
    (tmp_path / "D.JSONL").write_text(json.dumps({"text": "one document"}) + "\n")
    (tmp_path / "e.Txt").write_text("plain text\n")
    files = resolve_corpus(str(tmp_path))
    assert len(files) == 2
    assert [d for d in iter_documents([str(tmp_path / "D.JSONL")]) if d] == ["one document"]


def test_a_megabyte_word_does_not_stall_vocabulary_training(tmp_path):
    corpus = tmp_path / "c"
    corpus.mkdir()
    (corpus / "a.txt").write_text("the quick brown fox jumps over the lazy dog\n" * 200 + "x" * 1_000_000 + "\n")
    start = time.process_time()
    data = build_data(corpus=str(corpus), vocab_size=200, max_seq_len=8, min_eval_sequences=1,
                      cache_dir=str(tmp_path / "cache"))
    assert time.process_time() - start < 60  # the old trainer spent hours here: quadratic in word length
    assert data.tokenizer.token_to_id("fox") is not None


def test_a_vocab_txt_without_unk_works(tmp_path):
    (tmp_path / "vocab.txt").write_text("[PAD]\n[MASK]\n[CLS]\n[SEP]\nthe\nof\n")
    with pytest.warns(RuntimeWarning, match=r"no \[UNK\]; added as id 6"):
        tok = load_tokenizer(tmp_path / "vocab.txt")
    assert tok.encode("the zebra of", add_special_tokens=False).ids == [4, 6, 5]


def test_a_fifo_named_like_a_text_file_is_not_read(tmp_path):
    (tmp_path / "a.txt").write_text("alpha\n")
    os.mkfifo(tmp_path / "pipe.txt")  # opening it would block forever
    assert [os.path.basename(f) for f in resolve_corpus(str(tmp_path))] == ["a.txt"]
