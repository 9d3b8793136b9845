"""The CogVideoX presets pinned to their sources (vidtrt/config/cogvideox_config.py says which):

- ../shared/reference/cogvideox.md (heads x head dim, layers, positions, default video, frame rules, fps);
- the published checkpoint configs as the upstream THUDM/CogVideo repository writes them
  (``tools/convert_weight_sat2hf.py``: 2B / 5B heads, layers, RoPE, VAE ``scaling_factor`` 1.15258426 / 0.7,
  ``snr_shift_scale`` 3.0 / 1.0, the scheduler fields; 1.5: ``patch_size_t`` 2, ``patch_bias`` false,
  ``sample_frames`` 81, VAE ``invert_scale_latents``) and its SAT configs (``sat/configs/cogvideox_5b.yaml``,
  ``cogvideox1.5_5b.yaml``: latent 60 x 90 / 300 x 300, ``time_embed_dim`` 512, DPM-Solver++ sampler, CFG 6);
  1.5's 300 x 300 RoPE grid confirmed by diffusers' maintainers (huggingface/finetrainers#121);
- diffusers 0.42's own defaults (``CogVideoXTransformer3DModel`` = the 2B transformer, ``AutoencoderKLCogVideoX``
  = the 2B VAE, the schedulers), read from the installed classes' signatures.
"""

from __future__ import annotations

import dataclasses
import inspect

import pytest

from vidtrt.config.cogvideox_config import (
    CogVideoXSchedulerConfig,
    CogVideoXTransformerConfig,
    CogVideoXVAEConfig,
    cogvideox15_5b_config,
    cogvideox_2b_config,
    cogvideox_5b_config,
)

# name: (heads, head_dim, layers, rope, patch_size_t, patch_bias, sample (frames, h, w), VAE scale, invert,
#        solver, snr shift, default (w, h, frames, fps), frames rule (step, min, max))
REFERENCE = {
    "cogvideox-2b": (30, 64, 30, False, None, True, (49, 60, 90), 1.15258426, False, "ddim", 3.0,
                     (720, 480, 49, 8), (8, 1, 49)),
    "cogvideox-5b": (48, 64, 42, True, None, True, (49, 60, 90), 0.7, False, "dpm", 1.0,
                     (720, 480, 49, 8), (8, 1, 49)),
    "cogvideox1.5-5b": (48, 64, 42, True, 2, False, (81, 300, 300), 0.7, True, "dpm", 1.0,
                        (1360, 768, 81, 16), (16, 49, 161)),
}
PRESETS = {"cogvideox-2b": cogvideox_2b_config, "cogvideox-5b": cogvideox_5b_config,
           "cogvideox1.5-5b": cogvideox15_5b_config}


@pytest.mark.parametrize("name", list(REFERENCE))
def test_preset_values_are_the_references(name):
    (heads, head_dim, layers, rope, pt, bias, sample, scale, invert, solver, shift, video, frames) = REFERENCE[name]
    c = PRESETS[name]()
    t, v, s, d = c.transformer, c.vae, c.scheduler, c.defaults
    assert c.name == name
    assert (t.num_attention_heads, t.attention_head_dim, t.num_layers) == (heads, head_dim, layers)
    assert t.use_rotary_positional_embeddings is rope and t.use_learned_positional_embeddings is False
    assert (t.patch_size, t.patch_size_t, t.patch_bias) == (2, pt, bias)
    assert (t.sample_frames, t.sample_height, t.sample_width) == sample
    assert (t.in_channels, t.out_channels, t.text_embed_dim, t.time_embed_dim) == (16, 16, 4096, 512)
    assert (t.max_text_seq_length, c.text.max_sequence_length, t.ofs_embed_dim) == (226, 226, None)
    assert (t.norm_eps, t.spatial_interpolation_scale, t.temporal_interpolation_scale) == (1e-5, 1.875, 1.0)
    assert (v.scaling_factor, v.invert_scale_latents) == (scale, invert)
    assert (v.block_out_channels, v.latent_channels, v.layers_per_block, v.temporal_compression_ratio,
            v.spatial_compression_ratio, v.sample_height, v.sample_width) == ((128, 256, 256, 512), 16, 3, 4, 8,
                                                                            480, 720)
    assert (s.solver, s.snr_shift_scale) == (solver, shift)
    assert (s.beta_start, s.beta_end, s.beta_schedule, s.prediction_type, s.timestep_spacing,
            s.rescale_betas_zero_snr, s.set_alpha_to_one, s.num_train_timesteps, s.steps_offset) == (
        0.00085, 0.012, "scaled_linear", "v_prediction", "trailing", True, True, 1000, 0)
    assert (d.width, d.height, d.num_frames, d.fps) == video
    assert (d.frame_step, d.min_num_frames, d.max_num_frames) == frames
    assert (d.num_inference_steps, d.true_cfg_scale, d.negative_prompt, d.use_dynamic_cfg) == (50, 6.0, "", False)


def _defaults(cls) -> dict:
    return {k: p.default for k, p in inspect.signature(cls.__init__).parameters.items()
            if p.default is not inspect.Parameter.empty}


def test_2b_is_diffusers_defaults():
    """diffusers' CogVideoXTransformer3DModel / AutoencoderKLCogVideoX defaults are CogVideoX-2B's: our field
    defaults (the 2B preset) equal them field by field; the schedulers' shared fields too (ours: trailing
    spacing, zero-SNR betas, v-prediction, as every published scheduler_config.json)."""
    diffusers = pytest.importorskip("diffusers")
    theirs = _defaults(diffusers.CogVideoXTransformer3DModel)
    ours = dataclasses.asdict(CogVideoXTransformerConfig())
    assert {k: theirs[k] for k in ours} == ours
    theirs = _defaults(diffusers.AutoencoderKLCogVideoX)
    ours = dataclasses.asdict(CogVideoXVAEConfig())
    shared = {k: v for k, v in ours.items() if k in theirs}
    assert len(shared) >= 10
    assert {k: tuple(theirs[k]) if isinstance(theirs[k], (list, tuple)) else theirs[k] for k in shared} == shared
    assert cogvideox_2b_config().transformer == CogVideoXTransformerConfig()
    assert cogvideox_2b_config().vae == CogVideoXVAEConfig()
    for cls in (diffusers.CogVideoXDDIMScheduler, diffusers.CogVideoXDPMScheduler):
        theirs = _defaults(cls)
        for key in ("num_train_timesteps", "beta_start", "beta_end", "beta_schedule", "set_alpha_to_one",
                    "steps_offset", "snr_shift_scale"):
            assert theirs[key] == getattr(CogVideoXSchedulerConfig(), key), (cls.__name__, key)
