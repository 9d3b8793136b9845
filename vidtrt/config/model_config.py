"""Model configurations as frozen dataclasses with ``validate()``.

Field names follow the ``config.json`` files of the diffusers checkpoint layout, so a
diffusers folder's configs map onto these without renaming (``from_dict`` ignores keys
such as ``_class_name`` that are bookkeeping, not architecture). Frozen: a resolved config is shared by
everything that runs the model (:class:`vidtrt.source.model_source.ModelSource`); change one with
``dataclasses.replace``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from vidtrt.config.sparse_attention import SparseAttentionConfig
from vidtrt.config.step_cache import StepCacheParams
from vidtrt.errors import ConfigError, InvalidRequestError

VIDTRT_JSON = "vidtrt.json"  # optional overrides written next to model_index.json (text, tiling, defaults)

# The one precision vocabulary (CLI flags, repositories, component models): name -> torch dtype name.
PRECISIONS = ("auto", "fp32", "bf16", "fp16", "fp8")
PRECISION_DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# fp8: the DiT's token-wise Linear layers as FP8 e4m3 GEMMs (vidtrt.models.fp8_linear) and FP8 attention;
# everything else (norms, modulation, embedders, VAE, text encoders) in this dtype. Engines: torch.
FP8_COMPUTE_DTYPE = "bfloat16"
_PRECISION_ALIASES = {v: k for k, v in PRECISION_DTYPES.items()}  # torch spellings, as `--dtype` took them


def precision_name(value: str) -> str:
    """``value`` in the one vocabulary ("bfloat16" -> "bf16"); ConfigError naming the accepted values."""
    name = _PRECISION_ALIASES.get(value, value)
    if name not in PRECISIONS:
        raise ConfigError(f"invalid precision {value!r}: accepted {list(PRECISIONS)} "
                          f"(or the torch names {list(_PRECISION_ALIASES)})")
    return name


def resolve_precision(value: str, device: str) -> str:
    """A concrete precision ("fp32" / "bf16" / "fp16" / "fp8"): "auto" is bf16 on CUDA, fp32 elsewhere."""
    name = precision_name(value)
    if name != "auto":
        return name
    return "bf16" if str(device).startswith("cuda") else "fp32"


def precision_dtype_name(precision: str) -> str:
    """The torch dtype name modules are built in for a concrete precision (fp8: the unquantized parts')."""
    return FP8_COMPUTE_DTYPE if precision == "fp8" else PRECISION_DTYPES[precision]


def _from_dict(cls, data: dict[str, Any]):
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: v for k, v in data.items() if k in names}
    for k, v in list(kwargs.items()):
        if isinstance(v, list):
            kwargs[k] = tuple(v)
    return cls(**kwargs)


@dataclass(frozen=True)
class TransformerConfig:
    """The HunyuanVideo DiT (``HunyuanVideoTransformer3DModel`` config names)."""

    in_channels: int = 16
    out_channels: int = 16
    num_attention_heads: int = 24
    attention_head_dim: int = 128
    num_layers: int = 20
    num_single_layers: int = 40
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    patch_size: int = 2
    patch_size_t: int = 1
    qk_norm: str = "rms_norm"
    guidance_embeds: bool = True
    text_embed_dim: int = 4096
    pooled_projection_dim: int = 768
    rope_theta: float = 256.0
    rope_axes_dim: tuple[int, ...] = (16, 56, 56)

    @property
    def inner_dim(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    def validate(self) -> TransformerConfig:
        if sum(self.rope_axes_dim) != self.attention_head_dim:
            raise ConfigError(
                f"rope_axes_dim {self.rope_axes_dim} must sum to attention_head_dim {self.attention_head_dim}"
            )
        if any(d % 2 for d in self.rope_axes_dim):
            raise ConfigError(f"rope_axes_dim {self.rope_axes_dim}: every axis dim must be even")
        if self.qk_norm != "rms_norm":
            raise ConfigError(f"qk_norm {self.qk_norm!r} is not supported; accepted: 'rms_norm'")
        for name in ("num_attention_heads", "attention_head_dim", "patch_size", "patch_size_t"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TransformerConfig:
        return _from_dict(cls, data).validate()


@dataclass(frozen=True)
class VAEConfig:
    """The 3D causal VAE (``AutoencoderKLHunyuanVideo`` config names); only the decoder is built."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 16
    block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    layers_per_block: int = 2
    act_fn: str = "silu"
    norm_num_groups: int = 32
    scaling_factor: float = 0.476986
    spatial_compression_ratio: int = 8
    temporal_compression_ratio: int = 4
    mid_block_add_attention: bool = True

    def validate(self) -> VAEConfig:
        if any(c % self.norm_num_groups for c in self.block_out_channels):
            raise ConfigError(
                f"block_out_channels {self.block_out_channels} must be multiples of "
                f"norm_num_groups {self.norm_num_groups}"
            )
        if self.act_fn != "silu":
            raise ConfigError(f"act_fn {self.act_fn!r} is not supported; accepted: 'silu'")
        if self.scaling_factor <= 0:
            raise ConfigError(f"scaling_factor must be > 0, got {self.scaling_factor}")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> VAEConfig:
        return _from_dict(cls, data).validate()


@dataclass(frozen=True)
class TilingConfig:
    """Tiled VAE decode, in pixels/frames of the decoded video (diffusers' names and defaults)."""

    tile_sample_min_height: int = 256
    tile_sample_min_width: int = 256
    tile_sample_min_num_frames: int = 16
    tile_sample_stride_height: int = 192
    tile_sample_stride_width: int = 192
    tile_sample_stride_num_frames: int = 12

    def validate(self) -> TilingConfig:
        pairs = [
            ("height", self.tile_sample_min_height, self.tile_sample_stride_height),
            ("width", self.tile_sample_min_width, self.tile_sample_stride_width),
            ("num_frames", self.tile_sample_min_num_frames, self.tile_sample_stride_num_frames),
        ]
        for axis, size, stride in pairs:
            if not 0 < stride <= size:
                raise ConfigError(f"tiling {axis}: need 0 < stride ({stride}) <= tile size ({size})")
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TilingConfig:
        return _from_dict(cls, data).validate()


@dataclass(frozen=True)
class TextEncoderConfig:
    """How prompts become DiT conditioning (the LLM and CLIP halves)."""

    prompt_template: str = (
        "<|start_header_id|>system<|end_header_id|>\n\nDescribe the video by detailing the following aspects: "
        "1. The main content and theme of the video."
        "2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects."
        "3. Actions, events, behaviors temporal relationships, physical movement changes of the objects."
        "4. background environment, light, style and atmosphere."
        "5. camera angles, movements, and transitions used in the video:<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>"
    )
    # Tokens of the template before the prompt, cropped from the LLM output. None: count them
    # with the checkpoint's tokenizer (the tokens of the template text before "{}").
    crop_start: int | None = 95
    max_sequence_length: int = 256
    num_hidden_layers_to_skip: int = 2
    clip_max_length: int = 77

    def validate(self) -> TextEncoderConfig:
        if "{}" not in self.prompt_template:
            raise ConfigError("prompt_template must contain one '{}' placeholder for the prompt")
        bad_crop = self.crop_start is not None and self.crop_start < 0
        if bad_crop or self.max_sequence_length < 1 or self.clip_max_length < 2:
            raise ConfigError(
                f"text encoder limits out of range: crop_start={self.crop_start}, "
                f"max_sequence_length={self.max_sequence_length}, clip_max_length={self.clip_max_length}"
            )
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TextEncoderConfig:
        return _from_dict(cls, data).validate()


@dataclass(frozen=True)
class SamplerDefaults:
    """Generation defaults and the limits a request is validated against."""

    height: int = 720
    width: int = 1280
    num_frames: int = 129
    num_inference_steps: int = 50
    embedded_guidance_scale: float = 6.0
    flow_shift: float = 7.0
    true_cfg_scale: float = 1.0
    seed: int = 0
    fps: int = 24
    max_height: int = 1280
    max_width: int = 1280
    max_num_frames: int = 129
    max_num_inference_steps: int = 1000
    # Step caching (vidtrt.config.step_cache): off unless a request or the model's vidtrt.json asks for it;
    # threshold and warm-up as EasyCache's HunyuanVideo setting (0.025, 5 of 50 steps).
    cache_policy: str = "none"
    cache_threshold: float = 0.025
    cache_warmup_steps: int = 5
    negative_prompt: str = (
        "Aerial view, aerial view, overexposed, low quality, deformation, a poor composition, "
        "bad hands, bad teeth, bad eyes, bad limbs, distortion"
    )

    def validate(self) -> SamplerDefaults:
        if self.max_height % 16 or self.max_width % 16:
            raise ConfigError("max_height and max_width must be multiples of 16")
        if (self.max_num_frames - 1) % 4:
            raise ConfigError("max_num_frames must be 4k + 1")
        try:
            StepCacheParams(self.cache_policy, self.cache_threshold, self.cache_warmup_steps).validate(
                self.max_num_inference_steps)
        except InvalidRequestError as e:
            raise ConfigError(f"defaults: {e}") from None
        return self

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SamplerDefaults:
        return _from_dict(cls, data).validate()


@dataclass(frozen=True)
class ModelConfig:
    """Everything that defines one HunyuanVideo-architecture model."""

    name: str
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    text: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    defaults: SamplerDefaults = field(default_factory=SamplerDefaults)
    sparse_attention: SparseAttentionConfig = field(default_factory=SparseAttentionConfig)  # STA backends only

    def validate(self) -> ModelConfig:
        self.transformer.validate()
        t = self.transformer
        self.sparse_attention.validate(t.num_layers + t.num_single_layers, t.num_attention_heads)
        self.vae.validate()
        self.text.validate()
        self.tiling.validate()
        self.defaults.validate()
        if self.transformer.in_channels != self.vae.latent_channels:
            raise ConfigError(
                f"DiT in_channels {self.transformer.in_channels} != VAE latent_channels {self.vae.latent_channels}"
            )
        return self

    SECTIONS = {"transformer": TransformerConfig, "vae": VAEConfig, "text": TextEncoderConfig,
                "tiling": TilingConfig, "defaults": SamplerDefaults, "sparse_attention": SparseAttentionConfig}
    OPTIONAL_SECTIONS = ("sparse_attention",)  # absent from records written before it existed: the default

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"name": ..., "transformer": {...}, ...}`` (tuples as lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self), default=list))

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Inverse of :meth:`to_dict`; ConfigError naming a missing or unknown section."""
        unknown = sorted(set(data) - set(cls.SECTIONS) - {"name"})
        missing = sorted(set(cls.SECTIONS) - set(data) - set(cls.OPTIONAL_SECTIONS))
        if unknown or missing or not isinstance(data.get("name"), str):
            raise ConfigError(f"model config dict: sections {sorted(data)}; accepted 'name' and exactly "
                              f"{sorted(cls.SECTIONS)}")
        return cls(name=data["name"], **{k: c.from_dict(data[k]) for k, c in cls.SECTIONS.items() if k in data}
                   ).validate()

    def fingerprint(self) -> str:
        """sha256 (hex) of every field: what artifacts, repositories and model processes match a model by
        (an optional section at its default is left out, so older fingerprints stay valid)."""
        d = dataclasses.asdict(self)
        for k in self.OPTIONAL_SECTIONS:
            if getattr(self, k) == self.SECTIONS[k]():
                del d[k]
        blob = json.dumps(d, sort_keys=True, default=list)
        return hashlib.sha256(blob.encode()).hexdigest()

    @property
    def latent_channels(self) -> int:
        return self.vae.latent_channels

    def latent_shape(self, batch: int, num_frames: int, height: int, width: int) -> tuple[int, ...]:
        """Latent [B, C, T', H/8, W/8] for a video of ``num_frames`` x ``height`` x ``width`` pixels."""
        t = (num_frames - 1) // self.vae.temporal_compression_ratio + 1
        s = self.vae.spatial_compression_ratio
        return (batch, self.latent_channels, t, height // s, width // s)


def hunyuan_video_config() -> ModelConfig:
    """The full-size HunyuanVideo (13 B DiT) as released."""
    return ModelConfig(name="hunyuan-video").validate()


# Dimensions of the tiny model's text encoders (transformers Llama / CLIP configs).
TINY_LLM_HIDDEN = 32
TINY_CLIP_HIDDEN = 16


def tiny_config() -> ModelConfig:
    """HunyuanVideo architecture at toy width: the whole pipeline runs on a laptop CPU in seconds."""
    return ModelConfig(
        name="tiny",
        transformer=TransformerConfig(
            num_attention_heads=2,
            attention_head_dim=16,
            num_layers=1,
            num_single_layers=1,
            num_refiner_layers=1,
            text_embed_dim=TINY_LLM_HIDDEN,
            pooled_projection_dim=TINY_CLIP_HIDDEN,
            rope_axes_dim=(4, 6, 6),
        ),
        vae=VAEConfig(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4),
        text=TextEncoderConfig(
            prompt_template="<|start_header_id|>user<|end_header_id|>\n\n{}<|eot_id|>",
            crop_start=None,
            max_sequence_length=32,
        ),
        # Small tiles so the tiny default exercises the tiled decode on every run.
        tiling=TilingConfig(tile_sample_min_height=64, tile_sample_min_width=64, tile_sample_stride_height=48,
                            tile_sample_stride_width=48),
        defaults=SamplerDefaults(
            height=64, width=96, num_frames=9, num_inference_steps=4,
            max_height=256, max_width=256, max_num_frames=33, max_num_inference_steps=200,
        ),
        # 16-token tiles: the default 64x96x9 video is 3 x 1 x 2 tiles, the window 2 of them.
        sparse_attention=SparseAttentionConfig(tile=(1, 4, 4), window=(1, 1, 1), start_step=1),
    ).validate()


def small_config() -> ModelConfig:
    """A CPU-sized model for benchmarks: the tiny model's text encoders and VAE with a ~45 M-parameter DiT
    (8 heads x 64, 2 dual-stream + 4 single-stream blocks), about 0.1-0.5 s per step on a laptop CPU."""
    config = tiny_config()
    transformer = dataclasses.replace(
        config.transformer, num_attention_heads=8, attention_head_dim=64, num_layers=2, num_single_layers=4,
        num_refiner_layers=2, rope_axes_dim=(16, 24, 24),
    )
    return dataclasses.replace(config, name="small", transformer=transformer).validate()


PRESETS = {"hunyuan-video": hunyuan_video_config, "tiny": tiny_config, "small": small_config}
# Presets generated from a fixed seed on first use (no download): `--model tiny` / `--model small`.
EMBEDDED_PRESETS = ("tiny", "small", "tiny-cogvideox")


def preset(name: str) -> ModelConfig:
    if name not in PRESETS:
        raise ConfigError(f"unknown model preset {name!r}; accepted: {sorted(PRESETS)} or a checkpoint folder")
    return PRESETS[name]()
