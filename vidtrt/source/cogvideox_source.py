"""CogVideoX checkpoint folders (diffusers layout) -> :class:`CogVideoXModelConfig`, read once.

``transformer/config.json`` (``CogVideoXTransformer3DModel``), ``vae/config.json``
(``AutoencoderKLCogVideoX``) and ``scheduler/scheduler_config.json`` (``CogVideoXDDIMScheduler`` or
``CogVideoXDPMScheduler``) as they are; the request defaults and limits are 2B / 5B's, or 1.5's when the
DiT patches time; the VAE tiling is diffusers' ``enable_tiling()`` for the VAE's sample size; an optional
``vidtrt.json`` overrides the text / tiling / defaults sections and the name. Weights load through the
shared loaders of :mod:`vidtrt.source.checkpoints` (strict: a missing, unexpected or mis-shaped key names
the key and its file).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from vidtrt.config.cogvideox_config import (
    CogVideoXModelConfig,
    CogVideoXSchedulerConfig,
    CogVideoXTextConfig,
    CogVideoXTransformerConfig,
    CogVideoXVAEConfig,
    cogvideox15_5b_config,
    cogvideox_2b_config,
    tiling_for_vae,
)
from vidtrt.config.model_config import VIDTRT_JSON
from vidtrt.errors import CheckpointError, ConfigError
from vidtrt.source.checkpoints import _apply_overrides, _read_json


def read_cogvideox_config(folder: Path, name: str) -> CogVideoXModelConfig:
    """The config of the CogVideoX checkpoint ``folder`` (diffusers layout), named ``name``.
    CheckpointError naming the file for a missing / invalid config or an unsupported setting."""
    folder = Path(folder)
    try:
        dit = CogVideoXTransformerConfig.from_dict(_read_json(folder / "transformer" / "config.json"))
        vae = CogVideoXVAEConfig.from_dict(_read_json(folder / "vae" / "config.json"))
        sched_file = folder / "scheduler" / "scheduler_config.json"
        sched = CogVideoXSchedulerConfig.from_dict(_read_json(sched_file)) if sched_file.exists() else None
    except ConfigError as e:
        raise CheckpointError(f"{folder}: {e}") from None
    base = cogvideox15_5b_config() if dit.patch_size_t else cogvideox_2b_config()
    try:
        tiling = tiling_for_vae(vae)
    except ConfigError:
        tiling = base.tiling
    config = dataclasses.replace(
        base, name=name, transformer=dit, vae=vae, tiling=tiling,
        text=CogVideoXTextConfig(max_sequence_length=dit.max_text_seq_length),
        scheduler=sched or base.scheduler)
    overrides = folder / VIDTRT_JSON
    try:
        if overrides.exists():
            config = _apply_overrides(config, _read_json(overrides))
        return config.validate()
    except ConfigError as e:
        raise CheckpointError(f"{folder}: {e}") from None
