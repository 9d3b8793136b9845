"""The CogVideoX 3D causal VAE decoder, numerically equal to diffusers' ``AutoencoderKLCogVideoX`` decode.

Parameter names are diffusers' (``decoder.*``; the encoder's ``encoder.*`` keys of a checkpoint are
ignored), so a diffusers ``vae/`` folder loads as it is.

8x8 spatial and 4x temporal upsampling of 16-channel latents: causal 3D convolutions (time padded with
copies of the first frame, or with the previous frame batch's last inputs), spatially conditioned GroupNorm
(every norm is modulated by the latents themselves, resized to the feature map, first frame apart), nearest
2x upsampling in space and, in the first ``log2(temporal ratio)`` blocks, in time (the first frame is not
doubled, so 1 + 4 k latent-frame counts give 1 + 4 k ... frames: T' odd -> 4 (T' - 1) + 1 frames).

Decoding is stateful across time: diffusers decodes two latent frames at a time (the first batch takes the
odd one out) and carries every causal conv's last inputs (its *conv cache*) to the next batch, while the
GroupNorm statistics are those of the batch. :class:`CogVideoXVAEDecoder` does exactly this inside one
call, so a call on a spatial tile with all its latent frames is a pure function of the tile: the shared tile
planner (:mod:`vidtrt.config.tiling`, spatial tiles only) and the ``decode_tile`` protocol apply unchanged.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidtrt.config.cogvideox_config import CogVideoXVAEConfig

IGNORED_PREFIXES = ("encoder.", "quant_conv.")
FRAME_BATCH = 2  # latent frames per decoder call (diffusers' num_latent_frames_batch_size)

# Conv caches of one decode: id(conv module) -> its last (kernel_t - 1) input frames.
ConvCache = dict


class CausalConv3d(nn.Module):
    """3D convolution, causal in time (``conv`` is the Conv3d; spatial zero padding k // 2)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3):
        super().__init__()
        self.time_kernel = kernel_size
        pad = (kernel_size - 1) // 2
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size, stride=1, padding=(0, pad, pad))

    def forward(self, x: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        k = self.time_kernel
        if k > 1:
            prev = cache.get(id(self))
            head = prev if prev is not None else x[:, :, :1].expand(-1, -1, k - 1, -1, -1)
            x = torch.cat([head, x], dim=2)
            cache[id(self)] = x[:, :, -(k - 1):]
        return self.conv(x)


class SpatialNorm3D(nn.Module):
    """GroupNorm of ``f`` scaled and shifted by 1x1 convolutions of the latents ``zq`` resized to ``f``."""

    def __init__(self, f_channels: int, zq_channels: int, groups: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=groups, eps=1e-6, affine=True)
        self.conv_y = CausalConv3d(zq_channels, f_channels, kernel_size=1)
        self.conv_b = CausalConv3d(zq_channels, f_channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        if f.shape[2] > 1 and f.shape[2] % 2 == 1:
            first = F.interpolate(zq[:, :, :1], size=(1, *f.shape[-2:]))
            rest = F.interpolate(zq[:, :, 1:], size=(f.shape[2] - 1, *f.shape[-2:]))
            zq = torch.cat([first, rest], dim=2)
        else:
            zq = F.interpolate(zq, size=f.shape[-3:])
        return self.norm_layer(f) * self.conv_y(zq, cache) + self.conv_b(zq, cache)


class ResnetBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, groups: int, zq_channels: int):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.norm1 = SpatialNorm3D(in_channels, zq_channels, groups)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = SpatialNorm3D(out_channels, zq_channels, groups)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        if in_channels != out_channels:
            self.conv_shortcut = nn.Conv3d(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x, zq, cache)), cache)
        h = self.conv2(F.silu(self.norm2(h, zq, cache)), cache)
        if self.in_channels != self.out_channels:
            x = self.conv_shortcut(x)
        return h + x


class Upsample3D(nn.Module):
    """Nearest 2x in space (and in time after the first frame when ``compress_time``), then a 3x3 Conv2d."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)
        self.compress_time = compress_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.compress_time and t > 1 and t % 2 == 1:
            first = F.interpolate(x[:, :, 0], scale_factor=2.0)[:, :, None]
            x = torch.cat([first, F.interpolate(x[:, :, 1:], scale_factor=2.0)], dim=2)
        elif self.compress_time and t > 1:
            x = F.interpolate(x, scale_factor=2.0)
        else:
            x = F.interpolate(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w), scale_factor=2.0)
            x = x.reshape(b, t, c, 2 * h, 2 * w).permute(0, 2, 1, 3, 4)
        b, c, t, h, w = x.shape
        x = self.conv(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        return x.reshape(b, t, *x.shape[1:]).permute(0, 2, 1, 3, 4)


class MidBlock3D(nn.Module):
    def __init__(self, channels: int, groups: int, zq_channels: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock3D(channels, channels, groups, zq_channels) for _ in range(2)])

    def forward(self, x, zq, cache):
        for resnet in self.resnets:
            x = resnet(x, zq, cache)
        return x


class UpBlock3D(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, zq_channels: int,
                 add_upsample: bool, compress_time: bool):
        super().__init__()
        self.resnets = nn.ModuleList([
            ResnetBlock3D(in_channels if i == 0 else out_channels, out_channels, groups, zq_channels)
            for i in range(num_layers)
        ])
        self.upsamplers = nn.ModuleList([Upsample3D(out_channels, compress_time)]) if add_upsample else None

    def forward(self, x, zq, cache):
        for resnet in self.resnets:
            x = resnet(x, zq, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder3D(nn.Module):
    """``decoder.*``: conv_in, mid block, up blocks, spatial norm_out, SiLU, conv_out (one frame batch)."""

    def __init__(self, config: CogVideoXVAEConfig):
        super().__init__()
        ch = list(reversed(config.block_out_channels))
        z, g = config.latent_channels, config.norm_num_groups
        self.conv_in = CausalConv3d(z, ch[0])
        self.mid_block = MidBlock3D(ch[0], g, z)
        levels = int(math.log2(config.temporal_compression_ratio))
        self.up_blocks = nn.ModuleList()
        prev = ch[0]
        for i, out in enumerate(ch):
            last = i == len(ch) - 1
            self.up_blocks.append(UpBlock3D(prev, out, config.layers_per_block + 1, g, z, add_upsample=not last,
                                            compress_time=i < levels))
            prev = out
        self.norm_out = SpatialNorm3D(ch[-1], z, g)
        self.conv_out = CausalConv3d(ch[-1], config.out_channels)

    def forward(self, z: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        x = self.conv_in(z, cache)
        x = self.mid_block(x, z, cache)
        for block in self.up_blocks:
            x = block(x, z, cache)
        return self.conv_out(F.silu(self.norm_out(x, z, cache)), cache)


class CogVideoXVAEDecoder(nn.Module):
    """Latents (already divided by ``scaling_factor``) -> video.

    forward(z): z [B, C, T', h, w] -> [B, 3, F, 8 h, 8 w] in about [-1, 1], F = 4 (T' - 1) + 1 for odd T'
    (the only counts CogVideoX pipelines decode; even T' gives 4 T'). Frame batches of two latent frames
    (the first takes three when T' is odd) share the conv cache, as diffusers' ``_decode``."""

    def __init__(self, config: CogVideoXVAEConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.decoder = Decoder3D(config)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        t = z.shape[2]
        batches = max(t // FRAME_BATCH, 1)
        rem = t % FRAME_BATCH
        cache: ConvCache = {}
        outs = []
        for i in range(batches):
            start = FRAME_BATCH * i + (0 if i == 0 else rem)
            stop = FRAME_BATCH * (i + 1) + rem
            outs.append(self.decoder(z[:, :, start:stop], cache))
        return torch.cat(outs, dim=2)
