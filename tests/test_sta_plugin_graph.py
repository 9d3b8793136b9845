"""The sliding-tile (STA) plugin graph of the DiT (vidtrt.export.sta_onnx): the spec's extra inputs, the
plugin nodes, onnxruntime (plugins' reference functions attached) against the torch sparse DiT (the
``triton-sta`` backend in the Triton interpreter: other block sizes, the kernel, the torch tile order) on
several shapes and steps, the host-side inputs, and the TensorRT build / plan runner up to the TensorRT calls
(tests/trt_standin.py)."""

from __future__ import annotations

import dataclasses
import importlib
import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from trt_standin import calls, install

from vidtrt.config.model_config import tiny_config
from vidtrt.config.sparse_attention import SparseAttentionConfig, SparseStep, sparse_step, step_schedule
from vidtrt.config.specs import dit_spec
from vidtrt.errors import ConfigError, EngineError
from vidtrt.kernels import onnx_plugins
from vidtrt.kernels.reference import cosine_similarity
from vidtrt.models.attention import use_backend
from vidtrt.runtime.sta_inputs import StaInputs
from vidtrt.source.model_source import ModelSource

TILE = (1, 8, 16)  # 128 tokens: one 128-row query block, two 64-row key blocks per tile
# block 0 (dual-stream): one window; block 1 (single-stream): one window per head
LAYER_WINDOWS = ((1, 1, 1), ((2, 1, 1), (1, 1, 2)))


@pytest.fixture(scope="module")
def sta_model(tmp_path_factory):
    """The tiny checkpoint with 128-token tiles and two layer windows (vidtrt.json), its STA graphs exported:
    fp32 with reference functions (onnxruntime), the FP8 flavour likewise, bf16 without (TensorRT). The three
    traces and five reference functions take ~120 s on the 2-core machine (454 s at load 9): ``slow``."""
    from vidtrt.export.sta_onnx import export_sta_dit

    root = tmp_path_factory.mktemp("sta")
    folder = root / "model"
    shutil.copytree(ModelSource.open("tiny").folder, folder)
    cfg = json.loads((folder / "vidtrt.json").read_text())
    cfg["sparse_attention"] = {"tile": list(TILE), "window": [1, 1, 1],
                               "layer_windows": [list(LAYER_WINDOWS[0]), [list(w) for w in LAYER_WINDOWS[1]]],
                               "start_step": 1}
    (folder / "vidtrt.json").write_text(json.dumps(cfg))
    source = ModelSource.open(folder)
    out = {"source": source, "fp32": root / "fp32", "fp8": root / "fp8", "bf16": root / "bf16"}
    export_sta_dit(source, out["fp32"], "plugin-sta", reference=True)
    export_sta_dit(source, out["fp8"], "plugin-sta-fp8", reference=True)
    export_sta_dit(source, out["bf16"], "plugin-sta", dtype=torch.bfloat16)
    return out


def _feeds(config, t, h, w, batch, text, seed):
    """The DiT's own inputs (the second sample's text 3 tokens shorter)."""
    return dit_spec(config).example_inputs({"batch": batch, "latent_frames": t, "latent_height": h,
                                            "latent_width": w, "text_length": text}, seed=seed,
                                           lengths=[text, text - 3][:batch])


def _torch_sparse(source, feeds, step):
    """The torch sparse DiT: the triton-sta backend (Triton interpreter, 32 x 32 blocks) in the torch tile order."""
    dit = source.load_transformer().eval()
    names = dit_spec(source.config).input_names
    with torch.no_grad(), use_backend("triton-sta"), sparse_step(step):
        return dit(*(torch.from_numpy(feeds[n]) for n in names)).numpy()


def _rel(a, b):
    return float(np.abs(a.astype(np.float64) - b).max() / np.abs(b).max())


# ------------------------------------------------------------------------------------------ spec
def test_sta_spec_inputs_axes_and_buckets():
    cfg = dataclasses.replace(tiny_config(), sparse_attention=SparseAttentionConfig(
        tile=TILE, window=(1, 1, 1), layer_windows=(LAYER_WINDOWS[0], LAYER_WINDOWS[1]))).validate()
    plain, spec = dit_spec(cfg), dit_spec(cfg, sparse=True)
    extra = [t.name for t in spec.inputs[len(plain.inputs):]]
    assert spec.input_names[: len(plain.inputs)] == plain.input_names and spec.name == "dit"
    assert extra == ["sta_tile_rows", "sta_kv_end", "sta_kv_idx_0", "sta_kv_cnt_0", "sta_kv_idx_1", "sta_kv_cnt_1"]
    assert spec.input("sta_kv_idx_1").shape == (2, "sta_q_blocks", "sta_max_blocks_1")  # a window per head
    # one window for all heads: one layout, read by every head (no copy per head)
    assert spec.input("sta_kv_idx_0").shape == (1, "sta_q_blocks", "sta_max_blocks_0")
    assert spec.input("sta_kv_cnt_0").shape == (1, "sta_q_blocks", 2)
    assert [spec.input(n).dtype for n in extra] == ["int64"] + ["int32"] * 5
    # max latent 9 x 32 x 32 -> 9 x 16 x 16 tokens -> 9 x 2 x 1 tiles of 128 rows
    assert spec.axes["sta_rows"].max == 18 * 128 and spec.axes["sta_rows"].multiple == 128
    assert spec.axes["sta_max_blocks_0"].max == spec.axes["sta_k_blocks"].max == -(-(18 * 128 + 32) // 64)
    assert len(spec.buckets) == len(plain.buckets)
    for b, p in zip(spec.buckets, spec.profiles(), strict=True):  # sta_rows fixed per bucket, blocks ranging
        assert p["sta_tile_rows"][0] == p["sta_tile_rows"][2] == (b["sta_rows"],)
        assert p["sta_kv_idx_0"][0] == (1, spec.axes["sta_q_blocks"].min, 1)
        assert p["sta_kv_idx_0"][2] == (1, spec.axes["sta_q_blocks"].max, spec.axes["sta_k_blocks"].max)
    with pytest.raises(ConfigError, match=r"tile \(1, 4, 4\) has 16 tokens; the STA plugin graph accepts a multiple "
                                          r"of 128") as e:
        dit_spec(tiny_config(), sparse=True)
    assert "\n" not in str(e.value)


def test_host_inputs_per_shape_and_step():
    cfg = dataclasses.replace(tiny_config(), sparse_attention=SparseAttentionConfig(
        tile=TILE, window=(1, 1, 1), layer_windows=(LAYER_WINDOWS[0], LAYER_WINDOWS[1]))).validate()
    sta, spec = StaInputs(cfg), dit_spec(cfg, sparse=True)
    shape = (1, 16, 2, 20, 32)  # -> 2 x 10 x 16 tokens, 2 x 2 x 1 tiles (the h edge cut): 512 rows
    dense = sta.feeds(shape, 9, None)
    assert set(dense) == set(spec.input_names[len(dit_spec(cfg).inputs):])
    rows = dense["sta_tile_rows"]
    assert rows.shape == (512,) and sorted(rows[rows < 320]) == list(range(320)) and (rows == 320).sum() == 512 - 320
    nkb = -(-(512 + 9) // 64)
    assert dense["sta_kv_end"].shape == (nkb,) and dense["sta_kv_idx_0"].shape[:2] == (1, -(-(512 + 9) // 128))
    assert dense["sta_kv_idx_1"].shape[0] == dense["sta_kv_cnt_1"].shape[0] == 2  # per-head group: H layouts
    for name, arr in dense.items():
        assert arr.shape == tuple(d if isinstance(d, int) else arr.shape[i]
                                  for i, d in enumerate(spec.input(name).shape)), name
    # dense step: every non-empty key block listed: per frame tile (0, 0) (128 tokens: two full blocks), tile
    # (1, 0) (32 tokens: one partial block, one empty), then the text block
    assert dense["sta_kv_cnt_0"][0, 0].tolist() == [4, 7] and dense["sta_kv_idx_0"].shape[2] == 7
    step = SparseStep(TILE, (LAYER_WINDOWS[0], LAYER_WINDOWS[1]))
    sparse = sta.feeds(shape, 9, step)
    # window (1, 1, 1): query tile 0 sees its own two blocks and the text block (text queries still see all)
    assert sparse["sta_kv_cnt_0"][0, 0].tolist() == [2, 3] and sparse["sta_kv_cnt_0"][0, -1].tolist() == [4, 7]
    assert not np.array_equal(sparse["sta_kv_cnt_1"][0], sparse["sta_kv_cnt_1"][1])  # per-head windows
    assert sta.feeds(shape, 9, step)["sta_kv_idx_0"] is sparse["sta_kv_idx_0"]  # cached per shape and window
    # the shared-layout group given the same window per head: that one layout; different ones: refused
    same = sta.feeds(shape, 9, SparseStep(TILE, ((LAYER_WINDOWS[0],) * 2, LAYER_WINDOWS[1])))
    assert np.array_equal(same["sta_kv_idx_0"], sparse["sta_kv_idx_0"]) and same["sta_kv_idx_0"].shape[0] == 1
    with pytest.raises(EngineError, match=r"one window per head; .* accepted one window for all heads"):
        sta.feeds(shape, 9, SparseStep(TILE, (((1, 1, 1), (2, 1, 1)), LAYER_WINDOWS[1])))
    with pytest.raises(EngineError, match=r"blocks \[0\] .*|tile"):
        sta.feeds(shape, 9, SparseStep((1, 4, 4), step.windows))
    one = StaInputs(dataclasses.replace(cfg, sparse_attention=SparseAttentionConfig(tile=TILE, window=(1, 1, 1))))
    with pytest.raises(EngineError, match=r"blocks \[0, 1\] different windows") as e:
        one.feeds(shape, 9, step)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------ the graph
def _plugin_counts(path):
    model = onnx.load(str(path), load_external_data=False)
    kinds = sorted(n.op_type for n in onnx_plugins.plugin_nodes(model))
    return {k: kinds.count(k) for k in set(kinds)}, model


@pytest.mark.slow
def test_plugin_nodes_and_inputs(sta_model):
    counts, model = _plugin_counts(sta_model["fp32"] / "dit_sta.onnx")
    # 1 dual + 1 single block: their joint attention block-sparse, the token refiner's dense
    assert counts == {"attention_sta": 2, "attention": 1, "qk_norm_rope": 2}
    assert not any(n.op_type == "Softmax" for n in model.graph.node)
    spec = dit_spec(sta_model["source"].config, sparse=True)
    assert [i.name for i in model.graph.input] == spec.input_names
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert dims["sta_kv_idx_1"] == [2, "sta_q_blocks", "sta_max_blocks_1"] and dims["sta_tile_rows"] == ["sta_rows"]
    assert dims["sta_kv_idx_0"] == [1, "sta_q_blocks", "sta_max_blocks_0"]  # one window: one layout for all heads
    # the tile order: one Gather in (image tokens), one ScatterND out; layouts reach the plugin nodes directly
    sta_nodes = [n for n in model.graph.node if n.op_type == "attention_sta"]
    assert {tuple(n.input[4:]) for n in sta_nodes} == {("sta_kv_idx_0", "sta_kv_cnt_0", "sta_kv_end"),
                                                      ("sta_kv_idx_1", "sta_kv_cnt_1", "sta_kv_end")}
    assert sum(n.op_type == "ScatterND" for n in model.graph.node) == 1
    counts8, model8 = _plugin_counts(sta_model["fp8"] / "dit_sta_fp8.onnx")
    assert counts8 == {"attention_sta_fp8": 2, "attention_fp8": 1, "qk_norm_rope": 2}
    assert {f.name for f in model8.functions} == set(counts8)  # reference functions attached
    counts16, model16 = _plugin_counts(sta_model["bf16"] / "dit_sta.onnx")
    assert counts16 == counts and not model16.functions  # the TensorRT file carries no reference functions


# (latent T', H', W'), batch, text tokens, step: the config's layer windows / dense / one window for all
CASES = [((3, 8, 12), 2, 7, "config"), ((1, 12, 8), 1, 5, "dense"), ((2, 20, 32), 2, 9, "request")]


@pytest.mark.slow
@pytest.mark.parametrize("latent, batch, text, which", CASES)
def test_onnxruntime_matches_the_torch_sparse_dit(sta_model, latent, batch, text, which):
    """onnxruntime on the STA graph (reference functions) through the engine component that makes the host inputs
    vs the torch DiT with the triton-sta backend: float32, max |diff| / max |ref| <= STA_VERIFY_TOL (1e-4)."""
    from vidtrt.export.sta_onnx import STA_VERIFY_TOL
    from vidtrt.runtime.engine_components import engine_dit

    source = sta_model["source"]
    cfg, tc = source.config, source.config.transformer
    n_layers = tc.num_layers + tc.num_single_layers
    step = {"config": SparseStep(TILE, cfg.sparse_attention.layer_window_list(n_layers)), "dense": None,
            "request": step_schedule(cfg.sparse_attention, n_layers, "1,1,2", "0:", 4)(0)}[which]
    feeds = _feeds(cfg, *latent, batch, text, seed=len(CASES) + latent[0])
    den = engine_dit(source, "onnxruntime", sta_model["fp32"], device="cpu")
    assert den.sta is not None
    with sparse_step(step):
        got = den.run(feeds)["velocity"]
    want = _torch_sparse(source, feeds, step)
    assert got.shape == want.shape == feeds["hidden_states"].shape
    assert _rel(got, want) <= STA_VERIFY_TOL
    if which != "dense":  # the sparsity is seen: dense attention gives another velocity
        dense = _torch_sparse(source, feeds, None)
        assert _rel(dense, want) > 100 * STA_VERIFY_TOL


@pytest.mark.slow
def test_fp8_flavour_matches_its_torch_twin(sta_model):
    """plugin-sta-fp8 in onnxruntime vs the same graph in torch eager (StaPluginDiT, the plugin ops' CPU
    references) and vs the float32 sparse DiT (cosine >= 0.99: FP8 rounding)."""
    from vidtrt.export.sta_onnx import example_feeds, sta_module
    from vidtrt.runtime.engine_components import engine_dit

    source = sta_model["source"]
    cfg = source.config
    spec = dit_spec(cfg, sparse=True)
    step = SparseStep(TILE, cfg.sparse_attention.layer_window_list(2))
    feeds = _feeds(cfg, 2, 20, 32, 2, 9, seed=7)
    with sparse_step(step):
        got = engine_dit(source, "onnxruntime", sta_model["fp8"], device="cpu").run(feeds)["velocity"]
    full = {**feeds, **StaInputs(cfg).feeds(feeds["hidden_states"].shape, 9, step)}
    module = sta_module(source.load_transformer(), cfg, spec).eval()
    with onnx_plugins.plugin_flavour("plugin-sta-fp8"), torch.no_grad():
        eager = module(*(torch.from_numpy(np.array(full[n])) for n in spec.input_names)).numpy()
    assert _rel(got, eager) < 1e-3
    want = _torch_sparse(source, feeds, step)
    assert cosine_similarity(torch.from_numpy(got), torch.from_numpy(want)) >= 0.99
    assert example_feeds(cfg, spec)["sta_kv_idx_0"].shape[2] >= 2


# ------------------------------------------------------------------------------------------ TensorRT
@pytest.fixture
def standin():
    mp = pytest.MonkeyPatch()
    yield lambda surface: install(mp, surface)
    mp.undo()
    from vidtrt.kernels import trt_plugins

    importlib.reload(trt_plugins)


@pytest.mark.slow
@pytest.mark.parametrize("surface", ["10.12", "11"])
def test_tensorrt_build_and_plan_runner(sta_model, standin, surface, tmp_path):
    """The bf16 STA graph builds against the stand-in: the vidtrt plugins (attention_sta among them) registered
    before parsing, one profile per bucket with sta_rows fixed and the block axes over their range, int32
    layout I/O; the plan runs through TensorRTEngine fed by the same host inputs (profile per request shape)."""
    from vidtrt.export import tensorrt_build as tb
    from vidtrt.runtime import tensorrt_plans as tp
    from vidtrt.runtime.engine_components import EngineDenoiser
    from vidtrt.runtime.engines import TensorRTEngine

    trt = standin(surface)
    source = sta_model["source"]
    spec = dit_spec(source.config, sparse=True)
    host = tp.TensorRTHost(trt.__version__, "NVIDIA H200", "9.0")
    model = {"name": source.config.name, "fingerprint": source.fingerprint}
    plan = tmp_path / "dit.plan"
    man = tb.build_plan(sta_model["bf16"] / "dit_sta.onnx", spec, plan, tb.TensorRTBuildConfig("bf16"),
                        model=model, trt=trt, host=host)
    assert "vidtrt::attention_sta" in man["plugins"] and man["onnx"]["plugin_nodes"].count("attention_sta") == 2
    assert "PREFER_AOT_PYTHON_PLUGINS" in man["network_flags"]
    first_parse = next(i for i, (n, _) in enumerate(trt.calls) if n == "parse_from_file")
    assert max(i for i, (n, _) in enumerate(trt.calls) if n.startswith("plugin.")) < first_parse
    shapes = [c for c in calls(trt, "set_shape") if c[0] == "sta_kv_idx_0"]
    assert len(shapes) == len(spec.buckets) and all(c[1][2] == 1 and c[3][2] == spec.axes["sta_k_blocks"].max
                                                    for c in shapes)
    # a file with reference functions is for onnxruntime only
    with pytest.raises(tb.TensorRTBuildError, match="reference functions"):
        tb.build_plan(sta_model["fp32"] / "dit_sta.onnx", spec, tmp_path / "x.plan", tb.TensorRTBuildConfig("bf16"),
                      model=model, trt=trt, host=host)
    engine = TensorRTEngine(plan, spec, device="cpu", trt=trt)
    den = EngineDenoiser(engine, (), StaInputs(source.config))
    feeds = _feeds(source.config, 3, 8, 12, 2, 7, seed=3)
    with sparse_step(SparseStep(TILE, source.config.sparse_attention.layer_window_list(2))):
        out = den.run(feeds)["velocity"]
    assert out.shape == feeds["hidden_states"].shape
    set_shapes = dict((c[0], c[1]) for c in calls(trt, "set_input_shape"))
    assert set_shapes["sta_tile_rows"] == (384,) and set_shapes["sta_kv_idx_1"][:2] == (2, 4)
    bucket = spec.buckets[engine.select_profile({n: set_shapes[n] for n in spec.input_names})]
    assert (bucket["latent_frames"], bucket["latent_height"], bucket["latent_width"]) == (3, 8, 12)
