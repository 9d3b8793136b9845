"""vidtrt.config.lifecycle (deadline, drain file, admission, status words) and the orchestrator's checks
between denoising steps and between VAE tiles, in process; the server side is test_serving_lifecycle."""

from __future__ import annotations

import argparse
import re
import time

import pytest

from vidtrt.config import lifecycle
from vidtrt.config.components import Components
from vidtrt.config.lifecycle import Admission, Deadline, DrainWatch, start_drain, status_of
from vidtrt.config.request import GenerationRequest
from vidtrt.errors import CancelledError, DeadlineExceededError
from vidtrt.export.repository import RepositoryError, add_build_arguments, build_repository


def test_deadline_from_triton_timeout():
    assert Deadline.from_timeout_us(0) is None and Deadline.from_timeout_us(None) is None
    d = Deadline.from_timeout_us(1_500_000, now=100.0)
    assert d.timeout_s == 1.5 and d.at == 101.5
    assert not d.expired(now=101.4) and d.expired(now=101.5)
    msg = d.message("before step 3 of 50")
    assert msg == "deadline exceeded: the request's timeout of 1.5 s passed before step 3 of 50; generation cancelled"
    assert status_of(msg) == "DEADLINE_EXCEEDED"


@pytest.mark.parametrize("message, status", [
    ("generation cancelled before step 2 of 9", "CANCELLED"),
    ("generation cancelled (server shutting down: ...) before VAE tile 3 of 4", "CANCELLED"),
    (lifecycle.SHUTTING_DOWN, "UNAVAILABLE"),
    ("unavailable: server busy: 2 generations running and 1 waiting", "UNAVAILABLE"),
    ("[request id: <id_unknown>] Exceeds maximum queue size", "UNAVAILABLE"),  # Triton's own queue
    ("Request timeout expired", "DEADLINE_EXCEEDED"),  # Triton's queue policy: timed out while waiting
    ("invalid height=65: accepted ...", None),
    ("hunyuan_video_dit failed: injected DiT failure", None),
])
def test_status_of_the_answers(message, status):
    assert status_of(message) == status


def test_drain_file(tmp_path):
    path = tmp_path / "drain.json"
    watch = DrainWatch(path)
    assert not watch.draining and not watch.expired()
    assert not DrainWatch(None).draining  # a server not started by vidtrt serve never drains
    deadline = start_drain(path, 30, now=1000.0)
    assert deadline == 1030.0 and not list(tmp_path.glob("*.tmp"))
    assert watch.draining and not watch.expired(now=1029.9) and watch.expired(now=1030.0)
    assert watch.reason() == ("server shutting down: in-flight generations had 30 s to finish "
                              "(vidtrt serve --exit-timeout)")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert DrainWatch(bad).expired()  # unreadable: drain now rather than never


def test_drain_watch_from_env(tmp_path, monkeypatch):
    monkeypatch.setenv(lifecycle.DRAIN_FILE_ENV, str(tmp_path / "d.json"))
    watch = DrainWatch.from_env()
    assert not watch.draining
    start_drain(tmp_path / "d.json", 5)
    assert watch.draining


def test_admission_bounds_running_plus_waiting():
    a = Admission(running_limit=2, queue_limit=1, model_name="hunyuan_video")
    assert [a.admit() for _ in range(3)] == [None, None, None]
    refusal = a.admit()
    assert refusal == ("unavailable: server busy: 2 generations running and 1 waiting on hunyuan_video "
                       "(max_concurrent_generations 2, max_queue_size 1); retry later")
    assert status_of(refusal) == "UNAVAILABLE" and a.accepted == 3
    a.release()
    assert a.admit() is None
    unbounded = Admission(1, 0)
    assert all(unbounded.admit() is None for _ in range(100))


# ------------------------------------------------------------------------------------------ orchestrator
@pytest.fixture(scope="module")
def pipe():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    return HunyuanVideoPipeline.from_model("tiny")


def _counting(pipe, counts):
    c = pipe.components
    return Components(c.encode_text, lambda *a: counts.append("dit") or c.dit(*a),
                      lambda z: counts.append("tile") or c.decode_tile(z))


def test_cancel_between_vae_tiles_with_a_reason(pipe):
    from vidtrt.runtime.orchestrator import run_generation

    calls, events = [], []
    with pytest.raises(CancelledError) as e:
        run_generation(GenerationRequest("a cat", num_inference_steps=2), pipe.config, _counting(pipe, calls),
                       progress=events.append,
                       should_cancel=lambda: "server shutting down" if len(events) >= 4 else False)
    assert str(e.value) == "generation cancelled (server shutting down) before VAE tile 3 of 4"
    assert calls == ["dit", "dit", "tile", "tile"]
    assert [(ev.stage, ev.step, ev.total) for ev in events] == [
        ("denoise", 1, 2), ("denoise", 2, 2), ("decode", 1, 4), ("decode", 2, 4)]


def test_deadline_checked_before_text_encoding_steps_and_tiles(pipe):
    from vidtrt.runtime.orchestrator import run_generation

    calls: list = []
    request = GenerationRequest("a cat", num_inference_steps=3)
    with pytest.raises(DeadlineExceededError, match=r"timeout of 2 s passed before text encoding"):
        run_generation(request, pipe.config, _counting(pipe, calls), deadline=Deadline(2.0, at=0.0))
    assert calls == []
    # expires during the decode: after the second tile
    deadline = Deadline(60.0, at=time.monotonic() + 3600)
    events: list = []

    def progress(ev):
        events.append(ev)
        if ev.stage == "decode" and ev.step == 2:
            object.__setattr__(deadline, "at", 0.0)

    with pytest.raises(DeadlineExceededError) as e:
        run_generation(request, pipe.config, _counting(pipe, calls), progress=progress, deadline=deadline)
    assert str(e.value) == ("deadline exceeded: the request's timeout of 60 s passed before VAE tile 3 of 4; "
                            "generation cancelled")
    assert isinstance(e.value, CancelledError) and calls.count("tile") == 2 and calls.count("dit") == 3


# ------------------------------------------------------------------------------------------ vidtrt build
def test_build_max_queue_flag_and_configs(tmp_path):
    args = add_build_arguments(argparse.ArgumentParser()).parse_args([])
    assert args.max_queue is None  # -> lifecycle.DEFAULT_MAX_QUEUE
    assert add_build_arguments(argparse.ArgumentParser()).parse_args(["--max-queue", "3"]).max_queue == 3
    repo = build_repository("tiny", tmp_path / "default")
    stream = (repo / "hunyuan_video" / "config.pbtxt").read_text()
    sync = (repo / "hunyuan_video_sync" / "config.pbtxt").read_text()
    assert f'key: "max_queue_size" value {{ string_value: "{lifecycle.DEFAULT_MAX_QUEUE}" }}' in stream
    assert "dynamic_batching" not in stream  # its queue is the model's own count (execute returns at once)
    policy = re.search(r"default_queue_policy \{([^}]*)\}", sync).group(1)
    assert f"max_queue_size: {lifecycle.DEFAULT_MAX_QUEUE}" in policy and "allow_timeout_override: true" in policy
    repo = build_repository("tiny", tmp_path / "q0", max_queue_size=0)
    assert "max_queue_size: 0" in (repo / "hunyuan_video_sync" / "config.pbtxt").read_text()
    for bad in (-1, 1.5, True):
        with pytest.raises(RepositoryError, match="invalid max_queue_size"):
            build_repository("tiny", tmp_path / "bad", max_queue_size=bad)
