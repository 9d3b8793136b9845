"""CogVideoX's v-prediction samplers: DDIM (CogVideoX-2B) and the 2nd-order DPM-Solver++ SDE step
(CogVideoX-5B, 1.5), with trailing timestep spacing, the SNR shift and zero-terminal-SNR betas.

The arithmetic follows diffusers' ``CogVideoXDDIMScheduler`` / ``CogVideoXDPMScheduler`` term by term
(float64 ``alphas_cumprod``, the same 0-dim tensor products with float32 latents, the DPM step's fresh
Gaussian noise drawn from the generator that drew the initial latents), so a seed reproduces the
reference's latents.

Noise schedule: betas ``linspace(sqrt(beta_start), sqrt(beta_end), T) ** 2`` (float64), alpha_bar their
cumulative product, SNR-shifted ``a / (s + (1 - s) a)``, then rescaled to zero terminal SNR.
Timesteps (trailing): ``round(arange(T, 0, -T / N)) - 1``; each step goes to ``t - T // N``.
"""

from __future__ import annotations

import numpy as np
import torch

from vidtrt.config.cogvideox_config import CogVideoXSchedulerConfig


def alphas_cumprod(config: CogVideoXSchedulerConfig) -> torch.Tensor:
    """The shifted (and zero-terminal-SNR rescaled) alpha_bar: float64 [num_train_timesteps]
    (float32 for the 'linear' schedule, as diffusers)."""
    n = config.num_train_timesteps
    if config.beta_schedule == "scaled_linear":
        betas = torch.linspace(config.beta_start**0.5, config.beta_end**0.5, n, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(config.beta_start, config.beta_end, n, dtype=torch.float32)
    ac = torch.cumprod(1.0 - betas, dim=0)
    s = config.snr_shift_scale
    ac = ac / (s + (1 - s) * ac)
    if config.rescale_betas_zero_snr:
        root = ac.sqrt()
        first, last = root[0].clone(), root[-1].clone()
        root -= last
        root *= first / (first - last)
        ac = root**2
    return ac


def inference_timesteps(config: CogVideoXSchedulerConfig, num_inference_steps: int) -> torch.Tensor:
    """The integer timesteps of ``num_inference_steps`` steps, descending: int64 [N]."""
    n, steps = config.num_train_timesteps, num_inference_steps
    if steps > n:
        raise ValueError(f"num_inference_steps {steps} exceeds num_train_timesteps {n}")
    if config.timestep_spacing == "trailing":
        ts = np.round(np.arange(n, 0, -n / steps)).astype(np.int64) - 1
    elif config.timestep_spacing == "leading":
        ts = (np.arange(0, steps) * (n // steps)).round()[::-1].copy().astype(np.int64) + config.steps_offset
    else:
        ts = np.linspace(0, n - 1, steps).round()[::-1].copy().astype(np.int64)
    return torch.from_numpy(ts)


class CogVideoXSampler:
    """One generation's scheduler state.

    >>> s = CogVideoXSampler(config, 50)
    >>> for i, t in enumerate(s.timesteps): latents = s.step(v_pred, i, latents, generator)
    """

    def __init__(self, config: CogVideoXSchedulerConfig, num_inference_steps: int):
        self.config = config
        self.num_inference_steps = num_inference_steps
        self.alphas_cumprod = alphas_cumprod(config)
        self.final_alpha_cumprod = torch.tensor(1.0) if config.set_alpha_to_one else self.alphas_cumprod[0]
        self.timesteps = inference_timesteps(config, num_inference_steps)
        self._old_x0: torch.Tensor | None = None

    def _path(self, i: int) -> tuple[float, float]:
        ac = float(self.alphas_cumprod[int(self.timesteps[i])])
        return ac**0.5, (1.0 - ac) ** 0.5

    def flow_input(self, i: int, sample: torch.Tensor) -> torch.Tensor:
        """``sample`` x_t = a x0 + b eps (a = sqrt(alpha_bar), b = sqrt(1 - alpha_bar) at ``timesteps[i]``) as
        the point of the flow-matching path x = (1 - s) x0 + s eps, s = b / (a + b): x_t / (a + b)
        (a + b >= 1, also at zero terminal SNR where a = 0)."""
        a, b = self._path(i)
        return sample / (a + b)

    def flow_velocity(self, model_output: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        """The model output at ``timesteps[i]`` as the flow-matching velocity eps - x0:
        (a + b) v + (b - a) x_t for v-prediction, ((a + b) eps - x_t) / a for epsilon prediction."""
        a, b = self._path(i)
        if self.config.prediction_type == "v_prediction":
            return (a + b) * model_output + (b - a) * sample
        return ((a + b) * model_output - sample) / a

    def model_output(self, flow_velocity: torch.Tensor, i: int, sample: torch.Tensor) -> torch.Tensor:
        """The inverse of :meth:`flow_velocity`: the model output (v or eps) that velocity stands for."""
        a, b = self._path(i)
        if self.config.prediction_type == "v_prediction":
            return (flow_velocity - (b - a) * sample) / (a + b)
        return (a * flow_velocity + sample) / (a + b)

    def _alpha(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[t] if t >= 0 else self.final_alpha_cumprod

    def _x0(self, model_output: torch.Tensor, sample: torch.Tensor, a_t: torch.Tensor) -> torch.Tensor:
        beta = 1 - a_t
        if self.config.prediction_type == "v_prediction":
            return a_t**0.5 * sample - beta**0.5 * model_output
        return (sample - beta**0.5 * model_output) / a_t**0.5

    def step(self, model_output: torch.Tensor, i: int, sample: torch.Tensor,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Latents after step ``i`` (0-based) given the guided model output at ``timesteps[i]``: float32.
        The DPM solver draws one (first step, last step) or two Gaussian samples from ``generator``."""
        t = int(self.timesteps[i])
        prev_t = t - self.config.num_train_timesteps // self.num_inference_steps
        a_t, a_prev = self.alphas_cumprod[t], self._alpha(prev_t)
        x0 = self._x0(model_output, sample, a_t)
        if self.config.solver == "ddim":
            a = ((1 - a_prev) / (1 - a_t)) ** 0.5
            b = a_prev**0.5 - a_t**0.5 * a
            return a * sample + b * x0

        back = int(self.timesteps[i - 1]) if i > 0 else None
        lamb = ((a_t / (1 - a_t)) ** 0.5).log()
        h = ((a_prev / (1 - a_prev)) ** 0.5).log() - lamb
        mult1 = ((1 - a_prev) / (1 - a_t)) ** 0.5 * (-h).exp()
        mult2 = (-2 * h).expm1() * a_prev**0.5
        mult_noise = (1 - a_prev) ** 0.5 * (1 - (-2 * h).exp()) ** 0.5
        noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        prev = mult1 * sample - mult2 * x0 + mult_noise * noise
        old, self._old_x0 = self._old_x0, x0
        if old is None or prev_t < 0 or back is None:
            return prev
        a_back = self.alphas_cumprod[back]
        r = (lamb - ((a_back / (1 - a_back)) ** 0.5).log()) / h
        mult3, mult4 = 1 + 1 / (2 * r), 1 / (2 * r)
        denoised = mult3 * x0 - mult4 * old
        noise = torch.randn(sample.shape, generator=generator, device=sample.device, dtype=sample.dtype)
        return mult1 * sample - mult2 * denoised + mult_noise * noise


def dynamic_cfg_scale(scale: float, timestep: int, num_inference_steps: int) -> float:
    """diffusers' ``use_dynamic_cfg`` schedule: 1 + scale (1 - cos(pi ((N - t) / N) ** 5)) / 2, with t the
    integer timestep (not the step index), as ``CogVideoXPipeline`` computes it."""
    import math

    n = num_inference_steps
    return 1 + scale * ((1 - math.cos(math.pi * ((n - timestep) / n) ** 5.0)) / 2)
