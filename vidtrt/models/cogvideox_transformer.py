"""The CogVideoX DiT (text-to-video), numerically equal to diffusers' ``CogVideoXTransformer3DModel``.

Parameter names are diffusers' names, so a diffusers ``transformer/`` folder of CogVideoX-2B, -5B or
CogVideoX1.5-5B loads with ``load_state_dict(strict=True)`` as it is.

One joint sequence [text; video] runs through ``num_layers`` blocks of full 3D self-attention (QK
LayerNorm, no mask: every one of the ``max_text_seq_length`` text tokens is a key, padding included, as in
diffusers) and a GELU-tanh MLP, each behind an *expert* adaptive LayerNorm: one LayerNorm, modulated by
separate shift / scale / gate vectors for text and for video tokens, all from the timestep embedding.
Positions: fixed 3D sin-cos added to the video tokens (2B), or 3D RoPE on the video queries and keys
(5B: crop-resized linspace grid; 1.5: integer grid, time patched by ``patch_size_t``). Differences from
diffusers that do not change the result: RoPE is computed inside the module from the latent shape (diffusers'
pipeline passes it in), attention goes through :func:`vidtrt.models.attention.attention` (the backend switch:
our Triton kernels serve head dim 64; FP8 fake quant through ``QuantizableAttention.attend``), sin-cos
positions are added to the video tokens only (diffusers adds zeros to the text tokens).

Shapes: B batch, F latent frames, C latent channels, H x W latent size, L text tokens, D = heads x head_dim.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidtrt.config.cogvideox_config import CogVideoXTransformerConfig
from vidtrt.models.attention import QuantizableAttention
from vidtrt.models.transformer import timestep_sinusoid

_QK_NORM_EPS = 1e-6
_ROPE_THETA = 10000.0


# ------------------------------------------------------------------------------------- positions
def _sincos_1d(dim: int, pos: torch.Tensor) -> torch.Tensor:
    """[M, dim] float64: [sin | cos] of pos * 10000^(-2i/dim) (diffusers' 1D sin-cos, float64 math)."""
    omega = torch.arange(dim // 2, dtype=torch.float64, device=pos.device)
    omega /= dim / 2.0
    omega = 1.0 / 10000**omega
    out = torch.outer(pos.reshape(-1).to(torch.float64), omega)
    return torch.cat([torch.sin(out), torch.cos(out)], dim=1)


def sincos_positions_3d(dim: int, frames: int, height: int, width: int, spatial_scale: float, temporal_scale: float,
                        device=None) -> torch.Tensor:
    """Fixed 3D sin-cos positions of the video tokens (CogVideoX-2B): float64 [frames * height * width, dim].

    Channels: [time (dim / 4) | column (3 dim / 8) | row (3 dim / 8)], positions divided by the
    interpolation scales (diffusers' ``get_3d_sincos_pos_embed`` with its w-first spatial grid)."""
    d_spatial, d_time = 3 * dim // 4, dim // 4
    rows = torch.arange(height, dtype=torch.float32, device=device) / spatial_scale
    cols = torch.arange(width, dtype=torch.float32, device=device) / spatial_scale
    col_grid = cols[None, :].expand(height, width)
    row_grid = rows[:, None].expand(height, width)
    spatial = torch.cat([_sincos_1d(d_spatial // 2, col_grid), _sincos_1d(d_spatial // 2, row_grid)], dim=1)
    t = torch.arange(frames, dtype=torch.float32, device=device) / temporal_scale
    temporal = _sincos_1d(d_time, t)
    pos = torch.cat([temporal[:, None, :].expand(frames, height * width, d_time),
                     spatial[None].expand(frames, height * width, d_spatial)], dim=-1)
    return pos.reshape(frames * height * width, dim)


def _rope_1d(dim: int, pos: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [M, dim] float32, each frequency repeated for its (even, odd) channel pair."""
    freqs = 1.0 / (_ROPE_THETA ** (torch.arange(0, dim, 2, dtype=torch.float32, device=pos.device) / dim))
    angles = torch.outer(pos, freqs)
    return angles.cos().repeat_interleave(2, dim=1).float(), angles.sin().repeat_interleave(2, dim=1).float()


def _crop_region(grid_h: int, grid_w: int, base_w: int, base_h: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The grid's aspect-preserving fit into the base grid, centred: ((top, left), (bottom, right))."""
    if grid_h / grid_w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / grid_h * grid_w))
    else:
        rw, rh = base_w, int(round(base_w / grid_w * grid_h))
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def _exporting() -> bool:
    return torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling() or torch.jit.is_tracing()


def _linspace(start: torch.Tensor, stop: torch.Tensor, n) -> torch.Tensor:
    """torch.linspace with tensor end points (float32 [n]); equal to it up to float rounding."""
    i = torch.arange(n, dtype=torch.float64, device=start.device)
    count = i[-1:] + 1
    step = torch.where(count > 1, (stop - start) / (count - 1).clamp(min=1), torch.zeros_like(count))
    return (start + i * step).to(torch.float32)


def _traceable_crop_positions(frames, grid_h, grid_w, base_h: int, base_w: int, device):
    """The 1.0 RoPE positions of :func:`rope_3d` from tensor arithmetic on the (symbolic) grid sizes, so an
    ONNX export keeps the latent axes dynamic (Python rounding of the sizes would fix them)."""
    gh = torch.arange(grid_h, dtype=torch.float64, device=device)[-1:] + 1
    gw = torch.arange(grid_w, dtype=torch.float64, device=device)[-1:] + 1
    tall = gh / gw > base_h / base_w
    rh = torch.where(tall, torch.full_like(gh, base_h), torch.round(base_w / gw * gh))
    rw = torch.where(tall, torch.round(base_h / gh * gw), torch.full_like(gw, base_w))
    top, left = torch.round((base_h - rh) / 2.0), torch.round((base_w - rw) / 2.0)
    pos_h = _linspace(top, (top + rh) * (gh - 1) / gh, grid_h)
    pos_w = _linspace(left, (left + rw) * (gw - 1) / gw, grid_w)
    pos_t = torch.arange(frames, dtype=torch.float32, device=device)
    return pos_t, pos_h, pos_w


def rope_3d(config: CogVideoXTransformerConfig, frames: int, grid_h: int, grid_w: int, device=None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """3D RoPE tables of the video tokens: cos, sin float32 [frames * grid_h * grid_w, head_dim].

    ``frames``: token frames (latent frames / patch_size_t). Channels: time head_dim / 4, rows and columns
    3 head_dim / 8 each. CogVideoX 1.0 (no ``patch_size_t``): positions on a linspace grid that fits the
    token grid into the base grid ``sample_height/p x sample_width/p`` (diffusers'
    ``get_resize_crop_region_for_grid``); 1.5: integer positions (``grid_type="slice"``)."""
    d = config.attention_head_dim
    dim_t, dim_s = d // 4, d // 8 * 3
    p = config.patch_size
    base_h, base_w = config.sample_height // p, config.sample_width // p
    if config.patch_size_t is None and _exporting():
        pos_t, pos_h, pos_w = _traceable_crop_positions(frames, grid_h, grid_w, base_h, base_w, device)
    elif config.patch_size_t is None:
        (top, left), (bottom, right) = _crop_region(grid_h, grid_w, base_w, base_h)
        kw = {"dtype": torch.float32, "device": device}
        pos_h = torch.linspace(top, bottom * (grid_h - 1) / grid_h, grid_h, **kw)
        pos_w = torch.linspace(left, right * (grid_w - 1) / grid_w, grid_w, **kw)
        pos_t = torch.linspace(0, frames * (frames - 1) / frames, frames, **kw)
    else:
        if grid_h > base_h or grid_w > base_w:
            raise ValueError(f"token grid {grid_h}x{grid_w} exceeds the RoPE grid {base_h}x{base_w} of this model")
        pos_h = torch.arange(grid_h, dtype=torch.float32, device=device)
        pos_w = torch.arange(grid_w, dtype=torch.float32, device=device)
        pos_t = torch.arange(frames, dtype=torch.float32, device=device)
    tables = (_rope_1d(dim_t, pos_t), _rope_1d(dim_s, pos_h), _rope_1d(dim_s, pos_w))

    def combine(i: int) -> torch.Tensor:
        t, h, w = (tab[i] for tab in tables)
        return torch.cat([t[:, None, None, :].expand(-1, grid_h, grid_w, -1),
                          h[None, :, None, :].expand(frames, -1, grid_w, -1),
                          w[None, None, :, :].expand(frames, grid_h, -1, -1)], dim=-1).reshape(-1, d)

    return combine(0), combine(1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs (x[2i], x[2i+1]) of x [B, S, H, D] by the angles of cos / sin [S, D] (float32 math)."""
    pairs = x.reshape(*x.shape[:-1], -1, 2)
    rotated = torch.stack([-pairs[..., 1], pairs[..., 0]], dim=-1).flatten(-2)
    return (x.float() * cos[None, :, None, :] + rotated.float() * sin[None, :, None, :]).to(x.dtype)


# ----------------------------------------------------------------------------------------- modules
class CogVideoXPatchEmbed(nn.Module):
    """Latent patches and text into one sequence [B, L + F' H' W', D] (``patch_embed.*`` parameters).

    1.0: ``proj`` is a Conv2d with kernel = stride = p on every frame; 1.5: ``proj`` is a Linear over
    (p_t, p, p, C) patches. ``pos_embedding`` is a parameter only for learned positions."""

    def __init__(self, config: CogVideoXTransformerConfig):
        super().__init__()
        c, p, pt, dim = config.in_channels, config.patch_size, config.patch_size_t, config.inner_dim
        self.config = config
        if pt is None:
            self.proj = nn.Conv2d(c, dim, kernel_size=(p, p), stride=p, bias=config.patch_bias)
        else:
            self.proj = nn.Linear(c * p * p * pt, dim)
        self.text_proj = nn.Linear(config.text_embed_dim, dim)
        if config.use_learned_positional_embeddings:
            f = (config.sample_frames - 1) // config.temporal_compression_ratio + 1
            n = f * (config.sample_height // p) * (config.sample_width // p)
            self.pos_embedding = nn.Parameter(torch.zeros(1, config.max_text_seq_length + n, dim))

    def forward(self, text: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        b, f, c, h, w = latents.shape
        text = self.text_proj(text)
        p, pt = cfg.patch_size, cfg.patch_size_t
        if pt is None:
            video = self.proj(latents.reshape(-1, c, h, w))
            video = video.view(b, f, *video.shape[1:]).flatten(3).transpose(2, 3).flatten(1, 2)
        else:
            video = latents.permute(0, 1, 3, 4, 2).reshape(b, f // pt, pt, h // p, p, w // p, p, c)
            video = self.proj(video.permute(0, 1, 3, 5, 7, 2, 4, 6).flatten(4, 7).flatten(1, 3))
        if cfg.use_learned_positional_embeddings:
            if h != cfg.sample_height or w != cfg.sample_width:
                raise ValueError(f"learned positional embeddings fix the latent size to {cfg.sample_height}x"
                                 f"{cfg.sample_width}; got {h}x{w}")
            embeds = torch.cat([text, video], dim=1)
            return embeds + self.pos_embedding.to(embeds.dtype)
        if not cfg.use_rotary_positional_embeddings:
            pos = sincos_positions_3d(cfg.inner_dim, f, h // p, w // p, cfg.spatial_interpolation_scale,
                                      cfg.temporal_interpolation_scale, device=latents.device)
            video = video + pos.to(video.dtype)[None]
        return torch.cat([text, video], dim=1)


class TimestepEmbedding(nn.Module):
    """``time_embedding.linear_1`` -> SiLU -> ``linear_2`` over the sinusoid of the timestep."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(F.silu(self.linear_1(x)))


class ExpertAdaLayerNorm(nn.Module):
    """``CogVideoXLayerNormZero``: one LayerNorm, separate (shift, scale, gate) for video and text tokens."""

    def __init__(self, time_dim: int, dim: int, affine: bool, eps: float):
        super().__init__()
        self.linear = nn.Linear(time_dim, 6 * dim)
        self.norm = nn.LayerNorm(dim, eps=eps, elementwise_affine=affine)

    def forward(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor):
        shift, scale, gate, t_shift, t_scale, t_gate = self.linear(F.silu(temb)).chunk(6, dim=1)
        video = self.norm(video) * (1 + scale)[:, None, :] + shift[:, None, :]
        text = self.norm(text) * (1 + t_scale)[:, None, :] + t_shift[:, None, :]
        return video, text, gate[:, None, :], t_gate[:, None, :]


class JointAttention(QuantizableAttention):
    """Full self-attention over [text; video] with LayerNorm on q and k; RoPE (if any) on video tokens only.
    FP8 q / k / v / softmax quantizers attach here (:class:`~vidtrt.models.attention.QuantizableAttention`)."""

    def __init__(self, heads: int, head_dim: int, bias: bool):
        super().__init__()
        dim = heads * head_dim
        self.heads = heads
        self.to_q = nn.Linear(dim, dim, bias=bias)
        self.to_k = nn.Linear(dim, dim, bias=bias)
        self.to_v = nn.Linear(dim, dim, bias=bias)
        self.norm_q = nn.LayerNorm(head_dim, eps=_QK_NORM_EPS)
        self.norm_k = nn.LayerNorm(head_dim, eps=_QK_NORM_EPS)
        self.to_out = nn.ModuleList([nn.Linear(dim, dim), nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor, text_len: int, rope: tuple[torch.Tensor, torch.Tensor] | None) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.norm_q(self.to_q(x).view(b, s, self.heads, -1))
        k = self.norm_k(self.to_k(x).view(b, s, self.heads, -1))
        v = self.to_v(x).view(b, s, self.heads, -1)
        if rope is not None:
            cos, sin = rope
            q = torch.cat([q[:, :text_len], apply_rope(q[:, text_len:], cos, sin)], dim=1)
            k = torch.cat([k[:, :text_len], apply_rope(k[:, text_len:], cos, sin)], dim=1)
        out = self.attend(q, k, v, None).reshape(b, s, -1)
        return self.to_out[0](out)


class GELUTanhProj(nn.Module):
    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x), approximate="tanh")


class FeedForward(nn.Module):
    """``ff.net.0.proj`` (GELU-tanh) -> ``ff.net.2``; 4x width."""

    def __init__(self, dim: int):
        super().__init__()
        self.net = nn.ModuleList([GELUTanhProj(dim, 4 * dim), nn.Dropout(0.0), nn.Linear(4 * dim, dim),
                                  nn.Dropout(0.0)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net[2](self.net[0](x))


class CogVideoXBlock(nn.Module):
    def __init__(self, config: CogVideoXTransformerConfig):
        super().__init__()
        dim, affine, eps = config.inner_dim, config.norm_elementwise_affine, config.norm_eps
        self.norm1 = ExpertAdaLayerNorm(config.time_embed_dim, dim, affine, eps)
        self.attn1 = JointAttention(config.num_attention_heads, config.attention_head_dim, config.attention_bias)
        self.norm2 = ExpertAdaLayerNorm(config.time_embed_dim, dim, affine, eps)
        self.ff = FeedForward(dim)

    def forward(self, video: torch.Tensor, text: torch.Tensor, temb: torch.Tensor, rope):
        n = text.shape[1]
        nv, nt, gate, t_gate = self.norm1(video, text, temb)
        attn = self.attn1(torch.cat([nt, nv], dim=1), n, rope)
        video = video + gate * attn[:, n:]
        text = text + t_gate * attn[:, :n]
        nv, nt, gate, t_gate = self.norm2(video, text, temb)
        ff = self.ff(torch.cat([nt, nv], dim=1))
        return video + gate * ff[:, n:], text + t_gate * ff[:, :n]


class AdaLayerNormOut(nn.Module):
    """``norm_out``: LayerNorm modulated by (shift, scale) from the timestep embedding (that order)."""

    def __init__(self, time_dim: int, dim: int, affine: bool, eps: float):
        super().__init__()
        self.linear = nn.Linear(time_dim, 2 * dim)
        self.norm = nn.LayerNorm(dim, eps, affine)

    def forward(self, x: torch.Tensor, temb: torch.Tensor) -> torch.Tensor:
        shift, scale = self.linear(F.silu(temb)).chunk(2, dim=1)
        return self.norm(x) * (1 + scale[:, None, :]) + shift[:, None, :]


class CogVideoXTransformer3D(nn.Module):
    """The CogVideoX DiT.

    forward(hidden_states, encoder_hidden_states, timestep):
        hidden_states: latents [B, F, C, H, W] (frames before channels, as diffusers); F divisible by
            ``patch_size_t`` (1.5), H and W by ``patch_size``.
        encoder_hidden_states: T5 states [B, L, text_embed_dim], L = ``max_text_seq_length`` (226).
        timestep: [B] (integer DDIM/DPM timesteps in [0, 1000), any numeric dtype).
    Returns the v-prediction [B, F, C_out, H, W] in the module's dtype.
    """

    def __init__(self, config: CogVideoXTransformerConfig):
        super().__init__()
        config.validate()
        self.config = config
        dim = config.inner_dim
        self.patch_embed = CogVideoXPatchEmbed(config)
        self.time_embedding = TimestepEmbedding(dim, config.time_embed_dim)
        self.transformer_blocks = nn.ModuleList([CogVideoXBlock(config) for _ in range(config.num_layers)])
        self.norm_final = nn.LayerNorm(dim, config.norm_eps, config.norm_elementwise_affine)
        self.norm_out = AdaLayerNormOut(config.time_embed_dim, dim, config.norm_elementwise_affine, config.norm_eps)
        pt = config.patch_size_t or 1
        self.proj_out = nn.Linear(dim, config.patch_size**2 * pt * config.out_channels)

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor,
                timestep: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        b, f, _, h, w = hidden_states.shape
        p, pt = cfg.patch_size, cfg.patch_size_t
        if h % p or w % p or (pt and f % pt):
            raise ValueError(f"latents [B, {f}, C, {h}, {w}]: frames must be a multiple of patch_size_t {pt} and "
                             f"height / width of patch_size {p}")
        dtype = hidden_states.dtype
        temb = self.time_embedding(timestep_sinusoid(timestep, cfg.inner_dim).to(dtype))
        x = self.patch_embed(encoder_hidden_states.to(dtype), hidden_states)
        n = encoder_hidden_states.shape[1]
        text, video = x[:, :n], x[:, n:]
        rope = None
        if cfg.use_rotary_positional_embeddings:
            rope = rope_3d(cfg, f // (pt or 1), h // p, w // p, device=hidden_states.device)
        for block in self.transformer_blocks:
            video, text = block(video, text, temb, rope)
        video = self.proj_out(self.norm_out(self.norm_final(video), temb))
        if pt is None:
            out = video.reshape(b, f, h // p, w // p, -1, p, p)
            return out.permute(0, 1, 4, 2, 5, 3, 6).flatten(5, 6).flatten(3, 4)
        out = video.reshape(b, f // pt, h // p, w // p, -1, pt, p, p)
        return out.permute(0, 1, 5, 4, 2, 6, 3, 7).flatten(6, 7).flatten(4, 5).flatten(1, 2)
