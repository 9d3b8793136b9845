"""The DiT probe: how much the first double-stream block's modulated image input changed between two steps.

TeaCache (Liu et al. 2024, arXiv 2411.19108) decides whether a denoising step may reuse the DiT's last output
from the change of the first block's modulated input, ``norm1(x_embedder(x)) * (1 + scale) + shift`` (the
AdaLN shift / scale from the timestep, guidance and pooled-text embedding ``temb``). This module computes that
change for two steps at once and returns one number per batch row, so the decision needs no state on the
serving side and only a scalar crosses a process boundary (the modulated tensor itself is S_img x C floats).

It holds the DiT's own ``x_embedder``, ``time_text_embed`` and ``transformer_blocks[0].norm1`` (the same
parameter objects: no copy), so it always agrees with the DiT it was built from.
"""

from __future__ import annotations

import torch
from torch import nn

from vidtrt.models.transformer import HunyuanVideoTransformer3D, _exporting


class HunyuanVideoDiTProbe(nn.Module):
    """``(hidden_states, timestep, pooled_projections, [guidance], prev_hidden_states, prev_timestep) -> rel_l1``.

    Shapes: hidden_states / prev_hidden_states [B, C_in, T', H', W'] latents of this step and of the previous
    one; timestep / prev_timestep [B] (1000 * sigma); pooled_projections [B, pooled_dim] (CLIP pooled);
    guidance [B] (embedded scale * 1000; only when the DiT embeds guidance). Returns float32 [B]:
    ``mean|m - m_prev| / mean|m_prev|`` per row, ``m`` the modulated input of block 0 (means over tokens and
    channels). Inputs are cast to the DiT's dtype as the DiT does; the two means are taken in float64 in
    torch (the same value whatever the thread count) and in float32 in an exported graph (TensorRT has no
    float64).
    """

    def __init__(self, dit: HunyuanVideoTransformer3D):
        super().__init__()
        self.config = dit.config
        self.x_embedder = dit.x_embedder
        self.time_text_embed = dit.time_text_embed
        self.norm1 = dit.transformer_blocks[0].norm1

    @property
    def guidance_embeds(self) -> bool:
        return self.config.guidance_embeds

    def modulated(self, hidden_states: torch.Tensor, timestep: torch.Tensor, pooled: torch.Tensor,
                  guidance: torch.Tensor | None) -> torch.Tensor:
        """Block 0's modulated image input [B, S_img, C] (the DiT's dtype)."""
        dtype = self.x_embedder.proj.weight.dtype
        temb = self.time_text_embed(timestep, pooled.to(dtype), guidance)
        img = self.x_embedder(hidden_states.to(dtype))
        return self.norm1(img, temb)[0]

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, pooled_projections: torch.Tensor,
                arg3: torch.Tensor, arg4: torch.Tensor, arg5: torch.Tensor | None = None) -> torch.Tensor:
        """Positional as the ``dit_probe`` spec: (..., guidance, prev_hidden_states, prev_timestep), or without
        ``guidance`` for a DiT that does not embed it."""
        if self.guidance_embeds:
            guidance, prev_hidden_states, prev_timestep = arg3, arg4, arg5
        else:
            guidance, prev_hidden_states, prev_timestep = None, arg3, arg4
        now = self.modulated(hidden_states, timestep, pooled_projections, guidance)
        prev = self.modulated(prev_hidden_states, prev_timestep, pooled_projections, guidance)
        acc = torch.float32 if _exporting() else torch.float64
        change = (now.to(acc) - prev.to(acc)).abs().mean(dim=(1, 2))
        size = prev.to(acc).abs().mean(dim=(1, 2))
        return (change / size).to(torch.float32)
