"""The whole in-process pipeline against diffusers' HunyuanVideoPipeline on the tiny checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from vidtrt.config.components import Components
from vidtrt.config.request import GenerationRequest
from vidtrt.runtime.orchestrator import ProgressEvent, denoise
from vidtrt.runtime.pipeline import HunyuanVideoPipeline
from vidtrt.source.model_source import load_model_config
from vidtrt.video_io import decode_mp4, write_video


@pytest.fixture(scope="module")
def pipe() -> HunyuanVideoPipeline:
    return HunyuanVideoPipeline.from_model("tiny")


@pytest.fixture(scope="module")
def reference(pipe):
    """diffusers' pipeline on the same folder: its own loaders for everything it can load as is."""
    from diffusers import AutoencoderKLHunyuanVideo, FlowMatchEulerDiscreteScheduler, HunyuanVideoTransformer3DModel
    from diffusers import HunyuanVideoPipeline as Ref
    from safetensors.torch import load_file

    from vidtrt.source.model_source import ModelSource

    folder = ModelSource.open("tiny").folder
    transformer = HunyuanVideoTransformer3DModel.from_pretrained(folder / "transformer")
    vae_cfg = json.loads((folder / "vae" / "config.json").read_text())
    vae = AutoencoderKLHunyuanVideo.from_config(vae_cfg)
    # The tiny checkpoint ships the decoder only; the encoder is never used by text-to-video.
    missing, unexpected = vae.load_state_dict(load_file(folder / "vae" / "diffusion_pytorch_model.safetensors"),
                                              strict=False)
    assert not unexpected and all(k.startswith(("encoder.", "quant_conv.")) for k in missing)
    t = pipe.config.tiling
    vae.enable_tiling(tile_sample_min_height=t.tile_sample_min_height, tile_sample_min_width=t.tile_sample_min_width,
                      tile_sample_min_num_frames=t.tile_sample_min_num_frames,
                      tile_sample_stride_height=t.tile_sample_stride_height,
                      tile_sample_stride_width=t.tile_sample_stride_width,
                      tile_sample_stride_num_frames=t.tile_sample_stride_num_frames)
    ref = Ref.from_pretrained(folder, transformer=transformer, vae=vae,
                              scheduler=FlowMatchEulerDiscreteScheduler(shift=pipe.config.defaults.flow_shift),
                              local_files_only=True)
    ref.set_progress_bar_config(disable=True)
    return ref


def _ref_kwargs(pipe, r: GenerationRequest) -> dict:
    text = pipe.config.text
    kw = dict(prompt=r.prompt, height=r.height, width=r.width, num_frames=r.num_frames,
              num_inference_steps=r.num_inference_steps, guidance_scale=r.embedded_guidance_scale,
              generator=torch.Generator("cpu").manual_seed(r.seed),
              prompt_template={"template": text.prompt_template, "crop_start": pipe.components.encode_text.crop_start},
              max_sequence_length=text.max_sequence_length)
    if r.do_true_cfg:
        kw.update(negative_prompt=r.negative_prompt, true_cfg_scale=r.true_cfg_scale)
    return kw


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.mark.parametrize(
    "request_kw",
    [
        dict(prompt="a cat walks on the grass", seed=1, height=64, width=96, num_frames=9, num_inference_steps=3),
        dict(prompt="waves at sunset", seed=7, height=48, width=80, num_frames=1, num_inference_steps=2),
        dict(prompt="a red car drives through a rainy city at night, neon lights reflecting on the street",
             seed=12345, height=80, width=48, num_frames=5, num_inference_steps=2, flow_shift=3.0,
             embedded_guidance_scale=4.5),
        dict(prompt="a dog", seed=3, height=32, width=64, num_frames=5, num_inference_steps=2, true_cfg_scale=3.0),
    ],
    ids=["default-ish", "one-latent-frame", "portrait-long-prompt", "true-cfg"],
)
def test_latents_equal_diffusers(pipe, reference, request_kw):
    r = GenerationRequest(**request_kw).validate(pipe.config)
    if r.flow_shift != reference.scheduler.config.shift:
        reference.scheduler = reference.scheduler.__class__(shift=r.flow_shift)
    ours = denoise(r, pipe.config, pipe.components)
    ref = reference(**_ref_kwargs(pipe, r), output_type="latent").frames
    assert ours.shape == ref.shape
    err = _rel(ours, ref.float())
    assert err <= 1e-4, err


def test_frames_equal_diffusers_tiled_decode(pipe, reference):
    r = GenerationRequest(prompt="a cat walks on the grass", seed=2, height=64, width=96, num_frames=9,
                          num_inference_steps=2).validate(pipe.config)
    assert pipe.config.tiling.tile_sample_min_width < r.width  # the decode really is tiled
    ours = pipe.run(r)
    ref = reference(**_ref_kwargs(pipe, r), output_type="np").frames[0]
    ref_u8 = (ref * 255).round().astype(np.uint8)
    assert ours.shape == ref_u8.shape == (9, 64, 96, 3)
    diff = np.abs(ours.astype(int) - ref_u8.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99, (diff.max(), (diff == 0).mean())


def test_seed_reproduces_and_differs(pipe):
    a = pipe.generate("a cat", seed=5, num_inference_steps=2)
    b = pipe.generate("a cat", seed=5, num_inference_steps=2)
    c = pipe.generate("a cat", seed=6, num_inference_steps=2)
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_diffusers_guidance_name_is_accepted(pipe):
    from vidtrt.errors import InvalidRequestError

    kw = dict(seed=5, num_inference_steps=2)
    a = pipe.generate("a cat", embedded_guidance_scale=3.0, **kw)
    assert np.array_equal(pipe.generate("a cat", guidance_scale=3.0, **kw), a)
    assert not np.array_equal(pipe.generate("a cat", **kw), a)  # the default (6.0) differs
    with pytest.raises(InvalidRequestError, match="give one of them"):
        pipe.generate("a cat", embedded_guidance_scale=3.0, guidance_scale=4.0, **kw)


def test_progress_once_per_step_and_mp4(pipe, tmp_path):
    events: list[ProgressEvent] = []
    frames = pipe.generate("a cat", seed=1, num_inference_steps=3, progress=events.append)
    steps = [e for e in events if e.stage == "denoise"]
    assert [(e.step, e.total) for e in steps] == [(1, 3), (2, 3), (3, 3)]
    assert all(b.elapsed_s >= a.elapsed_s for a, b in zip(events, events[1:], strict=False))
    # then one event per VAE tile of the tiled decode (the tiny default: 4 tiles)
    assert events[: len(steps)] == steps and [(e.stage, e.step, e.total) for e in events[len(steps):]] == [
        ("decode", k, 4) for k in (1, 2, 3, 4)]
    path = write_video(tmp_path / "cat.mp4", frames)
    back = decode_mp4(path)
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 12  # lossy H.264 of noise-like content


def test_cancel_stops_within_one_step(pipe):
    from vidtrt.errors import CancelledError

    calls = []
    counting = Components(pipe.components.encode_text,
                          lambda *a: calls.append(1) or pipe.components.dit(*a), pipe.components.decode_tile)
    events: list[ProgressEvent] = []
    with pytest.raises(CancelledError, match="before step 3 of 5"):
        HunyuanVideoPipeline(pipe.config, counting).generate(
            "a cat", num_inference_steps=5, progress=events.append, should_cancel=lambda: len(events) >= 2)
    assert len(calls) == 2


def test_config_of_tiny_folder():
    config = load_model_config("tiny")
    assert config.name == "tiny" and config.transformer.num_attention_heads == 2
    assert config.defaults.max_num_frames == 33


def test_small_preset_is_cpu_sized_and_embedded():
    from vidtrt.config.model_config import EMBEDDED_PRESETS, preset
    from vidtrt.models.transformer import HunyuanVideoTransformer3D
    from vidtrt.source.checkpoints import build_on_meta

    assert EMBEDDED_PRESETS == ("tiny", "small", "tiny-cogvideox")
    small = preset("small")
    dit = build_on_meta(lambda: HunyuanVideoTransformer3D(small.transformer))
    params = sum(p.numel() for p in dit.parameters())
    assert 30e6 < params < 60e6, params
    assert small.text == preset("tiny").text and small.vae == preset("tiny").vae


def test_bf16_denoiser_keeps_the_timestep_exact(pipe):
    """bf16 weights must not round 1000 * sigma (997.09 and 994.08 would both become 996)."""
    from vidtrt.runtime.pipeline import TorchDenoiser

    seen = []

    class Spy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, dtype=torch.bfloat16))

        def forward(self, hidden_states, timestep, *rest):
            seen.append(timestep)
            return hidden_states

    text = pipe.components.encode_text(["a cat"])
    TorchDenoiser(Spy())(torch.zeros(1, 16, 1, 2, 2), torch.tensor([997.0912]), text, torch.tensor([6000.0]))
    assert seen[0].dtype == torch.float32 and seen[0].item() == torch.tensor(997.0912).item()


def test_embedded_cache_key_follows_the_weight_code(tmp_path, monkeypatch):
    """Editing the code that generates the embedded weights gives a new cache folder."""
    import sys

    from vidtrt.source import embedded

    mod = tmp_path / "vidtrt_fake_weights.py"
    mod.write_text("SCALE = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("vidtrt_fake_weights", None)
    monkeypatch.setattr(embedded, "WEIGHT_CODE_MODULES", (*embedded.WEIGHT_CODE_MODULES, "vidtrt_fake_weights"))
    key = lambda: embedded._fingerprint(embedded.preset("tiny"))  # noqa: E731
    before = (embedded.weight_code_digest(), key())
    assert before == (embedded.weight_code_digest(), key())  # stable
    mod.write_text("SCALE = 2\n")
    assert embedded.weight_code_digest() != before[0] and key() != before[1]
    with pytest.raises(ValueError, match="module 'vidtrt_no_such_module' not found"):
        embedded.weight_code_digest(("vidtrt_no_such_module",))


def test_overlong_negative_prompt_is_named(pipe):
    from vidtrt.errors import InvalidRequestError

    r = GenerationRequest("a cat", negative_prompt="word " * 200, true_cfg_scale=2.0, prompt_policy="error",
                          num_inference_steps=1)  # fmt: skip
    with pytest.raises(InvalidRequestError, match=r"^invalid negative_prompt='word word .*: accepted at most") as e:
        pipe.run(r)
    assert e.value.param == "negative_prompt"


def test_default_negative_prompt_fits_whatever_the_policy(pipe, caplog):
    """The model's default negative prompt is longer than tiny's limit; it is the model's text, so
    prompt_policy 'error' (about the caller's text) does not reject it: it is truncated, and said."""
    import logging

    config = pipe.config
    assert len(config.defaults.negative_prompt.split()) > config.text.max_sequence_length // 2
    r = GenerationRequest("a cat", true_cfg_scale=2.0, prompt_policy="error", num_inference_steps=1,
                          num_frames=1, height=32, width=32)
    with caplog.at_level(logging.WARNING, logger="vidtrt.models.text_encoders"):
        frames = pipe.run(r)
    assert frames.shape == (1, 32, 32, 3)
    assert "prompt 'Aerial view, aerial view" in caplog.text


def test_kernel_choice_is_per_engine_and_thread(pipe):
    """Two torch engines in one process keep their own attention backend / norm+RoPE, also while
    running at the same time in two threads; the process-wide defaults are left alone."""
    import threading

    from vidtrt.errors import ConfigError
    from vidtrt.models import attention as attn_api
    from vidtrt.models import rope as rope_api
    from vidtrt.runtime.pipeline import KernelChoice, TorchDenoiser, select_kernels

    attn_api.register_backend("sdpa-copy", attn_api._BACKENDS["sdpa"])
    both_inside = threading.Barrier(2, timeout=30)
    seen: dict[str, tuple] = {}

    def fused(*args):  # stands in for the Triton kernel (CPU here)
        return rope_api.qk_norm_rope_torch(*args)

    class Spy(torch.nn.Module):
        def __init__(self, name):
            super().__init__()
            self.name, self.w = name, torch.nn.Parameter(torch.zeros(1))

        def forward(self, hidden_states, *rest):
            both_inside.wait()  # both engines are inside their step now
            seen[self.name] = (attn_api.get_backend(), rope_api.get_qk_norm_rope_impl())
            both_inside.wait()
            return hidden_states

    text = pipe.components.encode_text(["a cat"])
    a = TorchDenoiser(Spy("a"), kernels=KernelChoice("sdpa-copy"))
    b = TorchDenoiser(Spy("b"), kernels=KernelChoice("sdpa"))
    call = lambda d: d(torch.zeros(1, 16, 1, 2, 2), torch.tensor([997.0]), text, torch.tensor([6000.0]))  # noqa: E731
    rope_api.set_qk_norm_rope_impl(fused)  # a process-wide default: engine b's choice (None) must win over it
    try:
        threads = [threading.Thread(target=call, args=(d,)) for d in (a, b)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        rope_api.set_qk_norm_rope_impl(None)
    assert seen == {"a": ("sdpa-copy", None), "b": ("sdpa", None)}
    assert attn_api.get_backend() == "sdpa" and rope_api.get_qk_norm_rope_impl() is None
    assert select_kernels("cpu") == KernelChoice("sdpa", False)
    assert select_kernels("cpu", "triton") == KernelChoice("triton", False)
    assert select_kernels("cuda") == KernelChoice("triton", True)  # checked without a GPU: triton imports
    with pytest.raises(ConfigError, match="unknown attention backend 'flash'; accepted: .*sdpa"):
        select_kernels("cpu", "flash")
    # the real engine of the tiny pipeline carries its own choice
    assert pipe.components.dit.kernels == KernelChoice("sdpa", False)


def test_tiny_writer_is_deterministic_and_leaves_the_rng(tmp_path):
    from safetensors.torch import load_file

    from vidtrt.source.embedded import write_tiny_checkpoint
    from vidtrt.source.model_source import ModelSource

    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    write_tiny_checkpoint(tmp_path / "t")
    assert torch.equal(state, torch.random.get_rng_state())
    ours = load_file(tmp_path / "t" / "transformer" / "diffusion_pytorch_model.safetensors")
    cached = load_file(ModelSource.open("tiny").folder / "transformer" / "diffusion_pytorch_model.safetensors")
    assert ours.keys() == cached.keys() and all(torch.equal(ours[k], cached[k]) for k in ours)


@pytest.mark.parametrize("where", ["dit", "decode_tile"])
def test_non_finite_output_fails_the_generation_instead_of_a_black_video(pipe, where):
    """NaN/inf from the DiT (at the step it appears) or from the VAE decoder is a NonFiniteError naming the
    component and the likely cause, never uint8 frames; the next generation is unaffected."""
    import dataclasses

    from vidtrt.config.request import GenerationRequest
    from vidtrt.errors import NonFiniteError
    from vidtrt.runtime.orchestrator import run_generation

    calls = []

    def poisoned(*args):
        out = getattr(pipe.components, where)(*args)
        calls.append(1)
        return out * float("inf") if len(calls) == 2 else out  # the second call overflows (decode: 2+ tiles)

    comps = dataclasses.replace(pipe.components, **{where: poisoned})
    request = GenerationRequest("a cat", seed=1, num_inference_steps=3, height=64, width=96, num_frames=5)
    with pytest.raises(NonFiniteError) as e:
        run_generation(request, pipe.config, comps)
    msg = str(e.value)
    assert "\n" not in msg and "fp16 overflow" in msg
    assert ("NaN/inf at denoising step 2 of 3" in msg) if where == "dit" else ("VAE decoder" in msg), msg
    if where == "dit":
        assert len(calls) == 2  # stopped at the step that overflowed: no third DiT call, no decode
    assert pipe.run(request).std() > 1


def test_from_model_checks_device_and_attention_before_weights(monkeypatch):
    """The Python API fails like the CLI: one line naming the choice, before any weight is read."""
    from vidtrt import counters
    from vidtrt.errors import ConfigError

    if torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    counters.COUNTS.clear()
    for kwargs, words in ((dict(device="cuda"), "no CUDA"), (dict(attention="flash-magic"), "flash-magic")):
        with pytest.raises(ConfigError, match=words) as e:
            HunyuanVideoPipeline.from_model("tiny", **kwargs)
        assert "\n" not in str(e.value)
    assert counters.COUNTS["dit_read"] == 0
