"""Flow-matching Euler sampler (HunyuanVideo's ``flow_reverse`` schedule).

The arithmetic follows diffusers' ``FlowMatchEulerDiscreteScheduler`` step for step (float32 numpy
shift, float32 torch update) so a seed reproduces the reference's latents bit for bit in fp32.
"""

from __future__ import annotations

import numpy as np
import torch

NUM_TRAIN_TIMESTEPS = 1000


def flow_match_sigmas(num_inference_steps: int, shift: float) -> torch.Tensor:
    """Shifted noise levels from 1 down to 0: float32 [N + 1], last entry exactly 0.

    sigma_i = linspace(1, 0, N + 1)[i], shifted as s * sigma / (1 + (s - 1) * sigma).
    """
    sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1].astype(np.float32)
    sigmas = shift * sigmas / (1 + (shift - 1) * sigmas)
    sigmas = torch.from_numpy(np.asarray(sigmas, dtype=np.float32)).to(torch.float32)
    return torch.cat([sigmas, torch.zeros(1, dtype=torch.float32)])


def timesteps_from_sigmas(sigmas: torch.Tensor) -> torch.Tensor:
    """The DiT's timestep input for each step: 1000 * sigma, float32 [N]."""
    return sigmas[:-1] * NUM_TRAIN_TIMESTEPS


def euler_step(latents: torch.Tensor, velocity: torch.Tensor, sigma: torch.Tensor, sigma_next: torch.Tensor):
    """x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v, computed in float32."""
    dt = sigma_next - sigma
    return latents.to(torch.float32) + dt * velocity.to(torch.float32)


def initial_noise(shape: tuple[int, ...], seed: int) -> torch.Tensor:
    """N(0, I) float32 noise from a CPU generator seeded with ``seed`` (diffusers' seed semantics)."""
    generator = torch.Generator(device="cpu").manual_seed(seed)
    return torch.randn(shape, generator=generator, dtype=torch.float32)
