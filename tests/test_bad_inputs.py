"""Bad inputs, one test per row of docs/troubleshooting.md's table (more rows are in test_run.py).

Each must end with exit code 2, a one-line message naming the culprit and what to do, no traceback,
and no half-written run directory or cache file left behind. They run the CLI's own ``main`` in this
process: an exception it failed to turn into a message would fail the test just as a traceback would.
"""

import json
import os
import shutil
from pathlib import Path

import pytest
from conftest import corpus_gin, error_lines, tiny_args

TINY = tiny_args()


@pytest.fixture
def run(cli_main):
    def call(tmp_path, corpus, *args, run_dir="run"):
        return cli_main("run", *corpus_gin(corpus), *TINY, "--run-dir", run_dir, *args, cwd=tmp_path)

    return call


def assert_clean_error(proc, tmp_path, *needles, run_dir="run"):
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr[-3000:]}"
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    message = proc.stderr.strip().splitlines()[-1] if "error:" not in proc.stderr else proc.stderr
    for needle in needles:
        assert needle in message, f"{needle!r} not in: {message}"
    assert not (tmp_path / run_dir).exists() or any((tmp_path / run_dir / "checkpoints").glob("step_*")), \
        "a failed start left a half-made run directory"
    cache = Path(os.environ["ELECTRA_KIT_CACHE"])
    assert not [p for p in cache.rglob("*") if ".tmp" in p.name], "a temporary cache file was left behind"


@pytest.fixture
def corpus(small_corpus):
    return f"{small_corpus}/*.txt"


# ---- configuration ------------------------------------------------------------------------------


# one row of the troubleshooting table each: the --gin bindings, then what the one-line error must name
BAD_CONFIG = {
    "binding of the wrong type": (["train.steps = 'many'"], ["train.steps", "'many'", "positive integer"]),
    "unknown configurable": (["trian.steps = 5"], ["trian", "--gin"]),
    "binding with a syntax error": (["train.steps = "], ["train.steps = ", "--gin"]),
    # issue 26.9: gin recursed until Python gave up (a 3,008-line RecursionError)
    "macros defined by each other in a circle": (["A = [1, %B]", "B = %A", "train.steps = %A"],
                                                 ["%A -> %B -> %A", "circle"]),
    # issue 26.9: Electra.mask_token_id (the kit passes the tokenizer's [MASK] id) was silently ignored
    "a binding the kit sets itself": (["Electra.mask_token_id = 5", "train.steps = 1"],
                                      ["Electra.mask_token_id", "remove it"]),
    # issue 26.9: x-transformers asserted "unrecognized kwargs" 66 lines deep
    "an unknown backbone keyword": (["backbone.foo = 1", "train.steps = 1"],
                                    ["backbone 'transformer' does not take 'foo'", "it takes num_tokens, dim, depth"]),
    "embedding sizes that cannot be shared": (["generator/backbone.emb_dim = 16"],
                                              ["emb_dim=16", "emb_dim=32", "embedding_sharing='none'"]),
    "unknown embedding sharing mode": (["Electra.embedding_sharing = 'half'"], ["'half'", "tied"]),
    "batch not divisible by accumulation": (["train.grad_accum_steps = 3"], ["train.batch_size=8", "grad_accum_steps=3"]),
    "sequence length too short for [CLS] and [SEP]": (["MAX_SEQ_LEN = 2"], ["max_seq_len=2"]),
    "tokenizer file that does not exist": (["build_data.tokenizer = 'missing/tokenizer.json'"],
                                           ["missing/tokenizer.json"]),
}


@pytest.mark.parametrize("case", BAD_CONFIG)
def test_a_bad_config_is_one_line_naming_it(tmp_path, corpus, cache_dir, run, case):
    bindings, needles = BAD_CONFIG[case]
    proc = run(tmp_path, corpus, *[arg for b in bindings for arg in ("--gin", b)])
    assert_clean_error(proc, tmp_path, *needles)
    assert len(error_lines(proc.stderr).splitlines()) == 1


# ---- data ---------------------------------------------------------------------------------------


# a corpus file each: its name, its bytes, then what the error must name
BAD_CORPUS = {
    "JSONL line that is not JSON": ("data.jsonl", b'{"text": "fine"}\n{"text": "broken\n', ["data.jsonl:2"]),
    "JSONL line without the text field": ("data.jsonl", b'{"text": "fine"}\n{"body": "no text field"}\n',
                                          ["data.jsonl:2", "text"]),
    "text file that is not UTF-8": ("latin1.txt", "Der Bundestag beschließt.\n".encode("latin-1") * 3,
                                    ["latin1.txt", "UTF-8"]),
    "corpus too small for one batch": ("small.txt", b"Only a few words of text here.\n", ["0 sequences", "larger corpus"]),
}


@pytest.mark.parametrize("case", BAD_CORPUS)
def test_a_bad_corpus_is_an_error_naming_it(tmp_path, cache_dir, run, case):
    name, content, needles = BAD_CORPUS[case]
    (tmp_path / name).write_bytes(content)
    proc = run(tmp_path, str(tmp_path / name))
    assert_clean_error(proc, tmp_path, *needles)


SPECIALS = ["[PAD]", "[UNK]", "[MASK]", "[CLS]", "[SEP]"]
# a vocab.txt each (tiny.gin's model has 2000 token embeddings), then what the error must name
BAD_TOKENIZER = {
    "larger than the model's embedding": (SPECIALS + [f"word{i}" for i in range(2500)], ["2505", "2000", "num_tokens"]),
    "without a [MASK] token": (["[PAD]", "[UNK]", "[CLS]", "[SEP]", "the", "state"], ["vocab.txt", "[MASK]"]),
}


@pytest.mark.parametrize("case", BAD_TOKENIZER)
def test_a_bad_tokenizer_is_an_error_naming_it(tmp_path, corpus, cache_dir, run, case):
    tokens, needles = BAD_TOKENIZER[case]
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("\n".join(tokens) + "\n")
    proc = run(tmp_path, corpus, "--gin", f"build_data.tokenizer = '{vocab}'")
    assert_clean_error(proc, tmp_path, *needles)


# ---- checkpoints --------------------------------------------------------------------------------


def test_resume_with_a_binding_that_changes_the_model(tmp_path, corpus, cache_dir, run):
    first = run(tmp_path, corpus, "--gin", "train.steps = 10")
    assert first.returncode == 0, first.stderr[-2000:]
    shutil.rmtree(tmp_path / "run" / "model")
    proc = run(tmp_path, corpus, "--resume", "--gin", "discriminator/backbone.dim = 48")
    assert_clean_error(proc, tmp_path, "discriminator/backbone.dim: 64 -> 48", "only train.steps")


def test_resume_of_a_run_whose_config_file_was_edited(tmp_path, corpus, cache_dir, run):
    first = run(tmp_path, corpus, "--gin", "train.steps = 10")
    assert first.returncode == 0, first.stderr[-2000:]
    own = tmp_path / "run" / "operative_config.gin"
    own.write_text(own.read_text().replace("discriminator/backbone.dim = 64", "discriminator/backbone.dim = 48"))
    proc = run(tmp_path, corpus, "--resume")
    assert_clean_error(proc, tmp_path, "step_00000010", "discriminator/backbone.dim: 64 -> 48")


def test_every_checkpoint_corrupt(tmp_path, corpus, cache_dir, run):
    first = run(tmp_path, corpus, "--gin", "train.steps = 10")
    assert first.returncode == 0, first.stderr[-2000:]
    for manifest in (tmp_path / "run" / "checkpoints").glob("*/manifest.json"):
        data = json.loads(manifest.read_text())
        data["sha256"]["model.safetensors"] = "0" * 64
        manifest.write_text(json.dumps(data))
    with pytest.warns(RuntimeWarning, match="unusable"):  # each checkpoint is named as it is passed over
        proc = run(tmp_path, corpus, "--resume")
    assert_clean_error(proc, tmp_path, "nothing to resume", "no intact checkpoint")


# ---- command line -------------------------------------------------------------------------------


def test_run_directory_that_is_not_writable(tmp_path, corpus, cache_dir, run):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    proc = run(tmp_path, corpus, run_dir=blocker / "run")
    assert_clean_error(proc, tmp_path, "a_file/run", "which is a file, not a folder", "--run-dir", run_dir=blocker / "run")


def test_unknown_command_line_option(tmp_path, corpus, run):
    proc = run(tmp_path, corpus, "--step", "5")
    assert proc.returncode == 2 and "unrecognized arguments: --step" in proc.stderr
