"""Model families: the one place that says what a family is made of.

A family is an architecture the runtime can serve (HunyuanVideo today; CogVideoX is next). Everything
that differs between families is named here, as data, so a second family is one more
:class:`ModelFamily` plus its modules, not edits scattered over the runtime:

- which checkpoints belong to it (the diffusers ``model_index.json`` ``_class_name``), its presets
  and its default config (which also holds its request limits: ``SamplerDefaults.max_*``);
- its networks, text encoder and scheduler, as ``"module:attribute"`` paths imported on first use
  (this module stays import-light: no torch);
- the components a Triton repository serves, and their Triton model names.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from vidtrt.config.cogvideox_config import COGVIDEOX_PRESETS, cogvideox_5b_config
from vidtrt.config.model_config import PRESETS, ModelConfig, hunyuan_video_config
from vidtrt.errors import ConfigError

TRITON_COMPONENTS = ("text_encoder", "dit", "vae_decoder")


@dataclass(frozen=True)
class ModelFamily:
    """One architecture family.

    ``name``: the Triton model-name prefix and template folder (``hunyuan_video`` ->
    ``hunyuan_video``, ``hunyuan_video_sync``, ``hunyuan_video_dit``, ...). ``pipeline_classes``: the
    ``model_index.json`` ``_class_name`` values of its checkpoints. ``transformer`` / ``vae_decoder`` /
    ``text_encoder`` / ``scheduler``: ``"module:attribute"`` of what builds them (the scheduler: its sigmas).
    """

    name: str
    pipeline_classes: tuple[str, ...]
    default_config: Callable[[], ModelConfig]
    presets: Mapping[str, Callable[[], ModelConfig]]
    transformer: str
    vae_decoder: str
    text_encoder: str
    scheduler: str
    components: tuple[str, ...] = field(default=TRITON_COMPONENTS)
    # Its config class (``from_dict``), what reads a checkpoint folder's config (``(folder, name) -> config``)
    # and its sampling loop (:func:`vidtrt.runtime.orchestrator.denoise`'s signature), as "module:attribute".
    config_type: str = "vidtrt.config.model_config:ModelConfig"
    config_reader: str = "vidtrt.source.checkpoints:read_model_config"
    sampler: str = "vidtrt.runtime.orchestrator:denoise"
    torch_denoiser: str = "vidtrt.runtime.pipeline:TorchDenoiser"  # the DiT module as a Denoiser
    # The fnmatch patterns of DiT Linear layers that stay bf16 under --precision fp8 (vidtrt.models.fp8_linear).
    fp8_keep_bf16: str = "vidtrt.models.fp8_linear:DEFAULT_KEEP_BF16"

    def load(self, what: str):
        """The class named by field ``what`` ("transformer", "vae_decoder", ...), imported now."""
        module, _, attr = getattr(self, what).partition(":")
        return getattr(importlib.import_module(module), attr)

    # Triton model names ------------------------------------------------------------------------
    @property
    def stream_model(self) -> str:
        """The decoupled (streaming) generation model."""
        return self.name

    @property
    def sync_model(self) -> str:
        """The non-streaming generation model (HTTP /infer)."""
        return f"{self.name}_sync"

    def component_model(self, key: str) -> str:
        """The Triton model serving component ``key`` (one of :attr:`components`)."""
        if key not in self.components:
            raise ConfigError(f"unknown component {key!r} of family {self.name!r}; accepted {list(self.components)}")
        return f"{self.name}_{key}"

    def triton_models(self, sync: bool = True) -> list[str]:
        """Every model a repository of this family holds (generation models first)."""
        names = [self.stream_model] + ([self.sync_model] if sync else [])
        return names + [self.component_model(k) for k in self.components]


HUNYUAN_VIDEO = ModelFamily(
    name="hunyuan_video",
    pipeline_classes=("HunyuanVideoPipeline",),
    default_config=hunyuan_video_config,
    presets=PRESETS,
    transformer="vidtrt.models.transformer:HunyuanVideoTransformer3D",
    vae_decoder="vidtrt.models.vae:HunyuanVideoVAEDecoder",
    text_encoder="vidtrt.models.text_encoders:HunyuanTextEncoder",
    scheduler="vidtrt.runtime.scheduler:flow_match_sigmas",
    components=(*TRITON_COMPONENTS, "dit_probe"),  # the probe is optional: see vidtrt.export.repository
)

COGVIDEOX = ModelFamily(
    name="cogvideox",
    pipeline_classes=("CogVideoXPipeline",),
    default_config=cogvideox_5b_config,
    presets=COGVIDEOX_PRESETS,
    transformer="vidtrt.models.cogvideox_transformer:CogVideoXTransformer3D",
    vae_decoder="vidtrt.models.cogvideox_vae:CogVideoXVAEDecoder",
    text_encoder="vidtrt.models.cogvideox_text:T5TextEncoder",
    scheduler="vidtrt.runtime.cogvideox_scheduler:CogVideoXSampler",
    config_type="vidtrt.config.cogvideox_config:CogVideoXModelConfig",
    config_reader="vidtrt.source.cogvideox_source:read_cogvideox_config",
    sampler="vidtrt.runtime.cogvideox_sampler:denoise",
    torch_denoiser="vidtrt.runtime.cogvideox_pipeline:CogVideoXTorchDenoiser",
    fp8_keep_bf16="vidtrt.models.fp8_linear:COGVIDEOX_KEEP_BF16",
    components=(*TRITON_COMPONENTS, "dit_probe"),  # the probe is optional: see vidtrt.export.repository
)

FAMILIES: dict[str, ModelFamily] = {HUNYUAN_VIDEO.name: HUNYUAN_VIDEO, COGVIDEOX.name: COGVIDEOX}


def family_of_config(config) -> ModelFamily:
    """The family a resolved config belongs to (CogVideoX configs say so; others are HunyuanVideo)."""
    return FAMILIES[getattr(config, "family", HUNYUAN_VIDEO.name)]


def family_for_pipeline_class(class_name: str, where: str = "model_index.json") -> ModelFamily:
    """The family whose checkpoints declare ``_class_name`` = ``class_name``; ConfigError naming the
    supported classes otherwise (e.g. a CogVideoX or Stable Diffusion folder)."""
    for family in FAMILIES.values():
        if class_name in family.pipeline_classes:
            return family
    supported = [c for f in FAMILIES.values() for c in f.pipeline_classes]
    raise ConfigError(f"{where}: _class_name {class_name!r} is not a supported pipeline; accepted {supported}")


def family(name: str) -> ModelFamily:
    """A family by name; ConfigError naming the accepted ones."""
    if name not in FAMILIES:
        raise ConfigError(f"unknown model family {name!r}; accepted {sorted(FAMILIES)}")
    return FAMILIES[name]
