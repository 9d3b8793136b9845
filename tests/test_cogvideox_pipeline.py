"""CogVideoX end to end in process, vs diffusers' CogVideoXPipeline (the oracle), on diffusers-layout folders
the tests write with ``save_pretrained`` (2B-like, 5B-like, 1.5-like): latents within 1e-4, frames within one
level, with CFG and a negative prompt; the embedded ``tiny-cogvideox``; the family's request rules; a missing
or mis-shaped key names the key and file; ``vidtrt run --model tiny-cogvideox``."""

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vidtrt.config.cogvideox_config import (
    CogVideoXSchedulerConfig,
    CogVideoXTransformerConfig,
    CogVideoXVAEConfig,
)
from vidtrt.config.request import GenerationRequest
from vidtrt.errors import CheckpointError, InvalidRequestError
from vidtrt.runtime.cogvideox_pipeline import CogVideoXPipeline
from vidtrt.runtime.cogvideox_sampler import denoise
from vidtrt.runtime.orchestrator import decode_latents
from vidtrt.source.model_source import ModelSource
from vidtrt.source.tiny_cogvideox import build_t5_tokenizer, build_tiny_t5

diffusers = pytest.importorskip("diffusers")

TEXT_LEN = 16
VARIANTS = {
    "2b": (dict(use_rotary_positional_embeddings=False), dict(solver="ddim", snr_shift_scale=3.0)),
    "5b": (dict(use_rotary_positional_embeddings=True), dict(solver="dpm", snr_shift_scale=1.0)),
    "1.5": (dict(use_rotary_positional_embeddings=True, patch_size_t=2, patch_bias=False, sample_height=10,
                 sample_width=10), dict(solver="dpm", snr_shift_scale=1.0)),
}


def write_diffusers_folder(folder: Path, variant: str, seed: int = 0) -> Path:
    """A random tiny diffusers CogVideoXPipeline of ``variant``, saved with save_pretrained."""
    dit_kw, sched_kw = VARIANTS[variant]
    torch.manual_seed(seed)
    dit_kw = {"sample_width": 12, "sample_height": 8, **dit_kw}
    dit_cfg = CogVideoXTransformerConfig(num_attention_heads=2, attention_head_dim=16, num_layers=2, text_embed_dim=32,
                                         time_embed_dim=24, sample_frames=9, max_text_seq_length=TEXT_LEN, **dit_kw)
    transformer = diffusers.CogVideoXTransformer3DModel(**dataclasses.asdict(dit_cfg))
    # 96 x 160-pixel VAE samples: diffusers' enable_tiling() tiles of 48 x 80 pixels (strides 40 x 64)
    vae_cfg = CogVideoXVAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                                 sample_height=96, sample_width=160, scaling_factor=0.7)
    vae = diffusers.AutoencoderKLCogVideoX(**dataclasses.asdict(vae_cfg))
    for p in vae.parameters():
        p.data.normal_(0, 0.15)
    sched = CogVideoXSchedulerConfig(**sched_kw)
    sched_cls = diffusers.CogVideoXDDIMScheduler if sched.solver == "ddim" else diffusers.CogVideoXDPMScheduler
    scheduler = sched_cls(**{k: v for k, v in dataclasses.asdict(sched).items() if k != "solver"})
    tokenizer = build_t5_tokenizer()
    text_encoder = build_tiny_t5(seed + 1, len(tokenizer))
    pipe = diffusers.CogVideoXPipeline(tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
                                       transformer=transformer, scheduler=scheduler)
    pipe.save_pretrained(folder)
    # request defaults and limits for toy sizes (the variant's own: 720x480 or 1360x768, 1.5: 16N + 1 >= 49 frames)
    (folder / "vidtrt.json").write_text(json.dumps({"defaults": {
        "height": 64, "width": 80, "num_frames": 9, "frame_step": 8, "min_num_frames": 1, "max_num_frames": 33}}))
    return folder


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("cogvideox")
    return {v: write_diffusers_folder(root / v, v, seed=i) for i, v in enumerate(VARIANTS)}


def reference(folder: Path, **kwargs):
    pipe = diffusers.CogVideoXPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.vae.enable_tiling()
    return pipe


# (height, width, frames): 9 frames (conv cache across frame batches), then an odd aspect ratio with the
# minimum frame count and dynamic CFG
CASES = {
    "2b": [(48, 64, 9), (32, 112, 1)],
    "5b": [(64, 96, 9), (112, 32, 1)],   # 64 x 96: 2 x 2 VAE tiles of 48 x 80 pixels
    "1.5": [(48, 64, 9), (32, 80, 1)],
}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_pipeline_matches_diffusers(folders, variant):
    folder = folders[variant]
    source = ModelSource.open(folder)
    assert source.family.name == "cogvideox" and source.layout == "diffusers"
    pipe = CogVideoXPipeline.from_model(source)
    ref = reference(folder)
    for k, (h, w, f) in enumerate(CASES[variant]):
        kwargs = dict(prompt="a cat walks on the grass", negative_prompt="blurry, low quality", height=h, width=w,
                      num_frames=f, num_inference_steps=3, guidance_scale=5.0, use_dynamic_cfg=k == 1)
        seed = 11 + k
        captured = {}

        def keep_latents(p, i, t, tensors, captured=captured):
            captured["latents"] = tensors["latents"]
            return {}

        want_frames = ref(**kwargs, generator=torch.Generator().manual_seed(seed), output_type="np",
                          max_sequence_length=TEXT_LEN, callback_on_step_end=keep_latents,
                          callback_on_step_end_tensor_inputs=["latents"]).frames[0]
        request = GenerationRequest(prompt=kwargs["prompt"], negative_prompt=kwargs["negative_prompt"], height=h,
                                    width=w, num_frames=f, num_inference_steps=3, true_cfg_scale=5.0, seed=seed,
                                    use_dynamic_cfg=k == 1).validate(source.config)
        with torch.inference_mode():
            got_latents = denoise(request, source.config, pipe.components)
            frames = decode_latents(got_latents, source.config, pipe.components)
        _, extra = source.config.latent_frames(f)
        want = captured["latents"][:, extra:].permute(0, 2, 1, 3, 4)
        assert got_latents.shape == want.shape
        err = float((got_latents - want).norm() / want.norm())
        assert err <= 1e-4, (variant, h, w, f, err)
        expected = np.round(want_frames * 255).astype(np.int16)
        assert frames.shape == (f, h, w, 3)
        assert np.abs(frames.astype(np.int16) - expected).max() <= 1, (variant, h, w, f)


def test_tiny_cogvideox_runs_and_is_seeded():
    pipe = CogVideoXPipeline.from_model("tiny-cogvideox")
    events = []
    a = pipe.generate("a red car at night", negative_prompt="blurry", seed=3, num_inference_steps=2,
                      progress=events.append)
    d = pipe.config.defaults
    assert a.shape == (d.num_frames, d.height, d.width, 3) and a.dtype == np.uint8
    one = dict(negative_prompt="blurry", num_inference_steps=2, num_frames=1, height=32, width=48)
    b = pipe.generate("a red car at night", seed=3, **one)
    c = pipe.generate("a red car at night", seed=3, **one)
    e = pipe.generate("a red car at night", seed=4, **one)
    assert np.array_equal(b, c) and not np.array_equal(b, e)
    assert [e.stage for e in events].count("denoise") == 2 and events[-1].stage == "decode"
    assert events[-1].total > 1  # the default size is decoded in several tiles


def test_tiny_cogvideox_transformer_loads_in_diffusers():
    """The embedded preset is a diffusers-layout CogVideoX checkpoint (its DiT loads in diffusers and agrees)."""
    source = ModelSource.open("tiny-cogvideox")
    ref = diffusers.CogVideoXTransformer3DModel.from_pretrained(source.folder / "transformer").eval()
    ours = source.load_transformer()
    x, text, t = torch.randn(1, 3, 16, 8, 12), torch.randn(1, 32, 32), torch.tensor([500])
    from diffusers.pipelines.cogvideo.pipeline_cogvideox import CogVideoXPipeline as Ref

    holder = type("P", (), {"transformer": ref, "vae_scale_factor_spatial": 8})()
    rope = Ref._prepare_rotary_positional_embeddings(holder, 64, 96, 3, "cpu")
    with torch.no_grad():
        want = ref(x, text, t, image_rotary_emb=rope, return_dict=False)[0]
        got = ours(x, text, t)
    assert float((want - got).norm() / want.norm()) <= 1e-5


def test_family_request_rules(folders):
    config = ModelSource.open("tiny-cogvideox").config

    def check(**kw):
        return GenerationRequest(prompt="a cat", **kw).validate(config)

    r = check()
    assert (r.true_cfg_scale, r.negative_prompt, r.num_frames) == (6.0, "", 9)  # CFG on by default, empty negative
    for bad, param, accepted in [
        (dict(num_frames=5), "num_frames", "8k + 1 frames in [1, 33]"),
        (dict(height=72), "height", "multiple of 16"),
        (dict(width=8), "width", "multiple of 16"),
        (dict(embedded_guidance_scale=3.0), "embedded_guidance_scale", "CogVideoX has no embedded guidance"),
        (dict(flow_shift=5.0), "flow_shift", "not flow matching"),
    ]:
        with pytest.raises(InvalidRequestError, match=re.escape(accepted)) as e:
            check(**bad)
        assert e.value.param == param
    one5 = ModelSource.open(folders["1.5"]).config  # RoPE grid of 10 x 10 latents: at most 80 pixels
    with pytest.raises(InvalidRequestError, match=re.escape("an integer in [16, 80]")):
        GenerationRequest(prompt="a cat", width=96).validate(one5)
    with pytest.raises(InvalidRequestError, match="use_dynamic_cfg"):
        GenerationRequest(prompt="a cat", use_dynamic_cfg=True).validate(ModelSource.open("tiny").config)


def test_prompt_token_limit():
    pipe = CogVideoXPipeline.from_model("tiny-cogvideox")
    long = " ".join(["cat"] * 40)  # 40 tokens + end token > 32
    with pytest.raises(InvalidRequestError, match="at most 31 T5 tokens") as e:
        pipe.generate(long, prompt_policy="error", num_inference_steps=1)
    assert e.value.param == "prompt"
    with pytest.raises(InvalidRequestError) as e:
        pipe.generate("a cat", negative_prompt=long, prompt_policy="error", num_inference_steps=1)
    assert e.value.param == "negative_prompt"


def _copy_folder(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_bad_checkpoint_names_key_and_file(folders, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = _copy_folder(folders["5b"], tmp_path / "broken")
    weights = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    state = load_file(weights)
    key = "transformer_blocks.1.attn1.norm_q.weight"
    save_file({k: v for k, v in state.items() if k != key}, weights)
    source = ModelSource.open(folder)
    with pytest.raises(CheckpointError, match=f"missing key '{key}' in {weights}"):
        source.load_transformer()
    state[key] = torch.zeros(3)
    save_file(state, weights)
    with pytest.raises(CheckpointError, match=rf"key '{key}' in {weights} has shape \[3\]"):
        source.load_transformer()
    vae = folder / "vae" / "diffusion_pytorch_model.safetensors"
    vstate = load_file(vae)
    vkey = "decoder.conv_out.conv.weight"
    save_file({k: v for k, v in vstate.items() if k != vkey}, vae)
    with pytest.raises(CheckpointError, match=f"missing key '{vkey}' in {vae}"):
        source.load_vae_decoder()


def test_model_index_names_the_family(tmp_path, folders):
    folder = _copy_folder(folders["2b"], tmp_path / "other")
    index = json.loads((folder / "model_index.json").read_text())
    index["_class_name"] = "CogVideoXImageToVideoPipeline"
    (folder / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="CogVideoXPipeline"):
        ModelSource.open(folder)


def test_record_round_trip():
    source = ModelSource.open("tiny-cogvideox")
    again = ModelSource.from_record(json.loads(json.dumps(source.to_record())))
    assert again.config == source.config and again.family is source.family


def test_cli_run_tiny_cogvideox(tmp_path, capsys):
    from vidtrt.cli import main

    out = tmp_path / "cat.npy"
    code = main(["run", "a cat walks on the grass", "--model", "tiny-cogvideox", "-o", str(out), "--steps", "2",
                 "--frames", "1", "--seed", "5", "--negative-prompt", "blurry", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    frames = np.load(out)
    assert frames.shape == (1, 64, 96, 3)
    expected = CogVideoXPipeline.from_model("tiny-cogvideox").generate(
        "a cat walks on the grass", negative_prompt="blurry", num_frames=1, num_inference_steps=2, seed=5)
    assert np.array_equal(frames, expected)
    capsys.readouterr()
    for args, needle in [
        (["--frames", "5"], "invalid --frames 5 (num_frames): accepted 8k + 1 frames in [1, 33]"),
        (["--height", "72"], "invalid --height 72"),
        (["--guidance", "3"], "invalid --guidance 3"),
        (["--prompt-policy", "error", "--negative-prompt", " ".join(["cat"] * 40)], "--negative-prompt"),
    ]:
        code = main(["run", "a cat", "--model", "tiny-cogvideox", "-o", str(out), "--steps", "1", *args])
        err = capsys.readouterr().err
        assert code == 2, (args, err)
        lines = err.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], (args, err)


def test_cli_run_diffusers_folder(folders, tmp_path, capsys):
    from vidtrt.cli import main

    out = tmp_path / "v.npy"
    code = main(["run", "a cat", "--model", str(folders["1.5"]), "-o", str(out), "--steps", "1", "--frames", "1",
                 "--height", "32", "--width", "48", "--no-progress"])
    assert code == 0, capsys.readouterr().err
    assert np.load(out).shape == (1, 32, 48, 3)
