"""mp4 and npy outputs are real files that decode back."""

import numpy as np
import pytest
import torch

from vidtrt.errors import VidtrtError
from vidtrt.video_io import decode_mp4, encode_mp4, to_uint8_frames, write_video


def _frames(f=5, h=48, w=80, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content so H.264 reproduces it closely
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 128.0)], -1)
    return np.stack([np.roll(base, k * 3, axis=1) for k in range(f)]).astype(np.uint8) + rng.integers(
        0, 2, (f, h, w, 3), dtype=np.uint8)


def test_mp4_round_trip(tmp_path):
    frames = _frames()
    path = write_video(tmp_path / "v.mp4", frames, fps=24)
    back = decode_mp4(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 4.0
    assert decode_mp4(encode_mp4(frames)).shape == frames.shape


def test_npy_is_exact(tmp_path):
    frames = _frames(f=1)
    path = write_video(tmp_path / "v.npy", frames)
    assert np.array_equal(np.load(path), frames)


def test_bad_suffix_and_frames(tmp_path):
    with pytest.raises(VidtrtError, match=r"accepted suffixes \['.mp4', '.npy'\]"):
        write_video(tmp_path / "v.gif", _frames())
    with pytest.raises(VidtrtError, match="uint8"):
        write_video(tmp_path / "v.mp4", _frames().astype(np.float32))


def test_to_uint8_matches_diffusers_postprocessing():
    from diffusers.video_processor import VideoProcessor

    video = torch.randn(1, 3, 5, 16, 24) * 1.2
    ours = to_uint8_frames(video)
    ref = VideoProcessor(vae_scale_factor=8).postprocess_video(video, output_type="np")[0]
    assert np.array_equal(ours, (ref * 255).round().astype(np.uint8))
