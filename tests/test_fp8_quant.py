"""FP8 end to end on CPU: ModelOpt calibration (`vidtrt quantize`) -> state folder -> FP8 Q/DQ ONNX
(`vidtrt export --quantized`) -> onnxruntime frames, in process and through the real tritonserver, from
the embedded tiny model and from a diffusers-layout folder written by diffusers; the quality report;
the refusals (state for another checkpoint or other weights, corrupt state) as one line, exit 2.

Calibration is kept tiny: 2 prompts x 2 steps at the tiny model's default size.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx_artifacts import FP8_CALIB, tiny_fp8_artifacts, tiny_fp8_state

from vidtrt.cli import main as cli_main
from vidtrt.errors import CheckpointError
from vidtrt.export.onnx_export import export_components, relative_error
from vidtrt.export.onnx_fp8 import FP8_DIT_FILE
from vidtrt.export.quantize import FP8QuantConfig
from vidtrt.models.fp8 import apply_fp8, fp8_disabled, fp8_qdq_reference, fp8_scale, quantizer_names
from vidtrt.runtime.engines import OnnxRuntimeEngine
from vidtrt.source.model_source import ModelSource
from vidtrt.source.quant_state import AMAX_FILE, QUALITY_FILE, QUANT_FORMAT, STATE_FILE, QuantState

ONNX_TOL = 1e-3  # onnxruntime FP8 graph vs the torch fake-quant DiT (max |diff| / max |ref|)
CALIB = FP8QuantConfig(**FP8_CALIB)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


@pytest.fixture(autouse=True)
def _two_threads():
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_state():
    """`vidtrt quantize` of tiny (Python API, CALIB): the state folder and what it printed. Made once per session
    (tests/onnx_artifacts.py, which conftest.py starts making in the background); the tests only read it."""
    return tiny_fp8_state()


@pytest.fixture(scope="module")
def fp8_artifacts(tiny_state):
    """The session's tiny ONNX artifacts with the DiT replaced by the FP8 one (tests/onnx_artifacts.py)."""
    return tiny_fp8_artifacts()


def _fake_quant_dit(source: ModelSource, state: Path) -> torch.nn.Module:
    return QuantState.load(state, source).apply(source.load_transformer())


# ------------------------------------------------------------------------------------- fake quant
def test_fp8_qdq_rounds_to_e4m3_and_saturates():
    x = torch.tensor([0.0, 1.0, 1.0625, 1.09375, -3.3, 500.0, -1e6, 2.0 ** -12])
    scale = fp8_scale(torch.tensor(448.0))  # 1.0
    got = fp8_qdq_reference(x, scale)
    want = x.clamp(-448, 448).to(torch.float8_e4m3fn).float()
    assert torch.equal(got, want)
    assert got[5] == 448 and got[6] == -448 and got[2] == 1.0  # saturating; 1.0625 is a tie -> even (1.0)
    per_channel = fp8_qdq_reference(torch.ones(2, 3), torch.tensor([0.5, 2.0]), axis=0)
    assert torch.equal(per_channel, torch.ones(2, 3))


def test_quantizers_off_is_exactly_the_plain_dit():
    """apply_fp8 keeps the state_dict; with every quantizer disabled the DiT is bit-identical to before,
    enabled it moves the output by FP8 noise (not zero, not garbage)."""
    source = ModelSource.open("tiny")
    plain, dit = source.load_transformer(), source.load_transformer()
    names = quantizer_names(dit)
    gen = torch.Generator().manual_seed(7)
    apply_fp8(dit, {n: torch.rand((), generator=gen) * 4 + 0.5 for n in names})
    assert dit.state_dict().keys() == plain.state_dict().keys()
    spec = source.specs(("dit",))["dit"]
    feeds = spec.example_inputs({**spec.export_axes, "batch": 1}, seed=3)
    args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
    with torch.no_grad():
        want = plain(*args)
        with fp8_disabled(dit):
            off = dit(*args)
        on = dit(*args)
    assert torch.equal(off, want)
    err = float((on - want).norm() / want.norm())
    assert 1e-4 < err < 0.5, err


def test_modelopt_calibration_equals_our_fake_quant():
    """ModelOpt's calibrated fake-quant DiT (mtq.quantize with our config and attention registration) and
    ours built from the amax it found compute the same velocity on fresh inputs."""
    import modelopt.torch.quantization as mtq

    from vidtrt.export.quantize import collect_amax, modelopt_config, register_attention_with_modelopt

    source = ModelSource.open("tiny")
    spec = source.specs(("dit",))["dit"]
    register_attention_with_modelopt()
    cfg = FP8QuantConfig(weight_per_channel=True, softmax_amax=None)

    def forward_loop(model):
        for seed in range(3):
            feeds = spec.example_inputs({**spec.export_axes, "batch": 1}, seed=seed)
            model(*(torch.from_numpy(feeds[n]) for n in spec.input_names))

    with torch.no_grad():
        mo = mtq.quantize(source.load_transformer(), modelopt_config(cfg), forward_loop)
        amax = collect_amax(mo, cfg)
        assert set(amax) == set(quantizer_names(source.load_transformer()))
        assert any(v.ndim == 1 for v in amax.values())  # per-channel weights
        ours = apply_fp8(source.load_transformer(), amax)
        plain = source.load_transformer()
        for seed, axes in ((10, {"batch": 2}), (11, {"batch": 1, "latent_frames": 1})):
            feeds = spec.example_inputs({**spec.export_axes, **axes}, seed=seed)
            args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
            got, want, ref = ours(*args), mo(*args), plain(*args)
            assert relative_error(got.numpy(), want.numpy()) <= 1e-5
            assert relative_error(got.numpy(), ref.numpy()) > 1e-4  # it really quantizes


# ------------------------------------------------------------------------------------- state + quality
def test_state_folder_and_quality_report(tiny_state):
    folder, lines = tiny_state
    source = ModelSource.open("tiny")
    meta = json.loads((folder / STATE_FILE).read_text())
    assert meta["format"] == QUANT_FORMAT and meta["model_fingerprint"] == source.fingerprint
    assert meta["modelopt_version"].startswith("0.")
    assert meta["quant_config"]["softmax_amax"] == 1.0 and meta["calibration"]["steps"] == 2
    assert len(meta["calibration"]["prompts"]) == 2
    state = QuantState.load(folder, source)
    assert set(state.amax) == set(quantizer_names(source.load_transformer()))
    assert all(v.dtype == torch.float32 and v.ndim == 0 and float(v) > 0 for v in state.amax.values())
    assert float(state.amax["transformer_blocks.0.attn.softmax_quantizer"]) == 1.0
    assert "single_transformer_blocks.0.proj_out.weight_quantizer" in state.amax

    report = json.loads((folder / QUALITY_FILE).read_text())
    assert [s["step"] for s in report["per_step"]] == [1, 2] and len(report["per_prompt"]) == 2
    for s in report["per_step"]:
        assert 0.99 < s["cosine_min"] < 1.0 and 1e-4 < s["rel_err_max"] < 0.2, s
    assert all(p["psnr_db"] is not None and 25 < p["psnr_db"] < 90 for p in report["per_prompt"])
    assert meta["quality"] == report["summary"]
    table = "\n".join(lines)
    assert "cosine mean" in table and "final frames PSNR" in table and "summary: velocity cosine min" in table


def test_weights_fingerprint_follows_the_weights_not_the_place(tiny_state, tmp_path):
    from vidtrt.source.quant_state import weights_fingerprint

    src = ModelSource.open("tiny").folder
    copy = tmp_path / "copy"
    shutil.copytree(src, copy)
    assert weights_fingerprint(copy) == weights_fingerprint(src)
    path = copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF  # one byte of the last tensor
    path.write_bytes(bytes(data))
    assert weights_fingerprint(copy) != weights_fingerprint(src)
    with pytest.raises(CheckpointError) as e:
        QuantState.load(tiny_state[0], ModelSource.open(copy))
    assert "made for other weights" in one_line(e)


def test_refusals_are_one_line(tiny_state, tmp_path, capsys):
    good = tiny_state[0]
    tiny, small = ModelSource.open("tiny"), ModelSource.open("small")
    with pytest.raises(CheckpointError) as e:
        QuantState.load(good, small)
    assert "made for another model" in one_line(e) and "vidtrt quantize --model small" in one_line(e)

    def broken(name, edit) -> Path:
        folder = tmp_path / name
        shutil.copytree(good, folder)
        edit(folder)
        return folder

    cases = {
        "missing folder": (tmp_path / "nope", "not found"),
        "no json": (broken("nojson", lambda f: (f / STATE_FILE).unlink()), "is missing"),
        "corrupt json": (broken("badjson", lambda f: (f / STATE_FILE).write_text("{not json")), "corrupt"),
        "unknown format": (broken("fmt", lambda f: (f / STATE_FILE).write_text(json.dumps(
            {**json.loads((good / STATE_FILE).read_text()), "format": "vidtrt-fp8-quant/9"}))), "unknown format"),
        "no amax": (broken("noamax", lambda f: (f / AMAX_FILE).unlink()), "missing"),
        "corrupt amax": (broken("badamax", lambda f: (f / AMAX_FILE).write_bytes(b"\x10\x00garbage")), "corrupt"),
    }
    for what, (folder, words) in cases.items():
        with pytest.raises(CheckpointError) as e:
            QuantState.load(folder, tiny)
        assert words in one_line(e), (what, one_line(e))

    # The CLI: one line, exit 2, before any export work.
    for argv, words in ((["export", "--model", "small", "--quantized", str(good), "--out", str(tmp_path / "o")],
                         "made for another model"),
                        (["export", "--model", "tiny", "--quantized", str(cases["corrupt json"][0]), "--out",
                          str(tmp_path / "o")], "corrupt"),
                        (["quantize", "--model", "tiny", "--out", str(tmp_path / "q"), "--calib-size", "0"],
                         "--calib-size"),
                        (["quantize", "--model", "tiny", "--out", str(tmp_path / "q"), "--frames", "8"], "--frames")):
        assert cli_main(argv) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and err.startswith("vidtrt: error:") and words in err, err
    assert not (tmp_path / "o").exists() and not (tmp_path / "q").exists()  # refused before creating --out


# ------------------------------------------------------------------------------------- FP8 ONNX
def test_fp8_onnx_is_standard_qdq_with_fp8_weights(fp8_artifacts):
    manifest = json.loads((fp8_artifacts / "manifest.json").read_text())
    entry = manifest["components"]["dit"]
    assert entry["file"] == FP8_DIT_FILE and entry["external_data"] == FP8_DIT_FILE + ".data"
    assert entry["opset"] >= 19 and entry["quantization"]["format"] == "fp8_e4m3"
    assert entry["quantization"]["qdq"]["weights"] == 40  # every Linear of tiny
    proto = onnx.load(str(fp8_artifacts / FP8_DIT_FILE), load_external_data=False)
    assert {o.domain: o.version for o in proto.opset_import} == {"": entry["opset"]}
    qdq = [n for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(n.domain == "" for n in qdq)
    assert not [n for n in proto.graph.node if n.domain not in ("", "ai.onnx")]
    fp8 = onnx.TensorProto.FLOAT8E4M3FN
    inits = {i.name: i for i in proto.graph.initializer}
    for n in qdq:  # zero points make them FP8
        assert inits[n.input[2]].data_type == fp8, n.name
    weights = [i for i in inits.values() if i.data_type == fp8 and len(i.dims) == 2]
    assert len(weights) == 40 and all(i.data_location == onnx.TensorProto.EXTERNAL for i in weights)
    assert not [i for i in inits.values() if i.name.endswith("proj.weight") and i.data_type != fp8 and "x_embedder"
                not in i.name]
    softmax_q = [n for n in proto.graph.node if n.op_type == "QuantizeLinear"
                 and any(p.op_type == "Softmax" and p.output[0] == n.input[0] for p in proto.graph.node)]
    assert len(softmax_q) == 3  # one per attention (refiner, dual-stream, single-stream)


def test_fp8_onnx_matches_torch_fake_quant_at_several_shapes(tiny_state, fp8_artifacts):
    source = ModelSource.open("tiny")
    spec = source.specs(("dit",))["dit"]
    engine = OnnxRuntimeEngine(fp8_artifacts / FP8_DIT_FILE, spec, fp8=True)
    dit, plain = _fake_quant_dit(source, tiny_state[0]), source.load_transformer()
    pick = lambda f, h, w: next(b for b in spec.buckets if (b["latent_frames"], b["latent_height"],  # noqa: E731
                                                          b["latent_width"]) == (f, h, w))
    cases = [({**pick(1, 8, 12), "batch": 2, "text_length": 16}, 0, [16, 5]),  # batch 2, 1 latent frame
             ({**pick(3, 12, 8), "batch": 1, "text_length": 8}, 1, [3]),  # portrait, padded text
             ({**pick(9, 8, 8), "batch": 1, "text_length": 32}, 2, [32])]  # 33 frames, full text
    errors, fp8_noise = [], []
    for axes, seed, lengths in cases:
        feeds = spec.example_inputs(axes, seed=100 + seed, lengths=lengths)
        got = engine.run(feeds)["velocity"]
        with torch.no_grad():
            args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
            want, ref = dit(*args).numpy(), plain(*args).numpy()
        assert got.shape == want.shape == spec.output_shape("velocity", axes)
        errors.append(relative_error(got, want))
        fp8_noise.append(relative_error(got, ref))
    print(f"FP8 ONNX vs torch fake quant: {[f'{e:.1e}' for e in errors]}; vs unquantized {fp8_noise}")
    assert max(errors) <= ONNX_TOL, errors
    assert min(fp8_noise) > 10 * max(max(errors), 1e-6)  # the comparison can tell FP8 from float32


def test_fp8_graph_attention_plugin_flavour(tiny_state, tmp_path):
    """The FP8 Q/DQ graph with its attention as vidtrt::attention_fp8 plugin nodes: QuantizeLinear (calibrated
    per-tensor scales) feeds the plugin its FP8 q / k / v(transposed); onnxruntime (reference functions attached)
    matches the torch fake-quant DiT (norm relative error: the plugin quantizes P as fp8(P * 448) against the
    running max instead of the calibrated softmax scale) and the plain Q/DQ graph."""
    from vidtrt.export.onnx_export import FP8_VERIFY_TOL, export_fp8_dit, norm_relative_error
    from vidtrt.kernels import onnx_plugins

    source = ModelSource.open("tiny")
    spec = source.specs(("dit",))["dit"]
    state = QuantState.load(tiny_state[0], source)
    path = tmp_path / "dit_fp8_plugin.onnx"
    _, counts = export_fp8_dit(source, state, spec, path, opset=21, attention_plugin=True)
    assert counts["quantize_only"] == 9 and counts["weights"] == 40  # q, k, v of 3 attentions; every Linear
    proto = onnx.load(str(path), load_external_data=False)
    plugins = onnx_plugins.plugin_nodes(proto)
    assert [n.op_type for n in plugins] == ["attention_fp8"] * 3
    assert not [n for n in proto.graph.node if n.op_type == "Softmax"]
    producers = {o: n for n in proto.graph.node for o in n.output}
    for node in plugins:  # FP8 q, k, v straight from QuantizeLinear (v after its transpose + pad)
        assert [producers[i].op_type for i in node.input[:3]] == ["QuantizeLinear"] * 3
    (tmp_path / "ref").mkdir()
    ref = tmp_path / "ref" / "dit.onnx"
    onnx.save(onnx_plugins.attach_reference_functions(onnx.load(str(path))), str(ref))
    engine = OnnxRuntimeEngine(ref, spec, fp8=True)
    dit, plain = _fake_quant_dit(source, tiny_state[0]), source.load_transformer()
    errors, fp8_noise = [], []
    for seed, (axes, lengths) in enumerate([({"batch": 2, "latent_frames": 1, "latent_height": 8,
                                              "latent_width": 12, "text_length": 16}, [16, 5]),
                                             ({"batch": 1, "latent_frames": 3, "latent_height": 12,
                                               "latent_width": 8, "text_length": 8}, [3])]):
        feeds = spec.example_inputs(axes, seed=300 + seed, lengths=lengths)
        got = engine.run(feeds)["velocity"]
        with torch.no_grad():
            args = [torch.from_numpy(feeds[n]) for n in spec.input_names]
            want, ref = dit(*args).numpy(), plain(*args).numpy()
        errors.append(norm_relative_error(got, want))
        fp8_noise.append(norm_relative_error(got, ref))
    print(f"FP8 plugin graph vs torch fake quant (norm relative): {errors}; vs unquantized {fp8_noise}")
    assert max(errors) <= FP8_VERIFY_TOL, errors
    assert max(errors) < min(fp8_noise)  # closer to the fake-quant DiT than to the float32 one


def _torch_fp8_pipeline(source: ModelSource, state: Path):
    from vidtrt.config.components import Components
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline, TorchDenoiser, torch_tile_decoder

    return HunyuanVideoPipeline(source.config, Components(
        encode_text=source.load_text_encoder(), dit=TorchDenoiser(_fake_quant_dit(source, state)),
        decode_tile=torch_tile_decoder(source)))


def test_run_generates_from_the_fp8_artifacts(tiny_state, fp8_artifacts, tmp_path, capsys):
    """`vidtrt run --engine onnxruntime --artifacts DIR`: the frames of the torch fake-quant pipeline."""
    out = tmp_path / "cat.npy"
    argv = ["run", "a cat walks on the grass", "--engine", "onnxruntime", "--artifacts", str(fp8_artifacts),
            "--frames", "5", "--steps", "3", "--seed", "4", "-o", str(out), "--no-progress"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    got = np.load(out)
    source = ModelSource.open("tiny")
    want = _torch_fp8_pipeline(source, tiny_state[0]).generate("a cat walks on the grass", num_frames=5,
                                                               num_inference_steps=3, seed=4)
    assert got.shape == want.shape == (5, 64, 96, 3)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 2


@pytest.mark.server
def test_server_serves_the_fp8_artifacts(fp8_artifacts, tmp_path):
    """`vidtrt build --engine onnxruntime --artifacts DIR` with the FP8 DiT, served by the real tritonserver:
    the in-process onnxruntime frames."""
    from vidtrt.client import VideoClient
    from vidtrt.export.repository import build_repository
    from vidtrt.runtime.engine_components import load_pipeline_with_engine
    from vidtrt.serving.server import TritonServer

    repo = build_repository("tiny", tmp_path / "repo", engine="onnxruntime", artifacts=fp8_artifacts)
    assert (repo / "hunyuan_video_dit" / "1" / FP8_DIT_FILE).is_file()
    record = json.loads((repo / "vidtrt-repository.json").read_text())
    assert record["dit_quantization"]["format"] == "fp8_e4m3"
    request = dict(num_frames=5, num_inference_steps=2, seed=5)
    want = load_pipeline_with_engine("tiny", "onnxruntime", fp8_artifacts).generate("a red car", **request)
    with TritonServer(repo, log_file=tmp_path / "server.log", exit_timeout_s=5, ready_timeout_s=600) as srv:
        got = VideoClient(srv.grpc_url).generate("a red car", **request)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


# ------------------------------------------------------------------------------------- diffusers folder
@pytest.mark.slow
def test_diffusers_folder_quantize_export_frames(tmp_path, capsys):
    """A diffusers-layout checkpoint written by diffusers itself (sharded; 2 x 128 heads, 2 + 2 blocks):
    `vidtrt quantize` (the CLI, with its printed report), the FP8 DiT ONNX (`--verify`: norm error vs the
    fake-quant DiT), and frames with the DiT in onnxruntime.

    Unlike tiny (bit-exact), here onnxruntime and torch round float32 sums and transcendentals
    differently upstream of the quantizers, which flips single FP8 roundings (onnxruntime differs from
    itself between batch 1 and 2 by as much); measured: norm error 2e-4 / 1.3e-2 vs an FP8 effect of
    0.12 / 0.07, frames 41.5 dB from the torch FP8 pipeline's, which are 34.5 dB from float32's. So the
    frames must be much closer to the torch FP8 pipeline's than FP8 moves them."""
    diffusers = pytest.importorskip("diffusers")
    from test_checkpoints import DIT, SHIFT

    from vidtrt.config.components import Components
    from vidtrt.runtime.engine_components import engine_dit
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline, torch_tile_decoder
    from vidtrt.source.tiny import MODEL_INDEX_ENTRIES, write_text_components
    from vidtrt.testing import randomize_parameters

    folder = tmp_path / "ckpt"
    torch.manual_seed(0)
    dit = randomize_parameters(diffusers.HunyuanVideoTransformer3DModel(**DIT).eval(), 21)
    dit.save_pretrained(folder / "transformer", max_shard_size="4MB")
    shutil.copytree(ModelSource.open("tiny").folder / "vae", folder / "vae")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=SHIFT).save_pretrained(folder / "scheduler")
    write_text_components(folder, seed=3)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "HunyuanVideoPipeline", "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"], **MODEL_INDEX_ENTRIES}))
    tiny_json = json.loads((ModelSource.open("tiny").folder / "vidtrt.json").read_text())
    (folder / "vidtrt.json").write_text(json.dumps({k: tiny_json[k] for k in ("text", "tiling", "defaults")}))
    assert len(list((folder / "transformer").glob("*.safetensors"))) >= 2  # sharded

    state = tmp_path / "state"
    argv = ["quantize", "--model", str(folder), "--out", str(state), "--calib-size", "2", "--calib-steps", "2",
            "--quality-prompts", "1"]
    assert cli_main(argv) == 0
    printed = capsys.readouterr().out
    assert "final frames PSNR" in printed and f"wrote {state}" in printed
    source = ModelSource.open(folder)
    art = tmp_path / "onnx"
    manifest = export_components(source, art, ["dit"], quantized=state, verify=True, log=None)  # raises > 5e-2
    assert manifest["components"]["dit"]["quantization"]["weights_fingerprint"] == \
        QuantState.load(state, source).weights_fingerprint

    request = dict(prompt="a red car", num_frames=5, num_inference_steps=2, seed=6)
    ort = HunyuanVideoPipeline(source.config, Components(
        encode_text=source.load_text_encoder(), dit=engine_dit(source, "onnxruntime", art, device="cpu"),
        decode_tile=torch_tile_decoder(source)))
    from skimage.metrics import peak_signal_noise_ratio as psnr

    got = ort.generate(**request)
    want = _torch_fp8_pipeline(source, state).generate(**request)
    plain = HunyuanVideoPipeline.from_model(source).generate(**request)
    assert got.shape == want.shape == plain.shape == (5, 64, 96, 3)
    ort_vs_fq, fp8_effect = psnr(want, got, data_range=255), psnr(plain, want, data_range=255)
    print(f"diffusers folder: onnxruntime FP8 vs torch FP8 {ort_vs_fq:.1f} dB, torch FP8 vs fp32 {fp8_effect:.1f} dB")
    assert ort_vs_fq > max(fp8_effect + 3, 30), (ort_vs_fq, fp8_effect)


def test_per_channel_weights_lower_to_axis_qdq_and_match(tmp_path):
    """Per-output-channel weight scales through the exporter and the lowering: FP8 weight initializers
    (transposed for MatMul, axis 0 -> 1), DequantizeLinear with an axis, onnxruntime = torch fake quant."""
    import onnx_ir as ir

    from vidtrt.export.onnx_fp8 import lower_fp8_markers, translation_table

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(24, 40), torch.nn.GELU(), torch.nn.Linear(40, 8)).eval()
    amax = {}
    for i in (0, 2):
        amax[f"{i}.input_quantizer"] = torch.tensor(3.0)
        w_max = mlp[i].weight.detach().abs().amax(dim=1)  # some channels saturate, some do not
        amax[f"{i}.weight_quantizer"] = w_max * torch.linspace(0.6, 1.2, mlp[i].out_features)
    apply_fp8(mlp, amax)
    x = torch.randn(2, 5, 24)
    with torch.no_grad():
        program = torch.onnx.export(mlp, (x,), input_names=["x"], output_names=["y"], dynamo=True, opset_version=19,
                                    custom_translation_table=translation_table(), optimize=False, verbose=False)
    model = program.model
    counts = lower_fp8_markers(model)
    assert counts == {"weights": 2, "activations": 2, "transposes_folded": 2}  # MatMul on 3-D inputs
    path = tmp_path / "mlp_fp8.onnx"
    ir.save(model, path)
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    fp8_inits = {i.name for i in proto.graph.initializer if i.data_type == onnx.TensorProto.FLOAT8E4M3FN}
    dq_w = [n for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in fp8_inits]
    assert len(dq_w) == 2 and all(any(a.name == "axis" for a in n.attribute) for n in dq_w)
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    for seed in (1, 2):
        xs = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(seed))  # traced static
        got = session.run(None, {"x": xs.numpy()})[0]
        with torch.no_grad():
            want = mlp(xs).numpy()
        assert relative_error(got, want) <= 1e-6


# ------------------------------------------------------------------- the state as the torch FP8 engine's scales
def _fp8_dit_output(source: ModelSource, amax) -> torch.Tensor:
    from vidtrt.runtime.fp8_engine import load_fp8_transformer

    c = source.config.transformer
    g = torch.Generator().manual_seed(3)
    inputs = dict(hidden_states=torch.randn(1, c.in_channels, 2, 8, 12, generator=g).bfloat16(),
                  timestep=torch.tensor([500.0]), encoder_attention_mask=torch.ones(1, 9, dtype=torch.int64),
                  encoder_hidden_states=torch.randn(1, 9, c.text_embed_dim, generator=g).bfloat16(),
                  pooled_projections=torch.randn(1, c.pooled_projection_dim, generator=g).bfloat16(),
                  guidance=torch.tensor([6000.0]).bfloat16())
    with torch.inference_mode():
        return load_fp8_transformer(source, "cpu", amax)(**inputs).float()


def test_torch_fp8_takes_static_scales_from_the_state(tiny_state, tmp_path, capsys):
    """`vidtrt run --precision fp8 --quantized DIR`: the FP8 GEMMs' scales come from the state (the DiT's output
    differs from dynamic scales) and the frames are HunyuanVideoPipeline.from_model(fp8_amax=state.amax)'s;
    --quantized without --precision fp8, or with another engine, is one line and exit 2."""
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    state = tiny_state[0]
    source = ModelSource.open("tiny")
    amax = QuantState.load(state, source).amax
    static, dynamic = _fp8_dit_output(source, amax), _fp8_dit_output(source, None)
    assert torch.isfinite(static).all() and (static - dynamic).abs().max() > 0

    out = tmp_path / "cat.npy"
    argv = ["run", "a cat walks on the grass", "--precision", "fp8", "--quantized", str(state),
            "--frames", "5", "--steps", "2", "--seed", "4", "-o", str(out), "--no-progress"]
    assert cli_main(argv) == 0, capsys.readouterr().err
    want = HunyuanVideoPipeline.from_model(source, precision="fp8", fp8_amax=amax).generate(
        "a cat walks on the grass", num_frames=5, num_inference_steps=2, seed=4)
    assert np.array_equal(np.load(out), want)

    for bad in (["--precision", "bf16"], ["--engine", "onnxruntime", "--artifacts", str(tmp_path)]):
        assert cli_main(["run", "a cat", "--quantized", str(state), "-o", str(out), *bad]) == 2
        err = capsys.readouterr().err.strip()
        assert "--quantized" in err and "\n" not in err, err
    assert cli_main(["build", "--engine", "onnxruntime", "--artifacts", str(tmp_path), "--quantized", str(state),
                     "--out", str(tmp_path / "repo")]) == 2
    assert "--quantized needs --precision fp8" in capsys.readouterr().err
    assert not (tmp_path / "repo").exists()


@pytest.mark.server
def test_server_torch_fp8_dit_uses_the_state(tiny_state, tmp_path):
    """`vidtrt build --precision fp8 --quantized DIR` (torch engine): the state is linked into the DiT model and
    the real tritonserver gives the in-process frames of the same state."""
    from vidtrt.client import VideoClient
    from vidtrt.export.repository import QUANT_SUBDIR, build_repository
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline
    from vidtrt.serving.server import TritonServer

    state = tiny_state[0]
    repo = build_repository("tiny", tmp_path / "repo", precision="fp8", quantized=state)
    assert (repo / "hunyuan_video_dit" / "1" / QUANT_SUBDIR / AMAX_FILE).is_file()
    source = ModelSource.open("tiny")
    request = dict(num_frames=5, num_inference_steps=2, seed=5)
    want = HunyuanVideoPipeline.from_model(source, precision="fp8", fp8_amax=QuantState.load(state, source).amax
                                           ).generate("a red car", **request)
    with TritonServer(repo, log_file=tmp_path / "server.log", exit_timeout_s=5, ready_timeout_s=600) as srv:
        got = VideoClient(srv.grpc_url).generate("a red car", **request)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # thread counts may differ
