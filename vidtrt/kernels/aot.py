"""Ahead-of-time payloads of the Triton kernels: what a TensorRT AOT plugin embeds.

A payload is the kernel compiled for one GPU target (PTX, plus the cubin ptxas makes of it), its
entry name, launch block / shared memory, the argument order (input pointers, int32 scalars,
output pointers: the TensorRT AOT convention) and the launch grid and scalar values as functions
of the plugin's input shapes. The same shape functions serve TensorRT (symbolic ``trtp`` shape
expressions, ``kernels/trt_plugins.py``), CI (plain ints) and the GPU check that launches the
exact PTX through the CUDA driver (``benchmarks/gpu_kernels_check.py``).

Compilation needs no GPU (``triton.compile`` with a ``GPUTarget``), but it needs a process where
``TRITON_INTERPRET`` was off when triton was imported: the interpreter swaps triton's language
front end. ``build_payloads_subprocess`` runs the compiler in a clean child process for that.

PTX clean-up: Triton >= 3.3 appends hidden trailing kernel parameters (global / profile scratch
pointers). A launcher that passes only inputs, scalars and outputs (TensorRT) would leave them
unset; when the kernel needs no scratch (checked: sizes 0) and never reads them (checked: not
referenced in the body), they are removed from the ``.entry`` signature, so the PTX parameter
list is exactly the documented argument order. ptxas re-assembles the edited PTX (checked).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PTX_VERSION = 84  # PTX ISA 8.4 (CUDA 12.4 drivers and newer can JIT it); wgmma needs >= 8.0
DEFAULT_ARCH = 90
LOG2E = 1.4426950408889634

# torch / TensorRT dtype names -> Triton signature element types
TRITON_TYPES = {"fp32": "fp32", "fp16": "fp16", "bf16": "bf16", "fp8": "fp8e4nv", "i32": "i32"}


@dataclass(frozen=True)
class KernelArg:
    name: str
    kind: str  # "input" | "scalar" | "output"
    type: str  # Triton signature type: "*bf16", "*fp8e4nv", "*i32", "i32", ...
    divisible16: bool = False  # pointer 16-byte aligned / scalar a multiple of 16 (vectorization hint)


Dims = dict[str, Sequence[Any]]
LaunchFn = Callable[[Dims, Callable[[Any, int], Any]], tuple[tuple[Any, Any, Any], list[Any]]]


@dataclass
class KernelSpec:
    """What to compile and how to launch it; ``launch(dims, cdiv) -> (grid, scalars)``."""

    plugin: str
    kernel_ref: str  # "module:function"
    args: list[KernelArg]
    constexprs: dict[str, Any]
    num_warps: int
    num_stages: int
    launch: LaunchFn
    io: dict[str, str] = field(default_factory=dict)  # plugin tensor -> layout, for docs and checks
    request: dict[str, Any] = field(default_factory=dict)  # the builder call that made this spec

    @property
    def inputs(self) -> list[str]:
        return [a.name for a in self.args if a.kind == "input"]

    @property
    def scalars(self) -> list[str]:
        return [a.name for a in self.args if a.kind == "scalar"]

    @property
    def outputs(self) -> list[str]:
        return [a.name for a in self.args if a.kind == "output"]


def _p(name, kind, dtype):  # a pointer argument
    return KernelArg(name, kind, "*" + TRITON_TYPES[dtype], True)


def _i(name, div16=False):  # an int32 scalar
    return KernelArg(name, "scalar", "i32", div16)


def py_cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ----------------------------------------------------------------------------------------------
# Specs (one per plugin / dtype / tactic)
# ----------------------------------------------------------------------------------------------
def rope_spec(dtype: str = "bf16", head_dim: int = 128, fp8_out: bool = False, eps: float = 1e-6,
              weight_dtype: str = "fp32", block_r: int | None = None, num_warps: int = 8) -> KernelSpec:
    """vidtrt::qk_norm_rope[_fp8]: q, k [B, S, H, D]; weight_q, weight_k [D]; cos, sin float32 [N, D]
    (N = image tokens); fp8: q_scale, k_scale float32 [H]. Outputs contiguous [B, S, H, D]."""
    if dtype not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"dtype={dtype!r}: accepted bf16, fp16, fp32")
    block_r = block_r or max(1, 4096 // head_dim)
    out = "fp8" if fp8_out else dtype
    args = [
        _p("q", "input", dtype), _p("k", "input", dtype),
        _p("weight_q", "input", weight_dtype), _p("weight_k", "input", weight_dtype),
        _p("cos", "input", "fp32"), _p("sin", "input", "fp32"),
    ]  # fmt: skip
    if fp8_out:
        args += [_p("q_scale", "input", "fp32"), _p("k_scale", "input", "fp32")]
    args += [
        _i("n_rows"), _i("seq_len"), _i("num_heads"), _i("num_image_tokens"),
        _i("stride_qb", True), _i("stride_qs", True), _i("stride_qh", True),
        _i("stride_kb", True), _i("stride_ks", True), _i("stride_kh", True),
        _p("q_out", "output", out), _p("k_out", "output", out),
    ]  # fmt: skip
    const = {"HEAD_DIM": head_dim, "BLOCK_R": block_r, "EPS": float(eps), "EXACT_FP8": False}
    if not fp8_out:
        const.update({"Q_SCALE": None, "K_SCALE": None})

    def launch(dims: Dims, cdiv=py_cdiv):
        b, s, h, d = dims["q"]
        n = dims["cos"][0]
        rows = b * s * h
        shd, hd = s * h * d, h * d
        return (cdiv(rows, block_r), 1, 1), [rows, s, h, n, shd, hd, d, shd, hd, d]

    io = {"q": "[B,S,H,D]", "k": "[B,S,H,D]", "weight_q": "[D]", "weight_k": "[D]", "cos": "[N,D] fp32",
          "sin": "[N,D] fp32", "q_out": "[B,S,H,D]", "k_out": "[B,S,H,D]"}  # fmt: skip
    if fp8_out:
        io.update({"q_scale": "[H] fp32", "k_scale": "[H] fp32"})
    return KernelSpec(
        plugin="vidtrt::qk_norm_rope_fp8" if fp8_out else "vidtrt::qk_norm_rope",
        kernel_ref="vidtrt.kernels.rope:_qk_norm_rope_kernel",
        args=args, constexprs=const, num_warps=num_warps, num_stages=1, launch=launch, io=io,
        request={"kind": "rope", "dtype": dtype, "head_dim": head_dim, "fp8_out": fp8_out, "eps": eps,
                 "weight_dtype": weight_dtype, "block_r": block_r, "num_warps": num_warps},
    )  # fmt: skip


def attention_tactics(head_dim: int, fp8: bool, arch: int = DEFAULT_ARCH) -> list[dict[str, int]]:
    """The autotuning candidates of ``attention_configs`` as plain dicts (TensorRT tactics)."""
    from . import _configs

    return _configs.attention_config_dicts((arch // 10, arch % 10), head_dim, fp8)


def attention_spec(dtype: str = "bf16", head_dim: int = 128, tactic: int = 0, arch: int = DEFAULT_ARCH) -> KernelSpec:
    """vidtrt::attention: q [B, Sq, H, D], k, v [B, Sk, H, D], key_lengths int32 [B] -> out [B, Sq, H, D]."""
    if dtype not in ("bf16", "fp16"):
        raise ValueError(f"dtype={dtype!r}: accepted bf16, fp16 (fp32 is a test-only path)")
    cfg = attention_tactics(head_dim, False, arch)[tactic]
    bm = cfg["BLOCK_M"]
    args = [_p(t, "input", dtype) for t in ("q", "k", "v")] + [_p("key_lengths", "input", "i32")]
    args += [_i("seq_q"), _i("seq_k"), _i("num_heads")]
    for t in "qkvo":
        args += [_i(f"stride_{t}b", True), _i(f"stride_{t}s", True), _i(f"stride_{t}h", True)]
    args += [_p("out", "output", dtype)]
    const = {"HEAD_DIM": head_dim, "BLOCK_M": bm, "BLOCK_N": cfg["BLOCK_N"],
             "QK_SCALE": LOG2E / math.sqrt(head_dim), "DOT_F32": False, "KV_DESC": False,
             "WARP_SPEC": False}  # fmt: skip

    def launch(dims: Dims, cdiv=py_cdiv):
        b, sq, h, d = dims["q"]
        sk = dims["k"][1]
        q_str = [sq * h * d, h * d, d]
        k_str = [sk * h * d, h * d, d]
        return (cdiv(sq, bm), b * h, 1), [sq, sk, h, *q_str, *k_str, *k_str, *q_str]

    return KernelSpec(
        plugin="vidtrt::attention", kernel_ref="vidtrt.kernels.attention:_attn_fwd_kernel", args=args,
        constexprs=const, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], launch=launch,
        io={"q": "[B,Sq,H,D]", "k": "[B,Sk,H,D]", "v": "[B,Sk,H,D]", "key_lengths": "[B] int32", "out": "[B,Sq,H,D]"},
        request={"kind": "attention", "dtype": dtype, "head_dim": head_dim, "tactic": tactic, "arch": arch},
    )  # fmt: skip


def attention_fp8_spec(head_dim: int = 128, out_dtype: str = "bf16", tactic: int = 0,
                       arch: int = DEFAULT_ARCH) -> KernelSpec:
    """vidtrt::attention_fp8: q8 [B, Sq, H, D], k8 [B, Sk, H, D] e4m3 with per-(batch, head) scales
    q_scale, k_scale float32 [B, H]; v8t e4m3 stored transposed [B, H, D, Sk16] (Sk16 = Sk rounded up
    to a multiple of 16, entries past Sk unread) with per-channel scales v_scale float32 [B, H, D];
    key_lengths int32 [B] -> out [B, Sq, H, D] in out_dtype.

    The token stride of v8t is compiled in (1) and its row stride is a multiple of 16: without both,
    ptxas can only load V byte by byte (LDG.U8 in the SASS) instead of 16-byte async copies."""
    cfg = attention_tactics(head_dim, True, arch)[tactic]
    bm = cfg["BLOCK_M"]
    args = [
        _p("q8", "input", "fp8"), _p("k8", "input", "fp8"), _p("v8t", "input", "fp8"),
        _p("q_scale", "input", "fp32"), _p("k_scale", "input", "fp32"), _p("v_scale", "input", "fp32"),
        _p("key_lengths", "input", "i32"),
        _i("seq_q"), _i("seq_k"), _i("num_heads"),
        _i("stride_qb", True), _i("stride_qs", True), _i("stride_qh", True),
        _i("stride_kb", True), _i("stride_ks", True), _i("stride_kh", True),
        _i("stride_vb", True), _i("stride_vh", True), _i("stride_vd", True),  # stride_vs: constexpr 1
        _i("stride_qsb"), _i("stride_qsh"), _i("stride_qsn"),
        _i("stride_ksb"), _i("stride_ksh"), _i("stride_ksn"),
        _i("stride_vsb", True), _i("stride_vsh", True),
        _i("stride_ob", True), _i("stride_os", True), _i("stride_oh", True),
        _p("out", "output", out_dtype),
    ]  # fmt: skip
    const = {"HEAD_DIM": head_dim, "BLOCK_M": bm, "BLOCK_N": cfg["BLOCK_N"], "Q_QBLOCK": 128, "K_QBLOCK": 128,
             "QK_SCALE": LOG2E / math.sqrt(head_dim), "EXACT_FP8": False, "stride_vs": 1,
             "KV_DESC": False, "WARP_SPEC": False}  # fmt: skip

    def launch(dims: Dims, cdiv=py_cdiv):
        b, sq, h, d = dims["q8"]
        sk = dims["k8"][1]
        sk16 = dims["v8t"][3]
        if isinstance(sk16, int) and isinstance(sk, int) and (sk16 % 16 or sk16 < sk):
            raise ValueError(f"v8t has {sk16} tokens per row: accepted k's {sk} rounded up to a multiple of 16")
        q_str = [sq * h * d, h * d, d]
        k_str = [sk * h * d, h * d, d]
        v_str = [h * d * sk16, d * sk16, sk16]  # [B, H, D, Sk16] seen as (b, s, h, d); s stride compiled in
        per_bh = [h, 1, 0]  # [B, H] scales: one per (batch, head), any token block
        return (cdiv(sq, bm), b * h, 1), [sq, sk, h, *q_str, *k_str, *v_str, *per_bh, *per_bh, h * d, d, *q_str]

    return KernelSpec(
        plugin="vidtrt::attention_fp8", kernel_ref="vidtrt.kernels.attention_fp8:_attn_fwd_fp8_kernel",
        args=args, constexprs=const, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], launch=launch,
        io={"q8": "[B,Sq,H,D] e4m3", "k8": "[B,Sk,H,D] e4m3", "v8t": "[B,H,D,Sk16] e4m3", "q_scale": "[B,H] fp32",
            "k_scale": "[B,H] fp32", "v_scale": "[B,H,D] fp32", "key_lengths": "[B] int32", "out": "[B,Sq,H,D]"},
        request={"kind": "attention_fp8", "head_dim": head_dim, "out_dtype": out_dtype, "tactic": tactic, "arch": arch},
    )  # fmt: skip


_LAYOUT_IO = {"kv_idx": "[H or 1,ceil(Sq/BM),MAXK] int32", "kv_cnt": "[H or 1,ceil(Sq/BM),2] int32",
              "kv_end": "[ceil(Sk/BN)] int32"}


def _layout_args() -> list[KernelArg]:
    return [_p("kv_idx", "input", "i32"), _p("kv_cnt", "input", "i32"), _p("kv_end", "input", "i32")]


def _static(x) -> int | None:
    """x as an int when it is one or a TensorRT build-time constant shape expression, else None."""
    if isinstance(x, int):
        return x
    try:
        return int(x.constant_value()) if getattr(x, "is_constant", False) is True else None
    except RuntimeError:  # a "fake" TensorRT shape expression
        return None


def _layout_scalars(dims: Dims, heads: Any, cdiv=py_cdiv) -> list[Any]:
    """stride_ih, stride_iq, stride_ch of a layout kv_idx [Hl, NQB, MAXK], kv_cnt [Hl, NQB, 2] with Hl = heads
    (one layout per head) or Hl = 1 (one layout for all heads: head strides 0, as the JIT wrapper passes)."""
    hl, nqb, maxk = dims["kv_idx"]
    hl_value, heads_value = _static(hl), _static(heads)
    if hl_value is not None and heads_value is not None:  # the STA graph's case: both build-time constants
        per_head = int(hl_value > 1)
    else:  # a dynamic Hl: cdiv(Hl - 1, H) is 1 for Hl = H > 1, 0 for Hl = 1
        per_head = cdiv(hl - 1, heads)
    return [nqb * maxk * per_head, maxk, nqb * 2 * per_head]


def attention_sta_spec(dtype: str = "bf16", head_dim: int = 128, block_m: int = 128, block_n: int = 64,
                       num_warps: int = 8, num_stages: int = 3) -> KernelSpec:
    """vidtrt::attention_sta: block-sparse attention (``kernels/block_sparse.py``): q [B, Sq, H, D], k, v
    [B, Sk, H, D], key_lengths int32 [B] and a BlockSparseLayout as three int32 tensors, per head or one
    for all heads (kv_idx [H or 1, NQB, MAXK], kv_cnt [H or 1, NQB, 2], kv_end [NKB]) made with ``block_m`` x
    ``block_n`` blocks (compiled in: a layout of other block sizes is wrong for this payload) -> out [B, Sq, H, D]."""
    if dtype not in ("bf16", "fp16"):
        raise ValueError(f"dtype={dtype!r}: accepted bf16, fp16")
    args = [_p(t, "input", dtype) for t in ("q", "k", "v")] + [_p("key_lengths", "input", "i32"), *_layout_args()]
    args += [_i("seq_q"), _i("seq_k"), _i("num_heads")]
    for t in "qkvo":
        args += [_i(f"stride_{t}b", True), _i(f"stride_{t}s", True), _i(f"stride_{t}h", True)]
    args += [_i("stride_ih"), _i("stride_iq"), _i("stride_ch"), _p("out", "output", dtype)]
    const = {"HEAD_DIM": head_dim, "BLOCK_M": block_m, "BLOCK_N": block_n,
             "QK_SCALE": LOG2E / math.sqrt(head_dim), "DOT_F32": False, "KV_DESC": False,
             "WARP_SPEC": False}  # fmt: skip

    def launch(dims: Dims, cdiv=py_cdiv):
        b, sq, h, d = dims["q"]
        sk = dims["k"][1]
        q_str = [sq * h * d, h * d, d]
        k_str = [sk * h * d, h * d, d]
        return (cdiv(sq, block_m), b * h, 1), [sq, sk, h, *q_str, *k_str, *k_str, *q_str,
                                               *_layout_scalars(dims, h, cdiv)]

    return KernelSpec(
        plugin="vidtrt::attention_sta", kernel_ref="vidtrt.kernels.block_sparse:_sparse_fwd_kernel", args=args,
        constexprs=const, num_warps=num_warps, num_stages=num_stages, launch=launch,
        io={"q": "[B,Sq,H,D]", "k": "[B,Sk,H,D]", "v": "[B,Sk,H,D]", "key_lengths": "[B] int32", **_LAYOUT_IO,
            "out": "[B,Sq,H,D]"},
        request={"kind": "attention_sta", "dtype": dtype, "head_dim": head_dim, "block_m": block_m,
                 "block_n": block_n, "num_warps": num_warps, "num_stages": num_stages},
    )  # fmt: skip


def attention_sta_fp8_spec(head_dim: int = 128, out_dtype: str = "bf16", block_m: int = 128, block_n: int = 64,
                           num_warps: int = 8, num_stages: int = 3) -> KernelSpec:
    """vidtrt::attention_sta_fp8: the FP8 block-sparse kernel with the tensors of vidtrt::attention_fp8
    (q8, k8, v8t, [B, H] q / k scales, [B, H, D] v scales, key_lengths) plus the layout of
    vidtrt::attention_sta."""
    args = [
        _p("q8", "input", "fp8"), _p("k8", "input", "fp8"), _p("v8t", "input", "fp8"),
        _p("q_scale", "input", "fp32"), _p("k_scale", "input", "fp32"), _p("v_scale", "input", "fp32"),
        _p("key_lengths", "input", "i32"), *_layout_args(),
        _i("seq_q"), _i("seq_k"), _i("num_heads"),
        _i("stride_qb", True), _i("stride_qs", True), _i("stride_qh", True),
        _i("stride_kb", True), _i("stride_ks", True), _i("stride_kh", True),
        _i("stride_vb", True), _i("stride_vh", True), _i("stride_vd", True),  # stride_vs: constexpr 1
        _i("stride_qsb"), _i("stride_qsh"), _i("stride_qsn"),
        _i("stride_ksb"), _i("stride_ksh"), _i("stride_ksn"),
        _i("stride_vsb", True), _i("stride_vsh", True),
        _i("stride_ob", True), _i("stride_os", True), _i("stride_oh", True),
        _i("stride_ih"), _i("stride_iq"), _i("stride_ch"),
        _p("out", "output", out_dtype),
    ]  # fmt: skip
    const = {"HEAD_DIM": head_dim, "BLOCK_M": block_m, "BLOCK_N": block_n, "Q_QBLOCK": 128, "K_QBLOCK": 128,
             "QK_SCALE": LOG2E / math.sqrt(head_dim), "EXACT_FP8": False, "stride_vs": 1,
             "KV_DESC": False, "WARP_SPEC": False}  # fmt: skip

    def launch(dims: Dims, cdiv=py_cdiv):
        b, sq, h, d = dims["q8"]
        sk = dims["k8"][1]
        sk16 = dims["v8t"][3]
        q_str = [sq * h * d, h * d, d]
        k_str = [sk * h * d, h * d, d]
        v_str = [h * d * sk16, d * sk16, sk16]
        per_bh = [h, 1, 0]
        return (cdiv(sq, block_m), b * h, 1), [sq, sk, h, *q_str, *k_str, *v_str, *per_bh, *per_bh, h * d, d,
                                               *q_str, *_layout_scalars(dims, h, cdiv)]

    return KernelSpec(
        plugin="vidtrt::attention_sta_fp8", kernel_ref="vidtrt.kernels.block_sparse:_sparse_fwd_fp8_kernel",
        args=args, constexprs=const, num_warps=num_warps, num_stages=num_stages, launch=launch,
        io={"q8": "[B,Sq,H,D] e4m3", "k8": "[B,Sk,H,D] e4m3", "v8t": "[B,H,D,Sk16] e4m3", "q_scale": "[B,H] fp32",
            "k_scale": "[B,H] fp32", "v_scale": "[B,H,D] fp32", "key_lengths": "[B] int32", **_LAYOUT_IO,
            "out": "[B,Sq,H,D]"},
        request={"kind": "attention_sta_fp8", "head_dim": head_dim, "out_dtype": out_dtype, "block_m": block_m,
                 "block_n": block_n, "num_warps": num_warps, "num_stages": num_stages},
    )  # fmt: skip


SPEC_BUILDERS = {"rope": rope_spec, "attention": attention_spec, "attention_fp8": attention_fp8_spec,
                 "attention_sta": attention_sta_spec, "attention_sta_fp8": attention_sta_fp8_spec}


def spec_from_request(request: dict[str, Any]) -> KernelSpec:
    req = dict(request)
    kind = req.pop("kind")
    if kind not in SPEC_BUILDERS:
        raise ValueError(f"unknown kernel kind {kind!r}: accepted {', '.join(SPEC_BUILDERS)}")
    return SPEC_BUILDERS[kind](**req)


# ----------------------------------------------------------------------------------------------
# Compilation
# ----------------------------------------------------------------------------------------------
@dataclass
class AotPayload:
    plugin: str
    kernel_name: str
    ptx: str
    target: str
    ptx_version: str
    num_warps: int
    num_stages: int
    block: tuple[int, int, int]
    shared_mem: int
    args: list[dict[str, Any]]
    constexprs: dict[str, Any]
    ptx_params: list[str]  # the .entry parameter declarations after clean-up
    stripped_params: list[str]  # hidden trailing Triton parameters removed (never read, no scratch)
    global_scratch_size: int
    profile_scratch_size: int
    cubin_sha256: str  # of Triton's own cubin (from the unedited PTX)
    cubin_size: int
    ptxas_ok: bool  # the edited PTX assembles for the target
    ptxas_log: str
    registers: int | None
    triton_version: str
    request: dict[str, Any]
    divisibility_hints: bool = True  # 16-byte alignment hints reached the compiler
    spill_bytes: int | None = None  # ptxas: spill stores + loads (local memory traffic per thread)
    sass_opcodes: dict[str, int] = field(default_factory=dict)  # SASS mnemonic counts (cuobjdump)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> AotPayload:
        d = dict(d)
        d["block"] = tuple(d["block"])
        return cls(**d)


_ENTRY_RE = re.compile(r"(\.visible\s+\.entry\s+(\w+)\s*\()(.*?)(\))", re.S)


def parse_entry(ptx: str) -> tuple[str, list[str]]:
    """(entry name, parameter declarations) of the PTX's single kernel."""
    m = _ENTRY_RE.search(ptx)
    if m is None:
        raise ValueError("no .visible .entry in PTX")
    params = [p.strip() for p in m.group(3).split(",") if p.strip()]
    return m.group(2), params


def param_name(decl: str) -> str:
    return decl.split()[-1]


def strip_trailing_params(ptx: str, keep: int) -> tuple[str, list[str]]:
    """Remove entry parameters after the first ``keep`` when the body never reads them."""
    m = _ENTRY_RE.search(ptx)
    name, params = parse_entry(ptx)
    extra = params[keep:]
    body = ptx[m.end():]
    for decl in extra:
        pname = param_name(decl)
        if re.search(rf"\b{re.escape(pname)}\b", body):
            raise ValueError(f"kernel {name} reads its hidden parameter {pname}: cannot drop it")
    new_params = ",\n\t".join(params[:keep])
    new_ptx = ptx[: m.start(3)] + "\n\t" + new_params + "\n" + ptx[m.end(3):]
    return new_ptx, extra


def ptx_type_matches(decl: str, arg_type: str) -> bool:
    if arg_type.startswith("*"):
        return ".u64" in decl or ".b64" in decl
    if arg_type in ("i32", "u32"):
        return any(t in decl for t in (".u32", ".s32", ".b32"))
    return False


@dataclass
class PtxasReport:
    """What ptxas and cuobjdump say of one PTX: assembled?, registers, local-memory spills, SASS mix."""

    ok: bool
    log: str
    registers: int | None
    spill_bytes: int | None  # spill stores + spill loads (0: everything lives in registers)
    sass_opcodes: dict[str, int]  # full SASS mnemonic -> count (HGMMA.*, LDGSTS.E.BYPASS.128, LDG.E.U8, ...)


_SASS_OP_RE = re.compile(r"/\*[0-9a-f]{4,}\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")


def _ptxas_check(ptx: str, arch: str) -> PtxasReport:
    try:
        from triton.backends.nvidia.compiler import get_ptxas

        ptxas = get_ptxas(int(re.sub(r"\D", "", arch))).path
    except Exception:  # noqa: BLE001 - older triton: bundled path
        import triton

        ptxas = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "ptxas")
    cuobjdump = os.path.join(os.path.dirname(ptxas), "cuobjdump")
    sass = ""
    with tempfile.TemporaryDirectory() as d:
        src, cubin = os.path.join(d, "k.ptx"), os.path.join(d, "k.cubin")
        with open(src, "w") as f:
            f.write(ptx)
        proc = subprocess.run([ptxas, "-v", f"-arch={arch}", src, "-o", cubin], capture_output=True, text=True)
        if proc.returncode == 0 and os.path.exists(cuobjdump):
            sass = subprocess.run([cuobjdump, "-sass", cubin], capture_output=True, text=True).stdout
    log = (proc.stdout + proc.stderr).strip()
    regs = re.search(r"Used (\d+) registers", log)
    spills = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", log)
    ops: dict[str, int] = {}
    for m in _SASS_OP_RE.finditer(sass):
        ops[m.group(1)] = ops.get(m.group(1), 0) + 1
    return PtxasReport(
        ok=proc.returncode == 0, log=log[-2000:], registers=int(regs.group(1)) if regs else None,
        spill_bytes=int(spills.group(1)) + int(spills.group(2)) if spills else None, sass_opcodes=ops,
    )  # fmt: skip


def sass_count(opcodes: dict[str, int], prefix: str) -> int:
    """Instructions whose mnemonic is ``prefix`` or starts with ``prefix.`` (e.g. "HGMMA", "LDG.E.U8")."""
    return sum(n for op, n in opcodes.items() if op == prefix or op.startswith(prefix + "."))


def _interpreter_on() -> bool:
    import triton.language as tl
    from triton.runtime.jit import JITFunction

    return not isinstance(getattr(tl, "zeros", None), JITFunction)


def _triton_compile(spec: KernelSpec, arch: int, ptx_version: int | None, types: dict[str, str] | None = None,
                    constexprs: dict[str, Any] | None = None):
    """``triton.compile`` of a spec for ``sm_<arch>`` (no GPU needed), with its 16-byte divisibility hints;
    ``types`` / ``constexprs`` override argument types / constants. Returns (compiled, hints used)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if _interpreter_on():
        raise RuntimeError(
            "AOT compilation needs a process where TRITON_INTERPRET was off when triton was imported; "
            "use vidtrt.kernels.aot.build_payloads_subprocess"
        )
    mod_name, fn_name = spec.kernel_ref.split(":")
    fn = getattr(importlib.import_module(mod_name), fn_name)
    const = {**spec.constexprs, **(constexprs or {})}
    arg_index = {n: i for i, n in enumerate(fn.arg_names)}
    order = [a.name for a in spec.args]
    runtime_params = [n for n in fn.arg_names if n not in const]
    if len(runtime_params) != len(order):
        raise ValueError(f"{spec.kernel_ref}: kernel has runtime params {runtime_params}, spec lists {order}")
    signature: dict[str, str] = {}
    attrs: dict[tuple[int], list] = {}
    for pname, a in zip(runtime_params, spec.args, strict=True):
        signature[pname] = (types or {}).get(a.name, a.type)
        if a.divisible16 and signature[pname] == a.type:
            attrs[(arg_index[pname],)] = [["tt.divisibility", 16]]
    for k in const:
        signature[k] = "constexpr"
    options = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    if ptx_version is not None:
        options["ptx_version"] = ptx_version
    target = GPUTarget("cuda", arch, 32)
    try:
        return triton.compile(ASTSource(fn, signature, const, attrs), target=target, options=options), True
    except Exception:  # noqa: BLE001 - a Triton whose attrs format differs: compile without the hints
        return triton.compile(ASTSource(fn, signature, const), target=target, options=options), False


def compile_spec(spec: KernelSpec, arch: int = DEFAULT_ARCH, ptx_version: int | None = PTX_VERSION,
                 check_ptxas: bool = True) -> AotPayload:
    """Compile one spec for ``sm_<arch>`` on this machine (no GPU needed)."""
    import triton

    compiled, hints = _triton_compile(spec, arch, ptx_version)
    md = compiled.metadata
    ptx = compiled.asm["ptx"]
    gs = int(getattr(md, "global_scratch_size", 0) or 0)
    ps = int(getattr(md, "profile_scratch_size", 0) or 0)
    if gs or ps:
        raise ValueError(f"{spec.kernel_ref} needs scratch memory ({gs} / {ps} bytes): no AOT launcher passes it")
    ptx_clean, stripped = strip_trailing_params(ptx, len(spec.args))
    name, params = parse_entry(ptx_clean)
    for decl, a in zip(params, spec.args, strict=True):
        if not ptx_type_matches(decl, a.type):
            raise ValueError(f"PTX parameter {decl!r} does not match argument {a.name} ({a.type})")
    target_str = re.search(r"\.target\s+(\w+)", ptx_clean).group(1)
    rep = _ptxas_check(ptx_clean, target_str) if check_ptxas else PtxasReport(False, "not run", None, None, {})
    cubin = compiled.asm.get("cubin", b"") or b""
    return AotPayload(
        plugin=spec.plugin, kernel_name=name, ptx=ptx_clean, target=target_str,
        ptx_version=re.search(r"\.version\s+([\d.]+)", ptx_clean).group(1),
        num_warps=md.num_warps, num_stages=spec.num_stages, block=(md.num_warps * 32, 1, 1),
        shared_mem=int(md.shared), args=[asdict(a) for a in spec.args],
        constexprs={k: v for k, v in spec.constexprs.items()}, ptx_params=params, stripped_params=stripped,
        global_scratch_size=gs, profile_scratch_size=ps, cubin_sha256=hashlib.sha256(cubin).hexdigest(),
        cubin_size=len(cubin), ptxas_ok=rep.ok, ptxas_log=rep.log, registers=rep.registers,
        spill_bytes=rep.spill_bytes, sass_opcodes=rep.sass_opcodes, triton_version=triton.__version__,
        request=dict(spec.request), divisibility_hints=hints,
    )  # fmt: skip


def attention_tma_sass(head_dim: int = 128, tactic: int = 0, arch: int = DEFAULT_ARCH, fp8: bool = False
                       ) -> PtxasReport:
    """ptxas / SASS facts of the attention kernels in their TMA flavour (``tma=True``: K / V as tensor
    descriptors). Not a TensorRT payload: a host TMA descriptor is a 128-byte kernel parameter that
    the AOT plugin launch cannot pass, so this exists only to check the sm_90a code."""
    spec = attention_fp8_spec(head_dim, "bf16", tactic, arch) if fp8 else attention_spec("bf16", head_dim, tactic, arch)
    bn, el = spec.constexprs["BLOCK_N"], "fp8e4nv" if fp8 else "bf16"
    k_tile = f"tensordesc<{el}[1,{bn},1,{head_dim}]>"
    types = {"k8": k_tile, "v8t": f"tensordesc<{el}[1,1,{head_dim},{bn}]>"} if fp8 else {"k": k_tile, "v": k_tile}
    # Triton's own PTX ISA version, as the JIT uses (the TMA copies it emits need PTX >= 8.6)
    compiled, _ = _triton_compile(spec, arch, None, types, {"KV_DESC": True})
    ptx = compiled.asm["ptx"]
    return _ptxas_check(ptx, re.search(r"\.target\s+(\w+)", ptx).group(1))


def default_requests(head_dims: Sequence[int] = (128,), all_tactics: bool = False) -> list[dict[str, Any]]:
    """The payload set the TensorRT plugins use (bf16 activations, Hopper)."""
    reqs: list[dict[str, Any]] = []
    for d in head_dims:
        reqs.append({"kind": "rope", "dtype": "bf16", "head_dim": d})
        reqs.append({"kind": "rope", "dtype": "bf16", "head_dim": d, "fp8_out": True})
        n_bf16 = len(attention_tactics(d, False)) if all_tactics else 1
        n_fp8 = len(attention_tactics(d, True)) if all_tactics else 1
        reqs += [{"kind": "attention", "dtype": "bf16", "head_dim": d, "tactic": t} for t in range(n_bf16)]
        reqs += [{"kind": "attention_fp8", "head_dim": d, "tactic": t} for t in range(n_fp8)]
    return reqs


_PAYLOAD_CACHE: dict[str, AotPayload] = {}


def _request_key(request: dict[str, Any]) -> str:
    return json.dumps(spec_from_request(request).request, sort_keys=True)


def seed_payload_cache(payloads: Sequence[AotPayload]) -> None:
    """Make ``get_payload`` return these (e.g. built in a subprocess) instead of compiling."""
    for p in payloads:
        _PAYLOAD_CACHE[_request_key(p.request)] = p


def get_payload(request: dict[str, Any], arch: int = DEFAULT_ARCH) -> AotPayload:
    """The payload of one spec request, compiled once per process."""
    key = _request_key(request)
    if key not in _PAYLOAD_CACHE:
        _PAYLOAD_CACHE[key] = compile_spec(spec_from_request(request), arch=arch)
    return _PAYLOAD_CACHE[key]


def build_payloads(requests: Sequence[dict[str, Any]], arch: int = DEFAULT_ARCH) -> list[AotPayload]:
    return [compile_spec(spec_from_request(r), arch=arch) for r in requests]


def build_payloads_subprocess(requests: Sequence[dict[str, Any]], arch: int = DEFAULT_ARCH, timeout: float = 900,
                              jobs: int = 1) -> list[AotPayload]:
    """``build_payloads`` in fresh Pythons with TRITON_INTERPRET unset (callable from any process);
    ``jobs`` child processes compile disjoint slices of the requests in parallel."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    requests = list(requests)
    jobs = max(1, min(jobs, len(requests)))
    slices = [requests[i::jobs] for i in range(jobs)]
    with tempfile.TemporaryDirectory() as d:
        procs = []
        for j, part in enumerate(slices):
            req_path, out_path = os.path.join(d, f"requests{j}.json"), os.path.join(d, f"payloads{j}.json")
            with open(req_path, "w") as f:
                json.dump(part, f)
            cmd = [sys.executable, "-m", "vidtrt.kernels.aot", "--requests", req_path, "--out", out_path]
            procs.append((subprocess.Popen(cmd + ["--arch", str(arch)], env=env, stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True), out_path))  # fmt: skip
        results: list[list[AotPayload]] = []
        for proc, out_path in procs:
            _, err = proc.communicate(timeout=timeout)
            if proc.returncode != 0:
                tail = err.strip().splitlines()[-20:]
                raise RuntimeError("AOT compile subprocess failed: " + " | ".join(tail))
            with open(out_path) as f:
                results.append([AotPayload.from_json(p) for p in json.load(f)])
    ordered: list[AotPayload] = [None] * len(requests)  # type: ignore[list-item]
    for j, part in enumerate(results):
        for i, p in enumerate(part):
            ordered[j + i * jobs] = p
    return ordered


def launch_values(payload: AotPayload, dims: Dims) -> tuple[tuple[int, int, int], list[int]]:
    """Concrete (grid, int32 scalars) of a payload for concrete input shapes."""
    spec = spec_from_request(payload.request)
    grid, scalars = spec.launch(dims, py_cdiv)
    return tuple(int(g) for g in grid), [int(s) for s in scalars]


def _main(argv: Sequence[str] | None = None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="Compile vidtrt's Triton kernels ahead of time (no GPU needed).")
    ap.add_argument("--requests", help="JSON list of spec requests (default: the TensorRT plugin set)")
    ap.add_argument("--out", required=True, help="where to write the payloads (JSON)")
    ap.add_argument("--arch", type=int, default=DEFAULT_ARCH, help="SM version, e.g. 90 (Hopper), 89, 80")
    ap.add_argument("--all-tactics", action="store_true", help="every autotuning candidate, not just the first")
    ap.add_argument("--ptx-dir", help="also write each payload's PTX file here")
    a = ap.parse_args(argv)
    if a.requests:
        with open(a.requests) as f:
            reqs = json.load(f)
    else:
        reqs = default_requests(all_tactics=a.all_tactics)
    payloads = build_payloads(reqs, arch=a.arch)
    with open(a.out, "w") as f:
        json.dump([p.to_json() for p in payloads], f)
    if a.ptx_dir:
        os.makedirs(a.ptx_dir, exist_ok=True)
        for i, p in enumerate(payloads):
            with open(os.path.join(a.ptx_dir, f"{i:02d}_{p.plugin.replace('::', '_')}.ptx"), "w") as f:
                f.write(p.ptx)
    return 0


if __name__ == "__main__":
    sys.exit(_main())
