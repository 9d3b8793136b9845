"""FP8 (e4m3) linear layers for the DiT: ``Fp8Linear`` and :func:`swap_linears_to_fp8`.

One layer computes ``y = (x8 @ w8^T) * scale_x * scale_w + bias`` with

  * ``w8 = e4m3(clamp(W / scale_w, +-448))``, quantized once when the layer is made; ``scale_w`` per
    tensor (a 0-d tensor) or per output channel ([N]), ``amax / 448``;
  * ``x8`` the same with ``scale_x``: static per tensor (``amax / 448`` from a calibrated quantization
    state) or dynamic: per token ([M, 1], the row's absmax / 448) or per tensor (the whole input's);
  * the product in fp32 with the scales applied, plus the bias, rounded once to the output dtype (bf16).

Rounding points (the definition both paths follow): ``scale = max(amax, 1e-12) / 448`` in fp32;
``x / scale`` in fp32 rounded to nearest; clamp to +-448 (saturation); conversion to e4m3 rounding to
nearest even; products exact, accumulated in fp32; ``acc * scale_x * scale_w + bias`` in fp32; one
rounding to bf16.

On CUDA the product is ``torch._scaled_mm`` (tensorwise when both scales are single numbers, else
rowwise) and the activations are quantized by one Triton kernel (:mod:`vidtrt.kernels.fp8_quant`,
bit-equal to :func:`quantize_fp8`). Everywhere else :func:`fp8_matmul_emulated` runs the same rounding
points in torch (quantized values upcast exactly, an fp32 GEMM): what keeps the layer tested on CPU.
Hopper's FP8 tensor cores do not accumulate in full fp32, so the GPU result differs from the
emulation by accumulation error (measured in ``benchmarks/gpu_fp8_gemm_check.py``).

``_scaled_mm`` needs K and N to be multiples of 16: other layers stay bf16.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

FP8_DTYPE = torch.float8_e4m3fn
FP8_MAX = 448.0
MIN_AMAX = 1e-12  # a zero tensor / row gets a positive scale (its values quantize to 0)
GEMM_ALIGN = 16  # _scaled_mm: K and N multiples of 16

ACTIVATION_SCALES = ("dynamic-token", "dynamic-tensor")  # without a quantization state; with one: "static"
WEIGHT_SCALES = ("channel", "tensor")

# Linear layers of HunyuanVideoTransformer3D that stay bf16 (fnmatch patterns over named_modules()).
#  * The conditioning embedders, the token refiner, the adaLN modulation and the final projection: tiny
#    next to the blocks' token-wise GEMMs (M = batch, or the <= 256 text tokens of the refiner), so FP8
#    buys no time there, and they set what every token sees (the final projection in FP8 alone moved the
#    tiny / small DiT output cosine from 0.99999 to 0.9994).
#  * The MLPs' output projections (``ff.net.2``, ``ff_context.net.2``, the single blocks' ``proj_out``,
#    K = 12288 / 15360): half the FP8 error of the blocks (full-width DiT, 2 + 4 blocks, random weights:
#    cosine 0.99853 for these layers alone, 0.99689 for all), for almost no time: rowwise ``_scaled_mm``
#    is slow at that K on Hopper (H200: 820 TFLOP/s vs bf16 725) and quantizing their wide inputs costs
#    about what the GEMM saves. Opt in with ``Fp8LinearConfig(keep_bf16=...)`` (static per-tensor scales
#    run them tensorwise, ~1150 TFLOP/s).
# Measured in tests/test_fp8_linear.py, docs/fp8.md and benchmarks/gpu_fp8_gemm_check.py.
DEFAULT_KEEP_BF16 = (
    "time_text_embed.*",
    "context_embedder.*",
    "*norm*.linear",
    "proj_out",
    "*.net.2",
    "single_transformer_blocks.*.proj_out",
)

# The same rule for CogVideoXTransformer3D (the family's ``fp8_keep_bf16``, vidtrt.config.families): the timestep
# embedding, the patch embedding (its text projection, 226 tokens; 1.5's Linear over latent patches, the first
# layer), the adaLN modulations (``norm1`` / ``norm2`` / ``norm_out``: M = batch), the final projection and the
# MLP output projections (``ff.net.2``) stay bf16; the attention projections (``attn1.to_q/k/v``,
# ``attn1.to_out.0``) and the MLP input projections (``ff.net.0.proj``) run FP8.
COGVIDEOX_KEEP_BF16 = (
    "time_embedding.*",
    "patch_embed.*",
    "*norm*.linear",
    "proj_out",
    "*.net.2",
)


@dataclass(frozen=True)
class Fp8LinearConfig:
    """Which Linear layers become FP8 and how their scales are chosen (ModelOpt-style config).

    ``activations``: scales of the inputs when no quantization state is given: ``dynamic-token`` (one
    per row, the default: the DiT's tokens differ by orders of magnitude) or ``dynamic-tensor`` (one per
    call, tensorwise ``_scaled_mm``, a little faster). With a state (``amax``) every input scale is
    static: ``amax[<module>.input_quantizer] / 448``.
    ``weights``: ``channel`` (one scale per output row) or ``tensor``; with a state, the state's
    ``<module>.weight_quantizer`` amax decides (1 element: tensor, N: channel).
    ``keep_bf16``: fnmatch patterns of module names left as they are.
    """

    activations: str = "dynamic-token"
    weights: str = "channel"
    keep_bf16: tuple[str, ...] = DEFAULT_KEEP_BF16

    def validate(self) -> Fp8LinearConfig:
        if self.activations not in ACTIVATION_SCALES:
            raise ValueError(f"invalid activations {self.activations!r}: accepted {list(ACTIVATION_SCALES)}")
        if self.weights not in WEIGHT_SCALES:
            raise ValueError(f"invalid weights {self.weights!r}: accepted {list(WEIGHT_SCALES)}")
        if isinstance(self.keep_bf16, str) or not all(isinstance(p, str) for p in self.keep_bf16):
            raise ValueError(f"keep_bf16 must be a tuple of fnmatch patterns, got {self.keep_bf16!r}")
        return self


# ----------------------------------------------------------------------------------------------
# The rounding points, in torch
# ----------------------------------------------------------------------------------------------
def amax_to_scale(amax: torch.Tensor) -> torch.Tensor:
    """``max(amax, 1e-12) / 448`` in float32 (any shape)."""
    return amax.to(torch.float32).clamp_min(MIN_AMAX) / FP8_MAX


def quantize_fp8(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``e4m3(clamp(x / scale, +-448))``: x any float dtype, scale float32 broadcastable to x."""
    return (x.to(torch.float32) / scale).clamp(-FP8_MAX, FP8_MAX).to(FP8_DTYPE)


def quantize_rows_reference(x: torch.Tensor, scale: torch.Tensor | None = None
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Torch reference of :func:`vidtrt.kernels.fp8_quant.quantize_rows_fp8`: x [M, K] -> (x8 [M, K],
    scale [M, 1] per row when ``scale`` is None, else ``scale`` as given)."""
    if scale is None:
        scale = amax_to_scale(x.abs().amax(dim=-1, keepdim=True))
    return quantize_fp8(x, scale), scale


def fp8_matmul_emulated(x8: torch.Tensor, scale_x: torch.Tensor, w8: torch.Tensor, scale_w: torch.Tensor,
                        bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """What ``torch._scaled_mm(x8, w8.t(), scale_x, scale_w, bias, out_dtype)`` computes, in torch.

    Args:
        x8: float8_e4m3fn [M, K]; w8: float8_e4m3fn [N, K].
        scale_x: float32, 0-d / 1 element or [M, 1]; scale_w: float32, 0-d / 1 element, [N] or [1, N].
        bias: [N] or None.
    Returns:
        [M, N] ``out_dtype``: ``(x8 @ w8^T) * scale_x * scale_w + bias`` in fp32, rounded once.
    """
    acc = x8.to(torch.float32) @ w8.to(torch.float32).t()  # e4m3 -> fp32 is exact; fp32 accumulation
    sx = scale_x.reshape(-1, 1) if scale_x.numel() > 1 else scale_x.reshape(())
    sw = scale_w.reshape(1, -1) if scale_w.numel() > 1 else scale_w.reshape(())
    out = acc * sx * sw
    if bias is not None:
        out = out + bias.to(torch.float32)
    return out.to(out_dtype)


# ----------------------------------------------------------------------------------------------
# The layer
# ----------------------------------------------------------------------------------------------
class Fp8Linear(nn.Module):
    """A Linear layer with FP8 e4m3 weights and FP8 GEMMs; ``forward`` as ``nn.Linear`` ([..., K] -> [..., N]).

    Buffers: ``weight`` float8_e4m3fn [N, K], ``weight_scale`` float32 (0-d or [N]), ``input_scale``
    float32 0-d (static activations) or None (dynamic), ``bias`` [N] in ``out_dtype`` or None.
    Make one with :meth:`from_linear`.
    """

    def __init__(self, in_features: int, out_features: int, weight: torch.Tensor, weight_scale: torch.Tensor,
                 bias: torch.Tensor | None, input_scale: torch.Tensor | None = None,
                 activations: str = "dynamic-token", out_dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.activations = "static" if input_scale is not None else activations
        self.out_dtype = out_dtype
        self.register_buffer("weight", weight)
        self.register_buffer("weight_scale", weight_scale)
        self.register_buffer("input_scale", input_scale)
        self.register_buffer("bias", bias)

    @classmethod
    @torch.no_grad()
    def from_linear(cls, linear: nn.Linear, *, weights: str = "channel", activations: str = "dynamic-token",
                    weight_amax: torch.Tensor | None = None, input_amax: torch.Tensor | None = None,
                    device: torch.device | str | None = None) -> Fp8Linear:
        """Quantize ``linear`` (its weight read once; nothing of it is kept).

        ``weight_amax`` (1 or N elements) / ``input_amax`` (1 element): from a quantization state; None:
        the weight's own absmax (per ``weights``), dynamic input scales (per ``activations``).
        ``device``: where the FP8 layer lives (default: the weight's device); the weight is moved there
        one layer at a time, so a model on CPU becomes an FP8 model on CUDA without a bf16 copy there.
        """
        w = linear.weight.detach()
        device = torch.device(device) if device is not None else w.device
        w = w.to(device)
        n, k = w.shape
        if weight_amax is not None:
            amax = weight_amax.detach().to(device, torch.float32)
            if amax.numel() not in (1, n):
                raise ValueError(f"weight amax has {amax.numel()} elements: accepted 1 (per tensor) or {n} "
                                 "(per output channel)")
            amax = amax.reshape(()) if amax.numel() == 1 else amax.reshape(n)
        elif weights == "tensor":
            amax = w.abs().amax()
        else:
            amax = w.abs().amax(dim=1)
        w_scale = amax_to_scale(amax)
        w8 = quantize_fp8(w, w_scale if w_scale.ndim == 0 else w_scale[:, None])
        in_scale = None
        if input_amax is not None:
            if input_amax.numel() != 1:
                raise ValueError(f"input amax has {input_amax.numel()} elements: accepted 1 (static per tensor)")
            in_scale = amax_to_scale(input_amax.detach().to(device).reshape(()))
        bias = linear.bias.detach().to(device) if linear.bias is not None else None
        return cls(k, n, w8, w_scale, bias, in_scale, activations, out_dtype=linear.weight.dtype)

    def extra_repr(self) -> str:
        w = "tensor" if self.weight_scale.ndim == 0 else "channel"
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weights={w}, activations={self.activations}")

    def quantize_input(self, x2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [M, K] -> (x8 [M, K], scale: 0-d static / dynamic-tensor, [M, 1] dynamic-token)."""
        if self.activations == "dynamic-tensor":
            scale = amax_to_scale(torch.linalg.vector_norm(x2, float("inf")))  # max |x| in one pass, exact
        else:
            scale = self.input_scale  # None: per token
        if x2.is_cuda:
            try:
                from vidtrt.kernels.fp8_quant import quantize_rows_fp8
            except ImportError:  # no triton: the torch ops, same values
                return quantize_rows_reference(x2, scale)
            x8, s = quantize_rows_fp8(x2, None if scale is None else scale.reshape(1))
            return x8, (s if scale is None else scale)
        return quantize_rows_reference(x2, scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        if x2.stride(-1) != 1:
            x2 = x2.contiguous()
        x8, sx = self.quantize_input(x2)
        if x.is_cuda:
            out = _scaled_mm(x8, sx, self.weight, self.weight_scale, self.bias, self.out_dtype)
        else:
            out = fp8_matmul_emulated(x8, sx, self.weight, self.weight_scale, self.bias, self.out_dtype)
        return out.reshape(*lead, self.out_features)


_BIAS_IN_EPILOGUE = {"tensorwise": True, "rowwise": True}  # False once a torch build refused it


def _scaled_mm(x8, sx, w8, sw, bias, out_dtype):
    """``torch._scaled_mm``: tensorwise when both scales are single numbers, rowwise otherwise; the bias
    added in its fp32 epilogue (a build that refuses that: added after, one more rounding)."""
    m, n = x8.shape[0], w8.shape[0]
    if sx.numel() == 1 and sw.numel() == 1:
        kind, sx, sw = "tensorwise", sx.reshape(()), sw.reshape(())
    else:
        kind = "rowwise"
        sx = sx.reshape(-1, 1).expand(m, 1).contiguous()
        sw = sw.reshape(1, -1).expand(1, n).contiguous()
    if bias is not None and _BIAS_IN_EPILOGUE[kind]:
        try:
            return torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw, bias=bias, out_dtype=out_dtype)
        except RuntimeError:
            _BIAS_IN_EPILOGUE[kind] = False
    out = torch._scaled_mm(x8, w8.t(), scale_a=sx, scale_b=sw, out_dtype=out_dtype)
    return out if bias is None else out + bias


# ----------------------------------------------------------------------------------------------
# Swapping a model's Linear layers
# ----------------------------------------------------------------------------------------------
def fp8_layer_names(model: nn.Module, config: Fp8LinearConfig = Fp8LinearConfig()) -> list[str]:
    """Names of the ``nn.Linear`` modules of ``model`` that :func:`swap_linears_to_fp8` replaces: not
    matched by ``config.keep_bf16``, K and N multiples of 16."""
    config.validate()
    names = []
    for name, mod in model.named_modules():
        if type(mod) is not nn.Linear or any(fnmatch.fnmatchcase(name, p) for p in config.keep_bf16):
            continue
        if mod.in_features % GEMM_ALIGN or mod.out_features % GEMM_ALIGN:
            continue
        names.append(name)
    return names


def swap_linears_to_fp8(model: nn.Module, amax: Mapping[str, torch.Tensor] | None = None,
                        config: Fp8LinearConfig = Fp8LinearConfig(), device: torch.device | str | None = None,
                        names: Sequence[str] | None = None) -> list[str]:
    """Replace ``model``'s Linear layers by :class:`Fp8Linear`, in place, one at a time.

    Each layer's weight is quantized and its module dropped before the next is read, so the model
    never holds a second copy of its weights (peak: the model plus one layer's temporaries).

    Args:
        model: e.g. :class:`~vidtrt.models.transformer.HunyuanVideoTransformer3D` in bf16, on any device.
        amax: a quantization state's float32 amax tensors keyed ``"<module>.input_quantizer"`` and
            ``"<module>.weight_quantizer"`` (module names of ``model.named_modules()``): static input
            scales ``amax / 448``; None: dynamic scales per ``config``. A layer to swap that has no
            input amax in a given map is a ValueError (one line, naming it).
        config: which layers stay bf16 and the scale granularity.
        device: where the FP8 layers are made (default: each weight's device).
        names: the layers to swap (default :func:`fp8_layer_names`).
    Returns:
        The names of the swapped layers.
    """
    config.validate()
    names = list(fp8_layer_names(model, config) if names is None else names)
    if amax is not None:
        missing = [n for n in names if f"{n}.input_quantizer" not in amax]
        if missing:
            raise ValueError(f"the quantization state has no input amax for {len(missing)} layer(s), e.g. "
                             f"{missing[0]!r}.input_quantizer; it was made for another model")
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name)
        linear = getattr(parent, child)
        if type(linear) is not nn.Linear:
            raise ValueError(f"{name!r} is a {type(linear).__name__}, not an nn.Linear")
        fp8 = Fp8Linear.from_linear(
            linear, weights=config.weights, activations=config.activations, device=device,
            weight_amax=None if amax is None else amax.get(f"{name}.weight_quantizer"),
            input_amax=None if amax is None else amax[f"{name}.input_quantizer"],
        )
        setattr(parent, child, fp8)
        del linear  # the last reference: its weight is freed before the next layer is read
    return names


def fp8_weight_bytes(model: nn.Module) -> tuple[int, int]:
    """(bytes of FP8 weights, bytes of all other parameters and buffers) of ``model``."""
    fp8 = other = 0
    for t in list(model.parameters()) + list(model.buffers()):
        n = t.numel() * t.element_size()
        if t.dtype == FP8_DTYPE:
            fp8 += n
        else:
            other += n
    return fp8, other
