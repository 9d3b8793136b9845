"""ONNX plugin flavour: graphs carry one TensorRT plugin node per fused op (node / attribute layout),
agree on shapes with the decomposed flavour, and compute the same thing: ONNX Runtime runs the
plugin graph with the plugins' reference functions attached and matches the decomposed graph."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch.export import Dim

from vidtrt.kernels import onnx_plugins as op
from vidtrt.kernels.reference import attention_reference, cosine_similarity, qk_norm_rope_reference
from vidtrt.models import attention as attn_api
from vidtrt.models import rope as rope_api
from vidtrt.models.transformer import RMSNorm

INT32 = onnx.TensorProto.INT32


class TinyAttentionBlock(torch.nn.Module):
    """qkv projection -> the DiT's qk_norm_rope and attention hooks -> output projection."""

    def __init__(self, heads: int = 2, head_dim: int = 16):
        super().__init__()
        c = heads * head_dim
        self.h, self.d = heads, head_dim
        self.qkv = torch.nn.Linear(c, 3 * c)
        self.norm_q, self.norm_k = RMSNorm(head_dim), RMSNorm(head_dim)
        self.proj = torch.nn.Linear(c, c)

    def forward(self, x, cos, sin, key_lengths):
        q, k, v = self.qkv(x).unflatten(-1, (3, self.h, self.d)).unbind(2)
        q, k = rope_api.qk_norm_rope(q, k, self.norm_q, self.norm_k, cos, sin, cos.shape[0])
        return self.proj(attn_api.attention(q, k, v, key_lengths).flatten(2))


def _block_inputs(b=2, n=10, text=4):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(b, n + text, 32, generator=g)
    ang = torch.rand(n, 8, generator=g) * 3
    cos, sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
    kl = torch.tensor([n + text, n + 2][:b], dtype=torch.int32)
    return x, cos, sin, kl


def _block_dyn(text=4):
    bd, nd = Dim("B", min=1, max=64), Dim("n_img", min=1, max=100_000)
    return {"x": {0: bd, 1: nd + text}, "cos": {0: nd}, "sin": {0: nd}, "key_lengths": {0: bd}}


def _ort_run(model: onnx.ModelProto, feeds: dict) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC  # FP8 graphs (toolchain notes)
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, {i.name: feeds[i.name] for i in sess.get_inputs()})


def _shape(vi) -> list:
    return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]


def _value_infos(model) -> dict:
    vis = {v.name: v for v in list(model.graph.value_info) + list(model.graph.input) + list(model.graph.output)}
    return vis


@pytest.fixture(scope="module")
def block():
    torch.manual_seed(0)
    return TinyAttentionBlock().eval()


@pytest.fixture(scope="module")
def block_models(block):
    args = _block_inputs()
    return {fl: op.export_onnx(block, args, fl, dynamic_shapes=_block_dyn()) for fl in op.FLAVOURS}


def test_plugin_node_layout(block_models):
    dec, plug, plug8 = (block_models[f] for f in op.FLAVOURS)
    assert not op.plugin_nodes(dec) and any(n.op_type == "Softmax" for n in dec.graph.node)
    assert [n.op_type for n in op.plugin_nodes(plug)] == ["qk_norm_rope", "attention"]
    assert not any(n.op_type == "Softmax" for n in plug.graph.node)  # attention is not decomposed
    assert [n.op_type for n in op.plugin_nodes(plug8)] == ["qk_norm_rope", "attention_fp8"]
    for model in (plug, plug8):
        assert any(o.domain == op.PLUGIN_DOMAIN and o.version == 1 for o in model.opset_import)
        vis = _value_infos(model)
        for node in op.plugin_nodes(model):
            attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
            assert attrs["plugin_namespace"] == b"vidtrt" and attrs["plugin_version"] == b"1" and attrs["aot"] == 1
            sch = op.SCHEMAS[node.op_type]
            assert len(node.input) == len(sch["inputs"]) and len(node.output) == len(sch["outputs"])
            if node.op_type == "qk_norm_rope":
                assert set(attrs) == {"eps", "plugin_namespace", "plugin_version", "aot"}
                assert attrs["eps"] == pytest.approx(1e-6)
                q, k, cos = (vis[node.input[i]] for i in (0, 1, 4))
                assert _shape(q) == _shape(k) == ["B", "n_img + 4", 2, 16] and _shape(cos) == ["n_img", 16]
                for out in node.output:
                    assert _shape(vis[out]) == _shape(q)
            else:
                kl = vis[node.input[-1]]
                assert kl.type.tensor_type.elem_type == INT32 and _shape(kl) == ["B"]
                assert _shape(vis[node.output[0]]) == ["B", "n_img + 4", 2, 16]
            if node.op_type == "attention_fp8":
                q8, v8t, qs, vs = (vis[node.input[i]] for i in (0, 2, 3, 5))
                assert q8.type.tensor_type.elem_type == onnx.TensorProto.FLOAT8E4M3FN
                # tokens padded to a multiple of 16 in-graph: n_img + 4 + (-(n_img + 4) mod 16)
                assert _shape(v8t)[:3] == ["B", 2, 16] and "PythonMod(-n_img - 4, 16)" in _shape(v8t)[3]
                assert _shape(qs) == ["B", 2] and _shape(vs) == ["B", 2, 16]


def test_flavours_agree_on_shapes(block_models):
    shapes = {fl: [_shape(o) for o in m.graph.output] for fl, m in block_models.items()}
    assert shapes["decomposed"] == shapes["plugin"] == shapes["plugin-fp8"] == [["B", "n_img + 4", 32]]
    ins = {fl: [(i.name, _shape(i)) for i in m.graph.input] for fl, m in block_models.items()}
    assert ins["decomposed"] == ins["plugin"] == ins["plugin-fp8"]


def test_plugin_graphs_compute_the_same(block, block_models):
    x, cos, sin, kl = _block_inputs()
    with torch.no_grad():
        ref = block(x, cos, sin, kl).numpy()
    feeds = {"x": x.numpy(), "cos": cos.numpy(), "sin": sin.numpy(), "key_lengths": kl.numpy()}
    dec = _ort_run(block_models["decomposed"], feeds)[0]
    plug = _ort_run(op.attach_reference_functions(block_models["plugin"]), feeds)[0]
    assert np.abs(dec - ref).max() < 1e-5
    assert np.abs(plug - dec).max() < 1e-5
    plug8 = _ort_run(op.attach_reference_functions(block_models["plugin-fp8"]), feeds)[0]
    assert cosine_similarity(torch.from_numpy(plug8), torch.from_numpy(ref)) >= 0.995
    with op.plugin_flavour("plugin-fp8"), torch.no_grad():  # eager custom ops = the same graph
        eager8 = block(x, cos, sin, kl).numpy()
    assert np.abs(plug8 - eager8).max() < 1e-3
    # other sizes through the same dynamic graph
    x2, cos2, sin2, kl2 = _block_inputs(b=1, n=7)
    feeds2 = {"x": x2.numpy(), "cos": cos2.numpy(), "sin": sin2.numpy(), "key_lengths": kl2.numpy()}
    out2 = _ort_run(op.attach_reference_functions(block_models["plugin"]), feeds2)[0]
    with torch.no_grad():
        assert np.abs(out2 - block(x2, cos2, sin2, kl2).numpy()).max() < 1e-5


@pytest.mark.parametrize("flavour", ["plugin", "plugin-fp8"])
def test_plugin_graph_of_real_head_dim(flavour):
    """3 heads of 64 (the reference functions are traced with other sizes): onnxruntime on the plugin graph =
    the torch module (a 1/sqrt(16) softmax scale baked into the functions made this wrong)."""
    torch.manual_seed(1)
    blk = TinyAttentionBlock(heads=3, head_dim=64).eval()
    g = torch.Generator().manual_seed(2)
    b, n, text = 2, 10, 4
    x = torch.randn(b, n + text, 3 * 64, generator=g)
    ang = torch.rand(n, 32, generator=g) * 3
    cos, sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
    kl = torch.tensor([n + text, n + 2], dtype=torch.int32)
    model = op.export_onnx(blk, (x, cos, sin, kl), flavour, dynamic_shapes=_block_dyn())
    with op.plugin_flavour(flavour), torch.no_grad():  # the eager custom ops (torch references on CPU)
        ref = blk(x, cos, sin, kl).numpy()
    feeds = {"x": x.numpy(), "cos": cos.numpy(), "sin": sin.numpy(), "key_lengths": kl.numpy()}
    out = _ort_run(op.attach_reference_functions(model), feeds)[0]
    assert np.abs(out - ref).max() < (1e-5 if flavour == "plugin" else 1e-3)


def test_custom_ops_eager_cpu():
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 9, 2, 16, generator=g) for _ in range(3))
    w = torch.rand(16, generator=g) + 0.5
    ang = torch.rand(6, 8, generator=g)
    cos, sin = ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)
    kl = torch.tensor([9, 5], dtype=torch.int32)
    qo, ko = torch.ops.vidtrt.qk_norm_rope(q, k, w, w, cos, sin, 1e-6)
    qr, kr = qk_norm_rope_reference(q, k, w, w, cos, sin, 6)
    assert torch.equal(qo, qr) and torch.equal(ko, kr)
    out = torch.ops.vidtrt.attention(q, k, v, kl)
    assert (out.double() - attention_reference(q, k, v, kl)).abs().max().item() < 1e-5
    sc = torch.full((2,), 0.02)
    q8, k8 = torch.ops.vidtrt.qk_norm_rope_fp8(q, k, w, w, cos, sin, sc, sc, 1e-6)
    assert q8.dtype == torch.float8_e4m3fn
    assert torch.equal(q8.float(), qk_norm_rope_reference(q, k, w, w, cos, sin, 6, fp8_scale=sc)[0].float())


def test_flavour_switch_restores_and_rejects():
    before = (attn_api.get_backend(), rope_api.get_qk_norm_rope_impl())
    with op.plugin_flavour("plugin"):
        assert attn_api.get_backend() == "trt-plugin" and rope_api.get_qk_norm_rope_impl() is op.qk_norm_rope_plugin
        assert (attn_api._current, rope_api._qk_norm_rope_impl) == before  # the process-wide defaults stay
    assert (attn_api.get_backend(), rope_api.get_qk_norm_rope_impl()) == before
    with pytest.raises(ValueError, match="flavour='fp4'"):
        with op.plugin_flavour("fp4"):
            pass
    assert {"trt-plugin", "trt-plugin-fp8"} <= set(attn_api.available_backends())


@pytest.mark.slow
def test_tiny_dit_plugin_flavour():
    """The real DiT (tiny config): 2 norm+RoPE nodes (dual + single block) and 3 attention nodes
    (+ the token refiner); the symbolic output shape of the decomposed export ([B, 16, T, 2*H, 2*W]);
    ONNX Runtime on the plugin graph (reference functions attached) equals torch eager. (The
    decomposed DiT export is covered by the exporter's own tests; the tiny block above compares
    the two flavours side by side.)"""
    from vidtrt.config.model_config import tiny_config
    from vidtrt.models.transformer import HunyuanVideoTransformer3D

    torch.manual_seed(0)
    cfg = tiny_config().transformer
    model = HunyuanVideoTransformer3D(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.05)
    b, text = 2, 7
    mask = torch.ones(b, text, dtype=torch.int64)
    mask[1, 4:] = 0
    args = (torch.randn(b, 16, 2, 4, 6), torch.tensor([500.0, 300.0]), torch.randn(b, text, cfg.text_embed_dim),
            mask, torch.randn(b, cfg.pooled_projection_dim), torch.tensor([6000.0, 6000.0]))  # fmt: skip
    bd, ld = Dim("B", max=8), Dim("L", min=2, max=256)
    dyn = ({0: bd, 2: Dim("T", max=40), 3: 2 * Dim("H", max=90), 4: 2 * Dim("W", max=90)}, {0: bd},
           {0: bd, 1: ld}, {0: bd, 1: ld}, {0: bd}, {0: bd})  # fmt: skip
    plug = op.export_onnx(model, args, "plugin", dynamic_shapes=dyn)
    kinds = sorted(n.op_type for n in op.plugin_nodes(plug))
    assert kinds == ["attention"] * 3 + ["qk_norm_rope"] * 2
    assert not any(n.op_type == "Softmax" for n in plug.graph.node)
    assert _shape(plug.graph.output[0]) == ["B", 16, "T", "2*H", "2*W"]
    with torch.no_grad():
        ref = model(*args).numpy()
    feeds = {i.name: a.numpy() for i, a in zip(plug.graph.input, args, strict=True)}
    out_plug = _ort_run(op.attach_reference_functions(plug), feeds)[0]
    assert np.abs(out_plug - ref).max() < 1e-4
