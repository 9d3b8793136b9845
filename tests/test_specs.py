"""Component specs: axis ranges per model, buckets, the dynamic tile spec, input checks, profiles (no export)."""

import json

import numpy as np
import pytest

from vidtrt.config.model_config import hunyuan_video_config, tiny_config
from vidtrt.config.request import GenerationRequest
from vidtrt.config.specs import (
    COMPONENTS,
    AxisRange,
    TextEncoderDims,
    component_specs,
    dit_spec,
    latent_buckets,
    supported_frame_counts,
    supported_resolutions,
    text_length_buckets,
    vae_decoder_spec,
)
from vidtrt.config.tiling import max_tile_latent_shape, plan_tiles
from vidtrt.errors import EngineError

TEXT = TextEncoderDims(llm_hidden=32, llm_vocab=1000, clip_hidden=16, clip_vocab=500, crop_start=5)


def test_full_model_tables():
    cfg = hunyuan_video_config()
    assert (720, 1280) in supported_resolutions(cfg) and (544, 960) in supported_resolutions(cfg)
    assert supported_frame_counts(cfg) == (1, 33, 65, 129)
    assert text_length_buckets(cfg) == (64, 128, 256)
    spec = dit_spec(cfg)
    assert len(spec.buckets) == 10 * 4
    assert {"latent_frames": 33, "latent_height": 90, "latent_width": 160} in spec.buckets
    ax = spec.axes
    assert (ax["latent_frames"].max, ax["latent_height"].max, ax["latent_width"].max) == (33, 160, 160)
    assert ax["latent_height"].multiple == 2 and ax["text_length"].max == 256
    assert [t.name for t in spec.inputs] == ["hidden_states", "timestep", "encoder_hidden_states",
                                             "encoder_attention_mask", "pooled_projections", "guidance"]
    assert spec.input("encoder_hidden_states").shape == ("batch", "text_length", 4096)


def test_tiny_model_axes_fit_its_config():
    cfg = tiny_config()
    spec = dit_spec(cfg)
    # tiny: max 256x256, 33 frames, 32 text tokens; the table is the toy one
    assert (spec.axes["latent_frames"].max, spec.axes["latent_height"].max) == (9, 32)
    assert spec.axes["text_length"].max == 32 and text_length_buckets(cfg) == (8, 16, 32)
    assert (64, 96) in supported_resolutions(cfg) and supported_frame_counts(cfg) == (1, 9, 33)
    assert all(h <= 256 and w <= 256 for h, w in supported_resolutions(cfg))
    for bucket in spec.buckets:
        assert all(spec.axes[k].accepts(v) for k, v in bucket.items())
    # the export example is batch 2 with sizes > 1 and inside the ranges
    assert spec.export_axes["batch"] == 2
    assert all(v > 1 and spec.axes[k].accepts(v) for k, v in spec.export_axes.items())


@pytest.mark.parametrize("make", [tiny_config, hunyuan_video_config])
def test_every_valid_request_size_is_accepted_by_the_dit_spec(make):
    cfg = make()
    spec = dit_spec(cfg)
    d = cfg.defaults
    for h in range(16, d.max_height + 1, 16 * 7):
        for f in (1, 5, d.max_num_frames):
            GenerationRequest(prompt="x", height=h, width=h if h <= d.max_width else 16, num_frames=f).validate(cfg)
            _, _, t, lh, lw = cfg.latent_shape(1, f, h, h if h <= d.max_width else 16)
            feeds = spec.example_inputs({"batch": 1, "latent_frames": t, "latent_height": lh, "latent_width": lw,
                                         "text_length": 4})
            spec.check_inputs(feeds)


@pytest.mark.parametrize("make", [tiny_config, hunyuan_video_config])
def test_vae_tile_spec_is_dynamic_up_to_the_largest_tile(make):
    cfg = make()
    spec = vae_decoder_spec(cfg, tile=True)
    c, t, h, w = max_tile_latent_shape(cfg.vae, cfg.tiling)
    assert spec.input("latents").shape == (1, c, "latent_frames", "latent_height", "latent_width")
    assert (spec.axes["latent_frames"].max, spec.axes["latent_height"].max, spec.axes["latent_width"].max) == (t, h, w)
    assert all(r.min == 1 for r in spec.axes.values())
    # every tile the tiler hands out for a bucket size is a bucket and passes the checks; edges are smaller
    shapes = set()
    for b in latent_buckets(cfg):
        plan = plan_tiles((1, c, b["latent_frames"], b["latent_height"], b["latent_width"]), cfg.vae, cfg.tiling)
        for tile in plan.tiles:
            shapes.add(tile.latent_shape)
    assert shapes == {(b["latent_frames"], b["latent_height"], b["latent_width"]) for b in spec.buckets}
    assert (t, h, w) in shapes and any(s != (t, h, w) for s in shapes)
    for tt, hh, ww in sorted(shapes)[:5]:
        spec.check_inputs({"latents": np.zeros((1, c, tt, hh, ww), np.float32)}, require_bucket=True)
    assert spec.output_shape("video", {"latent_frames": t, "latent_height": h, "latent_width": w}) == (
        1, 3, 4 * (t - 1) + 1, 8 * h, 8 * w)


def test_whole_latents_decoder_spec():
    cfg = tiny_config()
    spec = vae_decoder_spec(cfg, tile=False)
    assert spec.input("latents").shape[0] == "batch" and spec.axes["latent_frames"].max == 9
    assert spec.output_shape("video", {"batch": 2, "latent_frames": 3, "latent_height": 8, "latent_width": 12}) == (
        2, 3, 9, 64, 96)


def test_text_encoder_specs():
    cfg = tiny_config()
    specs = component_specs(cfg, TEXT)
    assert list(specs) == list(COMPONENTS)
    llm = specs["llm_text_encoder"]
    assert llm.axes["tokens"].max == 32 + 5
    assert [b["tokens"] for b in llm.buckets] == [5 + 8, 5 + 16, 5 + 32]
    assert llm.outputs[0].shape == ("batch", "tokens", 32)
    feeds = llm.example_inputs({"batch": 2, "tokens": 9}, seed=3)
    assert feeds["input_ids"].max() < 1000 and feeds["input_ids"].dtype == np.int64
    clip = specs["clip_text_encoder"]
    assert clip.input("input_ids").shape == ("batch", 77) and clip.outputs[0].shape == ("batch", 16)
    with pytest.raises(ValueError, match="text encoders"):
        component_specs(cfg, None, ["clip_text_encoder"])


def test_example_masks_are_right_padded():
    spec = dit_spec(tiny_config())
    feeds = spec.example_inputs({"batch": 2, "text_length": 10}, seed=1, lengths=[10, 3])
    mask = feeds["encoder_attention_mask"]
    assert mask.tolist() == [[1] * 10, [1] * 3 + [0] * 7] and mask.dtype == np.int64
    rnd = spec.example_inputs({"batch": 2, "text_length": 10}, seed=2)["encoder_attention_mask"]
    assert rnd[0].all() and rnd[1, 0] == 1 and (np.diff(rnd[1]) <= 0).all()


def test_input_check_errors_are_one_line_and_name_what_is_accepted():
    spec = dit_spec(tiny_config())
    good = spec.example_inputs({"batch": 1, "latent_frames": 1, "latent_height": 8, "latent_width": 8,
                                "text_length": 8})
    assert spec.check_inputs(good)["latent_height"] == 8

    def err(feeds, **kw):
        with pytest.raises(EngineError) as e:
            spec.check_inputs(feeds, **kw)
        msg = str(e.value)
        assert "\n" not in msg
        return msg

    bad = dict(good, hidden_states=good["hidden_states"].astype(np.float64))
    assert err(bad) == "dit: input 'hidden_states' has dtype float64, accepted float32"
    bad = dict(good, hidden_states=np.zeros((1, 16, 10, 8, 8), np.float32), velocity=None)
    bad.pop("velocity")
    assert "latent_frames=10, accepted 1..9" in err(bad)
    bad = dict(good, hidden_states=np.zeros((1, 16, 1, 7, 8), np.float32))
    assert "latent_height=7, accepted 2..32 in steps of 2" in err(bad)
    bad = dict(good, hidden_states=np.zeros((1, 15, 1, 8, 8), np.float32))
    assert "accepted [batch(1..2), 16, latent_frames(1..9)" in err(bad)
    bad = dict(good, timestep=np.zeros((2,), np.float32))
    assert "has batch=2 but input 'hidden_states' has batch=1" in err(bad)
    bad = {k: v for k, v in good.items() if k != "guidance"}
    assert "missing input 'guidance'" in err(bad)
    assert "unknown input 'extra'" in err(dict(good, extra=good["timestep"]))
    bad = dict(good, hidden_states=np.zeros((1, 16, 1, 8, 10), np.float32))
    spec.check_inputs(bad)  # in range, though not a bucket
    assert "is not a supported bucket; accepted (1, 8, 12)" in err(bad, require_bucket=True)


def test_profiles_and_triton_dims():
    spec = dit_spec(hunyuan_video_config())
    bucket = {"latent_frames": 33, "latent_height": 90, "latent_width": 160}
    prof = spec.profile(bucket)
    lo, opt, hi = prof["hidden_states"]
    assert lo[2:] == opt[2:] == hi[2:] == (33, 90, 160) and (lo[0], hi[0]) == (1, 2)
    assert prof["encoder_hidden_states"][0][1] == 1 and prof["encoder_hidden_states"][2][1] == 256
    assert len(spec.profiles()) == len(spec.buckets)
    assert spec.triton_dims(spec.input("hidden_states")) == [16, -1, -1, -1]
    assert spec.triton_dims(spec.input("hidden_states"), batch_axis=None) == [-1, 16, -1, -1, -1]


def test_specs_serialise_for_the_manifest():
    specs = component_specs(tiny_config(), TEXT)
    for spec in specs.values():
        data = json.loads(json.dumps(spec.to_dict()))
        assert data["name"] == spec.name and [i["name"] for i in data["inputs"]] == spec.input_names


def test_axis_range_validation():
    with pytest.raises(ValueError):
        AxisRange(0, 1, 2)
    with pytest.raises(ValueError):
        AxisRange(2, 3, 4, multiple=2)
    r = AxisRange(2, 4, 32, multiple=2)
    assert r.clamp(7) == 6 and r.clamp(100) == 32 and r.clamp(0) == 2 and r.describe() == "2..32 in steps of 2"
