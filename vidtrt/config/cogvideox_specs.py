"""Component specs of a CogVideoX model (see :mod:`vidtrt.config.specs` for what a spec drives).

- ``text_encoder`` (Triton only): prompts -> T5 states [B, L, D] (L = max_sequence_length, fixed) and an
  all-ones mask; no pooled output.
- ``dit``: latents in diffusers' layout [B, F', C, h, w] (F' a multiple of ``patch_size_t`` for 1.5;
  h, w multiples of the patch), integer timesteps carried as float32 [B], T5 states [B, L, D] with L fixed
  (the 2B's sin-cos positions assume all L text tokens) -> v-prediction [B, F', C, h, w].
- ``vae_decoder_tile``: one spatial tile with all its latent frames [1, C, t, h, w] (t odd, up to the
  longest video; h, w up to the tile) -> video [1, 3, 4 (t - 1) + 1, 8 h, 8 w]; the decoder carries its
  causal conv cache across frame batches inside the call. The orchestrator and Triton see this contract.
- ``vae_decoder_batch`` (ONNX only): what the tile decoder is exported as, one frame batch of one tile:
  latents [1, C, t, h, w] (t in 1..3: diffusers' batches of :func:`frame_batches`), ``first`` (bool [1]: the
  first batch, which pads each causal conv with copies of its first input frame) and one conv cache per
  causal conv (:func:`conv_cache_layout`: [1, C_i, 2, 2^l h, 2^l w], zeros allowed when ``first``) -> video
  [1, 3, 4 t - 3 (t % 2), 8 h, 8 w] and the next caches. The onnxruntime engine of ``vae_decoder_tile``
  (:mod:`vidtrt.runtime.cogvideox_engines`) loops over the batches, feeding the caches back.
- ``dit_probe`` (optional; TeaCache's signal, :mod:`vidtrt.models.cogvideox_probe`): this step's and the
  previous step's timesteps [B] -> float32 [B] relative L1 change of the DiT's timestep embedding. No latent
  or text input: TeaCache4CogVideoX's indicator depends on the timestep only.
"""

from __future__ import annotations

from vidtrt.config.cogvideox_config import CogVideoXModelConfig, CogVideoXVAEConfig
from vidtrt.config.specs import AxisRange, ComponentSpec, TensorSpec
from vidtrt.config.tiling import plan_tiles

COGVIDEOX_COMPONENTS = ("dit", "vae_decoder_tile", "vae_decoder_batch", "dit_probe")
ONNX_COMPONENTS = ("dit", "vae_decoder_batch", "dit_probe")  # what `vidtrt export` writes for a CogVideoX model
FRAME_BATCH = 2  # latent frames per decoder batch (diffusers' num_latent_frames_batch_size)
CACHE_FRAMES = 2  # input frames each causal conv (time kernel 3) carries to the next batch


def frame_batches(t: int, size: int = FRAME_BATCH) -> list[tuple[int, int]]:
    """diffusers' frame batches of a ``t``-latent-frame decode as [start, stop): batches of ``size``, the first
    taking the remainder (1 -> [(0, 1)], 3 -> [(0, 3)], 5 -> [(0, 3), (3, 5)], 4 -> [(0, 2), (2, 4)])."""
    if t < 1:
        raise ValueError(f"a decode needs at least one latent frame, got {t}")
    rem = t % size
    return [(0 if i == 0 else size * i + rem, min(size * (i + 1) + rem, t)) for i in range(max(t // size, 1))]


def conv_cache_layout(vae: CogVideoXVAEConfig) -> list[tuple[int, int]]:
    """(input channels, spatial level l: the feature map is 2^l x the latents) of every causal conv with a
    time kernel > 1, in the decoder's module order: conv_in, the mid block's two resnets (conv1, conv2),
    each up block's ``layers_per_block + 1`` resnets, conv_out. 38 for the released models, 22 for the
    tiny preset."""
    ch = list(reversed(vae.block_out_channels))
    out = [(vae.latent_channels, 0)] + [(ch[0], 0)] * 4
    prev = ch[0]
    for level, c in enumerate(ch):
        for j in range(vae.layers_per_block + 1):
            out += [(prev if j == 0 else c, level), (c, level)]
        prev = c
    return out + [(ch[-1], len(ch) - 1)]


def _sizes(config: CogVideoXModelConfig) -> list[tuple[int, int, int]]:
    """(frames, height, width) of the buckets: the default, the minimum frames, square and portrait variants."""
    d = config.defaults
    out = {(d.num_frames, d.height, d.width), (d.min_num_frames, d.height, d.width)}
    for h, w in ((d.width, d.height), (min(d.height, d.width),) * 2):
        if h <= d.max_height and w <= d.max_width:
            out.add((d.num_frames, h, w))
    return sorted(out)


def dit_spec(config: CogVideoXModelConfig) -> ComponentSpec:
    tc, d = config.transformer, config.defaults
    c, p, pt = tc.in_channels, tc.patch_size, tc.patch_size_t or 1
    s = config.vae.spatial_compression_ratio
    max_f = config.latent_frames(d.max_num_frames)[0]
    opt_f = config.latent_frames(d.num_frames)[0]
    n = tc.max_text_seq_length
    axes = {
        "batch": AxisRange(1, 2, 2),
        "latent_frames": AxisRange(pt, opt_f, max_f, multiple=pt),
        "latent_height": AxisRange(p, d.height // s, d.max_height // s, multiple=p),
        "latent_width": AxisRange(p, d.width // s, d.max_width // s, multiple=p),
    }
    lat = ("batch", "latent_frames", c, "latent_height", "latent_width")
    buckets = tuple({"latent_frames": config.latent_frames(f)[0], "latent_height": h // s, "latent_width": w // s}
                    for f, h, w in _sizes(config))
    return ComponentSpec(
        name="dit",
        inputs=(TensorSpec("hidden_states", "float32", lat, "noisy latents, frames before channels"),
                TensorSpec("encoder_hidden_states", "float32", ("batch", n, tc.text_embed_dim), "T5 states"),
                TensorSpec("timestep", "float32", ("batch",), "integer DDIM / DPM timestep", "int", 0, 1000)),
        outputs=(TensorSpec("velocity", "float32", lat, "v-prediction"),),
        axes=axes,
        buckets=buckets,
        export_axes={"batch": 2, "latent_frames": min(2 * pt, max_f), "latent_height": 2 * p,
                     "latent_width": 3 * p},
        doc="CogVideoX DiT, one forward (batched CFG: batch 2)",
    )


def dit_probe_spec(config: CogVideoXModelConfig) -> ComponentSpec:
    """TeaCache's signal for CogVideoX: timestep, prev_timestep [batch] (the DiT's integer timesteps as
    float32) -> rel_l1 float32 [batch], the relative L1 change of the DiT's timestep embedding. The DiT's
    batch axis; nothing else varies."""
    ts = dit_spec(config).input("timestep")
    return ComponentSpec(
        name="dit_probe",
        inputs=(ts, TensorSpec("prev_timestep", "float32", ("batch",), "the previous step's timestep", "int", 0,
                               1000)),
        outputs=(TensorSpec("rel_l1", "float32", ("batch",),
                            "mean|e - e_prev| / mean|e_prev| of the DiT's timestep embedding, per row"),),
        axes={"batch": AxisRange(1, 1, 2)},
        export_axes={"batch": 2},
        doc="CogVideoX DiT probe: relative change of the timestep embedding (TeaCache)",
    )


def vae_decoder_tile_spec(config: CogVideoXModelConfig) -> ComponentSpec:
    v, tiling, d = config.vae, config.tiling, config.defaults
    s, rt = v.spatial_compression_ratio, v.temporal_compression_ratio
    max_t = (d.max_num_frames - 1) // rt + 1
    h, w = tiling.tile_sample_min_height // s, tiling.tile_sample_min_width // s
    seen: dict[tuple[int, int, int], None] = {}
    for f, hh, ww in _sizes(config):
        plan = plan_tiles(config.latent_shape(1, f, hh, ww), v, tiling, temporal=False)
        for tile in plan.tiles:
            seen.setdefault(tile.latent_shape, None)
    return ComponentSpec(
        name="vae_decoder_tile",
        inputs=(TensorSpec("latents", "float32", (1, v.latent_channels, "latent_frames", "latent_height",
                                                  "latent_width"), "one spatial tile, all latent frames"),),
        outputs=(TensorSpec("video", "float32", (1, v.out_channels, "frames", "height", "width"),
                            "decoded video in about [-1, 1]"),),
        axes={"latent_frames": AxisRange(1, min(3, max_t), max_t), "latent_height": AxisRange(1, h, h),
              "latent_width": AxisRange(1, w, w)},
        buckets=tuple({"latent_frames": t, "latent_height": a, "latent_width": b} for t, a, b in sorted(seen)),
        derived={"frames": ("latent_frames", rt, 1 - rt), "height": ("latent_height", s, 0),
                 "width": ("latent_width", s, 0)},
        export_axes={"latent_frames": min(3, max_t), "latent_height": min(3, h), "latent_width": min(5, w)},
        doc="CogVideoX VAE decoder, one spatial tile (causal conv cache carried across frame batches inside)",
    )


def vae_decoder_batch_spec(config: CogVideoXModelConfig) -> ComponentSpec:
    v, tile = config.vae, vae_decoder_tile_spec(config)
    s = v.spatial_compression_ratio
    h, w = tile.axes["latent_height"].max, tile.axes["latent_width"].max
    max_b = min(FRAME_BATCH + 1, tile.axes["latent_frames"].max)
    derived = {"height": ("latent_height", s, 0), "width": ("latent_width", s, 0)}
    caches_in, caches_out = [], []
    for i, (c, level) in enumerate(conv_cache_layout(v)):
        hh, ww = ("latent_height", "latent_width") if level == 0 else (f"height_x{2 ** level}", f"width_x{2 ** level}")
        if level:
            derived[hh], derived[ww] = ("latent_height", 2 ** level, 0), ("latent_width", 2 ** level, 0)
        shape = (1, c, CACHE_FRAMES, hh, ww)
        caches_in.append(TensorSpec(f"cache_in_{i:02d}", "float32", shape, f"conv {i}'s last input frames"))
        caches_out.append(TensorSpec(f"cache_out_{i:02d}", "float32", shape, f"conv {i}'s cache for the next batch"))
    return ComponentSpec(
        name="vae_decoder_batch",
        inputs=(TensorSpec("latents", "float32", (1, v.latent_channels, "batch_frames", "latent_height",
                                                  "latent_width"), "one frame batch of one spatial tile"),
                TensorSpec("first", "bool", (1,), "the first batch: pad with the first frame, ignore the caches",
                           "int", 0, 2),
                *caches_in),
        outputs=(TensorSpec("video", "float32", (1, v.out_channels, "video_frames", "height", "width"),
                            "4 t - 3 (t % 2) decoded frames in about [-1, 1]"),
                 *caches_out),
        axes={"batch_frames": AxisRange(1, min(FRAME_BATCH, max_b), max_b), "latent_height": AxisRange(1, h, h),
              "latent_width": AxisRange(1, w, w)},
        derived=derived,
        export_axes={"batch_frames": max_b, "latent_height": min(4, h), "latent_width": min(5, w)},
        doc="CogVideoX VAE decoder, one frame batch of one spatial tile (conv caches in and out)",
    )


def text_encoder_spec(config: CogVideoXModelConfig) -> ComponentSpec:
    n = config.text.max_sequence_length
    return ComponentSpec(
        name="text_encoder",
        inputs=(TensorSpec("prompts", "bytes", ("batch",), "UTF-8 prompts"),
                TensorSpec("prompt_policy", "bytes", (1,), "'truncate' (default) or 'error'")),
        outputs=(TensorSpec("prompt_embeds", "float32", ("batch", "text_length", config.transformer.text_embed_dim),
                            "T5 hidden states (padded to max_sequence_length)"),
                 TensorSpec("attention_mask", "int64", ("batch", "text_length"), "all ones (every token attended)")),
        axes={"batch": AxisRange(1, 1, 2), "text_length": AxisRange(n, n, n)},
        doc="CogVideoX T5 text encoder, tokenizer included",
    )


def specs_for_triton(config: CogVideoXModelConfig) -> dict[str, ComponentSpec]:
    return {"text_encoder": text_encoder_spec(config), "dit": dit_spec(config),
            "vae_decoder": vae_decoder_tile_spec(config), "dit_probe": dit_probe_spec(config)}


def component_specs(config: CogVideoXModelConfig, names=COGVIDEOX_COMPONENTS) -> dict[str, ComponentSpec]:
    makers = {"dit": dit_spec, "vae_decoder_tile": vae_decoder_tile_spec, "vae_decoder_batch": vae_decoder_batch_spec,
              "dit_probe": dit_probe_spec}
    unknown = [n for n in names if n not in makers]
    if unknown:
        from vidtrt.errors import EngineError

        raise EngineError(f"unknown CogVideoX component {unknown[0]!r}; accepted: {list(makers)}")
    return {n: makers[n](config) for n in names}
