"""Output naming and sidecars of rendered prompts.

Naming: one prompt and ``-o clip.mp4`` writes that file; otherwise ``-o DIR`` gets ``<slug>-seed<N>.<fmt>`` per
prompt (`output_targets`), and a dense comparison render sits next to it as ``<stem>-dense.<fmt>`` (`dense_path`).

Sidecars (``<file>.json``, `sidecar_path`): the prompt, model, call settings, SpargeConfig, environment, timings,
measured sparsity, the media layout (`sparge_diffusers.media.write_media`; a png contact sheet is split back into
frames from it), and with a dense comparison:

    ``dense.fidelity.raw_frames``      PSNR / SSIM of the pipeline's uint8 frames, before any encoding
    ``dense.fidelity.encoded_files``   PSNR / SSIM of the two written files read back, as ``sparge-diffusers eval``
                                       computes it; only for lossy formats (mp4: H.264 yuv420p, gif: 256-colour
                                       palette), null for png (lossless, equal to the raw figure)

The two differ because the encoder's error (chroma subsampling, quantisation) is added to both videos
independently: the encoded figure is lower, and it is the one a viewer of the files sees. The dense render gets its
own sidecar (``mode: dense``, its layout and prompt), so ``eval`` reads a dense contact sheet back as frames.
"""

from __future__ import annotations

import math
import platform
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import torch

from .errors import UsageError
from .media import FORMATS, LOSSY_FORMATS, read_media, sidecar_path, write_json, write_media


def slugify(text: str, limit: int = 60) -> str:
    """A file-name stem from a prompt: lower-case ASCII words joined by ``-`` (``"prompt"`` when none is left)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return slug[:limit].rstrip("-") or "prompt"


def output_targets(output, prompts: Sequence[str], *, seed: int, fmt: Optional[str], is_video: bool) -> List[Path]:
    """The media file of each prompt: ``output`` itself when it is a file name (one prompt), else files named
    ``<slug>-seed<N>.<fmt>`` in the folder ``output`` (``fmt`` default: mp4 for video, png for images).

    Raises:
        UsageError: a file name for several prompts, a suffix that is not a media format or disagrees with ``fmt``.
    """
    output = Path(output)
    suffix = output.suffix.lower().lstrip(".")
    if suffix in FORMATS and not output.is_dir():
        if len(prompts) > 1:
            raise UsageError(f"--output {str(output)!r} is a file name, but {len(prompts)} prompts were given: pass a "
                             "folder")
        if fmt and fmt != suffix:
            raise UsageError(f"--format {fmt} does not match --output {str(output)!r}")
        return [output]
    if output.suffix and not output.is_dir() and suffix not in FORMATS:
        raise UsageError(f"--output {str(output)!r}: the file name must end in "
                         f"{', '.join('.' + f for f in FORMATS)} (or give a folder)")
    fmt = fmt or ("mp4" if is_video else "png")
    names, targets = set(), []
    for prompt in prompts:
        stem = f"{slugify(prompt)}-seed{seed}"
        while stem in names:
            stem += "-1"
        names.add(stem)
        targets.append(output / f"{stem}.{fmt}")
    return targets


def dense_path(target) -> Path:
    """Where the dense comparison render of ``target`` goes: ``clip.mp4`` -> ``clip-dense.mp4``."""
    target = Path(target)
    return target.with_name(f"{target.stem}-dense{target.suffix}")


def environment() -> dict:
    """Versions and machine, for sidecars and reports."""
    import diffusers

    info = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__,
            "platform": platform.platform()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import triton

        info["triton"] = triton.__version__
    except Exception:  # triton is optional on CPU machines
        pass
    return info


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def render_sidecar(prompt: str, model, settings, config, result, *, device: str, fps: float, warmup: bool) -> dict:
    """The sidecar of one render (`sparge_diffusers.rendering.Render`), without media and dense comparison."""
    dtype = str(model.dtype).replace("torch.", "")
    return {
        "prompt": prompt, "created": now(), "mode": result.mode,
        "model": {"source": model.source, "family": model.family, "embedded": model.embedded,
                  "prompt_encoding": "text encoder" if model.encodes_prompts else "hash embeddings"},
        "settings": {**settings.to_dict(), "device": device, "dtype": dtype, "fps": fps, "warmup": warmup,
                     "call": result.call_kwargs},
        "sparge": None if config is None else config.to_dict(),
        "environment": environment(),
        "timings": {"load_s": model.load_seconds, "render_s": result.seconds, "step_s": result.step_seconds,
                    "attention_ms": result.attention_ms},
        "sparsity": None if config is None else {"mean": result.sparsity, "by_step": result.sparsity_by_step,
                                                 "backends": result.backends, "policies": result.policies,
                                                 "map_reuse_share": result.map_reuse_share},
    }


def _fidelity(frames, reference) -> Dict[str, Optional[float]]:
    from .metrics import psnr, ssim, ssim_status

    return {"psnr": psnr(frames, reference), "ssim": None if ssim_status() else ssim(frames, reference)}


def write_render(target, result, sidecar: dict, *, fps: float, dense=None) -> dict:
    """Write a render's media, its dense comparison (media + sidecar) when ``dense`` is given, and its sidecar.

    The comparison records both fidelity figures (see the module docstring). Either every file is written or none
    is left behind. Returns the sidecar as written.
    """
    target = Path(target)
    written: List[Path] = []
    try:
        sidecar["media"] = write_media(target, result.frames, fps=fps)
        written.append(target)
        if dense is not None:
            reference = dense_path(target)
            dense_media = write_media(reference, dense.frames, fps=fps)
            written.append(reference)
            dense_sidecar = {key: sidecar[key] for key in ("prompt", "created", "model", "settings", "environment",
                                                           "parallel") if key in sidecar}
            dense_sidecar.update({"mode": "dense", "sparse": str(target), "media": dense_media,
                                  "timings": {"load_s": sidecar["timings"]["load_s"], "render_s": dense.seconds,
                                              "step_s": dense.step_seconds}})
            write_json(sidecar_path(reference), dense_sidecar)
            written.append(sidecar_path(reference))
            fmt = sidecar["media"]["format"]
            encoded = None
            if fmt in LOSSY_FORMATS:
                files = read_media(target, sidecar=sidecar), read_media(reference, sidecar=dense_sidecar)
                encoded = {**_fidelity(*files), "format": fmt}
            sidecar["dense"] = {
                "path": str(reference), "render_s": dense.seconds,
                "speedup": dense.seconds / result.seconds if result.seconds > 0 else None,
                "fidelity": {
                    "raw_frames": _fidelity(result.frames, dense.frames),
                    "encoded_files": encoded,
                    "note": "raw_frames: the pipeline's frames before encoding; encoded_files: both written files "
                            "read back, as `sparge-diffusers eval` computes it (lossy formats only: the encoder's "
                            "error lowers it)",
                },
            }
        write_json(sidecar_path(target), sidecar)
    except BaseException:
        for path in written:  # a render without its sidecar is a half-written result
            path.unlink(missing_ok=True)
        raise
    return sidecar


def format_db(value: Optional[float]) -> str:
    if value is None:
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.2f}"


def summary_line(target, result, sidecar: dict) -> str:
    """The one line ``generate`` prints per file."""
    frames = result.frames
    line = f"{target}: {frames.shape[0]}×{frames.shape[1]}×{frames.shape[2]} in {result.seconds:.2f} s"
    if result.sparsity is not None:
        line += f", sparsity {result.sparsity:.3f} ({', '.join(sorted(result.backends))})"
    dense = sidecar.get("dense")
    if dense is not None:
        from .metrics import ssim_status

        raw, encoded = dense["fidelity"]["raw_frames"], dense["fidelity"]["encoded_files"]
        speedup = dense["speedup"]
        line += f"; dense {dense['render_s']:.2f} s, speed-up {speedup:.2f}×" if speedup else \
            f"; dense {dense['render_s']:.2f} s"
        line += f", PSNR {format_db(raw['psnr'])} dB"
        if encoded is not None:
            line += f" (frames) / {format_db(encoded['psnr'])} dB ({encoded['format']} files)"
        line += ", SSIM " + (f"{raw['ssim']:.4f}" if raw["ssim"] is not None else f"n/a ({ssim_status()})")
    return line


__all__ = ["dense_path", "environment", "output_targets", "render_sidecar", "slugify", "summary_line",
           "write_render"]
