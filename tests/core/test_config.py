import pytest

from sparge_diffusers import SpargeConfig


def test_defaults_are_valid_and_frozen():
    from sparge_diffusers.config import DEFAULT_TARGET_ERROR

    config = SpargeConfig()
    # the default is the error budget, ranked by the mixed predictor (budget_eval.md: it holds on every family)
    assert config.selection.rule == "budget" and config.target_error == DEFAULT_TARGET_ERROR == 0.05
    assert config.topk is None and config.predictor == "mixed"
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
    # naming one selection rule clears the others: top-k here, not the default budget beside it
    assert changed.target_error is None and changed.selection.rule == "topk"
    assert SpargeConfig(topk=0.3).replace(cdf_threshold=0.9).selection.rule == "cdf"
    assert SpargeConfig(topk=0.3).replace(precision="bf16").topk == 0.3  # other fields leave the rule alone
    back = changed.replace(topk=None)
    assert back.selection.rule == "budget" and back.target_error == 0.05  # no rule left: the default budget


def test_no_rule_means_the_error_budget():
    assert SpargeConfig(topk=None).selection.rule == "budget"
    assert SpargeConfig(cdf_threshold=0.9).selection.rule == "cdf"  # a lone τ is no longer shadowed by top-k
    assert SpargeConfig(topk=0.5).target_error is None
    assert SpargeConfig(predictor="full").target_error is None and SpargeConfig(predictor="full").is_dense
