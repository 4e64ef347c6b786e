"""Architecture config: presets, inference from shapes, strict key checks."""

import math

import pytest

from checkpoints import tiny_config
from rwkvtune.config import PRESETS, RWKV7Config, config_from_shapes, expected_shapes, get_preset
from rwkvtune.config.model import check_state_dict_shapes

# Parameter counts published for the released files (spec section 6; RWKV-LM README and file sizes).
PUBLISHED = {
    "rwkv7-0.1b": 191_084_544,
    "rwkv7-0.4b": 450_834_432,
    "rwkv7-1.5b": 1_527_668_736,
    "rwkv7-2.9b": 2_948_065_280,
    "rwkv7-7.2b": 7_199_932_416,
    "rwkv7-13.3b": 13_270_298_624,
}


@pytest.mark.parametrize("name", list(PRESETS))
def test_preset_shapes_add_up_to_published_parameter_counts(name):
    config = get_preset(name)
    counted = sum(math.prod(shape) for shape in expected_shapes(config).values())
    assert counted == config.num_parameters() == PUBLISHED[name]


@pytest.mark.parametrize("name", list(PRESETS))
def test_config_is_recovered_from_shapes(name):
    config = get_preset(name)
    assert config_from_shapes(expected_shapes(config)) == config
    assert config_from_shapes(expected_shapes(config, layer0_value_lora=False)) == config


def test_unknown_preset_lists_choices():
    with pytest.raises(ValueError, match="rwkv7-0.1b.*rwkv7-13.3b.*auto"):
        get_preset("rwkv7-1b")


def test_invalid_dimensions_are_reported_together():
    with pytest.raises(ValueError, match="n_layer must be a positive integer.*head_size must be"):
        RWKV7Config(n_layer=0, n_embd=64, head_size=0)
    with pytest.raises(ValueError, match="multiple of head_size"):
        RWKV7Config(n_layer=1, n_embd=100)


def test_non_rwkv_state_dict_names_missing_keys_and_wrapper_prefix():
    shapes = {f"model.{k}": v for k, v in expected_shapes(tiny_config()).items()}
    with pytest.raises(ValueError, match=r"missing emb\.weight.*prefix 'model\.'"):
        config_from_shapes(shapes)


def test_strict_check_lists_missing_unexpected_and_misshaped_keys():
    config = tiny_config()
    shapes = dict(expected_shapes(config))
    del shapes["blocks.1.att.k_k"]
    shapes["blocks.1.ffn.s_emb.weight"] = (1000, 128)
    shapes["blocks.0.att.r_k"] = (128,)
    with pytest.raises(ValueError) as err:
        check_state_dict_shapes(config, shapes)
    text = str(err.value)
    assert "missing keys (1): blocks.1.att.k_k" in text
    assert "unexpected keys (1): blocks.1.ffn.s_emb.weight" in text
    assert "blocks.0.att.r_k: (128,) (expected (2, 64))" in text


def test_layer0_value_lora_is_optional():
    config = tiny_config()
    check_state_dict_shapes(config, expected_shapes(config, layer0_value_lora=False))


def test_wrong_rank_names_the_key():
    shapes = dict(expected_shapes(tiny_config()))
    shapes["blocks.0.att.r_k"] = (128,)
    with pytest.raises(ValueError, match=r"must be 2-D: blocks\.0\.att\.r_k \(128,\)"):
        config_from_shapes(shapes)
