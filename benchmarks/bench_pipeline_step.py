"""Seconds per denoising step: our in-process pipeline vs diffusers' HunyuanVideoPipeline, same weights.

A mid-size random DiT (default 8 heads x 64, 2 dual + 4 single blocks, text 256 / pooled 64) is saved by
diffusers in its own layout and loaded by both sides from that folder. Both pipelines get the same text
embeddings (prompt_embeds / mask / pooled given directly, so text encoding is not timed), the same
latent size (default 16 x 5 x 16 x 24 = 17 frames at 128 x 192), seed, steps and guidance. A step's time
is the interval between two step-end callbacks (ours: progress events; diffusers: callback_on_step_end);
the first interval is a warm-up and is dropped. Runs alternate ours / diffusers to spread machine noise.

Also: one DiT forward at batch 2 with padded text of different lengths (diffusers builds a dense
attention mask; we mask keys by length), and batch 1 without padding (pure compute, no masking).

The last line is the ratio ours / diffusers for the pipeline step (< 1: ours is faster).

    python benchmarks/bench_pipeline_step.py [--steps 6] [--repeats 3] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def write_folder(folder: Path, dit_kwargs: dict) -> None:
    """A diffusers-layout folder written by diffusers (transformer, a small VAE, scheduler)."""
    import diffusers

    from vidtrt.testing import randomize_parameters

    torch.manual_seed(0)
    dit = diffusers.HunyuanVideoTransformer3DModel(**dit_kwargs)
    randomize_parameters(dit, 1)
    dit.save_pretrained(folder / "transformer")
    vae = diffusers.AutoencoderKLHunyuanVideo(block_out_channels=(8, 8, 16, 16), layers_per_block=1,
                                              norm_num_groups=4)
    vae.save_pretrained(folder / "vae")
    diffusers.FlowMatchEulerDiscreteScheduler(shift=7.0).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "HunyuanVideoPipeline"}))


def step_times(stamps: list[float]) -> list[float]:
    """Durations between consecutive step ends, without the first (warm-up) interval."""
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)][1:]


def fmt(times: list[float]) -> str:
    return "[" + ", ".join(f"{t:.3f}" for t in times) + "]"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=64)
    ap.add_argument("--dual", type=int, default=2)
    ap.add_argument("--single", type=int, default=4)
    ap.add_argument("--text-dim", type=int, default=256)
    ap.add_argument("--pooled-dim", type=int, default=64)
    ap.add_argument("--frames", type=int, default=17, help="video frames (latent frames = (f - 1) / 4 + 1)")
    ap.add_argument("--height", type=int, default=128)
    ap.add_argument("--width", type=int, default=192)
    ap.add_argument("--text-len", type=int, default=64, help="padded text length")
    ap.add_argument("--valid", type=int, default=40, help="valid text tokens of the prompt (batch 1)")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=3, help="pipeline runs per side (alternating)")
    ap.add_argument("--forwards", type=int, default=5, help="timed DiT forwards per side for the module checks")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: least disturbed by other load on a shared CPU; 0 = torch's)")
    args = ap.parse_args()

    import diffusers

    from vidtrt.config.components import Components, TextEmbeddings
    from vidtrt.config.request import GenerationRequest
    from vidtrt.runtime.orchestrator import denoise
    from vidtrt.runtime.pipeline import TorchDenoiser
    from vidtrt.source.model_source import ModelSource

    if args.threads:
        torch.set_num_threads(args.threads)
    hd = args.head_dim
    rope = (hd - 2 * (3 * hd // 8), 3 * hd // 8, 3 * hd // 8) if hd != 128 else (16, 56, 56)
    dit_kwargs = dict(num_attention_heads=args.heads, attention_head_dim=hd, num_layers=args.dual,
                      num_single_layers=args.single, num_refiner_layers=2, text_embed_dim=args.text_dim,
                      pooled_projection_dim=args.pooled_dim, rope_axes_dim=rope)
    tmp = tempfile.TemporaryDirectory(prefix="bench-step-")
    folder = Path(tmp.name)
    write_folder(folder, dit_kwargs)

    source = ModelSource.open(folder)
    config = source.config
    ours = source.load_transformer()
    ref = diffusers.HunyuanVideoTransformer3DModel.from_pretrained(folder / "transformer").eval()
    vae = diffusers.AutoencoderKLHunyuanVideo.from_pretrained(folder / "vae")
    scheduler = diffusers.FlowMatchEulerDiscreteScheduler.from_pretrained(folder / "scheduler")
    ref_pipe = diffusers.HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=ref, vae=vae,
                                              scheduler=scheduler, text_encoder_2=None, tokenizer_2=None)
    ref_pipe.set_progress_bar_config(disable=True)

    gen = torch.Generator().manual_seed(0)
    embeds = torch.randn(1, args.text_len, args.text_dim, generator=gen)
    mask = torch.zeros(1, args.text_len, dtype=torch.int64)
    mask[:, : args.valid] = 1
    pooled = torch.randn(1, args.pooled_dim, generator=gen)
    text = TextEmbeddings(prompt_embeds=embeds, attention_mask=mask, pooled=pooled)
    components = Components(encode_text=lambda prompts, policy="truncate": text, dit=TorchDenoiser(ours),
                            decode_tile=None)
    request = GenerationRequest(prompt="benchmark", height=args.height, width=args.width, num_frames=args.frames,
                                num_inference_steps=args.steps, seed=0, embedded_guidance_scale=6.0,
                                flow_shift=7.0).validate(config)
    latent = config.latent_shape(1, args.frames, args.height, args.width)
    n_img = latent[2] * (latent[3] // 2) * (latent[4] // 2)
    n_params = sum(p.numel() for p in ours.parameters())

    def run_ours() -> tuple[list[float], torch.Tensor]:
        stamps: list[float] = []
        out = denoise(request, config, components, progress=lambda e: stamps.append(time.perf_counter()))
        return step_times(stamps), out

    def run_ref() -> tuple[list[float], torch.Tensor]:
        stamps: list[float] = []

        def on_step(pipe, i, t, kw):
            stamps.append(time.perf_counter())
            return {}

        with torch.inference_mode():
            out = ref_pipe(prompt_embeds=embeds, prompt_attention_mask=mask, pooled_prompt_embeds=pooled,
                           height=args.height, width=args.width, num_frames=args.frames,
                           num_inference_steps=args.steps, guidance_scale=6.0,
                           generator=torch.Generator().manual_seed(0), output_type="latent",
                           callback_on_step_end=on_step).frames
        return step_times(stamps), out

    print(f"torch {torch.__version__}, diffusers {diffusers.__version__}, threads {torch.get_num_threads()}, "
          f"python {sys.version.split()[0]}")
    print(f"DiT: {args.heads} heads x {hd}, {args.dual} dual + {args.single} single blocks, "
          f"{n_params / 1e6:.1f} M params, fp32; latent {list(latent)} -> {n_img} image tokens + text "
          f"{args.valid}/{args.text_len} valid")
    ours_t: list[float] = []
    ref_t: list[float] = []
    for r in range(args.repeats):
        t_o, lat_o = run_ours()
        t_r, lat_r = run_ref()
        ours_t += t_o
        ref_t += t_r
        err = float((lat_o - lat_r.float()).norm() / lat_r.float().norm())
        print(f"run {r}: ours {fmt(t_o)} s, diffusers {fmt(t_r)} s, "
              f"final latents rel err {err:.2e}")

    # ------------------------------------------------------------ module level: one DiT forward
    def forward_times(inputs, n) -> tuple[list[float], list[float]]:
        """Alternating ours / diffusers forwards (after one warm-up each), so load on the box hits both."""
        t_ours, t_ref = [], []
        with torch.inference_mode():
            ours(**inputs)
            ref(**inputs, return_dict=False)
            for _ in range(n):
                t0 = time.perf_counter()
                ours(**inputs)
                t1 = time.perf_counter()
                ref(**inputs, return_dict=False)
                t_ours.append(t1 - t0)
                t_ref.append(time.perf_counter() - t1)
        return t_ours, t_ref

    def inputs_for(batch: int, lengths: list[int]) -> dict:
        g = torch.Generator().manual_seed(1)
        m = torch.zeros(batch, args.text_len, dtype=torch.int64)
        for i, n in enumerate(lengths):
            m[i, :n] = 1
        return dict(hidden_states=torch.randn(batch, *latent[1:], generator=g),
                    timestep=torch.full((batch,), 500.0),
                    encoder_hidden_states=torch.randn(batch, args.text_len, args.text_dim, generator=g),
                    encoder_attention_mask=m, pooled_projections=torch.randn(batch, args.pooled_dim, generator=g),
                    guidance=torch.full((batch,), 6000.0))

    for label, batch, lengths in (("batch 2, padded text", 2, [args.text_len, args.text_len // 4]),
                                  ("batch 1, no padding", 1, [args.text_len])):
        x = inputs_for(batch, lengths)
        t_o, t_r = forward_times(x, args.forwards)
        with torch.inference_mode():
            want = ref(**x, return_dict=False)[0]
            err = float((ours(**x) - want).norm() / want.norm())
        mo, mr = statistics.median(t_o), statistics.median(t_r)
        print(f"DiT forward, {label} (valid {lengths}): ours median {mo:.3f} s (min {min(t_o):.3f}), diffusers "
              f"median {mr:.3f} s (min {min(t_r):.3f}), ratio {mo / mr:.3f} (of mins {min(t_o) / min(t_r):.3f}), "
              f"rel err {err:.1e}")

    mo, mr = statistics.median(ours_t), statistics.median(ref_t)
    print(f"pipeline step, batch 1 ({len(ours_t)} warm steps per side): ours median {mo:.3f} s "
          f"(min {min(ours_t):.3f}), diffusers median {mr:.3f} s (min {min(ref_t):.3f})")
    print(f"ratio ours/diffusers (seconds per denoising step, median; of mins {min(ours_t) / min(ref_t):.3f}): "
          f"{mo / mr:.3f}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
