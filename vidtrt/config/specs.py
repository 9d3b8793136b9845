"""Component specs: the one declaration of each exported component's tensors, dynamic axes and buckets.

From a :class:`ComponentSpec` come the ONNX export (names, dynamic axes, the export example), the
engine input checks, TensorRT optimisation profiles (one per bucket) and the Triton ``config.pbtxt``
of the component's model. Shapes are tuples whose entries are ints (fixed) or axis names (dynamic).

Components (``COMPONENTS``):

- ``dit``: one DiT velocity. Latent axes are post-VAE (T' = (F-1)/4+1, H' = H/8, W' = W/8); text
  length is dynamic (the engine trims batch-wide padding to a text bucket; padding inside the batch
  is exact through per-sample key lengths, never a dense mask).
- ``vae_decoder_tile``: the decoder as the tiler calls it: batch 1, every axis dynamic up to the
  largest tile (edge tiles and short clips are smaller). Buckets: every tile shape the tiler hands
  out for the supported sizes.
- ``vae_decoder``: the decoder on whole latents (untiled), dynamic batch/frames/height/width.
- ``llm_text_encoder``: token ids + mask -> the LLM hidden states the DiT uses (before the template
  crop), dynamic batch and token count.
- ``clip_text_encoder``: CLIP token ids (fixed length) -> pooled output, dynamic batch.
- ``dit_probe``: the DiT's first-block modulated input for two steps -> its relative L1 change per batch row
  (TeaCache's signal, :mod:`vidtrt.models.dit_probe`); the DiT's latent axes and buckets, no text axis.

Nothing here imports torch: the specs are read by Triton model builders and clients too.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from vidtrt.config.model_config import ModelConfig
from vidtrt.errors import EngineError

COMPONENTS: tuple[str, ...] = ("dit", "vae_decoder_tile", "vae_decoder", "llm_text_encoder", "clip_text_encoder",
                               "dit_probe")

# (height, width) of the released model's supported sizes (540p and 720p tiers, five aspect ratios).
RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (544, 960), (960, 544), (624, 832), (832, 624), (720, 720),
    (720, 1280), (1280, 720), (1104, 832), (832, 1104), (960, 960),
)
# Toy models (max size below the real table): the same aspect ratios at toy scale.
TOY_RESOLUTIONS: tuple[tuple[int, int], ...] = (
    (64, 96), (96, 64), (64, 64), (128, 128), (128, 224), (224, 128), (256, 256),
)
FRAME_COUNTS: tuple[int, ...] = (1, 33, 65, 129)
# Text buckets as fractions of max_sequence_length (256 -> 64, 128, 256).
TEXT_BUCKET_FRACTIONS: tuple[int, ...] = (4, 2, 1)

TRITON_DTYPES = {"float32": "TYPE_FP32", "float16": "TYPE_FP16", "bfloat16": "TYPE_BF16", "int64": "TYPE_INT64",
                 "int32": "TYPE_INT32", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
ONNX_DTYPES = {"float32": 1, "uint8": 2, "int32": 6, "int64": 7, "bool": 9, "float16": 10, "bfloat16": 16}


@dataclass(frozen=True)
class TensorSpec:
    """One input or output: ``shape`` entries are ints (fixed) or dynamic-axis names.

    ``values``: how example inputs are drawn: ``"normal"``, ``"uniform"`` in [low, high), ``"int"`` in
    [low, high), or ``"mask"`` (right-padded 0/1 rows over the last axis, at least one 1 per row).
    """

    name: str
    dtype: str
    shape: tuple[int | str, ...]
    doc: str = ""
    values: str = "normal"
    low: float = 0.0
    high: float = 1.0

    def dims(self, axes: Mapping[str, int]) -> tuple[int, ...]:
        return tuple(axes[d] if isinstance(d, str) else d for d in self.shape)

    @property
    def dynamic_axes(self) -> dict[int, str]:
        return {i: d for i, d in enumerate(self.shape) if isinstance(d, str)}

    def to_dict(self) -> dict:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape), "doc": self.doc}


@dataclass(frozen=True)
class AxisRange:
    """Allowed values of a dynamic axis (inclusive, in steps of ``multiple``) and a typical value
    (TensorRT's opt)."""

    min: int
    opt: int
    max: int
    multiple: int = 1

    def __post_init__(self):
        if not (1 <= self.min <= self.opt <= self.max):
            raise ValueError(f"axis range needs 1 <= min <= opt <= max, got {self}")
        if any(v % self.multiple for v in (self.min, self.opt, self.max)):
            raise ValueError(f"axis range values must be multiples of {self.multiple}: {self}")

    def accepts(self, value: int) -> bool:
        return self.min <= value <= self.max and value % self.multiple == 0

    def describe(self) -> str:
        step = f" in steps of {self.multiple}" if self.multiple > 1 else ""
        return f"{self.min}..{self.max}{step}"

    def clamp(self, value: int) -> int:
        """The accepted value nearest ``value`` (rounding down to the multiple)."""
        v = min(max(value, self.min), self.max)
        return max(self.min, v - v % self.multiple)

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max, "multiple": self.multiple}


@dataclass
class ComponentSpec:
    """A component's tensors, dynamic axes, supported shape buckets and example inputs.

    ``outputs`` may name derived axes (e.g. the decoder's ``frames``); ``derived`` gives each as an
    affine function ``scale * axis + offset`` of an input axis, so output shapes are known per input.
    ``export_axes``: the axis values of the example the ONNX export traces (batch 2, sizes > 1 and
    distinct, so nothing specialises).
    """

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    axes: dict[str, AxisRange]
    buckets: tuple[dict[str, int], ...] = field(default_factory=tuple)
    derived: dict[str, tuple[str, int, int]] = field(default_factory=dict)
    export_axes: dict[str, int] = field(default_factory=dict)
    doc: str = ""

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def input(self, name: str) -> TensorSpec:
        for t in self.inputs:
            if t.name == name:
                return t
        raise KeyError(name)

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """Dynamic axes per tensor, ``torch.onnx.export``'s legacy ``dynamic_axes`` form."""
        return {t.name: t.dynamic_axes for t in self.inputs + self.outputs if t.dynamic_axes}

    # ------------------------------------------------------------------ axis values
    def full_axes(self, partial: Mapping[str, int] | None = None, which: str = "opt") -> dict[str, int]:
        """Every axis and derived axis: ``partial`` where given, else the range's ``which`` value."""
        axes = {a: getattr(r, which) for a, r in self.axes.items()}
        axes.update(partial or {})
        for name, (src, scale, offset) in self.derived.items():
            axes[name] = scale * axes[src] + offset
        return axes

    def bucket_axes(self) -> list[dict[str, int]]:
        """Full axis values of every bucket (non-bucket axes at their opt value)."""
        return [self.full_axes(b) for b in self.buckets]

    def output_shape(self, name: str, axes: Mapping[str, int]) -> tuple[int, ...]:
        t = next(o for o in self.outputs if o.name == name)
        return t.dims(self.full_axes(axes))

    # ------------------------------------------------------------------ examples
    def example_inputs(self, axes: Mapping[str, int] | None = None, seed: int = 0,
                       lengths: Sequence[int] | None = None) -> dict[str, np.ndarray]:
        """Random inputs with the given axis values (others at opt). Masks are right-padded: row 0 full,
        the others of random length >= 1 unless ``lengths`` gives them."""
        rng = np.random.default_rng(seed)
        full = self.full_axes(axes)
        feeds: dict[str, np.ndarray] = {}
        for t in self.inputs:
            dims = t.dims(full)
            if t.values == "mask":
                n = dims[-1]
                if lengths is not None:
                    lens = np.asarray(lengths, dtype=np.int64)
                else:
                    lens = rng.integers(1, n + 1, size=dims[:-1])
                    lens.reshape(-1)[0] = n  # one full row keeps the padded length honest
                feeds[t.name] = (np.arange(n) < lens[..., None]).astype(t.dtype)
            elif t.values == "int":
                feeds[t.name] = rng.integers(int(t.low), int(t.high), size=dims).astype(t.dtype)
            elif t.values == "uniform":
                feeds[t.name] = rng.uniform(t.low, t.high, size=dims).astype(t.dtype)
            else:
                feeds[t.name] = rng.standard_normal(dims).astype(t.dtype)
        return feeds

    # ------------------------------------------------------------------ checks
    def check_inputs(self, feeds: Mapping[str, np.ndarray], require_bucket: bool = False) -> dict[str, int]:
        """Validate names, dtypes, ranks, fixed dims and axis ranges; returns the axis values.

        ``require_bucket``: the bucket axes must also form one of ``buckets`` (engines with one
        optimisation profile per bucket). Raises EngineError with one line naming the input and
        what is accepted.
        """
        missing = [n for n in self.input_names if n not in feeds]
        if missing:
            raise EngineError(f"{self.name}: missing input {missing[0]!r}; expected inputs {self.input_names}")
        extra = [n for n in feeds if n not in self.input_names]
        if extra:
            raise EngineError(f"{self.name}: unknown input {extra[0]!r}; expected inputs {self.input_names}")
        seen: dict[str, int] = {}
        where: dict[str, str] = {}
        for t in self.inputs:
            arr = feeds[t.name]
            dtype = str(getattr(arr, "dtype", type(arr).__name__))
            if dtype != t.dtype:
                raise EngineError(f"{self.name}: input {t.name!r} has dtype {dtype}, accepted {t.dtype}")
            shape = tuple(int(s) for s in arr.shape)
            if len(shape) != len(t.shape):
                raise EngineError(f"{self.name}: input {t.name!r} has shape {list(shape)}, "
                                  f"accepted {self.shape_text(t)}")
            for size, dim in zip(shape, t.shape, strict=True):
                if isinstance(dim, int):
                    if size != dim:
                        raise EngineError(f"{self.name}: input {t.name!r} has shape {list(shape)}, "
                                          f"accepted {self.shape_text(t)}")
                    continue
                if dim in seen and seen[dim] != size:
                    raise EngineError(f"{self.name}: input {t.name!r} has {dim}={size} but input {where[dim]!r} "
                                      f"has {dim}={seen[dim]}")
                seen[dim], where[dim] = size, t.name
                rng = self.axes.get(dim)
                if rng is not None and not rng.accepts(size):
                    raise EngineError(f"{self.name}: input {t.name!r} has {dim}={size}, accepted {rng.describe()}")
        if require_bucket and self.buckets:
            keys = list(self.buckets[0])
            got = {k: seen.get(k) for k in keys}
            if got not in [dict(b) for b in self.buckets]:
                accepted = ", ".join("(" + ", ".join(str(b[k]) for k in keys) + ")" for b in self.buckets)
                raise EngineError(f"{self.name}: ({', '.join(keys)}) = ({', '.join(str(got[k]) for k in keys)}) "
                                  f"is not a supported bucket; accepted {accepted}")
        return seen

    def shape_text(self, t: TensorSpec) -> str:
        return "[" + ", ".join(
            str(d) if isinstance(d, int) else f"{d}({self.axes[d].describe()})" if d in self.axes else d
            for d in t.shape) + "]"

    # ------------------------------------------------------------------ TensorRT / Triton / manifest
    def profile(self, bucket: Mapping[str, int] | None = None) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT (min, opt, max) shapes per input: for one bucket (min = opt = max on its axes, the
        rest ranging) or, without one, the whole range."""
        out = {}
        for t in self.inputs:
            rows = []
            for which in ("min", "opt", "max"):
                rows.append(t.dims(self.full_axes(bucket, which)))
            out[t.name] = tuple(rows)
        return out

    def profiles(self) -> list[dict[str, tuple[tuple[int, ...], ...]]]:
        """One TensorRT profile per bucket (or one covering the whole range when there are none)."""
        return [self.profile(b) for b in self.buckets] or [self.profile()]

    def triton_dims(self, t: TensorSpec, batch_axis: str | None = "batch") -> list[int]:
        """``dims`` of a Triton config entry: -1 for dynamic axes; the batch axis left out when the model
        declares ``max_batch_size`` (pass ``batch_axis=None`` to keep it)."""
        dims = list(t.shape)
        if batch_axis is not None and dims and dims[0] == batch_axis:
            dims = dims[1:]
        return [d if isinstance(d, int) else -1 for d in dims]

    def to_dict(self) -> dict:
        """JSON-ready form (the artifacts manifest keeps it; engines compare it with their own spec)."""
        return {
            "name": self.name,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "axes": {k: v.to_dict() for k, v in self.axes.items()},
            "buckets": [dict(b) for b in self.buckets],
            "derived": {k: list(v) for k, v in self.derived.items()},
        }


# ------------------------------------------------------------------------------------------- tables
def supported_resolutions(config: ModelConfig) -> tuple[tuple[int, int], ...]:
    """(height, width) pairs of the model's resolution table that fit its maximum size (the released
    table; toy models whose maximum is below it get :data:`TOY_RESOLUTIONS`). The default size is
    always included."""
    d = config.defaults
    fits = lambda hw: hw[0] <= d.max_height and hw[1] <= d.max_width  # noqa: E731
    table = [hw for hw in RESOLUTIONS if fits(hw)] or [hw for hw in TOY_RESOLUTIONS if fits(hw)]
    if (d.height, d.width) not in table:
        table.insert(0, (d.height, d.width))
    return tuple(table)


def supported_frame_counts(config: ModelConfig) -> tuple[int, ...]:
    """Video frame counts of the buckets: the released counts up to the maximum, and the default."""
    d = config.defaults
    return tuple(sorted({f for f in FRAME_COUNTS if f <= d.max_num_frames} | {d.num_frames}))


def text_length_buckets(config: ModelConfig) -> tuple[int, ...]:
    """DiT text lengths the engine pads to: max_sequence_length / 4, / 2 and itself (64, 128, 256)."""
    n = config.text.max_sequence_length
    return tuple(sorted({max(1, n // f) for f in TEXT_BUCKET_FRACTIONS}))


def latent_size(config: ModelConfig, num_frames: int, height: int, width: int) -> tuple[int, int, int]:
    """(T', H', W') of a video size."""
    v = config.vae
    return ((num_frames - 1) // v.temporal_compression_ratio + 1, height // v.spatial_compression_ratio,
            width // v.spatial_compression_ratio)


def latent_buckets(config: ModelConfig) -> tuple[dict[str, int], ...]:
    """Latent (frames, height, width) of every (resolution, frame count) pair of the table."""
    out = []
    for (h, w), f in itertools.product(supported_resolutions(config), supported_frame_counts(config)):
        t, lh, lw = latent_size(config, f, h, w)
        out.append({"latent_frames": t, "latent_height": lh, "latent_width": lw})
    return tuple(out)


# ------------------------------------------------------------------------------------------- the specs
def dit_spec(config: ModelConfig, sparse: bool = False) -> ComponentSpec:
    """The DiT: one denoising velocity, every size the request validator accepts (H, W multiples of 16
    up to the maximum; 4k+1 frames); buckets = the resolution table x frame counts.

    ``sparse``: the sliding-tile plugin graph (:func:`sta_inputs`): the same inputs plus the tile order and
    the block-sparse layouts, which the host makes per request shape and step."""
    tc, d = config.transformer, config.defaults
    c = tc.in_channels
    p = tc.patch_size
    s = config.vae.spatial_compression_ratio
    max_t, max_h, max_w = latent_size(config, d.max_num_frames, d.max_height, d.max_width)
    opt_t, opt_h, opt_w = latent_size(config, d.num_frames, d.height, d.width)
    max_text = config.text.max_sequence_length
    step = math.lcm(p, 16 // s) if 16 % s == 0 else p
    axes = {
        "batch": AxisRange(1, 1, 2),
        "latent_frames": AxisRange(1, opt_t, max_t),
        "latent_height": AxisRange(step, opt_h, max_h, multiple=step),
        "latent_width": AxisRange(step, opt_w, max_w, multiple=step),
        "text_length": AxisRange(1, max_text, max_text),
    }
    lat = ("batch", c, "latent_frames", "latent_height", "latent_width")
    inputs = [
        TensorSpec("hidden_states", "float32", lat, "noisy latents"),
        TensorSpec("timestep", "float32", ("batch",), "1000 * sigma", "uniform", 0.0, 1000.0),
        TensorSpec("encoder_hidden_states", "float32", ("batch", "text_length", tc.text_embed_dim),
                   "LLM features after the template crop"),
        TensorSpec("encoder_attention_mask", "int64", ("batch", "text_length"), "1 = token, right-padded", "mask"),
        TensorSpec("pooled_projections", "float32", ("batch", tc.pooled_projection_dim), "CLIP pooled"),
    ]
    if tc.guidance_embeds:
        inputs.append(TensorSpec("guidance", "float32", ("batch",), "embedded guidance scale * 1000",
                                 "uniform", 1000.0, 10000.0))
    export_axes = {"batch": 2, "latent_frames": min(3, max_t), "latent_height": axes["latent_height"].clamp(4 * step),
                   "latent_width": axes["latent_width"].clamp(6 * step), "text_length": min(7, max_text)}
    spec = ComponentSpec(
        name="dit",
        inputs=tuple(inputs),
        outputs=(TensorSpec("velocity", "float32", lat, "flow-matching velocity"),),
        axes=axes,
        buckets=latent_buckets(config),
        export_axes=export_axes,
        doc="HunyuanVideo DiT, one forward",
    )
    return sta_inputs(config, spec) if sparse else spec


def sta_grid(config: ModelConfig, latent_frames: int, latent_height: int, latent_width: int) -> tuple[int, ...]:
    """(T, H, W) tokens after patching and (nt, nh, nw) tiles of the model's sparse_attention.tile."""
    tc = config.transformer
    grid = (latent_frames // tc.patch_size_t, latent_height // tc.patch_size, latent_width // tc.patch_size)
    tiles = tuple(-(-g // t) for g, t in zip(grid, config.sparse_attention.tile, strict=True))
    return grid + tiles


def sta_rows(config: ModelConfig, latent_frames: int, latent_height: int, latent_width: int) -> int:
    """Rows of the padded tile order (whole tiles) of a latent size."""
    *_, nt, nh, nw = sta_grid(config, latent_frames, latent_height, latent_width)
    t = config.sparse_attention.tile
    return nt * nh * nw * t[0] * t[1] * t[2]


def sta_inputs(config: ModelConfig, spec: ComponentSpec) -> ComponentSpec:
    """``spec`` (the DiT's) with the inputs of the sliding-tile plugin graph (``vidtrt.export.sta_onnx``):

    - ``sta_tile_rows`` int64 [sta_rows]: per row of the padded tile order, the natural image token it holds
      (t -> h -> w order after patching), or the token count for a padding row;
    - ``sta_kv_end`` int32 [sta_k_blocks] and, per distinct layer window ``g`` of the model config
      (:func:`vidtrt.config.sparse_attention.window_groups`), ``sta_kv_idx_<g>`` int32 [Hl, sta_q_blocks,
      sta_max_blocks_<g>] and ``sta_kv_cnt_<g>`` int32 [Hl, sta_q_blocks, 2] (Hl = heads for a window per head,
      1 for one window: every head reads that one layout, no H copies): the block-sparse layout of
      ``vidtrt.kernels.sparse_layout`` made with :data:`~vidtrt.config.sparse_attention.PLUGIN_BLOCKS`
      (128 x 64) over ``[tile-order rows; text]`` (a dense step: a window covering the video).

    Buckets add ``sta_rows`` (fixed by the latent size); the block counts depend on the text length and the
    max-keys axes on the window, so TensorRT profiles give them their whole range (min 1 .. the largest
    video's block count). ConfigError when the tile holds no multiple of 128 tokens."""
    from vidtrt.config.sparse_attention import PLUGIN_BLOCKS, window_groups
    from vidtrt.errors import ConfigError

    sa, tc = config.sparse_attention, config.transformer
    bm, bn = PLUGIN_BLOCKS
    tile_tokens = sa.tile[0] * sa.tile[1] * sa.tile[2]
    if tile_tokens % bm or tile_tokens % bn:
        raise ConfigError(f"sparse_attention.tile {tuple(sa.tile)} has {tile_tokens} tokens; the STA plugin graph "
                          f"accepts a multiple of {bm} (its kernels' {bm} x {bn} blocks)")
    layer_windows = sa.layer_window_list(tc.num_layers + tc.num_single_layers)
    groups, _ = window_groups(layer_windows)
    ax = spec.axes
    max_text = ax["text_length"].max
    rows = {w: sta_rows(config, *(getattr(ax[a], w) for a in ("latent_frames", "latent_height", "latent_width")))
            for w in ("opt", "max")}
    cdiv = lambda a, b: -(-a // b)  # noqa: E731
    opt_grid = sta_grid(config, ax["latent_frames"].opt, ax["latent_height"].opt, ax["latent_width"].opt)
    kmax = cdiv(rows["max"] + max_text, bn)
    axes = dict(ax)
    axes["sta_rows"] = AxisRange(tile_tokens, rows["opt"], rows["max"], multiple=tile_tokens)
    axes["sta_q_blocks"] = AxisRange(cdiv(tile_tokens + 1, bm), cdiv(rows["opt"] + max_text, bm),
                                     cdiv(rows["max"] + max_text, bm))
    axes["sta_k_blocks"] = AxisRange(cdiv(tile_tokens + 1, bn), cdiv(rows["opt"] + max_text, bn), kmax)
    heads = tc.num_attention_heads
    inputs = [TensorSpec("sta_tile_rows", "int64", ("sta_rows",), "natural image token of each tile-order row "
                         "(the token count: padding)", "int", 0, 1),
              TensorSpec("sta_kv_end", "int32", ("sta_k_blocks",), "one past the last valid key of each key block",
                         "int", 0, 1)]
    for g, window in enumerate(groups):
        per_head = window if isinstance(window[0], tuple) else (window,)
        seen = max(math.prod(min(w, n) for w, n in zip(win, opt_grid[3:], strict=True)) for win in per_head)
        opt = min(kmax, seen * tile_tokens // bn + cdiv(max_text, bn))
        axes[f"sta_max_blocks_{g}"] = AxisRange(1, opt, kmax)
        hl = heads if isinstance(window[0], tuple) else 1  # a window uniform over heads: one layout for all
        inputs += [TensorSpec(f"sta_kv_idx_{g}", "int32", (hl, "sta_q_blocks", f"sta_max_blocks_{g}"),
                              f"key blocks each query block visits (layers of window {list(window)})", "int", 0, 1),
                   TensorSpec(f"sta_kv_cnt_{g}", "int32", (hl, "sta_q_blocks", 2),
                              "(unmasked, all) listed key blocks", "int", 0, 1)]
    buckets = tuple({**b, "sta_rows": sta_rows(config, b["latent_frames"], b["latent_height"], b["latent_width"])}
                    for b in spec.buckets)
    export_axes = {**spec.export_axes, "sta_rows": sta_rows(config, spec.export_axes["latent_frames"],
                                                            spec.export_axes["latent_height"],
                                                            spec.export_axes["latent_width"])}
    return dataclasses.replace(spec, inputs=(*spec.inputs, *inputs), axes=axes, buckets=buckets,
                               export_axes=export_axes, doc=spec.doc + ", sliding-tile plugin graph")


def dit_probe_spec(config: ModelConfig) -> ComponentSpec:
    """The DiT probe (TeaCache's signal): this step's and the previous step's latents and timesteps, the pooled
    text and guidance -> float32 [batch] relative L1 change of block 0's modulated image input. The DiT's
    latent axes, buckets and export example (its ``dit_spec`` inputs that the modulation reads)."""
    dit = dit_spec(config)
    keep = [t for t in dit.inputs if t.name in ("hidden_states", "timestep", "pooled_projections", "guidance")]
    lat, ts = dit.input("hidden_states"), dit.input("timestep")
    inputs = (*keep, TensorSpec("prev_hidden_states", "float32", lat.shape, "the previous step's latents"),
              TensorSpec("prev_timestep", "float32", ts.shape, "the previous step's 1000 * sigma", "uniform",
                         0.0, 1000.0))
    axes = {k: v for k, v in dit.axes.items() if k != "text_length"}
    return ComponentSpec(
        name="dit_probe",
        inputs=inputs,
        outputs=(TensorSpec("rel_l1", "float32", ("batch",),
                            "mean|m - m_prev| / mean|m_prev| of block 0's modulated image input, per row"),),
        axes=axes,
        buckets=dit.buckets,
        export_axes={k: v for k, v in dit.export_axes.items() if k != "text_length"},
        doc="HunyuanVideo DiT probe: relative change of the first block's modulated input (TeaCache)",
    )


def _decoder_outputs(config: ModelConfig, batch: int | str) -> tuple[tuple[TensorSpec, ...], dict]:
    rt, rs = config.vae.temporal_compression_ratio, config.vae.spatial_compression_ratio
    outputs = (TensorSpec("video", "float32", (batch, config.vae.out_channels, "frames", "height", "width"),
                          "decoded video in about [-1, 1]"),)
    derived = {"frames": ("latent_frames", rt, 1 - rt), "height": ("latent_height", rs, 0),
               "width": ("latent_width", rs, 0)}
    return outputs, derived


def vae_tile_buckets(config: ModelConfig) -> tuple[dict[str, int], ...]:
    """Every latent tile shape (t, h, w) the tiled decode hands ``decode_tile`` for the bucket sizes."""
    from vidtrt.config.tiling import plan_tiles

    seen: dict[tuple[int, int, int], None] = {}
    for b in latent_buckets(config):
        plan = plan_tiles((1, config.vae.latent_channels, b["latent_frames"], b["latent_height"],
                           b["latent_width"]), config.vae, config.tiling)
        for tile in plan.tiles:
            seen.setdefault(tile.latent_shape, None)
    return tuple({"latent_frames": t, "latent_height": h, "latent_width": w} for t, h, w in sorted(seen))


def vae_decoder_spec(config: ModelConfig, tile: bool) -> ComponentSpec:
    """The VAE decoder on latents already divided by the scaling factor.

    ``tile=True``: what the tiled decode calls: batch 1, each axis dynamic from 1 up to the largest tile
    (``max_tile_latent_shape``: [C, 5, 32, 32] for the released tiling), since edge tiles and short
    clips are smaller; buckets are the tile shapes that occur (the largest one is TensorRT's opt).
    ``tile=False``: whole latents of any supported size (dynamic batch and axes).
    """
    from vidtrt.config.tiling import max_tile_latent_shape

    vae = config.vae
    c = vae.latent_channels
    if tile:
        _, t, h, w = max_tile_latent_shape(vae, config.tiling)
        axes = {"latent_frames": AxisRange(1, t, t), "latent_height": AxisRange(1, h, h),
                "latent_width": AxisRange(1, w, w)}
        outputs, derived = _decoder_outputs(config, 1)
        return ComponentSpec(
            name="vae_decoder_tile",
            inputs=(TensorSpec("latents", "float32", (1, c, "latent_frames", "latent_height", "latent_width"),
                               "one latent tile"),),
            outputs=outputs,
            axes=axes,
            buckets=vae_tile_buckets(config),
            derived=derived,
            export_axes={"latent_frames": min(3, t), "latent_height": min(6, h), "latent_width": min(7, w)},
            doc="VAE decoder, one tile of the tiled decode (dynamic up to the largest tile)",
        )
    d = config.defaults
    max_t, max_h, max_w = latent_size(config, d.max_num_frames, d.max_height, d.max_width)
    opt_t, opt_h, opt_w = latent_size(config, d.num_frames, d.height, d.width)
    axes = {
        "batch": AxisRange(1, 1, 2),
        "latent_frames": AxisRange(1, opt_t, max_t),
        "latent_height": AxisRange(1, opt_h, max_h),
        "latent_width": AxisRange(1, opt_w, max_w),
    }
    outputs, derived = _decoder_outputs(config, "batch")
    return ComponentSpec(
        name="vae_decoder",
        inputs=(TensorSpec("latents", "float32", ("batch", c, "latent_frames", "latent_height", "latent_width"),
                           "whole latents"),),
        outputs=outputs,
        axes=axes,
        buckets=latent_buckets(config),
        derived=derived,
        export_axes={"batch": 2, "latent_frames": min(3, max_t), "latent_height": min(6, max_h),
                     "latent_width": min(7, max_w)},
        doc="VAE decoder, whole latents (untiled)",
    )


def llm_text_encoder_spec(config: ModelConfig, hidden_size: int, vocab_size: int,
                          crop_start: int | None = None) -> ComponentSpec:
    """The LLM as encoder: token ids -> hidden_states[-(skip + 1)] before the template crop.

    ``crop_start``: the template tokens before the prompt (the config's, or counted by the tokenizer
    when the config leaves it None). Buckets: crop_start + each text length bucket.
    """
    crop = config.text.crop_start if crop_start is None else crop_start
    crop = crop or 0
    length = config.text.max_sequence_length + crop
    return ComponentSpec(
        name="llm_text_encoder",
        inputs=(TensorSpec("input_ids", "int64", ("batch", "tokens"), "template + prompt token ids, right-padded",
                           "int", 0, vocab_size),
                TensorSpec("attention_mask", "int64", ("batch", "tokens"), "1 = token", "mask")),
        outputs=(TensorSpec("hidden_states", "float32", ("batch", "tokens", hidden_size),
                            f"hidden_states[-{config.text.num_hidden_layers_to_skip + 1}]"),),
        axes={"batch": AxisRange(1, 1, 4), "tokens": AxisRange(1, length, length)},
        buckets=tuple({"tokens": crop + n} for n in text_length_buckets(config)),
        export_axes={"batch": 2, "tokens": min(length, max(crop + 5, 9))},
        doc="LLM text encoder (hidden states of a middle layer)",
    )


def clip_text_encoder_spec(config: ModelConfig, hidden_size: int, vocab_size: int) -> ComponentSpec:
    """CLIP text model: token ids padded to clip_max_length -> pooled output."""
    n = config.text.clip_max_length
    return ComponentSpec(
        name="clip_text_encoder",
        inputs=(TensorSpec("input_ids", "int64", ("batch", n), "prompt token ids, padded", "int", 0, vocab_size),),
        outputs=(TensorSpec("pooled", "float32", ("batch", hidden_size), "pooler_output"),),
        axes={"batch": AxisRange(1, 1, 4)},
        export_axes={"batch": 2},
        doc="CLIP text encoder (pooled output)",
    )


@dataclass(frozen=True)
class TextEncoderDims:
    """What the text encoder specs need from the text encoders' own configs."""

    llm_hidden: int
    llm_vocab: int
    clip_hidden: int
    clip_vocab: int
    crop_start: int | None = None


def component_specs(config: ModelConfig, text: TextEncoderDims | None = None,
                    names: Sequence[str] = COMPONENTS) -> dict[str, ComponentSpec]:
    """The specs of ``names`` (text encoder specs need ``text``)."""
    out: dict[str, ComponentSpec] = {}
    for name in names:
        if name == "dit":
            out[name] = dit_spec(config)
        elif name == "dit_probe":
            out[name] = dit_probe_spec(config)
        elif name == "vae_decoder_tile":
            out[name] = vae_decoder_spec(config, tile=True)
        elif name == "vae_decoder":
            out[name] = vae_decoder_spec(config, tile=False)
        elif name in ("llm_text_encoder", "clip_text_encoder"):
            if text is None:
                raise ValueError(f"the {name} spec needs the text encoders' dimensions")
            if name == "llm_text_encoder":
                out[name] = llm_text_encoder_spec(config, text.llm_hidden, text.llm_vocab, text.crop_start)
            else:
                out[name] = clip_text_encoder_spec(config, text.clip_hidden, text.clip_vocab)
        else:
            raise EngineError(f"unknown component {name!r}; accepted: {list(COMPONENTS)}")
    return out
