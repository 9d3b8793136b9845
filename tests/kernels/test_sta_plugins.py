"""The block-sparse kernels as TensorRT AOT payloads (sm_90a, no GPU): argument order = PTX parameters,
what ptxas makes of them, the launch scalars against the JIT wrapper's, and the plugin callbacks
against the recording stand-in for ``tensorrt.plugin``."""

from __future__ import annotations

import importlib
import sys

import pytest
import torch
from test_trt_plugins import _fake_tensorrt

from vidtrt.kernels import aot, trt_plugins
from vidtrt.kernels.sparse_layout import TileGrid, sliding_tile_layout

REQS = [trt_plugins.plugin_requests(n, "bf16", 128) for n in trt_plugins.STA_PLUGINS]


@pytest.fixture(scope="module")
def payloads():
    return {p.plugin: p for p in aot.build_payloads_subprocess(REQS, jobs=2)}


def test_payloads_assemble_with_warpgroup_mma_and_no_spills(payloads):
    for name, io in trt_plugins.STA_PLUGINS.items():
        p = payloads[f"vidtrt::{name}"]
        spec = aot.spec_from_request(p.request)
        assert spec.inputs == io["inputs"] and spec.outputs == io["outputs"]
        assert len(trt_plugins.IO_TYPES[name].split(",")) == len(io["inputs"]) + len(io["outputs"])
        assert len(p.ptx_params) == len(spec.args) and p.ptxas_ok, p.ptxas_log
        assert p.spill_bytes == 0
        mma = "QGMMA" if name.endswith("fp8") else "HGMMA"
        assert aot.sass_count(p.sass_opcodes, mma) > 0
        assert aot.sass_count(p.sass_opcodes, "LDGSTS.E.BYPASS.128") > 0  # 16-byte async copies of K / V


def test_launch_scalars_are_the_wrappers():
    """The plugin's layout strides for a per-head layout equal the strides of the tensors the JIT wrapper
    would pass (the layout arrives as [H, NQB, MAXK] / [H, NQB, 2])."""
    tiles = TileGrid((5, 9, 16), (1, 8, 16))
    s = tiles.padded_tokens + 77
    layout = sliding_tile_layout(tiles, [(3, 1, 1), (1, 1, 1)], s, 128, 64, heads=2)
    spec = aot.spec_from_request(REQS[0])
    dims = {"q": (1, s, 2, 128), "k": (1, s, 2, 128), "v": (1, s, 2, 128), "key_lengths": (1,),
            **{n: tuple(getattr(layout, n).shape) for n in ("kv_idx", "kv_cnt", "kv_end")}}
    grid, scalars = spec.launch(dims, aot.py_cdiv)
    assert grid == (layout.kv_idx.shape[1], 2, 1)
    named = dict(zip(spec.scalars, scalars, strict=True))
    assert (named["stride_ih"], named["stride_iq"], named["stride_ch"]) == (
        layout.kv_idx.stride(0), layout.kv_idx.stride(1), layout.kv_cnt.stride(0))


@pytest.mark.parametrize("name", list(trt_plugins.STA_PLUGINS))
def test_launch_scalars_of_a_layout_shared_by_all_heads(name):
    """A [1, NQB, MAXK] layout (one window for every head): head strides 0, the JIT wrapper's arguments for
    the same layout (so the kernel reads entry 0 for every head instead of H copies)."""
    from vidtrt.kernels.block_sparse import _layout_args

    tiles = TileGrid((5, 9, 16), (1, 8, 16))
    s, h = tiles.padded_tokens + 77, 3
    layout = sliding_tile_layout(tiles, (3, 1, 1), s, 128, 64)
    assert layout.kv_idx.shape[0] == 1
    spec = aot.spec_from_request(trt_plugins.plugin_requests(name, "bf16", 128))
    lay = {n: tuple(getattr(layout, n).shape) for n in ("kv_idx", "kv_cnt", "kv_end")}
    if name == "attention_sta":
        dims = {"q": (1, s, h, 128), "k": (1, s, h, 128), "v": (1, s, h, 128), "key_lengths": (1,), **lay}
    else:
        dims = {"q8": (1, s, h, 128), "k8": (1, s, h, 128), "v8t": (1, h, 128, s + (-s) % 16), "q_scale": (1, h),
                "k_scale": (1, h), "v_scale": (1, h, 128), "key_lengths": (1,), **lay}
    named = dict(zip(spec.scalars, spec.launch(dims, aot.py_cdiv)[1], strict=True))
    got = (named["stride_ih"], named["stride_iq"], named["stride_ch"])
    assert got == _layout_args(layout, h) == (0, layout.kv_idx.stride(1), 0)
    # the same through the symbolic branch (TensorRT shape expressions: cdiv(Hl - 1, H))
    per_head = sliding_tile_layout(tiles, [(3, 1, 1)] * h, s, 128, 64, heads=h)
    for lay_, want in ((layout, got), (per_head, _layout_args(per_head, h))):
        d = {**dims, "kv_idx": _Sym.of(lay_.kv_idx.shape), "kv_cnt": tuple(lay_.kv_cnt.shape)}
        named = dict(zip(spec.scalars, spec.launch(d, _Sym.cdiv)[1], strict=True))
        assert tuple(int(named[n]) for n in ("stride_ih", "stride_iq", "stride_ch")) == want
        # build-time constant shape expressions (static Hl, H: the STA graph's case) resolve without cdiv
        const = {**dims, "kv_idx": (_Const(lay_.kv_idx.shape[0]), *lay_.kv_idx.shape[1:])}
        named = dict(zip(spec.scalars, spec.launch(const, aot.py_cdiv)[1], strict=True))
        assert tuple(int(named[n]) for n in ("stride_ih", "stride_iq", "stride_ch")) == want


class _Const:
    """A TensorRT build-time constant shape expression (``is_constant``, ``constant_value()``)."""

    is_constant = True

    def __init__(self, v):
        self.v = v

    def constant_value(self):
        return self.v

    def __sub__(self, o):
        raise AssertionError("a constant needs no symbolic arithmetic")


class _Sym:
    """Stands for a TensorRT shape expression (no int: the launch takes its symbolic branch)."""

    def __init__(self, v):
        self.v = int(v)

    @classmethod
    def of(cls, shape):
        return tuple(cls(x) for x in shape)

    @staticmethod
    def cdiv(a, b):
        return _Sym(-(-int(a) // int(b)))

    def __int__(self):
        return self.v

    def __sub__(self, o):
        return _Sym(self.v - int(o))

    def __mul__(self, o):
        return _Sym(self.v * int(o))

    __rmul__ = __mul__


def test_plugin_callbacks(monkeypatch, payloads):
    trt, trtp = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    mod = importlib.reload(trt_plugins)
    try:
        aot.seed_payload_cache(list(payloads.values()))
        mod.register_plugins()
        b, s, h, d, nqb, maxk = 1, 4096, 24, 128, 32, 20
        TD, i32 = trtp.TensorDesc, trt.int32
        layout = [TD((h, nqb, maxk), i32), TD((h, nqb, 2), i32), TD((s // 64,), i32)]
        descs = {
            "attention_sta": [TD((b, s, h, d), trt.bfloat16)] * 3 + [TD((b,), i32), *layout],
            "attention_sta_fp8": [TD((b, s, h, d), trt.fp8)] * 2 + [TD((b, h, d, s), trt.fp8), TD((b, h), trt.float32),
                                  TD((b, h), trt.float32), TD((b, h, d), trt.float32), TD((b,), i32), *layout],
        }  # fmt: skip
        for name, inputs in descs.items():
            reg = trtp.registry[f"vidtrt::{name}"]
            out = reg["desc"](*inputs)
            assert out.dtype is trt.bfloat16 and out.shape_expr == (b, s, h, d)
            assert reg["autotune"](*inputs, outputs=(out,))[0].io_types == mod.IO_TYPES[name]
            kname, ptx, launch, extra = reg["aot"](*inputs, outputs=(out,), tactic=1)
            payload = payloads[f"vidtrt::{name}"]
            assert kname == payload.kernel_name.encode() and ptx == payload.ptx.encode()
            dims = {k: v.shape_expr for k, v in zip(mod.ALL_PLUGINS[name]["inputs"], inputs, strict=True)}
            grid, scalars = aot.launch_values(payload, dims)
            assert (launch.grid_x, launch.grid_y, launch.grid_z) == grid == (nqb, b * h, 1)
            assert [e.e for e in extra] == scalars
    finally:
        monkeypatch.undo()
        importlib.reload(trt_plugins)


def test_layout_int32_on_device_matches_kernel_contract():
    layout = sliding_tile_layout(TileGrid((2, 8, 8), (1, 8, 16)), (1, 1, 1), 256, 128, 64)
    assert all(t.dtype == torch.int32 and t.is_contiguous() for t in (layout.kv_idx, layout.kv_cnt, layout.kv_end))
