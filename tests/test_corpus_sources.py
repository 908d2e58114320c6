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


# ------------------------------------------------------------------------------------------------ sources
def _paragraphs(small_corpus) -> list[str]:
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(Path(small_corpus).glob("*.txt"))[:2])
    return [p.strip() for p in text.split("\n\n") if p.strip()]


def _write_every_format(small_corpus, folder: Path) -> list[str]:
    """The same paragraphs split over every kind of source; returns the corpus list."""
    import bz2
    import gzip
    import json
    import lzma

    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    parts = [p for p in (_paragraphs(small_corpus)[i::7] for i in range(7))]
    folder.mkdir(parents=True)

    def jsonl(texts) -> bytes:
        return "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(texts)).encode()

    (folder / "a.jsonl.gz").write_bytes(gzip.compress(jsonl(parts[0])))
    (folder / "b.txt.bz2").write_bytes(bz2.compress("\n\n".join(parts[1]).encode()))
    (folder / "c.jsonl.xz").write_bytes(lzma.compress(jsonl(parts[2])))
    (folder / "d.txt.zst").write_bytes(zstandard.ZstdCompressor().compress("\n\n".join(parts[3]).encode()))
    pq.write_table(pa.table({"text": parts[4], "n": list(range(len(parts[4])))}), folder / "e.parquet")
    datasets.Dataset.from_dict({"text": parts[5]}).save_to_disk(str(folder.parent / "saved"))
    (folder.parent / "hub").mkdir()
    pq.write_table(pa.table({"text": parts[6]}), folder.parent / "hub" / "train.parquet")
    return [str(folder), str(folder.parent / "saved"), f"hf:{folder.parent / 'hub'}"]


def test_every_source_format_reads_the_same_documents(small_corpus, tmp_path):
    corpus = _write_every_format(small_corpus, tmp_path / "files")
    files = data.resolve_corpus(corpus)
    assert [Path(f).name for f in files[:5]] == ["a.jsonl.gz", "b.txt.bz2", "c.jsonl.xz", "d.txt.zst", "e.parquet"]
    data.check_sources(files)
    docs = [d for d in data.iter_documents(files) if d]
    assert sorted(d.strip() for d in docs) == sorted(_paragraphs(small_corpus))
    before = data.corpus_fingerprint(files)
    (tmp_path / "hub" / "train.parquet").write_bytes((tmp_path / "files" / "e.parquet").read_bytes())
    assert data.corpus_fingerprint(files) != before  # a hf: local folder is keyed by its files


def test_every_source_format_trains_through_the_cli(small_corpus, tmp_path):
    from conftest import cli_env, run_cli, tiny_args

    corpus = _write_every_format(small_corpus, tmp_path / "files")
    run_cli("run", *tiny_args("TRAIN_STEPS = 2", "VOCAB_SIZE = 500", f"build_data.corpus = {corpus!r}"), "--run-dir", "run",
            cwd=tmp_path, env=cli_env(ELECTRA_KIT_CACHE=str(tmp_path / "cache"), HF_DATASETS_OFFLINE="1"))
    assert (tmp_path / "run" / "model").is_dir()


def _bad(tmp_path, name: str, payload: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(payload)
    return path


@pytest.mark.parametrize("name, payload, needle", [
    ("x.txt.gz", b"\x1f\x8b\x08\x00 not gzip at all", "cannot be read as .txt.gz"),
    ("x.jsonl.zst", b"not zstd", "cannot be read as .jsonl.zst"),
    ("x.jsonl.bz2", b"BZh9 truncated", "cannot be read as .jsonl.bz2"),
    ("x.parquet", b"PAR1 not parquet", "cannot be read as a table"),
])
def test_a_damaged_source_is_named_before_training(tmp_path, name, payload, needle):
    path = _bad(tmp_path, name, payload)
    with pytest.raises(data.CorpusError, match=needle) as err:
        data.check_sources([str(path)])
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_a_missing_text_field_is_named_for_every_table_kind(tmp_path):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"body": ["a b c"]}), tmp_path / "t.parquet")
    datasets.Dataset.from_dict({"body": ["a b c"]}).save_to_disk(str(tmp_path / "saved"))
    for source in (str(tmp_path / "t.parquet"), str(tmp_path / "saved")):
        with pytest.raises(data.CorpusError, match=r"no 'text' field \(has body\); set build_data.text_field"):
            data.check_sources([source])
    assert [d for d in data.iter_documents([str(tmp_path / "t.parquet")], text_field="body") if d] == ["a b c"]


def test_mixed_encodings_in_a_compressed_file_name_the_offset(tmp_path, cli_main):
    import gzip

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "x.txt.gz").write_bytes(gzip.compress("caf\u00e9 ok\n".encode() + "caf\u00e9\n".encode("latin-1")))
    proc = cli_main("run", "tiny.gin", "--no-tracking", "--gin", f"build_data.corpus = '{tmp_path / 'c'}'",
                    "--gin", f"build_data.cache_dir = '{tmp_path / 'cache'}'", "--run-dir", "run", cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert "x.txt.gz: not UTF-8 at byte offset 12 (line 2)" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------- scale
def test_vocab_sample_is_seeded_bounded_and_the_same_in_any_folder(small_corpus, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(small_corpus, copy)
    files, copied = data.resolve_corpus(str(small_corpus)), data.resolve_corpus(str(copy))

    def sample(fs, mb, seed):
        return list(data._vocab_sample(fs, "text", mb, seed, None))

    whole = sample(files, None, 0)
    one = sample(files, 0.05, 0)
    assert one == sample(copied, 0.05, 0) and one != sample(files, 0.05, 1)
    assert 25_000 <= sum(map(len, one)) < 50_000 + max(map(len, whole))  # about the bound, never much past it
    assert set(one) < set(whole)


def test_sampled_vocabulary_is_reproducible_and_keyed_by_the_sample(small_corpus, tmp_path):
    a = _build(small_corpus, tmp_path / "c1", vocab_size=500, vocab_sample_mb=0.05)
    b = _build(small_corpus, tmp_path / "c2", vocab_size=500, vocab_sample_mb=0.05)
    whole = _build(small_corpus, tmp_path / "c1", vocab_size=500, vocab_sample_mb=None)
    assert _digest(a.tokenizer_source) == _digest(b.tokenizer_source)
    assert a.tokenizer_source != whole.tokenizer_source


def test_progress_lines_show_megabytes_rate_and_eta(capsys):
    from electra_kit.data.progress import ProgressLines

    bar = ProgressLines(total=10_000_000, desc="tokenizing", every=0.0)
    with bar:
        bar.update(4_000_000)
    err = capsys.readouterr().err
    assert err.startswith("electra-kit: tokenizing: 4/10 MB, ") and "MB/s, ETA " in err


def test_a_build_killed_while_tokenizing_leaves_nothing_trusted(tmp_path):
    """SIGKILL once the vocabulary is published (the token file is being written): the next build in that cache
    rebuilds the token file, and gets exactly what a build in a fresh cache gets."""
    import os
    import signal
    import subprocess
    import sys
    import time

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for f in data.default_corpus_files()[:30]:
        shutil.copy(f, corpus)
    code = ("import sys; from electra_kit.data.build import build_data;"
            "build_data(corpus=sys.argv[1], vocab_size=500, cache_dir=sys.argv[2], eval_fraction=0.0)")
    cache = tmp_path / "cache"
    proc = subprocess.Popen([sys.executable, "-c", code, str(corpus), str(cache)])
    deadline = time.monotonic() + 120
    while not list(cache.glob("tokenizers/*/tokenizer.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not list(cache.glob("shards/*/meta.json")), "the kill came too late to test anything"
    again, fresh = _build(corpus, cache, vocab_size=500), _build(corpus, tmp_path / "fresh", vocab_size=500)
    assert _digest(again.token_path) == _digest(fresh.token_path)
    assert _digest(again.tokenizer_source) == _digest(fresh.tokenizer_source)


def test_a_dataset_name_that_cannot_be_loaded_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    source = f"hf:{tmp_path / 'no_such_dataset'}"
    with pytest.raises(data.CorpusError, match="cannot be read as a table") as err:
        data.check_sources(data.resolve_corpus(source))
    assert str(err.value).startswith(source) and "\n" not in str(err.value)
