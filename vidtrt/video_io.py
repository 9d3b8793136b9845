"""Video files: mp4 through PyAV (H.264, yuv420p) and raw uint8 frames as .npy.

Torch-free at import (the client writes videos without torch); only :func:`to_uint8_frames` takes a
tensor.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from vidtrt.errors import VidtrtError

if TYPE_CHECKING:
    import torch

VIDEO_SUFFIXES = (".mp4", ".npy")


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """Decoder output [1, 3, F, H, W] in about [-1, 1] -> uint8 frames [F, H, W, 3].

    Same rounding as diffusers' postprocessing: (x / 2 + 0.5).clamp(0, 1) * 255, rounded.
    """
    if video.ndim != 5 or video.shape[0] != 1 or video.shape[1] != 3:
        raise ValueError(f"expected video [1, 3, F, H, W], got {tuple(video.shape)}")
    x = (video[0].float() / 2 + 0.5).clamp(0, 1)
    x = x.permute(1, 2, 3, 0).numpy()
    return (x * 255).round().astype(np.uint8)


def check_frames(frames: np.ndarray) -> None:
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise VidtrtError(f"frames must be uint8 [F, H, W, 3], got {frames.dtype} {list(frames.shape)}")


def encode_mp4(frames: np.ndarray, fps: int = 24, crf: int = 18) -> bytes:
    """H.264 mp4 bytes for uint8 frames [F, H, W, 3] (H and W must be even)."""
    check_frames(frames)
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = frames.shape[2]
        stream.height = frames.shape[1]
        stream.pix_fmt = "yuv420p"
        stream.options = {"crf": str(crf)}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def decode_mp4(data: bytes | str | Path) -> np.ndarray:
    """Decode an mp4 (bytes or path) back to uint8 frames [F, H, W, 3]."""
    import av

    src = io.BytesIO(data) if isinstance(data, (bytes, bytearray)) else str(data)
    with av.open(src) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    return np.stack(frames)


def write_video(path: str | Path, frames: np.ndarray, fps: int = 24) -> Path:
    """Write frames to ``.mp4`` or ``.npy`` (raw uint8 [F, H, W, 3], for exact comparisons)."""
    path = Path(path)
    if path.suffix not in VIDEO_SUFFIXES:
        raise VidtrtError(f"output {str(path)!r}: accepted suffixes {list(VIDEO_SUFFIXES)}")
    check_frames(frames)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, frames)
    else:
        path.write_bytes(encode_mp4(frames, fps))
    return path
