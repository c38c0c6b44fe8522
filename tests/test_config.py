"""Presets: published parameter counts, computed without allocating weights, and a tiny build check."""

import pytest
from mlx.utils import tree_flatten

from mlx_aimv2.config import PRESETS, ModelConfig, VisionConfig, count_params, load_config, preset, swiglu_hidden
from mlx_aimv2.errors import UserError
from mlx_aimv2.models import build

PUBLISHED_M = {"large": 309.2, "huge": 680.9, "1B": 1235.0, "3B": 2720.7}


@pytest.mark.parametrize("size", list(PUBLISHED_M))
def test_published_parameter_counts(size):
    assert round(count_params(preset(f"apple/aimv2-{size}-patch14-224")) / 1e6, 1) == PUBLISHED_M[size]


def test_every_published_checkpoint_has_a_preset():
    assert len(PRESETS) == 16
    assert PRESETS["aimv2-large-patch14-native"].vision.native
    assert PRESETS["aimv2-large-patch14-224-lit"].kind == "lit"
    assert PRESETS["aimv2-huge-patch14-448"].vision.num_patches == 1024
    assert [swiglu_hidden(d) for d in (1024, 1536, 2048, 3072)] == [2816, 4096, 5632, 8192]


@pytest.mark.parametrize(
    "cfg",
    [
        ModelConfig(vision=VisionConfig(hidden_size=64, depth=2, num_heads=2, mlp_hidden=96, image_size=28)),
        ModelConfig(vision=VisionConfig(hidden_size=64, depth=1, num_heads=2, mlp_hidden=96, image_size=None)),
    ],
)
def test_count_matches_a_built_model(cfg):
    model = build(cfg)
    assert sum(v.size for _, v in tree_flatten(model.parameters())) == count_params(cfg)


def test_unknown_names_and_keys():
    with pytest.raises(UserError, match="unknown model name"):
        preset("aimv2-giant")
    with pytest.raises(UserError, match="unknown vision config key"):
        VisionConfig.from_dict({"hidden": 3})


@pytest.mark.parametrize("key", ["lora_rank=8", "lora_alpha=32", "lora_layers=2", "merge_lora=false"])
def test_a_lora_key_without_tune_lora_is_refused(key, tmp_path):
    k, v = key.split("=")
    with pytest.raises(UserError, match="add --set tune=lora"):
        load_config(overrides={"data": "x", "out": str(tmp_path), "init": "demo", "objective": "classify"}, sets=[key])
    assert load_config(overrides={"data": "x", "init": "demo", "objective": "classify"}, sets=["tune=lora", key])


def test_a_key_of_another_objective_is_refused(tmp_path):
    with pytest.raises(UserError, match="read only by objective lit"):
        load_config(overrides={"data": "x", "out": str(tmp_path)}, sets=["lit_loss=sigmoid"])


def test_config_values_of_the_wrong_type_are_one_line(tmp_path):
    for bad, word in (("lora_rank=x", "lora_rank"), ("steps=-3", "steps"), ("lr=nan", "lr"), ("tune=most", "tune"),
                      ("crop_scale=[0.9,0.1]", "crop_scale"), ("betas=1", "betas")):  # fmt: skip
        sets = [bad, "tune=lora"] if bad.startswith("lora") else [bad]
        with pytest.raises(UserError, match=word):
            load_config(
                overrides={"data": "x", "out": str(tmp_path), "init": "demo", "objective": "classify"}, sets=sets
            )
