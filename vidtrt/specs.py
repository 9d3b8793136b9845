"""Component specs: the one declaration of each exported component's tensors, dynamic axes and buckets.

From a :class:`ComponentSpec` come the ONNX export (names, dynamic axes, example inputs), the engine
input checks, TensorRT optimisation profiles (one per bucket) and the Triton ``config.pbtxt`` of the
component's model. Shapes are tuples whose entries are ints (fixed) or axis names (dynamic).
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from vidtrt.configs import ModelConfig
from vidtrt.errors import EngineError

# (height, width) of the supported-sizes table (540p and 720p tiers, five aspect ratios).
RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (544, 960), (960, 544), (624, 832), (832, 624), (720, 720),
    (720, 1280), (1280, 720), (1104, 832), (832, 1104), (960, 960),
)
FRAME_COUNTS: tuple[int, ...] = (1, 33, 65, 129)
TEXT_LENGTH_BUCKETS: tuple[int, ...] = (64, 128, 256)

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "int64": "TYPE_INT64", "int32": "TYPE_INT32",
                 "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``shape`` entries are ints (fixed) or dynamic-axis names."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    doc: str = ""

    def dims(self, axes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(axes[d] if isinstance(d, str) else d for d in self.shape)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}


@dataclass(frozen=True)
class AxisRange:
    """Allowed values of a dynamic axis (inclusive) and a typical value (TensorRT's opt)."""

    min: int
    opt: int
    max: int
    multiple: int = 1

    def accepts(self, value: int) -> bool:
        return self.min <= value <= self.max and value % self.multiple == 0

    def describe(self) -> str:
        step = f" in steps of {self.multiple}" if self.multiple > 1 else ""
        return f"{self.min}..{self.max}{step}"


@dataclass
class ComponentSpec:
    """A component's tensors, dynamic axes, supported shape buckets and example inputs."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: dict[str, AxisRange]
    buckets: tuple[dict[str, int], ...] = field(default_factory=tuple)
    doc: str = ""

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``torch.onnx.export``'s ``dynamic_axes`` argument."""
        return {t.name: t.dynamic_axes for t in self.inputs + self.outputs if t.dynamic_axes}

    def example_inputs(self, axes: Mapping[str, int], seed: int = 0) -> dict[str, np.ndarray]:
        """Random inputs with the given axis values (masks: a prefix of ones of random length >= 1)."""
        rng = np.random.default_rng(seed)
        feeds: dict[str, np.ndarray] = {}
        for t in self.inputs:
            dims = t.dims(axes)
            if t.name.endswith("attention_mask"):
                lengths = rng.integers(1, dims[1] + 1, size=dims[0])
                lengths[0] = dims[1]  # one full row keeps the padded length honest
                feeds[t.name] = (np.arange(dims[1])[None, :] < lengths[:, None]).astype(t.dtype)
            elif t.name.endswith("input_ids"):
                feeds[t.name] = rng.integers(0, axes.get("vocab", 100), size=dims).astype(t.dtype)
            elif t.name in ("timestep", "guidance"):
                feeds[t.name] = rng.uniform(0, 1000, size=dims).astype(t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(dims).astype(t.dtype)
        return feeds

    def check_inputs(self, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
        """Validate names, dtypes, ranks, fixed dims and axis ranges; returns the axis values.

        Raises EngineError with one line naming the input and what is accepted.
        """
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise EngineError(f"{self.name}: missing input {missing[0]!r}; expected inputs {self.input_names}")
        extra = [n for n in feeds if n not in self.input_names]
        if extra:
            raise EngineError(f"{self.name}: unknown input {extra[0]!r}; expected inputs {self.input_names}")
        seen: dict[str, int] = {}
        for t in self.inputs:
            arr = feeds[t.name]
            if str(arr.dtype) != t.dtype:
                raise EngineError(f"{self.name}: input {t.name!r} has dtype {arr.dtype}, accepted {t.dtype}")
            if arr.ndim != len(t.shape):
                raise EngineError(
                    f"{self.name}: input {t.name!r} has shape {list(arr.shape)}, accepted {self._shape_text(t)}")
            for size, dim in zip(arr.shape, t.shape, strict=True):
                if isinstance(dim, int):
                    if size != dim:
                        raise EngineError(f"{self.name}: input {t.name!r} has shape {list(arr.shape)}, "
                                          f"accepted {self._shape_text(t)}")
                    continue
                if dim in seen and seen[dim] != size:
                    raise EngineError(f"{self.name}: input {t.name!r} has {dim}={size} but another input has "
                                      f"{dim}={seen[dim]}")
                seen[dim] = size
                rng = self.axes.get(dim)
                if rng is not None and not rng.accepts(size):
                    raise EngineError(f"{self.name}: input {t.name!r} has {dim}={size}, accepted {rng.describe()}")
        return seen

    def _shape_text(self, t: TensorSpec) -> str:
        return "[" + ", ".join(str(d) if isinstance(d, int) else f"{d}({self.axes[d].describe()})"
                               if d in self.axes else d for d in t.shape) + "]"

    def profile(self, bucket: Mapping[str, int] | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT (min, opt, max) shapes per input: for one bucket (min = opt = max on its axes, the
        rest ranging) or, without one, the whole range."""
        out = {}
        for t in self.inputs:
            rows = []
            for which in ("min", "opt", "max"):
                axes = {a: getattr(r, which) for a, r in self.axes.items()}
                if bucket:
                    axes.update(bucket)
                rows.append(t.dims(axes))
            out[t.name] = tuple(rows)
        return out


# ------------------------------------------------------------------------------------------- the specs
def dit_spec(config: ModelConfig) -> ComponentSpec:
    """The DiT: one denoising velocity. Latent axes are post-VAE (T' = (F-1)/4+1, H' = H/8, W' = W/8)."""
    tc, d = config.transformer, config.defaults
    c = tc.in_channels
    s = config.vae.spatial_compression_ratio
    p = tc.patch_size
    max_t = (d.max_num_frames - 1) // config.vae.temporal_compression_ratio + 1
    max_text = config.text.max_sequence_length
    axes = {
        "batch": AxisRange(1, 1, 2),
        "latent_frames": AxisRange(1, max_t, max_t),
        "latent_height": AxisRange(p, d.height // s, d.max_height // s, multiple=p),
        "latent_width": AxisRange(p, d.width // s, d.max_width // s, multiple=p),
        "text_length": AxisRange(1, max_text, max_text),
    }
    buckets = []
    vae = config.vae
    for (h, w), f in itertools.product(RESOLUTIONS, FRAME_COUNTS):
        if h <= d.max_height and w <= d.max_width and f <= d.max_num_frames:
            buckets.append({"latent_frames": (f - 1) // vae.temporal_compression_ratio + 1,
                            "latent_height": h // s, "latent_width": w // s})
    lat = ("batch", c, "latent_frames", "latent_height", "latent_width")
    return ComponentSpec(
        name="dit",
        inputs=(
            TensorSpec("hidden_states", "float32", lat, "noisy latents"),
            TensorSpec("timestep", "float32", ("batch",), "1000 * sigma"),
            TensorSpec("encoder_hidden_states", "float32", ("batch", "text_length", tc.text_embed_dim),
                       "LLM features after the template crop"),
            TensorSpec("encoder_attention_mask", "int64", ("batch", "text_length"), "1 = token, right-padded"),
            TensorSpec("pooled_projections", "float32", ("batch", tc.pooled_projection_dim), "CLIP pooled"),
            TensorSpec("guidance", "float32", ("batch",), "embedded guidance scale * 1000"),
        ),
        outputs=(TensorSpec("velocity", "float32", lat, "flow-matching velocity"),),
        axes=axes,
        buckets=tuple(buckets),
        doc="HunyuanVideo DiT, one forward",
    )


def vae_decoder_spec(config: ModelConfig, tile: bool) -> ComponentSpec:
    """The VAE decoder on latents already divided by the scaling factor.

    ``tile=True``: the static tile the tiler feeds (an engine can be built for exactly that shape);
    ``tile=False``: any latent shape (dynamic axes).
    """
    vae = config.vae
    c, rt, rs = vae.latent_channels, vae.temporal_compression_ratio, vae.spatial_compression_ratio
    if tile:
        t = (config.tiling.tile_sample_min_num_frames // rt) + 1
        h = config.tiling.tile_sample_min_height // rs
        w = config.tiling.tile_sample_min_width // rs
        return ComponentSpec(
            name="vae_decoder_tile",
            inputs=(TensorSpec("latents", "float32", (1, c, t, h, w)),),
            outputs=(TensorSpec("video", "float32", (1, 3, (t - 1) * rt + 1, h * rs, w * rs)),),
            axes={},
            doc="one full decoder tile",
        )
    d = config.defaults
    max_t = (d.max_num_frames - 1) // rt + 1
    axes = {
        "batch": AxisRange(1, 1, 1),
        "latent_frames": AxisRange(1, 5, max_t),
        "latent_height": AxisRange(1, 32, d.max_height // rs),
        "latent_width": AxisRange(1, 32, d.max_width // rs),
        "frames": AxisRange(1, 17, d.max_num_frames),
        "height": AxisRange(rs, 256, d.max_height, multiple=rs),
        "width": AxisRange(rs, 256, d.max_width, multiple=rs),
    }
    return ComponentSpec(
        name="vae_decoder",
        inputs=(TensorSpec("latents", "float32", ("batch", c, "latent_frames", "latent_height", "latent_width")),),
        outputs=(TensorSpec("video", "float32", ("batch", 3, "frames", "height", "width")),),
        axes=axes,
        doc="VAE decoder, any shape (each tile of the tiled decode, or untiled)",
    )


def llm_text_encoder_spec(config: ModelConfig, hidden_size: int, vocab_size: int) -> ComponentSpec:
    """The LLM as encoder: token ids -> hidden_states[-(skip + 1)] (before the template crop)."""
    length = config.text.max_sequence_length + (config.text.crop_start or 0)
    return ComponentSpec(
        name="llm_text_encoder",
        inputs=(TensorSpec("input_ids", "int64", ("batch", "tokens")),
                TensorSpec("attention_mask", "int64", ("batch", "tokens"))),
        outputs=(TensorSpec("hidden_states", "float32", ("batch", "tokens", hidden_size)),),
        axes={"batch": AxisRange(1, 1, 2), "tokens": AxisRange(1, length, max(length, 512)),
              "vocab": AxisRange(vocab_size, vocab_size, vocab_size)},
        buckets=tuple({"tokens": n + (config.text.crop_start or 0)} for n in TEXT_LENGTH_BUCKETS),
    )


def clip_text_encoder_spec(config: ModelConfig, hidden_size: int, vocab_size: int) -> ComponentSpec:
    """CLIP text model: token ids (padded to clip_max_length) -> pooled output."""
    n = config.text.clip_max_length
    return ComponentSpec(
        name="clip_text_encoder",
        inputs=(TensorSpec("input_ids", "int64", ("batch", n)),),
        outputs=(TensorSpec("pooled", "float32", ("batch", hidden_size)),),
        axes={"batch": AxisRange(1, 1, 2), "vocab": AxisRange(vocab_size, vocab_size, vocab_size)},
    )
