"""CogVideoX components on engines (torch or the exported ONNX in onnxruntime).

- :class:`CogVideoXEngineDenoiser`: the ``dit`` engine as a Denoiser (latents, integer timesteps as float32,
  T5 states; no mask, no pooled output: the spec of :func:`vidtrt.config.cogvideox_specs.dit_spec`).
- :class:`FrameBatchTileDecoder`: the ``vae_decoder_tile`` contract (one spatial tile with all its latent
  frames in, video out) on the ``vae_decoder_batch`` engine: it walks diffusers' frame batches
  (:func:`~vidtrt.config.cogvideox_specs.frame_batches`), feeding each batch's conv caches to the next, so the
  orchestrator and the Triton repository see the same component whatever runs it.

The text encoder (T5) stays the torch module for every engine: it is not exported.
"""

from __future__ import annotations

import numpy as np
import torch

from vidtrt.config.cogvideox_specs import frame_batches
from vidtrt.config.components import TextEmbeddings
from vidtrt.config.specs import ComponentSpec
from vidtrt.errors import EngineError
from vidtrt.runtime.engines import Engine


class CogVideoXEngineDenoiser:
    """The CogVideoX DiT engine as a :class:`~vidtrt.config.components.Denoiser` (``run(feeds)`` for Triton).

    ``__call__(latents [B, F, C, h, w], timestep [B] (integers), text, guidance)``: the guidance slot is unused
    (CFG is batched by the sampler); returns the v-prediction, float32 on CPU."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.spec = engine.spec

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.run(feeds)

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, text: TextEmbeddings,
                 guidance: torch.Tensor | None = None) -> torch.Tensor:
        f32 = lambda t: np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())  # noqa: E731
        feeds = {"hidden_states": f32(latents), "encoder_hidden_states": f32(text.prompt_embeds),
                 "timestep": f32(timestep)}
        return torch.from_numpy(self.run(feeds)["velocity"])


class FrameBatchTileDecoder:
    """``vae_decoder_tile`` (``spec``) on a ``vae_decoder_batch`` engine (``batch_engine``).

    ``run({"latents": [1, C, t, h, w]})`` -> ``{"video": [1, 3, F, 8 h, 8 w]}`` with F = 4 (t - 1) + 1 for odd t
    (4 t for even t), equal to :class:`~vidtrt.models.cogvideox_vae.CogVideoXVAEDecoder` on the tile: one engine
    call per frame batch, the first with ``first`` set and zero caches, the others with the previous call's
    caches. The zero caches of each tile size are made once and kept (np.zeros: pages only read stay the
    kernel's zero page). The caches travel through host memory between batches."""

    def __init__(self, batch_engine: Engine, spec: ComponentSpec):
        self.engine, self.spec = batch_engine, spec
        bspec = batch_engine.spec
        self.cache_in = [t for t in bspec.inputs if t.name.startswith("cache_in_")]
        self.cache_out = [t.name.replace("cache_in_", "cache_out_") for t in self.cache_in]
        missing = [n for n in self.cache_out if n not in bspec.output_names]
        if missing or "first" not in bspec.input_names:
            raise EngineError(f"{bspec.name}: not a frame-batch decoder spec (needs 'first' and cache_in_i -> "
                              "cache_out_i)")
        self._zeros: dict[tuple[int, int], dict[str, np.ndarray]] = {}

    def _zero_caches(self, h: int, w: int) -> dict[str, np.ndarray]:
        if (h, w) not in self._zeros:
            axes = self.engine.spec.full_axes({"latent_height": h, "latent_width": w})
            self._zeros[(h, w)] = {t.name: np.zeros(t.dims(axes), np.float32) for t in self.cache_in}
        return self._zeros[(h, w)]

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.spec.check_inputs(feeds)
        z = np.ascontiguousarray(feeds["latents"], dtype=np.float32)
        caches = self._zero_caches(*z.shape[-2:])
        videos = []
        for i, (start, stop) in enumerate(frame_batches(z.shape[2])):
            out = self.engine.run({"latents": np.ascontiguousarray(z[:, :, start:stop]),
                                   "first": np.array([i == 0]), **caches})
            videos.append(out["video"])
            caches = {t.name: out[o] for t, o in zip(self.cache_in, self.cache_out, strict=True)}
        return {"video": videos[0] if len(videos) == 1 else np.concatenate(videos, axis=2)}
