"""No token reorder when the speed rule sends every attention call of the forward dense: the order would only cost
time (the speed rule itself applies on CUDA; here `SpargeContext.reorder_pays` is forced either way)."""

import pytest
import torch

from sparge_diffusers import SpargeConfig, apply_sparge, remove_sparge
from sparge_diffusers.context import SpargeContext
from sparge_diffusers.integration import get_sparge_context
from sparge_diffusers.pipelines.tiny import tiny_transformer, transformer_inputs

CONFIG = SpargeConfig(topk=0.5, sim_threshold=None, precision="bf16", block_n=64)
CASES = [("wan", "1.3b", (3, 8, 16)), ("flux", None, (16, 24)), ("cogvideox", None, (3, 16, 20))]


@pytest.mark.parametrize("family,variant,grid", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("pays", [True, False])
def test_boundary_order_follows_reorder_pays(monkeypatch, family, variant, grid, pays):
    monkeypatch.setattr(SpargeContext, "reorder_pays", lambda self, device: pays)
    transformer = tiny_transformer(family, variant=variant, num_layers=1)
    inputs = transformer_inputs(transformer, grid)
    apply_sparge(transformer, CONFIG)
    try:
        with torch.no_grad():
            out = transformer(**inputs)[0]
        assert torch.isfinite(out).all()
        assert (get_sparge_context(transformer).current.permutation is not None) is pays
    finally:
        remove_sparge(transformer)


@pytest.mark.parametrize("pays", [True, False])
def test_compiled_flux_computes_no_order_when_it_does_not_pay(monkeypatch, pays):
    # under torch.compile the Flux family computes the order from img_ids in an opaque op on every forward
    import sparge_diffusers.pipelines.flux as flux_family

    calls = []
    original = flux_family.ids_boundary_order

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(flux_family, "ids_boundary_order", counting)
    monkeypatch.setattr(SpargeContext, "reorder_pays", lambda self, device: pays)
    transformer = tiny_transformer("flux", num_layers=1)
    inputs = transformer_inputs(transformer, (16, 24))
    apply_sparge(transformer, CONFIG)
    try:
        with torch.no_grad():
            eager = transformer(**inputs)[0]
            compiled = torch.compile(transformer, fullgraph=True, backend="eager")(**inputs)[0]
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
        assert bool(calls) is pays
    finally:
        torch._dynamo.reset()
        remove_sparge(transformer)
