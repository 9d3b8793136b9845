"""TensorRT plugin definitions without TensorRT: the missing-TensorRT error, the consistency of the
plugin / AOT spec / ONNX schema I/O lists, and the plugin callbacks run against a stand-in for
``tensorrt.plugin`` that records what they return (kernel name, PTX, launch params, scalars)."""

from __future__ import annotations

import importlib
import sys
import types

import pytest

from vidtrt.errors import EngineError
from vidtrt.kernels import aot, onnx_plugins, trt_plugins


def test_register_without_tensorrt_is_one_clear_error():
    if trt_plugins.trtp is not None:  # pragma: no cover - a machine with TensorRT
        pytest.skip(reason="TensorRT is installed here")
    with pytest.raises(EngineError) as info:
        trt_plugins.register_plugins()
    msg = str(info.value)
    assert msg.startswith("TensorRT is not installed") and "\n" not in msg


def test_plugin_io_matches_specs_and_onnx_schemas():
    for name, io in trt_plugins.PLUGINS.items():
        spec = aot.spec_from_request(trt_plugins.plugin_requests(name, "bf16", 128))
        assert spec.plugin == f"vidtrt::{name}"
        assert spec.inputs == io["inputs"] and spec.outputs == io["outputs"]
        sch = onnx_plugins.SCHEMAS[name]
        assert [n for n, _ in sch["inputs"]] == io["inputs"]
        assert [n for n, _ in sch["outputs"]] == io["outputs"]
        assert list(sch["attrs"]) == io["attrs"]
        n_types = len([t for t in trt_plugins.IO_TYPES[name].split(",")])
        assert n_types == len(io["inputs"]) + len(io["outputs"])
    with pytest.raises(ValueError, match="unknown plugin"):
        trt_plugins.plugin_requests("conv", "bf16", 128)


# ---------------------------------------------------------------------------------------------
# A recording stand-in for tensorrt / tensorrt.plugin
# ---------------------------------------------------------------------------------------------
class _DT:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def _fake_tensorrt():
    trt = types.ModuleType("tensorrt")
    for n in ("bfloat16", "float16", "float32", "fp8", "int32"):
        setattr(trt, n, _DT(n))
    trtp = types.ModuleType("tensorrt.plugin")
    trtp.registry = {}

    def deco(kind):
        def outer(pid):
            def inner(fn):
                trtp.registry.setdefault(pid, {})[kind] = fn
                return fn

            return inner

        return outer

    trtp.register, trtp.autotune, trtp.aot_impl, trtp.impl = deco("desc"), deco("autotune"), deco("aot"), deco("impl")

    class TensorDesc:
        def __init__(self, shape, dtype):
            self.shape_expr, self.dtype = tuple(shape), dtype

        def like(self):
            return TensorDesc(self.shape_expr, self.dtype)

    class AutoTuneCombination:
        def __init__(self, io_types=None, layouts=None, tactics=None):
            self.io_types, self.layouts, self._tactics = io_types, layouts, tactics

        def tactics(self, t):
            self._tactics = list(t)

    class KernelLaunchParams:
        def __init__(self):
            self.grid_x = self.grid_y = self.grid_z = self.block_x = self.block_y = self.block_z = 1
            self.shared_mem = 0

    class SymInt32:
        def __init__(self, e):
            self.e = e

    class SymIntExprs(list):
        @classmethod
        def from_tuple(cls, t):
            return cls(t)

    trtp.TensorDesc, trtp.AutoTuneCombination = TensorDesc, AutoTuneCombination
    trtp.KernelLaunchParams = KernelLaunchParams
    trtp.SymInt32, trtp.SymIntExprs = SymInt32, SymIntExprs
    trtp.from_shape_expr = lambda shape, dtype: TensorDesc(shape, dtype)
    trtp.cdiv = lambda a, b: -(-a // b)
    trt.plugin = trtp
    return trt, trtp


@pytest.fixture(scope="module")
def seeded_payloads(aot_payloads):
    wanted = [aot.spec_from_request(trt_plugins.plugin_requests(n, "bf16", 128)).request for n in trt_plugins.PLUGINS]
    payloads = [p for p in aot_payloads if p.request in wanted]
    assert len(payloads) == len(wanted)
    aot.seed_payload_cache(payloads)
    return {p.plugin: p for p in payloads}


@pytest.fixture
def fake_trt(monkeypatch):
    trt, trtp = _fake_tensorrt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setitem(sys.modules, "tensorrt.plugin", trtp)
    mod = importlib.reload(trt_plugins)
    yield trt, trtp, mod
    monkeypatch.undo()
    importlib.reload(trt_plugins)


def test_plugin_callbacks(fake_trt, seeded_payloads):
    trt, trtp, mod = fake_trt
    ids = mod.register_plugins()
    assert ids == [f"vidtrt::{n}" for n in mod.ALL_PLUGINS] and set(trtp.registry) == set(ids)
    assert mod.register_plugins() == ids  # idempotent
    b, s, h, d, n = 2, 4096, 24, 128, 4000
    TD = trtp.TensorDesc
    bf = trt.bfloat16
    descs = {
        "qk_norm_rope": [TD((b, s, h, d), bf), TD((b, s, h, d), bf), TD((d,), trt.float32), TD((d,), trt.float32),
                         TD((n, d), trt.float32), TD((n, d), trt.float32)],
        "attention": [TD((b, s, h, d), bf), TD((b, s, h, d), bf), TD((b, s, h, d), bf), TD((b,), trt.int32)],
        "attention_fp8": [TD((b, s, h, d), trt.fp8), TD((b, s, h, d), trt.fp8), TD((b, h, d, s), trt.fp8),
                          TD((b, h), trt.float32), TD((b, h), trt.float32), TD((b, h, d), trt.float32),
                          TD((b,), trt.int32)],
    }  # fmt: skip
    descs["qk_norm_rope_fp8"] = descs["qk_norm_rope"] + [TD((h,), trt.float32), TD((h,), trt.float32)]
    for name, inputs in descs.items():
        reg = trtp.registry[f"vidtrt::{name}"]
        attrs = {"eps": 1e-6} if "eps" in mod.PLUGINS[name]["attrs"] else {}
        outs = reg["desc"](*inputs, **attrs)
        outs = outs if isinstance(outs, tuple) else (outs,)
        assert len(outs) == len(mod.PLUGINS[name]["outputs"])
        expect_dtype = {"qk_norm_rope": bf, "qk_norm_rope_fp8": trt.fp8, "attention": bf, "attention_fp8": bf}[name]
        assert all(o.dtype is expect_dtype and o.shape_expr == (b, s, h, d) for o in outs)
        combos = reg["autotune"](*inputs, **attrs, outputs=outs)
        assert combos[0].io_types == mod.IO_TYPES[name]
        tactic = 1 if name.startswith("attention") else 0
        if name.startswith("attention"):
            assert combos[0]._tactics[0] == 1
        kname, ptx, launch, extra = reg["aot"](*inputs, **attrs, outputs=outs, tactic=tactic)
        payload = seeded_payloads[f"vidtrt::{name}"]
        assert kname == payload.kernel_name.encode() and ptx == payload.ptx.encode()
        dims = {k: v.shape_expr for k, v in zip(mod.PLUGINS[name]["inputs"], inputs, strict=True)}
        grid, scalars = aot.launch_values(payload, dims)
        assert (launch.grid_x, launch.grid_y, launch.grid_z) == grid
        assert launch.block_x == payload.block[0] and launch.shared_mem == payload.shared_mem
        assert [e.e for e in extra] == scalars


def test_head_dim_must_be_static():
    class Expr:
        constant_value = None

    with pytest.raises(EngineError, match="build-time constant"):
        trt_plugins._const_int(Expr())

    class Const:
        def constant_value(self):
            return 128

    assert trt_plugins._const_int(Const()) == 128
