"""Train the embedded tiny CogVideoX pipeline on procedural clips, and export it as a diffusers folder.

Stage 1 trains the VAE (`AutoencoderKLCogVideoX`, 4x spatial / 4x temporal) for reconstruction (MSE + L1) with a
small KL term, on procedural clips; its latent scale is then set to 1 / std of the latents (the
``scaling_factor`` that CogVideoXPipeline divides by before decoding). Stage 2 freezes the VAE and trains the
transformer and the T5 text encoder jointly with the CogVideoX diffusion loss: v-prediction MSE over uniform
timesteps of the pipeline's `CogVideoXDPMScheduler` (``add_noise`` / ``get_velocity``; the x0-loss with weight
1 / (1 - alpha_bar) of diffusers' CogVideoX fine-tuning scripts is the same loss), with 10% empty captions for
classifier-free guidance, and the pipeline's own rotary embeddings. Captions are padded to ``--text-len`` T5
tokens (16: the embedded model's ``max_sequence_length``, stored in the exported transformer config; the first run
padded to the stock 226 and learned to ignore the text, see the model card), and every ``--long-text-every``-th
step pads to the stock 226 instead, so a plain ``pipe(prompt)`` keeps working. Steps alternate between the default (CPU) size and the large (sparsity) size, so the model
knows both. An EMA of the weights is exported.

Everything is drawn from ``--seed`` and the step index (data, timesteps, noise), so a run is reproducible up to
GPU non-determinism, and resumable: a checkpoint is written to ``--ckpt-dir`` every ``--ckpt-every`` seconds and at
the end; a second run with the same arguments continues from it. ``--time-budget`` (seconds) sets the stage-2 step
count from the measured speed of the first steps when ``--steps`` is 0, and stops a run (checkpointed) when its
wall time is spent. The loss log is a CSV (stage, step, loss, lr, seconds).

The defaults are the recipe of the shipped weights (1,500 VAE steps, 4,604 stage-2 steps; ~12 GPU-minutes on an H200).
Usage (GPU, the shipped weights; rerun the same command to resume after a stop)::

    python scripts/train_tiny.py --device cuda --export sparge_diffusers/embedded/tiny-cogvideox

Smoke test (CPU, seconds)::

    python scripts/train_tiny.py --smoke --export /tmp/tiny-smoke
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import logging
import math
import os
import time

import torch

from sparge_diffusers.embedded import build
from sparge_diffusers.embedded import DEFAULT_CALL, LARGE_CALL
from sparge_diffusers.procedural import procedural_batch

logger = logging.getLogger("train_tiny")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ckpt-dir", default="checkpoints/train_tiny")
    p.add_argument("--export", default=None, help="write the trained pipeline folder here at the end")
    p.add_argument("--loss-log", default="benchmarks/results/train_tiny_loss.csv")
    p.add_argument("--vae-steps", type=int, default=1500, help="VAE steps (0: from --vae-time-budget)")
    p.add_argument("--vae-time-budget", type=float, default=180.0, help="VAE seconds (sets --vae-steps when 0)")
    p.add_argument("--vae-batch", type=int, default=16)
    p.add_argument("--vae-size", type=int, default=64, help="VAE training clips are vae-size x vae-size x 9")
    p.add_argument("--vae-lr", type=float, default=1e-3)
    p.add_argument("--kl-weight", type=float, default=1e-6)
    p.add_argument("--vae-object-weight", type=float, default=10.0,
                   help="extra reconstruction weight on pixels the object covers (weight 1 + w * mask). The objects "
                        "cover ~3%% of a frame: the first VAE, trained without it for 240 steps, reconstructed the "
                        "backgrounds and erased every object, and the diffusion stage learned to draw flat frames")
    p.add_argument("--vae-min-object-psnr", type=float, default=21.0,
                   help="stage 1 ends with an error (checkpointed, resumable with a larger --vae-steps) when the "
                        "VAE's PSNR on the object pixels of held-out clips is below this")
    p.add_argument("--vae-only", action="store_true", help="stop after stage 1 (checkpointed; a run without it goes on)")
    p.add_argument("--steps", type=int, default=4604, help="stage-2 steps (0: from --time-budget)")
    p.add_argument("--batch", type=int, default=32, help="stage-2 batch at the default size")
    p.add_argument("--large-batch", type=int, default=8, help="stage-2 batch at the large size")
    p.add_argument("--large-every", type=int, default=4, help="every n-th stage-2 step is at the large size (0: never)")
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--text-lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.998, help="EMA decay of the exported weights")
    p.add_argument("--caption-dropout", type=float, default=0.1)
    p.add_argument("--text-len", type=int, default=build.TEXT_LEN,
                   help="T5 tokens of training captions (the pipeline's max_sequence_length; stored in the exported "
                        "transformer config as max_text_seq_length, which DEFAULT_CALL and the CLI pass)")
    p.add_argument("--long-text-every", type=int, default=6,
                   help=f"every n-th stage-2 step pads captions to the stock {build.STOCK_TEXT_LEN} tokens instead, "
                        "so a plain pipe(prompt) call also works (0: never)")
    p.add_argument("--high-t-frac", type=float, default=0.3,
                   help="share of stage-2 timesteps drawn from the noisier half [T/2, T) instead of uniformly "
                        "(the text decides the layout at high noise)")
    p.add_argument("--backgrounds", default="plain,plain,gradient,texture",
                   help="background kinds drawn uniformly per clip; repeat a kind to weight it (plain,plain,...)")
    p.add_argument("--time-budget", type=float, default=420.0, help="stage-2 seconds (sets --steps when 0)")
    p.add_argument("--max-wall", type=float, default=0.0, help="stop (checkpointed) after this many seconds of "
                                                                "this run, 0 = never")
    p.add_argument("--ckpt-every", type=float, default=120.0, help="seconds between checkpoints")
    p.add_argument("--log-every", type=int, default=25)
    p.add_argument("--object-weight", type=float, default=4.0,
                   help="extra loss weight on latent cells the object covers (loss weight 1 + w * mask)")
    p.add_argument("--init-from", default=None, help="start stage 2 from an exported pipeline folder (its VAE, "
                                                     "scale, transformer and text encoder); stage 1 is skipped")
    p.add_argument("--train-size", default=None, metavar="FxHxW", help="override the default training size")
    p.add_argument("--export-live", action="store_true", help="export the live weights instead of the EMA")
    p.add_argument("--smoke", action="store_true", help="toy sizes and a few steps (CPU test of the whole path)")
    return p.parse_args(argv)


def clips(step_seed: int, batch: int, size: dict, device, with_data: bool = False,
          backgrounds=("plain", "gradient", "texture")) -> tuple:
    """Procedural clips as VAE input ``[B, 3, F, H, W]`` in [-1, 1] and their captions (and the batch)."""
    data = procedural_batch(batch, frames=size["num_frames"], height=size["height"], width=size["width"],
                            seed=step_seed, device=device, backgrounds=backgrounds)
    video = data.frames.permute(0, 4, 1, 2, 3).mul(2.0).sub(1.0).contiguous()
    return (video, data.captions, data) if with_data else (video, data.captions)


def object_mask(data, latent_shape, spatial: int, temporal: int, device) -> torch.Tensor:
    """1 on latent cells that the object covers in any of their frames, else 0: ``[B, F', 1, h, w]``.

    Latent frame 0 is pixel frame 0, latent frame j >= 1 covers pixel frames 4j-3 .. 4j (CogVideoX's causal VAE).
    """
    b, lf, _, h, w = latent_shape
    ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) * spatial
    xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) * spatial
    cx = data.centroids[..., 0].to(device)  # [B, T] pixels
    cy = data.centroids[..., 1].to(device)
    rad = data.radius.to(device)
    d = ((xs.view(1, 1, 1, w) - cx[..., None, None]) ** 2 + (ys.view(1, 1, h, 1) - cy[..., None, None]) ** 2).sqrt()
    inside = (d <= rad[..., None, None] + spatial).float()  # [B, T, h, w]
    groups = [inside[:, :1]] + [inside[:, 1 + temporal * (j - 1): 1 + temporal * j] for j in range(1, lf)]
    return torch.stack([g.amax(1) for g in groups], 1)[:, :, None]


def pixel_object_mask(data, height: int, width: int, device, margin: float = 2.0) -> torch.Tensor:
    """1 on pixels within the object's radius (plus ``margin`` pixels) in each frame, else 0: ``[B, 1, T, H, W]``."""
    ys = torch.arange(height, device=device, dtype=torch.float32).view(1, 1, height, 1) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32).view(1, 1, 1, width) + 0.5
    cx = data.centroids[..., 0].to(device)[..., None, None]  # [B, T, 1, 1] pixels
    cy = data.centroids[..., 1].to(device)[..., None, None]
    rad = data.radius.to(device)[..., None, None]
    inside = ((xs - cx) ** 2 + (ys - cy) ** 2).sqrt() <= rad * 1.2 + margin  # [B, T, H, W]
    return inside.float()[:, None]


@torch.no_grad()
def reconstruction_report(vae, size: dict, device, autocast, seed: int, batch: int = 8) -> dict:
    """PSNR (dB, frames in [-1, 1]) of the VAE's reconstructions of held-out clips: all pixels and object pixels.

    A VAE that keeps the background and loses the object scores well on all pixels and badly on the object; the
    object figure is the one that matters for a text-to-video model of moving objects.
    """
    was_training = vae.training
    vae.eval()
    x, _, data = clips(seed, batch, size, device, with_data=True)
    with autocast:
        recon = vae.decode(vae.encode(x).latent_dist.mode()).sample
    err = (recon.float().clamp(-1, 1) - x) ** 2
    mask = pixel_object_mask(data, size["height"], size["width"], device)
    obj = (err * mask).sum() / (mask.sum() * err.shape[1])
    vae.train(was_training)
    return {"psnr": round(float(10 * torch.log10(4.0 / err.mean())), 2),
            "object_psnr": round(float(10 * torch.log10(4.0 / obj)), 2)}


def cosine_lr(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))


class LossLog:
    def __init__(self, path: str, resume: bool) -> None:
        self.path = path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if not (resume and os.path.exists(path)):
            with open(path, "w", newline="") as f:
                csv.writer(f).writerow(["stage", "step", "loss", "lr", "seconds", "size"])

    def write(self, stage: str, step: int, loss: float, lr: float, seconds: float, size: str) -> None:
        with open(self.path, "a", newline="") as f:
            csv.writer(f).writerow([stage, step, f"{loss:.6f}", f"{lr:.3e}", f"{seconds:.1f}", size])


def main(argv=None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    device = torch.device(args.device)
    small, large = dict(DEFAULT_CALL), dict(LARGE_CALL)
    for call in (small, large):
        for key in ("num_inference_steps", "guidance_scale", "max_sequence_length"):
            call.pop(key, None)
    backgrounds = tuple(k.strip() for k in args.backgrounds.split(",") if k.strip())
    if args.text_len < 8:
        raise SystemExit(f"--text-len must be >= 8 (captions hold up to 7 tokens), got {args.text_len}")
    if args.smoke:
        small = {"height": 32, "width": 32, "num_frames": 9}
        large = {"height": 64, "width": 64, "num_frames": 9}
        args.vae_steps, args.vae_batch, args.vae_size = 3, 2, 32
        args.steps, args.batch, args.large_batch, args.large_every = 4, 2, 1, 2
        args.warmup, args.log_every, args.time_budget = 2, 1, 600.0
        args.ckpt_dir = args.ckpt_dir + "_smoke"
    if args.train_size:
        try:
            f, h, w = (int(v) for v in args.train_size.lower().split("x"))
        except ValueError:
            raise SystemExit(f"--train-size must be FxHxW, e.g. 9x32x32, got {args.train_size!r}")
        small = {"height": h, "width": w, "num_frames": f}
    torch.manual_seed(args.seed)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)

    pipe = build.build_pipeline(args.seed)
    vae, transformer, text_encoder, scheduler, tokenizer = (pipe.vae, pipe.transformer, pipe.text_encoder,
                                                            pipe.scheduler, pipe.tokenizer)
    for module in (vae, transformer, text_encoder):
        module.to(device).train()
    ckpt_path = os.path.join(args.ckpt_dir, "ckpt.pt")
    state = {"stage": "vae", "step": 0, "steps": args.steps, "scaling_factor": None, "seconds": 0.0}
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=args.vae_lr, weight_decay=0.0)
    params = [{"params": list(transformer.parameters()), "lr": args.lr},
              {"params": list(text_encoder.parameters()), "lr": args.text_lr}]
    opt = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.99), weight_decay=0.01)
    ema = {"transformer": copy.deepcopy(transformer).eval().requires_grad_(False),
           "text_encoder": copy.deepcopy(text_encoder).eval().requires_grad_(False)}
    resume = os.path.exists(ckpt_path)
    if args.init_from and not resume:
        from diffusers import CogVideoXPipeline

        init = CogVideoXPipeline.from_pretrained(args.init_from)
        vae.load_state_dict(init.vae.float().state_dict())
        transformer.load_state_dict(init.transformer.float().state_dict())
        text_encoder.load_state_dict(init.text_encoder.float().state_dict())
        for name, live in (("transformer", transformer), ("text_encoder", text_encoder)):
            ema[name].load_state_dict(live.state_dict())
        state.update(stage="diffusion", step=0, scaling_factor=float(init.vae.config.scaling_factor))
        logger.info("stage 2 starts from %s (scaling_factor %.4f)", args.init_from, state["scaling_factor"])
        del init
    if resume:
        ck = torch.load(ckpt_path, map_location=device, weights_only=False)
        vae.load_state_dict(ck["vae"]), transformer.load_state_dict(ck["transformer"])
        text_encoder.load_state_dict(ck["text_encoder"]), vae_opt.load_state_dict(ck["vae_opt"])
        opt.load_state_dict(ck["opt"])
        ema["transformer"].load_state_dict(ck["ema_transformer"])
        ema["text_encoder"].load_state_dict(ck["ema_text_encoder"])
        state = ck["state"]
        logger.info("resumed from %s at stage %s step %d", ckpt_path, state["stage"], state["step"])
    log = LossLog(args.loss_log, resume)
    run_start = time.time()
    last_ckpt = time.time()

    def save_ckpt() -> None:
        os.makedirs(args.ckpt_dir, exist_ok=True)
        torch.save({"vae": vae.state_dict(), "transformer": transformer.state_dict(),
                    "text_encoder": text_encoder.state_dict(), "vae_opt": vae_opt.state_dict(),
                    "opt": opt.state_dict(), "ema_transformer": ema["transformer"].state_dict(),
                    "ema_text_encoder": ema["text_encoder"].state_dict(), "state": state}, ckpt_path + ".tmp")
        os.replace(ckpt_path + ".tmp", ckpt_path)
        logger.info("checkpoint: stage %s step %d", state["stage"], state["step"])

    def out_of_time() -> bool:
        return args.max_wall > 0 and time.time() - run_start > args.max_wall

    # Stage 1: VAE
    if state["stage"] == "vae":
        t0 = time.time()
        vae_size = {"height": args.vae_size, "width": args.vae_size, "num_frames": 9}
        vae_steps = max(args.vae_steps, state.get("vae_steps") or 0)  # a rerun with a larger --vae-steps extends
        probe = 10
        while not vae_steps or state["step"] < vae_steps:
            step = state["step"]
            if not vae_steps and step == probe:  # fix the VAE step count from the measured speed
                if device.type == "cuda":
                    torch.cuda.synchronize()
                vae_steps = max(probe + 1, int(args.vae_time_budget * probe / (time.time() - t0)))
                logger.info("VAE: %d steps in %.0f s", vae_steps, args.vae_time_budget)
            state["vae_steps"] = vae_steps
            lr = cosine_lr(step, vae_steps or 10 ** 6, max(1, args.warmup // 2), args.vae_lr)
            for group in vae_opt.param_groups:
                group["lr"] = lr
            x, _, data = clips(args.seed * 1_000_003 + step, args.vae_batch, vae_size, device, with_data=True)
            with autocast:
                posterior = vae.encode(x).latent_dist
                z = posterior.sample(generator=None)
                recon = vae.decode(z).sample
            recon = recon.float()
            weight = 1.0 + args.vae_object_weight * pixel_object_mask(data, args.vae_size, args.vae_size, device)
            rec = (((recon - x) ** 2 + 0.5 * (recon - x).abs()) * weight).mean() / weight.mean()
            kl = posterior.kl().mean() / z[0].numel()
            loss = rec + args.kl_weight * kl * z[0].numel()
            vae_opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
            vae_opt.step()
            state["step"] += 1
            if step % args.log_every == 0 or state["step"] == vae_steps:
                log.write("vae", step, float(rec), lr, time.time() - t0 + state["seconds"], f"{args.vae_size}")
                logger.info("vae step %d rec %.5f kl %.3f lr %.2e", step, float(rec), float(kl), lr)
            if step % 400 == 399:
                logger.info("vae step %d held-out reconstruction %s", step,
                            reconstruction_report(vae, vae_size, device, autocast, args.seed * 1_000_003 - 2))
            if time.time() - last_ckpt > args.ckpt_every:
                save_ckpt()
                last_ckpt = time.time()
        report = reconstruction_report(vae, small, device, autocast, args.seed * 1_000_003 - 2)
        state["vae_report"] = report
        logger.info("VAE reconstruction of held-out clips at %dx%d: PSNR %.2f dB, object pixels %.2f dB",
                    small["height"], small["width"], report["psnr"], report["object_psnr"])
        if report["object_psnr"] < args.vae_min_object_psnr and not args.smoke:
            save_ckpt()
            raise SystemExit(f"stage 1: the VAE reconstructs the objects at {report['object_psnr']:.1f} dB PSNR, "
                             f"below --vae-min-object-psnr {args.vae_min_object_psnr}; run again with a larger "
                             f"--vae-steps (now {vae_steps}) to continue training it")
        vae.eval().requires_grad_(False)
        with torch.no_grad(), autocast:  # latent scale = 1 / std over a batch at the default size
            x, _ = clips(args.seed * 1_000_003 - 1, max(4, args.batch // 2), small, device)
            z = vae.encode(x).latent_dist.sample()
        state["scaling_factor"] = float(1.0 / z.float().std())
        logger.info("VAE done in %.0f s; scaling_factor %.4f (latent mean %.3f)", time.time() - t0,
                    state["scaling_factor"], float(z.float().mean()))
        state.update(stage="diffusion", step=0, seconds=0.0)
        save_ckpt()
        last_ckpt = time.time()
    if args.vae_only:
        logger.info("--vae-only: stage 1 done (%s)", state.get("vae_report"))
        return
    vae.eval().requires_grad_(False)
    scaling = state["scaling_factor"]
    vae.register_to_config(scaling_factor=scaling)

    # Stage 2: transformer + text encoder
    alphas = scheduler.alphas_cumprod.to(device=device, dtype=torch.float32)
    token_cache = {}

    def embed(captions, model, length):
        ids = []
        for c in captions:
            if (c, length) not in token_cache:  # the tokenizer call of CogVideoXPipeline._get_t5_prompt_embeds
                token_cache[c, length] = tokenizer(c, padding="max_length", max_length=length, truncation=True,
                                                   add_special_tokens=True, return_tensors="pt").input_ids[0]
            ids.append(token_cache[c, length])
        return model(torch.stack(ids).to(device))[0]

    rope_cache = {}

    def rope(size, latent_frames):
        key = (size["height"], size["width"], latent_frames)
        if key not in rope_cache:
            rope_cache[key] = pipe._prepare_rotary_positional_embeddings(size["height"], size["width"],
                                                                         latent_frames, device)
        return rope_cache[key]

    def train_step(step: int, total: int):
        is_large = args.large_every > 0 and step % args.large_every == args.large_every - 1
        size, batch = (large, args.large_batch) if is_large else (small, args.batch)
        g = torch.Generator(device="cpu").manual_seed(args.seed * 7_000_001 + step)
        x, captions, data = clips(args.seed * 1_000_003 + 500_000 + step + (10 ** 6 if args.init_from else 0),
                                  batch, size, device, with_data=True, backgrounds=backgrounds)
        long_text = args.long_text_every > 0 and step % args.long_text_every == args.long_text_every // 2
        drop = torch.rand(batch, generator=g) < args.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        with torch.no_grad(), autocast:
            latents = vae.encode(x).latent_dist.sample() * scaling  # [B, C, F', h, w]
        latents = latents.float().permute(0, 2, 1, 3, 4).contiguous()  # [B, F', C, h, w]
        n_t = scheduler.config.num_train_timesteps
        t = torch.randint(0, n_t, (batch,), generator=g)
        high = torch.rand(batch, generator=g) < args.high_t_frac
        t = torch.where(high, n_t // 2 + t // 2, t).to(device)  # [B]: uniform, or uniform over [T/2, T)
        noise = torch.randn(latents.shape, generator=g).to(device)
        a = alphas[t].view(-1, 1, 1, 1, 1)
        noisy = a.sqrt() * latents + (1 - a).sqrt() * noise
        target = a.sqrt() * noise - (1 - a).sqrt() * latents  # v
        lr_scale = cosine_lr(step, total, args.warmup, 1.0)
        opt.param_groups[0]["lr"], opt.param_groups[1]["lr"] = args.lr * lr_scale, args.text_lr * lr_scale
        with autocast:
            text = embed(captions, text_encoder, build.STOCK_TEXT_LEN if long_text else args.text_len)
            pred = transformer(hidden_states=noisy, encoder_hidden_states=text, timestep=t,
                               image_rotary_emb=rope(size, latents.shape[1]), return_dict=False)[0]
        if args.object_weight > 0:
            weight = 1.0 + args.object_weight * object_mask(data, latents.shape, pipe.vae_scale_factor_spatial,
                                                            pipe.vae_scale_factor_temporal, device)
            loss = ((pred.float() - target) ** 2 * weight).mean() / weight.mean()
        else:
            loss = torch.nn.functional.mse_loss(pred.float(), target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(transformer.parameters()) + list(text_encoder.parameters()), 1.0)
        opt.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for name, live in (("transformer", transformer), ("text_encoder", text_encoder)):
                for pe, pl in zip(ema[name].parameters(), live.parameters()):
                    pe.lerp_(pl.detach(), 1 - decay)
        return loss, args.lr * lr_scale, "large" if is_large else "small"

    t0 = time.time()
    if state["steps"] == 0:  # measure (after warm-up steps), then fix the step count from the time budget
        period = max(args.large_every, 1)
        warm, probe = 2 * period, 4 * period
        for i in range(warm + probe):
            if i == warm:
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t_probe = time.time()
            loss, _, _ = train_step(state["step"], 10 ** 6)
            state["step"] += 1
        if device.type == "cuda":
            torch.cuda.synchronize()
        per_step = (time.time() - t_probe) / probe
        state["steps"] = max(warm + probe + 1, int((args.time_budget - (time.time() - t0)) / per_step) + warm + probe)
        logger.info("%.1f ms per step -> %d stage-2 steps in %.0f s", 1000 * per_step, state["steps"],
                    args.time_budget)
    total = state["steps"]
    seconds0 = state["seconds"]
    while state["step"] < total:
        step = state["step"]
        loss, lr, which = train_step(step, total)
        state["step"] += 1
        state["seconds"] = seconds0 + time.time() - t0
        if step % args.log_every == 0 or state["step"] == total:
            log.write("diffusion", step, float(loss), lr, state["seconds"], which)
            logger.info("step %d/%d loss %.4f lr %.2e (%s) %.0f s", step, total, float(loss), lr, which,
                        state["seconds"])
        if time.time() - last_ckpt > args.ckpt_every:
            save_ckpt()
            last_ckpt = time.time()
        if out_of_time() and state["step"] < total:
            logger.warning("time budget spent at step %d of %d: checkpointing; run again to continue",
                           state["step"], total)
            break
    save_ckpt()
    if args.export:  # a stopped run exports its EMA weights too (training.json records the steps done)
        export_pipeline(args, pipe, ema, scaling, state)


def export_pipeline(args, pipe, ema, scaling, state) -> None:
    """EMA weights into a CogVideoXPipeline folder (transformer and VAE in fp16, the T5 encoder in fp32)."""
    from diffusers import CogVideoXPipeline

    vae = pipe.vae.to("cpu").float()
    vae.register_to_config(scaling_factor=scaling)
    source = {"transformer": pipe.transformer, "text_encoder": pipe.text_encoder} if args.export_live else ema
    transformer = copy.deepcopy(source["transformer"]).to("cpu").float()
    transformer.register_to_config(max_text_seq_length=args.text_len)  # the CLI passes it as max_sequence_length
    text_encoder = copy.deepcopy(source["text_encoder"]).to("cpu").float()
    out = CogVideoXPipeline(tokenizer=pipe.tokenizer, text_encoder=text_encoder, vae=vae.half(),
                            transformer=transformer.half(), scheduler=pipe.scheduler)
    out.save_pretrained(args.export, safe_serialization=True)
    fix_tokenizer_class(args.export)
    with open(os.path.join(args.export, "training.json"), "w") as f:
        json.dump({"seed": args.seed, "vae_steps": state.get("vae_steps"), "vae_report": state.get("vae_report"),
                   "vae_object_weight": args.vae_object_weight, "steps": state["steps"], "steps_done": state["step"],
                   "batch": args.batch,
                   "large_batch": args.large_batch, "large_every": args.large_every, "lr": args.lr,
                   "init_from": args.init_from, "object_weight": args.object_weight, "text_len": args.text_len,
                   "long_text_every": args.long_text_every, "high_t_frac": args.high_t_frac,
                   "caption_dropout": args.caption_dropout, "text_lr": args.text_lr, "ema": args.ema,
                   "warmup": args.warmup, "backgrounds": args.backgrounds,
                   "stage2_seconds": round(state["seconds"], 1), "scaling_factor": scaling}, f, indent=2)
    logger.info("exported %s", args.export)


def fix_tokenizer_class(folder: str) -> None:
    """Name the tokenizer `PreTrainedTokenizerFast` (transformers 4 and 5 both load it from tokenizer.json);
    transformers 5 saves it under its new base-class name, which transformers 4 lacks."""
    index_path = os.path.join(folder, "model_index.json")
    with open(index_path) as f:
        index = json.load(f)
    index["tokenizer"] = ["transformers", "PreTrainedTokenizerFast"]
    with open(index_path, "w") as f:
        json.dump(index, f, indent=2)
    config_path = os.path.join(folder, "tokenizer", "tokenizer_config.json")
    with open(config_path) as f:
        config = json.load(f)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config.pop("backend", None)
    with open(config_path, "w") as f:
        json.dump(config, f, indent=2)


if __name__ == "__main__":
    main()
