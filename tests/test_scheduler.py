"""The sampler against diffusers' FlowMatchEulerDiscreteScheduler (the reference)."""

import numpy as np
import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler

from vidtrt.runtime.scheduler import euler_step, flow_match_sigmas, initial_noise, timesteps_from_sigmas


@pytest.mark.parametrize("steps,shift", [(50, 7.0), (30, 17.0), (1, 7.0), (7, 1.0), (13, 3.5)])
def test_sigmas_and_timesteps_equal_diffusers(steps, shift):
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1], device="cpu")
    sigmas = flow_match_sigmas(steps, shift)
    assert torch.equal(sigmas, ref.sigmas)
    assert torch.equal(timesteps_from_sigmas(sigmas), ref.timesteps)
    assert sigmas[0] == 1.0 and sigmas[-1] == 0.0
    assert torch.all(sigmas[1:] < sigmas[:-1])


def test_shift_spends_more_steps_at_high_noise():
    assert flow_match_sigmas(10, 7.0)[5] > flow_match_sigmas(10, 1.0)[5]


def test_euler_step_equals_diffusers_step():
    steps, shift = 6, 7.0
    ref = FlowMatchEulerDiscreteScheduler(shift=shift)
    ref.set_timesteps(sigmas=np.linspace(1.0, 0.0, steps + 1)[:-1], device="cpu")
    sigmas = flow_match_sigmas(steps, shift)
    g = torch.Generator().manual_seed(3)
    x_ref = x = torch.randn(2, 4, 3, 5, 6, generator=g)
    for i, t in enumerate(ref.timesteps):
        v = torch.randn(x.shape, generator=g)
        x_ref = ref.step(v, t, x_ref, return_dict=False)[0]
        x = euler_step(x, v, sigmas[i], sigmas[i + 1])
        assert torch.equal(x, x_ref), i


def test_noise_is_diffusers_seed_semantics():
    from diffusers.utils.torch_utils import randn_tensor

    shape = (1, 16, 3, 8, 12)
    for seed in (0, 1, 2**40 + 7):
        ref = randn_tensor(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32)
        assert torch.equal(initial_noise(shape, seed), ref)
    assert not torch.equal(initial_noise(shape, 0), initial_noise(shape, 1))
