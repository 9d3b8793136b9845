"""Writing a Triton model repository from the templates in ``vidtrt/model_repository/`` and the tensor specs.

    vidtrt build --model tiny --engine torch --out build/model_repository

writes one folder per Triton model (``config.pbtxt`` + ``1/model.py``), named with the model family:

- ``hunyuan_video``: the generation model (Python BLS, decoupled: progress per step, then the video);
- ``hunyuan_video_sync``: the same model.py, not decoupled (HTTP ``/infer``, perf_analyzer without
  streaming);
- ``hunyuan_video_text_encoder``, ``hunyuan_video_dit``, ``hunyuan_video_vae_decoder``: Python-backend
  models serving the components on an engine (``torch`` or ``onnxruntime``, see
  :func:`vidtrt.runtime.engine_components.load_component`).

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
from vidtrt.errors import VidtrtError
from vidtrt.paths import REPOSITORY_FILE as MARKER

FAMILY = "hunyuan_video"  # the template folders' prefix (the first family's Triton model names)
ENGINES = ("torch", "onnxruntime")

COMPONENT_DOCS = {
    "text_encoder": ("Text encoders (Llama hidden states + CLIP pooled) with their tokenizers: prompts -> "
                     "conditioning.", "request (two with true CFG)"),
    "dit": ("HunyuanVideo DiT: one flow-matching velocity per call.", "denoising step (two with true CFG)"),
    "vae_decoder": ("3D causal VAE decoder, one latent tile per call; the tile plan and blending run in the "
                    "generation model (vidtrt.config.tiling).", "tile of the tiled decode"),
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
) -> Path:
    """Write the repository for ``model`` ('tiny', a checkpoint folder or a ModelSource) to ``out_dir``;
    returns it. Model names come from the model's family (``hunyuan_video``, ``hunyuan_video_dit``, ...).
    The repository is relocatable: the model is recorded in ``vidtrt-repository.json`` (each model
    process rebuilds it from there, see :meth:`vidtrt.source.model_source.ModelSource.from_record`; a checkpoint
    folder moved elsewhere is named by ``$VIDTRT_MODEL_ROOT``), and ``artifacts`` are copied (hard-linked
    where possible) into the component models' version folders, so no host path is written anywhere.

    ``precision``: weights/activations of the torch-engine components: ``fp32``, ``bf16``, ``fp16`` or
    ``auto`` (bf16 on ``cuda``, fp32 on ``cpu``); the onnxruntime engine runs the exported fp32 ONNX.
    ``device``: ``cpu`` (instance_group KIND_CPU) or ``cuda`` (KIND_GPU: one instance per GPU listed by
    Triton, the component on that GPU). ``*_instances``: instances per device (each holds its own
    weights, so keep the DiT at 1 on GPUs; on CPU extra instances only help with spare cores).
    ``max_concurrent_generations``: requests the streaming generation model runs at once (threads; each
    waits on the component models). ``max_queue_size``: requests that may wait behind the running ones,
    per generation model (default :data:`vidtrt.config.lifecycle.DEFAULT_MAX_QUEUE`, 16; 0 = no bound); more are
    answered UNAVAILABLE. ``sync_instances``: instances of the non-streaming model (it runs a
    request inside ``execute``, so this is its concurrency; each is a process without weights).
    ``fail_on_guidance``: test-only; the DiT model fails requests whose
    embedded_guidance_scale equals it. ``overwrite``: replace a repository this function wrote before (never
    a folder it did not write).
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
    if precision not in PRECISIONS:
        raise RepositoryError(f"invalid precision {precision!r}: accepted {list(PRECISIONS)} "
                              "(fp8 goes through the ModelOpt/TensorRT path, not built yet)")
    if engine != "torch" and precision not in ("auto", "fp32"):
        raise RepositoryError(f"precision {precision!r} needs --engine torch; the {engine} engine runs the "
                              "exported fp32 ONNX (accepted with it: 'auto', 'fp32')")
    precision = resolve_precision(precision, device)
    for name, n in (("dit_instances", dit_instances), ("text_encoder_instances", text_encoder_instances),
                    ("vae_decoder_instances", vae_decoder_instances),
                    ("max_concurrent_generations", max_concurrent_generations), ("sync_instances", sync_instances)):
        if not isinstance(n, int) or n < 1:
            raise RepositoryError(f"invalid {name}={n!r}: accepted an integer >= 1")
    max_queue_size = DEFAULT_MAX_QUEUE if max_queue_size is None else max_queue_size
    if not isinstance(max_queue_size, int) or isinstance(max_queue_size, bool) or max_queue_size < 0:
        raise RepositoryError(f"invalid max_queue_size={max_queue_size!r}: accepted an integer >= 0 (0 = no bound)")
    if engine != "torch" and not artifacts:
        raise RepositoryError(f"engine {engine!r} needs --artifacts (the folder `vidtrt export` wrote)")
    if artifacts and not Path(artifacts).is_dir():
        raise RepositoryError(f"artifacts folder not found: {artifacts}")

    # Resolved (and the artifacts checked against it) before anything is replaced, so a bad --model or
    # --artifacts leaves an existing repository as it was.
    source = ModelSource.open(model)
    config = source.config
    specs = specs_for_triton(config)
    artifact_files = _artifact_files(artifacts, source) if artifacts else {}

    templates = templates_dir()
    out = Path(out_dir).resolve()
    if out == templates.resolve() or templates.resolve() in out.parents:
        raise RepositoryError(f"refusing to build into the templates folder {templates}; use a build directory")
    if out.exists() and any(out.iterdir()):
        if not (out / MARKER).is_file():
            raise RepositoryError(f"{out} exists and is not a vidtrt repository; choose an empty or new folder")
        if not overwrite:
            raise RepositoryError(f"{out} exists; pass overwrite=True (--force) to replace it")
        shutil.rmtree(out)

    family = source.family
    kind = "KIND_GPU" if device == "cuda" else "KIND_CPU"
    instances = {"text_encoder": text_encoder_instances, "dit": dit_instances, "vae_decoder": vae_decoder_instances}
    common = dict(model=source.ref, fingerprint=source.fingerprint,
                  text_encoder_name=family.component_model("text_encoder"), dit_name=family.component_model("dit"),
                  vae_decoder_name=family.component_model("vae_decoder"), max_concurrent=max_concurrent_generations,
                  max_queue=max_queue_size,
                  fps=config.defaults.fps, stream_name=family.stream_model, sync_name=family.sync_model,
                  sync_instances=sync_instances)

    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, str] = {}

    def write(name: str, config_text: str, model_py: Path) -> None:
        folder = out / name
        (folder / "1").mkdir(parents=True, exist_ok=True)
        (folder / "config.pbtxt").write_text(config_text)
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

    for key in family.components:
        doc, per_call = COMPONENT_DOCS[key]
        n = instances[key]
        extra = f'parameters {{ key: "precision" value {{ string_value: "{precision}" }} }}\n'
        if key == "dit" and fail_on_guidance is not None:
            extra += ('# TEST ONLY: fail requests whose embedded_guidance_scale equals this value.\n'
                     f'parameters {{ key: "fail_on_guidance" value {{ string_value: "{fail_on_guidance:g}" }} }}\n')
        instances_doc = (f"{n} instance(s) per {'GPU' if device == 'cuda' else 'server'}; calls from concurrent "
                         "generations queue here and run one at a time per instance.")
        text = _render(
            templates / f"{FAMILY}_{key}" / "config.pbtxt.in",
            template=f"{FAMILY}_{key}", name=family.component_model(key), component=key, doc=doc,
            per_call=per_call, io=spec_io_pbtxt(key, specs[key]), kind=kind, count=n, instances_doc=instances_doc,
            model=source.ref, fingerprint=source.fingerprint, engine=engine, device=device, extra_parameters=extra,
        )
        write(family.component_model(key), text, templates / "component" / "model.py")
        version_dir = out / family.component_model(key) / "1"
        for name in artifact_files.get(key, ()):
            _link_or_copy(Path(artifacts) / name, version_dir / name)

    manifest = {
        "vidtrt_version": __version__, "model": source.ref, "model_name": config.name, "engine": engine,
        "device": device, "precision": precision, "models": {k: Path(v).name for k, v in written.items()},
        "generation_model": family.stream_model, "sync_model": family.sync_model if sync_model else None,
        "family": family.name, "model_source": source.to_record(),
        "inputs": [t.name for t in request_io.REQUEST_INPUTS], "outputs": [t.name for t in request_io.RESPONSE_OUTPUTS],
        # An FP8 (Q/DQ) DiT from `vidtrt export --quantized`: what was calibrated, for whoever reads the repository.
        "dit_quantization": _dit_quantization(artifacts) if artifacts else None,
    }
    (out / MARKER).write_text(json.dumps(manifest, indent=2) + "\n")
    return out


# ------------------------------------------------------------------------------------------ CLI
def add_build_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags of ``vidtrt build``."""
    parser.add_argument("--model", default="tiny",
                        help="'tiny' (embedded default) or a checkpoint folder (diffusers or official layout)")
    parser.add_argument("--engine", default="torch", choices=list(ENGINES),
                        help="engine the component models run (default torch; onnxruntime needs --artifacts)")
    parser.add_argument("--artifacts", default=None, metavar="DIR",
                        help="folder of exported ONNX files (`vidtrt export`), for --engine onnxruntime")
    parser.add_argument("--out", "-o", default="build/model_repository", metavar="DIR",
                        help="where to write the repository (default build/model_repository)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                        help="component instances on CPU (KIND_CPU) or on each GPU (KIND_GPU); default cpu")
    parser.add_argument("--precision", default="auto", choices=list(PRECISIONS),
                        help="torch-engine components' dtype (auto: bf16 with --device cuda, fp32 on cpu)")
    parser.add_argument("--dit-instances", type=int, default=1,
                        help="DiT model instances per device (each holds the weights; default 1)")
    parser.add_argument("--max-concurrent", type=int, default=4,
                        help="generations the BLS model runs at once (default 4)")
    parser.add_argument("--max-queue", type=int, default=None, metavar="N",
                        help="requests that may wait behind the running ones, per generation model; more are "
                             "answered UNAVAILABLE (default 16; 0 = no bound)")
    parser.add_argument("--sync-instances", type=int, default=1,
                        help="instances (= concurrent requests) of the non-streaming hunyuan_video_sync model")
    parser.add_argument("--no-sync-model", action="store_true",
                        help="leave out the non-streaming hunyuan_video_sync model (HTTP /infer)")
    parser.add_argument("--force", action="store_true", help="replace an existing vidtrt repository at --out")
    return parser


def build_main(args: argparse.Namespace) -> int:
    out = build_repository(
        args.model, args.out, args.engine, artifacts=args.artifacts, device=args.device, precision=args.precision,
        dit_instances=args.dit_instances, max_concurrent_generations=args.max_concurrent,
        max_queue_size=args.max_queue,
        sync_model=not args.no_sync_model, sync_instances=args.sync_instances,
        overwrite=args.force or _is_vidtrt_repo(args.out),
    )
    manifest = json.loads((out / MARKER).read_text())
    print(f"wrote {out}")
    for name in manifest["models"]:
        print(f"  {name}/config.pbtxt, {name}/1/model.py")
    print(f"serve it: vidtrt serve --repository {out}", file=sys.stderr)
    return 0


# The ONNX files each Triton component model runs (engine_components loaders' names).
COMPONENT_ARTIFACTS = {"text_encoder": ("llm_text_encoder", "clip_text_encoder"), "dit": ("dit",),
                       "vae_decoder": ("vae_decoder_tile",)}


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
    for key, names in COMPONENT_ARTIFACTS.items():
        files = [MANIFEST_NAME]
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
