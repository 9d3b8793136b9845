"""The DiT probe (TeaCache's signal) as a :class:`~vidtrt.config.components.DitProbe`, on any engine.

- :class:`TorchDitProbe`: :class:`~vidtrt.models.dit_probe.HunyuanVideoDiTProbe` built on the DiT module the
  denoiser runs (the same parameters, no copy), in its dtype and on its device;
- :class:`TorchCogVideoXProbe`: the same for a CogVideoX DiT
  (:class:`~vidtrt.models.cogvideox_probe.CogVideoXDiTProbe`: timesteps only);
- :class:`EngineDitProbe`: an engine of spec ``dit_probe`` (onnxruntime, the torch engine, or TensorRT
  through Triton), ``run(feeds)`` on numpy for a Triton component model.

Both return float32 [B] on the CPU.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from vidtrt.models.cogvideox_probe import CogVideoXDiTProbe
from vidtrt.models.cogvideox_transformer import CogVideoXTransformer3D
from vidtrt.models.dit_probe import HunyuanVideoDiTProbe
from vidtrt.models.transformer import HunyuanVideoTransformer3D


class TorchDitProbe:
    """The probe module on ``device``; inputs cast as :class:`~vidtrt.runtime.pipeline.TorchDenoiser` casts
    the DiT's (timesteps stay float32), so both see the same numbers."""

    def __init__(self, module: HunyuanVideoDiTProbe, device: str | torch.device = "cpu", kernels=None):
        self.module = module.eval()
        self.device = torch.device(device)
        self.dtype = next(module.parameters()).dtype
        self.kernels = kernels

    @torch.inference_mode()
    def __call__(self, latents, timestep, prev_latents, prev_timestep, pooled, guidance) -> torch.Tensor:
        d, dt = self.device, self.dtype
        args = [latents.to(d, dt), timestep.to(d, torch.float32), pooled.to(d, dt)]
        if self.module.guidance_embeds:
            args.append(guidance.to(d, dt))
        args += [prev_latents.to(d, dt), prev_timestep.to(d, torch.float32)]
        with self.kernels.active() if self.kernels is not None else contextlib.nullcontext():
            return self.module(*args).to("cpu", torch.float32)


class TorchCogVideoXProbe:
    """:class:`~vidtrt.models.cogvideox_probe.CogVideoXDiTProbe` on ``device`` as a DitProbe: reads the two
    timesteps only (as float32, what the wire carries; the DiT's timesteps are integers); the latents, pooled
    and guidance slots of the protocol are ignored (TeaCache4CogVideoX's indicator is the timestep embedding)."""

    def __init__(self, module: CogVideoXDiTProbe, device: str | torch.device = "cpu"):
        self.module = module.eval()
        self.device = torch.device(device)

    @torch.inference_mode()
    def __call__(self, latents, timestep, prev_latents, prev_timestep, pooled=None, guidance=None) -> torch.Tensor:
        f32 = lambda t: t.reshape(-1).to(self.device, torch.float32)  # noqa: E731
        return self.module(f32(timestep), f32(prev_timestep)).to("cpu", torch.float32)


def probe_of(denoiser) -> TorchDitProbe | TorchCogVideoXProbe | None:
    """The probe sharing the DiT module of a torch ``denoiser`` (``.module`` a HunyuanVideo or CogVideoX DiT),
    else None (a DiT in other processes: sequence parallelism)."""
    module = getattr(denoiser, "module", None)
    if isinstance(module, CogVideoXTransformer3D):
        return TorchCogVideoXProbe(CogVideoXDiTProbe(module), getattr(denoiser, "device", "cpu"))
    if not isinstance(module, HunyuanVideoTransformer3D):
        return None
    return TorchDitProbe(HunyuanVideoDiTProbe(module), getattr(denoiser, "device", "cpu"),
                         getattr(denoiser, "kernels", None))


class EngineDitProbe:
    """An engine of spec ``dit_probe`` as a DitProbe; ``run(feeds)`` passes numpy feeds through (Triton)."""

    def __init__(self, engine):
        self.engine = engine
        self.spec = engine.spec
        self.has_guidance = "guidance" in self.spec.input_names

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.run(feeds)

    def __call__(self, latents, timestep, prev_latents, prev_timestep, pooled=None, guidance=None) -> torch.Tensor:
        """Feeds the spec's inputs only (HunyuanVideo: latents, timesteps, pooled, [guidance]; CogVideoX: the two
        timesteps)."""
        f32 = lambda t: np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())  # noqa: E731
        values = {"hidden_states": latents, "timestep": timestep.reshape(-1), "pooled_projections": pooled,
                  "prev_hidden_states": prev_latents, "prev_timestep": prev_timestep.reshape(-1),
                  "guidance": None if guidance is None else guidance.reshape(-1)}
        feeds = {k: f32(values[k]) for k in self.spec.input_names}
        return torch.from_numpy(np.asarray(self.run(feeds)["rel_l1"], dtype=np.float32))
