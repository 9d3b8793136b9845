"""The HunyuanVideo 3D causal VAE decoder ("884-16c"), parameter names as diffusers'
``AutoencoderKLHunyuanVideo`` (``post_quant_conv.*``, ``decoder.*``).

Only the decoder half is built; a diffusers (or official, see ``vae_official_layout``) checkpoint also
holds the encoder, whose keys a loader drops with :data:`IGNORED_PREFIXES`.

``HunyuanVideoVAEDecoder.forward`` is the untiled decode (diffusers ``vae.decode`` with tiling and
framewise decoding off). Tiled decode lives in :mod:`vidtrt.config.tiling` and calls this module once per
tile. The graph is written to export to ONNX with dynamic frames/height/width: no Python branches
on tensor sizes, the causal attention mask is built by index arithmetic, and the causal temporal
upsampling is a gather.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vidtrt.config.model_config import VAEConfig
from vidtrt.errors import ConfigError

# Keys of a full-VAE checkpoint that belong to the encoder side; a decoder loader skips them.
IGNORED_PREFIXES = ("encoder.", "quant_conv.")

_EPS = 1e-6


def causal_frame_mask(num_frames: int, height_width: int, device: torch.device | None = None) -> torch.Tensor:
    """Bool [N, N] (N = num_frames * height_width), True where a query token may attend a key token.

    Tokens are ordered (frame, y, x); a query attends to every key of its own frame and of earlier
    frames. Equivalent to diffusers' additive 0 / -inf ``prepare_causal_attention_mask``.
    """
    n = num_frames * height_width
    frame = torch.arange(n, device=device) // height_width
    return frame.unsqueeze(1) >= frame.unsqueeze(0)


class CausalConv3d(nn.Module):
    """Conv3d with replicate padding: k - 1 frames in front (causal), k // 2 on each side in space."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        p = kernel_size // 2
        self.padding = (p, p, p, p, kernel_size - 1, 0)  # (W, W, H, H, T_front, T_back)
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if any(self.padding):
            x = F.pad(x, self.padding, mode="replicate")
        return self.conv(x)


class ResnetBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_channels, eps=_EPS, affine=True)
        self.conv1 = CausalConv3d(in_channels, out_channels, 3)
        self.norm2 = nn.GroupNorm(groups, out_channels, eps=_EPS, affine=True)
        self.conv2 = CausalConv3d(out_channels, out_channels, 3)
        self.conv_shortcut = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        if self.conv_shortcut is not None:
            x = self.conv_shortcut(x)
        return h + x


class FrameCausalAttention(nn.Module):
    """Single-head self-attention over all (frame, y, x) tokens, causal over frames, with a residual.

    Parameter names follow diffusers' ``Attention(_from_deprecated_attn_block=True)``: ``group_norm``,
    ``to_q``, ``to_k``, ``to_v``, ``to_out.0``.
    """

    def __init__(self, channels: int, groups: int):
        super().__init__()
        self.group_norm = nn.GroupNorm(groups, channels, eps=_EPS, affine=True)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, f, h, w = x.shape
        tokens = x.permute(0, 2, 3, 4, 1).flatten(1, 3)  # [B, N, C]
        normed = self.group_norm(tokens.transpose(1, 2)).transpose(1, 2)
        q = self.to_q(normed).unsqueeze(1)  # [B, 1, N, C]: one head of width C
        k = self.to_k(normed).unsqueeze(1)
        v = self.to_v(normed).unsqueeze(1)
        mask = causal_frame_mask(f, h * w, device=x.device)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask).squeeze(1)
        out = self.to_out[0](out.to(q.dtype)) + tokens
        return out.unflatten(1, (f, h, w)).permute(0, 4, 1, 2, 3)


class MidBlock(nn.Module):
    def __init__(self, channels: int, groups: int, add_attention: bool):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups), ResnetBlock(channels, channels, groups)])
        # diffusers keeps a ModuleList of one entry (None without attention): same state_dict keys.
        self.attentions = nn.ModuleList([FrameCausalAttention(channels, groups)] if add_attention else [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.resnets[0](x)
        for attn in self.attentions:
            x = attn(x)
        return self.resnets[1](x)


class CausalUpsample(nn.Module):
    """Nearest 2x upsampling in space (and optionally time), then a causal conv.

    In time the first frame is kept once and every later frame is doubled: T -> 2T - 1.
    """

    def __init__(self, channels: int, time_factor: int, space_factor: int):
        super().__init__()
        if time_factor not in (1, 2):
            raise ConfigError(f"temporal upsample factor {time_factor} is not supported; accepted: 1, 2")
        self.time_factor = time_factor
        self.space_factor = space_factor
        self.conv = CausalConv3d(channels, channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.space_factor != 1:
            x = F.interpolate(x, scale_factor=(1.0, float(self.space_factor), float(self.space_factor)),
                              mode="nearest")
        if self.time_factor == 2:
            t_out = 2 * x.shape[2] - 1
            src = (torch.arange(t_out, device=x.device) + 1) // 2  # 0, 1, 1, 2, 2, ...
            x = x.index_select(2, src)
        return self.conv(x)


class UpBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int,
                 time_factor: int, space_factor: int):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups) for i in range(num_layers)]
        )
        self.upsamplers = None
        if time_factor != 1 or space_factor != 1:
            self.upsamplers = nn.ModuleList([CausalUpsample(out_channels, time_factor, space_factor)])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


def upsample_factors(vae: VAEConfig) -> list[tuple[int, int]]:
    """(time, space) upsampling factor of each up block, as diffusers' decoder assigns them."""
    n = len(vae.block_out_channels)
    n_space = int(math.log2(vae.spatial_compression_ratio))
    n_time = int(math.log2(vae.temporal_compression_ratio))
    if vae.temporal_compression_ratio != 4:
        raise ConfigError(f"temporal_compression_ratio {vae.temporal_compression_ratio} is not supported; accepted: 4")
    if 2**n_space != vae.spatial_compression_ratio or n_space > n - 1:
        raise ConfigError(
            f"spatial_compression_ratio {vae.spatial_compression_ratio} must be a power of two <= "
            f"2**{n - 1} for {n} blocks"
        )
    factors = []
    for i in range(n):
        final = i == n - 1
        space = 2 if i < n_space else 1
        time = 2 if (i >= n - 1 - n_time and not final) else 1
        factors.append((time, space))
    return factors


class Decoder(nn.Module):
    def __init__(self, vae: VAEConfig):
        super().__init__()
        ch = list(vae.block_out_channels)
        g = vae.norm_num_groups
        self.conv_in = CausalConv3d(vae.latent_channels, ch[-1], 3)
        self.mid_block = MidBlock(ch[-1], g, vae.mid_block_add_attention)
        rev = list(reversed(ch))
        blocks = []
        prev = rev[0]
        for i, (tf, sf) in enumerate(upsample_factors(vae)):
            blocks.append(UpBlock(prev, rev[i], vae.layers_per_block + 1, g, tf, sf))
            prev = rev[i]
        self.up_blocks = nn.ModuleList(blocks)
        self.conv_norm_out = nn.GroupNorm(g, ch[0], eps=_EPS, affine=True)
        self.conv_out = CausalConv3d(ch[0], vae.out_channels, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class HunyuanVideoVAEDecoder(nn.Module):
    """Latents [B, C, T', h, w] (already divided by ``scaling_factor``) -> video [B, 3, 4(T'-1)+1, 8h, 8w]
    in about [-1, 1]. Untiled."""

    def __init__(self, config: VAEConfig):
        super().__init__()
        self.config = config.validate()
        self.post_quant_conv = nn.Conv3d(config.latent_channels, config.latent_channels, kernel_size=1)
        self.decoder = Decoder(config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.post_quant_conv(z))

    @staticmethod
    def decoder_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The entries of a full-VAE (diffusers layout) state dict this module loads."""
        return {k: v for k, v in state_dict.items() if not k.startswith(IGNORED_PREFIXES)}
