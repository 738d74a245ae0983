"""The NaN / inf check of sparge_attn's inputs: immediate when called alone, deferred on the device (one host read
per transformer forward) in the diffusers integration, off under torch.compile."""

import pytest
import torch

from sparge_diffusers import SpargeConfig, apply_sparge, remove_sparge, sparge_attn
from sparge_diffusers.finite import FiniteCheck, input_norms

SPARSE = SpargeConfig(topk=0.5, sim_threshold=None, precision="bf16", block_m=64, block_n=64)


def _qkv(seed=0, s=200):
    gen = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(1, 2, s, 32, generator=gen) for _ in range(3))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=["nan", "inf", "-inf"])
def test_norms_are_non_finite_exactly_when_an_input_is(value):
    q, k, v = _qkv()
    assert torch.isfinite(input_norms((q, k, v))).all()
    k[0, 1, 3, 4] = value
    assert torch.isfinite(input_norms((q, k, v))).tolist() == [True, False, True]
    # half precision: the sum is fp32, so many large finite values do not overflow (fp16 max is 65504)
    big = torch.full((4096, 64), 60000.0, dtype=torch.float16)
    assert torch.isfinite(input_norms((big,))).all()


def test_deferred_check_queues_without_raising_and_names_the_first_bad_layer():
    check = FiniteCheck()
    good = _qkv(1)
    bad = list(_qkv(2))
    bad[2][0, 0, 7, 1] = float("nan")
    out_good = sparge_attn(*good, config=SPARSE, layer=0, finite_check=check)
    sparge_attn(*bad, config=SPARSE, layer=3, finite_check=check)  # queued, no raise yet
    sparge_attn(*good, config=SPARSE, layer=5, finite_check=check)
    assert len(check) == 3
    torch.testing.assert_close(out_good, sparge_attn(*good, config=SPARSE.replace(check_finite=False)))
    with pytest.raises(ValueError, match="v of attention layer 3 contains NaN or inf"):
        check.raise_if_set("test")
    assert len(check) == 0
    check.raise_if_set("test")  # the queue was consumed


def test_deferred_check_folds_a_long_queue(monkeypatch):
    from sparge_diffusers import finite

    monkeypatch.setattr(finite, "MAX_ENTRIES", 4)
    check = FiniteCheck()
    q, k, v = _qkv()
    for layer in range(5):
        check.add(layer, q, k, v)
    assert len(check) <= 4
    bad = q.clone()
    bad[0, 0, 0, 0] = float("inf")
    for layer in range(6):
        check.add(layer, bad if layer == 1 else q, k, v)
    with pytest.raises(ValueError, match="contains NaN or inf"):
        check.raise_if_set("test")


def test_dense_calls_are_not_checked():
    q, k, v = _qkv()
    q[0, 0, 0, 0] = float("nan")
    out = sparge_attn(q, k, v, config=SPARSE.replace(dense_below_seq_len=10_000))
    assert torch.isnan(out).any()  # SDPA propagates the NaN itself


def _wan():
    from sparge_diffusers.pipelines.tiny import tiny_transformer, transformer_inputs

    transformer = tiny_transformer("wan", variant="1.3b", num_layers=2)
    return transformer, transformer_inputs(transformer, (3, 8, 16))


def test_integration_raises_once_at_the_end_of_the_forward_naming_the_layer():
    transformer, inputs = _wan()
    apply_sparge(transformer, SPARSE)
    calls = []
    block = transformer.blocks[1].attn1
    # NaN in the second block's self-attention input only (layer 2: each block has attn1 and attn2)
    handle = block.register_forward_pre_hook(lambda m, args: calls.append(1) or (args[0] * float("nan"),) + args[1:])
    try:
        with torch.no_grad(), pytest.raises(ValueError, match=r"q of attention layer 2 contains NaN or inf \(forward"):
            transformer(**inputs)
        assert calls == [1]  # the forward ran to its end: the check is read after it, not inside the layer
        handle.remove()
        with torch.no_grad():
            transformer(**inputs)  # the queue of the failed forward is gone
        apply_sparge(transformer, SPARSE.replace(check_finite=False))
        handle = block.register_forward_pre_hook(lambda m, args: (args[0] * float("nan"),) + args[1:])
        with torch.no_grad():
            transformer(**inputs)  # check off: no error (the sparse path may even return finite garbage)
    finally:
        handle.remove()
        remove_sparge(transformer)

