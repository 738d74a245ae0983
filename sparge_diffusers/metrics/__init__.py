"""Quality metrics for sparse-versus-dense renders: alignment to the prompt and fidelity to the dense result.

Alignment (need local weights; a flag or an environment variable names the folder, nothing is downloaded):
    `clip_score` (CLIPScore, torchmetrics + a local CLIP), `clip_t_consistency` (CLIP-T, consecutive-frame
    consistency), `vqa_score` (mean P("yes") of a local BLIP VQA model to a question built from the prompt).
Fidelity (no weights): `psnr`, `ssim`; `lpips` where torchvision and its weights are local (`lpips_status`).

Every function takes uint8 frames ``[T, H, W, 3]`` (see `sparge_diffusers.media.to_uint8_frames`). transformers is
imported only when a model is loaded.
"""

from .clip_score import LocalClip, clip_score, load_clip
from .consistency import clip_t_consistency
from .fidelity import lpips, lpips_available, lpips_status, psnr, ssim, ssim_status
from .vqa import DEFAULT_QUESTION, LocalVqa, load_vqa, vqa_question, vqa_score
from .weights import CLIP_ENV, VQA_ENV, resolve_model_dir

__all__ = [
    "CLIP_ENV", "DEFAULT_QUESTION", "LocalClip", "LocalVqa", "VQA_ENV", "clip_score", "clip_t_consistency",
    "load_clip", "load_vqa", "lpips", "lpips_available", "lpips_status", "psnr", "resolve_model_dir", "ssim",
    "ssim_status",
    "vqa_question", "vqa_score",
]
