"""The CogVideoX 3D causal VAE decoder, equal to diffusers' ``AutoencoderKLCogVideoX`` decode (fp32 rounding).

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

One frame batch (:meth:`Decoder3D.forward`) has no Python branch on its frame count: diffusers' odd-count
handling (the first frame is neither doubled in time nor mixed with the others by the nearest resizes) is
"repeat every frame twice in time, then drop the first copy when the count is odd" (:func:`double_time`, a
gather of frames (i + t % 2) // 2), and no tensor with such a parity-sized frame dim is viewed (resizes and
padding are gathers; the upsampler's per-frame Conv2d runs as a (1, 3, 3) Conv3d: 4e-7 from diffusers
instead of 0). So :class:`CogVideoXVAEFrameBatch` exports as one ONNX graph, dynamic in the frame count and
the tile size, with the conv caches as explicit inputs and outputs (:mod:`vidtrt.export.cogvideox_export`).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from vidtrt.config.cogvideox_config import CogVideoXVAEConfig
from vidtrt.config.cogvideox_specs import frame_batches

IGNORED_PREFIXES = ("encoder.", "quant_conv.")


class ConvCache:
    """Every causal conv's last ``kernel_t - 1`` input frames, carried from one frame batch to the next
    (diffusers' ``conv_cache``), keyed by the conv module's id.

    A conv without stored frames pads its input in time with copies of its first frame (the first batch).
    ``first`` (a bool tensor [1], the exported frame batch): every conv has stored frames (graph inputs) and
    pads with copies of its first frame where ``first`` is true, with the stored frames otherwise."""

    def __init__(self, stored: dict[int, torch.Tensor] | None = None, first: torch.Tensor | None = None):
        self.stored = dict(stored or {})
        self.first = first

    def head(self, key: int, x: torch.Tensor, frames: int) -> torch.Tensor:
        """The ``frames`` frames to put before ``x`` [B, C, T, H, W] in time."""
        first_frame = x.index_select(2, torch.zeros(1, dtype=torch.long, device=x.device))  # a gather, as resize_space
        replicate = first_frame.expand(-1, -1, frames, -1, -1)
        prev = self.stored.get(key)
        if prev is None:
            return replicate
        if self.first is None:
            return prev
        return torch.where(self.first.reshape(1, 1, 1, 1, 1), replicate, prev)

    def store(self, key: int, tail: torch.Tensor) -> None:
        self.stored[key] = tail


def double_time(x: torch.Tensor) -> torch.Tensor:
    """Nearest 2x in time as diffusers' decoder does it: [B, C, T, ...] -> [B, C, 2 T - T % 2, ...]; an odd
    count keeps its first frame single (x0, x1, x1, x2, x2), an even one doubles all (x0, x0, x1, x1).

    A gather, no view: the frame count after it is a function of T's parity, and views of such a dim make
    ``torch.export`` specialise the count (their strides differ when it is 1)."""
    t = x.shape[2]
    index = torch.div(torch.arange(2 * t - t % 2, device=x.device) + t % 2, 2, rounding_mode="floor")
    return x.index_select(2, index)


def resize_space(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Nearest resize of [B, C, T, h, w] to [B, C, T, height, width] (``F.interpolate``'s "nearest" for the
    integer ratios of the decoder: source index floor(i h / height)), as two gathers: its decomposition
    guards on the frame count being 1, which ``torch.export`` would bake in."""
    h, w = x.shape[-2:]
    rows = torch.div(torch.arange(height, device=x.device) * h, height, rounding_mode="floor")
    cols = torch.div(torch.arange(width, device=x.device) * w, width, rounding_mode="floor")
    return x.index_select(3, rows).index_select(4, cols)


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
            x = torch.cat([cache.head(id(self), x, k - 1), x], dim=2)
            cache.store(id(self), x[:, :, -(k - 1):])
        return self.conv(x)


class SpatialNorm3D(nn.Module):
    """GroupNorm of ``f`` scaled and shifted by 1x1 convolutions of the latents ``zq`` resized to ``f``."""

    def __init__(self, f_channels: int, zq_channels: int, groups: int):
        super().__init__()
        self.norm_layer = nn.GroupNorm(num_channels=f_channels, num_groups=groups, eps=1e-6, affine=True)
        self.conv_y = CausalConv3d(zq_channels, f_channels, kernel_size=1)
        self.conv_b = CausalConv3d(zq_channels, f_channels, kernel_size=1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor, cache: ConvCache) -> torch.Tensor:
        """``zq``: the latents already at ``f``'s frame count (:func:`double_time` per temporal level, which is
        diffusers' nearest resize in time, first frame apart); resized here in space only."""
        zq = resize_space(zq, *f.shape[-2:])
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
    """Nearest 2x in space (and in time after the first frame when ``compress_time``), then a 3x3 Conv2d on
    every frame. The per-frame work runs before the time doubling (it commutes with repeating frames: the
    same frames, fewer convs), as a (1, 3, 3) Conv3d of the Conv2d's weight (no frames-into-batch view)."""

    def __init__(self, channels: int, compress_time: bool):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=1, padding=1)
        self.compress_time = compress_time

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = resize_space(x, 2 * x.shape[3], 2 * x.shape[4])
        x = F.conv3d(x, self.conv.weight.unsqueeze(2), self.conv.bias, padding=(0, 1, 1))
        return double_time(x) if self.compress_time else x


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
        """One frame batch: z [B, C, t, h, w] -> [B, 3, 4 t - 3 (t % 2), 8 h, 8 w] (any t >= 1)."""
        x = self.conv_in(z, cache)
        zq = z
        x = self.mid_block(x, zq, cache)
        for block in self.up_blocks:
            x = block(x, zq, cache)
            if block.upsamplers is not None and block.upsamplers[0].compress_time:
                zq = double_time(zq)  # the latents follow the features' frame count
        return self.conv_out(F.silu(self.norm_out(x, zq, cache)), cache)

    def cached_convs(self) -> list[CausalConv3d]:
        """The convs that carry frames across batches, in the order of ``cogvideox_specs.conv_cache_layout``."""
        return [m for m in self.modules() if isinstance(m, CausalConv3d) and m.time_kernel > 1]


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
        cache = ConvCache()
        return torch.cat([self.decoder(z[:, :, a:b], cache) for a, b in frame_batches(z.shape[2])], dim=2)


class CogVideoXVAEFrameBatch(nn.Module):
    """One frame batch of :class:`CogVideoXVAEDecoder` with the conv caches as tensors (what is exported).

    forward(latents [1, C, t, h, w], first bool [1], *caches) -> (video [1, 3, 4 t - 3 (t % 2), 8 h, 8 w],
    *next caches): ``caches`` in ``Decoder3D.cached_convs`` order, each [1, C_i, 2, 2^l h, 2^l w]; where
    ``first`` is true they are ignored (the first batch pads with copies of its first frames) and may be
    zeros. Calling it over :func:`frame_batches` with the caches fed back equals the decoder's forward."""

    def __init__(self, decoder: CogVideoXVAEDecoder):
        super().__init__()
        self.decoder = decoder.decoder
        self.convs = self.decoder.cached_convs()

    def forward(self, latents: torch.Tensor, first: torch.Tensor, *caches: torch.Tensor):
        if len(caches) != len(self.convs):
            raise ValueError(f"{len(caches)} conv caches given, the decoder has {len(self.convs)}")
        cache = ConvCache({id(c): x for c, x in zip(self.convs, caches, strict=True)}, first=first)
        video = self.decoder(latents, cache)
        return (video, *(cache.stored[id(c)] for c in self.convs))
