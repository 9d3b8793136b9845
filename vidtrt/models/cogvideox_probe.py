"""The CogVideoX DiT probe: how much the DiT's timestep embedding changed between two steps (TeaCache's signal).

TeaCache's CogVideoX ports decide from the timestep embedding ``emb = time_embedding(time_proj(t))``, the
[B, time_embed_dim] vector every block's expert AdaLN modulates with, not from a block's modulated input
(github.com/ali-vilab/TeaCache at 7c10efc: ``eval/teacache/experiments/cogvideox.py``, TeaCache4CogVideoX for
CogVideoX-2B / -5B, and ``TeaCache4CogVideoX1.5/teacache_sample_video.py``; both compute
``(emb - previous_modulated_input).abs().mean() / previous_modulated_input.abs().mean()``, the variable named
``previous_modulated_input`` holding the previous step's ``emb``). Their rescaling coefficients
(:data:`vidtrt.config.step_cache.TEACACHE_COEFFICIENTS`, ``cogvideox-2b`` / ``-5b`` / ``1.5-5b``) were fitted
on that quantity for the released weights, so this probe computes exactly it. It depends on the timesteps only
(not on the latents or the prompt): the skip pattern of a request follows from its schedule and threshold.

It holds the DiT's own ``time_embedding`` (the same parameter objects: no copy), so it always agrees with the
DiT it was built from. The CFG pair runs batched through the DiT at one timestep, so both rows of ``emb`` are
equal and one probe row decides for both branches (TeaCache's mean over the whole batch is the same number).
"""

from __future__ import annotations

import torch
from torch import nn

from vidtrt.models.cogvideox_transformer import CogVideoXTransformer3D, _exporting
from vidtrt.models.transformer import timestep_sinusoid


class CogVideoXDiTProbe(nn.Module):
    """``(timestep, prev_timestep) -> rel_l1``: the relative L1 change of the DiT's timestep embedding.

    Shapes: timestep / prev_timestep [B] (the DiT's integer DDIM / DPM timesteps, any numeric dtype). Returns
    float32 [B]: ``mean|e - e_prev| / mean|e_prev|`` per row (means over the time_embed_dim channels),
    ``e = time_embedding(sinusoid(t, inner_dim))`` computed in the DiT's dtype as the DiT computes it. The two
    means are taken in float64 in torch (the same value whatever the thread count) and in float32 in an
    exported graph (TensorRT has no float64).
    """

    def __init__(self, dit: CogVideoXTransformer3D):
        super().__init__()
        self.config = dit.config
        self.time_embedding = dit.time_embedding

    def embedding(self, timestep: torch.Tensor) -> torch.Tensor:
        """The DiT's timestep embedding [B, time_embed_dim] (its dtype), as its forward computes ``temb``."""
        dtype = self.time_embedding.linear_1.weight.dtype
        return self.time_embedding(timestep_sinusoid(timestep, self.config.inner_dim).to(dtype))

    def forward(self, timestep: torch.Tensor, prev_timestep: torch.Tensor) -> torch.Tensor:
        """Positional as the CogVideoX ``dit_probe`` spec."""
        acc = torch.float32 if _exporting() else torch.float64
        now, prev = self.embedding(timestep).to(acc), self.embedding(prev_timestep).to(acc)
        return ((now - prev).abs().mean(dim=1) / prev.abs().mean(dim=1)).to(torch.float32)
