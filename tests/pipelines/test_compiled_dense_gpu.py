"""GPU: a compiled transformer whose attention length the speed rule sends dense runs the stock graph.

Flux.1-dev at 1024² (4,608 image + 512 text tokens, head dim 128) is below the sm90 crossover, so every call goes to
cuDNN SDPA and no token order is applied. Compiled with Sparge, the captured graph must then hold no Sparge op and
give the compiled stock output bit for bit: anything else costs time for nothing (session 8 measured Flux compiled
0.982x stock before this was checked). Two blocks of the real widths keep the compile in seconds.
"""

import collections

import pytest
import torch

from sparge_diffusers import SpargeConfig, apply_sparge, remove_sparge

pytestmark = pytest.mark.gpu


def _flux(device):
    from diffusers import FluxTransformer2DModel

    torch.manual_seed(0)
    model = FluxTransformer2DModel(patch_size=1, in_channels=64, num_layers=1, num_single_layers=1,
                                   attention_head_dim=128, num_attention_heads=24, joint_attention_dim=256,
                                   pooled_projection_dim=64, guidance_embeds=True, axes_dims_rope=(16, 56, 56))
    model = model.to(device=device, dtype=torch.bfloat16).eval()
    gen = torch.Generator(device=device).manual_seed(1)
    rows, cols = torch.meshgrid(torch.arange(64), torch.arange(72), indexing="ij")
    img_ids = torch.stack([torch.zeros_like(rows), rows, cols], -1).reshape(-1, 3).float().to(device)
    inputs = dict(hidden_states=torch.randn(1, 64 * 72, 64, generator=gen, device=device, dtype=torch.bfloat16),
                  encoder_hidden_states=torch.randn(1, 512, 256, generator=gen, device=device, dtype=torch.bfloat16),
                  pooled_projections=torch.randn(1, 64, generator=gen, device=device, dtype=torch.bfloat16),
                  timestep=torch.full((1,), 0.5, device=device), guidance=torch.full((1,), 3.5, device=device),
                  img_ids=img_ids, txt_ids=torch.zeros(512, 3, device=device), return_dict=False)
    return model, inputs


def _compiled(model, inputs):
    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    with torch.no_grad():
        out = torch.compile(model, backend=capture, fullgraph=True)(**inputs)[0]
    targets = collections.Counter(str(node.target) for gm in graphs for node in gm.graph.nodes
                                  if node.op in ("call_function", "call_method"))
    return out, targets


def test_compiled_flux_at_a_dense_length_is_the_stock_graph():
    model, inputs = _flux("cuda")
    stock, stock_ops = _compiled(model, inputs)
    apply_sparge(model, SpargeConfig(topk=0.5, sim_threshold=None, reorder="hilbert", check_finite=False))
    try:
        sparge, sparge_ops = _compiled(model, inputs)
    finally:
        torch._dynamo.reset()
        remove_sparge(model)
    assert not [t for t in sparge_ops if "sparge" in t], sorted(sparge_ops)
    # permute / transpose spell the same layout change
    moves = ("permute", "transpose")
    diff = {t: (stock_ops[t], sparge_ops[t]) for t in set(stock_ops) | set(sparge_ops)
            if stock_ops[t] != sparge_ops[t] and t not in moves}
    assert not diff, diff
    assert torch.equal(sparge, stock)
