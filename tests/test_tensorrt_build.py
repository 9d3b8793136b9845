"""TensorRT plans: `vidtrt build --engine tensorrt`, its plan manifests, the tensorrt_plan models and the
plan checks, driven up to every TensorRT call by the recording stand-in of tests/trt_standin.py, once per
emulated API surface (10.5 as in NGC 24.10, 10.12, 11.4). TensorRT itself cannot be installed here."""

from __future__ import annotations

import importlib
import json
import os
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from onnx_artifacts import tiny_bf16_artifacts
from trt_standin import calls, install

from vidtrt.config.specs import AxisRange, ComponentSpec, TensorSpec
from vidtrt.errors import EngineError
from vidtrt.export import tensorrt_build as tb
from vidtrt.runtime import tensorrt_plans as tp
from vidtrt.runtime.engines import TensorRTEngine

SURFACES = ("10.5", "10.12", "11")
H200 = ("NVIDIA H200", "9.0")


@pytest.fixture
def standin():
    """``standin(surface)`` puts the stand-in of that TensorRT release on sys.modules for this test; afterwards
    the real state ("no TensorRT") is back, trt_plugins included."""
    mp = pytest.MonkeyPatch()
    yield lambda surface: install(mp, surface)
    mp.undo()
    from vidtrt.kernels import trt_plugins

    importlib.reload(trt_plugins)


def _host(trt, gpu=H200):
    return tp.TensorRTHost(trt.__version__, *gpu)


# ------------------------------------------------------------------------------------ a small FP8 ONNX
TOY = ComponentSpec(
    name="toy",
    inputs=(TensorSpec("x", "float32", ("batch", "tokens", 8)), TensorSpec("mask", "int64", ("batch", "tokens"))),
    outputs=(TensorSpec("y", "float32", ("batch", "tokens", 8)),),
    axes={"batch": AxisRange(1, 1, 2), "tokens": AxisRange(1, 16, 64)},
    buckets=({"tokens": 16}, {"tokens": 32}, {"tokens": 64}),
)


def _fp8_onnx(path: Path, fp8: bool = True, plugin: bool = False, seed: int = 0) -> Path:
    """y = DQ(Q(x)) @ DQ(W8) * (mask > 0): float8e4m3fn Q/DQ at opset 21 (x per-tensor, W per-channel), external
    data; ``plugin``: one vidtrt plugin node in front (op ``attention``, namespace vidtrt, aot=1)."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    w_scale = (np.abs(w).max(axis=0) / 448.0).astype(np.float32)
    import ml_dtypes

    w8 = (w / w_scale).astype(ml_dtypes.float8_e4m3fn)
    inits = [numpy_helper.from_array(w_scale, "w_scale"),
             helper.make_tensor("w8", TensorProto.FLOAT8E4M3FN, [8, 8], w8.view(np.uint8).tobytes(), raw=True),
             numpy_helper.from_array(np.array(0.05, np.float32), "x_scale"),
             helper.make_tensor("zp", TensorProto.FLOAT8E4M3FN, [], [0])]
    nodes = []
    x = "x"
    if plugin:
        nodes.append(helper.make_node("attention", ["x", "x", "x", "mask"], ["xp"], domain="trt.plugins",
                                      plugin_namespace="vidtrt", plugin_version="1", aot=1))
        x = "xp"
    if fp8:
        nodes += [helper.make_node("QuantizeLinear", [x, "x_scale", "zp"], ["x8"]),
                  helper.make_node("DequantizeLinear", ["x8", "x_scale", "zp"], ["xq"])]
        nodes.append(helper.make_node("DequantizeLinear", ["w8", "w_scale"], ["wq"], axis=1))
    else:
        inits.append(numpy_helper.from_array(w, "wq"))
        nodes.append(helper.make_node("Identity", [x], ["xq"]))
    nodes += [helper.make_node("MatMul", ["xq", "wq"], ["xw"]),
              helper.make_node("Cast", ["mask"], ["maskf"], to=TensorProto.FLOAT),
              helper.make_node("Unsqueeze", ["maskf", "axis"], ["mask3"]),
              helper.make_node("Mul", ["xw", "mask3"], ["y"])]
    inits.append(numpy_helper.from_array(np.array([-1], np.int64), "axis"))
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "tokens", 8]),
         helper.make_tensor_value_info("mask", TensorProto.INT64, ["batch", "tokens"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "tokens", 8])], inits)
    opsets = [helper.make_opsetid("", 21)] + ([helper.make_opsetid("trt.plugins", 1)] if plugin else [])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 10
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
              location=path.name + ".data", size_threshold=60)  # w8 (64 bytes) external, the rest inline
    if not plugin:
        onnx.checker.check_model(str(path))
    return path


def test_small_fp8_onnx_runs_in_onnxruntime(tmp_path):
    """The test ONNX is a real FP8 graph: onnxruntime runs it and matches numpy's e4m3 rounding."""
    import ml_dtypes
    import onnxruntime as ort

    path = _fp8_onnx(tmp_path / "toy.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = TOY.example_inputs({"batch": 2, "tokens": 5}, seed=3)
    (y,) = sess.run(None, feeds)
    m = onnx.load(str(path))
    init = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
    xq = (feeds["x"] / 0.05).astype(ml_dtypes.float8_e4m3fn).astype(np.float32) * 0.05
    wq = init["w8"].astype(np.float32) * init["w_scale"]
    want = (xq @ wq) * feeds["mask"][..., None]
    np.testing.assert_allclose(y, want, rtol=1e-5, atol=1e-5)
    s = tb.inspect_onnx(path)
    assert (s.fp8_quantize, s.fp8_dequantize, s.opset, s.external_data) == (1, 2, 21, ["toy.onnx.data"])


# ------------------------------------------------------------------------------------ build_plan
@pytest.mark.parametrize("surface", SURFACES)
def test_fp8_plan_build_calls(surface, tmp_path, standin):
    trt = standin(surface)
    onnx_path = _fp8_onnx(tmp_path / "onnx" / "toy.onnx")
    cache = tmp_path / "timing.cache"
    cfg = tb.TensorRTBuildConfig(precision="fp8", timing_cache=cache, workspace_gib=2)
    plan = tmp_path / "plans" / "toy.plan"
    man = tb.build_plan(onnx_path, TOY, plan, cfg, model={"name": "toy", "fingerprint": "f" * 64}, trt=trt,
                        host=_host(trt), fp8_required=True)

    (flags,) = calls(trt, "create_network")
    ndf = trt.NetworkDefinitionCreationFlag
    if surface == "11":  # strongly typed by construction; the deprecated flag is not passed
        assert flags == (0,) and not hasattr(ndf, "EXPLICIT_BATCH") and not hasattr(trt.BuilderFlag, "FP8")
    else:
        assert flags == (1 << int(ndf.STRONGLY_TYPED),) == (2,)
    assert calls(trt, "set_flag") == []  # no precision flags: types come from the ONNX
    assert calls(trt, "parse_from_file") == [(str(onnx_path),)]
    profiles = [p for (p,) in calls(trt, "add_optimization_profile")]
    assert profiles == TOY.profiles() and len(profiles) == 3
    assert profiles[1]["x"] == ((1, 32, 8), (1, 32, 8), (2, 32, 8))  # bucket axis fixed, batch over its range
    assert calls(trt, "set_memory_pool_limit") == [(trt.MemoryPoolType.WORKSPACE, 2 << 30)]
    assert calls(trt, "create_timing_cache") == [(b"",)] and cache.read_bytes() == b"|entry"
    assert [a[1] for a in calls(trt, "set_timing_cache")] == [False]

    assert plan.is_file() and tp.manifest_path(plan).is_file()
    assert json.loads(tp.manifest_path(plan).read_text()) == json.loads(json.dumps(man))
    assert man["tensorrt_version"] == trt.__version__ and man["gpu"] == {"name": H200[0], "compute_capability": "9.0"}
    assert man["model"]["fingerprint"] == "f" * 64 and man["precision"] == "fp8" and man["builder_flags"] == []
    assert man["network_flags"] == ([] if surface == "11" else ["STRONGLY_TYPED"]) and man["strongly_typed"]
    assert (man["onnx"]["fp8_quantize"], man["onnx"]["fp8_dequantize"]) == (1, 2)
    assert man["profiles"] == [{n: [list(r) for r in rows] for n, rows in p.items()} for p in TOY.profiles()]

    # A second build reads the timing cache the first one saved.
    tb.build_plan(onnx_path, TOY, tmp_path / "plans" / "again.plan", cfg, model={"name": "toy", "fingerprint": "f"},
                  trt=trt, host=_host(trt), fp8_required=True)
    assert calls(trt, "create_timing_cache")[-1] == (b"|entry",) and cache.read_bytes() == b"|entry|entry"


@pytest.mark.parametrize("surface", SURFACES)
def test_plan_build_refusals(surface, tmp_path, standin):
    trt = standin(surface)
    model = {"name": "toy", "fingerprint": "f" * 64}
    plain = _fp8_onnx(tmp_path / "plain" / "toy.onnx", fp8=False)
    plan = tmp_path / "p" / "toy.plan"
    with pytest.raises(tb.TensorRTBuildError, match="needs an FP8 ONNX") as e:
        tb.build_plan(plain, TOY, plan, tb.TensorRTBuildConfig("fp8"), model=model, trt=trt, host=_host(trt),
                      fp8_required=True)
    assert "\n" not in str(e.value)
    with pytest.raises(tb.TensorRTBuildError, match="float32 weights"):
        tb.build_plan(plain, TOY, plan, tb.TensorRTBuildConfig("bf16"), model=model, trt=trt, host=_host(trt))
    other = ComponentSpec("toy", (TensorSpec("x", "float32", ("batch", "tokens", 8)),), TOY.outputs, TOY.axes)
    fp8 = _fp8_onnx(tmp_path / "fp8" / "toy.onnx")
    with pytest.raises(tb.TensorRTBuildError, match="I/O"):
        tb.build_plan(fp8, other, plan, tb.TensorRTBuildConfig("fp8"), model=model, trt=trt, host=_host(trt))
    (tmp_path / "fp8" / "toy.onnx.data").unlink()
    with pytest.raises(tb.TensorRTBuildError, match="external data"):
        tb.build_plan(fp8, TOY, plan, tb.TensorRTBuildConfig("fp8"), model=model, trt=trt, host=_host(trt))
    with pytest.raises(tb.TensorRTBuildError, match="precision"):
        tb.TensorRTBuildConfig("fp16").validate()
    assert not plan.exists() and calls(trt, "build_serialized_network") == []


@pytest.mark.parametrize("surface", SURFACES)
def test_plugin_nodes_register_the_aot_plugins(surface, tmp_path, standin):
    trt = standin(surface)
    path = _fp8_onnx(tmp_path / "o" / "toy.onnx", plugin=True)
    args = dict(model={"name": "toy", "fingerprint": "f"}, trt=trt, host=_host(trt), fp8_required=True)
    if surface == "10.5":  # no tensorrt.plugin in 10.5 (NGC 24.10)
        with pytest.raises(tb.TensorRTBuildError, match=r"no quickly deployable AOT plugins .*>= 10.9"):
            tb.build_plan(path, TOY, tmp_path / "t.plan", tb.TensorRTBuildConfig("fp8"), **args)
        return
    man = tb.build_plan(path, TOY, tmp_path / "t.plan", tb.TensorRTBuildConfig("fp8"), **args)
    from vidtrt.kernels import trt_plugins

    ids = [f"vidtrt::{n}" for n in trt_plugins.ALL_PLUGINS]
    assert man["plugins"] == ids and sorted(trt.plugin_registry) == sorted(ids)
    assert all({"desc", "autotune", "aot"} <= set(trt.plugin_registry[i]) for i in ids)
    first_parse = next(i for i, (n, _) in enumerate(trt.calls) if n == "parse_from_file")
    assert max(i for i, (n, _) in enumerate(trt.calls) if n.startswith("plugin.")) < first_parse
    ndf = trt.NetworkDefinitionCreationFlag
    want = (0 if surface == "11" else 1 << int(ndf.STRONGLY_TYPED)) | 1 << int(ndf.PREFER_AOT_PYTHON_PLUGINS)
    assert calls(trt, "create_network") == [(want,)]
    assert want == {"10.12": 0b1010, "11": 0b100}[surface]  # the releases' own enum values
    # What our exporter's plugin nodes carry (onnx_plugins.SCHEMAS) is what the registered plugins take.
    import inspect

    from vidtrt.kernels import onnx_plugins

    for op_name, schema in onnx_plugins.SCHEMAS.items():
        params = inspect.signature(trt.plugin_registry[f"vidtrt::{op_name}"]["desc"]).parameters.values()
        tensors = [p.name for p in params if p.annotation == "trtp.TensorDesc"]
        fields = {p.name for p in params if p.annotation != "trtp.TensorDesc"}
        assert tensors == [i for i, _ in schema["inputs"]] and fields == set(schema["attrs"]), op_name
    # The parser hands the node's other attributes to the plugin as fields: a field the plugin lacks fails.
    bad = onnx.load(str(path), load_external_data=False)
    next(n for n in bad.graph.node if n.op_type == "attention").attribute.append(helper.make_attribute("eps", 1e-6))
    onnx.save(bad, str(path))
    with pytest.raises(tb.TensorRTBuildError, match=r"ONNX parser rejects .*fields \[\], the node has 4 and \['eps'\]"):
        tb.build_plan(path, TOY, tmp_path / "u.plan", tb.TensorRTBuildConfig("fp8"), **args)


# ------------------------------------------------------------------------------------ plan checks / engine
@pytest.mark.parametrize("surface", SURFACES)
def test_engine_runs_a_plan_through_the_name_based_api(surface, tmp_path, standin):
    trt = standin(surface)
    onnx_path = _fp8_onnx(tmp_path / "o" / "toy.onnx")
    plan = tmp_path / "toy.plan"
    tb.build_plan(onnx_path, TOY, plan, tb.TensorRTBuildConfig("fp8"), model={"name": "toy", "fingerprint": "f"},
                  trt=trt, host=_host(trt), fp8_required=True)
    engine = TensorRTEngine(plan, TOY, device="cpu", trt=trt)
    assert engine.profiles[2]["x"] == ((1, 64, 8), (1, 64, 8), (2, 64, 8))
    for tokens, index in ((32, 1), (16, 0), (64, 2)):
        feeds = TOY.example_inputs({"batch": 2, "tokens": tokens}, seed=tokens)
        out = engine.run(feeds)
        assert engine.profile == index
        # The stand-in copies the input with the output's shape and dtype through the raw addresses.
        np.testing.assert_array_equal(out["y"], feeds["x"])
    switched = [a[0] for a in calls(trt, "set_optimization_profile_async")]
    assert switched == [1, 0, 2]
    assert calls(trt, "set_input_shape")[-2:] == [("x", (2, 64, 8)), ("mask", (2, 64))]
    with pytest.raises(EngineError, match="no optimisation profile"):
        engine.run(TOY.example_inputs({"batch": 2, "tokens": 20}))


def test_plan_from_another_tensorrt_or_gpu_is_refused(tmp_path, monkeypatch, standin):
    trt = standin("10.5")
    plan = tmp_path / "toy.plan"
    tb.build_plan(_fp8_onnx(tmp_path / "o" / "toy.onnx"), TOY, plan, tb.TensorRTBuildConfig("fp8"),
                  model={"name": "toy", "fingerprint": "f" * 64}, trt=trt, host=_host(trt), fp8_required=True)
    assert tp.check_plan(plan, tp.TensorRTHost("10.5.0.18", *H200), "f" * 64)["component"] == "toy"
    for host, why in ((tp.TensorRTHost("10.6.0", *H200), "another TensorRT version"),
                      (tp.TensorRTHost("11.4.0", *H200), "another TensorRT version"),
                      (tp.TensorRTHost("10.5.0", "NVIDIA H100 80GB HBM3", "9.0"), "another GPU"),
                      (tp.TensorRTHost("10.5.0", "NVIDIA L40S", "8.9"), "another GPU")):
        with pytest.raises(EngineError) as e:
            tp.check_plan(plan, host)
        msg = str(e.value)
        assert why in msg and "TensorRT 10.5.0 on NVIDIA H200 (sm_90)" in msg and host.describe() in msg
        assert "\n" not in msg and "rebuild" in msg
    with pytest.raises(EngineError, match="model config ffffffffffff, not 000000000000"):
        tp.check_plan(plan, tp.TensorRTHost("10.5.0", *H200), "0" * 64)
    # The engine refuses before TensorRT sees the plan (GPU path: the host comes from the machine).
    monkeypatch.setattr(tp, "gpu_identity", lambda device=0: ("NVIDIA L40S", "8.9"))
    n = len(trt.calls)
    with pytest.raises(EngineError, match="another GPU"):
        TensorRTEngine(plan, TOY, device="cuda", trt=trt)
    assert not [c for c, _ in trt.calls[n:] if c == "deserialize_cuda_engine"]
    tp.manifest_path(plan).unlink()
    with pytest.raises(EngineError, match="no build manifest"):
        tp.check_plan(plan, tp.TensorRTHost("10.5.0", *H200))


def test_libnvinfer_version_decoding(monkeypatch):
    class Lib10:
        def getInferLibVersion(self):  # noqa: N802 - the C symbol
            return 100500

    class Lib11:
        def getInferLibMajorVersion(self):  # noqa: N802
            return 11

        def getInferLibMinorVersion(self):  # noqa: N802
            return 4

        def getInferLibPatchVersion(self):  # noqa: N802
            return 1

    for lib, want in ((Lib10(), "10.5.0"), (Lib11(), "11.4.1")):
        monkeypatch.setattr(tp.ctypes, "CDLL", lambda name, lib=lib: lib)
        assert tp.libnvinfer_version() == want

    def missing(name):
        raise OSError(name)

    monkeypatch.setattr(tp.ctypes, "CDLL", missing)
    assert tp.libnvinfer_version() is None
    assert tp.version_key("10.5.0.18") == (10, 5, 0) == tp.version_key("10.5")


# ------------------------------------------------------------------------------------ vidtrt build
def test_without_tensorrt_build_is_one_line_exit_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from vidtrt.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises ImportError
    cache = tmp_path / "cache"
    monkeypatch.setenv("VIDTRT_CACHE", str(cache))
    for precision in ("bf16", "fp8"):
        rc = main(["build", "--engine", "tensorrt", "--precision", precision, "--model", "tiny",
                   "--out", str(tmp_path / "repo")])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and "TensorRT" in err and "nothing was written" in err, err
    assert sorted(os.listdir(tmp_path)) == []  # no repository, no work folder, no export, no tiny checkpoint
    rc = main(["build", "--engine", "tensorrt", "--precision", "fp32", "--out", str(tmp_path / "repo")])
    assert rc == 2 and "accepted ['bf16', 'fp8']" in capsys.readouterr().err


def _tiny_bf16_artifacts() -> Path:
    """The tiny model's bf16 ONNX (DiT, VAE tile, DiT probe), exported once per session into $VIDTRT_CACHE
    (tests/onnx_artifacts.py, which conftest.py starts making in the background)."""
    return tiny_bf16_artifacts()


def _parse_config(path: Path):
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2

    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


@pytest.mark.parametrize("surface", ("10.5", "11"))
def test_tensorrt_repository(surface, tmp_path, monkeypatch, standin):
    """`vidtrt build --engine tensorrt`: plans for the DiT and the VAE tile with one profile per spec bucket,
    tensorrt_plan configs that match the plans' I/O as Triton's TensorRT backend reads them."""
    from tritonclient.grpc import model_config_pb2 as mc

    from vidtrt.cli import main
    from vidtrt.serving.component_io import specs_for_triton
    from vidtrt.source.model_source import ModelSource

    artifacts = _tiny_bf16_artifacts()
    trt = standin(surface)
    monkeypatch.setattr(tb, "gpu_identity", lambda device=0: H200)
    out = tmp_path / "repo"
    rc = main(["build", "--engine", "tensorrt", "--precision", "bf16", "--model", "tiny", "--artifacts",
               str(artifacts), "--out", str(out), "--timing-cache", str(tmp_path / "t.cache")])
    assert rc == 0
    source = ModelSource.open("tiny")
    specs = specs_for_triton(source.config, sparse_input=False)
    record = json.loads((out / "vidtrt-repository.json").read_text())
    assert record["engine"] == "tensorrt" and record["precision"] == "bf16" and record["device"] == "cuda"
    assert record["tensorrt"]["tensorrt_version"] == trt.__version__

    parsed = [a[0] for a in calls(trt, "parse_from_file")]
    assert parsed == [str(artifacts / "dit.onnx"), str(artifacts / "vae_decoder_tile.onnx"),
                      str(artifacts / "dit_probe.onnx")]
    profiles = [p for (p,) in calls(trt, "add_optimization_profile")]
    n_dit, n_vae = len(specs["dit"].buckets), len(specs["vae_decoder"].buckets)
    assert profiles[:n_dit] == specs["dit"].profiles()
    assert profiles[n_dit:n_dit + n_vae] == specs["vae_decoder"].profiles()
    assert profiles[n_dit + n_vae:] == specs["dit_probe"].profiles() and len(specs["dit_probe"].buckets) == n_dit
    assert n_dit == len(source.specs(["dit"])["dit"].buckets) > 1

    runtime = trt.Runtime(trt.Logger())
    for model, spec in (("hunyuan_video_dit", specs["dit"]), ("hunyuan_video_vae_decoder", specs["vae_decoder"]),
                        ("hunyuan_video_dit_probe", specs["dit_probe"])):
        folder = out / model
        cfg = _parse_config(folder / "config.pbtxt")
        assert cfg.platform == "tensorrt_plan" and not cfg.backend and cfg.default_model_filename == "model.plan"
        assert cfg.max_batch_size == 0 and sorted(os.listdir(folder / "1")) == ["model.plan", "model.plan.json"]
        engine = runtime.deserialize_cuda_engine((folder / "1" / "model.plan").read_bytes())
        plan_io = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for entries, tensors, mode in ((cfg.input, spec.inputs, "INPUT"), (cfg.output, spec.outputs, "OUTPUT")):
            assert [e.name for e in entries] == [t.name for t in tensors]
            for e, t in zip(entries, tensors, strict=True):
                assert e.name in plan_io and engine.get_tensor_mode(e.name).name == mode
                want = {"FLOAT": mc.TYPE_FP32, "BF16": mc.TYPE_BF16, "INT64": mc.TYPE_INT64}
                assert e.data_type == want[engine.get_tensor_dtype(e.name).name]
                assert list(e.dims) == [d if isinstance(d, int) else -1 for d in t.shape]
        (group,) = cfg.instance_group
        assert group.kind == mc.ModelInstanceGroup.KIND_GPU and group.count == 1
        assert list(group.profile) == [str(i) for i in range(engine.num_optimization_profiles)]
        assert engine.num_optimization_profiles == len(spec.buckets)
        params = {k: v.string_value for k, v in cfg.parameters.items()}
        assert params["model_fingerprint"] == source.fingerprint and params["engine"] == "tensorrt"
        assert params["execution_context_allocation_strategy"] == "ON_PROFILE_CHANGE"
        man = tp.read_plan_manifest(folder / "1" / "model.plan")
        assert man["model"]["fingerprint"] == source.fingerprint and man["component"] == spec.name
    te = _parse_config(out / "hunyuan_video_text_encoder" / "config.pbtxt")
    assert te.backend == "python" and not te.platform
    assert {k: v.string_value for k, v in te.parameters.items()}["engine"] == "torch"
    assert (out / "hunyuan_video_text_encoder" / "1" / "model.py").is_file()
    bls = _parse_config(out / "hunyuan_video" / "config.pbtxt")
    assert {k: v.string_value for k, v in bls.parameters.items()}["dit_model"] == "hunyuan_video_dit"
    assert {k: v.string_value for k, v in bls.parameters.items()}["dit_probe_model"] == "hunyuan_video_dit_probe"

    # vidtrt serve's pre-flight: this machine's TensorRT / GPU against every plan's manifest.
    assert len(tp.check_repository_plans(out, tp.TensorRTHost(trt.__version__, *H200))) == 3
    with pytest.raises(EngineError, match="hunyuan_video_dit/1/model.plan was built for TensorRT"):
        tp.check_repository_plans(out, tp.TensorRTHost("10.7.0", *H200))


def test_serve_refuses_a_repository_built_for_another_machine(tmp_path, monkeypatch, capsys):
    from vidtrt.cli import main
    from vidtrt.serving import server

    model = tmp_path / "repo" / "hunyuan_video_dit"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text('name: "hunyuan_video_dit"\nplatform: "tensorrt_plan"\n')
    (model / "1" / "model.plan").write_bytes(b"plan")
    host = {"tensorrt_version": "10.5.0", "gpu": {"name": H200[0], "compute_capability": "9.0"}}
    tp.manifest_path(model / "1" / "model.plan").write_text(json.dumps({"format": tp.PLAN_MANIFEST_FORMAT, **host}))
    monkeypatch.setattr(server, "TritonServer", None)  # never reached
    # The pip-bundled tritonserver has no TensorRT backend.
    rc = main(["serve", "--repository", str(tmp_path / "repo")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "has no TensorRT backend" in err, err
    # An NGC-like tritonserver (bin/ next to backends/tensorrt/) on a machine with another TensorRT.
    ngc = tmp_path / "opt" / "tritonserver"
    (ngc / "bin").mkdir(parents=True)
    (ngc / "backends" / "tensorrt").mkdir(parents=True)
    (ngc / "bin" / "tritonserver").write_text("#!/bin/sh\n")
    (ngc / "bin" / "tritonserver").chmod(0o755)
    monkeypatch.setattr(tp, "host_identity", lambda trt=None, device=0: tp.TensorRTHost("11.4.0", *H200))
    rc = main(["serve", "--repository", str(tmp_path / "repo"), "--tritonserver", str(ngc / "bin" / "tritonserver")])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "another TensorRT version" in err, err


def test_bf16_onnx_is_the_torch_function_in_bf16():
    """The bf16 export (what --precision bf16 builds from): float32 I/O, bf16 weights, and -- upcast to float32
    so that onnxruntime's CPU provider runs it -- the torch module with the same bf16-rounded weights, at two
    shapes per component. The same check against the unrounded float32 weights fails: it sees the rounding."""
    import torch

    from vidtrt.export.bf16_onnx import verify_bf16_onnx
    from vidtrt.export.onnx_export import ExportError, verification_axes
    from vidtrt.runtime.engine_components import component_module
    from vidtrt.source.model_source import ModelSource

    artifacts = _tiny_bf16_artifacts()
    source = ModelSource.open("tiny")
    specs = source.specs(["dit", "vae_decoder_tile", "dit_probe"])
    for name in ("dit", "vae_decoder_tile", "dit_probe"):
        s = tb.inspect_onnx(artifacts / f"{name}.onnx")
        assert s.main_float_type == "bfloat16" and s.weight_bytes["bfloat16"] > 50 * s.weight_bytes.get("float32", 0)
        assert {dt for _, dt in s.inputs + s.outputs} <= {"float32", "int64"}
        rounded = component_module(source, name, torch.bfloat16).float().eval()
        axes = verification_axes(specs[name])
        assert verify_bf16_onnx(artifacts / f"{name}.onnx", rounded, specs[name], axes, tol=1e-4) < 1e-4
        with pytest.raises(ExportError, match="differs from torch"):
            verify_bf16_onnx(artifacts / f"{name}.onnx", component_module(source, name).eval(), specs[name], axes,
                             tol=1e-4)


def test_one_profile_over_the_range(tmp_path, standin):
    trt = standin("11")
    man = tb.build_plan(_fp8_onnx(tmp_path / "o" / "toy.onnx"), TOY, tmp_path / "t.plan",
                        tb.TensorRTBuildConfig("fp8", profiles="range"), model={"name": "toy", "fingerprint": "f"},
                        trt=trt, host=_host(trt), fp8_required=True)
    assert [p for (p,) in calls(trt, "add_optimization_profile")] == [TOY.profile()]
    assert man["profiles"] == [{"x": [[1, 1, 8], [1, 16, 8], [2, 64, 8]], "mask": [[1, 1], [1, 16], [2, 64]]}]
    with pytest.raises(tb.TensorRTBuildError, match="profiles"):
        tb.TensorRTBuildConfig("bf16", profiles="all").validate()


def test_docs_commands_parse():
    """docs/tensorrt.md's `vidtrt build / serve / generate` command lines are valid for today's CLI."""
    import re
    import shlex

    from vidtrt.cli import build_parser

    text = (Path(__file__).resolve().parents[1] / "docs" / "tensorrt.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, re.S)
    lines = [ln.strip() for b in blocks for ln in b.replace("\\\n", " ").splitlines()]
    commands = [shlex.split(ln.split("#")[0]) for ln in lines if ln.startswith("vidtrt ")]
    checked = [c for c in commands if c[1] in ("build", "serve", "generate")]
    assert len(checked) >= 4
    parser = build_parser()
    for argv in checked:
        args = parser.parse_args(argv[1:])
        if argv[1] == "build":
            assert args.engine == "tensorrt" and args.precision in ("bf16", "fp8")


def test_fp8_needs_an_fp8_dit(tmp_path):
    from vidtrt.source.model_source import ModelSource

    with pytest.raises(tb.TensorRTBuildError, match="--precision fp8 needs the FP8 DiT ONNX") as e:
        tb.onnx_sources(ModelSource.open("tiny"), "fp8", tmp_path / "work")
    assert "\n" not in str(e.value) and not (tmp_path / "work").exists()
