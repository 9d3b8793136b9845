"""The tiny CogVideoX model through a real tritonserver: the repository names its models by the family
(cogvideox, cogvideox_sync, cogvideox_text_encoder, cogvideox_dit, cogvideox_vae_decoder,
cogvideox_dit_probe) and the same request
gives the same frames as in process (CFG with a negative prompt, tiled decode)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from vidtrt.client import VideoClient
from vidtrt.config.request import GenerationRequest

pytestmark = pytest.mark.server


def test_same_frames_as_in_process(cogvideox_server):
    """On the session's shared server (conftest.py ``cogvideox_server``: build_repository("tiny-cogvideox"))."""
    from vidtrt.runtime.cogvideox_pipeline import CogVideoXPipeline

    srv = cogvideox_server
    repo = srv.repository
    record = json.loads((repo / "vidtrt-repository.json").read_text())
    assert record["family"] == "cogvideox" and record["generation_model"] == "cogvideox"
    assert {p.name for p in repo.iterdir() if p.is_dir()} == {
        "cogvideox", "cogvideox_sync", "cogvideox_text_encoder", "cogvideox_dit", "cogvideox_vae_decoder",
        "cogvideox_dit_probe"}
    pipe = CogVideoXPipeline.from_model("tiny-cogvideox")
    requests = [GenerationRequest("a cat walks on the grass", seed=5, num_inference_steps=2, negative_prompt="blurry"),
                GenerationRequest("a dog", seed=6, num_frames=1, height=48, width=80, num_inference_steps=2,
                                  true_cfg_scale=3.0)]
    client = VideoClient(srv.grpc_url, model_name=record["generation_model"])
    for request in requests:
        steps = []
        result = client.run(request, progress=steps.append)
        expected = pipe.run(request)
        assert result.frames.dtype == np.uint8 and result.frames.shape == expected.shape
        np.testing.assert_array_equal(result.frames, expected)


def test_onnxruntime_repository_gives_the_in_process_frames(tmp_path):
    """`vidtrt build --engine onnxruntime` of the exported DiT and VAE frame-batch graph: the real tritonserver
    gives the frames of the same artifacts in process (one frame batch and two)."""
    from onnx_artifacts import tiny_cogvideox_artifacts

    from vidtrt.export.repository import build_repository
    from vidtrt.runtime.engine_components import load_pipeline_with_engine
    from vidtrt.serving.server import TritonServer

    artifacts = tiny_cogvideox_artifacts()
    repo = build_repository("tiny-cogvideox", tmp_path / "repo", engine="onnxruntime", artifacts=artifacts)
    pipe = load_pipeline_with_engine("tiny-cogvideox", "onnxruntime", artifacts)
    requests = [GenerationRequest("a cat walks on the grass", seed=5, num_inference_steps=2, num_frames=17),
                GenerationRequest("a dog", seed=6, num_frames=1, height=48, width=80, num_inference_steps=2)]
    with TritonServer(repo, log_file=tmp_path / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600) as srv:
        client = VideoClient(srv.grpc_url, model_name="cogvideox")
        for request in requests:
            got, want = client.run(request).frames, pipe.run(request)
            assert got.shape == want.shape
            assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # same ONNX files; thread counts may differ
