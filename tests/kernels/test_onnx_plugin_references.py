"""The plugins' ONNX reference functions (``onnx_plugins.reference_functions``) in onnxruntime, one plugin node
per graph, against the torch references (vidtrt.kernels.reference, sparse_layout) over head dims, head counts,
eps, dtypes and layouts shared by all heads: the functions are traced from a small example (head dim 16, 3
heads), and nothing of that example may be baked in (a hard-coded 1/sqrt(16) softmax scale was)."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import helper

from vidtrt.kernels import onnx_plugins as op
from vidtrt.kernels.reference import FP8_DTYPE, FP8_MAX, attention_reference, qk_norm_rope_reference
from vidtrt.kernels.sparse_layout import BlockSparseLayout, block_sparse_reference

FLOAT = onnx.TensorProto.FLOAT
HEAD_DIMS = (16, 64, 128)


def _run_node(name: str, inputs: list[torch.Tensor], opset: int = op.FP8_OPSET, **attrs) -> list[torch.Tensor]:
    """One ``name`` plugin node (reference function attached) in onnxruntime; float8 inputs enter as float32 and
    a Cast (numpy has no float8), every output leaves as float32."""
    nodes, graph_in, feeds = [], [], {}
    names = [n for n, _ in op.SCHEMAS[name]["inputs"]]
    for n, x in zip(names, inputs, strict=True):
        if x.dtype == FP8_DTYPE:
            feeds[n + "_f32"] = x.float().numpy()
            graph_in.append(helper.make_tensor_value_info(n + "_f32", FLOAT, x.shape))
            nodes.append(helper.make_node("Cast", [n + "_f32"], [n], to=onnx.TensorProto.FLOAT8E4M3FN))
        else:
            feeds[n] = x.numpy()
            graph_in.append(helper.make_tensor_value_info(n, helper.np_dtype_to_tensor_dtype(feeds[n].dtype),
                                                          x.shape))
    outs = [n for n, _ in op.SCHEMAS[name]["outputs"]]
    nodes.append(helper.make_node(name, names, outs, domain=op.PLUGIN_DOMAIN, **op.PLUGIN_ATTRS, **attrs))
    nodes += [helper.make_node("Cast", [o], [o + "_f32"], to=FLOAT) for o in outs]
    graph = helper.make_graph(nodes, name, graph_in, [helper.make_tensor_value_info(o + "_f32", FLOAT, None)
                                                      for o in outs])
    model = helper.make_model(graph, ir_version=10, opset_imports=[helper.make_opsetid("", opset),
                                                                    helper.make_opsetid(op.PLUGIN_DOMAIN, 1)])
    model = op.attach_reference_functions(model)
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return [torch.from_numpy(o) for o in sess.run(None, feeds)]


def _fp8(x: torch.Tensor, scale) -> torch.Tensor:
    return (x / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def _rope_inputs(g, b, s, h, d, n, scale=1.0):
    q, k = (torch.randn(b, s, h, d, generator=g) * scale for _ in range(2))
    wq, wk = (torch.rand(d, generator=g) + 0.5 for _ in range(2))
    ang = torch.rand(n, d // 2, generator=g) * 3
    return q, k, wq, wk, ang.cos().repeat_interleave(2, -1), ang.sin().repeat_interleave(2, -1)


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_attention_function_any_head_dim(d):
    g = torch.Generator().manual_seed(d)
    b, s, h = 2, 9, 5
    q, k, v = (torch.randn(b, s, h, d, generator=g) for _ in range(3))
    q = q * 3  # peaked softmax: a wrong 1/sqrt(D) shows clearly
    kl = torch.tensor([9, 4], dtype=torch.int32)
    (out,) = _run_node("attention", [q, k, v, kl])
    ref = attention_reference(q, k, v, kl)  # float64, scale 1/sqrt(d)
    assert (out.double() - ref).abs().max().item() < 1e-5


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("eps", [1e-6, 1e-2])
def test_qk_norm_rope_function_any_head_dim_and_eps(d, eps):
    g = torch.Generator().manual_seed(d)
    b, s, h, n = 2, 7, 3, 5
    q, k, wq, wk, cos, sin = _rope_inputs(g, b, s, h, d, n, scale=0.05)  # mean square ~2.5e-3: eps shows
    qo, ko = _run_node("qk_norm_rope", [q, k, wq, wk, cos, sin], eps=eps)
    qr, kr = qk_norm_rope_reference(q.double(), k.double(), wq, wk, cos, sin, n, eps)
    assert max((qo.double() - qr).abs().max().item(), (ko.double() - kr).abs().max().item()) < 1e-5
    # fp8 out: the same values quantized with per-head scales (at most one float8 step apart: rounding order)
    qs, ks = torch.rand(h, generator=g) * 0.01 + 0.002, torch.rand(h, generator=g) * 0.01 + 0.002
    q8, k8 = _run_node("qk_norm_rope_fp8", [q, k, wq, wk, cos, sin, qs, ks], eps=eps)
    for got, ref, sc in ((q8, qr, qs), (k8, kr, ks)):
        want = _fp8(ref.float(), sc[None, None, :, None]).float()
        assert (got - want).abs().le(want.abs() / 8 + 2**-9).all()
        assert (got == want).float().mean().item() > 0.99


@pytest.mark.parametrize("d", HEAD_DIMS)
def test_attention_fp8_function_any_head_dim(d):
    g = torch.Generator().manual_seed(d)
    b, s, h = 2, 11, 3
    q8, k8 = (_fp8(torch.randn(b, s, h, d, generator=g) * 100, 1.0) for _ in range(2))
    v8 = _fp8(torch.randn(b, s, h, d, generator=g) * 100, 1.0)
    v8t = torch.nn.functional.pad(v8.float().permute(0, 2, 3, 1), (0, 16 - s)).to(FP8_DTYPE)  # [B, H, D, S16]
    qs, ks = torch.rand(b, h, generator=g) * 0.03, torch.rand(b, h, generator=g) * 0.03
    vs = torch.rand(b, h, d, generator=g) * 0.01
    kl = torch.tensor([11, 6], dtype=torch.int32)
    (out,) = _run_node("attention_fp8", [q8, k8, v8t, qs, ks, vs, kl])
    ref = attention_reference(q8.double() * qs[:, None, :, None], k8.double() * ks[:, None, :, None],
                              v8.double() * vs[:, None], kl)
    assert (out.double() - ref).abs().max().item() < 1e-2 * ref.abs().max().item()  # bf16 out


def _random_layout(g, heads, s, bm=128, bn=64):
    """A random block-sparse layout over ``s`` tokens (PLUGIN_BLOCKS), ``heads`` entries; the last key block
    partly past kv_end."""
    nqb, nkb = math.ceil(s / bm), math.ceil(s / bn)
    idx = torch.zeros(heads, nqb, nkb, dtype=torch.int32)
    cnt = torch.zeros(heads, nqb, 2, dtype=torch.int32)
    for hh in range(heads):
        for qb in range(nqb):
            m = int(torch.randint(1, nkb + 1, (1,), generator=g))
            idx[hh, qb, :m] = torch.randperm(nkb, generator=g)[:m].int()
            cnt[hh, qb] = torch.tensor([m, m])
    end = torch.tensor([min((j + 1) * bn, s) for j in range(nkb)], dtype=torch.int32)
    end[-1] -= 3
    return idx, cnt, end


@pytest.mark.parametrize("d", HEAD_DIMS)
@pytest.mark.parametrize("shared", [False, True], ids=["per-head", "shared"])
def test_attention_sta_functions_any_head_dim(d, shared):
    """attention_sta and attention_sta_fp8; ``shared``: one layout for all heads (Hl = 1) gives what its H copies
    give."""
    from vidtrt.config.sparse_attention import PLUGIN_BLOCKS

    g = torch.Generator().manual_seed(d + shared)
    b, s, h = 2, 260, 3
    q, k, v = (torch.randn(b, s, h, d, generator=g) for _ in range(3))
    q = q * 3
    kl = torch.tensor([s, 150], dtype=torch.int32)
    idx, cnt, end = _random_layout(g, 1 if shared else h, s)
    layout = BlockSparseLayout(idx, cnt, end, *PLUGIN_BLOCKS, s)
    ref = block_sparse_reference(q, k, v, layout, kl)
    (out,) = _run_node("attention_sta", [q, k, v, kl, idx, cnt, end])
    assert (out.double() - ref).abs().max().item() < 1e-5
    if shared:
        (copies,) = _run_node("attention_sta", [q, k, v, kl, idx.expand(h, -1, -1).contiguous(),
                                                cnt.expand(h, -1, -1).contiguous(), end])
        assert torch.equal(out, copies)
    q8, k8, v8 = (_fp8(x * 50, 1.0) for x in (q, k, v))
    v8t = torch.nn.functional.pad(v8.float().permute(0, 2, 3, 1), (0, (-s) % 16)).to(FP8_DTYPE)
    qs, ks = torch.rand(b, h, generator=g) * 0.02, torch.rand(b, h, generator=g) * 0.02
    vs = torch.rand(b, h, d, generator=g) * 0.02
    (out8,) = _run_node("attention_sta_fp8", [q8, k8, v8t, qs, ks, vs, kl, idx, cnt, end])
    ref8 = block_sparse_reference(q8.double() * qs[:, None, :, None], k8.double() * ks[:, None, :, None],
                                  v8.double() * vs[:, None], layout, kl)
    assert (out8.double() - ref8).abs().max().item() < 1e-2 * ref8.abs().max().item()


@pytest.mark.parametrize("name", ["attention", "qk_norm_rope"])
def test_functions_follow_the_input_dtype(name):
    """T = float16: the function casts back like its input (the example's dtype is not baked in)."""
    g = torch.Generator().manual_seed(1)
    if name == "attention":
        q, k, v = (torch.randn(1, 6, 2, 64, generator=g) for _ in range(3))
        kl = torch.tensor([6], dtype=torch.int32)
        (out,) = _run_node(name, [q.half(), k.half(), v.half(), kl])
        ref = attention_reference(q.half().double(), k.half().double(), v.half().double(), kl)
        assert (out.double() - ref).abs().max().item() < 2e-3
    else:
        q, k, wq, wk, cos, sin = _rope_inputs(g, 1, 6, 2, 32, 4)
        outs = _run_node(name, [q.half(), k.half(), wq.half(), wk.half(), cos, sin], eps=1e-6)
        refs = qk_norm_rope_reference(q.half(), k.half(), wq.half(), wk.half(), cos, sin, 4, 1e-6)
        for o, r in zip(outs, refs, strict=True):
            assert (o.double() - r.double()).abs().max().item() < 2e-2


@pytest.mark.parametrize("name", list(op.SCHEMAS))
def test_function_has_no_example_sizes(name):
    """The scale is computed from the input's shape, eps is the node's attribute: no 0.25 (= 1/sqrt(16)) or 1e-6
    constant in any function body."""
    (fn,) = op.reference_functions([name])
    values = []
    for node in fn.node:
        for a in node.attribute:
            if a.ref_attr_name:
                continue
            if a.type == onnx.AttributeProto.TENSOR:
                values += onnx.numpy_helper.to_array(a.t).ravel().tolist()
            elif a.type == onnx.AttributeProto.FLOAT:
                values.append(a.f)
    assert not any(np.isclose(x, 0.25) or np.isclose(x, 1e-6, rtol=1e-3, atol=0) for x in values
                   if isinstance(x, float))
