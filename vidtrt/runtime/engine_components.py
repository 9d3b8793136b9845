"""Pipeline components built from engines, and the artifacts manifest that ties ONNX files to a model.

The orchestrator's three callables (:class:`~vidtrt.config.components.Components`) on any engine:

- :class:`EngineTextEncoder`: tokenization in Python (the model's tokenizers, exactly as
  :class:`~vidtrt.models.text_encoders.HunyuanTextEncoder`), the LLM and CLIP networks on engines;
- :class:`EngineDenoiser`: the DiT engine; trims batch-wide text padding to the smallest text bucket
  that holds every prompt (exact: padding tokens are never attended to) before calling it;
- :class:`EngineTileDecoder`: the VAE decoder engine, called once per tile by the tiled decode.

``engine="torch"`` wraps the project's PyTorch modules (:class:`~vidtrt.runtime.engines.TorchEngine`);
``engine="onnxruntime"`` loads ``ARTIFACTS/<component>.onnx`` after checking ``ARTIFACTS/manifest.json``
says they were exported from the same model config with the same specs. The per-component loaders
(:func:`engine_text_encoder`, :func:`engine_dit`, :func:`engine_vae_decoder`) are what Triton's
component models call; their objects also offer ``run(feeds)`` on numpy arrays.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vidtrt.config.components import Components, TextEmbeddings
from vidtrt.config.model_config import ModelConfig
from vidtrt.config.specs import COMPONENTS, ComponentSpec, text_length_buckets
from vidtrt.errors import EngineError
from vidtrt.models.text_encoders import HunyuanTextEncoder
from vidtrt.runtime.engines import ENGINE_KINDS, Engine, OnnxRuntimeEngine, TorchEngine, import_tensorrt
from vidtrt.source.model_source import ModelSource

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "vidtrt-onnx-artifacts/1"


# ---------------------------------------------------------------------------------------- torch modules
class LLMHiddenStates(nn.Module):
    """The LLM as the DiT's text encoder: ``(input_ids, attention_mask) -> hidden_states[layer]``.

    ``layer`` is ``-(num_hidden_layers_to_skip + 1)`` (the output of a middle layer, no final norm).
    The same module is exported to ONNX and run by the torch engine.
    """

    def __init__(self, llm: nn.Module, layer: int):
        super().__init__()
        self.llm = llm
        self.layer = layer

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = self.llm(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
        return out.hidden_states[self.layer]


class CLIPPooled(nn.Module):
    """CLIP's text model: ``input_ids -> pooler_output`` (no attention mask, as diffusers)."""

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.clip = clip

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.clip(input_ids, output_hidden_states=False).pooler_output


def text_encoder_modules(source: ModelSource, dtype: torch.dtype = torch.float32,
                         ) -> tuple[HunyuanTextEncoder, LLMHiddenStates, CLIPPooled]:
    """The torch text encoder of a model and its two networks as spec-shaped modules."""
    te = source.load_text_encoder(dtype)
    llm = LLMHiddenStates(te.llm, -(source.config.text.num_hidden_layers_to_skip + 1)).eval()
    return te, llm, CLIPPooled(te.clip).eval()


def component_module(source: ModelSource, name: str, dtype: torch.dtype = torch.float32) -> nn.Module:
    """The torch module of one component, taking the spec's inputs positionally."""
    if name == "dit":
        return source.load_transformer(dtype)
    if name == "dit_probe" and source.family.name == "cogvideox":  # the DiT's time_embedding only
        from vidtrt.models.cogvideox_probe import CogVideoXDiTProbe

        return CogVideoXDiTProbe(source.load_transformer(dtype)).eval()
    if name == "dit_probe":  # holds only the DiT's embedders and block 0's norm1; the rest of it is freed
        from vidtrt.models.dit_probe import HunyuanVideoDiTProbe

        return HunyuanVideoDiTProbe(source.load_transformer(dtype)).eval()
    if name in ("vae_decoder", "vae_decoder_tile"):
        return source.load_vae_decoder(dtype)
    if name == "vae_decoder_batch":  # CogVideoX: one frame batch, conv caches in and out
        from vidtrt.models.cogvideox_vae import CogVideoXVAEFrameBatch

        return CogVideoXVAEFrameBatch(source.load_vae_decoder(dtype)).eval()
    if name in ("llm_text_encoder", "clip_text_encoder"):
        _, llm, clip = text_encoder_modules(source, dtype)
        return llm if name == "llm_text_encoder" else clip
    raise EngineError(f"unknown component {name!r}; accepted: {list(COMPONENTS)}")


# ------------------------------------------------------------------------------------- text encoder side
class _ConfigOnly:
    """Stands in for a text network inside :class:`HunyuanTextEncoder` (its checks read ``config``)."""

    def __init__(self, config):
        self.config = config

    def eval(self):
        return self


class EngineTextEncoder(HunyuanTextEncoder):
    """Prompts -> :class:`TextEmbeddings` with the networks on engines (implements ``EncodeText``).

    Tokenization, prompt checks and the template crop are :class:`HunyuanTextEncoder`'s; only the two
    network forwards go to ``llm_engine`` (spec ``llm_text_encoder``) and ``clip_engine``
    (``clip_text_encoder``).
    """

    def __init__(self, llm_engine: Engine, clip_engine: Engine, llm_tokenizer, clip_tokenizer,
                 llm_config, clip_config, config):
        super().__init__(_ConfigOnly(llm_config), llm_tokenizer, _ConfigOnly(clip_config), clip_tokenizer, config)
        self.llm_engine, self.clip_engine = llm_engine, clip_engine

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def tokenize_llm(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """The LLM engine's feeds: template-formatted prompts padded to ``llm_max_length`` (int64)."""
        formatted = [self.config.prompt_template.format(p) for p in prompts]
        inputs = self.llm_tokenizer(formatted, max_length=self.llm_max_length, padding="max_length",
                                    truncation=True, return_tensors="np", return_attention_mask=True)
        return {"input_ids": inputs["input_ids"].astype(np.int64),
                "attention_mask": inputs["attention_mask"].astype(np.int64)}

    def tokenize_clip(self, prompts: list[str]) -> dict[str, np.ndarray]:
        """The CLIP engine's feeds: prompts padded to ``clip_max_length`` (int64)."""
        inputs = self.clip_tokenizer(list(prompts), padding="max_length", max_length=self.config.clip_max_length,
                                     truncation=True, return_tensors="np")
        return {"input_ids": inputs["input_ids"].astype(np.int64)}

    def encode_llm(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        feeds = self.tokenize_llm(prompts)
        hidden = self.llm_engine.run(feeds)["hidden_states"]
        mask = feeds["attention_mask"]
        if self.crop_start > 0:
            hidden, mask = hidden[:, self.crop_start:], mask[:, self.crop_start:]
        return (torch.from_numpy(np.ascontiguousarray(hidden, dtype=np.float32)),
                torch.from_numpy(np.ascontiguousarray(mask, dtype=np.int64)))

    def encode_clip(self, prompts: list[str]) -> torch.Tensor:
        pooled = self.clip_engine.run(self.tokenize_clip(prompts))["pooled"]
        return torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32))


class EngineDenoiser:
    """The DiT engine as a :class:`~vidtrt.config.components.Denoiser`.

    Text padding common to the whole batch is cut down to the smallest of ``text_buckets`` holding
    every prompt's tokens (the padded length if none does, or if a mask is not right-padded). That is
    exact: padding tokens are never keys. ``run(feeds)`` does the same on numpy feeds (Triton).
    """

    def __init__(self, engine: Engine, text_buckets: Sequence[int] = (), sta=None):
        self.engine = engine
        self.spec = engine.spec
        self.text_buckets = tuple(sorted(text_buckets))
        self.has_guidance = "guidance" in self.spec.input_names
        # the sliding-tile plugin graph: its tile order / layouts per shape and step (runtime.sta_inputs)
        self.sta = sta

    def text_keep(self, mask: np.ndarray) -> int:
        """Text columns to keep for an int mask [B, L]."""
        length = mask.shape[1]
        if length == 0:
            return 0
        valid = mask != 0
        lengths = valid.sum(axis=1)
        right_padded = bool((valid == (np.arange(length)[None, :] < lengths[:, None])).all())
        need = max(int(lengths.max()), 1)
        if not right_padded:
            return length
        return next((b for b in self.text_buckets if need <= b <= length), length)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        feeds = dict(feeds)
        mask = feeds.get("encoder_attention_mask")
        if mask is not None and mask.ndim == 2:
            keep = self.text_keep(mask)
            if keep < mask.shape[1]:
                feeds["encoder_attention_mask"] = mask[:, :keep]
                feeds["encoder_hidden_states"] = feeds["encoder_hidden_states"][:, :keep]
        if self.sta is not None and "sta_tile_rows" not in feeds:
            from vidtrt.config.sparse_attention import current_sparse_step

            feeds.update(self.sta.feeds(feeds["hidden_states"].shape, feeds["encoder_hidden_states"].shape[1],
                                        current_sparse_step()))
        return self.engine.run(feeds)

    def __call__(self, latents: torch.Tensor, timestep: torch.Tensor, text: TextEmbeddings,
                 guidance: torch.Tensor) -> torch.Tensor:
        f32 = lambda t: np.ascontiguousarray(t.detach().to("cpu", torch.float32).numpy())  # noqa: E731
        feeds = {
            "hidden_states": f32(latents),
            "timestep": f32(timestep),
            "encoder_hidden_states": f32(text.prompt_embeds),
            "encoder_attention_mask": np.ascontiguousarray(text.attention_mask.to("cpu", torch.int64).numpy()),
            "pooled_projections": f32(text.pooled),
        }
        if self.has_guidance:
            feeds["guidance"] = f32(guidance)
        return torch.from_numpy(self.run(feeds)["velocity"])


class EngineTileDecoder:
    """The VAE decoder engine as a :class:`~vidtrt.config.components.DecodeTile` (``run(feeds)`` for Triton)."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self.spec = engine.spec

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return self.engine.run(feeds)

    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        feeds = {"latents": np.ascontiguousarray(latents.detach().to("cpu", torch.float32).numpy())}
        return torch.from_numpy(self.run(feeds)["video"])


# ---------------------------------------------------------------------------------------- manifest
def read_manifest(artifacts: str | Path) -> dict:
    """``ARTIFACTS/manifest.json`` as written by ``vidtrt export``; one-line EngineError otherwise."""
    folder = Path(artifacts)
    if not folder.is_dir():
        raise EngineError(f"artifacts folder {folder} does not exist (run `vidtrt export --out {folder}` first)")
    path = folder / MANIFEST_NAME
    if not path.is_file():
        raise EngineError(f"{path} is missing: {folder} is not a `vidtrt export` output folder")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EngineError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT:
        raise EngineError(f"{path} is not a vidtrt artifacts manifest (expected format {MANIFEST_FORMAT!r})")
    return data


def artifact_path(artifacts: str | Path, name: str, config: ModelConfig, spec: ComponentSpec,
                  manifest: dict | None = None) -> Path:
    """The ONNX file of component ``name``, after checking the manifest matches ``config`` and ``spec``."""
    folder = Path(artifacts)
    manifest = manifest if manifest is not None else read_manifest(folder)
    where = folder / MANIFEST_NAME
    exported = manifest.get("model", {})
    if exported.get("config_sha256") != config.fingerprint():
        theirs = str(exported.get("config_sha256"))[:12]
        raise EngineError(
            f"{where}: exported from model {exported.get('name')!r} (config {theirs}), "
            f"not from this model {config.name!r} (config {config.fingerprint()[:12]}); re-export with "
            f"`vidtrt export --model ...`")
    entry = manifest.get("components", {}).get(name)
    if entry is None:
        raise EngineError(f"{where} has no component {name!r}; exported: {sorted(manifest.get('components', {}))} "
                          f"(run `vidtrt export --components {name}`)")
    if entry.get("spec") != json.loads(json.dumps(spec.to_dict())):
        raise EngineError(f"{where}: the {name!r} spec it was exported with differs from this vidtrt's; re-export")
    return folder / entry["file"]


def _check_engine_kind(engine: str, artifacts) -> None:
    if engine not in ENGINE_KINDS:
        raise EngineError(f"unknown engine {engine!r}; accepted: {list(ENGINE_KINDS)}")
    if engine == "tensorrt":
        import_tensorrt()  # raises the one-line "not installed" error here
        raise EngineError("the tensorrt engine runs from a Triton model repository (`vidtrt build`); "
                          "in process use --engine onnxruntime or torch")
    if engine == "onnxruntime" and artifacts is None:
        raise EngineError("--engine onnxruntime needs --artifacts DIR (the output folder of `vidtrt export`)")


class _Loader:
    """Shared state of the per-component loaders: config, manifest (read once), device.

    ``device``: where the torch engine runs (None: CPU); for onnxruntime "cpu" means the CPU execution
    provider only, None or a GPU device the default providers (TensorRT / CUDA when installed, CPU)."""

    def __init__(self, source: ModelSource, engine: str, artifacts, threads: int, providers,
                 device: str | None = None):
        _check_engine_kind(engine, artifacts)
        self.source, self.engine, self.artifacts = source, engine, artifacts
        self.device = str(device) if device is not None else "cpu"
        self.threads = threads
        if providers is None and engine == "onnxruntime" and device is not None and str(device) == "cpu":
            providers = ["CPUExecutionProvider"]
        self.providers = providers
        self.config = source.config
        self.manifest = read_manifest(artifacts) if engine == "onnxruntime" else None

    def onnx_engine(self, name: str, spec: ComponentSpec) -> OnnxRuntimeEngine:
        path = artifact_path(self.artifacts, name, self.config, spec, self.manifest)
        entry = self.manifest.get("components", {}).get(name, {})
        # Q/DQ or in-graph FP8 casts: basic graph optimisations
        fp8 = bool(entry.get("quantization")) or str(entry.get("flavour", "")).endswith("fp8")
        return OnnxRuntimeEngine(path, spec, threads=self.threads, providers=self.providers, fp8=fp8)


def engine_text_encoder(model: str | Path | ModelSource, engine: str = "onnxruntime",
                        artifacts: str | Path | None = None, threads: int = 0,
                        providers: Sequence[str] | None = None, device: str | None = None,
                        _loader: _Loader | None = None) -> EngineTextEncoder:
    """The text encoder (tokenizers in Python, LLM + CLIP on ``engine``)."""
    source = ModelSource.open(model)
    ld = _loader or _Loader(source, engine, artifacts, threads, providers, device)
    if source.family.name == "cogvideox":  # T5 is not exported: the torch module on every engine
        from vidtrt.runtime.pipeline import torch_text_encoder

        return torch_text_encoder(source)
    specs = source.specs(("llm_text_encoder", "clip_text_encoder"))
    if ld.engine == "torch":
        te, llm, clip = text_encoder_modules(source)
        llm_engine = TorchEngine(specs["llm_text_encoder"], llm.to(ld.device), ld.device)
        clip_engine = TorchEngine(specs["clip_text_encoder"], clip.to(ld.device), ld.device)
    else:
        llm_engine = ld.onnx_engine("llm_text_encoder", specs["llm_text_encoder"])
        clip_engine = ld.onnx_engine("clip_text_encoder", specs["clip_text_encoder"])
    llm_tok, clip_tok, llm_cfg, clip_cfg = source.text_files
    return EngineTextEncoder(llm_engine, clip_engine, llm_tok, clip_tok, llm_cfg, clip_cfg, ld.config.text)


def engine_dit(model: str | Path | ModelSource, engine: str = "onnxruntime", artifacts: str | Path | None = None,
               threads: int = 0, providers: Sequence[str] | None = None, device: str | None = None,
               _loader: _Loader | None = None) -> EngineDenoiser:
    """The DiT on ``engine`` as a Denoiser (text trimmed to the model's text buckets)."""
    source = ModelSource.open(model)
    ld = _loader or _Loader(source, engine, artifacts, threads, providers, device)
    spec = source.specs(("dit",))["dit"]
    sta = None
    if ld.engine == "torch":
        eng: Engine = TorchEngine(spec, component_module(source, "dit").to(ld.device), ld.device)
    elif (ld.manifest.get("components", {}).get("dit", {}).get("flavour") or "").startswith("plugin-sta"):
        from vidtrt.config.specs import dit_spec
        from vidtrt.runtime.sta_inputs import StaInputs

        # the sliding-tile plugin graph (vidtrt.export.sta_onnx, reference functions attached for onnxruntime)
        eng, sta = ld.onnx_engine("dit", dit_spec(ld.config, sparse=True)), StaInputs(ld.config)
    else:
        eng = ld.onnx_engine("dit", spec)
    if source.family.name == "cogvideox":
        from vidtrt.runtime.cogvideox_engines import CogVideoXEngineDenoiser

        return CogVideoXEngineDenoiser(eng)
    return EngineDenoiser(eng, text_length_buckets(ld.config), sta)


def engine_dit_probe(model: str | Path | ModelSource, engine: str = "onnxruntime", artifacts: str | Path | None = None,
                     threads: int = 0, providers: Sequence[str] | None = None, device: str | None = None,
                     _loader: _Loader | None = None):
    """The DiT probe (TeaCache's signal, spec ``dit_probe``) on ``engine`` as a DitProbe."""
    from vidtrt.runtime.dit_probe import EngineDitProbe

    source = ModelSource.open(model)
    ld = _loader or _Loader(source, engine, artifacts, threads, providers, device)
    spec = source.specs(("dit_probe",))["dit_probe"]
    if ld.engine == "torch":
        eng: Engine = TorchEngine(spec, component_module(source, "dit_probe").to(ld.device), ld.device)
    else:
        eng = ld.onnx_engine("dit_probe", spec)
    return EngineDitProbe(eng)


def engine_vae_decoder(model: str | Path | ModelSource, engine: str = "onnxruntime",
                       artifacts: str | Path | None = None, threads: int = 0,
                       providers: Sequence[str] | None = None, tile: bool = True, device: str | None = None,
                       _loader: _Loader | None = None) -> EngineTileDecoder:
    """The VAE decoder on ``engine``: the tile engine (``tile=True``, what the tiled decode calls) or the
    whole-latents decoder."""
    source = ModelSource.open(model)
    ld = _loader or _Loader(source, engine, artifacts, threads, providers, device)
    name = "vae_decoder_tile" if tile else "vae_decoder"
    spec = source.specs((name,))[name]
    if source.family.name == "cogvideox":  # the tile decoder walks the frame batches of the exported graph
        from vidtrt.runtime.cogvideox_engines import FrameBatchTileDecoder

        if not tile:
            raise EngineError("CogVideoX models have a tile decoder only (vae_decoder_tile)")
        bspec = source.specs(("vae_decoder_batch",))["vae_decoder_batch"]
        if ld.engine == "torch":
            batch: Engine = TorchEngine(bspec, component_module(source, "vae_decoder_batch").to(ld.device), ld.device)
        else:
            batch = ld.onnx_engine("vae_decoder_batch", bspec)
        return EngineTileDecoder(FrameBatchTileDecoder(batch, spec))
    if ld.engine == "torch":
        eng: Engine = TorchEngine(spec, component_module(source, name).to(ld.device), ld.device)
    else:
        eng = ld.onnx_engine(name, spec)
    return EngineTileDecoder(eng)


def load_engine_components(model: str | Path | ModelSource = "tiny", engine: str = "onnxruntime",
                           artifacts: str | Path | None = None, threads: int = 0,
                           providers: Sequence[str] | None = None, device: str | None = None,
                           ) -> tuple[ModelConfig, Components]:
    """Config and the three components of ``model`` on ``engine`` ("torch" or "onnxruntime";
    onnxruntime reads ``artifacts``, the folder `vidtrt export` wrote)."""
    source = ModelSource.open(model)
    ld = _Loader(source, engine, artifacts, threads, providers, device)
    has_probe = "dit_probe" in source.family.components and (
        ld.manifest is None or "dit_probe" in ld.manifest.get("components", {}))  # older exports have none
    components = Components(
        encode_text=engine_text_encoder(source, _loader=ld),
        dit=engine_dit(source, _loader=ld),
        decode_tile=engine_vae_decoder(source, tile=True, _loader=ld),
        probe=engine_dit_probe(source, _loader=ld) if has_probe else None,
    )
    return ld.config, components


def load_pipeline_with_engine(model: str | Path | ModelSource = "tiny", engine: str = "onnxruntime",
                              artifacts: str | Path | None = None, threads: int = 0,
                              providers: Sequence[str] | None = None, device: str | None = None):
    """A :class:`~vidtrt.runtime.pipeline.HunyuanVideoPipeline` (a CogVideoX model: a
    :class:`~vidtrt.runtime.cogvideox_pipeline.CogVideoXPipeline`) whose components run on ``engine``."""
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    source = ModelSource.open(model)
    cls = HunyuanVideoPipeline
    if source.family.name == "cogvideox":
        from vidtrt.runtime.cogvideox_pipeline import CogVideoXPipeline

        cls = CogVideoXPipeline
    return cls(*load_engine_components(source, engine, artifacts, threads, providers, device))


COMPONENT_LOADERS = {"text_encoder": engine_text_encoder, "dit": engine_dit, "vae_decoder": engine_vae_decoder,
                     "dit_probe": engine_dit_probe}


def load_component(key: str, model: str | Path | ModelSource, engine: str = "torch", *,
                   artifacts: str | Path | None = None, device: str = "cpu", precision: str = "fp32", threads: int = 0,
                   providers: Sequence[str] | None = None, sp_degree: int = 1, attention: str | None = None,
                   fp8_amax=None):
    """The callable a Triton component model serves (``key``: text_encoder, dit, vae_decoder -- the
    decoder as the tile engine -- or dit_probe), on ``engine``.

    ``engine="torch"``: the project's PyTorch modules (:mod:`vidtrt.runtime.pipeline` loaders), exactly what
    ``vidtrt run`` uses, in ``precision`` (fp32, bf16, fp16; fp8: the DiT with FP8 GEMMs and FP8 attention,
    the text encoder and VAE in bf16). ``onnxruntime`` / ``tensorrt``: the exported artifacts in ``artifacts``
    (fp32 only; ``threads`` / ``providers`` for onnxruntime). ``sp_degree`` > 1: the torch DiT over that many
    processes (:mod:`vidtrt.runtime.parallel_dit`). ``attention``: the torch DiT's attention backend (checked
    like ``vidtrt run --attention``). ``fp8_amax``: precision fp8's static scales (a quantization state's
    amax map, :class:`vidtrt.source.quant_state.QuantState`). Raises EngineError / ConfigError.
    """
    if key not in COMPONENT_LOADERS:
        raise EngineError(f"unknown component {key!r}; accepted {list(COMPONENT_LOADERS)}")
    source = ModelSource.open(model)
    if engine == "torch":
        from vidtrt.config.model_config import PRECISION_DTYPES, precision_dtype_name
        from vidtrt.runtime import pipeline

        if precision not in (*PRECISION_DTYPES, "fp8"):
            raise EngineError(f"invalid precision {precision!r}: accepted {[*PRECISION_DTYPES, 'fp8']}")
        dtype = getattr(torch, precision_dtype_name(precision))
        loader = {"text_encoder": pipeline.torch_text_encoder, "vae_decoder": pipeline.torch_tile_decoder}.get(key)
        if key == "dit_probe":  # the DiT's embedders and block 0's norm1 only, in the DiT's dtype (fp8: bf16)
            from vidtrt.runtime.dit_probe import TorchCogVideoXProbe, TorchDitProbe

            cls = TorchCogVideoXProbe if source.family.name == "cogvideox" else TorchDitProbe
            return cls(component_module(source, "dit_probe", dtype).to(device), device)
        if key == "dit":
            pipeline.check_run_choices(device, attention, source.config.transformer.attention_head_dim, precision)
            return pipeline.torch_denoiser(source, device, dtype, attention, precision=precision,
                                           sp_degree=sp_degree, fp8_amax=fp8_amax)
        return loader(source, device, dtype)
    if sp_degree != 1:
        raise EngineError(f"sequence parallelism (sp_degree {sp_degree}) needs engine 'torch'")
    if precision != "fp32":
        raise EngineError(f"precision {precision!r} needs engine 'torch'; the {engine} engine runs the exported "
                          "fp32 ONNX (accepted with it: 'fp32')")
    return COMPONENT_LOADERS[key](source, engine, artifacts, threads, providers, device=device)
