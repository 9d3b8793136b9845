"""TensorRT quickly deployable plugins (``tensorrt.plugin``) for the fused kernels, AOT only.

Plugins (namespace ``vidtrt``; ONNX nodes: op_type = name, ``plugin_namespace="vidtrt"``):

  qk_norm_rope      q, k [B,S,H,D] bf16|fp16; weight_q, weight_k [D] fp32; cos, sin [N,D] fp32
                    -> q_out, k_out like q                                         attr: eps
  qk_norm_rope_fp8  the same + q_scale, k_scale [H] fp32 -> q_out, k_out fp8 e4m3   attr: eps
  attention         q, k, v [B,S,H,D] bf16|fp16; key_lengths [B] int32 -> out like q
  attention_fp8     q8, k8 [B,S,H,D] fp8; v8t [B,H,D,S16] fp8 (S16: S rounded up to a multiple
                    of 16, 16-byte rows); q_scale, k_scale [B,H] fp32; v_scale [B,H,D] fp32;
                    key_lengths [B] int32 -> out [B,S,H,D] bf16
  attention_sta     attention's inputs + the block-sparse layout (sliding-tile windows):
                    kv_idx [H,NQB,MAXK], kv_cnt [H,NQB,2], kv_end [NKB] int32 (128 x 64 blocks;
                    Hl = 1 instead of H: one layout read by every head)
  attention_sta_fp8 attention_fp8's inputs + the same layout

Each plugin has an ``aot_impl`` returning the Triton kernel compiled to PTX (``kernels/aot.py``):
the engine embeds the PTX and launches it with the symbolic grid and int32 scalars given here, so
running the engine needs no Python (usable from Triton Inference Server's tensorrt backend).
The attention plugins advertise the autotuning candidates as TensorRT tactics. Attributes are
not serialized with AOT plugins: eps and the head dim are compiled into the PTX.

Importing this module needs no TensorRT; ``register_plugins()`` raises ``EngineError`` when it is
missing. Everything up to the TensorRT calls (specs, payloads, launch math) is tested on CPU.
"""

from __future__ import annotations

from typing import Any

from vidtrt.errors import EngineError

from . import aot

try:  # pragma: no cover - TensorRT is not installable on the project's machines
    import tensorrt as trt
    import tensorrt.plugin as trtp
except ImportError:  # noqa: BLE001
    trt = None
    trtp = None

NAMESPACE = "vidtrt"

# plugin name -> (inputs, attributes, outputs); the order is the kernels' argument order.
PLUGINS: dict[str, dict[str, list[str]]] = {
    "qk_norm_rope": {
        "inputs": ["q", "k", "weight_q", "weight_k", "cos", "sin"],
        "attrs": ["eps"],
        "outputs": ["q_out", "k_out"],
    },
    "qk_norm_rope_fp8": {
        "inputs": ["q", "k", "weight_q", "weight_k", "cos", "sin", "q_scale", "k_scale"],
        "attrs": ["eps"],
        "outputs": ["q_out", "k_out"],
    },
    "attention": {"inputs": ["q", "k", "v", "key_lengths"], "attrs": [], "outputs": ["out"]},
    "attention_fp8": {
        "inputs": ["q8", "k8", "v8t", "q_scale", "k_scale", "v_scale", "key_lengths"],
        "attrs": [],
        "outputs": ["out"],
    },
}

# Block-sparse (sliding-tile) attention: the layout arrives as three int32 tensors made on the host
# (``kernels/sparse_layout.sliding_tile_layout`` per head, 128 x 64 blocks: the block sizes are compiled
# into the payload); graph inputs of the STA plugin export (``vidtrt.export.sta_onnx``).
_LAYOUT = ["kv_idx", "kv_cnt", "kv_end"]
STA_PLUGINS: dict[str, dict[str, list[str]]] = {
    "attention_sta": {"inputs": ["q", "k", "v", "key_lengths", *_LAYOUT], "attrs": [], "outputs": ["out"]},
    "attention_sta_fp8": {
        "inputs": ["q8", "k8", "v8t", "q_scale", "k_scale", "v_scale", "key_lengths", *_LAYOUT],
        "attrs": [],
        "outputs": ["out"],
    },
}
ALL_PLUGINS = {**PLUGINS, **STA_PLUGINS}

# TensorRT type strings of each plugin's I/O (AutoTuneCombination: inputs then outputs).
IO_TYPES = {
    "qk_norm_rope": "BF16|FP16, BF16|FP16, FP32, FP32, FP32, FP32, BF16|FP16, BF16|FP16",
    "qk_norm_rope_fp8": "BF16|FP16, BF16|FP16, FP32, FP32, FP32, FP32, FP32, FP32, FP8, FP8",
    "attention": "BF16|FP16, BF16|FP16, BF16|FP16, INT32, BF16|FP16",
    "attention_fp8": "FP8, FP8, FP8, FP32, FP32, FP32, INT32, BF16",
    "attention_sta": "BF16|FP16, BF16|FP16, BF16|FP16, INT32, INT32, INT32, INT32, BF16|FP16",
    "attention_sta_fp8": "FP8, FP8, FP8, FP32, FP32, FP32, INT32, INT32, INT32, INT32, BF16",
}


def plugin_requests(name: str, dtype: str, head_dim: int, eps: float = 1e-6, tactic: int = 0) -> dict[str, Any]:
    """The ``kernels/aot.py`` spec request behind one plugin instance."""
    if name == "qk_norm_rope":
        return {"kind": "rope", "dtype": dtype, "head_dim": head_dim, "eps": eps}
    if name == "qk_norm_rope_fp8":
        return {"kind": "rope", "dtype": dtype, "head_dim": head_dim, "eps": eps, "fp8_out": True}
    if name == "attention":
        return {"kind": "attention", "dtype": dtype, "head_dim": head_dim, "tactic": tactic}
    if name == "attention_fp8":
        return {"kind": "attention_fp8", "head_dim": head_dim, "tactic": tactic}
    if name == "attention_sta":
        return {"kind": "attention_sta", "dtype": dtype, "head_dim": head_dim}
    if name == "attention_sta_fp8":
        return {"kind": "attention_sta_fp8", "head_dim": head_dim}
    raise ValueError(f"unknown plugin {name!r}: accepted {', '.join(ALL_PLUGINS)}")


def _const_int(x) -> int:
    """An int from an int or a TensorRT constant shape expression (the head dim is static)."""
    if isinstance(x, int):
        return x
    v = getattr(x, "constant_value", None)
    if v is None:
        raise EngineError("the head dimension of a vidtrt plugin input must be a build-time constant")
    return int(v() if callable(v) else v)


def plugin_tactics(name: str, head_dim: int = 128) -> list[int]:
    if name == "attention":
        return list(range(len(aot.attention_tactics(head_dim, False))))
    if name == "attention_fp8":
        return list(range(len(aot.attention_tactics(head_dim, True))))
    return [0]


def aot_launch(name: str, dtype: str, dims: dict[str, Any], *, eps: float = 1e-6, tactic: int = 0,
               cdiv=aot.py_cdiv) -> tuple[aot.AotPayload, tuple[Any, Any, Any], list[Any]]:
    """(payload, grid, int32 scalars) of one plugin for input dims (ints, or TensorRT shape exprs)."""
    head_dim = _const_int(dims[ALL_PLUGINS[name]["inputs"][0]][3])
    req = plugin_requests(name, dtype, head_dim, eps, tactic)
    payload = aot.get_payload(req)
    grid, scalars = aot.spec_from_request(req).launch(dims, cdiv)
    return payload, grid, scalars


def _trt_dtype_name(dt) -> str:
    return {trt.bfloat16: "bf16", trt.float16: "fp16", trt.float32: "fp32"}.get(dt, str(dt))


_REGISTERED = False


def register_plugins() -> list[str]:
    """Register the vidtrt plugins with ``tensorrt.plugin`` (idempotent); returns their ids."""
    global _REGISTERED, trt, trtp
    if trtp is None:  # TensorRT may have become importable after this module was (e.g. a path set later)
        try:
            import tensorrt as trt
            import tensorrt.plugin as trtp
        except ImportError:
            trt = trtp = None
    if trtp is None:
        raise EngineError(
            "TensorRT is not installed: the vidtrt plugins need the tensorrt package (>= 10.9, with "
            "tensorrt.plugin); install it on the GPU host or use the torch / ONNX Runtime engines"
        )
    if not _REGISTERED:
        _define_plugins(trt, trtp)
        _REGISTERED = True
    return [f"{NAMESPACE}::{n}" for n in ALL_PLUGINS]


def _define_plugins(trt, trtp) -> None:  # noqa: C901 - one block per plugin, kept together
    def make_aot(name: str):
        def impl(*args, **kwargs):
            outputs = kwargs.pop("outputs", None)
            tactic = kwargs.pop("tactic", 0) or 0
            eps = kwargs.get("eps", 1e-6)
            inputs = dict(zip(ALL_PLUGINS[name]["inputs"], args, strict=False))
            dims = {k: v.shape_expr for k, v in inputs.items()}
            first = inputs[ALL_PLUGINS[name]["inputs"][0]]
            dtype = _trt_dtype_name(first.dtype) if name not in ("attention_fp8", "attention_sta_fp8") else "bf16"
            payload, grid, scalars = aot_launch(name, dtype, dims, eps=eps, tactic=tactic, cdiv=trtp.cdiv)
            launch = trtp.KernelLaunchParams()
            launch.grid_x, launch.grid_y, launch.grid_z = grid
            launch.block_x = payload.block[0]
            launch.shared_mem = payload.shared_mem
            extra = trtp.SymIntExprs.from_tuple([trtp.SymInt32(s) for s in scalars])
            del outputs
            return payload.kernel_name.encode(), payload.ptx.encode(), launch, extra

        return impl

    # --- qk_norm_rope ---------------------------------------------------------------------------
    @trtp.register(f"{NAMESPACE}::qk_norm_rope")
    def _rope_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, weight_q: trtp.TensorDesc, weight_k: trtp.TensorDesc,
                   cos: trtp.TensorDesc, sin: trtp.TensorDesc, eps: float) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return q.like(), k.like()

    @trtp.autotune(f"{NAMESPACE}::qk_norm_rope")
    def _rope_tune(q, k, weight_q, weight_k, cos, sin, eps: float, outputs):
        return [trtp.AutoTuneCombination(IO_TYPES["qk_norm_rope"])]

    rope_aot = make_aot("qk_norm_rope")

    @trtp.aot_impl(f"{NAMESPACE}::qk_norm_rope")
    def _rope_aot(q, k, weight_q, weight_k, cos, sin, eps: float, outputs, tactic):
        return rope_aot(q, k, weight_q, weight_k, cos, sin, eps=eps, outputs=outputs, tactic=tactic)

    # --- qk_norm_rope_fp8 -----------------------------------------------------------------------
    @trtp.register(f"{NAMESPACE}::qk_norm_rope_fp8")
    def _rope8_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, weight_q: trtp.TensorDesc, weight_k: trtp.TensorDesc,
                    cos: trtp.TensorDesc, sin: trtp.TensorDesc, q_scale: trtp.TensorDesc, k_scale: trtp.TensorDesc,
                    eps: float) -> tuple[trtp.TensorDesc, trtp.TensorDesc]:
        return (trtp.from_shape_expr(q.shape_expr, dtype=trt.fp8),
                trtp.from_shape_expr(k.shape_expr, dtype=trt.fp8))  # fmt: skip

    @trtp.autotune(f"{NAMESPACE}::qk_norm_rope_fp8")
    def _rope8_tune(q, k, weight_q, weight_k, cos, sin, q_scale, k_scale, eps: float, outputs):
        return [trtp.AutoTuneCombination(IO_TYPES["qk_norm_rope_fp8"])]

    rope8_aot = make_aot("qk_norm_rope_fp8")

    @trtp.aot_impl(f"{NAMESPACE}::qk_norm_rope_fp8")
    def _rope8_aot(q, k, weight_q, weight_k, cos, sin, q_scale, k_scale, eps: float, outputs, tactic):
        return rope8_aot(q, k, weight_q, weight_k, cos, sin, q_scale, k_scale, eps=eps, outputs=outputs, tactic=tactic)

    # --- attention ------------------------------------------------------------------------------
    @trtp.register(f"{NAMESPACE}::attention")
    def _attn_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc,
                   key_lengths: trtp.TensorDesc) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(f"{NAMESPACE}::attention")
    def _attn_tune(q, k, v, key_lengths, outputs):
        c = trtp.AutoTuneCombination(IO_TYPES["attention"])
        c.tactics([t + 1 for t in plugin_tactics("attention", 128)])  # TensorRT tactics start at 1
        return [c]

    attn_aot = make_aot("attention")

    @trtp.aot_impl(f"{NAMESPACE}::attention")
    def _attn_aot(q, k, v, key_lengths, outputs, tactic):
        return attn_aot(q, k, v, key_lengths, outputs=outputs, tactic=max(int(tactic or 1) - 1, 0))

    # --- attention_fp8 --------------------------------------------------------------------------
    @trtp.register(f"{NAMESPACE}::attention_fp8")
    def _attn8_desc(
        q8: trtp.TensorDesc, k8: trtp.TensorDesc, v8t: trtp.TensorDesc, q_scale: trtp.TensorDesc,
        k_scale: trtp.TensorDesc, v_scale: trtp.TensorDesc, key_lengths: trtp.TensorDesc,
    ) -> trtp.TensorDesc:
        return trtp.from_shape_expr(q8.shape_expr, dtype=trt.bfloat16)

    @trtp.autotune(f"{NAMESPACE}::attention_fp8")
    def _attn8_tune(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, outputs):
        c = trtp.AutoTuneCombination(IO_TYPES["attention_fp8"])
        c.tactics([t + 1 for t in plugin_tactics("attention_fp8", 128)])
        return [c]

    attn8_aot = make_aot("attention_fp8")

    @trtp.aot_impl(f"{NAMESPACE}::attention_fp8")
    def _attn8_aot(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, outputs, tactic):
        return attn8_aot(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, outputs=outputs,
                         tactic=max(int(tactic or 1) - 1, 0))  # fmt: skip

    # --- attention_sta / attention_sta_fp8 (block-sparse, one tactic: the layout fixes the blocks) ----------
    @trtp.register(f"{NAMESPACE}::attention_sta")
    def _sta_desc(q: trtp.TensorDesc, k: trtp.TensorDesc, v: trtp.TensorDesc, key_lengths: trtp.TensorDesc,
                  kv_idx: trtp.TensorDesc, kv_cnt: trtp.TensorDesc, kv_end: trtp.TensorDesc) -> trtp.TensorDesc:
        return q.like()

    @trtp.autotune(f"{NAMESPACE}::attention_sta")
    def _sta_tune(q, k, v, key_lengths, kv_idx, kv_cnt, kv_end, outputs):
        return [trtp.AutoTuneCombination(IO_TYPES["attention_sta"])]

    sta_aot = make_aot("attention_sta")

    @trtp.aot_impl(f"{NAMESPACE}::attention_sta")
    def _sta_aot(q, k, v, key_lengths, kv_idx, kv_cnt, kv_end, outputs, tactic):
        return sta_aot(q, k, v, key_lengths, kv_idx, kv_cnt, kv_end, outputs=outputs, tactic=0)

    @trtp.register(f"{NAMESPACE}::attention_sta_fp8")
    def _sta8_desc(
        q8: trtp.TensorDesc, k8: trtp.TensorDesc, v8t: trtp.TensorDesc, q_scale: trtp.TensorDesc,
        k_scale: trtp.TensorDesc, v_scale: trtp.TensorDesc, key_lengths: trtp.TensorDesc, kv_idx: trtp.TensorDesc,
        kv_cnt: trtp.TensorDesc, kv_end: trtp.TensorDesc,
    ) -> trtp.TensorDesc:
        return trtp.from_shape_expr(q8.shape_expr, dtype=trt.bfloat16)

    @trtp.autotune(f"{NAMESPACE}::attention_sta_fp8")
    def _sta8_tune(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, kv_idx, kv_cnt, kv_end, outputs):
        return [trtp.AutoTuneCombination(IO_TYPES["attention_sta_fp8"])]

    sta8_aot = make_aot("attention_sta_fp8")

    @trtp.aot_impl(f"{NAMESPACE}::attention_sta_fp8")
    def _sta8_aot(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, kv_idx, kv_cnt, kv_end, outputs, tactic):
        return sta8_aot(q8, k8, v8t, q_scale, k_scale, v_scale, key_lengths, kv_idx, kv_cnt, kv_end, outputs=outputs,
                        tactic=0)
