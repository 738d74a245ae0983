"""The Triton error-budget measurement (`kernels.budget.kernel`) against its naive reference (`kernels.budget.naive`),
under ``TRITON_INTERPRET=1`` on the CPU in fp16 at small sizes; test_triton_gpu.py repeats it in bf16 at full size."""

import pytest
import torch

from sparge_diffusers.kernels import budget as B
from sparge_diffusers.kernels.budget import kernel as K
from sparge_diffusers.kernels.predict.naive import naive_forced_blocks, naive_lse_block_probs

# Kernel partials vs the fp32 naive partials of the same fp16 inputs, relative to the largest |u|: the kernel rounds
# the weights exp(s - m) to fp16 before P·V (relative 2^-11 = 4.9e-4); measured 1.1e-4 at Sk = 700, D = 64.
PARTIALS_RTOL = 2e-3
# A chosen drop mass may differ from the naive one only where the naive error of a candidate between the two sits
# within this relative distance of the target (the sums are rounded differently).
CHOICE_SLACK = 1e-3


def _qkv(gen, b, h, sq, sk, d, strided=False):
    if strided:  # [B, S, H, D] storage seen as [B, H, S, D], as diffusers' attention hands it over
        q = (torch.randn(b, sq, h, d, generator=gen) * 2).half().transpose(1, 2)
        k, v = (torch.randn(b, sk, h, d, generator=gen).half().transpose(1, 2) for _ in range(2))
    else:
        q = (torch.randn(b, h, sq, d, generator=gen) * 2).half()
        k, v = (torch.randn(b, h, sk, d, generator=gen).half() for _ in range(2))
    return q, k, v


def _flat(x):
    return x.reshape(-1, *x.shape[2:])


@pytest.mark.parametrize("b, h, sq, sk, d, block_n, strided", [
    (1, 2, 300, 300, 64, 64, False),
    (2, 1, 97, 97, 128, 64, True),
    (1, 2, 200, 333, 64, 128, True),
    (2, 1, 513, 130, 128, 128, False),
    (1, 1, 140, 100, 72, 32, False),
], ids=["S300-D64", "S97-D128-strided", "Sq200-Sk333-bn128-strided", "B2-Sq513-Sk130-D128", "D72-bn32"])
def test_partials_match_naive(gen, b, h, sq, sk, d, block_n, strided):
    q, k, v = _qkv(gen, b, h, sq, sk, d, strided)
    scale = d ** -0.5
    rows, _ = K.sampled_rows(sq, 128, 96, q.device)
    m, z, u = K.budget_partials_fwd(q, k, v, rows, scale=scale, block_n=block_n)
    z0, u0 = B.naive_row_partials(_flat(q)[:, rows.long()].float(), _flat(k).float(), _flat(v).float(), scale=scale,
                                  block_n=block_n)
    w = torch.exp(m - m.amax(-1, keepdim=True))
    torch.testing.assert_close(z * w, z0, rtol=1e-4, atol=1e-5)
    assert (u * w[..., None] - u0).abs().max() <= PARTIALS_RTOL * u0.abs().max()


def _probs_with_ties(gen, b, h, nq, nk):
    probs = torch.softmax(torch.randn(b, h, nq, nk, generator=gen) * 2, -1)
    probs[..., ::3] = probs[..., 1::3].mean(-1, keepdim=True)  # equal masses: the order breaks ties by index
    return probs / probs.sum(-1, keepdim=True)


@pytest.mark.parametrize("per_head_forced, total_mass", [(False, 1.0), (True, 1.0), (False, 0.3)],
                         ids=["shared-forced", "per-head-forced", "mass-0.3"])
def test_drop_errors_match_naive_on_the_same_partials(gen, per_head_forced, total_mass):
    """The bucket, error and choice kernels alone: fed the naive partials (block max 0), their errors are
    `naive.drop_errors`. With a
    total mass below the largest drop mass, only the rule that the most massive block stays keeps a block."""
    b, h, nq, nk, d = 1, 3, 5, 37, 64
    rows, row_block = K.sampled_rows(nq * 128 - 20, 128, 96, "cpu")
    r = rows.numel()
    probs = _probs_with_ties(gen, b, h, nq, nk) * total_mass
    z0 = torch.rand(b * h, r, nk, generator=gen) + 0.01
    u0 = torch.randn(b * h, r, nk, d, generator=gen) * z0[..., None]
    if per_head_forced:
        fc = torch.rand(b, h, nk, generator=gen) < 0.2
        fr = torch.rand(b, h, nq, generator=gen) < 0.3
    else:
        fc = torch.zeros(nk, dtype=torch.bool)
        fc[:3] = total_mass == 1.0
        fr = torch.zeros(nq, dtype=torch.bool)
        fr[1] = True
    ladder = K.ladder_tensor(torch.device("cpu"))
    err = torch.empty(b * h, r, ladder.numel())
    ref_norm = torch.empty(b * h, r)
    bucket = K.budget_buckets_fwd(probs.reshape(b * h, nq, nk), row_block, K.per_head_mask(fr, b * h, nq),
                                  K.per_head_mask(fc, b * h, nk), ladder)
    K.budget_drop_errors_fwd(torch.zeros_like(z0), z0, u0, bucket, ladder.numel(), err, ref_norm)
    errors, drop = K.budget_choose_fwd(err, ref_norm, ladder, 0.03)
    fc_rows = fc.reshape(-1, nk).expand(b * h, nk)
    fr_rows = fr.reshape(-1, nq).expand(b * h, nq)[:, row_block.long()]
    expected = B.drop_errors(probs.reshape(b * h, nq, nk)[:, row_block.long()], fc_rows, fr_rows, z0, u0,
                             B.DROP_MASS_LADDER)
    torch.testing.assert_close(errors, expected, rtol=1e-4, atol=1e-6)
    assert torch.equal(drop, B.choose_drop_mass(errors, 0.03, B.DROP_MASS_LADDER))


def test_choose_matches_naive_on_crafted_errors():
    ladder = K.ladder_tensor(torch.device("cpu"))
    c = ladder.numel()
    errors = torch.full((4, c), 0.01)
    errors[1, 5] = 0.2  # a failure in the middle: only the entries after it qualify
    errors[2] = 0.2  # nothing meets it: keep every block
    errors[3, -1] = float("nan")  # a NaN never meets it
    r = 3
    err = errors[:, None, :].expand(4, r, c).contiguous() / r  # rows sum back to `errors` (ref_norm 1 in all)
    got_errors, drop = K.budget_choose_fwd(err, torch.full((4, r), 1.0 / r), ladder, 0.05)
    assert torch.equal(drop, B.choose_drop_mass(errors, 0.05, B.DROP_MASS_LADDER))
    assert drop[0] == B.DROP_MASS_LADDER[0] and drop[1] == B.DROP_MASS_LADDER[6] and drop[2] == B.KEEP_ALL
    assert drop[3] == B.KEEP_ALL


def _budget_case(gen, b, h, s, d, block_n, strided=False):
    q, k, v = _qkv(gen, b, h, s, s, d, strided)
    k = k + 0.5 * q.float().mean(2, keepdim=True).half()  # some concentration, so that some blocks can be dropped
    scale = d ** -0.5
    probs = naive_lse_block_probs(q.float(), k.float(), block_m=128, block_n=block_n, scale=scale)
    fr, fc = naive_forced_blocks(q, k, block_m=128, block_n=block_n, keep_ranges=[(0, 20)])
    return q, k, v, probs, dict(block_m=128, block_n=block_n, scale=scale, forced_rows=fr, forced_cols=fc)


def _naive_errors(q, k, v, probs, args):
    rows, row_block = K.sampled_rows(q.shape[2], 128, 96, q.device)
    z, u = B.naive_row_partials(_flat(q)[:, rows.long()].float(), _flat(k).float(), _flat(v).float(),
                                scale=args["scale"], block_n=args["block_n"])
    nq, nk = probs.shape[-2:]
    g = q.shape[0] * q.shape[1]
    fr = args["forced_rows"].reshape(-1, nq).expand(g, nq)[:, row_block.long()]
    fc = args["forced_cols"].reshape(-1, nk).expand(g, nk)
    return B.drop_errors(probs.reshape(g, nq, nk)[:, row_block.long()], fc, fr, z, u, B.DROP_MASS_LADDER)


def _check_choices(got, expected, naive_errors, target):
    """Equal drop masses, except where a candidate between the two has a naive error within CHOICE_SLACK of the
    target; returns the number of such near-threshold differences."""
    ladder = list(B.DROP_MASS_LADDER) + [B.KEEP_ALL]
    differ = 0
    for g, (a, e) in enumerate(zip(got.flatten().tolist(), expected.flatten().tolist())):
        if a == e:
            continue
        lo, hi = sorted((ladder.index(a), ladder.index(e)))
        near = (naive_errors[g, lo:min(hi + 1, len(ladder) - 1)] - target).abs() <= CHOICE_SLACK * target
        assert near.any(), (g, a, e, naive_errors[g].tolist())
        differ += 1
    return differ


@pytest.mark.parametrize("b, h, s, d, block_n, strided", [
    (2, 2, 400, 64, 64, False),
    (1, 3, 333, 128, 128, True),
], ids=["B2-S400-D64", "S333-D128-strided"])
@pytest.mark.parametrize("target_error", [0.02, 0.1])
def test_budget_drop_mass_matches_naive(gen, b, h, s, d, block_n, strided, target_error):
    q, k, v, probs, args = _budget_case(gen, b, h, s, d, block_n, strided)
    got, errors = K.budget_drop_mass_fwd(q, k, v, probs, target_error=target_error, return_errors=True, **args)
    naive_errors = _naive_errors(q, k, v, probs, args)
    # the kernel's errors follow the naive ones to the fp16 rounding of its weights
    assert ((errors.reshape(naive_errors.shape) - naive_errors).abs() <= 1e-3 * naive_errors + 1e-5).all()
    expected = B.naive_budget_drop_mass(q.float(), k.float(), v.float(), probs, target_error=target_error, **args)
    assert _check_choices(got, expected, naive_errors, B.GUARD_MARGIN * target_error) == 0  # rare: none here
    assert (got > 0).any()  # the case is not trivially all keep-all


def test_chunked_launches_give_the_same_result(gen):
    q, k, v, probs, args = _budget_case(gen, 1, 3, 256, 64, 64)
    whole, errors = K.budget_drop_mass_fwd(q, k, v, probs, target_error=0.05, return_errors=True, **args)
    chunked, chunk_errors = K.budget_drop_mass_fwd(q, k, v, probs, target_error=0.05, return_errors=True,
                                                   max_partials_bytes=1, **args)  # one head per launch
    assert torch.equal(whole, chunked) and torch.equal(errors, chunk_errors)


def test_public_entry_picks_and_validates(gen):
    q, k, v, probs, args = _budget_case(gen, 1, 2, 200, 64, 64)
    auto = B.budget_drop_mass(q.float(), k.float(), v.float(), probs, target_error=0.05, **args)  # CPU: naive
    naive = B.naive_budget_drop_mass(q.float(), k.float(), v.float(), probs, target_error=0.05, **args)
    assert torch.equal(auto, naive)
    triton = B.budget_drop_mass(q, k, v, probs, target_error=0.05, implementation="triton", **args)
    assert triton.shape == (1, 2) and triton.dtype == torch.float32
    with pytest.raises(ValueError, match="implementation"):
        B.budget_drop_mass(q, k, v, probs, target_error=0.05, implementation="cuda", **args)
    with pytest.raises(ValueError, match="block_n"):
        B.budget_drop_mass(q, k, v, probs, target_error=0.05, implementation="triton",
                           **{**args, "block_n": 96})
    with pytest.raises(ValueError, match="probs"):
        K.budget_drop_mass_fwd(q, k, v, probs[..., :-1], target_error=0.05, **args)
