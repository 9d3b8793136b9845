"""Sliding-tile attention settings (model config, request, per-step schedule) and the backend switch in process
and through the server (tiny model; the STA kernels run in the Triton interpreter on CPU)."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from vidtrt.config.model_config import ModelConfig, tiny_config
from vidtrt.config.request import GenerationRequest
from vidtrt.config.sparse_attention import SparseAttentionConfig, SparseStep, step_schedule
from vidtrt.errors import ConfigError, InvalidRequestError

PROMPT = "a cat walks on the grass"


@pytest.mark.parametrize(("field", "value", "needle"), [
    ("sparse_window", "3,3", "'t,h,w'"),
    ("sparse_window", "0,1,1", "'t,h,w'"),
    ("sparse_window", 3, "'t,h,w'"),
    ("sparse_steps", "5", "'start:stop'"),
    ("sparse_steps", "3:2", "start <= stop <= 4"),
    ("sparse_steps", "0:9", "stop <= 4"),
    ("sparse_steps", "a:", "'start:'"),
])
def test_request_fields_are_validated_in_one_line(field, value, needle):
    with pytest.raises(InvalidRequestError) as e:
        GenerationRequest(PROMPT, **{field: value}).validate(tiny_config())
    msg = str(e.value)
    assert e.value.param == field and msg.startswith(f"invalid {field}=") and needle in msg and "\n" not in msg


@pytest.mark.parametrize(("change", "needle"), [
    (dict(tile=(1, 3, 3)), "sparse_attention.tile"),
    (dict(window=(1, 0, 1)), "sparse_attention.window"),
    (dict(layer_windows=((1, 1, 1),)), "has 1 entries: accepted none or one per block (2)"),
    (dict(layer_windows=((1, 1, 1), ((1, 1, 1),) * 3)), "layer_windows[1]"),
    (dict(start_step=-1), "start_step"),
    (dict(start_step=4, stop_step=2), "stop_step"),
])
def test_model_config_section_is_validated(change, needle):
    cfg = tiny_config()
    with pytest.raises(ConfigError, match=None) as e:
        dataclasses.replace(cfg, sparse_attention=dataclasses.replace(cfg.sparse_attention, **change)).validate()
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_round_trips_and_old_records_keep_their_fingerprint():
    cfg = dataclasses.replace(tiny_config(), sparse_attention=SparseAttentionConfig(
        tile=(1, 4, 4), layer_windows=((1, 1, 1), ((2, 1, 1), (1, 1, 2))), start_step=2, stop_step=3))
    again = ModelConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.fingerprint() == cfg.fingerprint()
    default = dataclasses.replace(cfg, sparse_attention=SparseAttentionConfig())
    record = default.to_dict()
    del record["sparse_attention"]  # written before the section existed
    assert ModelConfig.from_dict(record).fingerprint() == default.fingerprint()
    assert cfg.fingerprint() != default.fingerprint()


def test_step_schedule_and_wire_format():
    cfg = SparseAttentionConfig(tile=(1, 4, 4), window=(2, 1, 1), start_step=1, stop_step=3)
    at = step_schedule(cfg, 2, None, None, 4)
    assert [at(i) is not None for i in range(4)] == [False, True, True, False]
    assert at(1) == SparseStep((1, 4, 4), ((2, 1, 1), (2, 1, 1)))
    over = step_schedule(cfg, 2, "1,1,3", "0:", 4)
    assert all(over(i) == SparseStep((1, 4, 4), ((1, 1, 3),) * 2) for i in range(4))
    per_head = SparseStep((1, 4, 4), ((1, 1, 1), ((2, 1, 1), (1, 2, 1))))
    assert SparseStep.from_json(per_head.to_json()) == per_head
    with pytest.raises(InvalidRequestError, match="sparse_attention"):
        SparseStep.from_json('{"tile": [1, 4]}')


# ------------------------------------------------------------------------------------------ in process / server
needs_interpreter = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                       reason="CPU runs of the kernels need TRITON_INTERPRET=1 (tests/conftest.py)")
SPARSE = dict(sparse_window="1,1,1", sparse_steps="0:")


@pytest.fixture(scope="module")
def pipes():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    return {name: HunyuanVideoPipeline.from_model("tiny", attention=name) for name in ("sdpa", "triton-sta")}


def test_orchestrator_makes_the_schedule_current_per_step(pipes):
    """The request's step range and window reach every DiT call of the step (true CFG: both calls)."""
    from vidtrt.config.sparse_attention import current_sparse_step

    pipe = pipes["sdpa"]
    seen = []
    dit = pipe.components.dit
    pipe.components = dataclasses.replace(pipe.components, dit=lambda *a: (seen.append(current_sparse_step()),
                                                                           dit(*a))[1])
    try:
        pipe.generate(PROMPT, seed=1, num_inference_steps=3, height=32, width=32, num_frames=1, true_cfg_scale=2.0,
                      sparse_window="1,1,2", sparse_steps="1:2")
    finally:
        pipe.components = dataclasses.replace(pipe.components, dit=dit)
    step = SparseStep((1, 4, 4), ((1, 1, 2),) * 2)
    assert seen == [None, None, step, step, None, None]


@needs_interpreter
def test_backend_switch_in_process(pipes):
    """The DiT engine of a triton-sta pipeline: sparse under a sparse step, dense (equal to sdpa) without one
    or with a window covering the video."""
    import torch

    from vidtrt.config.sparse_attention import sparse_step

    text = pipes["sdpa"].components.encode_text([PROMPT])
    g = torch.Generator().manual_seed(0)
    args = (torch.randn(1, 16, 3, 8, 12, generator=g), torch.tensor([700.0]), text, torch.tensor([6000.0]))
    dense = pipes["sdpa"].components.dit(*args)
    sta = pipes["triton-sta"].components.dit

    def rel(a):
        return ((a - dense).abs().max() / dense.abs().max()).item()

    with sparse_step(SparseStep((1, 4, 4), ((1, 1, 1),) * 2)):
        assert rel(sta(*args)) > 1e-3
    with sparse_step(SparseStep((1, 4, 4), ((9, 9, 9),) * 2)):
        assert rel(sta(*args)) <= 1e-5
    assert rel(sta(*args)) <= 1e-5


@needs_interpreter
@pytest.mark.server
def test_backend_switch_through_the_server(pipes, tmp_path):
    from vidtrt.client import VideoClient
    from vidtrt.export.repository import build_repository
    from vidtrt.serving.server import TritonServer

    repo = build_repository("tiny", tmp_path / "repo", attention="triton-sta", sync_model=False)
    assert 'string_value: "triton-sta"' in (repo / "hunyuan_video_dit" / "config.pbtxt").read_text()
    request = GenerationRequest(PROMPT, seed=4, num_inference_steps=2, **SPARSE)
    with TritonServer(repo, log_file=tmp_path / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600) as srv:
        served = VideoClient(srv.grpc_url).run(request).frames
        dense_step = VideoClient(srv.grpc_url).run(dataclasses.replace(request, sparse_steps="2:")).frames
    np.testing.assert_array_equal(served, pipes["triton-sta"].run(request))
    np.testing.assert_array_equal(dense_step, pipes["triton-sta"].run(dataclasses.replace(request, sparse_steps="2:")))
    assert not np.array_equal(served, dense_step)


def test_build_rejects_unknown_attention(tmp_path):
    from vidtrt.export.repository import RepositoryError, build_repository

    with pytest.raises(RepositoryError, match="invalid attention 'flash'"):
        build_repository("tiny", tmp_path / "repo", attention="flash")
