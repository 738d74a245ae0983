"""The never-slower rule: a crossover table decides which calls go dense."""

import pytest

from sparge_diffusers import SpargeConfig
from sparge_diffusers.speed_rule import crossover_table, least_winning_sparsity, sparse_can_win

# (key length, batch * heads, least winning sparsity); measured at 24 and 48 heads x batch
TABLE = {64: [(1024, 48, None), (4608, 48, 0.7), (17776, 48, 0.0)],
         128: [(1024, 48, None), (4608, 24, None), (4608, 48, 0.5), (17776, 24, 0.3), (17776, 48, 0.1)]}


@pytest.mark.parametrize("head_dim, seq_len, batch_heads, sparsity, wins", [
    (64, 512, 48, 0.9, False),      # shorter than anything measured
    (64, 2000, 48, 0.9, False),     # at 1024 nothing won
    (64, 5000, 48, 0.5, False),     # at 4608 it takes 0.7
    (64, 5000, 48, 0.8, True),
    (64, 20000, 48, 0.0, True),     # long sequences win even dense
    (64, 20000, 12, 0.0, False),    # a quarter of the heads: less work than the 17,776 call, more than 4,608's 48
    (64, 20000, 12, 0.7, True),     # ... so the 4,608 x 48 crossover applies
    (128, 20000, 48, 0.05, False),
    (128, 20000, 48, 0.1, True),
    (128, 2000, 48, 0.0, False),
    (128, 4608, 24, 0.9, False),    # batch 1 at 4,608 never won (Flux.1-dev)
    (128, 4608, 48, 0.5, True),     # the CFG batch of 2 did
    (128, 4608, 47, 0.5, False),    # less work than the call that won
    (128, 17776, 40, 0.2, False),   # between the measured head counts: the smaller one's crossover
    (128, 17776, 40, 0.3, True),
    (128, 4000, 1000, 0.9, False),  # much more work but shorter than anything measured to win
    (96, 20000, 48, 0.1, False),    # padded 96 -> 128: needs 1 - 0.9 * 0.75 = 0.325
    (96, 20000, 48, 0.4, True),
])
def test_sparse_can_win(head_dim, seq_len, batch_heads, sparsity, wins):
    assert sparse_can_win(TABLE, head_dim, seq_len, batch_heads, sparsity) is wins


def test_padding_raises_the_crossover():
    assert least_winning_sparsity(TABLE, 96, 20000, 48) == pytest.approx(1 - 0.9 * 96 / 128)
    assert least_winning_sparsity(TABLE, 128, 20000, 48) == pytest.approx(0.1)


def test_forced_text_lowers_the_expected_sparsity():
    from sparge_diffusers.speed_rule import expected_sparsity

    assert expected_sparsity(SpargeConfig(topk=0.5)) == pytest.approx(0.5)
    # Flux.1-dev: 512 text tokens of 4,608 are computed densely (rows and columns)
    assert expected_sparsity(SpargeConfig(topk=0.5), 512 / 4608) == pytest.approx(0.5 * (4096 / 4608) ** 2)
    # τ and ε may keep every block: they count as sparsity 0 (sparse only where a full mask wins)
    assert expected_sparsity(SpargeConfig(target_error=0.05), 0.1) == 0.0
    assert expected_sparsity(SpargeConfig(cdf_threshold=0.9)) == 0.0
    # at the 4,608 x 48 crossover (0.5) topk 0.5 wins only without forced tokens
    from sparge_diffusers.speed_rule import dense_by_table

    assert not dense_by_table(TABLE, 128, 4608, 48, SpargeConfig(topk=0.5))
    assert dense_by_table(TABLE, 128, 4608, 48, SpargeConfig(topk=0.5), 512 / 4608)


def test_forced_tokens_count_each_token_once():
    from sparge_diffusers.attention import _forced_tokens

    assert _forced_tokens((), 100) == 0
    assert _forced_tokens(((0, 10), (5, 20), (90, 120)), 100) == 30
    assert _forced_tokens(((50, 60), (0, 10)), 100) == 20


def test_committed_table_is_well_formed():
    table = crossover_table("sm90")
    assert table is not None and set(table) == {64, 128}
    for entries in table.values():
        assert entries == sorted(entries) and len({s for s, _, _ in entries}) >= 4
        assert len({bh for _, bh, _ in entries}) >= 2  # at least two batch x heads sizes per head dim
        assert all(w is None or 0.0 <= w <= 1.0 for _, _, w in entries)
    assert crossover_table("sm10") is None


def test_speed_rule_is_validated():
    assert SpargeConfig().speed_rule == "auto"
    with pytest.raises(ValueError, match="speed_rule"):
        SpargeConfig(speed_rule="fast")


def test_committed_table_records_the_measured_budget_call():
    import json
    import os

    from sparge_diffusers import speed_rule

    with open(os.path.join(speed_rule._TABLE_DIR, "sm90.json")) as handle:
        entry = json.load(handle)["budget_measured_call"]
    assert speed_rule._measured_budget_min_len("sm90") == entry["min_seq_len"] == 17776
    assert speed_rule._measured_budget_min_len("sm10") is None


@pytest.mark.parametrize("config, seq_len, batch_heads, dense", [
    (SpargeConfig(topk=0.5), 4608, 24, True),          # Flux.1-dev 1024^2, batch 1: the sparse call loses there
    (SpargeConfig(topk=0.5), 17776, 60, False),        # CogVideoX-2b length and CFG batch win
    (SpargeConfig(target_error=0.05), 1024, 24, True),
    (SpargeConfig(target_error=0.05), 4608, 48, True),    # needs 0.3 there; the budget may keep every block
    (SpargeConfig(target_error=0.05), 8192, 24, False),   # session 13: a full mask wins at 8,192 keys
    (SpargeConfig(target_error=0.05), 17776, 60, False),  # wins even with a full mask
    (SpargeConfig(target_error=0.05), 8192, 48, False),
    (SpargeConfig(topk=0.5, speed_rule="sparse"), 4608, 24, False),
])
def test_dense_by_table_reads_the_committed_table(config, seq_len, batch_heads, dense):
    from sparge_diffusers.speed_rule import dense_by_table

    assert dense_by_table(crossover_table("sm90"), 128, seq_len, batch_heads, config, 512 / 4608) is dense


def test_no_token_reorder_when_every_call_goes_dense(monkeypatch):
    # the boundary reorder costs time; when the speed rule sends the forward's attention length to dense SDPA (Flux
    # at 4,608 tokens measured 0.995x stock compiled with the order applied), the tokens keep their order
    import torch

    import sparge_diffusers.speed_rule as speed_rule
    from sparge_diffusers.context import SpargeContext

    monkeypatch.setattr(speed_rule, "_capability_for", lambda device: "sm90")
    cuda = torch.device("cuda")
    context = SpargeContext(SpargeConfig(topk=0.5))
    context.begin_forward(grid=(64, 64), num_visual=4096, text_len=512, text_side="first", timestep=None, batch=1)
    assert context.reorder_pays(cuda)  # head dim and heads unknown: reorder as before
    context.head_dim, context.heads = 128, 24
    assert not context.reorder_pays(cuda) and context.permutation_for(cuda) is None
    assert context.reorder_pays(torch.device("cpu"))  # off CUDA the rule does not apply
    context.begin_forward(grid=(1, 128, 136), num_visual=17408, text_len=368, text_side="first", timestep=None,
                          batch=2)
    assert context.reorder_pays(cuda)  # 17,776 tokens: the sparse path wins, reorder
    context.begin_forward(grid=(8, 24, 24), num_visual=1024, text_len=512, text_side="none", timestep=None, batch=1)
    assert not context.reorder_pays(cuda)  # cross-attention text does not lengthen the self-attention
    context.begin_forward(grid=(64, 64), num_visual=4096, text_len=512, text_side="first", timestep=None)
    assert context.reorder_pays(cuda)  # batch unknown: reorder
    forced = SpargeContext(SpargeConfig(topk=0.5, speed_rule="sparse"))
    forced.head_dim, forced.heads = 128, 24
    forced.begin_forward(grid=(64, 64), num_visual=4096, text_len=512, text_side="first", timestep=None, batch=1)
    assert forced.reorder_pays(cuda)


def test_apply_sparge_records_the_head_dim():
    from sparge_diffusers import apply_sparge, remove_sparge
    from sparge_diffusers.integration import _STATE_ATTR
    import torch

    from sparge_diffusers.pipelines.tiny import TINY_GRIDS, tiny_transformer, transformer_inputs

    transformer = tiny_transformer("flux")
    apply_sparge(transformer, SpargeConfig(topk=0.5))
    try:
        context = getattr(transformer, _STATE_ATTR).context
        assert context.head_dim == transformer.config.attention_head_dim and isinstance(context.head_dim, int)
        assert context.heads == transformer.config.num_attention_heads and isinstance(context.heads, int)
        kwargs = transformer_inputs(transformer, TINY_GRIDS["flux"], batch_size=3)
        with torch.no_grad():
            transformer(**kwargs)
        assert context.current.batch == 3  # the geometry hook saw the batch
    finally:
        remove_sparge(transformer)
