"""The generation model's wire format (vidtrt.config.request_io): build, parse, errors, config stanzas."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest

from vidtrt.config import request_io
from vidtrt.config.model_config import tiny_config
from vidtrt.config.request import GenerationRequest, embedded_guidance
from vidtrt.errors import InvalidRequestError

FULL = GenerationRequest(
    prompt="a cat walks on the grass", negative_prompt="blurry", height=64, width=96, num_frames=9,
    num_inference_steps=3, embedded_guidance_scale=6.0, flow_shift=7.0, seed=2**62 + 3, true_cfg_scale=1.5,
    prompt_policy="error", output_format="mp4", cache_policy="easycache", cache_threshold=0.125, cache_warmup_steps=4,
    sparse_window="1,1,2", sparse_steps="1:", use_dynamic_cfg=True,
)


def test_round_trip_every_field():
    arrays = request_io.request_to_inputs(FULL)
    assert set(arrays) == {t.name for t in request_io.REQUEST_INPUTS}
    for t in request_io.REQUEST_INPUTS:
        assert arrays[t.name].shape == (1,)
        assert arrays[t.name].dtype == t.numpy_dtype
    assert arrays["embedded_guidance_scale"].dtype == np.float32 and arrays["seed"].dtype == np.int64
    assert request_io.inputs_to_request(arrays) == FULL


def test_dynamic_cfg_round_trip_as_bool():
    for value in (True, False):
        arrays = request_io.request_to_inputs(GenerationRequest("a cat", use_dynamic_cfg=value))
        assert arrays["use_dynamic_cfg"].dtype == np.bool_ and arrays["use_dynamic_cfg"].tolist() == [value]
        assert request_io.inputs_to_request(arrays).use_dynamic_cfg is value
    assert request_io.perf_analyzer_inputs(GenerationRequest("a", use_dynamic_cfg=True))["use_dynamic_cfg"] == [True]


def test_unset_fields_are_not_sent_and_parse_back_as_none():
    arrays = request_io.request_to_inputs(GenerationRequest("hello"))
    assert set(arrays) == {"prompt", "prompt_policy", "output_format"}
    parsed = request_io.inputs_to_request(arrays)
    assert parsed == GenerationRequest("hello")
    assert parsed.validate(tiny_config()).height == tiny_config().defaults.height


def test_every_input_is_named_as_its_request_field():
    """One name per thing: the wire input, the request field, the Python keyword are the same word."""
    assert [t.name for t in request_io.REQUEST_INPUTS if t.name not in
            {f.name for f in dataclasses.fields(GenerationRequest)}] == []


def test_diffusers_guidance_name_is_an_alias():
    assert embedded_guidance(None, 4.0) == embedded_guidance(4.0, None) == embedded_guidance(4.0, 4.0) == 4.0
    assert embedded_guidance(None, None) is None
    with pytest.raises(InvalidRequestError) as e:
        embedded_guidance(5.0, 4.0)
    assert e.value.param == "guidance_scale" and "embedded_guidance_scale" in str(e.value)


@pytest.mark.parametrize("name, array, fragment", [
    ("height", np.array([64.0], np.float32), "INT32"),
    ("height", np.array([64, 64], np.int32), "[1] INT32"),
    ("seed", np.array([[1]], np.int64), "[1] INT64"),
    ("prompt", np.array([b"\xff\xfe"], np.object_), "UTF-8"),
    ("embedded_guidance_scale", np.array([b"6"], np.object_), "FP32"),
    ("prompt", np.array([], np.object_), "[1] BYTES"),
    ("use_dynamic_cfg", np.array([1], np.int32), "[1] BOOL"),
])
def test_wire_errors_name_the_input(name, array, fragment):
    arrays = {"prompt": np.array([b"ok"], np.object_), name: array}
    with pytest.raises(InvalidRequestError) as e:
        request_io.inputs_to_request(arrays)
    assert e.value.param == name
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_missing_prompt_is_named():
    with pytest.raises(InvalidRequestError) as e:
        request_io.inputs_to_request({"seed": np.array([1], np.int64)})
    assert e.value.param == "prompt"


@pytest.mark.parametrize("field, value, name", [
    ("height", 2**40, "height"), ("height", 64.5, "height"), ("num_frames", True, "num_frames"),
    ("seed", 2**64, "seed"), ("embedded_guidance_scale", "6", "embedded_guidance_scale"), ("prompt", 5, "prompt"),
    ("use_dynamic_cfg", 1, "use_dynamic_cfg"),
])
def test_client_side_encoding_errors(field, value, name):
    kwargs = {"prompt": "ok", field: value}
    with pytest.raises(InvalidRequestError) as e:
        request_io.request_to_inputs(GenerationRequest(**kwargs))
    assert e.value.param == name


def test_range_checks_stay_with_validate():
    # The wire format carries any int32; the model's limits are GenerationRequest.validate's.
    r = request_io.inputs_to_request(request_io.request_to_inputs(GenerationRequest("x", height=65)))
    with pytest.raises(InvalidRequestError, match="height"):
        r.validate(tiny_config())


def test_outputs():
    p = request_io.progress_outputs(3, 50, 1.25)
    assert {k: (v.dtype, v.shape) for k, v in p.items()} == {
        "step": (np.int32, (1,)), "total_steps": (np.int32, (1,)), "elapsed": (np.float32, (1,))}
    # decode progress (one per VAE tile) carries no "step": clients that know only steps skip it
    d = request_io.decode_progress_outputs(7, 18, 2.5)
    assert {k: (v.dtype, v.shape) for k, v in d.items()} == {
        "tile": (np.int32, (1,)), "total_tiles": (np.int32, (1,)), "elapsed": (np.float32, (1,))}
    assert set(d) == set(request_io.DECODE_PROGRESS_OUTPUTS) and "step" not in d
    frames = np.zeros((5, 16, 32, 3), np.uint8)
    f = request_io.final_outputs(frames, b"mp4bytes")
    assert f["video"].shape == (5, 16, 32, 3) and f["mp4"].dtype == np.object_ and f["mp4"][0] == b"mp4bytes"
    assert set(request_io.final_outputs(frames)) == {"video"}


def test_config_stanzas_declare_every_tensor_once():
    text = request_io.config_io_pbtxt()
    entries = re.findall(r'\{ name: "(\w+)" data_type: (\w+) dims: \[ ([^\]]*) \]( optional: true)? \}', text)
    inputs = {n: (t, d, bool(o)) for n, t, d, o in entries[: len(request_io.REQUEST_INPUTS)]}
    outputs = {n: (t, d) for n, t, d, _ in entries[len(request_io.REQUEST_INPUTS):]}
    assert inputs["prompt"] == ("TYPE_STRING", "1", False)
    assert all(opt for n, (_, _, opt) in inputs.items() if n != "prompt")
    assert inputs["seed"][0] == "TYPE_INT64" and inputs["embedded_guidance_scale"][0] == "TYPE_FP32"
    assert outputs["video"] == ("TYPE_UINT8", "-1, -1, -1, 3")
    assert outputs["mp4"] == ("TYPE_STRING", "1")
    assert set(outputs) == {"step", "total_steps", "elapsed", "tile", "total_tiles", "video", "mp4", "dit_calls",
                            "dit_calls_skipped", "dit_calls_total", "dit_calls_skipped_total"}
    assert text.count("input [") == 1 and text.count("output [") == 1


def test_perf_analyzer_input_file_matches_the_declaration():
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "perf_analyzer_inputs.json"
    data = json.loads(path.read_text())
    names = {t.name: t for t in request_io.REQUEST_INPUTS}
    assert data["data"], "no perf_analyzer requests"
    for entry in data["data"]:
        assert "prompt" in entry
        for name, values in entry.items():
            assert name in names, name
            assert len(values) == 1
        # Every entry is a valid request for the tiny model.
        arrays = {k: np.array([v[0].encode() if isinstance(v[0], str) else v[0]],
                              dtype=names[k].numpy_dtype) for k, v in entry.items()}
        request_io.inputs_to_request(arrays).validate(tiny_config())
    assert request_io.perf_analyzer_inputs(GenerationRequest("a", seed=1)) == {
        "prompt": ["a"], "seed": [1], "prompt_policy": ["truncate"], "output_format": ["frames"]}
