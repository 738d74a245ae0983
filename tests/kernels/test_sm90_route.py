"""CPU checks of the Hopper schedule: which launches `sm90_route` sends there, and that the Gluon kernel compiles
for sm90 (offline, through Triton's own ptxas) without spills and without serialized wgmma."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

kernel = pytest.importorskip("sparge_diffusers.kernels.block_sparse_attn.kernel")


def _operands(d=128, dtype=torch.int8):
    q = torch.zeros(1, 2, 256, d, dtype=dtype)
    v = torch.zeros(1, 2, d, 256, dtype=torch.float8_e4m3fn)
    return q, q.clone(), v


def _route(q, k, v, **kwargs):
    args = dict(block_m=128, block_n=128, pv_mode=kernel.PV_FP8, pv_threshold=None,
                scales=(torch.ones(1), torch.ones(1), torch.ones(1)), v_transposed=True, overrides=False)
    args.update(kwargs)
    return kernel.sm90_route(q, k, v, **args)


@pytest.mark.parametrize("change, reason", [
    (dict(pv_mode=kernel.PV_FP16), "only the INT8/FP8 mode"),
    (dict(scales=(None, None, None)), "only the INT8/FP8 mode"),
    (dict(v_transposed=False), "only the INT8/FP8 mode"),
    (dict(pv_threshold=-4.0), "no λ"),
    (dict(overrides=True), "launch setting"),
    (dict(head_dims=(64,)), "head dim 128 is not in (64,)"),
    ({}, "not a Hopper GPU"),  # every other condition holds: CPU tensors
])
def test_route_names_why_a_launch_stays_on_the_triton_kernel(change, reason):
    assert reason in _route(*_operands(), **change)


def test_route_default_head_dims_and_the_environment_switch(monkeypatch):
    assert "head dim 64" in _route(*_operands(d=64))
    assert kernel.SM90_HEAD_DIMS == (128,)
    monkeypatch.setenv(kernel.SM90_ENV, "0")
    assert _route(*_operands()) == f"{kernel.SM90_ENV}=0"


def test_route_on_a_hopper_device_checks_operands(monkeypatch):
    sm90 = pytest.importorskip("sparge_diffusers.kernels.block_sparse_attn.kernel_sm90")
    monkeypatch.setattr(kernel, "_is_hopper", lambda device: True)
    q, k, v = _operands()
    assert _route(q, k, v) is None
    assert "contiguous" in _route(q.transpose(2, 3).contiguous().transpose(2, 3), k, v)
    assert "contiguous" in _route(q, k, v, block_n=64)
    assert sm90.sm90_supported(q, k, v, 128, 128)
    assert not sm90.sm90_supported(q.float(), k, v, 128, 128)


COMPILE_SCRIPT = Path(__file__).with_name("sm90_compile.py")


def _ptxas_report(ptx: str, tmp_path) -> str:
    from triton.backends.nvidia.compiler import get_ptxas

    path = tmp_path / "kernel.ptx"
    path.write_text(ptx)
    ptxas = get_ptxas(90).path  # the ptxas that Triton itself runs for sm90
    done = subprocess.run([ptxas, "-arch=sm_90a", "-v", str(path), "-o", str(tmp_path / "kernel.cubin")],
                          capture_output=True, text=True, check=True)
    return done.stdout + done.stderr


@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("schedule", [(3, 232, 40), (2, 232, 40)], ids=["default", "2-stages"])
def test_gluon_kernel_compiles_for_sm90_without_spills(head_dim, schedule, tmp_path):
    pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")
    pytest.importorskip("sparge_diffusers.kernels.block_sparse_attn.kernel_sm90")
    # a fresh process: the suite runs Triton's interpreter (TRITON_INTERPRET=1), which cannot compile
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    ptx_path = tmp_path / "kernel.ptx"
    subprocess.run([sys.executable, str(COMPILE_SCRIPT), str(head_dim), ",".join(map(str, schedule)), str(ptx_path)],
                   env=env, check=True, capture_output=True, text=True, timeout=300)
    ptx = ptx_path.read_text()
    assert ptx.count("wgmma.mma_async") >= 12  # Q·Kᵀ and P·V as k32 steps, both issued asynchronously
    assert "cp.async.bulk.tensor" in ptx  # TMA copies
    assert "setmaxnreg" in ptx  # registers moved from the producer warp to the consumers
    report = _ptxas_report(ptx, tmp_path)
    assert "C7514" not in report, report  # ptxas serialized the wgmma pipeline
    spills = [int(x) for x in re.findall(r"(\d+) bytes spill stores", report)]
    assert spills and max(spills) == 0, report


class _BrokenGluon:
    """A `kernel_sm90` whose kernel fails to build, as on a Triton whose Gluon API this code does not know."""

    calls = 0

    @staticmethod
    def sm90_supported(*args):
        return True

    @classmethod
    def sm90_fwd(cls, *args, **kwargs):
        cls.calls += 1
        raise RuntimeError("unsupported Gluon op\nsecond line")


def _fp8_launch(gen, **kwargs):
    from sparge_diffusers.block_map import BlockMap
    from sparge_diffusers.kernels import quantize

    q, k, v = (torch.randn(1, 2, 200, 128, generator=gen) for _ in range(3))
    prepared = quantize.prepare_fwd(q, k, v, block_m=128, block_n=128, q_scale_mult=128 ** -0.5 * kernel.LOG2E)
    lut, counts = BlockMap(torch.ones(1, 2, 2, 2, dtype=torch.bool), 128, 128, 200, 200).to_lut()
    p = prepared
    return kernel.block_sparse_attn_fwd(
        p.q_int8, p.k_int8, p.v_fp8, lut, counts, torch.empty_like(q), seq_len_q=200, seq_len_k=200, block_m=128,
        block_n=128, pv_mode=kernel.PV_FP8, q_scale=p.q_scale, k_scale=p.k_scale, v_scale=p.v_scale,
        softmax_scale=128 ** -0.5, v_transposed=True, **kwargs)


def test_a_hopper_kernel_that_fails_to_build_falls_back_once(monkeypatch, caplog):
    monkeypatch.setattr(kernel, "_is_hopper", lambda device: True)
    monkeypatch.setattr(kernel, "_SM90", [_BrokenGluon, False])
    _BrokenGluon.calls = 0
    expected = _fp8_launch(torch.Generator().manual_seed(0), hopper=False)
    with caplog.at_level("WARNING"):
        first = _fp8_launch(torch.Generator().manual_seed(0))
        second = _fp8_launch(torch.Generator().manual_seed(0))
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert _BrokenGluon.calls == 1  # the second call no longer tries it
    assert sum("failed to build" in r.message for r in caplog.records) == 1
    assert "unsupported Gluon op" in caplog.text and "second line" not in caplog.text
    assert "no usable Gluon" in _route(*_operands())


def test_hopper_kernel_errors_propagate_once_it_has_run(monkeypatch):
    monkeypatch.setattr(kernel, "_is_hopper", lambda device: True)
    monkeypatch.setattr(kernel, "_SM90", [_BrokenGluon, True])
    with pytest.raises(RuntimeError, match="unsupported Gluon op"):
        _fp8_launch(torch.Generator().manual_seed(0))
    monkeypatch.setattr(kernel, "_SM90", [_BrokenGluon, False])
    with pytest.raises(RuntimeError, match="unsupported Gluon op"):
        _fp8_launch(torch.Generator().manual_seed(0), hopper=True)


def test_launcher_builds_the_descriptors_and_grid(monkeypatch):
    sm90 = pytest.importorskip("sparge_diffusers.kernels.block_sparse_attn.kernel_sm90")
    launches = []

    class Recorder:
        def __getitem__(self, grid):
            return lambda *args, **meta: launches.append((grid, args, meta))

    monkeypatch.setattr(sm90, "_sm90_ws_kernel", Recorder())
    b, h, s, d = 2, 3, 300, 128
    q, k, v = torch.zeros(b, h, 384, d, dtype=torch.int8), torch.zeros(b, h, 384, d, dtype=torch.int8), \
        torch.zeros(b, h, d, 384, dtype=torch.float8_e4m3fn)
    lut, counts = torch.zeros(b, h, 3, 3, dtype=torch.int32), torch.zeros(b, h, 3, dtype=torch.int32)
    out = torch.zeros(b, s, h, d, dtype=torch.bfloat16).transpose(1, 2)
    scales = dict(q_scale=torch.ones(b, h, 3), k_scale=torch.ones(b, h, 3), v_scale=torch.ones(b, h, d))
    assert sm90.sm90_fwd(q, k, v, lut, counts, out, seq_len_q=s, seq_len_k=s, **scales) is out
    (grid, args, meta), = launches
    assert grid == (3, b * h)
    q_desc, k_desc, v_desc = args[:3]
    assert (q_desc.block_shape, k_desc.block_shape, v_desc.block_shape) == ([64, d], [128, d], [d, 128])
    assert list(q_desc.shape) == [b * h * 384, d] and list(v_desc.shape) == [b * h * d, 384]
    assert args[9:13] == out.stride() and args[13:] == (h, s, s, 3, 3, 384, 384)
    assert meta == dict(BLOCK_M=128, BLOCK_N=128, D=d, STAGES=3, CONSUMER_REGS=232, PRODUCER_REGS=40, num_warps=4)
