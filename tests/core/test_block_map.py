import pytest
import torch

from sparge_diffusers import BlockMap


def test_lut_dense_and_sparsity_agree(gen):
    mask = torch.rand(2, 3, 5, 7, generator=gen) < 0.4
    block_map = BlockMap(mask, block_m=128, block_n=64, seq_len_q=600, seq_len_k=420)
    lut, counts = block_map.to_lut()
    for b in range(2):
        for h in range(3):
            for i in range(5):
                kept = torch.nonzero(mask[b, h, i]).flatten().to(torch.int32)
                assert int(counts[b, h, i]) == len(kept)
                assert torch.equal(lut[b, h, i, : len(kept)], kept)
    dense = block_map.to_dense()
    assert dense.shape == (2, 3, 600, 420)
    assert dense[0, 0, 130, 70].item() == mask[0, 0, 1, 1].item()
    assert dense[1, 2, 599, 419].item() == mask[1, 2, 4, 6].item()
    assert block_map.sparsity() == pytest.approx(1 - mask.float().mean().item())
    assert block_map.sparsity_per_head().shape == (2, 3)
    assert 0.0 <= block_map.token_sparsity() <= 1.0


def test_repr_shows_shape_and_sparsity():
    block_map = BlockMap.full(1, 2, 300, 300, 128, 64)
    text = repr(block_map)
    assert "heads=2" in text and "sparsity=0.000" in text and "3x128" in text


def test_rejects_mismatched_mask():
    with pytest.raises(ValueError, match="blocks"):
        BlockMap(torch.ones(1, 1, 2, 2, dtype=torch.bool), 128, 64, seq_len_q=600, seq_len_k=128)
    with pytest.raises(ValueError, match="bool"):
        BlockMap(torch.ones(1, 1, 1, 1), 128, 64, 1, 1)
