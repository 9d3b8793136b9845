"""Checkpoint folders: the diffusers layout and the official Tencent layout.

Weights are read zero-copy (safetensors through a private mmap, ``.pt`` through
``torch.load(mmap=True)``) into modules built on the meta device with ``assign=True``, so a model
is never held twice: peak RAM is about the weights' size plus one tensor.

A missing, unexpected or mis-shaped key is a :class:`~vidtrt.errors.CheckpointError` naming the key
and the file it came from (or should have come from).
"""

from __future__ import annotations

import json
import mmap
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from torch import nn

from vidtrt.configs import ModelConfig, TransformerConfig, VAEConfig, hunyuan_video_config
from vidtrt.errors import CheckpointError

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
    "F8_E4M3": torch.float8_e4m3fn,
    "F8_E5M2": torch.float8_e5m2,
}

OFFICIAL_DIT = "transformers/mp_rank_00_model_states.pt"
OFFICIAL_DIT_FP8 = "transformers/mp_rank_00_model_states_fp8.pt"
OFFICIAL_DIT_FP8_MAP = "transformers/mp_rank_00_model_states_fp8_map.pt"
OFFICIAL_VAE = "vae/pytorch_model.pt"
DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
VIDTRT_JSON = "vidtrt.json"  # optional overrides written next to model_index.json (text, tiling, defaults)


# ----------------------------------------------------------------------------------------- file readers
def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file, backed by a copy-on-write mmap of it (no read into RAM)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            header_len = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(header_len))
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read safetensors file {path}: {e}") from None
    base = 8 + header_len
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = SAFETENSORS_DTYPES.get(info["dtype"])
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        numel = 1
        for d in info["shape"]:
            numel *= d
        if numel == 0:
            out[name] = torch.empty(info["shape"], dtype=dtype)
            continue
        flat = torch.frombuffer(mm, dtype=torch.uint8, count=end - start, offset=base + start)
        out[name] = flat.view(dtype).reshape(info["shape"])
    return out


def read_weights_dir(folder: Path, stem: str = DIFFUSERS_WEIGHTS) -> tuple[dict[str, torch.Tensor], dict[str, Path]]:
    """Tensors of ``stem.safetensors`` or its sharded form (``stem.safetensors.index.json``).

    Returns the tensors and, for error messages, which file each key came from.
    """
    single = folder / f"{stem}.safetensors"
    index = folder / f"{stem}.safetensors.index.json"
    if index.exists():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        tensors: dict[str, torch.Tensor] = {}
        origin: dict[str, Path] = {}
        for shard in sorted(set(weight_map.values())):
            part = read_safetensors(folder / shard)
            for k, v in part.items():
                tensors[k] = v
                origin[k] = folder / shard
        missing = [k for k, s in weight_map.items() if k not in tensors]
        if missing:
            raise CheckpointError(f"{index}: key {missing[0]!r} is listed in the index but absent from its shard")
        return tensors, origin
    if single.exists():
        tensors = read_safetensors(single)
        return tensors, {k: single for k in tensors}
    raise CheckpointError(f"no weights in {folder}: expected {single.name} or {index.name}")


def read_torch_file(path: Path) -> dict[str, torch.Tensor]:
    """A ``.pt`` state dict, memory-mapped; the official DiT nests it under ``"module"``."""
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", mmap=True, weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read {path}: {type(e).__name__}: {str(e).splitlines()[0]}") from None
    if isinstance(obj, dict) and "module" in obj and isinstance(obj["module"], dict):
        obj = obj["module"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


# -------------------------------------------------------------------------------------------- loading
def load_state_dict_into(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    origin: Callable[[str], Path | str],
    ignored_prefixes: Iterable[str] = (),
    dtype: torch.dtype | None = None,
) -> nn.Module:
    """Strictly assign ``state_dict`` to a (meta-device) module; one-line errors name key and file."""
    ignored = tuple(ignored_prefixes)
    expected = module.state_dict(keep_vars=True)
    for key in state_dict:
        if key not in expected and not key.startswith(ignored):
            owner = type(module).__name__
            raise CheckpointError(f"unexpected key {key!r} in {origin(key)} (not a parameter of {owner})")
    for key, param in expected.items():
        if key not in state_dict:
            raise CheckpointError(f"missing key {key!r} in {origin(key)} (needed by {type(module).__name__})")
        got = state_dict[key]
        if tuple(got.shape) != tuple(param.shape):
            raise CheckpointError(
                f"key {key!r} in {origin(key)} has shape {list(got.shape)}, "
                f"the model expects {list(param.shape)} (wrong config for this checkpoint?)"
            )
    target = dtype or torch.float32
    converted = {}
    for key in expected:
        t = state_dict[key]
        if t.dtype != target and t.is_floating_point():
            t = t.to(target)
        converted[key] = t
    module.load_state_dict(converted, strict=True, assign=True)
    return module


def build_on_meta(factory: Callable[[], nn.Module]) -> nn.Module:
    with torch.device("meta"):
        return factory()


# ----------------------------------------------------------------------------------------- model folders
def detect_layout(folder: Path) -> str:
    """'diffusers' (model_index.json or transformer/) or 'official' (transformers/mp_rank_00_...)."""
    if (folder / "model_index.json").exists() or (folder / "transformer").is_dir():
        return "diffusers"
    if official_root(folder) is not None:
        return "official"
    raise CheckpointError(
        f"{folder} is not a HunyuanVideo checkpoint: expected model_index.json + transformer/ (diffusers layout) "
        f"or {OFFICIAL_DIT} (official layout)"
    )


def official_root(folder: Path) -> Path | None:
    """The folder holding ``transformers/`` in the official layout (it may be ``hunyuan-video-t2v-720p/``)."""
    for cand in (folder, folder / "hunyuan-video-t2v-720p", folder / "ckpts" / "hunyuan-video-t2v-720p"):
        if (cand / OFFICIAL_DIT).exists() or (cand / OFFICIAL_DIT_FP8).exists():
            return cand
    return None


def resolve_model(model: str | Path) -> Path:
    """'tiny' -> the embedded model's folder (written on first use); a path -> that folder, checked."""
    if str(model) == "tiny":
        from vidtrt.embedded import tiny_checkpoint

        return tiny_checkpoint()
    folder = Path(model).expanduser()
    if not folder.is_dir():
        raise CheckpointError(f"model folder not found: {folder} (accepted: 'tiny' or a checkpoint folder)")
    detect_layout(folder)
    return folder


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing config file: {path}") from None
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None


def load_model_config(model: str | Path) -> ModelConfig:
    """The ModelConfig of a checkpoint folder ('tiny' included)."""
    folder = resolve_model(model)
    config = hunyuan_video_config()
    config.name = folder.name if str(model) != "tiny" else "tiny"
    if detect_layout(folder) == "diffusers":
        config.transformer = TransformerConfig.from_dict(_read_json(folder / "transformer" / "config.json"))
        config.vae = VAEConfig.from_dict(_read_json(folder / "vae" / "config.json"))
        sched = folder / "scheduler" / "scheduler_config.json"
        if sched.exists():
            config.defaults.flow_shift = float(_read_json(sched).get("shift", config.defaults.flow_shift))
    else:
        root = official_root(folder)
        cfg_json = root / "transformers" / "config.json"
        if cfg_json.exists():
            config.transformer = TransformerConfig.from_dict(_read_json(cfg_json))
        vae_json = root / "vae" / "config.json"
        if vae_json.exists():
            config.vae = VAEConfig.from_dict(_vae_config_from_official(_read_json(vae_json)))
    overrides = folder / VIDTRT_JSON
    if overrides.exists():
        _apply_overrides(config, _read_json(overrides))
    return config.validate()


def _vae_config_from_official(data: dict) -> dict:
    # The official VAE config.json uses diffusers-style names already; keep the fields we know.
    return {k: v for k, v in data.items() if not k.startswith("_")}


def _apply_overrides(config: ModelConfig, data: dict) -> None:
    for section in ("text", "tiling", "defaults"):
        for key, value in data.get(section, {}).items():
            target = getattr(config, section)
            if not hasattr(target, key):
                raise CheckpointError(f"{VIDTRT_JSON}: unknown field {section}.{key}")
            setattr(target, key, value)
    if "name" in data:
        config.name = data["name"]


def load_transformer(model: str | Path, config: ModelConfig | None = None, dtype: torch.dtype = torch.float32):
    """The DiT of a checkpoint folder, on CPU, in ``dtype``."""
    from vidtrt.models.transformer import HunyuanVideoTransformer3D

    folder = resolve_model(model)
    config = config or load_model_config(folder)
    if detect_layout(folder) == "diffusers":
        tensors, origin = read_weights_dir(folder / "transformer")
        where = lambda k: origin.get(k, folder / "transformer")  # noqa: E731
    else:
        tensors, where = _read_official_dit(official_root(folder))
    module = build_on_meta(lambda: HunyuanVideoTransformer3D(config.transformer))
    load_state_dict_into(module, tensors, where, dtype=dtype)
    _init_buffers(module)
    return module.eval()


def _read_official_dit(root: Path):
    from vidtrt.models.official_layout import dequantize_fp8, official_to_diffusers

    fp8, fp8_map = root / OFFICIAL_DIT_FP8, root / OFFICIAL_DIT_FP8_MAP
    if (root / OFFICIAL_DIT).exists():
        source = root / OFFICIAL_DIT
        sd = read_torch_file(source)
    elif fp8.exists():
        if not fp8_map.exists():
            raise CheckpointError(f"{fp8} needs its scale map {fp8_map.name}, which is missing")
        source = fp8
        scales = read_torch_file(fp8_map)
        sd = dequantize_fp8(read_torch_file(fp8), scales)
    else:
        raise CheckpointError(f"no DiT weights under {root}: expected {OFFICIAL_DIT} or {OFFICIAL_DIT_FP8}")
    try:
        converted = official_to_diffusers(sd)
    except KeyError as e:
        raise CheckpointError(f"{source}: unexpected key layout ({e})") from None
    return converted, lambda k: source


def load_vae_decoder(model: str | Path, config: ModelConfig | None = None, dtype: torch.dtype = torch.float32):
    """The VAE decoder (with post-quant conv) of a checkpoint folder."""
    from vidtrt.models.vae import IGNORED_PREFIXES, HunyuanVideoVAEDecoder

    folder = resolve_model(model)
    config = config or load_model_config(folder)
    if detect_layout(folder) == "diffusers":
        tensors, origin = read_weights_dir(folder / "vae")
        where = lambda k: origin.get(k, folder / "vae")  # noqa: E731
    else:
        from vidtrt.models.vae_official_layout import official_vae_to_diffusers

        source = official_root(folder) / OFFICIAL_VAE
        tensors = official_vae_to_diffusers(read_torch_file(source))
        where = lambda k: source  # noqa: E731
    module = build_on_meta(lambda: HunyuanVideoVAEDecoder(config.vae))
    load_state_dict_into(module, tensors, where, ignored_prefixes=IGNORED_PREFIXES, dtype=dtype)
    _init_buffers(module)
    return module.eval()


def _init_buffers(module: nn.Module) -> None:
    """Non-persistent buffers built on meta must be recomputed on CPU (none is expected today)."""
    for name, buf in module.named_buffers():
        if buf.is_meta:
            raise CheckpointError(f"buffer {name!r} of {type(module).__name__} was not initialised by the checkpoint")


def load_text_encoder(model: str | Path, config: ModelConfig | None = None, dtype: torch.dtype = torch.float32):
    """The LLM + CLIP text encoder of a checkpoint folder."""
    from vidtrt.text_encoders import HunyuanTextEncoder

    folder = resolve_model(model)
    config = config or load_model_config(folder)
    if detect_layout(folder) == "official" and not (folder / "text_encoder").is_dir():
        folder = official_root(folder).parent  # ckpts/ holds text_encoder/ beside hunyuan-video-t2v-720p/
    return HunyuanTextEncoder.from_pretrained(folder, config.text, torch_dtype=dtype)

