"""The operative config flattened into run parameters by gin's own parser (config.gin_config.flatten_gin_config)."""

import pytest

import gin
from electra_kit.config.gin_config import ConfigError, flatten_gin_config
from electra_kit.training.pretrain import parse_config


def test_flattened_config_resolves_macros_keeps_gin_syntax_and_scopes():
    parse_config(["tiny.gin"], ["Electra.temperature = 0.5"])
    try:
        flat = flatten_gin_config(gin.config_str())
    finally:
        gin.clear_config()
    assert flat["TRAIN_STEPS"] == "30" and flat["train.steps"] == "30"  # the macro's value, and the macro itself
    assert flat["pretrain.objective"] == "@Electra" and flat["Electra.generator"] == "@generator/backbone()"
    assert flat["generator/backbone.name"] == "'transformer'" and flat["Electra.temperature"] == "0.5"
    assert not any(k.startswith(("include", "import")) for k in flat)


def test_flatten_reads_multi_line_values_as_one():
    flat = flatten_gin_config("a.b = [1,\n    2, 3]\n# comment\nscope/c.d = {'k': @e}\n")
    assert flat == {"a.b": "[1, 2, 3]", "scope/c.d": "{'k': @e}"}


GIN_OPERATIVE = """\
import electra_kit.training.trainer
import gin.torch.external_configurables

# Macros:
# ==============================================================================
HIDDEN = 256
generator/DEPTH = 4

# Parameters for discriminator/backbone:
# ==============================================================================
discriminator/backbone.dim = %HIDDEN
discriminator/backbone.name = 'performer'

# Parameters for Electra:
# ==============================================================================
Electra.discriminator = @discriminator/backbone()
Electra.generator = @generator/backbone()
Electra.mask_prob = 0.15  # a comment

# Parameters for train:
# ==============================================================================
train.lr = 0.0005
train.schedule = \\
    {'extra': [1,
               2,
               3],
     'kind': 'linear',
     'warmup': 100}
train.optimizer = @torch.optim.AdamW
train.steps = 2000
train.warmup = [%HIDDEN, %generator/DEPTH]
"""


def test_gin_config_becomes_params_with_macros_resolved():
    flat = flatten_gin_config(GIN_OPERATIVE)
    assert flat["HIDDEN"] == "256" and flat["generator/DEPTH"] == "4"  # the macros are params themselves
    assert flat["discriminator/backbone.dim"] == "256" and flat["train.warmup"] == "[256, 4]"
    assert flat["discriminator/backbone.name"] == "'performer'"
    assert flat["Electra.generator"] == "@generator/backbone()"
    assert flat["Electra.mask_prob"] == "0.15"
    assert flat["train.schedule"] == "{'extra': [1, 2, 3], 'kind': 'linear', 'warmup': 100}"
    assert flat["train.optimizer"] == "@torch.optim.AdamW" and flat["train.steps"] == "2000"
    assert not any("import" in k for k in flat)


def test_macros_are_checked_by_their_whole_scoped_name_and_for_circles():
    try:
        parse_config(["tiny.gin"], ["generator/D = 3", "E = %generator/D"])  # a scoped macro is defined
        with pytest.raises(ConfigError, match="the macro E uses the macro %generator/Q, which no gin file"):
            parse_config(["tiny.gin"], ["E = %generator/Q"])
        with pytest.raises(ConfigError, match="macros %E -> %generator/D -> %E are defined by each other in a circle"):
            parse_config(["tiny.gin"], ["generator/D = [%E]", "E = %generator/D"])
    finally:
        gin.clear_config()
