"""FP8 for CogVideoX on CPU, the path HunyuanVideo has (tests/test_fp8_quant.py, tests/test_fp8_linear.py):
ModelOpt calibration through the CogVideoX sampler (`vidtrt quantize --model tiny-cogvideox`) -> state folder ->
(a) the torch engine's FP8 GEMMs with the calibrated static scales (`vidtrt run --precision fp8 --quantized`),
(b) FP8 Q/DQ ONNX of the DiT in onnxruntime; the embedded preset and a diffusers-layout folder (1.5-like: the
temporal patch's Linear patch embedding) written by diffusers.

Tolerances (stated, measured values in the comments):
- quantizers off: bit-identical to the plain DiT; ModelOpt's fake quant = ours within 1e-5 (max relative);
- an FP8 GEMM layer (bf16 out) vs the fp32 fake-quant layer with the same amax: max |diff| / max |ref| <= 2^-8
  (one bf16 rounding; the FP8 values and scales are the same);
- FP8 DiT (torch engine) vs the bf16 DiT: cosine >= 0.999; frames vs bf16 / fp32 frames: PSNR >= 35 dB;
- FP8 ONNX in onnxruntime vs the torch fake-quant DiT: norm relative error <= 1e-3, and 10x below the FP8 effect.
Calibration is kept tiny: 2 prompts x 2 steps (CFG on, the preset's 6.0) at the preset's 96x64x9, quality
report on 1 prompt.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from vidtrt.cli import main as cli_main
from vidtrt.config.cogvideox_specs import dit_spec
from vidtrt.errors import CheckpointError
from vidtrt.export.cogvideox_export import export_cogvideox_dit
from vidtrt.export.onnx_export import norm_relative_error, relative_error
from vidtrt.export.onnx_fp8 import FP8_DIT_FILE
from vidtrt.export.quantize import FP8QuantConfig, quantize_model
from vidtrt.kernels.reference import cosine_similarity
from vidtrt.models.fp8 import FP8Linear, FP8Quantizer, apply_fp8, fp8_disabled, quantizer_names
from vidtrt.models.fp8_linear import Fp8Linear
from vidtrt.runtime.cogvideox_pipeline import CogVideoXPipeline
from vidtrt.runtime.engines import OnnxRuntimeEngine
from vidtrt.source.model_source import ModelSource
from vidtrt.source.quant_state import QUANT_FORMAT, STATE_FILE, QuantState, weights_fingerprint

pytest.importorskip("modelopt")

MODEL = "tiny-cogvideox"
REQUEST = dict(num_frames=9, num_inference_steps=3, seed=4, negative_prompt="blurry", guidance_scale=5.0)
FP8_LAYERS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "ff.net.0.proj")
BF16_LAYERS = ("time_embedding.linear_1", "patch_embed.text_proj", "transformer_blocks.0.norm1.linear",
               "transformer_blocks.1.ff.net.2", "norm_out.linear", "proj_out")
ONNX_TOL = 1e-3


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 10 * np.log10(255.0**2 / max(mse, 1e-12))


@pytest.fixture(autouse=True)
def _two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def cog_state(tmp_path_factory):
    """`vidtrt quantize --model tiny-cogvideox` (the CLI): the state folder and what it printed."""
    out = tmp_path_factory.mktemp("cogfp8") / "state"
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        code = cli_main(["quantize", "--model", MODEL, "--out", str(out), "--calib-size", "2", "--calib-steps", "2",
                         "--quality-prompts", "1"])
    assert code == 0, buf.getvalue()
    return out, buf.getvalue()


def _spec_inputs(source: ModelSource, axes: dict, seed: int) -> list[torch.Tensor]:
    spec = dit_spec(source.config)
    feeds = spec.example_inputs({**spec.export_axes, **axes}, seed=seed)
    return [torch.from_numpy(feeds[n]) for n in spec.input_names]


SHAPES = ({"batch": 2},                                                           # CFG batch, the traced size
          {"batch": 1, "latent_frames": 1, "latent_height": 4, "latent_width": 10},  # 1 latent frame, odd aspect
          {"batch": 1, "latent_frames": 5, "latent_height": 12, "latent_width": 6})  # portrait, more frames


# ------------------------------------------------------------------------------------- fake quant
def test_quantizers_off_is_exactly_the_plain_dit():
    """CogVideoX's JointAttention is a QuantizableAttention: apply_fp8 attaches q/k/v/softmax quantizers to it
    and every Linear; disabled, the DiT is bit-identical to the plain one; enabled, FP8 noise."""
    source = ModelSource.open(MODEL)
    plain, dit = source.load_transformer(), source.load_transformer()
    names = quantizer_names(dit)
    assert "transformer_blocks.0.attn1.q_quantizer" in names and "proj_out.weight_quantizer" in names
    gen = torch.Generator().manual_seed(7)
    apply_fp8(dit, {n: torch.rand((), generator=gen) * 4 + 0.5 for n in names})
    assert dit.state_dict().keys() == plain.state_dict().keys()
    assert isinstance(dit.transformer_blocks[1].attn1.softmax_quantizer, FP8Quantizer)
    for i, axes in enumerate(SHAPES):
        args = _spec_inputs(source, axes, seed=3 + i)
        with torch.no_grad():
            want = plain(*args)
            with fp8_disabled(dit):
                off = dit(*args)
            on = dit(*args)
        assert torch.equal(off, want), axes
        err = float((on - want).norm() / want.norm())
        assert 1e-4 < err < 0.5, (axes, err)


def test_modelopt_calibration_equals_our_fake_quant():
    """ModelOpt's calibrated fake-quant CogVideoX DiT (our config, our attention registered) and ours built from
    the amax it found compute the same velocity on fresh inputs (per-channel weights, calibrated softmax)."""
    import modelopt.torch.quantization as mtq

    from vidtrt.export.quantize import collect_amax, modelopt_config, register_attention_with_modelopt

    source = ModelSource.open(MODEL)
    cfg = FP8QuantConfig(weight_per_channel=True, softmax_amax=None)
    model = source.load_transformer()
    register_attention_with_modelopt(model)

    def forward_loop(m):
        for seed in range(3):
            m(*_spec_inputs(source, {"batch": 1}, seed))

    with torch.no_grad():
        mo = mtq.quantize(model, modelopt_config(cfg), forward_loop)
        amax = collect_amax(mo, cfg)
        assert set(amax) == set(quantizer_names(source.load_transformer()))
        assert any(v.ndim == 1 for v in amax.values())
        assert float(amax["transformer_blocks.0.attn1.softmax_quantizer"]) < 1.0  # calibrated, not fixed
        ours, plain = apply_fp8(source.load_transformer(), amax), source.load_transformer()
        for i, axes in enumerate(SHAPES[:2]):
            args = _spec_inputs(source, axes, seed=10 + i)
            got, want, ref = ours(*args), mo(*args), plain(*args)
            assert relative_error(got.numpy(), want.numpy()) <= 1e-5, axes
            assert relative_error(got.numpy(), ref.numpy()) > 1e-4, axes  # it really quantizes


# ------------------------------------------------------------------------------------- state + quality
def test_state_folder_and_quality_report(cog_state):
    folder, printed = cog_state
    source = ModelSource.open(MODEL)
    meta = json.loads((folder / STATE_FILE).read_text())
    assert meta["format"] == QUANT_FORMAT and meta["model"] == MODEL
    assert meta["model_fingerprint"] == source.fingerprint
    assert meta["weights_fingerprint"] == weights_fingerprint(source.folder)
    cal = meta["calibration"]
    assert cal["steps"] == 2 and len(cal["prompts"]) == 2 and cal["seeds"] == [0, 1]
    assert cal["true_cfg_scale"] == 6.0 and (cal["width"], cal["height"], cal["num_frames"]) == (96, 64, 9)
    state = QuantState.load(folder, source)
    assert set(state.amax) == set(quantizer_names(source.load_transformer()))
    assert all(v.dtype == torch.float32 and v.ndim == 0 and float(v) > 0 for v in state.amax.values())
    assert float(state.amax["transformer_blocks.1.attn1.softmax_quantizer"]) == 1.0
    report = json.loads((folder / "quality.json").read_text())
    assert [s["step"] for s in report["per_step"]] == [1, 2] and len(report["per_prompt"]) == 1
    for s in report["per_step"]:  # random tiny weights: the mechanism, at the FP8 noise floor
        assert 0.99 < s["cosine_min"] < 1.0 and 1e-4 < s["rel_err_max"] < 0.2, s
    assert all(p["psnr_db"] is not None and 25 < p["psnr_db"] < 90 for p in report["per_prompt"])
    assert meta["quality"] == report["summary"]
    assert "final frames PSNR" in printed and f"wrote {folder}" in printed


def test_state_for_another_model_is_one_line(cog_state, tmp_path, capsys):
    with pytest.raises(CheckpointError, match="made for another model") as e:
        QuantState.load(cog_state[0], ModelSource.open("tiny"))
    assert "\n" not in str(e.value)
    out = tmp_path / "x.npy"
    assert cli_main(["run", "a cat", "--model", "tiny", "--precision", "fp8", "--quantized", str(cog_state[0]),
                     "-o", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "made for another model" in err and not out.exists()


@pytest.mark.parametrize("argv, needle", [
    (["run", "a cat", "--model", MODEL, "--precision", "fp8", "--quantized", "{tmp}/missing"],
     "quantization state folder not found"),
    (["run", "a cat", "--model", MODEL, "--precision", "fp8", "--nproc-per-node", "2"],
     "sequence parallelism runs HunyuanVideo's DiT only"),
    (["run", "a cat", "--model", MODEL, "--engine", "onnxruntime", "--artifacts", "{tmp}", "--precision", "fp8"],
     "--precision fp8 runs with --engine torch"),
    (["quantize", "--model", MODEL, "--height", "100"], "invalid --height 100"),
    (["build", "--model", MODEL, "--precision", "fp8", "--sp-degree", "2"], "sequence parallelism runs HunyuanVideo"),
])
def test_remaining_refusals_are_one_line(argv, needle, tmp_path, capsys):
    """What FP8 on CogVideoX still refuses: one line, exit 2, before any weights load or anything is written."""
    out = tmp_path / ("x.npy" if argv[0] == "run" else "out")
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv] + ["-o" if argv[0] == "run" else "--out", str(out)]
    assert cli_main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidtrt: error: ") and "\n" not in err and needle in err, err
    assert not out.exists()


# ------------------------------------------------------------------------------------- torch engine FP8
@pytest.fixture(scope="module")
def fp8_pipe(cog_state):
    source = ModelSource.open(MODEL)
    amax = QuantState.load(cog_state[0], source).amax
    return CogVideoXPipeline.from_model(source, precision="fp8", fp8_amax=amax), amax


def test_fp8_layers_equal_the_fake_quant_reference(fp8_pipe):
    """Which layers run FP8 GEMMs (attention projections, MLP inputs), their static scales from the state, and
    each one against the fp32 fake-quant layer with the same amax on a fresh input (within one bf16 rounding)."""
    pipe, amax = fp8_pipe
    dit = pipe.components.dit.module
    assert pipe.components.dit.kernels.attention == "sdpa"  # CPU: emulated GEMMs, SDPA attention
    source = ModelSource.open(MODEL)
    plain = source.load_transformer()
    for b in range(2):
        for name in FP8_LAYERS:
            path = f"transformer_blocks.{b}.{name}"
            layer = dit.get_submodule(path)
            assert isinstance(layer, Fp8Linear) and layer.activations == "static", path
            assert float(layer.input_scale) == pytest.approx(float(amax[f"{path}.input_quantizer"]) / 448, rel=1e-6)
            ref = plain.get_submodule(path)  # the engine's DiT is bf16: the same bf16 weights, in fp32
            ref.weight.data, ref.bias.data = (t.to(torch.bfloat16).float() for t in (ref.weight.data, ref.bias.data))
            ref.__class__ = FP8Linear
            ref.input_quantizer = FP8Quantizer(amax[f"{path}.input_quantizer"])
            ref.weight_quantizer = FP8Quantizer(amax[f"{path}.weight_quantizer"])
            x = torch.randn(2, 37, layer.in_features, generator=torch.Generator().manual_seed(b)) * float(
                amax[f"{path}.input_quantizer"]) / 3
            with torch.no_grad():
                got = layer(x.to(torch.bfloat16)).float()
                want = ref(x.to(torch.bfloat16).float())
            err = float((got - want).abs().max() / want.abs().max())
            assert err <= 2.0**-8, (path, err)
    for name in BF16_LAYERS:
        assert type(dit.get_submodule(name)) is nn.Linear, name


def test_fp8_dit_is_close_to_bf16(fp8_pipe):
    source = ModelSource.open(MODEL)
    bf16 = source.load_transformer(torch.bfloat16)
    dit = fp8_pipe[0].components.dit.module
    for i, axes in enumerate(SHAPES):
        args = [a.to(torch.bfloat16) if a.is_floating_point() else a for a in _spec_inputs(source, axes, 20 + i)]
        with torch.inference_mode():
            got, ref = dit(*args).float(), bf16(*args).float()
        assert cosine_similarity(got, ref) >= 0.999, axes


def test_fp8_frames_close_to_bf16_and_fp32(fp8_pipe, cog_state, tmp_path, capsys):
    """Static (state) and dynamic FP8 pipelines: frames finite uint8, PSNR >= 35 dB vs bf16 and fp32; `vidtrt run
    --precision fp8 --quantized` gives the in-process frames."""
    got = fp8_pipe[0].generate("a red car", **REQUEST)
    bf16 = CogVideoXPipeline.from_model(MODEL, precision="bf16").generate("a red car", **REQUEST)
    fp32 = CogVideoXPipeline.from_model(MODEL).generate("a red car", **REQUEST)
    dynamic = CogVideoXPipeline.from_model(MODEL, precision="fp8").generate("a red car", **REQUEST)
    assert got.shape == bf16.shape == (9, 64, 96, 3) and got.dtype == np.uint8
    psnr = {"static_vs_bf16": _psnr(got, bf16), "static_vs_fp32": _psnr(got, fp32),
            "dynamic_vs_bf16": _psnr(dynamic, bf16), "bf16_vs_fp32": _psnr(bf16, fp32)}
    print("CogVideoX FP8 frames PSNR (dB):", {k: round(v, 2) for k, v in psnr.items()})
    assert min(psnr["static_vs_bf16"], psnr["static_vs_fp32"], psnr["dynamic_vs_bf16"]) >= 35.0, psnr
    assert not np.array_equal(got, dynamic)  # the static scales are used
    out = tmp_path / "car.npy"
    argv = ["run", "a red car", "--model", MODEL, "--precision", "fp8", "--quantized", str(cog_state[0]), "-o",
            str(out), "--frames", "9", "--steps", "3", "--seed", "4", "--negative-prompt", "blurry",
            "--true-cfg-scale", "5", "--no-progress"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(out), got)


def test_fp8_component_and_repository(cog_state, tmp_path):
    from vidtrt.export.repository import build_repository
    from vidtrt.runtime.engine_components import load_component

    amax = QuantState.load(cog_state[0], ModelSource.open(MODEL)).amax
    dit = load_component("dit", MODEL, precision="fp8", fp8_amax=amax)
    assert isinstance(dit.module.transformer_blocks[0].attn1.to_q, Fp8Linear)
    out = build_repository(MODEL, tmp_path / "repo", precision="fp8", quantized=cog_state[0])
    assert json.loads((out / "vidtrt-repository.json").read_text())["precision"] == "fp8"
    assert 'key: "quantized"' in (out / "cogvideox_dit" / "config.pbtxt").read_text()


# ------------------------------------------------------------------------------------- FP8 ONNX
def _onnx_vs_fake_quant(source: ModelSource, state_dir, out, shapes) -> tuple[list[float], list[float]]:
    result = export_cogvideox_dit(source, out, quantized=state_dir)
    assert result.path.name == FP8_DIT_FILE
    proto = onnx.load(str(result.path), load_external_data=False)
    assert {o.domain for o in proto.opset_import} == {""} and max(o.version for o in proto.opset_import) >= 19
    fp8 = onnx.TensorProto.FLOAT8E4M3FN
    weights = [i for i in proto.graph.initializer if i.data_type == fp8 and len(i.dims) == 2]
    linears = [n for n, m in source.load_transformer().named_modules() if isinstance(m, nn.Linear)]
    assert len(weights) == len(linears), (len(weights), len(linears))
    assert sum(n.op_type == "QuantizeLinear" for n in proto.graph.node) > 0
    spec = dit_spec(source.config)
    engine = OnnxRuntimeEngine(result.path, spec, fp8=True)
    fake_quant = QuantState.load(state_dir, source).apply(source.load_transformer())
    plain = source.load_transformer()
    errors, effect = [], []
    for i, axes in enumerate(shapes):
        feeds = spec.example_inputs({**spec.export_axes, **axes}, seed=30 + i)
        got = engine.run(feeds)["velocity"]
        with torch.no_grad():
            args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
            want, ref = fake_quant(*args).numpy(), plain(*args).numpy()
        assert got.shape == want.shape and np.isfinite(got).all()
        errors.append(norm_relative_error(got, want))
        effect.append(norm_relative_error(ref, want))
    print(f"CogVideoX FP8 ONNX vs torch fake quant (norm): {[f'{e:.1e}' for e in errors]}; FP8 effect "
          f"{[f'{e:.1e}' for e in effect]}")
    assert max(errors) <= ONNX_TOL and min(effect) > 10 * max(max(errors), 1e-6), (errors, effect)
    return errors, effect


def test_fp8_onnx_runs_in_onnxruntime(cog_state, tmp_path):
    _onnx_vs_fake_quant(ModelSource.open(MODEL), cog_state[0], tmp_path, SHAPES)


def test_export_cli_quantized_then_onnxruntime_pipeline(cog_state, tmp_path, capsys):
    """`vidtrt export --quantized` (the CLI, which refused CogVideoX before) writes the FP8 DiT beside the float
    VAE graph, and `vidtrt run --engine onnxruntime` generates from it: close to the float32 ONNX pipeline's
    frames, and not equal to them (the FP8 graph is the one that ran)."""
    import shutil

    from onnx_artifacts import tiny_cogvideox_artifacts

    art = tmp_path / "art"
    shutil.copytree(tiny_cogvideox_artifacts(), art)  # float dit.onnx, vae_decoder_batch.onnx, dit_probe.onnx
    assert cli_main(["export", "--model", MODEL, "--quantized", str(cog_state[0]), "--components", "dit",
                     "--out", str(art)]) == 0
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["components"]["dit"]["file"] == FP8_DIT_FILE and "quantization" in manifest["components"]["dit"]
    assert set(manifest["components"]) == {"dit", "vae_decoder_batch", "dit_probe"}
    args = ["run", "a cat", "--model", MODEL, "--engine", "onnxruntime", "--frames", "9", "--steps", "3",
            "--seed", "5", "--no-progress"]
    assert cli_main([*args, "--artifacts", str(art), "-o", str(tmp_path / "fp8.npy")]) == 0
    assert cli_main([*args, "--artifacts", str(tiny_cogvideox_artifacts()), "-o", str(tmp_path / "f32.npy")]) == 0
    capsys.readouterr()
    fp8, f32 = np.load(tmp_path / "fp8.npy"), np.load(tmp_path / "f32.npy")
    psnr = _psnr(fp8, f32)
    print(f"CogVideoX onnxruntime FP8 DiT vs float32 frames: PSNR {psnr:.2f} dB")
    assert fp8.shape == f32.shape and not np.array_equal(fp8, f32) and psnr >= 30.0, psnr


# ------------------------------------------------------------------------------------- diffusers folder
@pytest.mark.slow
def test_diffusers_folder_quantize_run_export(tmp_path):
    """A 1.5-like folder written by diffusers (Linear patch embedding over time-patched latents): quantize
    (1 prompt x 2 steps), FP8 torch pipeline frames vs fp32, FP8 ONNX vs fake quant."""
    from test_cogvideox_pipeline import write_diffusers_folder

    folder = write_diffusers_folder(tmp_path / "cog15", "1.5", seed=3)
    state_dir = tmp_path / "state"
    quantize_model(folder, state_dir, FP8QuantConfig(calib_size=1, calib_steps=2), quality_prompts=0, log=None)
    source = ModelSource.open(folder)
    state = QuantState.load(state_dir, source)
    assert "patch_embed.proj.input_quantizer" in state.amax  # 1.5's Linear patch embedding is calibrated
    request = dict(num_frames=9, num_inference_steps=2, seed=1)
    got = CogVideoXPipeline.from_model(source, precision="fp8", fp8_amax=state.amax).generate("a cat", **request)
    fp32 = CogVideoXPipeline.from_model(source).generate("a cat", **request)
    psnr = _psnr(got, fp32)
    print(f"1.5-like folder: FP8 (static) frames vs fp32 PSNR {psnr:.2f} dB")
    assert got.shape == fp32.shape and psnr >= 35.0, psnr
    _onnx_vs_fake_quant(source, state_dir, tmp_path / "onnx", (
        {"batch": 2, "latent_frames": 2, "latent_height": 8, "latent_width": 8},
        {"batch": 1, "latent_frames": 4, "latent_height": 6, "latent_width": 10}))


@pytest.mark.server
def test_fp8_repository_serves_the_in_process_frames(cog_state, fp8_pipe, tmp_path):
    """`vidtrt build --model tiny-cogvideox --precision fp8 --quantized DIR` served by a real tritonserver: the DiT
    model process loads the state from its 1/quant/ and the frames are the in-process FP8 pipeline's."""
    from vidtrt.client import VideoClient
    from vidtrt.config.request import GenerationRequest
    from vidtrt.export.repository import build_repository
    from vidtrt.serving.server import TritonServer

    repo = build_repository(MODEL, tmp_path / "repo", precision="fp8", quantized=cog_state[0])
    request = GenerationRequest("a red car", seed=4, num_inference_steps=2, negative_prompt="blurry",
                                true_cfg_scale=5.0)
    expected = fp8_pipe[0].run(request)
    with TritonServer(repo, log_file=tmp_path / "tritonserver.log", exit_timeout_s=5, ready_timeout_s=600) as srv:
        got = VideoClient(srv.grpc_url, model_name="cogvideox").run(request).frames
    assert got.shape == expected.shape
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1  # thread counts may differ
