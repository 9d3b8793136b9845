"""``vidtrt quantize``: post-training FP8 (e4m3) calibration of the DiT with NVIDIA ModelOpt, and its
quality report.

    vidtrt quantize --model M --out DIR [--prompts FILE] [--calib-size N] [--calib-steps N]

1. The DiT is loaded in float32 and handed to ``mtq.quantize`` (``modelopt.torch.quantization``) with
   :func:`modelopt_config`: every ``nn.Linear`` gets an FP8 input quantizer (per tensor) and weight
   quantizer (per tensor, or per output channel), and every attention module (the DiT's
   :class:`~vidtrt.models.attention.QuantizableAttention` modules: HunyuanVideo's ``JointAttention``,
   ``SingleAttention``, ``RefinerAttention``, CogVideoX's ``JointAttention``; registered with ModelOpt here)
   FP8 quantizers on the BMM inputs q, k, v and the softmax output, as ModelOpt's diffusers example does with
   MHA quantization. Convolutional patch embeddings stay in full precision. Calibration (``algorithm: max``)
   runs real generations through the model family's own sampling loop -- text encoder, seeded noise, the
   scheduler's own timesteps for ``calib_steps`` steps, and CFG where the family's defaults have it on
   (CogVideoX: one batched [uncond; cond] DiT pass per step) -- for ``calib_size`` prompts (built in, or
   ``--prompts FILE``); the VAE is not needed for it.
2. The calibrated amax values are written as a state folder (:mod:`vidtrt.source.quant_state`).
3. The quality report loads the state into our own fake-quant DiT (:mod:`vidtrt.models.fp8`, what the
   FP8 ONNX holds) and, per prompt, follows the unquantized trajectory: at every step the velocity of
   the FP8 DiT on the same latents is compared with the unquantized one (cosine, relative error
   ``||v8 - v|| / ||v||``); then the FP8 pipeline generates on its own and the PSNR of its frames vs the
   unquantized pipeline's is measured (scikit-image). Written to ``DIR/quality.json`` and into the state.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vidtrt.errors import ConfigError, VidtrtError, one_line
from vidtrt.models.attention import ATTENTION_QUANTIZERS, QuantizableAttention
from vidtrt.models.fp8 import FP8_E4M3_MAX, LINEAR_QUANTIZERS, fp8_disabled
from vidtrt.source.model_source import ModelSource
from vidtrt.source.quant_state import QUALITY_FILE, QuantState, write_quant_state

# Built-in calibration prompts: varied subjects, motion, lighting and styles (ModelOpt's examples
# calibrate on a few dozen captions; the first --calib-size are used).
BUILTIN_PROMPTS = (
    "a cat walks on the grass, realistic style",
    "a drone shot flying over a snowy mountain range at sunrise",
    "close-up of raindrops falling on a red umbrella in a busy city street at night",
    "an astronaut riding a horse on the moon, cinematic lighting",
    "a chef chopping vegetables quickly in a bright kitchen",
    "waves crashing against black rocks, slow motion, overcast sky",
    "a cartoon fox dancing in a forest, vivid colors, 2D animation",
    "timelapse of clouds moving over a desert with long shadows",
    "a golden retriever catching a frisbee in a park, shallow depth of field",
    "neon signs flickering in a rainy alley, cyberpunk style",
    "an old man playing chess in autumn leaves, warm light",
    "a hummingbird hovering near a purple flower, macro shot",
)


class QuantizeError(VidtrtError):
    """Calibration cannot run as asked (bad settings, ModelOpt missing, a quantizer never calibrated)."""


@dataclass(frozen=True)
class FP8QuantConfig:
    """What is quantized and how (in the spirit of ModelOpt's example configs).

    ``weight_per_channel``: one weight scale per output channel (axis 0) instead of one per tensor.
    ``quantize_attention``: FP8 q, k, v and softmax output. ``softmax_amax``: fixed amax of the softmax
    output (1.0: the probabilities' bound, what ModelOpt's FP8 MHA export and TensorRT's fused FP8
    attention use); None = calibrated. ``calib_size`` prompts x ``calib_steps`` denoising steps at
    ``height`` x ``width`` x ``num_frames`` (None: the model's defaults). ``seed``: prompt i uses seed + i.
    """

    weight_per_channel: bool = False
    quantize_attention: bool = True
    softmax_amax: float | None = 1.0
    calib_size: int = 4
    calib_steps: int = 10
    height: int | None = None
    width: int | None = None
    num_frames: int | None = None
    seed: int = 0
    algorithm: str = "max"
    num_bits: tuple[int, int] = (4, 3)  # e4m3

    def validate(self) -> FP8QuantConfig:
        if not isinstance(self.calib_size, int) or self.calib_size < 1:
            raise ConfigError(f"invalid --calib-size {self.calib_size!r}: accepted an integer >= 1")
        if not isinstance(self.calib_steps, int) or not 1 <= self.calib_steps <= 1000:
            raise ConfigError(f"invalid --calib-steps {self.calib_steps!r}: accepted an integer in [1, 1000]")
        if self.softmax_amax is not None and not (0 < self.softmax_amax <= 1):
            raise ConfigError(f"invalid softmax_amax {self.softmax_amax!r}: accepted (0, 1] or None (calibrated)")
        if self.algorithm != "max":
            raise ConfigError(f"invalid algorithm {self.algorithm!r}: accepted 'max'")
        if tuple(self.num_bits) != (4, 3):
            raise ConfigError(f"invalid num_bits {self.num_bits!r}: accepted (4, 3) (FP8 e4m3)")
        return self

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["num_bits"] = list(self.num_bits)
        d["format"] = "fp8_e4m3"
        d["fp8_max"] = FP8_E4M3_MAX
        d["scale"] = "amax / 448 per tensor" + (" (weights per output channel)" if self.weight_per_channel else "")
        return d


def modelopt_config(cfg: FP8QuantConfig) -> dict:
    """The ``mtq.quantize`` config: deny all, then FP8 on nn.Linear inputs/weights and attention BMM inputs."""
    fp8 = {"num_bits": tuple(cfg.num_bits), "axis": None}
    entries: list[dict] = [
        {"quantizer_name": "*", "enable": False},
        {"quantizer_name": "*weight_quantizer", "parent_class": "nn.Linear",
         "cfg": {**fp8, "axis": 0 if cfg.weight_per_channel else None}},
        {"quantizer_name": "*input_quantizer", "parent_class": "nn.Linear", "cfg": dict(fp8)},
    ]
    if cfg.quantize_attention:
        entries += [{"quantizer_name": f"*{name}", "cfg": dict(fp8)} for name in ATTENTION_QUANTIZERS]
    return {"quant_cfg": entries, "algorithm": cfg.algorithm}


def _import_modelopt():
    import warnings

    try:
        with warnings.catch_warnings():  # "transformers X is not tested with modelopt": not used for our DiT
            warnings.simplefilter("ignore")
            import modelopt.torch.quantization as mtq
    except ImportError as e:
        raise QuantizeError("vidtrt quantize needs NVIDIA ModelOpt: pip install 'vidtrt[quantize]' "
                            f"(nvidia-modelopt; {one_line(e)})") from None
    return mtq


def register_attention_with_modelopt(model: torch.nn.Module | None = None) -> None:
    """Register our attention modules with ModelOpt: converted, they carry q / k / v / softmax
    TensorQuantizers that :meth:`QuantizableAttention.attend` feeds (idempotent). ``model``: register the
    :class:`QuantizableAttention` classes it holds (any family); None: those of both families' DiTs."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from modelopt.torch.quantization.nn import QuantModuleRegistry, TensorQuantizer
        from modelopt.torch.quantization.nn.modules.quant_module import QuantInputBase, QuantModule

    if model is None:
        from vidtrt.models import cogvideox_transformer, transformer

        classes = {transformer.JointAttention, transformer.SingleAttention, transformer.RefinerAttention,
                   cogvideox_transformer.JointAttention}
    else:
        classes = {type(m) for m in model.modules() if isinstance(m, QuantizableAttention)}

    class _QuantVidtrtAttention(QuantModule):
        def _setup(self):
            for name in ATTENTION_QUANTIZERS:
                self._register_temp_attribute(name, TensorQuantizer(QuantInputBase.default_quant_desc_input))

    for cls in sorted(classes, key=lambda c: f"{c.__module__}.{c.__qualname__}"):
        if QuantModuleRegistry.get(cls) is None:  # two families both have a JointAttention: qualified names
            QuantModuleRegistry.register({cls: f"{cls.__module__}.{cls.__qualname__}"})(_QuantVidtrtAttention)


def read_prompts(path: str | Path | None, count: int) -> list[str]:
    """``count`` prompts: the first lines of ``path`` (blank lines and ``#`` comments skipped), or the
    built-in set; ConfigError when there are fewer."""
    if path is None:
        prompts = list(BUILTIN_PROMPTS)
        where = "the built-in set"
    else:
        try:
            text = Path(path).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"cannot read --prompts {path}: {one_line(e)}") from None
        prompts = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        where = str(path)
    if len(prompts) < count:
        raise ConfigError(f"--calib-size {count} needs {count} prompts; {where} has {len(prompts)}")
    return prompts[:count]


def _requests(source: ModelSource, cfg: FP8QuantConfig, prompts: Sequence[str], seed_offset: int = 0):
    from vidtrt.config.request import GenerationRequest

    return [GenerationRequest(prompt=p, height=cfg.height, width=cfg.width, num_frames=cfg.num_frames,
                              num_inference_steps=cfg.calib_steps, seed=cfg.seed + seed_offset + i
                              ).validate(source.config)
            for i, p in enumerate(prompts)]


# ------------------------------------------------------------------------------------------ calibration
def calibrate(source: ModelSource, cfg: FP8QuantConfig, prompts: Sequence[str],
              log: Callable[[str], None] | None = None, text_encoder=None) -> tuple[dict[str, torch.Tensor], dict]:
    """ModelOpt max calibration of ``source``'s DiT over ``prompts`` (see the module docstring).

    Returns (amax by quantizer name, calibration record). Requests are validated before any weight
    loads (InvalidRequestError for a bad size)."""
    cfg = cfg.validate()
    requests = _requests(source, cfg, prompts)
    mtq = _import_modelopt()
    from vidtrt.config.components import Components

    denoise, TorchDenoiser = source.family.load("sampler"), source.family.load("torch_denoiser")
    text_encoder = text_encoder or source.load_text_encoder()
    dit = source.load_transformer(torch.float32)
    register_attention_with_modelopt(dit)
    components = Components(encode_text=text_encoder, dit=TorchDenoiser(dit), decode_tile=None)
    t0 = time.perf_counter()

    def forward_loop(model) -> None:
        components.dit = TorchDenoiser(model)
        for i, r in enumerate(requests):
            denoise(r, source.config, components)
            if log:
                log(f"calibration {i + 1}/{len(requests)}: {r.num_inference_steps} steps, "
                    f"{r.width}x{r.height}x{r.num_frames} ({time.perf_counter() - t0:.1f}s)")

    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = mtq.quantize(dit, modelopt_config(cfg), forward_loop)
    amax = collect_amax(model, cfg)
    r0 = requests[0]
    record = {"prompts": list(prompts), "steps": cfg.calib_steps, "height": r0.height, "width": r0.width,
              "num_frames": r0.num_frames, "seeds": [r.seed for r in requests], "flow_shift": r0.flow_shift,
              "embedded_guidance_scale": r0.embedded_guidance_scale, "true_cfg_scale": r0.true_cfg_scale,
              "use_dynamic_cfg": r0.use_dynamic_cfg, "algorithm": cfg.algorithm,
              "seconds": round(time.perf_counter() - t0, 3), "quantizers": len(amax)}
    del model, dit
    return amax, record


def collect_amax(model: torch.nn.Module, cfg: FP8QuantConfig) -> dict[str, torch.Tensor]:
    """The amax of every quantizer of a ModelOpt-calibrated DiT, by vidtrt's names (float32, scalar or
    [C]). Without ``quantize_attention`` the attention quantizers are left out (Linear layers only);
    with a fixed ``softmax_amax`` the softmax quantizers get that value."""
    out: dict[str, torch.Tensor] = {}
    for path, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            names = LINEAR_QUANTIZERS
        elif isinstance(module, QuantizableAttention) and cfg.quantize_attention:
            names = ATTENTION_QUANTIZERS
        else:
            continue
        for name in names:
            q = getattr(module, name, None)
            key = f"{path}.{name}"
            if name == "softmax_quantizer" and cfg.softmax_amax is not None:
                out[key] = torch.tensor(float(cfg.softmax_amax))
                continue
            amax = getattr(q, "amax", None)
            if q is None or amax is None:
                raise QuantizeError(f"quantizer {key} was never calibrated (the calibration forward did not reach "
                                    "it); check the model and the calibration settings")
            out[key] = amax.detach().to("cpu", torch.float32).reshape(-1 if amax.numel() > 1 else ())
    return out


# ------------------------------------------------------------------------------------------ quality
class _StepCompare:
    """A Denoiser returning the unquantized velocity, recording the FP8 one on the same inputs."""

    def __init__(self, module: torch.nn.Module, denoiser_cls):
        self.module, self.denoiser = module, denoiser_cls(module)
        self.cosine: list[float] = []
        self.rel_err: list[float] = []

    def __call__(self, latents, timestep, text, guidance):
        v8 = self.denoiser(latents, timestep, text, guidance).double().flatten()
        with fp8_disabled(self.module):
            v = self.denoiser(latents, timestep, text, guidance)
        ref = v.double().flatten()
        self.cosine.append(float(torch.nn.functional.cosine_similarity(v8, ref, dim=0)))
        self.rel_err.append(float((v8 - ref).norm() / ref.norm().clamp_min(1e-30)))
        return v


def _psnr(ref: np.ndarray, test: np.ndarray) -> float | None:
    """PSNR in dB of uint8 frames (None when identical: infinite)."""
    from skimage.metrics import peak_signal_noise_ratio

    if np.array_equal(ref, test):
        return None
    return float(peak_signal_noise_ratio(ref, test, data_range=255))


def quality_report(source: ModelSource, state: QuantState, prompts: Sequence[str], cfg: FP8QuantConfig,
                   log: Callable[[str], None] | None = None, text_encoder=None) -> dict:
    """Per-step velocity cosine / relative error (teacher-forced on the unquantized trajectory) and final
    frame PSNR (each pipeline on its own trajectory), per prompt, with seeds other than calibration's."""
    from vidtrt.config.components import Components
    from vidtrt.runtime.orchestrator import decode_latents
    from vidtrt.runtime.pipeline import TorchTileDecoder

    denoise, TorchDenoiser = source.family.load("sampler"), source.family.load("torch_denoiser")

    cfg = cfg.validate()
    requests = _requests(source, cfg, prompts, seed_offset=1000)
    text_encoder = text_encoder or source.load_text_encoder()
    dit = state.apply(source.load_transformer(torch.float32))
    decoder = TorchTileDecoder(source.load_vae_decoder(torch.float32))
    per_prompt = []
    for r in requests:
        compare = _StepCompare(dit, TorchDenoiser)
        comps = Components(encode_text=text_encoder, dit=compare, decode_tile=decoder)
        with torch.inference_mode():
            ref_frames = decode_latents(denoise(r, source.config, comps), source.config, comps)
            comps.dit = TorchDenoiser(dit)
            fp8_frames = decode_latents(denoise(r, source.config, comps), source.config, comps)
        psnr = _psnr(ref_frames, fp8_frames)
        per_prompt.append({"prompt": r.prompt, "seed": r.seed, "cosine": compare.cosine, "rel_err": compare.rel_err,
                           "psnr_db": psnr})
        if log:
            log(f"quality {len(per_prompt)}/{len(requests)}: min cosine {min(compare.cosine):.5f}, "
                f"PSNR {'inf' if psnr is None else f'{psnr:.2f}'} dB")
    steps = len(per_prompt[0]["cosine"]) if per_prompt else 0
    per_step = [{"step": i + 1,
                 "cosine_mean": float(np.mean([p["cosine"][i] for p in per_prompt])),
                 "cosine_min": float(np.min([p["cosine"][i] for p in per_prompt])),
                 "rel_err_mean": float(np.mean([p["rel_err"][i] for p in per_prompt])),
                 "rel_err_max": float(np.max([p["rel_err"][i] for p in per_prompt]))} for i in range(steps)]
    finite = [p["psnr_db"] for p in per_prompt if p["psnr_db"] is not None]
    r0 = requests[0] if requests else None
    return {
        "model": source.config.name, "steps": steps,
        "size": None if r0 is None else {"height": r0.height, "width": r0.width, "num_frames": r0.num_frames},
        "reference": "unquantized float32 DiT, same latents per step (velocity); own trajectory (frames)",
        "per_step": per_step, "per_prompt": per_prompt,
        "summary": {
            "cosine_min": min((s["cosine_min"] for s in per_step), default=None),
            "cosine_mean": float(np.mean([s["cosine_mean"] for s in per_step])) if per_step else None,
            "rel_err_max": max((s["rel_err_max"] for s in per_step), default=None),
            "rel_err_mean": float(np.mean([s["rel_err_mean"] for s in per_step])) if per_step else None,
            "psnr_db_min": min(finite) if finite else None,
            "psnr_db_mean": float(np.mean(finite)) if finite else None,
            "psnr_identical_prompts": len(per_prompt) - len(finite),
        },
    }


def format_quality(report: dict) -> str:
    """The report as a text table: one row per step, then PSNR per prompt and the summary."""
    lines = [f"FP8 quality vs unquantized ({report['model']}, {report['steps']} steps, "
             f"{len(report['per_prompt'])} prompt(s))",
             f"{'step':>4}  {'cosine mean':>11}  {'cosine min':>10}  {'rel err mean':>12}  {'rel err max':>11}"]
    for s in report["per_step"]:
        lines.append(f"{s['step']:>4}  {s['cosine_mean']:>11.6f}  {s['cosine_min']:>10.6f}  "
                     f"{s['rel_err_mean']:>12.4e}  {s['rel_err_max']:>11.4e}")
    for i, p in enumerate(report["per_prompt"]):
        psnr = "inf" if p["psnr_db"] is None else f"{p['psnr_db']:.2f}"
        lines.append(f"prompt {i + 1} (seed {p['seed']}): final frames PSNR {psnr} dB  {p['prompt'][:48]!r}")
    s = report["summary"]
    if s["cosine_min"] is not None:
        psnr = "inf" if s["psnr_db_min"] is None else f"{s['psnr_db_min']:.2f}"
        lines.append(f"summary: velocity cosine min {s['cosine_min']:.6f}, rel err max {s['rel_err_max']:.4e}, "
                     f"PSNR min {psnr} dB")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------ the command
def quantize_model(model: str | Path | ModelSource, out: str | Path, cfg: FP8QuantConfig | None = None,
                   prompts_file: str | Path | None = None, quality_prompts: int | None = None,
                   log: Callable[[str], None] | None = print) -> QuantState:
    """Calibrate, write the state into ``out``, measure and record the quality; returns the state loaded
    back (checked against the model). ``quality_prompts``: prompts of the report (None: all, 0: none)."""
    cfg = (cfg or FP8QuantConfig()).validate()
    source = ModelSource.open(model)
    prompts = read_prompts(prompts_file, cfg.calib_size)
    _requests(source, cfg, prompts)  # a bad size fails here, before any weight loads
    n_quality = len(prompts) if quality_prompts is None else quality_prompts
    if not isinstance(n_quality, int) or not 0 <= n_quality <= len(prompts):
        raise ConfigError(f"invalid --quality-prompts {quality_prompts!r}: accepted 0..{len(prompts)}")
    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out folder {out}: {one_line(e)}") from None
    text_encoder = source.load_text_encoder()
    amax, calibration = calibrate(source, cfg, prompts, log, text_encoder)
    from importlib.metadata import version

    mo_version = version("nvidia-modelopt")
    write_quant_state(out, source, amax, cfg.to_dict(), calibration, modelopt_version=mo_version)
    state = QuantState.load(out, source)
    if n_quality:
        report = quality_report(source, state, prompts[:n_quality], cfg, log, text_encoder)
        (out / QUALITY_FILE).write_text(json.dumps(report, indent=1) + "\n")
        write_quant_state(out, source, amax, cfg.to_dict(), calibration, quality=report["summary"],
                          modelopt_version=mo_version)
        state = QuantState.load(out, source)
        if log:
            log(format_quality(report))
    return state


def quantize_main(args: argparse.Namespace) -> int:
    cfg = FP8QuantConfig(weight_per_channel=args.per_channel_weights, quantize_attention=not args.no_attention,
                         softmax_amax=None if args.calibrate_softmax else 1.0, calib_size=args.calib_size,
                         calib_steps=args.calib_steps, height=args.height, width=args.width,
                         num_frames=args.frames, seed=args.seed)
    state = quantize_model(args.model, args.out, cfg, args.prompts, args.quality_prompts,
                           log=lambda line: print(line, flush=True))
    print(f"wrote {state.folder} ({len(state.amax)} quantizers, model {args.model})")
    return 0

