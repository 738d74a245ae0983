"""The low-overhead launcher (`kernels._launch`): its cache key and how a hit rebuilds the arguments (CPU, with a
stand-in compiled kernel), and on the GPU the real thing against Triton's own launch."""

import pytest
import torch

from sparge_diffusers.kernels import _launch


@pytest.fixture
def fast(monkeypatch):
    _launch.clear_cache()
    _launch._STATE["enabled"] = True
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    yield
    _launch.clear_cache()


def test_arg_key_separates_what_triton_specializes_on():
    base = torch.zeros(64, dtype=torch.float16)
    assert _launch.arg_key(base) == (torch.float16, True)
    assert _launch.arg_key(base[1:]) == (torch.float16, False)  # 2 bytes off: not 16-byte aligned
    assert _launch.arg_key(base.float()) != _launch.arg_key(base)
    assert _launch.arg_key(True) != _launch.arg_key(1)  # equal in Python, different Triton types
    assert _launch.arg_key(0.5) == _launch.arg_key(2.0)  # floats are not specialized
    assert _launch.arg_key(None) == (type(None), None)
    assert _launch.arg_key(object()) is _launch._UNKEYED


class _Param:
    def __init__(self, name, default=None, has_default=False):
        self.name, self.default, self.has_default = name, default, has_default


class _Compiled:
    function = "handle"

    def __init__(self):
        self.calls = []

    def __getitem__(self, grid):
        # as Triton's CompiledKernel runner: it reads grid[0], grid[1] and grid[2]
        return lambda *values: self.calls.append(((grid[0], grid[1], grid[2]), values))


class _Jit:
    """Stands in for a JITFunction: ``fn[grid](...)`` records the call and returns its compiled kernel."""

    def __init__(self):
        self.params = [_Param("X"), _Param("n"), _Param("alpha"), _Param("BLOCK"),
                       _Param("NEGATE", default=False, has_default=True)]
        self.compiled = _Compiled()
        self.slow = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            self.slow.append((grid, args, kwargs))
            return self.compiled
        return run


def test_a_hit_passes_every_signature_argument_in_order(fast):
    fn, x = _Jit(), torch.zeros(8)
    _launch.launch(fn, (4,), x, 8, 0.5, BLOCK=64, num_warps=4)
    assert len(fn.slow) == 1 and _launch.cache_size() == 1
    _launch.launch(fn, (3, 2), x, 8, 0.25, BLOCK=64, num_warps=4)
    assert len(fn.slow) == 1  # served from the cache
    assert fn.compiled.calls == [((3, 2, 1), (x, 8, 0.25, 64, False))]  # the default filled in, options left out
    for _ in range(2):  # a keyword given where the default stood: a new entry, then a hit that passes it
        _launch.launch(fn, (4,), x, 8, 0.25, BLOCK=64, NEGATE=True, num_warps=4)
    assert len(fn.slow) == 2
    assert fn.compiled.calls[-1] == ((4, 1, 1), (x, 8, 0.25, 64, True))


def test_anything_triton_specializes_on_is_a_new_entry(fast):
    fn = _Jit()
    x = torch.zeros(16, dtype=torch.float16)
    for args, kwargs in [((x, 8, 0.5), dict(BLOCK=64)), ((x[1:], 8, 0.5), dict(BLOCK=64)),
                         ((x, 1, 0.5), dict(BLOCK=64)), ((x, 8, 0.5), dict(BLOCK=32)),
                         ((x, 8, 0.5), dict(BLOCK=64, num_warps=8)), ((x.float(), 8, 0.5), dict(BLOCK=64))]:
        _launch.launch(fn, (1,), *args, **kwargs)
    assert len(fn.slow) == 6 and _launch.cache_size() == 6
    _launch.launch(fn, (1,), x, 8, 3.0, BLOCK=64)  # only the float differs: a hit
    assert len(fn.slow) == 6 and len(fn.compiled.calls) == 1


def test_unkeyed_arguments_and_the_switch_take_tritons_path(fast, monkeypatch):
    fn = _Jit()
    for _ in range(2):
        _launch.launch(fn, (1,), object(), 8, 0.5, BLOCK=64)
    assert len(fn.slow) == 2 and _launch.cache_size() == 0
    _launch.clear_cache()
    monkeypatch.setenv("SPARGE_FAST_LAUNCH", "0")
    assert not _launch.fast_launch_enabled()
    for _ in range(2):
        _launch.launch(fn, (1,), torch.zeros(4), 8, 0.5, BLOCK=64)
    assert len(fn.slow) == 4 and _launch.cache_size() == 0


def test_interpreter_and_unchecked_triton_versions_take_tritons_path(monkeypatch):
    import triton

    _launch.clear_cache()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert not _launch.fast_launch_enabled()
    _launch.clear_cache()
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(triton, "__version__", "3.2.0")
    assert not _launch.fast_launch_enabled()
    _launch.clear_cache()
    monkeypatch.setattr(triton, "__version__", "3.6.0")
    assert _launch.fast_launch_enabled()
    _launch.clear_cache()


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
def test_gpu_cached_launches_match_tritons_own(dtype):
    scaled_add_kernel = _toy_kernel()
    _launch.clear_cache()
    if not _launch.fast_launch_enabled():
        pytest.skip("this Triton version takes Triton's own path")
    gen = torch.Generator(device="cuda").manual_seed(0)
    for n in (1, 97, 1000):
        x, y = (torch.randn(n + 1, generator=gen, device="cuda", dtype=dtype) for _ in range(2))
        for xs, ys, negate in [(x, y, False), (x[1:], y, False), (x, y[1:], True), (x, y, True)]:
            m = xs.numel() if xs.numel() == ys.numel() else min(xs.numel(), ys.numel())
            expected = torch.empty(m, device="cuda", dtype=dtype)
            scaled_add_kernel[(triton_cdiv(m, 64),)](xs, ys, expected, m, 0.75, BLOCK=64, NEGATE=negate)
            for alpha in (0.75, 0.75, -2.0):  # a miss, then hits (the float changes nothing)
                got = torch.full((m,), float("nan"), device="cuda", dtype=dtype)
                _launch.launch(scaled_add_kernel, (triton_cdiv(m, 64),), xs, ys, got, m, alpha, BLOCK=64,
                               NEGATE=negate)
                want = expected if alpha == 0.75 else (-1 if negate else 1) * (xs[:m].float() + alpha * ys[:m].float())
                torch.testing.assert_close(got.float(), want.float(), rtol=1e-3, atol=1e-3)
    assert _launch.cache_size() >= 6


def _toy_kernel():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("launch_toy", Path(__file__).with_name("launch_toy.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.scaled_add_kernel


def triton_cdiv(a, b):
    return -(-a // b)
