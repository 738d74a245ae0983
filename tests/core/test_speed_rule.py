"""The never-slower rule: a crossover table decides which calls go dense."""

import pytest

from sparge_diffusers import SpargeConfig
from sparge_diffusers.speed_rule import crossover_table, least_winning_sparsity, sparse_can_win

TABLE = {64: [(1024, None), (4608, 0.7), (17776, 0.0)], 128: [(1024, None), (4608, 0.5), (17776, 0.1)]}


@pytest.mark.parametrize("head_dim, seq_len, sparsity, wins", [
    (64, 512, 0.9, False),      # shorter than anything measured
    (64, 2000, 0.9, False),     # at 1024 nothing won
    (64, 5000, 0.5, False),     # at 4608 it takes 0.7
    (64, 5000, 0.8, True),
    (64, 20000, 0.0, True),     # long sequences win even dense
    (128, 20000, 0.05, False),
    (128, 20000, None, True),   # unknown sparsity: only the length test
    (128, 2000, None, False),
    (96, 20000, 0.1, False),    # padded 96 -> 128: needs 1 - 0.9 * 0.75 = 0.325
    (96, 20000, 0.4, True),
])
def test_sparse_can_win(head_dim, seq_len, sparsity, wins):
    assert sparse_can_win(TABLE, head_dim, seq_len, sparsity) is wins


def test_padding_raises_the_crossover():
    assert least_winning_sparsity(TABLE, 96, 20000) == pytest.approx(1 - 0.9 * 96 / 128)
    assert least_winning_sparsity(TABLE, 128, 20000) == pytest.approx(0.1)


def test_committed_table_is_well_formed():
    table = crossover_table("sm90")
    assert table is not None and set(table) == {64, 128}
    for entries in table.values():
        lengths = [s for s, _ in entries]
        assert lengths == sorted(lengths) and len(lengths) >= 4
        assert all(w is None or 0.0 <= w <= 1.0 for _, w in entries)
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


@pytest.mark.parametrize("config, seq_len, dense", [
    (SpargeConfig(topk=0.5), 4608, True),         # Flux.1-dev 1024^2: nothing measured at 4,608 won (head dim 128)
    (SpargeConfig(topk=0.5), 17776, False),       # CogVideoX-2b length wins
    (SpargeConfig(target_error=0.05), 4608, True),
    (SpargeConfig(topk=0.5, speed_rule="sparse"), 4608, False),
])
def test_dense_by_table_reads_the_committed_table(config, seq_len, dense):
    from sparge_diffusers.speed_rule import dense_by_table

    assert dense_by_table(crossover_table("sm90"), 128, seq_len, config) is dense


def test_no_token_reorder_when_every_call_goes_dense(monkeypatch):
    # the boundary reorder costs time; when the speed rule sends the forward's attention length to dense SDPA (Flux
    # at 4,608 tokens measured 0.995x stock compiled with the order applied), the tokens keep their order
    import torch

    import sparge_diffusers.speed_rule as speed_rule
    from sparge_diffusers.context import SpargeContext

    monkeypatch.setattr(speed_rule, "_capability_for", lambda device: "sm90")
    cuda = torch.device("cuda")
    context = SpargeContext(SpargeConfig(topk=0.5))
    context.begin_forward(grid=(64, 64), num_visual=4096, text_len=512, text_side="first", timestep=None)
    assert context.reorder_pays(cuda)  # head dim unknown: reorder as before
    context.head_dim = 128
    assert not context.reorder_pays(cuda) and context.permutation_for(cuda) is None
    assert context.reorder_pays(torch.device("cpu"))  # off CUDA the rule does not apply
    context.begin_forward(grid=(1, 128, 136), num_visual=17408, text_len=368, text_side="first", timestep=None)
    assert context.reorder_pays(cuda)  # 17,776 tokens: the sparse path wins, reorder
    context.begin_forward(grid=(8, 24, 24), num_visual=4608, text_len=512, text_side="none", timestep=None)
    assert not context.reorder_pays(cuda)  # cross-attention text does not lengthen the self-attention
    forced = SpargeContext(SpargeConfig(topk=0.5, speed_rule="sparse"))
    forced.head_dim = 128
    forced.begin_forward(grid=(64, 64), num_visual=4096, text_len=512, text_side="first", timestep=None)
    assert forced.reorder_pays(cuda)


def test_apply_sparge_records_the_head_dim():
    from sparge_diffusers import apply_sparge, remove_sparge
    from sparge_diffusers.integration import _STATE_ATTR
    from sparge_diffusers.pipelines.tiny import tiny_transformer

    transformer = tiny_transformer("flux")
    apply_sparge(transformer, SpargeConfig(topk=0.5))
    try:
        context = getattr(transformer, _STATE_ATTR).context
        assert context.head_dim == transformer.config.attention_head_dim and isinstance(context.head_dim, int)
    finally:
        remove_sparge(transformer)
