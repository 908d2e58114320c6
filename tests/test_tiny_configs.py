"""The tiny configs: one per built-in backbone and one for any registered backbone (the plugin example), each
run for a few steps through the CLI; options bound for one adapter reach that adapter only; and a backbone
that rejects its arguments stops the run before the corpus is read."""

import json

import pytest
from conftest import corpus_gin, error_lines

FEW_STEPS = ["--no-tracking", "--gin", "train.progress = False", "--gin", "TRAIN_STEPS = 3"]


@pytest.mark.parametrize("config,bindings,backbone", [
    ("tiny_transformer.gin", [], "transformer"),
    ("tiny_reformer.gin", [], "reformer"),
    ("tiny_performer.gin", [], "performer"),
    ("tiny_backbone.gin", ["--gin", "BACKBONE = 'toyconv'"], "toyconv"),  # the test plugin's backbone
    # the README's plugin example as it was written: tiny.gin with both scopes renamed
    ("tiny.gin", ["--gin", "generator/backbone.name = 'toyconv'", "--gin", "discriminator/backbone.name = 'toyconv'"],
     "toyconv"),
])
def test_tiny_config_runs(tmp_path, small_corpus, cache_dir, cli_main, config, bindings, backbone):
    proc = cli_main("run", config, *corpus_gin(small_corpus), *FEW_STEPS, *bindings, "--run-dir", "run", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    saved = json.loads((tmp_path / "run" / "model" / "config.json").read_text())
    assert saved["encoder"]["name"] == saved["generator"]["name"] == backbone
    assert ("rotary_pos_emb" in saved["encoder"]["kwargs"]) == (backbone == "transformer")  # scoped to its adapter


def test_positional_options_reach_only_the_backbone_that_takes_them():
    from electra_kit.config import gin_config as config
    from electra_kit.objectives.base import pretrain, resolve_objective

    def kwargs(files, bindings=()):
        config.parse(files, list(bindings))
        model = resolve_objective(pretrain())(mask_token_id=4, pad_token_id=0)
        return {role: (b.backbone_name, b.backbone_kwargs) for role, b in model.backbones().items()}

    mixed = kwargs(["tiny.gin"], ["generator/backbone.name = 'performer'"])
    assert mixed["discriminator"][1]["rotary_pos_emb"] is True and "rotary_pos_emb" not in mixed["generator"][1]
    assert all(k[1]["bucket_size"] == 16 for k in kwargs(["tiny_reformer.gin"]).values())
    # an unscoped backbone.X binding still reaches every backbone, and wins over the adapter's options
    assert all(k[1]["rotary_pos_emb"] is False for k in kwargs(["tiny.gin"], ["backbone.rotary_pos_emb = False"]).values())


def test_a_backbone_rejecting_its_arguments_stops_the_run_before_the_corpus(tmp_path, small_corpus, cli_main):
    proc = cli_main("run", "tiny_backbone.gin", *FEW_STEPS, "--gin", "BACKBONE = 'toyconv'",
                    "--gin", "backbone.rotary_pos_emb = True",  # toyconv takes no such option
                    "--gin", "build_data.corpus = '/nowhere/*.txt'", cwd=tmp_path)  # never read: the model fails first
    assert proc.returncode == 2
    err = error_lines(proc.stderr)
    assert "backbone 'toyconv' rejected its arguments" in err and "rotary_pos_emb" in err and "/nowhere" not in err
    assert "reading the corpus" not in proc.stderr
