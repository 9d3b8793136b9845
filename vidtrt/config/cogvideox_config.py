"""CogVideoX model configurations: frozen dataclasses with ``validate()`` (no torch).

Field names are those of the diffusers checkpoint files (``transformer/config.json`` of
``CogVideoXTransformer3DModel``, ``vae/config.json`` of ``AutoencoderKLCogVideoX``,
``scheduler/scheduler_config.json`` of ``CogVideoXDDIMScheduler`` / ``CogVideoXDPMScheduler``), so a
diffusers folder maps onto them without renaming. :class:`CogVideoXModelConfig` has the same surface the
runtime uses of :class:`vidtrt.config.model_config.ModelConfig` (``name``, ``vae``, ``tiling``, ``defaults``,
``fingerprint()``, ``to_dict()`` / ``from_dict()``, ``latent_shape()``), plus the family's own request rules
(:meth:`CogVideoXModelConfig.check_request`).

Variants (facts: ``../shared/reference/cogvideox.md``, diffusers 0.42):

* CogVideoX-2B: 30 heads x 64, 30 layers, fixed 3D sin-cos positions, DDIM, SNR shift 3.0.
* CogVideoX-5B: 48 heads x 64, 42 layers, 3D RoPE, DPM (2nd order), SNR shift 1.0, VAE scale 0.7.
* CogVideoX1.5-5B: as 5B with time patched by 2 (``patch_size_t=2``), 1360x768, 16N+1 frames at 16 fps.

Sources of the preset values (checked 2026-11-30; ``tests/test_cogvideox_presets.py`` pins them):

* ``../shared/reference/cogvideox.md``: widths, depths, positions, default videos, frame rules, fps, CFG 6.
* diffusers 0.42's class defaults: ``CogVideoXTransformer3DModel`` and ``AutoencoderKLCogVideoX`` default to the
  2B (our field defaults equal them), the schedulers' betas, ``num_train_timesteps``, ``snr_shift_scale`` 3.0.
* The upstream converter that writes the published diffusers folders, THUDM/CogVideo
  ``tools/convert_weight_sat2hf.py``: 2B vs 5B ``num_layers`` 30 / 42, ``num_attention_heads`` 30 / 48, RoPE
  off / on, VAE ``scaling_factor`` 1.15258426 / 0.7, ``snr_shift_scale`` 3.0 / 1.0, the scheduler fields
  (scaled-linear 0.00085..0.012, v-prediction, zero-SNR, trailing, ``set_alpha_to_one``); version 1.5:
  ``patch_size_t`` 2, ``patch_bias`` false, ``sample_frames`` 81, VAE ``invert_scale_latents`` true.
* Its SAT configs ``sat/configs/cogvideox_5b.yaml`` / ``cogvideox1.5_5b.yaml``: latent grid 60 x 90 / 300 x 300,
  ``time_embed_dim`` 512, 3072 wide, DPM-Solver++ sampling (``VPSDEDPMPP2MSampler``), shift 1.0. For 1.5 the
  published ``transformer/config.json`` has ``sample_height = sample_width = 300`` like the SAT config (the
  converter's default 96 x 170 is not what was uploaded: diffusers' maintainers confirm 300 for 1.5 in
  huggingface/finetrainers#121): a 150 x 150-token RoPE table that 1.5 slices (``grid_type="slice"``), hence
  the 2400-pixel bound of :meth:`CogVideoXModelConfig.check_request`.
* Open: the 1.5 SAT config encodes 224 T5 tokens (``max_length: 224``); diffusers' pipeline pads every variant
  to its ``max_sequence_length`` default 226 and we follow diffusers (the published 1.5 configs were not
  available to check ``max_text_seq_length``; the DiT does not depend on it without learned positions).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from vidtrt.config.model_config import TilingConfig, _from_dict
from vidtrt.config.step_cache import StepCacheParams
from vidtrt.errors import ConfigError, InvalidRequestError

FAMILY = "cogvideox"
SOLVERS = ("ddim", "dpm")
SCHEDULER_CLASSES = {"CogVideoXDDIMScheduler": "ddim", "CogVideoXDPMScheduler": "dpm"}


@dataclass(frozen=True)
class CogVideoXTransformerConfig:
    """The CogVideoX DiT (``CogVideoXTransformer3DModel`` config names; defaults: CogVideoX-2B)."""

    num_attention_heads: int = 30
    attention_head_dim: int = 64
    in_channels: int = 16
    out_channels: int = 16
    flip_sin_to_cos: bool = True
    freq_shift: int = 0
    time_embed_dim: int = 512
    ofs_embed_dim: int | None = None
    text_embed_dim: int = 4096
    num_layers: int = 30
    dropout: float = 0.0
    attention_bias: bool = True
    sample_width: int = 90
    sample_height: int = 60
    sample_frames: int = 49
    patch_size: int = 2
    patch_size_t: int | None = None
    temporal_compression_ratio: int = 4
    max_text_seq_length: int = 226
    activation_fn: str = "gelu-approximate"
    timestep_activation_fn: str = "silu"
    norm_elementwise_affine: bool = True
    norm_eps: float = 1e-5
    spatial_interpolation_scale: float = 1.875
    temporal_interpolation_scale: float = 1.0
    use_rotary_positional_embeddings: bool = False
    use_learned_positional_embeddings: bool = False
    patch_bias: bool = True

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def validate(self) -> CogVideoXTransformerConfig:
        for name in ("num_attention_heads", "attention_head_dim", "patch_size", "num_layers", "time_embed_dim"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.patch_size_t is not None and self.patch_size_t < 1:
            raise ConfigError(f"patch_size_t must be None or >= 1, got {self.patch_size_t}")
        if self.activation_fn != "gelu-approximate" or self.timestep_activation_fn != "silu":
            raise ConfigError(f"activations {self.activation_fn!r} / {self.timestep_activation_fn!r} are not "
                              "supported; accepted: 'gelu-approximate' / 'silu'")
        if self.use_rotary_positional_embeddings:
            if self.attention_head_dim % 8:
                raise ConfigError(f"3D RoPE needs attention_head_dim divisible by 8, got {self.attention_head_dim}")
        elif self.use_learned_positional_embeddings:
            raise ConfigError("learned positional embeddings without rotary embeddings: no such CogVideoX model")
        elif self.inner_dim % 16:
            raise ConfigError(f"3D sin-cos positions need heads x head_dim divisible by 16, got {self.inner_dim}")
        if self.ofs_embed_dim:
            raise ConfigError(f"ofs_embed_dim={self.ofs_embed_dim} belongs to CogVideoX1.5 image-to-video; "
                              "only text-to-video is supported")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CogVideoXTransformerConfig:
        return _from_dict(cls, data).validate()


@dataclass(frozen=True)
class CogVideoXVAEConfig:
    """The 3D causal VAE (``AutoencoderKLCogVideoX`` config names); only the decoder is built.

    ``spatial_compression_ratio`` = 2 ** (len(block_out_channels) - 1) (8 for the released models), as
    diffusers' pipeline computes it."""

    in_channels: int = 3
    out_channels: int = 3
    block_out_channels: tuple[int, ...] = (128, 256, 256, 512)
    latent_channels: int = 16
    layers_per_block: int = 3
    act_fn: str = "silu"
    norm_eps: float = 1e-6
    norm_num_groups: int = 32
    temporal_compression_ratio: int = 4
    sample_height: int = 480
    sample_width: int = 720
    scaling_factor: float = 1.15258426
    invert_scale_latents: bool = False
    use_post_quant_conv: bool = False

    @property
    def spatial_compression_ratio(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def validate(self) -> CogVideoXVAEConfig:
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(f"block_out_channels {self.block_out_channels} must be multiples of "
                              f"norm_num_groups {self.norm_num_groups}")
        if self.act_fn != "silu":
            raise ConfigError(f"act_fn {self.act_fn!r} is not supported; accepted: 'silu'")
        if self.temporal_compression_ratio not in (1, 2, 4, 8) or self.scaling_factor <= 0:
            raise ConfigError(f"temporal_compression_ratio {self.temporal_compression_ratio} (accepted 1, 2, 4, 8) "
                              f"or scaling_factor {self.scaling_factor} (must be > 0) out of range")
        if 2 ** (len(self.block_out_channels) - 1) < self.temporal_compression_ratio:
            raise ConfigError("temporal_compression_ratio exceeds the number of upsampling blocks")
        if self.use_post_quant_conv:
            raise ConfigError("use_post_quant_conv: no CogVideoX checkpoint has one; not supported")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CogVideoXVAEConfig:
        return _from_dict(cls, data).validate()


@dataclass(frozen=True)
class CogVideoXTextConfig:
    """The T5 prompt encoding: padded / truncated to ``max_sequence_length`` tokens (EOS included)."""

    max_sequence_length: int = 226

    def validate(self) -> CogVideoXTextConfig:
        if self.max_sequence_length < 2:
            raise ConfigError(f"max_sequence_length must be >= 2, got {self.max_sequence_length}")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CogVideoXTextConfig:
        return _from_dict(cls, data).validate()


@dataclass(frozen=True)
class CogVideoXSchedulerConfig:
    """The v-prediction DDIM / DPM schedulers (``scheduler_config.json`` names; ``solver`` from its
    ``_class_name``: 'ddim' = ``CogVideoXDDIMScheduler``, 'dpm' = ``CogVideoXDPMScheduler``)."""

    solver: str = "ddim"
    num_train_timesteps: int = 1000
    beta_start: float = 0.00085
    beta_end: float = 0.012
    beta_schedule: str = "scaled_linear"
    set_alpha_to_one: bool = True
    prediction_type: str = "v_prediction"
    timestep_spacing: str = "trailing"
    rescale_betas_zero_snr: bool = True
    snr_shift_scale: float = 3.0
    steps_offset: int = 0

    def validate(self) -> CogVideoXSchedulerConfig:
        if self.solver not in SOLVERS:
            raise ConfigError(f"scheduler solver {self.solver!r}; accepted {list(SOLVERS)}")
        if self.beta_schedule not in ("scaled_linear", "linear"):
            raise ConfigError(f"beta_schedule {self.beta_schedule!r}; accepted 'scaled_linear', 'linear'")
        if self.prediction_type not in ("v_prediction", "epsilon"):
            raise ConfigError(f"prediction_type {self.prediction_type!r}; accepted 'v_prediction', 'epsilon'")
        if self.timestep_spacing not in ("trailing", "leading", "linspace"):
            raise ConfigError(f"timestep_spacing {self.timestep_spacing!r}; accepted 'trailing', 'leading', 'linspace'")
        if self.num_train_timesteps < 2 or self.snr_shift_scale <= 0:
            raise ConfigError(f"num_train_timesteps {self.num_train_timesteps} (>= 2) or snr_shift_scale "
                              f"{self.snr_shift_scale} (> 0) out of range")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CogVideoXSchedulerConfig:
        data = dict(data)
        if "_class_name" in data and "solver" not in data:
            if data["_class_name"] not in SCHEDULER_CLASSES:
                raise ConfigError(f"scheduler _class_name {data['_class_name']!r}; "
                                  f"accepted {sorted(SCHEDULER_CLASSES)}")
            data["solver"] = SCHEDULER_CLASSES[data["_class_name"]]
        return _from_dict(cls, data).validate()


@dataclass(frozen=True)
class CogVideoXDefaults:
    """Generation defaults and the request limits (CogVideoX-2B / 5B: 720x480, 49 frames, 8 fps).

    The names ``true_cfg_scale`` (classifier-free guidance, diffusers' ``guidance_scale``; 1 = off) and
    ``negative_prompt`` are the runtime's request fields; ``embedded_guidance_scale`` and ``flow_shift`` do
    not apply to CogVideoX (kept so request defaults resolve; a request that sets them is rejected).
    Frames: ``frame_step * N + 1`` in [min_num_frames, max_num_frames]; sizes: multiples of 16 in
    [16, max_*]."""

    height: int = 480
    width: int = 720
    num_frames: int = 49
    num_inference_steps: int = 50
    true_cfg_scale: float = 6.0
    use_dynamic_cfg: bool = False
    seed: int = 0
    fps: int = 8
    frame_step: int = 8
    min_num_frames: int = 1
    max_num_frames: int = 49
    max_height: int = 1360
    max_width: int = 1360
    max_num_inference_steps: int = 1000
    negative_prompt: str = ""
    embedded_guidance_scale: float = 0.0
    flow_shift: float = 1.0
    # Step caching (vidtrt.config.step_cache): off unless a request or the model's vidtrt.json asks for it.
    # The sampler feeds the cache the flow-matching form of the v-prediction (vidtrt.runtime.cogvideox_sampler),
    # so EasyCache's own setting (0.025, 5 of 50 warm-up steps, as HunyuanVideo's) means the same relative
    # change here. TeaCache's public CogVideoX1.5 thresholds (0.1 / 0.2 / 0.3: 1.4x / 1.8x / 2.3x) measure a
    # different quantity (the first block's modulated input, polynomial-rescaled) and do not transfer.
    cache_policy: str = "none"
    cache_threshold: float = 0.025
    cache_warmup_steps: int = 5

    def validate(self) -> CogVideoXDefaults:
        if self.max_height % 16 or self.max_width % 16:
            raise ConfigError("max_height and max_width must be multiples of 16")
        try:
            StepCacheParams(self.cache_policy, self.cache_threshold, self.cache_warmup_steps).validate(
                self.max_num_inference_steps)
        except InvalidRequestError as e:
            raise ConfigError(f"defaults: {e}") from None
        if self.frame_step % 8 or (self.min_num_frames - 1) % self.frame_step or (self.max_num_frames - 1) % 8:
            raise ConfigError(f"frames rule {self.frame_step}N + 1 in [{self.min_num_frames}, {self.max_num_frames}]: "
                              "the step must be a multiple of 8 (odd latent frame counts) and both ends on the rule")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CogVideoXDefaults:
        return _from_dict(cls, data).validate()


def default_tiling() -> TilingConfig:
    """diffusers' CogVideoX tiling for a 720x480 VAE: tiles of half the sample size (240 x 360 pixels),
    overlap factors 1/6 (height) and 1/5 (width), i.e. strides of 200 x 288 pixels. Temporal tiling does not
    apply (the decoder carries its causal conv cache across frame batches inside one tile)."""
    return tiling_for_vae(CogVideoXVAEConfig())


def tiling_for_vae(vae: CogVideoXVAEConfig, overlap_height: float = 1 / 6,
                   overlap_width: float = 1 / 5) -> TilingConfig:
    """The TilingConfig equal to ``AutoencoderKLCogVideoX.enable_tiling()`` for ``vae``'s sample size."""
    s = vae.spatial_compression_ratio
    tile_h, tile_w = vae.sample_height // 2, vae.sample_width // 2
    lat_h, lat_w = int(tile_h / s), int(tile_w / s)
    stride_h = int(lat_h * (1 - overlap_height)) * s
    stride_w = int(lat_w * (1 - overlap_width)) * s
    blend_h, blend_w = int(tile_h * overlap_height), int(tile_w * overlap_width)
    if lat_h * s != tile_h or lat_w * s != tile_w or tile_h - blend_h != stride_h or tile_w - blend_w != stride_w:
        raise ConfigError(f"the CogVideoX VAE sample size {vae.sample_height}x{vae.sample_width} gives a tiling the "
                          "shared tile planner cannot express (tiles must be whole latents and keep = stride)")
    big = 1 << 20  # temporal tiling never triggers
    return TilingConfig(tile_sample_min_height=tile_h, tile_sample_min_width=tile_w,
                        tile_sample_stride_height=stride_h, tile_sample_stride_width=stride_w,
                        tile_sample_min_num_frames=big, tile_sample_stride_num_frames=big)


@dataclass(frozen=True)
class CogVideoXModelConfig:
    """Everything that defines one CogVideoX model."""

    name: str
    transformer: CogVideoXTransformerConfig = field(default_factory=CogVideoXTransformerConfig)
    vae: CogVideoXVAEConfig = field(default_factory=CogVideoXVAEConfig)
    text: CogVideoXTextConfig = field(default_factory=CogVideoXTextConfig)
    scheduler: CogVideoXSchedulerConfig = field(default_factory=CogVideoXSchedulerConfig)
    tiling: TilingConfig = field(default_factory=default_tiling)
    defaults: CogVideoXDefaults = field(default_factory=CogVideoXDefaults)

    family = FAMILY  # class attribute, not a field

    SECTIONS = {"transformer": CogVideoXTransformerConfig, "vae": CogVideoXVAEConfig, "text": CogVideoXTextConfig,
                "scheduler": CogVideoXSchedulerConfig, "tiling": TilingConfig, "defaults": CogVideoXDefaults}

    def validate(self) -> CogVideoXModelConfig:
        for section in self.SECTIONS:
            getattr(self, section).validate()
        t, v = self.transformer, self.vae
        if t.in_channels != v.latent_channels:
            raise ConfigError(f"DiT in_channels {t.in_channels} != VAE latent_channels {v.latent_channels}")
        if t.temporal_compression_ratio != v.temporal_compression_ratio:
            raise ConfigError(f"DiT temporal_compression_ratio {t.temporal_compression_ratio} != VAE's "
                              f"{v.temporal_compression_ratio}")
        if t.max_text_seq_length != self.text.max_sequence_length:
            raise ConfigError(f"DiT max_text_seq_length {t.max_text_seq_length} != text max_sequence_length "
                              f"{self.text.max_sequence_length}")
        multiple = v.spatial_compression_ratio * t.patch_size
        if self.defaults.max_height % multiple or self.defaults.max_width % multiple:
            raise ConfigError(f"max_height / max_width must be multiples of {multiple}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CogVideoXModelConfig:
        unknown = sorted(set(data) - set(cls.SECTIONS) - {"name"})
        missing = sorted(set(cls.SECTIONS) - set(data))
        if unknown or missing or not isinstance(data.get("name"), str):
            raise ConfigError(f"CogVideoX model config dict: sections {sorted(data)}; accepted 'name' and exactly "
                              f"{sorted(cls.SECTIONS)}")
        return cls(name=data["name"], **{k: c.from_dict(data[k]) for k, c in cls.SECTIONS.items()}).validate()

    def fingerprint(self) -> str:
        blob = json.dumps([FAMILY, dataclasses.asdict(self)], sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    def latent_frames(self, num_frames: int) -> tuple[int, int]:
        """(latent frames the DiT samples, leading frames dropped before decoding): 1.5's temporal patch
        pads the latent frame count up to a multiple of ``patch_size_t`` (diffusers' ``additional_frames``)."""
        t = (num_frames - 1) // self.vae.temporal_compression_ratio + 1
        p_t = self.transformer.patch_size_t
        extra = (p_t - t % p_t) if p_t and t % p_t else 0
        return t + extra, extra

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Latents the decoder gets [B, C, T', H/8, W/8] (T' without 1.5's padding frames)."""
        t = (num_frames - 1) // self.vae.temporal_compression_ratio + 1
        s = self.vae.spatial_compression_ratio
        return (batch, self.latent_channels, t, height // s, width // s)

    def check_request(self, r) -> None:
        """The family's own request rules, after the shared ones (:meth:`GenerationRequest.validate`):
        sizes multiples of 16 (1.5 RoPE: at most the DiT's sample grid), no HunyuanVideo-only settings.
        InvalidRequestError naming the parameter and the accepted values."""
        d, t = self.defaults, self.transformer
        multiple = self.vae.spatial_compression_ratio * t.patch_size
        limits = {"height": d.max_height, "width": d.max_width}
        s = self.vae.spatial_compression_ratio
        if t.use_learned_positional_embeddings:
            limits = {"height": t.sample_height * s, "width": t.sample_width * s}
        elif t.use_rotary_positional_embeddings and t.patch_size_t:  # 1.5's RoPE grid: at most the sample grid
            limits = {"height": min(d.max_height, t.sample_height * s // multiple * multiple),
                      "width": min(d.max_width, t.sample_width * s // multiple * multiple)}
        for name, high in limits.items():
            value = getattr(r, name)
            if t.use_learned_positional_embeddings and value != high:
                raise InvalidRequestError(name, value, f"exactly {high} (learned positional embeddings)")
            if value % multiple or not multiple <= value <= high:
                raise InvalidRequestError(name, value, f"an integer in [{multiple}, {high}] that is a multiple of "
                                          f"{multiple}")
        if r.embedded_guidance_scale != d.embedded_guidance_scale:
            raise InvalidRequestError("embedded_guidance_scale", r.embedded_guidance_scale,
                                      "unset: CogVideoX has no embedded guidance (use the CFG scale, true_cfg_scale)")
        if r.flow_shift != d.flow_shift:
            raise InvalidRequestError("flow_shift", r.flow_shift,
                                      "unset: CogVideoX samples with its DDIM / DPM scheduler, not flow matching")


# ------------------------------------------------------------------------------------------------ presets
TINY_T5_HIDDEN = 32


def cogvideox_2b_config() -> CogVideoXModelConfig:
    """THUDM/CogVideoX-2b: 30 x 64 heads, 30 layers, 3D sin-cos positions, DDIM (SNR shift 3)."""
    return CogVideoXModelConfig(name="cogvideox-2b").validate()


def cogvideox_5b_config() -> CogVideoXModelConfig:
    """THUDM/CogVideoX-5b: 48 x 64 heads, 42 layers, 3D RoPE, DPM (SNR shift 1), VAE scale 0.7."""
    return CogVideoXModelConfig(
        name="cogvideox-5b",
        transformer=CogVideoXTransformerConfig(num_attention_heads=48, num_layers=42,
                                               use_rotary_positional_embeddings=True),
        vae=CogVideoXVAEConfig(scaling_factor=0.7),
        scheduler=CogVideoXSchedulerConfig(solver="dpm", snr_shift_scale=1.0),
    ).validate()


def cogvideox15_5b_config() -> CogVideoXModelConfig:
    """THUDM/CogVideoX1.5-5B: as 5B with time patched by 2, 1360x768 (and other sizes), 16N + 1 frames
    (N in [3, 10]) at 16 fps; RoPE on an integer grid of at most 150 x 150 tokens."""
    return CogVideoXModelConfig(
        name="cogvideox1.5-5b",
        transformer=CogVideoXTransformerConfig(num_attention_heads=48, num_layers=42, sample_height=300,
                                               sample_width=300, sample_frames=81, patch_size_t=2, patch_bias=False,
                                               use_rotary_positional_embeddings=True),
        vae=CogVideoXVAEConfig(scaling_factor=0.7, invert_scale_latents=True),
        scheduler=CogVideoXSchedulerConfig(solver="dpm", snr_shift_scale=1.0),
        defaults=CogVideoXDefaults(height=768, width=1360, num_frames=81, fps=16, frame_step=16, min_num_frames=49,
                                   max_num_frames=161, max_height=1360, max_width=1360),
    ).validate()


def tiny_cogvideox_config() -> CogVideoXModelConfig:
    """CogVideoX-5B architecture (3D RoPE, DPM) at toy width: the whole path runs on a CPU in seconds.
    Small VAE tiles (32 x 64 pixels, overlap 1/4) so the default 64 x 96 video exercises the tiled decode."""
    vae = CogVideoXVAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4,
                             sample_height=64, sample_width=128, scaling_factor=0.7)
    return CogVideoXModelConfig(
        name="tiny-cogvideox",
        transformer=CogVideoXTransformerConfig(num_attention_heads=2, attention_head_dim=16, num_layers=2,
                                               time_embed_dim=32, text_embed_dim=TINY_T5_HIDDEN, sample_height=8,
                                               sample_width=12, sample_frames=9, max_text_seq_length=32,
                                               use_rotary_positional_embeddings=True),
        vae=vae,
        text=CogVideoXTextConfig(max_sequence_length=32),
        scheduler=CogVideoXSchedulerConfig(solver="dpm", snr_shift_scale=1.0),
        tiling=tiling_for_vae(vae, 0.25, 0.25),
        defaults=CogVideoXDefaults(height=64, width=96, num_frames=9, num_inference_steps=4, frame_step=8,
                                   min_num_frames=1, max_num_frames=33, max_height=256, max_width=256),
    ).validate()


COGVIDEOX_PRESETS = {"cogvideox-2b": cogvideox_2b_config, "cogvideox-5b": cogvideox_5b_config,
                     "cogvideox1.5-5b": cogvideox15_5b_config, "tiny-cogvideox": tiny_cogvideox_config}
