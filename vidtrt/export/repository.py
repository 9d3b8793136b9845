"""Writing a Triton model repository from the templates in ``vidtrt/model_repository/`` and the tensor specs.

    vidtrt build --model tiny --engine torch --out build/model_repository

writes one folder per Triton model (``config.pbtxt`` + ``1/model.py``), named with the model family:

- ``hunyuan_video``: the generation model (Python BLS, decoupled: progress per step, then the video);
- ``hunyuan_video_sync``: the same model.py, not decoupled (HTTP ``/infer``, perf_analyzer without
  streaming);
- ``hunyuan_video_text_encoder``, ``hunyuan_video_dit``, ``hunyuan_video_vae_decoder`` and
  ``hunyuan_video_dit_probe`` (TeaCache's signal; left out when ``--artifacts`` has no ``dit_probe`` or the
  TensorRT build made no probe plan, and then ``cache_policy teacache`` is refused per request): Python-backend
  models serving the components on an engine (``torch`` or ``onnxruntime``, see
  :func:`vidtrt.runtime.engine_components.load_component`); with ``--engine tensorrt`` the DiT and the VAE
  decoder are ``tensorrt_plan`` models instead (:mod:`vidtrt.export.tensorrt_build`), the text encoder a
  Python-backend model on torch (bf16, GPU).

Tensor stanzas come from :mod:`vidtrt.config.request_io` (generation model) and
:mod:`vidtrt.serving.component_io` / :mod:`vidtrt.config.specs` (components); nothing is written by hand. Repositories
go to a build directory, never into the templates.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import string
import sys
from pathlib import Path

from vidtrt.config.model_config import PRECISIONS, resolve_precision
from vidtrt.errors import ConfigError, VidtrtError
from vidtrt.paths import REPOSITORY_FILE as MARKER

FAMILY = "hunyuan_video"  # the template folders' prefix (the first family's Triton model names)
ENGINES = ("torch", "onnxruntime", "tensorrt")

COMPONENT_DOCS = {
    "text_encoder": ("Text encoders (Llama hidden states + CLIP pooled) with their tokenizers: prompts -> "
                     "conditioning.", "request (two with true CFG)"),
    "dit": ("HunyuanVideo DiT: one flow-matching velocity per call.", "denoising step (two with true CFG)"),
    "vae_decoder": ("3D causal VAE decoder, one latent tile per call; the tile plan and blending run in the "
                    "generation model (vidtrt.config.tiling).", "tile of the tiled decode"),
    "dit_probe": ("DiT probe: relative L1 change of the first block's modulated input between two steps "
                  "(TeaCache's signal; holds the DiT's embedders and block 0's norm1 only).",
                  "denoising step probed by cache_policy teacache"),
}


class RepositoryError(VidtrtError):
    """The repository cannot be built as asked."""


def templates_dir() -> Path:
    """The Triton model templates: ``$VIDTRT_TEMPLATES``, else ``vidtrt/model_repository`` (package data:
    there in a checkout and in an installed wheel alike)."""
    env = os.environ.get("VIDTRT_TEMPLATES")
    folder = Path(env) if env else Path(__file__).resolve().parents[1] / "model_repository"
    if (folder / FAMILY / "config.pbtxt.in").is_file():
        return folder
    raise RepositoryError(f"model repository templates not found in {str(folder)!r}")


def _render(template_path: Path, **values: object) -> str:
    try:
        return string.Template(template_path.read_text()).substitute({k: str(v) for k, v in values.items()})
    except KeyError as e:
        raise RepositoryError(
            f"template {template_path} uses ${{{e.args[0]}}}, which the builder does not fill") from None




QUANT_SUBDIR = "quant"  # torch fp8 DiT models: the `vidtrt quantize` state, in the version folder


def _family_without_writing(model):
    """The family of ``model`` without materialising an embedded preset's checkpoint (a folder or ModelSource
    is opened: that only reads its config files)."""
    from vidtrt.config.cogvideox_config import COGVIDEOX_PRESETS
    from vidtrt.config.families import FAMILIES
    from vidtrt.config.model_config import EMBEDDED_PRESETS
    from vidtrt.source.model_source import ModelSource

    if isinstance(model, str) and model in EMBEDDED_PRESETS:
        return FAMILIES["cogvideox" if model in COGVIDEOX_PRESETS else "hunyuan_video"]
    return ModelSource.open(model).family


def build_repository(
    model: str | os.PathLike = "tiny",
    out_dir: str | os.PathLike = "build/model_repository",
    engine: str = "torch",
    *,
    artifacts: str | os.PathLike | None = None,
    device: str = "cpu",
    precision: str = "auto",
    dit_instances: int = 1,
    text_encoder_instances: int = 1,
    vae_decoder_instances: int = 1,
    max_concurrent_generations: int = 4,
    max_queue_size: int | None = None,
    sync_model: bool = True,
    sync_instances: int = 1,
    fail_on_guidance: float | None = None,
    overwrite: bool = True,
    quantized: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    timing_cache: str | os.PathLike | None = None,
    trt_profiles: str = "buckets",
    sp_degree: int = 1,
    attention: str | None = None,
) -> Path:
    """Write the repository for ``model`` ('tiny', a checkpoint folder or a ModelSource) to ``out_dir``;
    returns it. Model names come from the model's family (``hunyuan_video``, ``hunyuan_video_dit``, ...).
    The repository is relocatable: the model is recorded in ``vidtrt-repository.json`` (each model
    process rebuilds it from there, see :meth:`vidtrt.source.model_source.ModelSource.from_record`; a checkpoint
    folder moved elsewhere is named by ``$VIDTRT_MODEL_ROOT``), and ``artifacts`` are copied (hard-linked
    where possible) into the component models' version folders, so no host path is written anywhere.

    ``precision``: weights/activations of the torch-engine components: ``fp32``, ``bf16``, ``fp16``,
    ``fp8`` (the DiT's GEMMs and attention in FP8, the rest bf16) or ``auto`` (bf16 on ``cuda``, fp32 on
    ``cpu``); the onnxruntime engine runs the exported fp32 ONNX.
    ``device``: ``cpu`` (instance_group KIND_CPU) or ``cuda`` (KIND_GPU: one instance per GPU listed by
    Triton, the component on that GPU). ``*_instances``: instances per device (each holds its own
    weights, so keep the DiT at 1 on GPUs; on CPU extra instances only help with spare cores).
    ``max_concurrent_generations``: requests the streaming generation model runs at once (threads; each
    waits on the component models). ``max_queue_size``: requests that may wait behind the running ones,
    per generation model (default :data:`vidtrt.config.lifecycle.DEFAULT_MAX_QUEUE`, 16; 0 = no bound); more are
    answered UNAVAILABLE. ``sync_instances``: instances of the non-streaming model (it runs a
    request inside ``execute``, so this is its concurrency; each is a process without weights).
    ``sp_degree``: the DiT model spans that many processes (Ulysses sequence parallelism; one instance,
    rank 0, starting the others as workers; on ``cuda`` GPUs 0 .. N-1; torch engine only).
    ``fail_on_guidance``: test-only; the DiT model fails requests whose
    embedded_guidance_scale equals it. ``overwrite``: replace a repository this function wrote before (never
    a folder it did not write). ``attention``: the torch-engine DiT's attention backend (as ``vidtrt run
    --attention``; default: triton on cuda, sdpa on cpu).

    ``engine="tensorrt"`` (``precision`` bf16 or fp8, ``auto`` = bf16; always on GPUs): TensorRT must import
    (checked before anything is exported or written); the DiT and VAE-tile plans are built in ``work_dir``
    (default ``<out_dir>.tensorrt``) from ``artifacts`` (bf16 / FP8 ONNX) or from a bf16 export made there,
    the FP8 DiT from ``quantized`` when no FP8 ONNX is given; ``timing_cache``, ``trt_profiles``: see
    :class:`vidtrt.export.tensorrt_build.TensorRTBuildConfig` (``profiles``).
    """
    from vidtrt import __version__
    from vidtrt.config import request_io
    from vidtrt.config.lifecycle import DEFAULT_MAX_QUEUE
    from vidtrt.serving.component_io import specs_for_triton
    from vidtrt.source.model_source import ModelSource

    if engine not in ENGINES:
        raise RepositoryError(f"invalid engine {engine!r}: accepted {list(ENGINES)}")
    if device not in ("cpu", "cuda"):
        raise RepositoryError(f"invalid device {device!r}: accepted ['cpu', 'cuda']")
    trt = None
    if engine == "tensorrt":
        from vidtrt.export import tensorrt_build

        precision = "bf16" if precision == "auto" else precision
        if precision not in tensorrt_build.TRT_PRECISIONS:
            raise RepositoryError(f"invalid precision {precision!r} for --engine tensorrt: accepted "
                                  f"{list(tensorrt_build.TRT_PRECISIONS)} (or auto = bf16)")
        tensorrt_build.TensorRTBuildConfig(precision, profiles=trt_profiles).validate()
        if quantized is not None and precision != "fp8":
            raise RepositoryError("--quantized needs --precision fp8")
        tensorrt_build.check_family(_family_without_writing(model))  # a refused family: no install hint
        trt = tensorrt_build.require_tensorrt()  # one line, before anything is exported or written
        device = "cuda"
    elif quantized is not None and (engine != "torch" or precision != "fp8"):
        raise RepositoryError("--quantized needs --precision fp8 with --engine torch (static FP8 scales) or "
                              "tensorrt (the FP8 DiT plan)")
    elif precision not in PRECISIONS:
        raise RepositoryError(f"invalid precision {precision!r}: accepted {list(PRECISIONS)}")
    if engine == "onnxruntime" and precision not in ("auto", "fp32"):
        raise RepositoryError(f"precision {precision!r} needs --engine torch; the {engine} engine runs what "
                              "--artifacts holds (FP8: `vidtrt export --quantized`) (accepted with it: 'auto', "
                              "'fp32')")
    precision = precision if engine == "tensorrt" else resolve_precision(precision, device)
    for name, n in (("dit_instances", dit_instances), ("text_encoder_instances", text_encoder_instances),
                    ("vae_decoder_instances", vae_decoder_instances),
                    ("max_concurrent_generations", max_concurrent_generations), ("sync_instances", sync_instances)):
        if not isinstance(n, int) or n < 1:
            raise RepositoryError(f"invalid {name}={n!r}: accepted an integer >= 1")
    if not isinstance(sp_degree, int) or isinstance(sp_degree, bool) or sp_degree < 1:
        raise RepositoryError(f"invalid sp_degree={sp_degree!r}: accepted an integer >= 1")
    if sp_degree > 1 and engine != "torch":
        raise RepositoryError(f"--sp-degree {sp_degree} needs --engine torch")
    if sp_degree > 1 and dit_instances != 1:
        raise RepositoryError(f"--sp-degree {sp_degree} runs one DiT instance (rank 0 of the group); "
                              f"--dit-instances {dit_instances} is not accepted with it (accepted: 1)")
    max_queue_size = DEFAULT_MAX_QUEUE if max_queue_size is None else max_queue_size
    if not isinstance(max_queue_size, int) or isinstance(max_queue_size, bool) or max_queue_size < 0:
        raise RepositoryError(f"invalid max_queue_size={max_queue_size!r}: accepted an integer >= 0 (0 = no bound)")
    if attention is not None:
        from vidtrt.models.attention import KERNEL_BACKENDS

        if attention not in ("sdpa", *KERNEL_BACKENDS) or engine != "torch":
            raise RepositoryError(f"invalid attention {attention!r}: accepted with engine 'torch' "
                                  f"{['sdpa', *KERNEL_BACKENDS]}")
    if engine == "onnxruntime" and not artifacts:
        raise RepositoryError(f"engine {engine!r} needs --artifacts (the folder `vidtrt export` wrote)")
    if artifacts and not Path(artifacts).is_dir():
        raise RepositoryError(f"artifacts folder not found: {artifacts}")

    # Resolved (and the artifacts checked against it) before anything is replaced, so a bad --model or
    # --artifacts leaves an existing repository as it was.
    source = ModelSource.open(model)
    config = source.config
    if engine == "torch":
        from vidtrt.runtime.pipeline import check_family_choices

        try:
            check_family_choices(source, precision, sp_degree)
        except ConfigError as e:
            raise RepositoryError(str(e)) from None
    specs = specs_for_triton(config)
    artifact_files = _artifact_files(artifacts, source) if artifacts and engine != "tensorrt" else {}
    if quantized is not None and engine == "torch":  # checked against this checkpoint before anything is written
        from vidtrt.source.quant_state import QuantState

        QuantState.load(quantized, source)

    templates = templates_dir()
    out = Path(out_dir).resolve()
    if out == templates.resolve() or templates.resolve() in out.parents:
        raise RepositoryError(f"refusing to build into the templates folder {templates}; use a build directory")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise RepositoryError(f"{out} exists and is not a vidtrt repository; choose an empty or new folder")
        if not overwrite:
            raise RepositoryError(f"{out} exists; pass overwrite=True (--force) to replace it")
    plan_set = None
    if engine == "tensorrt":  # built before the old repository is replaced: a failed build leaves it as it was
        plan_set = tensorrt_build.build_plans(
            source, precision, Path(work_dir) if work_dir else out.with_name(out.name + ".tensorrt"),
            artifacts=artifacts, quantized=quantized, trt=trt,
            config=tensorrt_build.TensorRTBuildConfig(precision, timing_cache=Path(timing_cache) if timing_cache
                                                      else None, profiles=trt_profiles))
    if out.exists() and any(out.iterdir()):
        shutil.rmtree(out)

    family = source.family
    kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
    instances = {"text_encoder": text_encoder_instances, "dit": dit_instances, "vae_decoder": vae_decoder_instances,
                 "dit_probe": 1}
    # The DiT probe is optional: served by the torch engine, from the artifacts' dit_probe, or from a probe plan.
    served = [k for k in family.components if k != "dit_probe" or (
        (plan_set is None or k in plan_set.plans) and (engine != "onnxruntime" or k in artifact_files))]
    common = dict(model=source.ref, fingerprint=source.fingerprint,
                  text_encoder_name=family.component_model("text_encoder"), dit_name=family.component_model("dit"),
                  vae_decoder_name=family.component_model("vae_decoder"), max_concurrent=max_concurrent_generations,
                  dit_probe_name=family.component_model("dit_probe") if "dit_probe" in served else "",
                  max_queue=max_queue_size,
                  fps=config.defaults.fps, stream_name=family.stream_model, sync_name=family.sync_model,
                  sync_instances=sync_instances,
                  dit_sparse="true" if attention is not None and "sta" in attention.split("-") else "false")

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def write(name: str, config_text: str, model_py: Path | None) -> None:
        folder = out / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(config_text)
        if model_py is not None:
            shutil.copyfile(model_py, folder / "1" / "model.py")
        written[name] = str(folder)

    bls_py = templates / FAMILY / "model.py"
    io = request_io.config_io_pbtxt()
    write(family.stream_model, _render(templates / FAMILY / "config.pbtxt.in", name=family.stream_model, io=io,
                                       **common), bls_py)
    if sync_model:
        write(family.sync_model, _render(templates / f"{FAMILY}_sync" / "config.pbtxt.in", name=family.sync_model,
                                         io=io, **common), bls_py)
    from vidtrt.serving.component_io import spec_io_pbtxt

    for key in served:
        doc, per_call = COMPONENT_DOCS[key]
        n = instances[key]
        if plan_set is not None and key in plan_set.plans:
            from vidtrt.runtime.tensorrt_plans import PLAN_FILE, manifest_path

            write(family.component_model(key), tensorrt_build.plan_config_pbtxt(
                templates / "tensorrt_plan" / "config.pbtxt.in", key=key, name=family.component_model(key),
                spec=specs_for_triton(config, sparse_input=False)[key], manifest=plan_set.manifests[key],
                doc=doc, per_call=per_call, count=n,
                model=source.ref, fingerprint=source.fingerprint), None)
            version_dir = out / family.component_model(key) / "1"
            _link_or_copy(plan_set.plans[key], version_dir / PLAN_FILE)
            _link_or_copy(manifest_path(plan_set.plans[key]), manifest_path(version_dir / PLAN_FILE))
            continue
        extra = f'parameters {{ key: "precision" value {{ string_value: "{"bf16" if trt else precision}" }} }}\n'
        if key == "dit" and attention is not None:
            extra += f'parameters {{ key: "attention" value {{ string_value: "{attention}" }} }}\n'
        if key == "dit" and quantized is not None:  # torch fp8: the state's files go into 1/quant
            extra += f'parameters {{ key: "quantized" value {{ string_value: "{QUANT_SUBDIR}" }} }}\n'
        if key == "dit" and fail_on_guidance is not None:
            extra += ('# TEST ONLY: fail requests whose embedded_guidance_scale equals this value.\n'
                     f'parameters {{ key: "fail_on_guidance" value {{ string_value: "{fail_on_guidance:g}" }} }}\n')
        instances_doc = (f"{n} instance(s) per {'GPU' if device == 'cuda' else 'server'}; calls from concurrent "
                         "generations queue here and run one at a time per instance.")
        group_kind = kind
        if key == "dit" and sp_degree > 1:
            extra += f'parameters {{ key: "sp_degree" value {{ string_value: "{sp_degree}" }} }}\n'
            instances_doc = (f"One instance: rank 0 of a {sp_degree}-process sequence-parallel DiT; it starts and "
                             f"supervises ranks 1..{sp_degree - 1}" + (f" on GPUs 1..{sp_degree - 1}."
                                                                       if device == "cuda" else "."))
            if device == "cuda":
                group_kind = "KIND_GPU gpus: [ 0 ]"
        text = _render(
            templates / f"{FAMILY}_{key}" / "config.pbtxt.in",
            template=f"{FAMILY}_{key}", name=family.component_model(key), component=key, doc=doc,
            per_call=per_call, io=spec_io_pbtxt(key, specs[key]), kind=group_kind, count=n,
            instances_doc=instances_doc, model=source.ref, fingerprint=source.fingerprint,
            engine="torch" if trt else engine, device=device, extra_parameters=extra,
        )
        write(family.component_model(key), text, templates / "component" / "model.py")
        version_dir = out / family.component_model(key) / "1"
        for name in artifact_files.get(key, ()):
            _link_or_copy(Path(artifacts) / name, version_dir / name)
        if key == "dit" and quantized is not None:
            from vidtrt.source.quant_state import AMAX_FILE, STATE_FILE

            (version_dir / QUANT_SUBDIR).mkdir()
            for name in (STATE_FILE, AMAX_FILE):
                _link_or_copy(Path(quantized) / name, version_dir / QUANT_SUBDIR / name)

    manifest = {
        "vidtrt_version": __version__, "model": source.ref, "model_name": config.name, "engine": engine,
        "device": device, "precision": precision, "sp_degree": sp_degree,
        "models": {k: Path(v).name for k, v in written.items()},
        "generation_model": family.stream_model, "sync_model": family.sync_model if sync_model else None,
        "family": family.name, "model_source": source.to_record(),
        "inputs": [t.name for t in request_io.REQUEST_INPUTS], "outputs": [t.name for t in request_io.RESPONSE_OUTPUTS],
        # An FP8 (Q/DQ) DiT from `vidtrt export --quantized`: what was calibrated, for whoever reads the repository.
        # (TensorRT: the plan manifests record the FP8 Q/DQ of the ONNX they were built from)
        "dit_quantization": _dit_quantization(artifacts) if artifacts and engine != "tensorrt" else None,
    }
    if plan_set is not None:
        plans = {family.component_model(k): m["component"] for k, m in plan_set.manifests.items()}
        manifest["tensorrt"] = {**plan_set.host.to_dict(), "plans": plans}
    (out / MARKER).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------ CLI
def add_build_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``vidtrt build``."""
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (embedded default) or a checkpoint folder (diffusers or official layout)")
    parser.add_argument("--engine", default="torch", choices=list(ENGINES),
                        help="engine the component models run (default torch; onnxruntime needs --artifacts; "
                             "tensorrt builds DiT and VAE plans here, on the serving GPU: docs/tensorrt.md)")
    parser.add_argument("--artifacts", default=None, metavar="DIR",
                        help="folder of exported ONNX files (`vidtrt export`), for --engine onnxruntime; for "
                             "tensorrt: bf16 / FP8 ONNX to build from (default: a bf16 export made in --work-dir)")
    parser.add_argument("--out", "-o", default="build/model_repository", metavar="DIR",
                        help="where to write the repository (default build/model_repository)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="component instances on CPU (KIND_CPU) or on each GPU (KIND_GPU); default cpu")
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                        help="torch-engine components' dtype (auto: bf16 with --device cuda, fp32 on cpu; fp8: "
                             "the DiT's GEMMs and attention in FP8 e4m3, the rest bf16); --engine tensorrt: bf16 "
                             "or fp8 (auto = bf16)")
    parser.add_argument("--attention", default=None,
                        help="torch-engine DiT attention backend, as `vidtrt run --attention` (e.g. triton-fp8-sta)")
    parser.add_argument("--quantized", default=None, metavar="DIR",
                        help="--precision fp8: the `vidtrt quantize` state; --engine torch: the DiT's static FP8 "
                             "scales (linked into the DiT model); tensorrt: exported to the FP8 DiT plan (when "
                             "--artifacts holds no FP8 DiT)")
    parser.add_argument("--work-dir", default=None, metavar="DIR",
                        help="--engine tensorrt: where ONNX exports and plans are made (default <out>.tensorrt)")
    parser.add_argument("--timing-cache", default=None, metavar="FILE",
                        help="--engine tensorrt: timing cache kept between builds (default "
                             "$VIDTRT_CACHE/tensorrt/timing-<TensorRT>-<GPU>.cache)")
    parser.add_argument("--trt-profiles", default="buckets", choices=["buckets", "range"],
                        help="--engine tensorrt: one optimisation profile per spec bucket (default), or one over the "
                             "whole range (less GPU memory in Triton <= 25.04, which gives each profile a context)")
    parser.add_argument("--dit-instances", type=int, default=1,
                        help="DiT model instances per device (each holds the weights; default 1)")
    parser.add_argument("--sp-degree", type=int, default=1, metavar="N",
                        help="the DiT model spans N processes (Ulysses sequence parallelism; with --device cuda "
                             "GPUs 0..N-1); default 1. See docs/sequence-parallel.md")
    parser.add_argument("--max-concurrent", type=int, default=4,
                        help="generations the BLS model runs at once (default 4)")
    parser.add_argument("--max-queue", type=int, default=None, metavar="N",
                        help="requests that may wait behind the running ones, per generation model; more are "
                             "answered UNAVAILABLE (default 16; 0 = no bound)")
    parser.add_argument("--sync-instances", type=int, default=1,
                        help="instances (= concurrent requests) of the non-streaming hunyuan_video_sync model")
    parser.add_argument("--no-sync-model", action="store_true",
                        help="leave out the non-streaming hunyuan_video_sync model (HTTP /infer)")
    parser.add_argument("--force", action="store_true",
                        help="kept for old scripts: a vidtrt repository at --out is always replaced, any other "
                             "non-empty folder never is")
    return parser


def build_main(args: argparse.Namespace) -> int:
    out = build_repository(
        args.model, args.out, args.engine, artifacts=args.artifacts, device=args.device, precision=args.precision,
        dit_instances=args.dit_instances, max_concurrent_generations=args.max_concurrent,
        max_queue_size=args.max_queue,
        sync_model=not args.no_sync_model, sync_instances=args.sync_instances,
        overwrite=args.force or _is_vidtrt_repo(args.out),
        quantized=args.quantized, work_dir=args.work_dir, timing_cache=args.timing_cache,
        trt_profiles=args.trt_profiles, sp_degree=args.sp_degree, attention=args.attention,
    )
    manifest = json.loads((out / MARKER).read_text())
    print(f"wrote {out}")
    for name in manifest["models"]:
        model_file = "model.plan" if (out / name / "1" / "model.plan").is_file() else "model.py"
        print(f"  {name}/config.pbtxt, {name}/1/{model_file}")
    print(f"serve it: vidtrt serve --repository {out}", file=sys.stderr)
    return 0


# The ONNX files each Triton component model runs (engine_components loaders' names).
COMPONENT_ARTIFACTS = {"text_encoder": ("llm_text_encoder", "clip_text_encoder"), "dit": ("dit",),
                       "vae_decoder": ("vae_decoder_tile",), "dit_probe": ("dit_probe",)}
OPTIONAL_ARTIFACTS = ("dit_probe",)  # exports without it (older ones) build a repository without the probe
# CogVideoX: T5 runs in torch (not exported); the tile decoder loops over the VAE's frame-batch graph.
COGVIDEOX_ARTIFACTS = {"text_encoder": (), "dit": ("dit",), "vae_decoder": ("vae_decoder_batch",),
                       "dit_probe": ("dit_probe",)}


def _artifact_files(artifacts, source) -> dict[str, list[str]]:
    """Files to copy per Triton component (ONNX, external data, the manifest), after checking the
    manifest was exported from ``source`` and lists every component: `vidtrt build` fails, not serve."""
    from vidtrt.errors import EngineError
    from vidtrt.runtime.engine_components import MANIFEST_NAME, read_manifest

    try:
        manifest = read_manifest(artifacts)
    except EngineError as e:
        raise RepositoryError(str(e)) from None
    exported = manifest.get("model", {})
    if exported.get("config_sha256") != source.fingerprint:
        raise RepositoryError(
            f"--artifacts {artifacts} was exported from model {exported.get('name')!r} (config "
            f"{str(exported.get('config_sha256'))[:12]}), not from {source.config.name!r} (config "
            f"{source.fingerprint[:12]}); re-export with `vidtrt export --model {source.ref}`")
    out: dict[str, list[str]] = {}
    table = COGVIDEOX_ARTIFACTS if source.family.name == "cogvideox" else COMPONENT_ARTIFACTS
    for key, names in table.items():
        files = [MANIFEST_NAME]
        if key in OPTIONAL_ARTIFACTS and not all(n in manifest.get("components", {}) for n in names):
            continue
        for name in names:
            entry = manifest.get("components", {}).get(name)
            if entry is None:
                raise RepositoryError(f"--artifacts {artifacts} has no {name!r} (run `vidtrt export` without "
                                      "--components, or with every component)")
            files += [f for f in (entry.get("file"), entry.get("external_data")) if f]
        missing = [f for f in files if not (Path(artifacts) / f).is_file()]
        if missing:
            raise RepositoryError(f"--artifacts {artifacts}: {missing[0]} is listed in its manifest but missing")
        out[key] = files
    return out


def _dit_quantization(artifacts) -> dict | None:
    """The ``quantization`` record of the artifacts' DiT (FP8 ONNX), or None for a float one."""
    from vidtrt.runtime.engine_components import read_manifest

    return read_manifest(artifacts).get("components", {}).get("dit", {}).get("quantization")


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (no second copy of the weights on one filesystem), else copy it."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def _is_vidtrt_repo(path: str | os.PathLike) -> bool:
    return (Path(path) / MARKER).is_file()
