"""The error budget's guard under torch.compile: one opaque op runs it with the launch, so a compiled ε call reuses
drop masses as an eager one does (before, every compiled call measured them). On the CPU the Triton launch runs in
the interpreter (conftest); the op is what the compiled CUDA path calls."""

import pytest
import torch

import sparge_diffusers.attention as attention
from sparge_diffusers import SpargeConfig, sparge_attn
from sparge_diffusers.budget_guard import BudgetGuard, guard_by_key
from sparge_diffusers.compiled_guard import guarded_sparge_attention
from sparge_diffusers.kernels.dispatch import sparge_attention_launch
from sparge_diffusers.kernels.selection import Selection

ARGS = (0.125, 128, 64, 0.05, None, None, "int8-fp16", [0, 40], "lse")


def _qkv(gen, s=333):
    return [torch.randn(1, 2, s, 64, generator=gen).half() for _ in range(3)]


def test_guarded_op_reuses_and_matches_the_launch(gen):
    q, k, v = _qkv(gen)
    guard = BudgetGuard()
    assert guard_by_key(guard.key) is guard
    step = torch.compile(lambda q, k, v: guarded_sparge_attention(q, k, v, *ARGS, guard.key), fullgraph=True,
                         backend="eager")
    try:
        outs = [step(q, k, v) for _ in range(4)]
    finally:
        torch._dynamo.reset()
    # calls 1 and 2 measure (interval 1, then 2 once they agree), call 3 reuses, call 4 measures
    assert (guard.measured, guard.reused) == (3, 1)
    drop = guard.reuse((1, 2, 333, 333))
    assert drop is not None and drop.shape == (1, 2)
    expected, _, _, used = sparge_attention_launch(q, k, v, 0.125, 128, 64, Selection("budget", 0.05), None, None,
                                                   "int8-fp16", [0, 40], "lse")
    assert torch.equal(used, drop)
    torch.testing.assert_close(outs[-1], expected, rtol=0, atol=0)


def test_compiled_sparge_attn_with_a_guard_goes_through_the_op(gen, monkeypatch):
    calls = []
    original = guarded_sparge_attention

    def counting(*args):
        calls.append(args[12])  # the guard key
        return original(*args)

    monkeypatch.setattr("sparge_diffusers.compiled_guard.guarded_sparge_attention", counting)
    monkeypatch.setattr(attention, "_choose_backend", lambda q, k, config, forced=0: "triton")  # the CUDA choice, on the CPU
    q, k, v = _qkv(gen)
    guard = BudgetGuard()
    config = SpargeConfig(target_error=0.05, precision="int8-fp16", block_n=64, keep_token_ranges=[(0, 40)],
                          check_finite=False)
    eager = sparge_attn(q, k, v, config=config, guard=BudgetGuard())
    step = torch.compile(lambda q, k, v: sparge_attn(q, k, v, config=config, guard=guard), fullgraph=True,
                         backend="eager")
    try:
        out = step(q, k, v)
        step(q, k, v)
    finally:
        torch._dynamo.reset()
    assert calls == [guard.key, guard.key] and guard.measured == 2
    torch.testing.assert_close(out, eager, rtol=0, atol=0)


def test_guard_keys_are_unique_and_survive_reset():
    a, b = BudgetGuard(), BudgetGuard()
    assert a.key != b.key
    key = a.key
    a.reset()
    assert a.key == key and guard_by_key(key) is a
    with pytest.raises(KeyError):
        guard_by_key("guard-none")


def test_guarded_op_reuses_block_maps_while_drop_masses_are_reused(gen):
    q, k, v = _qkv(gen)
    guard = BudgetGuard()
    step = torch.compile(lambda q, k, v: guarded_sparge_attention(q, k, v, *ARGS, guard.key, 2), fullgraph=True,
                         backend="eager")
    try:
        outs = [step(q, k, v) for _ in range(4)]
    finally:
        torch._dynamo.reset()
    # calls 1, 2 and 4 measure (and predict); call 3 reuses the drop masses and, map_reuse 2, call 2's map
    assert (guard.measured, guard.reused, guard.maps_reused) == (3, 1, 1)
    torch.testing.assert_close(outs[2], outs[1], rtol=0, atol=0)  # same inputs: the reused map is call 2's own
    slot = guard._slots[(1, 2, 333, 333)]
    assert slot.block_map[0] == "triton" and slot.block_map[1].shape == (1, 2, 3, 1) and slot.block_map[2] == 6
