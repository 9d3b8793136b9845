"""AOT payloads of the TensorRT plugins, compiled for sm_90 on this CPU machine.

Checked per payload: kernel name, PTX target / version, the .entry parameter list equal to the
documented argument order (input pointers, int32 scalars, output pointers; Triton's hidden scratch
parameters removed because unused), ptxas assembling the edited PTX, launch block / shared memory
within Hopper's limits, and the launch grid / scalars at HunyuanVideo shapes fitting int32.
The launch math itself (grid, scalars, argument order) is executed on CPU: the same kernels run
in the Triton interpreter with exactly the positional arguments a TensorRT launch passes.
"""

from __future__ import annotations

import math
import re

import pytest
import torch

from vidtrt.kernels import aot
from vidtrt.kernels.attention_fp8 import quantize_v_per_channel
from vidtrt.kernels.reference import (
    attention_fp8_emulation,
    attention_reference,
    cosine_similarity,
    qk_norm_rope_reference,
    safe_fp8_scale,
)

H100_MAX_SMEM = 227 * 1024  # dynamic shared memory per block (opt-in)


@pytest.fixture(scope="module")
def payloads(aot_payloads) -> list[aot.AotPayload]:
    return aot_payloads


EXPECTED_ARGS = {
    "vidtrt::qk_norm_rope": ["q", "k", "weight_q", "weight_k", "cos", "sin", "n_rows", "seq_len", "num_heads",
                             "num_image_tokens", "stride_qb", "stride_qs", "stride_qh", "stride_kb", "stride_ks",
                             "stride_kh", "q_out", "k_out"],
    "vidtrt::attention": ["q", "k", "v", "key_lengths", "seq_q", "seq_k", "num_heads", "stride_qb", "stride_qs",
                          "stride_qh", "stride_kb", "stride_ks", "stride_kh", "stride_vb", "stride_vs", "stride_vh",
                          "stride_ob", "stride_os", "stride_oh", "out"],
}  # fmt: skip
KERNELS = {
    "vidtrt::qk_norm_rope": "_qk_norm_rope_kernel",
    "vidtrt::qk_norm_rope_fp8": "_qk_norm_rope_kernel",
    "vidtrt::attention": "_attn_fwd_kernel",
    "vidtrt::attention_fp8": "_attn_fwd_fp8_kernel",
}


def test_payload_set(payloads):
    plugins = [p.plugin for p in payloads]
    assert set(plugins) == set(KERNELS)
    n_bf16, n_fp8 = len(aot.attention_tactics(128, False)), len(aot.attention_tactics(128, True))
    assert n_bf16 >= 2 and n_fp8 >= 2
    assert plugins.count("vidtrt::attention") == n_bf16 + 1 and plugins.count("vidtrt::attention_fp8") == n_fp8


def test_payload_structure(payloads):
    for p in payloads:
        where = f"{p.plugin} {p.request}"
        assert p.kernel_name == KERNELS[p.plugin], where
        assert p.target == "sm_90a" and p.ptx_version == "8.4", where
        assert f".visible .entry {p.kernel_name}(" in p.ptx, where
        assert p.global_scratch_size == 0 and p.profile_scratch_size == 0, where
        assert p.ptxas_ok, f"{where}: {p.ptxas_log}"
        assert p.registers is not None and p.registers <= 255, where
        assert p.block == (p.num_warps * 32, 1, 1), where
        assert 0 <= p.shared_mem <= H100_MAX_SMEM, where
        # argument order: inputs, then int32 scalars, then outputs; PTX params exactly these
        kinds = [a["kind"] for a in p.args]
        assert kinds == sorted(kinds, key=["input", "scalar", "output"].index), where
        name, params = aot.parse_entry(p.ptx)
        assert name == p.kernel_name
        assert len(params) == len(p.args), where
        for decl, a in zip(params, p.args, strict=True):
            assert aot.ptx_type_matches(decl, a["type"]), (where, decl, a)
            assert (".u64" in decl) == a["type"].startswith("*"), (where, decl, a)
        # the removed parameters are Triton's two trailing scratch pointers, never read
        assert len(p.stripped_params) == 2 and all(".u64" in s for s in p.stripped_params), where
        for decl in p.stripped_params:
            assert not re.search(rf"\b{aot.param_name(decl)}\b", p.ptx), where
        if p.plugin in EXPECTED_ARGS:
            assert [a["name"] for a in p.args] == EXPECTED_ARGS[p.plugin], where


def test_tensor_cores_used(payloads):
    """PTX asks for wgmma, and ptxas really emitted Hopper's warpgroup MMA (HGMMA / QGMMA in SASS,
    not the slower HMMA path)."""
    for p in payloads:
        ops = p.sass_opcodes
        assert ops, f"{p.plugin}: no SASS (cuobjdump missing next to ptxas?)"
        if p.plugin == "vidtrt::attention" and p.request["dtype"] == "bf16":
            assert "wgmma.mma_async" in p.ptx and ".bf16.bf16" in p.ptx
            assert aot.sass_count(ops, "HGMMA") > 0 and aot.sass_count(ops, "HMMA") == 0
        if p.plugin == "vidtrt::attention_fp8":
            assert "wgmma.mma_async" in p.ptx and ".e4m3.e4m3" in p.ptx
            assert aot.sass_count(ops, "QGMMA") > 0 and aot.sass_count(ops, "HMMA") == 0
        if p.plugin == "vidtrt::qk_norm_rope_fp8":
            assert "cvt.rn.satfinite.e4m3x2.f32" in p.ptx


def test_registers_and_memory_access(payloads):
    """Every Hopper tactic keeps its tiles in registers, and tiles move by 16-byte async copies.

    Spills: tactic 0 none; any tactic at most 128 bytes (a 128-row tile on 4 warps spills 300-3000).
    Byte loads: FP8 V rows are 16-byte aligned by contract (v8t [B, H, D, S16], token stride compiled
    in), so only the one masked tail block of keys per program may load V byte by byte
    (BLOCK_N * D / threads of them); a V layout the compiler cannot vectorize doubles that count.
    """
    for p in payloads:
        where = (p.plugin, p.request.get("tactic"), p.request.get("dtype"))
        ops = p.sass_opcodes
        assert p.spill_bytes is not None, where
        assert p.spill_bytes <= (0 if not p.request.get("tactic") else 128), (where, p.spill_bytes)
        if p.plugin.startswith("vidtrt::attention"):
            assert aot.sass_count(ops, "LDGSTS.E.BYPASS.128") > 0, where
            byte_loads = aot.sass_count(ops, "LDG.E.U8")
            tail = p.constexprs["BLOCK_N"] * p.constexprs["HEAD_DIM"] // (32 * p.num_warps)
            assert byte_loads <= (tail if p.plugin == "vidtrt::attention_fp8" else 0), (where, byte_loads)


@pytest.mark.parametrize("seq", [16 * 1024, 67_576, 119_056])
def test_launch_values_at_hunyuan_shapes(payloads, seq):
    """Grid and int32 scalars at HunyuanVideo sizes (24 heads x 128; B = 2)."""
    b, h, d = 2, 24, 128
    for p in payloads:
        if p.request.get("head_dim") != d:
            continue
        if p.plugin.startswith("vidtrt::qk_norm_rope"):
            dims = {"q": (b, seq, h, d), "k": (b, seq, h, d), "cos": (seq - 256, d)}
        elif p.plugin == "vidtrt::attention":
            dims = {"q": (b, seq, h, d), "k": (b, seq, h, d)}
        else:
            dims = {"q8": (b, seq, h, d), "k8": (b, seq, h, d), "v8t": (b, h, d, -(-seq // 16) * 16)}
        grid, scalars = aot.launch_values(p, dims)
        assert all(0 < g < 2**31 for g in grid) and grid[1] <= 65535 and grid[2] <= 65535
        assert len(scalars) == sum(a["kind"] == "scalar" for a in p.args)
        assert all(-(2**31) <= s < 2**31 for s in scalars), (p.plugin, scalars)
        if p.plugin == "vidtrt::attention":
            assert grid == (math.ceil(seq / p.constexprs["BLOCK_M"]), b * h, 1)


def test_tma_flavour_uses_bulk_tensor_copies():
    """tma=True on sm_90a: K / V arrive by TMA (UTMALDG), products on HGMMA (bf16) / QGMMA (fp8), no
    byte loads, no spills; bf16 has no per-thread async copies left (fp8 keeps a few for its k scales).
    Compiled in a child process: this one interprets."""
    import json
    import os
    import subprocess
    import sys

    code = ("import json; from dataclasses import asdict; from vidtrt.kernels import aot; "
            "print(json.dumps([asdict(aot.attention_tma_sass(128, 0, fp8=f)) for f in (False, True)]))")  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    bf16, fp8 = json.loads(proc.stdout.strip().splitlines()[-1])
    for rep, mma in ((bf16, "HGMMA"), (fp8, "QGMMA")):
        ops = rep["sass_opcodes"]
        assert rep["ok"] and rep["spill_bytes"] == 0, rep["log"]
        assert aot.sass_count(ops, "UTMALDG") > 0 and aot.sass_count(ops, mma) > 0
        assert aot.sass_count(ops, "LDG.E.U8") == 0 and aot.sass_count(ops, "HMMA") == 0
    assert aot.sass_count(bf16["sass_opcodes"], "LDGSTS") == 0
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET was off"):
        aot.attention_tma_sass(128, 0)


def test_compile_refuses_interpreter_process():
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET was off"):
        aot.compile_spec(aot.rope_spec())


def test_spec_errors():
    with pytest.raises(ValueError, match="unknown kernel kind"):
        aot.spec_from_request({"kind": "conv"})
    with pytest.raises(ValueError, match="dtype='fp32'"):
        aot.attention_spec(dtype="fp32")
    with pytest.raises(ValueError, match="dtype='int8'"):
        aot.rope_spec(dtype="int8")


def test_strip_refuses_used_params():
    ptx = ".visible .entry k(\n.param .u64 k_param_0,\n.param .u64 k_param_1\n)\n{\nld.param.u64 %rd1, [k_param_1];\n}"
    with pytest.raises(ValueError, match="reads its hidden parameter k_param_1"):
        aot.strip_trailing_params(ptx, 1)
    new, removed = aot.strip_trailing_params(ptx.replace("k_param_1]", "k_param_0]"), 1)
    assert removed == [".param .u64 k_param_1"] and aot.parse_entry(new)[1] == [".param .u64 k_param_0"]


# ---------------------------------------------------------------------------------------------
# The TensorRT launch, emulated: positional args (inputs, spec scalars, outputs) + payload
# constexprs, spec grid, kernel run by the interpreter on CPU.
# ---------------------------------------------------------------------------------------------
def _launch_like_trt(spec: aot.KernelSpec, tensors: dict, dims: dict, overrides: dict | None = None):
    import importlib

    mod, fn = spec.kernel_ref.split(":")
    kernel = getattr(importlib.import_module(mod), fn)
    grid, scalars = spec.launch(dims, aot.py_cdiv)
    values = [tensors[n] for n in spec.inputs] + scalars + [tensors[n] for n in spec.outputs]
    # the PTX parameters are the kernel's non-constexpr parameters, in order: bind by that order
    runtime = [n for n in kernel.arg_names if n not in spec.constexprs]
    assert len(runtime) == len(values)
    kwargs = dict(zip(runtime, values, strict=True))
    kernel[tuple(grid)](**kwargs, **{**spec.constexprs, **(overrides or {})})


def _rope_tensors(b, s, h, d, n, dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k = (torch.randn(b, s, h, d, generator=g).to(dtype) for _ in range(2))
    wq, wk = (0.5 + torch.rand(d, generator=g) for _ in range(2))
    ang = torch.rand(n, d // 2, generator=g) * 6
    cos = ang.cos().repeat_interleave(2, -1).contiguous()
    sin = ang.sin().repeat_interleave(2, -1).contiguous()
    return q, k, wq, wk, cos, sin


@pytest.mark.parametrize("fp8", [False, True])
def test_rope_launch_math(fp8):
    b, s, h, d, n = 2, 20, 3, 64, 13
    q, k, wq, wk, cos, sin = _rope_tensors(b, s, h, d, n, torch.float16)
    spec = aot.rope_spec("fp16", d, fp8_out=fp8)
    out_dtype = torch.float8_e4m3fn if fp8 else torch.float16
    t = {"q": q, "k": k, "weight_q": wq, "weight_k": wk, "cos": cos, "sin": sin}
    t["q_out"], t["k_out"] = (torch.empty(b, s, h, d, dtype=out_dtype) for _ in range(2))
    scale = None
    if fp8:
        scale = (safe_fp8_scale(wq), safe_fp8_scale(wk))
        t["q_scale"], t["k_scale"] = (torch.full((h,), sc) for sc in scale)
    _launch_like_trt(spec, t, {"q": q.shape, "k": k.shape, "cos": cos.shape}, {"EXACT_FP8": fp8})
    qr, kr = qk_norm_rope_reference(q, k, wq, wk, cos, sin, n, fp8_scale=scale)
    for out, ref in ((t["q_out"], qr), (t["k_out"], kr)):
        diff = (out.float() - ref.float()).abs()
        assert (diff > 2.0**-10 * ref.float().abs().clamp_min(1) * 2).float().mean().item() < 0.01


def test_attention_launch_math():
    b, s, h, d = 2, 40, 2, 64
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(b, s, h, d, generator=g).half() for _ in range(3))
    kl = torch.tensor([40, 23], dtype=torch.int32)
    spec = aot.attention_spec("fp16", d)
    out = torch.empty_like(q)
    # interpreter: block sizes of the Hopper tactic are kept; fp32 products (no fp16 dot in numpy)
    _launch_like_trt(spec, {"q": q, "k": k, "v": v, "key_lengths": kl, "out": out}, {"q": q.shape, "k": k.shape},
                     {"DOT_F32": True})  # fmt: skip
    ref = attention_reference(q, k, v, kl)
    assert ((out.double() - ref).abs().max() / ref.abs().max()).item() < 1e-2


def test_attention_fp8_launch_math():
    """The plugin's layout: per-(batch, head) q/k scales, v8 transposed [B, H, D, S]."""
    b, s, h, d = 2, 40, 2, 64
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(b, s, h, d, generator=g) for _ in range(3))
    kl = torch.tensor([40, 29], dtype=torch.int32)
    qs = (q.abs().amax(dim=(1, 3)) / 448).float()
    ks = (k.abs().amax(dim=(1, 3)) / 448).float()
    q8 = (q / qs[:, None, :, None]).to(torch.float8_e4m3fn)
    k8 = (k / ks[:, None, :, None]).to(torch.float8_e4m3fn)
    v8, vs = quantize_v_per_channel(v)
    # [B, H, D, S16], exactly the plugin input layout (tokens padded to 48 with NaN: never read)
    v8t = torch.nn.functional.pad(v8.permute(0, 2, 3, 1).contiguous().view(torch.uint8), (0, 8), value=0x7F)
    v8t = v8t.view(torch.float8_e4m3fn)
    spec = aot.attention_fp8_spec(d)
    out = torch.empty(b, s, h, d, dtype=torch.bfloat16)
    t = {"q8": q8, "k8": k8, "v8t": v8t, "q_scale": qs, "k_scale": ks, "v_scale": vs, "key_lengths": kl, "out": out}
    _launch_like_trt(spec, t, {"q8": q8.shape, "k8": k8.shape, "v8t": v8t.shape}, {"EXACT_FP8": True})
    ref = attention_reference(q, k, v, kl)
    assert cosine_similarity(out, ref) >= 0.995
    emu = attention_fp8_emulation(q8, k8, v8, qs, ks, vs, kl, block_n=spec.constexprs["BLOCK_N"])
    assert ((out.float() - emu).abs().max() / emu.abs().max()).item() < 1e-2  # bf16 output rounding
