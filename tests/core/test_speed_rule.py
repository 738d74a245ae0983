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
