"""The HunyuanVideo DiT (text-to-video), numerically equal to diffusers' ``HunyuanVideoTransformer3DModel``.

Parameter names are diffusers' names, so a diffusers ``transformer/`` folder loads with
``load_state_dict(strict=True)`` as it is (official Tencent checkpoints: see ``official_layout``).

Differences from diffusers that do not change the result:
  * all attention goes through :func:`vidtrt.models.attention.attention` with per-sample key
    lengths; no dense S x S (or [B, 1, 1, S]) mask is ever built;
  * padding columns common to the whole batch are dropped before the network runs (for batch 1:
    all padding), which is exact because padding tokens are never keys;
  * the token refiner masks keys only; diffusers also masks the rows of padding queries, whose
    outputs never reach a valid token (they are never keys later), so image outputs are equal;
  * RoPE comes from real cos/sin tables (``rope.py``), no complex numbers.

Shapes: B batch, C = ``inner_dim`` (heads x head_dim), S_img = T' * H' * W' image tokens after
patching, L text tokens.
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidtrt.config.model_config import TransformerConfig
from vidtrt.models import sequence_parallel
from vidtrt.models.attention import QuantizableAttention
from vidtrt.models.rope import qk_norm_rope, rope_cos_sin
from vidtrt.models.sequence_parallel import joint_attention
from vidtrt.models.sparse_tiles import block_scope, tile_plan

_LN_EPS = 1e-6
_TIMESTEP_CHANNELS = 256
# The token refiner's MLP ratio is fixed (diffusers and the official code both ignore mlp_ratio there).
_REFINER_MLP_RATIO = 4.0


def _exporting() -> bool:
    """True while tracing/exporting/compiling: skip data-dependent shortcuts (sequence trimming)."""
    return torch.onnx.is_in_onnx_export() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def timestep_sinusoid(timesteps: torch.Tensor, channels: int = _TIMESTEP_CHANNELS,
                      max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding [cos | sin] of (fractional) timesteps.

    Args:
        timesteps: [B] any numeric dtype (e.g. 1000 * sigma, or guidance * 1000).
    Returns:
        [B, channels] float32.
    """
    half = channels // 2
    exponent = -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=timesteps.device) / half
    angles = timesteps[:, None].float() * torch.exp(exponent)[None, :]
    return torch.cat((torch.cos(angles), torch.sin(angles)), dim=-1)


class RMSNorm(nn.Module):
    """RMS norm over the last dimension with a learned scale (``weight`` [dim]).

    Statistics in float32; output in the input dtype (times the weight).
    """

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = (x.float() * torch.rsqrt(variance + self.eps)).to(x.dtype)
        return x * self.weight.to(x.dtype)


class MLPEmbedder(nn.Module):
    """``linear_1 -> SiLU -> linear_2``: timestep, guidance and pooled-text embedders. [B, in] -> [B, out]."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_features, out_features)
        self.act = nn.SiLU()
        self.linear_2 = nn.Linear(out_features, out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act(self.linear_1(x)))


class PatchEmbed(nn.Module):
    """Conv3d patchify: [B, C_in, T, H, W] -> tokens [B, T/pt * H/p * W/p, C] in t -> h -> w order."""

    def __init__(self, patch: tuple[int, int, int], in_channels: int, dim: int):
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class GELUTanhProj(nn.Module):
    """``Linear`` followed by tanh-approximated GELU (diffusers' ``GELU`` activation module)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class SiLUProj(nn.Module):
    """``Linear`` followed by SiLU (diffusers' ``LinearActivation``)."""

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.silu(self.proj(x))


class FeedForward(nn.Module):
    """Two-layer MLP with parameters ``net.0.proj`` and ``net.2`` (``net.1`` is a parameterless slot).

    [B, S, dim] -> [B, S, dim], hidden width ``int(dim * mult)``.
    """

    def __init__(self, dim: int, mult: float, activation: str):
        super().__init__()
        hidden = int(dim * mult)
        act = {"gelu_tanh": GELUTanhProj, "silu": SiLUProj}[activation](dim, hidden)
        self.net = nn.ModuleList([act, nn.Identity(), nn.Linear(hidden, dim)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.net:
            x = layer(x)
        return x


class AdaNormZero(nn.Module):
    """adaLN-Zero of a dual-stream block: ``linear(SiLU(temb))`` -> 6 chunks.

    ``forward(x [B, S, C], temb [B, C])`` returns the modulated norm [B, S, C] and
    (gate_msa, shift_mlp, scale_mlp, gate_mlp), each [B, C].
    """

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=_LN_EPS)

    def forward(self, x: torch.Tensor, temb: torch.Tensor):
        shift, scale, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.linear(F.silu(temb)).chunk(6, dim=1)
        x = self.norm(x) * (1 + scale[:, None]) + shift[:, None]
        return x, gate_msa, shift_mlp, scale_mlp, gate_mlp


class AdaNormZeroSingle(nn.Module):
    """adaLN-Zero of a single-stream block: 3 chunks. Returns (modulated norm [B, S, C], gate [B, C])."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 3 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=_LN_EPS)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        shift, scale, gate = self.linear(F.silu(temb)).chunk(3, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None], gate


class AdaNormOut(nn.Module):
    """Final adaLN: ``linear(SiLU(temb))`` -> (scale, shift) -- diffusers' order; the official
    checkpoint stores (shift, scale). [B, S, C] -> [B, S, C]."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=_LN_EPS)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        scale, shift = self.linear(F.silu(temb).to(x.dtype)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None]) + shift[:, None]


# ----------------------------------------------------------------------------------------------
# Conditioning
# ----------------------------------------------------------------------------------------------


class ConditionEmbedding(nn.Module):
    """``temb = timestep_embedder(t) + guidance_embedder(g) + text_embedder(pooled)``: [B, C]."""

    def __init__(self, dim: int, pooled_dim: int, guidance_embeds: bool):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(_TIMESTEP_CHANNELS, dim)
        self.text_embedder = MLPEmbedder(pooled_dim, dim)
        self.guidance_embedder = MLPEmbedder(_TIMESTEP_CHANNELS, dim) if guidance_embeds else None

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor,
                guidance: torch.Tensor | None = None) -> torch.Tensor:
        """timestep [B] (1000 * sigma), pooled [B, pooled_dim], guidance [B] (scale * 1000) -> [B, C]."""
        t_emb = self.timestep_embedder(timestep_sinusoid(timestep).to(pooled.dtype))
        p_emb = self.text_embedder(pooled)
        if self.guidance_embedder is None:
            return t_emb + p_emb
        if guidance is None:
            raise ValueError(
                "this transformer embeds guidance (guidance_embeds=True): pass guidance [B] = scale * 1000"
            )
        g_emb = self.guidance_embedder(timestep_sinusoid(guidance).to(pooled.dtype))
        return t_emb + g_emb + p_emb


# ----------------------------------------------------------------------------------------------
# Token refiner (context_embedder)
# ----------------------------------------------------------------------------------------------


class RefinerAttention(QuantizableAttention):
    """Plain multi-head self-attention over text (no QK norm, no RoPE). [B, L, C] -> [B, L, C]."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        dim = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])

    def forward(self, x: torch.Tensor, key_lengths: torch.Tensor | None) -> torch.Tensor:
        q, k, v = (proj(x).unflatten(-1, (self.heads, -1)) for proj in (self.to_q, self.to_k, self.to_v))
        return self.to_out[0](self.attend(q, k, v, key_lengths).flatten(2))


class RefinerGate(nn.Module):
    """``linear(SiLU(temb))`` -> (gate_msa, gate_mlp), each [B, C]."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear = nn.Linear(dim, 2 * dim)

    def forward(self, temb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        gate_msa, gate_mlp = self.linear(F.silu(temb)).chunk(2, dim=1)
        return gate_msa, gate_mlp


class RefinerBlock(nn.Module):
    """Bidirectional transformer block over text with gated residuals (affine LayerNorms)."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        dim = heads * head_dim
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=True, eps=_LN_EPS)
        self.attn = RefinerAttention(heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=True, eps=_LN_EPS)
        self.ff = FeedForward(dim, _REFINER_MLP_RATIO, "silu")
        self.norm_out = RefinerGate(dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, key_lengths: torch.Tensor | None) -> torch.Tensor:
        """x [B, L, C], temb [B, C], key_lengths int [B] or None -> [B, L, C]."""
        attn_out = self.attn(self.norm1(x), key_lengths)
        gate_msa, gate_mlp = self.norm_out(temb)
        x = x + attn_out * gate_msa[:, None]
        return x + self.ff(self.norm2(x)) * gate_mlp[:, None]


class RefinerStack(nn.Module):
    """``refiner_blocks``: the refiner's blocks in order."""

    def __init__(self, heads: int, head_dim: int, num_layers: int):
        super().__init__()
        self.refiner_blocks = nn.ModuleList([RefinerBlock(heads, head_dim) for _ in range(num_layers)])

    def forward(self, x: torch.Tensor, temb: torch.Tensor, key_lengths: torch.Tensor | None) -> torch.Tensor:
        for block in self.refiner_blocks:
            x = block(x, temb, key_lengths)
        return x


class TokenRefiner(nn.Module):
    """Text stream input: LLM features [B, L, text_dim] -> refined tokens [B, L, C].

    Conditioning ``c = timestep_embedder(t) + text_embedder(masked_mean(text))``.
    """

    def __init__(self, text_dim: int, heads: int, head_dim: int, num_layers: int):
        super().__init__()
        dim = heads * head_dim
        self.time_text_embed = RefinerConditionEmbedding(dim, text_dim)
        self.proj_in = nn.Linear(text_dim, dim)
        self.token_refiner = RefinerStack(heads, head_dim, num_layers)

    def forward(self, text: torch.Tensor, timestep: torch.Tensor,
                text_lengths: torch.Tensor | None) -> torch.Tensor:
        """text [B, L, text_dim] right-padded, timestep [B], text_lengths int [B] (None: all valid)."""
        if text_lengths is None:
            pooled = text.mean(dim=1)
        else:
            positions = torch.arange(text.shape[1], device=text.device)
            weights = (positions[None, :] < text_lengths[:, None]).float()[:, :, None]  # [B, L, 1]
            count = text_lengths.clamp(min=1).float()[:, None]
            pooled = ((text.float() * weights).sum(dim=1) / count).to(text.dtype)
            # Softmax over zero keys is undefined; an empty prompt attends to its first (padding) token.
            text_lengths = text_lengths.clamp(min=1)
        temb = self.time_text_embed(timestep, pooled)
        return self.token_refiner(self.proj_in(text), temb, text_lengths)


class RefinerConditionEmbedding(nn.Module):
    """``timestep_embedder(t) + text_embedder(pooled_text)``: [B, C]."""

    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.timestep_embedder = MLPEmbedder(_TIMESTEP_CHANNELS, dim)
        self.text_embedder = MLPEmbedder(text_dim, dim)

    def forward(self, timestep: torch.Tensor, pooled: torch.Tensor) -> torch.Tensor:
        return self.timestep_embedder(timestep_sinusoid(timestep).to(pooled.dtype)) + self.text_embedder(pooled)


# ----------------------------------------------------------------------------------------------
# Main blocks
# ----------------------------------------------------------------------------------------------


class JointAttention(QuantizableAttention):
    """Dual-stream attention: separate image/text projections, joint softmax over concat(image, text).

    Image q/k get per-head RMSNorm + RoPE; text q/k get their own RMSNorm (no RoPE).
    """

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        dim = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(head_dim, eps=_LN_EPS)
        self.norm_k = RMSNorm(head_dim, eps=_LN_EPS)
        self.add_q_proj = nn.Linear(dim, dim)
        self.add_k_proj = nn.Linear(dim, dim)
        self.add_v_proj = nn.Linear(dim, dim)
        self.norm_added_q = RMSNorm(head_dim, eps=_LN_EPS)
        self.norm_added_k = RMSNorm(head_dim, eps=_LN_EPS)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim)])
        self.to_add_out = nn.Linear(dim, dim)

    def forward(self, img: torch.Tensor, txt: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                key_lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, S_img, C], txt [B, L, C], cos/sin [S_img, D] -> (img_out, txt_out)."""
        n_img = img.shape[1]
        heads = (self.heads, -1)
        q, k, v = (p(img).unflatten(-1, heads) for p in (self.to_q, self.to_k, self.to_v))
        q, k = qk_norm_rope(q, k, self.norm_q, self.norm_k, cos, sin, n_img)
        tq, tk, tv = (p(txt).unflatten(-1, heads) for p in (self.add_q_proj, self.add_k_proj, self.add_v_proj))
        tq, tk = self.norm_added_q(tq), self.norm_added_k(tk)
        out = self.attend(torch.cat((q, tq), 1), torch.cat((k, tk), 1), torch.cat((v, tv), 1), key_lengths,
                          plain=functools.partial(joint_attention, num_image_tokens=n_img))
        out = out.flatten(2)
        return self.to_out[0](out[:, :n_img]), self.to_add_out(out[:, n_img:])


class DualStreamBlock(nn.Module):
    """Dual-stream block: per-stream adaLN-Zero, joint attention, per-stream MLP (GELU-tanh)."""

    def __init__(self, heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        dim = heads * head_dim
        self.norm1 = AdaNormZero(dim)
        self.norm1_context = AdaNormZero(dim)
        self.attn = JointAttention(heads, head_dim)
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=_LN_EPS)
        self.ff = FeedForward(dim, mlp_ratio, "gelu_tanh")
        self.norm2_context = nn.LayerNorm(dim, elementwise_affine=False, eps=_LN_EPS)
        self.ff_context = FeedForward(dim, mlp_ratio, "gelu_tanh")

    def forward(self, img: torch.Tensor, txt: torch.Tensor, temb: torch.Tensor, cos: torch.Tensor,
                sin: torch.Tensor, key_lengths: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        """img [B, S_img, C], txt [B, L, C], temb [B, C] -> (img, txt) same shapes."""
        img_n, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.norm1(img, temb)
        txt_n, c_gate_msa, c_shift_mlp, c_scale_mlp, c_gate_mlp = self.norm1_context(txt, temb)
        img_attn, txt_attn = self.attn(img_n, txt_n, cos, sin, key_lengths)
        img = img + img_attn * gate_msa[:, None]
        txt = txt + txt_attn * c_gate_msa[:, None]
        img_n = self.norm2(img) * (1 + scale_mlp[:, None]) + shift_mlp[:, None]
        txt_n = self.norm2_context(txt) * (1 + c_scale_mlp[:, None]) + c_shift_mlp[:, None]
        img = img + gate_mlp[:, None] * self.ff(img_n)
        txt = txt + c_gate_mlp[:, None] * self.ff_context(txt_n)
        return img, txt


class SingleAttention(QuantizableAttention):
    """Single-stream attention projections (no output projection: ``proj_out`` of the block does it)."""

    def __init__(self, heads: int, head_dim: int):
        super().__init__()
        dim = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim)
        self.to_k = nn.Linear(dim, dim)
        self.to_v = nn.Linear(dim, dim)
        self.norm_q = RMSNorm(head_dim, eps=_LN_EPS)
        self.norm_k = RMSNorm(head_dim, eps=_LN_EPS)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, num_image_tokens: int,
                key_lengths: torch.Tensor | None) -> torch.Tensor:
        """x [B, S_img + L, C] (image first) -> attention output [B, S_img + L, C]."""
        q, k, v = (p(x).unflatten(-1, (self.heads, -1)) for p in (self.to_q, self.to_k, self.to_v))
        q, k = qk_norm_rope(q, k, self.norm_q, self.norm_k, cos, sin, num_image_tokens)
        return self.attend(q, k, v, key_lengths,
                           plain=functools.partial(joint_attention, num_image_tokens=num_image_tokens)).flatten(2)


class SingleStreamBlock(nn.Module):
    """Single-stream block: ``x + gate * proj_out(cat(attn(x'), gelu_tanh(proj_mlp(x'))))``."""

    def __init__(self, heads: int, head_dim: int, mlp_ratio: float):
        super().__init__()
        dim = heads * head_dim
        mlp_dim = int(dim * mlp_ratio)
        self.attn = SingleAttention(heads, head_dim)
        self.norm = AdaNormZeroSingle(dim)
        self.proj_mlp = nn.Linear(dim, mlp_dim)
        self.proj_out = nn.Linear(dim + mlp_dim, dim)

    def forward(self, x: torch.Tensor, temb: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                num_image_tokens: int, key_lengths: torch.Tensor | None) -> torch.Tensor:
        """x [B, S_img + L, C], temb [B, C] -> [B, S_img + L, C]."""
        x_n, gate = self.norm(x, temb)
        mlp = F.gelu(self.proj_mlp(x_n), approximate="tanh")
        attn = self.attn(x_n, cos, sin, num_image_tokens, key_lengths)
        return x + gate[:, None] * self.proj_out(torch.cat((attn, mlp), dim=2))


# ----------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------


class HunyuanVideoTransformer3D(nn.Module):
    """HunyuanVideo DiT: latent video + text conditioning -> flow-matching velocity.

    Parameters are named as in diffusers' ``HunyuanVideoTransformer3DModel`` (text-to-video,
    ``image_condition_type=None``).
    """

    def __init__(self, config: TransformerConfig):
        super().__init__()
        self.config = config.validate()
        c = config
        heads, head_dim = c.num_attention_heads, c.attention_head_dim
        dim = c.inner_dim
        self.x_embedder = PatchEmbed((c.patch_size_t, c.patch_size, c.patch_size), c.in_channels, dim)
        self.context_embedder = TokenRefiner(c.text_embed_dim, heads, head_dim, c.num_refiner_layers)
        self.time_text_embed = ConditionEmbedding(dim, c.pooled_projection_dim, c.guidance_embeds)
        self.transformer_blocks = nn.ModuleList(
            [DualStreamBlock(heads, head_dim, c.mlp_ratio) for _ in range(c.num_layers)]
        )
        self.single_transformer_blocks = nn.ModuleList(
            [SingleStreamBlock(heads, head_dim, c.mlp_ratio) for _ in range(c.num_single_layers)]
        )
        self.norm_out = AdaNormOut(dim)
        self.proj_out = nn.Linear(dim, c.patch_size_t * c.patch_size * c.patch_size * c.out_channels)

    @property
    def dtype(self) -> torch.dtype:
        return self.x_embedder.proj.weight.dtype  # a conv: never an FP8 layer (fp8_linear)

    def _prepare_text(
        self, text: torch.Tensor, mask: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Text lengths from a right-padded mask, and the text without batch-wide padding columns.

        Returns (text [B, L', D], lengths int32 [B] or None when every kept token is valid).
        """
        if mask is None:
            return text, None
        if mask.shape != text.shape[:2]:
            raise ValueError(
                f"encoder_attention_mask {tuple(mask.shape)} must be [B, L] = {tuple(text.shape[:2])}"
            )
        valid = mask != 0
        lengths = valid.sum(dim=1, dtype=torch.int32)  # [B]
        if _exporting():
            return text, lengths
        positions = torch.arange(text.shape[1], device=text.device)
        if not torch.equal(valid, positions[None, :] < lengths[:, None]):
            raise ValueError("encoder_attention_mask must be right-padded: ones first, then zeros, per sample")
        keep = max(int(lengths.max()), 1)
        text = text[:, :keep]
        if bool((lengths == keep).all()):
            return text, None
        return text, lengths

    def forward(
        self,
        hidden_states: torch.Tensor,
        timestep: torch.Tensor,
        encoder_hidden_states: torch.Tensor,
        encoder_attention_mask: torch.Tensor | None,
        pooled_projections: torch.Tensor,
        guidance: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow-matching velocity.

        Args:
            hidden_states: latents [B, C_in, T', H', W'] (H', W' multiples of patch_size).
            timestep: [B] float, 1000 * sigma.
            encoder_hidden_states: LLM text features [B, L, text_embed_dim].
            encoder_attention_mask: [B, L] int/bool, right-padded (1 = token, 0 = padding); None = all valid.
            pooled_projections: CLIP pooled text [B, pooled_projection_dim].
            guidance: [B] float, embedded guidance scale * 1000 (required when guidance_embeds).
        Returns:
            [B, out_channels, T', H', W'] in the model's dtype (inputs are cast to it).
        """
        c = self.config
        if hidden_states.ndim != 5 or hidden_states.shape[1] != c.in_channels:
            raise ValueError(
                f"hidden_states {tuple(hidden_states.shape)} must be [B, {c.in_channels}, T', H', W']"
            )
        b, _, frames, height, width = hidden_states.shape
        p, pt = c.patch_size, c.patch_size_t
        t, h, w = frames // pt, height // p, width // p
        dtype = self.dtype

        text, text_lengths = self._prepare_text(encoder_hidden_states, encoder_attention_mask)
        cos, sin = rope_cos_sin(c, t, h, w, hidden_states.device)

        temb = self.time_text_embed(timestep, pooled_projections.to(dtype), guidance)
        img = self.x_embedder(hidden_states.to(dtype))  # [B, S_img, C]
        txt = self.context_embedder(text.to(dtype), timestep, text_lengths)  # [B, L', C]
        # Sliding-tile attention (STA backends, sparse steps): image tokens in tile order until proj_out.
        n_dual = len(self.transformer_blocks)
        plan = tile_plan((t, h, w), n_dual + len(self.single_transformer_blocks), img.device, _exporting())
        if plan is not None:
            img, cos, sin = plan.enter(img, cos, sin)
        n_img = img.shape[1]
        key_lengths = None if text_lengths is None else text_lengths + n_img
        sp = sequence_parallel.current()  # Ulysses: this rank keeps its slice of the image tokens
        if sp is not None:
            if plan is not None:
                raise ValueError("sliding-tile attention does not combine with sequence parallelism (its tiles span "
                                 "every rank's tokens): use a dense attention backend with sp_degree > 1")
            img, cos, sin = sp.shard(img, cos, sin)
        n_local = img.shape[1]

        for i, block in enumerate(self.transformer_blocks):
            with block_scope(plan, i):
                img, txt = block(img, txt, temb, cos, sin, key_lengths)

        x = torch.cat((img, txt), dim=1)
        for i, block in enumerate(self.single_transformer_blocks):
            with block_scope(plan, n_dual + i):
                x = block(x, temb, cos, sin, n_local, key_lengths)
        img = x[:, :n_local] if plan is None else plan.leave(x[:, :n_local])

        out = self.proj_out(self.norm_out(img, temb))  # [B, S_img, pt * p * p * C_out]
        if sp is not None:
            out = sp.gather(out, n_img)
        out = out.reshape(b, t, h, w, c.out_channels, pt, p, p)
        out = out.permute(0, 4, 1, 5, 2, 6, 3, 7)
        return out.reshape(b, c.out_channels, t * pt, h * p, w * p)
