"""Media files: frames in, mp4 / gif / png out (and back), JSON sidecars, all written atomically.

Every writer renders into a hidden temporary file next to the target and renames it into place only when the
write succeeded, so an error (a bad path, a full disk, an encoder failure, Ctrl-C) never leaves a half-written
file. Frames are ``uint8`` arrays ``[T, H, W, 3]`` throughout; `to_uint8_frames` converts pipeline outputs.

Formats, chosen by the file suffix:
    ``.mp4``: H.264 (yuv420p) through the ffmpeg binary that imageio-ffmpeg ships; odd frame sizes are padded by
        one replicated row / column (yuv420p needs even sizes).
    ``.gif``: looping animation through imageio's Pillow plugin.
    ``.png``: one frame as an image; several frames as a contact sheet (up to `SHEET_COLUMNS` frames a row). The
        sidecar records the layout so `read_media` splits the sheet back into frames.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import tempfile
import uuid
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from .errors import UsageError

logger = logging.getLogger(__name__)

FORMATS = ("mp4", "gif", "png")
LOSSY_FORMATS = ("mp4", "gif")  # H.264 yuv420p; a 256-colour palette. png is lossless.
SHEET_COLUMNS = 8
PathLike = Union[str, os.PathLike]


def media_format(path: PathLike) -> str:
    """``"mp4"``, ``"gif"`` or ``"png"`` from the suffix; `UsageError` for any other suffix."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise UsageError(f"cannot write {str(path)!r}: the file name must end in one of "
                         f"{', '.join('.' + f for f in FORMATS)}")
    return suffix


def sidecar_path(path: PathLike) -> Path:
    """The JSON sidecar of a media file: ``clip.mp4`` -> ``clip.mp4.json``."""
    path = Path(path)
    return path.with_name(path.name + ".json")


# frames


def to_uint8_frames(media) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` uint8 from a pipeline output.

    Accepts numpy arrays or torch tensors ``[T, H, W, C]`` / ``[H, W, C]`` (float in [0, 1] or uint8), a PIL image,
    or a list of any of these (one per frame). One- and four-channel frames become RGB.
    """
    if isinstance(media, (list, tuple)):
        if len(media) == 0:
            raise ValueError("no frames")
        return np.concatenate([to_uint8_frames(frame) for frame in media], axis=0)
    if hasattr(media, "detach"):  # torch tensor
        media = media.detach().float().cpu().numpy()
    elif not isinstance(media, np.ndarray):  # PIL image
        media = np.asarray(media.convert("RGB"))
    array = np.asarray(media)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"frames must be [T, H, W, C] or [H, W, C], got shape {array.shape}")
    if array.shape[0] == 0:
        raise ValueError("no frames")
    if array.dtype != np.uint8:
        array = np.clip(np.nan_to_num(array.astype(np.float32), nan=0.0) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    channels = array.shape[-1]
    if channels == 1:
        array = np.repeat(array, 3, axis=-1)
    elif channels == 4:
        array = array[..., :3]
    elif channels != 3:
        raise ValueError(f"frames must have 1, 3 or 4 channels, got {channels}")
    return np.ascontiguousarray(array)


def contact_sheet(frames: np.ndarray, columns: int = SHEET_COLUMNS) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` tiled row by row into one image ``[rows * H, columns * W, 3]`` (black padding)."""
    count, height, width, channels = frames.shape
    columns = max(1, min(columns, count))
    rows = math.ceil(count / columns)
    sheet = np.zeros((rows * height, columns * width, channels), dtype=frames.dtype)
    for index, frame in enumerate(frames):
        row, col = divmod(index, columns)
        sheet[row * height:(row + 1) * height, col * width:(col + 1) * width] = frame
    return sheet


def split_sheet(sheet: np.ndarray, frames: int, columns: int) -> np.ndarray:
    """Inverse of `contact_sheet`."""
    columns = max(1, min(columns, frames))
    rows = math.ceil(frames / columns)
    height, width = sheet.shape[0] // rows, sheet.shape[1] // columns
    out = [sheet[r * height:(r + 1) * height, c * width:(c + 1) * width]
           for r, c in (divmod(i, columns) for i in range(frames))]
    return np.stack(out)


# atomic writes


def check_writable(path: PathLike) -> Path:
    """Fail early, before any rendering, when ``path`` cannot be written; returns it as a `Path`.

    The nearest existing ancestor must be a directory in which a file can be created (probed with a real
    temporary file, which also catches read-only file systems and root-owned folders). Nothing is created.
    """
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"cannot write {str(path)!r}: it is a directory")
    _probe_directory(_existing_ancestor(path.parent, f"cannot write {str(path)!r}"), path)
    return path


def check_writable_dir(directory: PathLike) -> Path:
    """Like `check_writable`, for a directory that will be created if needed."""
    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise UsageError(f"cannot write to {str(directory)!r}: it is a file, not a directory")
    _probe_directory(_existing_ancestor(directory, f"cannot write to {str(directory)!r}"), directory)
    return directory


def _existing_ancestor(path: Path, failure: str) -> Path:
    """The nearest existing folder at or above ``path``; `UsageError` (``failure: ...``) if it is not a folder."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise UsageError(f"{failure}: {str(ancestor)!r} is not a directory")
    return ancestor


def _probe_directory(directory: Path, target: Path) -> None:
    try:
        handle, probe = tempfile.mkstemp(dir=directory, prefix=".sparge-write-test-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise UsageError(f"cannot write {str(target)!r}: {error.strerror or error}") from None


@contextlib.contextmanager
def atomic_path(path: PathLike) -> Iterator[Path]:
    """Yield a hidden temporary path next to ``path`` (same suffix); rename it to ``path`` on success only.

    Missing parent folders are created; on any exception the temporary file is removed and the error re-raised.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.stem}.partial-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield temporary
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()


def write_text(path: PathLike, text: str) -> Path:
    """Write a text file atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: PathLike, payload) -> Path:
    """Write JSON atomically (``default=str`` for paths, dtypes and the like; inf / nan become null)."""
    return write_text(path, json.dumps(_json_safe(payload), indent=2, default=str) + "\n")


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_media(path: PathLike, frames, *, fps: float = 8.0) -> dict:
    """Write frames to ``path`` (format from the suffix) atomically; returns what a sidecar should record.

    Returns:
        ``{"path", "format", "frames", "height", "width", "fps"}`` plus ``"sheet_columns"`` for a multi-frame png.
    """
    path = Path(path)
    fmt = media_format(path)
    frames = to_uint8_frames(frames)
    if not (fps > 0):
        raise UsageError(f"fps must be > 0, got {fps}")
    info = {"path": str(path), "format": fmt, "frames": int(frames.shape[0]), "height": int(frames.shape[1]),
            "width": int(frames.shape[2]), "fps": float(fps)}
    with atomic_path(path) as temporary:
        if fmt == "mp4":
            _write_mp4(temporary, frames, fps)
        elif fmt == "gif":
            import imageio.v3 as iio

            iio.imwrite(temporary, frames if len(frames) > 1 else frames[0], extension=".gif",
                        duration=1000.0 / fps, loop=0)
        else:
            import imageio.v3 as iio

            if len(frames) > 1:
                columns = min(SHEET_COLUMNS, len(frames))
                info["sheet_columns"] = columns
                iio.imwrite(temporary, contact_sheet(frames, columns), extension=".png")
            else:
                iio.imwrite(temporary, frames[0], extension=".png")
    return info


def _write_mp4(path: Path, frames: np.ndarray, fps: float) -> None:
    import imageio_ffmpeg

    pad_h, pad_w = frames.shape[1] % 2, frames.shape[2] % 2
    if pad_h or pad_w:  # yuv420p needs even sizes
        frames = np.pad(frames, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
    height, width = frames.shape[1:3]
    writer = imageio_ffmpeg.write_frames(str(path), (width, height), fps=fps, codec="libx264", quality=8,
                                         macro_block_size=1, ffmpeg_log_level="error")
    writer.send(None)  # start ffmpeg
    try:
        for frame in frames:
            writer.send(np.ascontiguousarray(frame))
    finally:
        writer.close()


# reading


def read_media(path: PathLike, *, sidecar: Optional[dict] = None, frames_hint: Optional[int] = None) -> np.ndarray:
    """Frames ``[T, H, W, 3]`` uint8 from an mp4, gif or png written by `write_media` (or any such file).

    A png contact sheet is split into frames when its sidecar (``sidecar`` or ``<path>.json``) records the layout;
    without one, ``frames_hint`` (the frame count it should hold, e.g. that of the video it is compared with) splits
    it as `write_media` lays sheets out.
    """
    path = Path(path)
    fmt = media_format(path)
    if not path.is_file():
        raise UsageError(f"no such media file: {str(path)!r}")
    try:
        if fmt == "mp4":
            import imageio_ffmpeg

            reader = imageio_ffmpeg.read_frames(str(path))
            meta = next(reader)
            width, height = meta["size"]
            frames = to_uint8_frames(np.stack([np.frombuffer(chunk, dtype=np.uint8).reshape(height, width, 3)
                                               for chunk in reader]))
        else:
            import imageio.v3 as iio

            if fmt == "gif":
                frames = to_uint8_frames(iio.imread(path, index=None, extension=".gif"))
            else:
                frames = to_uint8_frames(iio.imread(path, extension=".png"))
    except Exception as error:  # a broken or foreign file
        reason = str(error).splitlines()[0] if str(error) else repr(error)
        raise UsageError(f"cannot read {str(path)!r}: {reason}") from None
    if sidecar is None and sidecar_path(path).is_file():
        with contextlib.suppress(ValueError, OSError):
            sidecar = json.loads(sidecar_path(path).read_text())
    media = (sidecar or {}).get("media") or {}
    if fmt == "png" and media.get("sheet_columns") and media.get("frames", 1) > 1:
        frames = split_sheet(frames[0], int(media["frames"]), int(media["sheet_columns"]))
    elif fmt == "png" and not media and frames_hint and frames_hint > 1 and len(frames) == 1:
        columns = min(SHEET_COLUMNS, frames_hint)
        rows = math.ceil(frames_hint / columns)
        if frames.shape[1] % rows == 0 and frames.shape[2] % columns == 0:
            frames = split_sheet(frames[0], frames_hint, columns)
    if media.get("height") and media.get("width"):  # undo the even-size padding of mp4
        frames = frames[:, : int(media["height"]), : int(media["width"])]
    return np.ascontiguousarray(frames)
