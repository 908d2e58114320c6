"""`electra-kit run`: a whole tiny run through the CLI, kill-and-resume, and the errors before training."""

import signal
import subprocess
import time

import pytest
import torch
from conftest import cli_argv, cli_env, corpus_gin, run_cli, tiny_args
from safetensors.torch import load_file

from electra_kit.modelfolder.pretrained import load_pretrained
from electra_kit.rundir.checkpoint import load_weights

TINY = tiny_args()


def test_tiny_run_end_to_end_leaves_a_loadable_model(tmp_path, small_corpus, cache_dir):
    run_cli("run", *corpus_gin(small_corpus), *TINY, "--run-dir", "run", cwd=tmp_path)
    run_dir = tmp_path / "run"
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["step_00000010", "step_00000020", "step_00000030"]
    assert (run_dir / "operative_config.gin").read_text().count("train.steps") == 1
    encoder = load_pretrained(run_dir / "model")
    hidden, mask = encoder.encode(["The state of the union is strong.", "Congress shall act."])
    assert hidden.shape == (2, 64, encoder.hidden_dim) and torch.isfinite(hidden).all()
    assert mask[0].sum() > mask[1].sum() > 2
    # the folder rebuilds the same network that trained: its weights equal the last checkpoint's
    final = load_weights(run_dir / "checkpoints" / "step_00000030" / "model.safetensors")
    saved = load_file(run_dir / "model" / "encoder.safetensors")
    for name, tensor in saved.items():
        assert torch.equal(final[f"discriminator.{name}"], tensor), name


def test_sigterm_saves_a_checkpoint_and_exits_cleanly(tmp_path, small_corpus, cache_dir):
    args = [*TINY, "--gin", "train.steps = 100000", "--gin", "train.checkpoint_every = 100000", "--run-dir", "r",
            "--gin", "train.compile = False"]  # a run this long would compile (auto) in its first step: not the point here
    argv = cli_argv("run", *corpus_gin(small_corpus), *args)
    proc = subprocess.Popen(argv, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    ckpts = tmp_path / "r" / "checkpoints"
    marker = tmp_path / "r" / "operative_config.gin"
    deadline = time.time() + 120
    while not marker.exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # let a few steps run
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, err[-2000:]
    saved = list(ckpts.iterdir())
    assert len(saved) == 1 and "--resume" in err


# ---- errors before training, each naming its culprit ------------------------------------------


@pytest.fixture
def error_of(cli_main):
    """The stderr of a run that must stop before training with exit 2: ``cli.main`` in this process."""

    def call(tmp_path, corpus, *args):
        proc = cli_main("run", *corpus_gin(corpus), *args, cwd=tmp_path)
        assert proc.returncode == 2, f"expected a clean error, got exit {proc.returncode}:\n{proc.stderr[-3000:]}"
        return proc.stderr

    return call


def test_missing_gin_file(tmp_path, small_corpus, error_of):
    err = error_of(tmp_path, small_corpus, "no_such.gin", "--no-tracking")
    assert "no_such.gin" in err and "not found" in err and "tiny.gin" in err  # lists the shipped configs


def test_gin_file_including_a_missing_file(tmp_path, small_corpus, error_of):
    (tmp_path / "exp.gin").write_text("include 'base.gin'\ninclude 'not_there.gin'\n")
    err = error_of(tmp_path, small_corpus, "exp.gin", "--no-tracking")
    assert "not_there.gin" in err


def test_misspelled_binding_names_file_and_line(tmp_path, small_corpus, error_of):
    (tmp_path / "exp.gin").write_text("include 'tiny.gin'\n\ntrain.stesp = 10\n")
    err = error_of(tmp_path, small_corpus, "exp.gin", "--no-tracking")
    assert "stesp" in err and "exp.gin" in err and "line 3" in err


def test_misspelled_command_line_binding(tmp_path, small_corpus, error_of):
    err = error_of(tmp_path, small_corpus, *TINY, "--gin", "train.lrr = 0.1")
    assert "train.lrr" in err and "--gin" in err


def test_unknown_backbone(tmp_path, small_corpus, error_of):
    err = error_of(tmp_path, small_corpus, *TINY, "--gin", "discriminator/backbone.name = 'reformr'")
    assert "Unknown backbone 'reformr'" in err and "reformer" in err


def test_corpus_glob_matching_nothing(tmp_path, small_corpus, error_of):
    err = error_of(tmp_path, small_corpus, *TINY, "--gin", "build_data.corpus = '/nowhere/*.txt'")
    assert "/nowhere/*.txt" in err


def test_empty_corpus(tmp_path, small_corpus, error_of):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "a.txt").write_text("\n\n  \n")
    err = error_of(tmp_path, small_corpus, *TINY, "--gin", f"build_data.corpus = '{empty}/*.txt'")
    assert "a.txt" in err and "empty" in err.lower()


def test_sequence_longer_than_the_backbone_allows(tmp_path, small_corpus, cache_dir, error_of):
    err = error_of(tmp_path, small_corpus, *TINY, "--gin", "backbone.max_seq_len = 32")
    assert "64" in err and "max_seq_len=32" in err


def test_vocabulary_larger_than_the_embedding(tmp_path, small_corpus, cache_dir, error_of):
    err = error_of(tmp_path, small_corpus, *TINY, "--gin", "backbone.num_tokens = 500")
    assert "500" in err and "num_tokens" in err


def test_resume_with_nothing_to_resume(tmp_path, small_corpus, error_of):
    err = error_of(tmp_path, small_corpus, *TINY, "--run-dir", "fresh", "--resume")
    assert "nothing to resume" in err and "fresh" in err
    err = error_of(tmp_path, small_corpus, *TINY, "--resume")
    assert "--run-dir" in err


def test_every_shipped_gin_file_parses():
    from electra_kit.config import gin_config as config
    from electra_kit.training.pretrain import parse_config
    from electra_kit.training.settings import configured_train

    shipped = sorted(config.packaged_gin_dir().glob("*.gin"))
    assert {"reformer_small.gin", "performer_small.gin", "transformer_small.gin", "tiny.gin", "mlm_small.gin",
            "performer_reformer_small.gin"} <= {p.name for p in shipped}
    for path in shipped:
        parse_config([str(path)], ["TRAIN_STEPS = 7", "BACKBONE = 'transformer'"])  # tiny_backbone.gin needs BACKBONE
        if path.name not in ("base.gin", "long.gin", "smoke.gin") and not path.name.startswith(("size_", "backbone_")):  # layers
            assert configured_train().steps == 7, f"{path.name} does not honour the TRAIN_STEPS macro"


@pytest.mark.parametrize("name", ["transformer_small.gin", "electra_cpu.gin", "mlm_cpu.gin", "tiny.gin"])
def test_transformer_configs_give_both_encoders_rotary_positions(name):
    """The learned absolute table learned word order ~11x too slowly under ELECTRA's init (bench/RESULTS.md,
    "Positions"): every shipped transformer config rotates queries and keys instead and has no table."""
    from electra_kit.objectives.base import pretrain, resolve_objective
    from electra_kit.training.pretrain import parse_config

    parse_config([name], ["VOCAB_SIZE = 1000"])
    model = resolve_objective(pretrain())(mask_token_id=2, pad_token_id=0)
    for role, backbone in model.backbones().items():
        layers = backbone.net.attn_layers
        assert layers.rotary_pos_emb is not None and backbone.get_position_embedding() is None, (name, role)
        ids = torch.randint(5, 1000, (1, 16))
        # word order reaches the encoder: swapping two tokens changes the hidden state of a third
        swapped = ids.clone()
        swapped[0, [3, 4]] = ids[0, [4, 3]]
        assert not torch.allclose(backbone(ids)[0, 8], backbone(swapped)[0, 8], atol=1e-5), (name, role)


@pytest.mark.parametrize("name", ["reformer_small.gin", "performer_small.gin", "transformer_small.gin"])
def test_small_configs_build_the_published_electra_small_shape(name):
    import gin
    from electra_kit.objectives.electra import Electra
    from electra_kit.training.pretrain import parse_config
    from electra_kit.training.settings import configured_train

    parse_config([name], ["VOCAB_SIZE = 1000"])
    model = Electra(mask_token_id=2, pad_token_id=0)
    disc, gen = model.discriminator, model.generator
    assert (disc.hidden_dim, disc.emb_dim, gen.hidden_dim, gen.emb_dim) == (256, 128, 64, 128)
    assert gin.query_parameter("discriminator/backbone.depth") == 12
    train = configured_train()
    assert (train.batch_size, train.lr, train.warmup_steps, train.steps, train.weight_decay) == (
        128, 5e-4, 10000, 1000000, 0.01)
    assert (model.mask_prob, model.disc_weight) == (0.15, 50.0)
    assert model.discriminator.get_token_embedding() is model.generator.get_token_embedding()
