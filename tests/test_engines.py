"""Engines and engine-built components: the whole pipeline on onnxruntime vs the torch engine, the text
encoder split (tokenizers in Python), DiT text-bucket trimming, session options, manifest checks, CLI.

Uses the session's tiny ONNX artifacts (``onnx_artifacts.tiny_artifacts``, shared with test_export.py).
"""

import json
import shutil

import numpy as np
import pytest
import torch
from onnx_artifacts import tiny_artifacts

from vidtrt.cli import main as cli_main
from vidtrt.config.components import TextEmbeddings
from vidtrt.config.specs import dit_spec
from vidtrt.errors import EngineError
from vidtrt.runtime.engine_components import (
    MANIFEST_NAME,
    EngineDenoiser,
    engine_dit,
    engine_text_encoder,
    engine_vae_decoder,
    load_component,
    load_engine_components,
    load_pipeline_with_engine,
)
from vidtrt.runtime.engines import OnnxRuntimeEngine, TorchEngine, onnxruntime_providers
from vidtrt.source.model_source import ModelSource, load_model_config

PROMPT = "a cat walks on the grass, realistic style"


@pytest.fixture(scope="module")
def artifacts():
    return tiny_artifacts()


@pytest.fixture(scope="module")
def config():
    return load_model_config("tiny")


def frame_stats(a: np.ndarray, b: np.ndarray) -> dict:
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max": int(d.max()), "within_1": float((d <= 1).mean()), "equal": float((d == 0).mean()),
            "mean": float(d.mean())}


def test_pipeline_on_onnxruntime_matches_torch_engine(artifacts):
    ort_pipe = load_pipeline_with_engine("tiny", "onnxruntime", artifacts, threads=2)
    torch_pipe = load_pipeline_with_engine("tiny", "torch")
    kw = dict(seed=7, num_inference_steps=3)
    a = ort_pipe.generate(PROMPT, **kw)
    b = torch_pipe.generate(PROMPT, **kw)
    assert a.shape == b.shape == (9, 64, 96, 3) and a.dtype == np.uint8
    stats = frame_stats(a, b)
    print(f"onnxruntime vs torch engine, uint8 frames: {stats}")
    # Same seed: fp32 differences ~1e-6 only flip a rounding here and there.
    assert stats["within_1"] >= 0.999 and stats["max"] <= 2 and stats["mean"] < 0.01
    # true CFG (two DiT passes per step, negative prompt) on a size with several decoder tiles
    kw = dict(seed=3, num_inference_steps=2, height=96, width=128, num_frames=5, true_cfg_scale=3.0,
              negative_prompt="blurry")
    stats = frame_stats(ort_pipe.generate(PROMPT, **kw), torch_pipe.generate(PROMPT, **kw))
    print(f"true CFG, 96x128x5: {stats}")
    assert stats["within_1"] >= 0.999 and stats["max"] <= 2


def test_torch_engine_components_equal_the_torch_pipeline():
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    kw = dict(seed=2, num_inference_steps=2)
    a = load_pipeline_with_engine("tiny", "torch").generate(PROMPT, **kw)
    b = HunyuanVideoPipeline.from_model("tiny").generate(PROMPT, **kw)
    assert np.array_equal(a, b)


def test_text_encoder_split_keeps_the_torch_encoding(artifacts, config):
    prompts = [PROMPT, "a dog", ""]
    ref = ModelSource.open("tiny").load_text_encoder()(prompts)
    on_torch = engine_text_encoder("tiny", "torch")(prompts)
    for name in ("prompt_embeds", "attention_mask", "pooled"):
        assert torch.equal(getattr(on_torch, name), getattr(ref, name)), name
    on_ort = engine_text_encoder("tiny", "onnxruntime", artifacts)(prompts)
    assert torch.equal(on_ort.attention_mask, ref.attention_mask)
    valid = ref.attention_mask.bool()
    emb_err = (on_ort.prompt_embeds - ref.prompt_embeds)[valid].abs().max() / ref.prompt_embeds.abs().max()
    pooled_err = (on_ort.pooled - ref.pooled).abs().max() / ref.pooled.abs().max()
    assert emb_err < 1e-5 and pooled_err < 1e-5
    # prompt checks are the torch encoder's
    with pytest.raises(Exception, match="prompt"):
        engine_text_encoder("tiny", "onnxruntime", artifacts)(["word " * 200], prompt_policy="error")


class Recorder:
    """An engine that records the feeds it gets and answers zeros."""

    def __init__(self, spec):
        self.spec, self.feeds = spec, []

    def run(self, feeds):
        self.spec.check_inputs(feeds)
        self.feeds.append(feeds)
        return {"velocity": np.zeros_like(feeds["hidden_states"])}


def test_dit_trims_text_padding_to_a_bucket_exactly(artifacts, config):
    spec = dit_spec(config)
    rec = EngineDenoiser(Recorder(spec), (8, 16, 32))
    f = spec.example_inputs({"batch": 1, "latent_frames": 1, "latent_height": 8, "latent_width": 8,
                             "text_length": 32}, lengths=[11])
    rec.run(f)
    assert rec.engine.feeds[-1]["encoder_attention_mask"].shape == (1, 16)
    f2 = spec.example_inputs({"batch": 2, "text_length": 32}, lengths=[3, 5])
    rec.run(f2)
    assert rec.engine.feeds[-1]["encoder_hidden_states"].shape[1] == 8
    not_right_padded = dict(f2, encoder_attention_mask=f2["encoder_attention_mask"][:, ::-1].copy())
    rec.run(not_right_padded)
    assert rec.engine.feeds[-1]["encoder_attention_mask"].shape[1] == 32
    # trimming is exact on the real engine
    dit = engine_dit("tiny", "onnxruntime", artifacts)
    trimmed = dit.run(f)["velocity"]
    full = dit.engine.run(f)["velocity"]
    assert np.abs(trimmed - full).max() <= 1e-5 * np.abs(full).max()
    # and the Denoiser call gives what the torch DiT gives
    text = TextEmbeddings(torch.from_numpy(f["encoder_hidden_states"]), torch.from_numpy(f["encoder_attention_mask"]),
                          torch.from_numpy(f["pooled_projections"]))
    args = (torch.from_numpy(f["hidden_states"]), torch.from_numpy(f["timestep"]), text,
            torch.from_numpy(f["guidance"]))
    want = engine_dit("tiny", "torch")(*args)
    got = dit(*args)
    assert (got - want).abs().max() <= 1e-4 * want.abs().max()


def test_onnxruntime_session_options_and_providers(artifacts, config):
    assert onnxruntime_providers()[-1] == "CPUExecutionProvider"
    with pytest.raises(EngineError, match="execution provider 'NoSuchExecutionProvider' is not available; "
                                          "accepted: \\["):
        onnxruntime_providers(["NoSuchExecutionProvider"])
    spec = dit_spec(config)
    eng = OnnxRuntimeEngine(artifacts / "dit.onnx", spec, threads=1, inter_threads=1,
                            providers=["CPUExecutionProvider"], graph_optimization="basic",
                            session_options={"enable_mem_pattern": False})
    opts = eng.session.get_session_options()
    assert opts.intra_op_num_threads == 1 and not opts.enable_mem_pattern
    assert eng.session.get_providers() == ["CPUExecutionProvider"]
    with pytest.raises(EngineError, match="SessionOptions has no attribute 'bogus'"):
        OnnxRuntimeEngine(artifacts / "dit.onnx", spec, session_options={"bogus": 1})


def test_engine_input_errors_name_input_and_accepted_values(artifacts, config):
    tile = engine_vae_decoder("tiny", "onnxruntime", artifacts)
    with pytest.raises(EngineError) as e:
        tile(torch.zeros(1, 16, 6, 8, 8))
    assert str(e.value) == "vae_decoder_tile: input 'latents' has latent_frames=6, accepted 1..5"
    with pytest.raises(EngineError) as e:
        tile.run({"latents": np.zeros((1, 16, 2, 4, 4), np.float64)})
    assert str(e.value) == "vae_decoder_tile: input 'latents' has dtype float64, accepted float32"
    with pytest.raises(EngineError) as e:
        tile(torch.zeros(2, 16, 2, 4, 4))
    assert "has shape [2, 16, 2, 4, 4], accepted [1, 16, latent_frames(1..5)" in str(e.value)
    # torch and onnxruntime engines check the same way and agree
    spec = tile.spec
    feeds = spec.example_inputs({"latent_frames": 2, "latent_height": 4, "latent_width": 6})
    torch_tile = engine_vae_decoder("tiny", "torch")
    assert isinstance(torch_tile.engine, TorchEngine)
    a, b = tile.run(feeds)["video"], torch_tile.run(feeds)["video"]
    assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max()
    with pytest.raises(EngineError, match="latent_width=9, accepted 1..8"):
        torch_tile.run(spec.example_inputs({"latent_frames": 2, "latent_height": 4, "latent_width": 9}))


def test_artifact_folder_errors(artifacts, tmp_path):
    def err(*args, **kw):
        with pytest.raises(EngineError) as e:
            load_engine_components(*args, **kw)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert "needs --artifacts DIR" in err("tiny", "onnxruntime", None)
    assert "does not exist" in err("tiny", "onnxruntime", tmp_path / "none")
    assert f"{tmp_path / MANIFEST_NAME} is missing" in err("tiny", "onnxruntime", tmp_path)
    assert "TensorRT is not installed" in err("tiny", "tensorrt", artifacts)
    assert "unknown engine 'jax'" in err("tiny", "jax", artifacts)

    copy = tmp_path / "copy"
    shutil.copytree(artifacts, copy, ignore=shutil.ignore_patterns("*.lock"))
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    (copy / MANIFEST_NAME).write_text("{not json")
    assert "is not valid JSON" in err("tiny", "onnxruntime", copy)
    bad = dict(manifest, model=dict(manifest["model"], name="other", config_sha256="0" * 64))
    (copy / MANIFEST_NAME).write_text(json.dumps(bad))
    assert "exported from model 'other' (config 000000000000), not from this model 'tiny'" in err(
        "tiny", "onnxruntime", copy)
    fewer = dict(manifest, components={k: v for k, v in manifest["components"].items() if k != "dit"})
    (copy / MANIFEST_NAME).write_text(json.dumps(fewer))
    assert "has no component 'dit'" in err("tiny", "onnxruntime", copy)
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    (copy / "dit.onnx").unlink()
    assert f"ONNX file not found: {copy / 'dit.onnx'}" in err("tiny", "onnxruntime", copy)
    (copy / "dit.onnx").write_bytes(b"not an onnx file")
    assert f"{copy / 'dit.onnx'}" in err("tiny", "onnxruntime", copy)


def test_load_component_hook_for_triton_models(artifacts):
    dit = load_component("dit", "tiny", engine="onnxruntime", artifacts=artifacts)
    assert isinstance(dit, EngineDenoiser) and isinstance(dit.engine, OnnxRuntimeEngine)
    assert dit.engine.session.get_providers() == ["CPUExecutionProvider"]
    text = load_component("text_encoder", "tiny", engine="onnxruntime", artifacts=artifacts)(["a cat"])
    assert text.prompt_embeds.shape == (1, 32, 32) and text.pooled.shape == (1, 16)
    vae = load_component("vae_decoder", "tiny", engine="onnxruntime", artifacts=artifacts)
    assert vae(torch.zeros(1, 16, 2, 4, 4)).shape == (1, 3, 5, 32, 32)
    with pytest.raises(EngineError, match="unknown component 'unet'"):
        load_component("unet", "tiny", engine="onnxruntime", artifacts=artifacts)


def test_cli_run_on_onnxruntime(artifacts, tmp_path, capsys):
    out = tmp_path / "v.npy"
    rc = cli_main(["run", "a red car", "--engine", "onnxruntime", "--artifacts", str(artifacts), "--steps", "2",
                   "--output", str(out), "--no-progress"])
    assert rc == 0, capsys.readouterr().err
    assert np.load(out).shape == (9, 64, 96, 3)
    assert cli_main(["run", "a red car", "--engine", "onnxruntime", "--output", str(tmp_path / "x.npy"),
                     "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (
        "vidtrt: error: --engine onnxruntime needs --artifacts DIR (the output folder of `vidtrt export`)")
