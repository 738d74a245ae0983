"""How much the embedded model's transformer reads its text: a diagnostic for prompt following.

On one procedural batch it reports (1) how much the T5 outputs differ between two captions, on the caption tokens
and on the pad tokens; (2) the v-prediction loss with the right, shuffled and empty captions and the mean absolute
change of the prediction between right and shuffled captions, at several timesteps (at t = 999 the input is pure
noise, so only the text can lower the loss); (3) the gradient norms of the loss on the transformer, on the text
encoder and on the text embeddings (caption tokens vs pad tokens). A transformer that ignores the text has
prediction changes near zero and text-embedding gradients orders of magnitude below its own.

    python scripts/text_influence.py --model sparge_diffusers/embedded/tiny-cogvideox --text-len 16
"""

from __future__ import annotations

import argparse

import torch

from sparge_diffusers.embedded import TEXT_LEN, embedded_model_path
from sparge_diffusers.procedural import procedural_batch


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None)
    p.add_argument("--text-len", type=int, default=TEXT_LEN)
    p.add_argument("--size", type=int, default=32, help="clips are 9 x size x size")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--timesteps", default="999,900,600")
    args = p.parse_args(argv)
    from diffusers import CogVideoXPipeline

    pipe = CogVideoXPipeline.from_pretrained(args.model or embedded_model_path())
    tok, te, tr, vae = pipe.tokenizer, pipe.text_encoder, pipe.transformer, pipe.vae

    def embed(captions):
        ids = tok(captions, padding="max_length", max_length=args.text_len, truncation=True,
                  return_tensors="pt").input_ids
        return te(ids)[0]  # [B, L, 128]

    with torch.no_grad():
        e = embed(["a red ball rolling left", "a blue square falling"])
    print(f"T5 output change between two captions: caption tokens {((e[0, :6] - e[1, :6]).norm() / e[0, :6].norm()):.3f}, "
          f"pad tokens {((e[0, 7:] - e[1, 7:]).norm() / e[0, 7:].norm()):.2e}")
    b, s = args.batch, args.size
    data = procedural_batch(b, frames=9, height=s, width=s, seed=123)
    with torch.no_grad():
        lat = vae.encode(data.frames.permute(0, 4, 1, 2, 3) * 2 - 1).latent_dist.sample() * vae.config.scaling_factor
    lat = lat.permute(0, 2, 1, 3, 4)  # [B, F', C, h, w]
    alphas = pipe.scheduler.alphas_cumprod.float()
    rope = pipe._prepare_rotary_positional_embeddings(s, s, lat.shape[1], "cpu")
    noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(0))
    captions = {"right": data.captions, "shuffled": data.captions[1:] + data.captions[:1], "empty": [""] * b}
    for tv in (int(v) for v in args.timesteps.split(",")):
        t = torch.full((b,), tv)
        a = alphas[t].view(-1, 1, 1, 1, 1)
        noisy, v = a.sqrt() * lat + (1 - a).sqrt() * noise, a.sqrt() * noise - (1 - a).sqrt() * lat
        loss, pred = {}, {}
        with torch.no_grad():
            for name, c in captions.items():
                pred[name] = tr(hidden_states=noisy, encoder_hidden_states=embed(c), timestep=t,
                                image_rotary_emb=rope, return_dict=False)[0]
                loss[name] = float(((pred[name] - v) ** 2).mean())
        change = float((pred["right"] - pred["shuffled"]).abs().mean())
        print(f"t={tv}: loss right {loss['right']:.4f} shuffled {loss['shuffled']:.4f} empty {loss['empty']:.4f}; "
              f"|prediction change right vs shuffled| {change:.2e} (|prediction| {float(pred['right'].abs().mean()):.3f})")
    t = torch.full((b,), 900)
    a = alphas[t].view(-1, 1, 1, 1, 1)
    noisy, v = a.sqrt() * lat + (1 - a).sqrt() * noise, a.sqrt() * noise - (1 - a).sqrt() * lat
    e = embed(data.captions)
    e.retain_grad()
    out = tr(hidden_states=noisy, encoder_hidden_states=e, timestep=t, image_rotary_emb=rope, return_dict=False)[0]
    ((out - v) ** 2).mean().backward()

    def norm(module):
        return float(sum(q.grad.norm() ** 2 for q in module.parameters() if q.grad is not None) ** 0.5)

    print(f"gradient norms at t=900: transformer {norm(tr):.3f}, text encoder {norm(te):.4f}, text embeddings: "
          f"caption tokens {float(e.grad[:, :6].norm()):.2e}, pad tokens {float(e.grad[:, 7:].norm()):.2e}")


if __name__ == "__main__":
    main()
