import pytest

from sparge_diffusers import SpargeConfig


def test_defaults_are_valid_and_frozen():
    config = SpargeConfig()
    assert config.selection.rule == "topk" and config.topk == 0.5 and config.target_error is None
    assert config.precision == "int8-fp8"
    with pytest.raises(Exception):
        config.topk = 0.3


@pytest.mark.parametrize(
    "kwargs, argument",
    [
        ({"topk": 0.0}, "topk"),
        ({"topk": 1.5}, "topk"),
        ({"topk": -0.1}, "topk"),
        ({"topk": None, "cdf_threshold": 0.0}, "cdf_threshold"),
        ({"topk": None, "cdf_threshold": None}, "topk"),
        ({"calibration": 3}, "calibration"),
        ({"sim_threshold": 2.0}, "sim_threshold"),
        ({"pv_threshold": 3.0}, "pv_threshold"),
        ({"precision": "int4"}, "precision"),
        ({"reorder": "zorder"}, "reorder"),
        ({"block_m": 96}, "block_m"),
        ({"block_n": 32}, "block_n"),
        ({"keep_token_ranges": [(5, 2)]}, "keep_token_ranges"),
        ({"keep_token_ranges": [3]}, "keep_token_ranges"),
        ({"dense_steps": -1}, "dense_steps"),
        ({"head_dim_fallback": "crash"}, "head_dim_fallback"),
    ],
    ids=lambda value: str(value),
)
def test_bad_values_name_the_argument(kwargs, argument):
    with pytest.raises(ValueError, match=argument):
        SpargeConfig(**kwargs)


def test_is_dense_and_replace():
    assert SpargeConfig(topk=1.0).is_dense
    assert SpargeConfig(topk=None, cdf_threshold=1.0).is_dense
    assert not SpargeConfig(topk=0.5).is_dense
    assert SpargeConfig(predictor="full").is_dense
    changed = SpargeConfig().replace(topk=0.2, keep_token_ranges=[[0, 10]])
    assert changed.topk == 0.2 and changed.keep_token_ranges == ((0, 10),)
    assert changed.to_dict()["topk"] == 0.2
