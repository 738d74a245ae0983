"""Capture the trained embedded model's attention (q, k, v after RoPE) as an evaluation family for
`scripts/eval_budget.py --captured FILE`: one prompt, the positive half of the CFG batch, chosen steps, every layer.

    python scripts/capture_embedded.py --size large --steps 10 --record-steps 0 5 9 --out captured_large.pt
"""

from __future__ import annotations

import argparse
import sys

import torch
from diffusers import CogVideoXPipeline

from sparge_diffusers.capture import capture_attention
from sparge_diffusers.embedded import default_call_kwargs, embedded_model_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=("default", "large"), default="large")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--record-steps", type=int, nargs="+", default=[0, 5, 9])
    parser.add_argument("--prompt", default="a red ball rolling")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    pipe = CogVideoXPipeline.from_pretrained(embedded_model_path()).to(args.device)
    pipe.set_progress_bar_config(disable=True)
    call = {**default_call_kwargs(args.size), "num_inference_steps": args.steps}
    records = capture_attention(pipe, args.prompt, steps=args.record_steps, output_type="latent",
                                generator=torch.Generator().manual_seed(0), **call)
    out = [dict(q=r.q[-1:].clone(), k=r.k[-1:].clone(), v=r.v[-1:].clone(), text_range=(0, r.text_len),
                grid=tuple(r.grid), layer=r.layer, step=r.step) for r in records]
    torch.save(out, args.out)
    print(f"{args.out}: {len(out)} records, q {tuple(out[0]['q'].shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
