"""Every validation rule: one clear message naming the parameter, the value and what is accepted."""

import math

import pytest

from vidtrt.config.model_config import hunyuan_video_config, tiny_config
from vidtrt.config.request import GenerationRequest
from vidtrt.errors import InvalidRequestError

FULL = hunyuan_video_config()
TINY = tiny_config()


def _err(config=FULL, **kw) -> InvalidRequestError:
    kw.setdefault("prompt", "a cat")
    with pytest.raises(InvalidRequestError) as info:
        GenerationRequest(**kw).validate(config)
    return info.value


def test_defaults_resolve_to_official_values():
    r = GenerationRequest(prompt="a cat").validate(FULL)
    assert (r.height, r.width, r.num_frames, r.num_inference_steps) == (720, 1280, 129, 50)
    assert (r.embedded_guidance_scale, r.flow_shift, r.seed, r.true_cfg_scale) == (6.0, 7.0, 0, 1.0)
    assert r.negative_prompt is None and not r.do_true_cfg


def test_true_cfg_gets_official_negative_prompt():
    r = GenerationRequest(prompt="a cat", true_cfg_scale=5.0).validate(FULL)
    assert r.negative_prompt.startswith("Aerial view, aerial view, overexposed")
    assert r.do_true_cfg


@pytest.mark.parametrize("h,w", [(544, 960), (960, 544), (624, 832), (832, 624), (720, 720),
                                 (720, 1280), (1280, 720), (1104, 832), (832, 1104), (960, 960)])
def test_every_table_size_is_valid(h, w):
    GenerationRequest(prompt="x", height=h, width=w).validate(FULL)


@pytest.mark.parametrize("frames", [1, 5, 33, 129])
def test_valid_frame_counts(frames):
    GenerationRequest(prompt="x", num_frames=frames).validate(FULL)


@pytest.mark.parametrize(
    "field,value,needle",
    [
        ("height", 721, "multiple of 16"),
        ("height", 0, "[16, 1280]"),
        ("height", 1296, "[16, 1280]"),
        ("height", 720.0, "an integer"),
        ("height", True, "an integer"),
        ("width", 1000, "multiple of 16"),
        ("width", -16, "[16, 1280]"),
        ("num_frames", 128, "4k + 1"),
        ("num_frames", 0, "4k + 1"),
        ("num_frames", 133, "[1, 129]"),
        ("num_inference_steps", 0, "[1, 1000]"),
        ("num_inference_steps", 1001, "[1, 1000]"),
        ("num_inference_steps", 2.5, "an integer"),
        ("embedded_guidance_scale", -1.0, "[0, 100]"),
        ("embedded_guidance_scale", math.nan, "finite"),
        ("embedded_guidance_scale", math.inf, "finite"),
        ("embedded_guidance_scale", "6", "finite number"),
        ("flow_shift", 0.0, "(0, 100]"),
        ("flow_shift", 101.0, "(0, 100]"),
        ("true_cfg_scale", 0.5, "[1, 100]"),
        ("seed", -1, "[0, 9223372036854775807]"),
        ("seed", 2**63, "[0, 9223372036854775807]"),
        ("seed", "7", "an integer"),
        ("prompt", "", "non-empty"),
        ("prompt", "   ", "non-empty"),
        ("prompt", None, "a string"),
        ("prompt", "x" * 20001, "at most 20000 characters"),
        ("prompt", "a\x00b", "NUL"),
        ("negative_prompt", 3, "a string"),
        ("prompt_policy", "drop", "['truncate', 'error']"),
        ("output_format", "gif", "['frames', 'mp4']"),
    ],
)
def test_each_rule_names_parameter_value_and_accepted(field, value, needle):
    err = _err(**{field: value})
    msg = str(err)
    assert err.param == field
    assert msg.startswith(f"invalid {field}=")
    assert needle in msg, msg
    assert "\n" not in msg


def test_tiny_limits_are_its_own():
    assert "[16, 256]" in str(_err(TINY, height=512))
    assert "[1, 33]" in str(_err(TINY, num_frames=37))
    GenerationRequest(prompt="x", height=256, width=256, num_frames=33).validate(TINY)


def test_long_value_is_shortened_in_message():
    msg = str(_err(prompt="x" * 20001))
    assert len(msg) < 200


def test_negative_prompt_without_true_cfg_is_said_once(caplog):
    import logging

    from vidtrt.config.model_config import tiny_config

    config = tiny_config()
    with caplog.at_level(logging.WARNING, logger="vidtrt.config.request"):
        r = GenerationRequest("a cat", negative_prompt="blurry").validate(config)
        assert r.validate(config) is r  # validated once: the same request again is not re-checked
    assert caplog.text.count("negative_prompt is ignored: true_cfg_scale is 1") == 1
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vidtrt.config.request"):
        GenerationRequest("a cat", negative_prompt="blurry", true_cfg_scale=2.0).validate(config)
        GenerationRequest("a cat").validate(config)
    assert "ignored" not in caplog.text
