"""The CogVideoX VAE tile decoder exported as one frame batch (conv caches in and out) runs in real onnxruntime
and, looped over diffusers' frame batches by the engine, equals our torch decoder (itself equal to diffusers:
tests/test_cogvideox_models.py). The whole tiny-cogvideox pipeline on onnxruntime gives the torch frames.

2B, 5B and 1.5 share the decoder network (their VAE configs differ in ``scaling_factor`` and
``invert_scale_latents``, applied before the decoder), so the embedded preset's decoder stands for all three
(one export per session, shared with the pipeline and server tests: ~25 s on 2 idle cores, minutes on
loaded ones). The cache layout is checked against the modules for the released shape too.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidtrt.config.cogvideox_config import CogVideoXVAEConfig
from vidtrt.config.cogvideox_specs import (
    conv_cache_layout,
    frame_batches,
    vae_decoder_batch_spec,
    vae_decoder_tile_spec,
)
from vidtrt.models.cogvideox_vae import CogVideoXVAEDecoder, CogVideoXVAEFrameBatch
from vidtrt.source.model_source import ModelSource

pytest.importorskip("onnxruntime")
TOL = 1e-5


def rel(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got.astype(np.float64) - want).max() / np.abs(want).max())


def test_frame_batches_are_diffusers():
    assert frame_batches(1) == [(0, 1)]
    assert frame_batches(3) == [(0, 3)]
    assert frame_batches(5) == [(0, 3), (3, 5)]
    assert frame_batches(9) == [(0, 3), (3, 5), (5, 7), (7, 9)]
    assert frame_batches(4) == [(0, 2), (2, 4)]
    with pytest.raises(ValueError):
        frame_batches(0)


@pytest.mark.parametrize("vae, count", [(CogVideoXVAEConfig(), 38),
                                        (ModelSource.open("tiny-cogvideox").config.vae, 22)])
def test_conv_cache_layout_is_the_modules(vae, count):
    with torch.device("meta"):
        decoder = CogVideoXVAEDecoder(vae)
    convs = decoder.decoder.cached_convs()
    layout = conv_cache_layout(vae)
    assert len(layout) == len(convs) == count
    assert [c for c, _ in layout] == [m.conv.in_channels for m in convs]


@pytest.fixture(scope="module")
def artifacts():
    from onnx_artifacts import tiny_cogvideox_artifacts

    return tiny_cogvideox_artifacts()  # `vidtrt export --model tiny-cogvideox`, once per session


@pytest.fixture(scope="module")
def exported(artifacts):
    """(config, torch decoder, onnxruntime engine of the exported frame-batch graph) of the embedded preset."""
    from vidtrt.runtime.engines import OnnxRuntimeEngine

    source = ModelSource.open("tiny-cogvideox")
    engine = OnnxRuntimeEngine(artifacts / "vae_decoder_batch.onnx", vae_decoder_batch_spec(source.config),
                               providers=["CPUExecutionProvider"])
    return source.config, source.load_vae_decoder().eval(), engine


def test_frame_batch_graph_matches_torch(exported):
    """The raw graph, first batch and continuing batch (random caches), against the torch frame batch."""
    config, decoder, engine = exported
    spec = engine.spec
    module = CogVideoXVAEFrameBatch(decoder)
    for seed, (t, h, w, first) in enumerate([(3, 3, 5, True), (1, 4, 8, True), (2, 3, 5, False), (2, 1, 2, False)]):
        feeds = spec.example_inputs({"batch_frames": t, "latent_height": h, "latent_width": w}, seed=seed)
        feeds["first"] = np.array([first])
        got = engine.run(feeds)
        with torch.no_grad():
            want = module(*(torch.from_numpy(feeds[n]) for n in spec.input_names))
        for name, w_ in zip(spec.output_names, want, strict=True):
            assert got[name].shape == tuple(w_.shape), name
            assert rel(got[name], w_.numpy()) <= TOL, (t, h, w, first, name, rel(got[name], w_.numpy()))


@pytest.mark.parametrize("t, h, w", [(1, 4, 8), (3, 3, 5), (5, 4, 8), (7, 3, 5), (4, 2, 3)])
def test_tile_decoder_on_onnxruntime_equals_torch(exported, t, h, w):
    """The engine's frame-batch loop: 1 latent frame, one batch of 3, caches carried over 2 and 3 batches, an
    odd tile size, an even frame count."""
    from vidtrt.runtime.cogvideox_engines import FrameBatchTileDecoder

    config, decoder, engine = exported
    tile = FrameBatchTileDecoder(engine, vae_decoder_tile_spec(config))
    z = torch.randn(1, config.vae.latent_channels, t, h, w, generator=torch.Generator().manual_seed(t * 100 + h))
    got = tile.run({"latents": z.numpy()})["video"]
    with torch.no_grad():
        want = decoder(z).numpy()
    assert got.shape == want.shape
    assert rel(got, want) <= TOL, (t, h, w, rel(got, want))


def test_tile_decoder_on_torch_engine_is_the_decoder():
    """The same loop on the torch engine (what CI runs without artifacts) is bit-identical to the decoder."""
    from vidtrt.runtime.engine_components import engine_vae_decoder

    source = ModelSource.open("tiny-cogvideox")
    tile = engine_vae_decoder(source, "torch")
    z = torch.randn(1, 16, 5, 3, 7, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = source.load_vae_decoder()(z)
    assert torch.equal(tile(z), want)


def test_engine_refuses_tiles_outside_the_spec(exported):
    from vidtrt.errors import EngineError
    from vidtrt.runtime.cogvideox_engines import FrameBatchTileDecoder

    config, _, engine = exported
    tile = FrameBatchTileDecoder(engine, vae_decoder_tile_spec(config))
    with pytest.raises(EngineError, match="latent_height=9, accepted 1..4"):
        tile.run({"latents": np.zeros((1, 16, 3, 9, 4), np.float32)})


# ---------------------------------------------------------------------------- the whole pipeline, the CLI
def test_export_writes_the_dit_and_the_frame_batch_graph(artifacts):
    import json

    manifest = json.loads((artifacts / "manifest.json").read_text())
    assert sorted(manifest["components"]) == ["dit", "dit_probe", "vae_decoder_batch"]  # the probe: TeaCache's
    assert all((artifacts / f"{name}.onnx").is_file() for name in manifest["components"])
    assert manifest["model"]["name"] == ModelSource.open("tiny-cogvideox").config.name


def test_pipeline_on_onnxruntime_gives_the_torch_frames(artifacts):
    """CFG with a negative prompt over 5 latent frames (two frame batches, tiled decode), and 1 frame at an odd
    size: onnxruntime's frames within one level of torch's."""
    from vidtrt.config.request import GenerationRequest
    from vidtrt.runtime.cogvideox_pipeline import CogVideoXPipeline
    from vidtrt.runtime.engine_components import load_pipeline_with_engine

    onnx = load_pipeline_with_engine("tiny-cogvideox", "onnxruntime", artifacts, providers=["CPUExecutionProvider"])
    torch_pipe = CogVideoXPipeline.from_model("tiny-cogvideox")
    for request in (GenerationRequest("a cat walks on the grass", seed=3, num_frames=17, num_inference_steps=2,
                                      negative_prompt="blurry"),
                    GenerationRequest("a dog", seed=4, num_frames=1, height=48, width=80, num_inference_steps=2,
                                      true_cfg_scale=3.0)):
        got, want = onnx.run(request), torch_pipe.run(request)
        assert got.shape == want.shape == (request.num_frames, request.height or 64, request.width or 96, 3)
        assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


def test_run_cli_with_the_onnxruntime_engine(artifacts, tmp_path, capsys):
    from vidtrt.cli import main
    from vidtrt.runtime.engine_components import load_pipeline_with_engine

    out = tmp_path / "v.npy"
    argv = ["run", "a red car", "--model", "tiny-cogvideox", "--engine", "onnxruntime", "--artifacts", str(artifacts),
            "--steps", "2", "--seed", "5", "--frames", "9", "-o", str(out), "--no-progress"]
    assert main(argv) == 0, capsys.readouterr().err
    want = load_pipeline_with_engine("tiny-cogvideox", "onnxruntime", artifacts).generate(
        "a red car", num_inference_steps=2, seed=5, num_frames=9)
    np.testing.assert_array_equal(np.load(out), want)


def test_build_an_onnxruntime_repository(artifacts, tmp_path):
    from vidtrt.export.repository import build_repository

    repo = build_repository("tiny-cogvideox", tmp_path / "repo", engine="onnxruntime", artifacts=artifacts)
    for key, files in (("dit", ["dit.onnx"]), ("vae_decoder", ["vae_decoder_batch.onnx"]), ("text_encoder", [])):
        for f in files + ["manifest.json"]:
            assert (repo / f"cogvideox_{key}" / "1" / f).is_file(), (key, f)
        assert 'string_value: "onnxruntime"' in (repo / f"cogvideox_{key}" / "config.pbtxt").read_text()


def test_export_refuses_another_familys_components(tmp_path, capsys):
    from vidtrt.cli import main

    assert main(["export", "--model", "tiny-cogvideox", "--out", str(tmp_path / "o"),
                 "--components", "llm_text_encoder"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "llm_text_encoder" in err and "vae_decoder_batch" in err
