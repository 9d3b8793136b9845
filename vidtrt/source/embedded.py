"""The embedded models: HunyuanVideo-architecture checkpoints generated from a fixed seed (``tiny``, the
default, and ``small``, CPU-sized for benchmarks).

It is written once, in the diffusers layout, to a cache folder and then loaded through exactly
the same code as any user checkpoint (and diffusers' ``HunyuanVideoPipeline`` can load its
transformer, text encoders and tokenizers as they are).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from vidtrt import __version__
from vidtrt.config.cogvideox_config import COGVIDEOX_PRESETS
from vidtrt.config.model_config import EMBEDDED_PRESETS, VIDTRT_JSON, ModelConfig, preset
from vidtrt.paths import cache_dir

TINY_SEED = 0


def _config_dict(obj) -> dict:
    d = dataclasses.asdict(obj)
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}


# The modules whose code decides the generated weights (parameter creation order, initialisation,
# tokenizer files): editing any of them must not reuse a cache folder written by the old code.
WEIGHT_CODE_MODULES = ("vidtrt.models.transformer", "vidtrt.models.vae", "vidtrt.source.tiny", "vidtrt.source.embedded")
COGVIDEOX_WEIGHT_CODE_MODULES = ("vidtrt.models.cogvideox_transformer", "vidtrt.models.cogvideox_vae",
                                 "vidtrt.source.tiny", "vidtrt.source.tiny_cogvideox", "vidtrt.source.embedded")


def weight_code_digest(modules: tuple[str, ...] | None = None) -> str:
    """sha1 over the source files of ``modules`` (default WEIGHT_CODE_MODULES; found, not imported)."""
    import importlib.util

    h = hashlib.sha1()
    for name in WEIGHT_CODE_MODULES if modules is None else modules:
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ValueError(f"module {name!r} not found")
        h.update(name.encode() + b"\0" + Path(spec.origin).read_bytes() + b"\0")
    return h.hexdigest()


def _fingerprint(config: ModelConfig) -> str:
    modules = COGVIDEOX_WEIGHT_CODE_MODULES if getattr(config, "family", None) == "cogvideox" else None
    blob = json.dumps([__version__, TINY_SEED, config.fingerprint(), weight_code_digest(modules)])
    return hashlib.sha1(blob.encode()).hexdigest()[:10]


def write_tiny_checkpoint(folder: str | Path, seed: int = TINY_SEED, name: str = "tiny") -> Path:
    """Write an embedded model (``tiny`` by default) in the diffusers layout (plus ``vidtrt.json`` with its
    non-diffusers settings)."""
    from vidtrt.models.transformer import HunyuanVideoTransformer3D
    from vidtrt.models.vae import HunyuanVideoVAEDecoder
    from vidtrt.source.tiny import MODEL_INDEX_ENTRIES, write_text_components

    folder = Path(folder)
    config = preset(name)
    folder.mkdir(parents=True, exist_ok=True)

    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the caller's RNG state
        torch.manual_seed(seed)
        dit = HunyuanVideoTransformer3D(config.transformer)
        torch.manual_seed(seed + 1)
        vae = HunyuanVideoVAEDecoder(config.vae)
    _save_component(folder / "transformer", dit, "HunyuanVideoTransformer3DModel", config.transformer)
    _save_component(folder / "vae", vae, "AutoencoderKLHunyuanVideo", config.vae)

    sched = folder / "scheduler"
    sched.mkdir(exist_ok=True)
    (sched / "scheduler_config.json").write_text(json.dumps({
        "_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
        "shift": config.defaults.flow_shift,
    }, indent=2))

    write_text_components(folder, seed=seed)
    index = {
        "_class_name": "HunyuanVideoPipeline",
        "_diffusers_version": "0.32.0",
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"],
        **MODEL_INDEX_ENTRIES,
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    overrides = {
        "name": name,
        "text": _config_dict(config.text),
        "tiling": _config_dict(config.tiling),
        "defaults": _config_dict(config.defaults),
        "sparse_attention": json.loads(json.dumps(dataclasses.asdict(config.sparse_attention), default=list)),
    }
    (folder / VIDTRT_JSON).write_text(json.dumps(overrides, indent=2))
    return folder


def _save_component(folder: Path, module: torch.nn.Module, class_name: str, config) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": class_name, "_diffusers_version": "0.32.0", **_config_dict(config)}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    state = {k: v.detach().contiguous() for k, v in module.state_dict().items()}
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))


def _embedded_config(name: str):
    return COGVIDEOX_PRESETS[name]() if name in COGVIDEOX_PRESETS else preset(name)


def tiny_checkpoint(name: str = "tiny") -> Path:
    """An embedded model's folder, generated on first use (atomically, safe for concurrent callers)."""
    if name not in EMBEDDED_PRESETS:
        raise ValueError(f"unknown embedded model {name!r}; accepted: {list(EMBEDDED_PRESETS)}")
    target = cache_dir() / f"{name}-{_fingerprint(_embedded_config(name))}"
    if (target / "model_index.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        if name in COGVIDEOX_PRESETS:
            from vidtrt.source.tiny_cogvideox import write_tiny_cogvideox_checkpoint

            write_tiny_cogvideox_checkpoint(tmp, _embedded_config(name), seed=TINY_SEED)
        else:
            write_tiny_checkpoint(tmp, name=name)
        try:
            tmp.rename(target)
        except OSError:  # another process won the race
            if not (target / "model_index.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return target
