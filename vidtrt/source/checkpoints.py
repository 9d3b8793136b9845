"""Checkpoint folders: the diffusers layout and the official Tencent layout.

Weights are read zero-copy (safetensors through a private mmap, ``.pt`` through
``torch.load(mmap=True)``) into modules built on the meta device with ``assign=True``, so a model
is never held twice: peak RAM is about the weights' size plus one tensor.

Every parameter ends up 64-byte aligned (:data:`WEIGHT_ALIGNMENT`), whichever file it came from: a
mapped tensor whose file offset is not aligned is copied once (its source pages dropped right after).
BLAS libraries may round differently for the same values at another alignment (oneMKL documents
this under "conditional numerical reproducibility"; its SSE4.2 sgemm path does it here), so without
this the same weights in the official layout (torch's zip records: 64-byte aligned) and the
diffusers layout (safetensors: 8-byte aligned data) gave videos one pixel level apart on some CPUs.

A missing, unexpected or mis-shaped key is a :class:`~vidtrt.errors.CheckpointError` naming the key
and the file it came from (or should have come from).
"""

from __future__ import annotations

import dataclasses
import json
import math
import mmap
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import torch
from torch import nn

from vidtrt.config.model_config import (
    VIDTRT_JSON,
    ModelConfig,
    TransformerConfig,
    VAEConfig,
    hunyuan_video_config,
)
from vidtrt.config.sparse_attention import SparseAttentionConfig
from vidtrt.counters import count
from vidtrt.errors import CheckpointError, ConfigError, one_line

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
WEIGHT_ALIGNMENT = 64  # bytes: torch's CPU allocator alignment, what oneMKL asks for reproducible results


# ----------------------------------------------------------------------------------------- file readers
def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of one .safetensors file, backed by a copy-on-write mmap of it (no read into RAM).

    The header is checked against the file (size, offsets, dtype x shape = byte count), so a
    truncated or corrupt file is a one-line :class:`CheckpointError` naming the file.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8:
                raise CheckpointError(f"corrupt safetensors file {path}: {size} bytes, shorter than its header")
            header_len = int.from_bytes(f.read(8), "little")
            if header_len > size - 8:
                raise CheckpointError(
                    f"corrupt safetensors file {path}: header length {header_len} exceeds the file size {size}"
                )
            header = json.loads(f.read(header_len))
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint file not found: {path}") from None
    except (OSError, ValueError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise CheckpointError(f"cannot read safetensors file {path}: {one_line(e, with_type=True)}") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"corrupt safetensors file {path}: the header is not a JSON object")
    base = 8 + header_len
    out: dict[str, torch.Tensor] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            dtype_name, shape, (start, end) = info["dtype"], [int(d) for d in info["shape"]], info["data_offsets"]
        except (KeyError, TypeError, ValueError):
            raise CheckpointError(f"corrupt safetensors file {path}: bad header entry for tensor {name!r}") from None
        dtype = SAFETENSORS_DTYPES.get(dtype_name)
        if dtype is None:
            raise CheckpointError(f"{path}: tensor {name!r} has unsupported dtype {dtype_name}")
        numel = math.prod(shape)
        nbytes = numel * torch.empty((), dtype=dtype).element_size()
        bad_offsets = not (isinstance(start, int) and isinstance(end, int)) or start < 0 or base + end > size
        if bad_offsets or min(shape, default=0) < 0 or end - start != nbytes:
            raise CheckpointError(
                f"corrupt or truncated safetensors file {path}: tensor {name!r} ({dtype_name} {shape}) "
                f"claims bytes [{start}, {end}) of a {size - base}-byte data section"
            )
        if numel == 0:
            out[name] = torch.empty(shape, dtype=dtype)
            continue
        flat = torch.frombuffer(mm, dtype=torch.uint8, count=nbytes, offset=base + start)
        out[name] = flat.view(dtype).reshape(shape)
    return out


SAFETENSORS_NAMES = {v: k for k, v in SAFETENSORS_DTYPES.items()}


def write_safetensors_streaming(
    path: str | Path,
    specs: Iterable[tuple[str, Sequence[int], torch.dtype]],
    make: Callable[[str], torch.Tensor],
    metadata: dict[str, str] | None = None,
) -> int:
    """Write a .safetensors file one tensor at a time (peak RAM: one tensor, not the whole model).

    ``specs`` lists (name, shape, dtype) in file order; ``make(name)`` returns that tensor when its
    turn comes. Returns the file size in bytes. The file is readable by ``safetensors`` itself.
    """
    specs = [(name, [int(d) for d in shape], dtype) for name, shape, dtype in specs]
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, shape, dtype in specs:
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        header[name] = {"dtype": SAFETENSORS_NAMES[dtype], "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    blob = json.dumps(header, separators=(",", ":")).encode()
    # safetensors pads to 8; we pad to WEIGHT_ALIGNMENT so tensors whose sizes are multiples of it stay
    # aligned (zero-copy) when read back
    blob += b" " * (-(8 + len(blob)) % WEIGHT_ALIGNMENT)
    with open(path, "wb") as f:
        f.write(len(blob).to_bytes(8, "little"))
        f.write(blob)
        for name, shape, dtype in specs:
            t = make(name)
            if list(t.shape) != shape or t.dtype != dtype:
                raise ValueError(f"{name}: make() gave {t.dtype} {list(t.shape)}, the header says {dtype} {shape}")
            f.write(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())  # no extra copy
    return 8 + len(blob) + offset


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


def read_torch_file(path: Path, shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """A ``.pt`` state dict, memory-mapped; the official DiT nests it under ``"module"``.

    shapes_only: tensors on the meta device (names, shapes, dtypes), what inferring the DiT's architecture
    needs. From torch's zip format only the archive's pickle is read (no weight byte is read or mapped);
    a legacy (pre-zip) file is read through, one tensor at a time, none of it kept.
    """
    if not path.exists():
        raise CheckpointError(f"checkpoint file not found: {path}")
    where = {"map_location": "meta"} if shapes_only else {"map_location": "cpu", "mmap": True}
    try:
        try:
            obj = torch.load(path, weights_only=True, **where)
        except RuntimeError as e:
            if "_use_new_zipfile_serialization" not in str(e):
                raise
            # a legacy (pre-zip) torch.save file cannot be mapped: read it whole (one copy, in RAM)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt files
        raise CheckpointError(f"cannot read {path}: {one_line(e, with_type=True)}") from None
    if isinstance(obj, dict) and "module" in obj and isinstance(obj["module"], dict):
        obj = obj["module"]
    elif isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a state dict, got {type(obj).__name__}")
    return obj


# ------------------------------------------------------------------------------------- page release
class PageReleaser:
    """Drops the resident pages of file-backed source tensors once they have been converted.

    A tensor read through a private file mapping (``read_safetensors``, ``torch.load(mmap=True)``)
    occupies RAM only for the pages touched. Converting it (bf16 -> fp32, fp8 dequantization)
    touches every page, so without help the loader would end up holding the source bytes *and*
    the converted copy. ``madvise(MADV_DONTNEED)`` on the source's whole pages returns them; the
    mapping stays valid (a later read re-reads the file), so this is safe as long as nobody wrote
    to the mapping, which the loader never does.

    Only address ranges that ``/proc/self/maps`` shows as private mappings of ``files`` are ever
    released, so an ordinary (anonymous) tensor passed by mistake is left alone. Linux only; a
    no-op elsewhere.
    """

    MADV_DONTNEED = 4

    def __init__(self, files: Iterable[Path]):
        self.ranges: list[tuple[int, int]] = []
        self.page = mmap.PAGESIZE
        self._madvise = None
        if not sys.platform.startswith("linux"):
            return
        names = {str(Path(f).resolve()) for f in files}
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    parts = line.split(maxsplit=5)
                    if len(parts) == 6 and parts[5].rstrip("\n") in names and parts[1].endswith("p"):
                        lo, hi = (int(x, 16) for x in parts[0].split("-"))
                        self.ranges.append((lo, hi))
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
            self._madvise = libc.madvise
        except (OSError, AttributeError):
            self.ranges = []

    def release(self, tensor: torch.Tensor) -> int:
        """Drop the whole pages of ``tensor``'s bytes if they lie in one of the files; bytes released."""
        if self._madvise is None or tensor.device.type != "cpu" or tensor.numel() == 0:
            return 0
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        if not any(lo <= start and end <= hi for lo, hi in self.ranges):
            return 0
        lo = -(-start // self.page) * self.page
        hi = end // self.page * self.page
        if hi <= lo or self._madvise(lo, hi - lo, self.MADV_DONTNEED) != 0:
            return 0
        return hi - lo


# -------------------------------------------------------------------------------------------- loading
def load_state_dict_into(
    module: nn.Module,
    state_dict: dict[str, torch.Tensor],
    origin: Callable[[str], Path | str],
    ignored_prefixes: Iterable[str] = (),
    dtype: torch.dtype | None = None,
    releaser: PageReleaser | None = None,
    describe: Callable[[str], str] = repr,
) -> nn.Module:
    """Strictly assign ``state_dict`` to a (meta-device) module; one-line errors name key and file.

    Tensors already in ``dtype`` and aligned to :data:`WEIGHT_ALIGNMENT` bytes are assigned as they
    are (zero-copy: the parameters *are* the mapped file). Others are converted or copied one at a
    time into aligned memory, and ``releaser`` drops each source's pages right after, so the peak is
    the loaded model plus one tensor, not both copies.
    ``describe(key)`` renders a key in messages (the official layout adds the official name).
    """
    ignored = tuple(ignored_prefixes)
    expected = module.state_dict(keep_vars=True)
    owner = type(module).__name__
    for key in state_dict:
        if key not in expected and not key.startswith(ignored):
            raise CheckpointError(f"unexpected key {describe(key)} in {origin(key)} (not a parameter of {owner})")
    for key, param in expected.items():
        if key not in state_dict:
            raise CheckpointError(f"missing key {describe(key)} in {origin(key)} (needed by {owner})")
        got = state_dict[key]
        if tuple(got.shape) != tuple(param.shape):
            raise CheckpointError(
                f"key {describe(key)} in {origin(key)} has shape {list(got.shape)}, "
                f"the model expects {list(param.shape)} (wrong config for this checkpoint?)"
            )
    target = dtype or torch.float32
    converted = {}
    for key in expected:
        t = state_dict[key]
        if t.is_floating_point() and (t.dtype != target or t.data_ptr() % WEIGHT_ALIGNMENT):
            src, t = t, t.to(target, copy=True)
            if releaser is not None:
                releaser.release(src)
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


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"missing config file: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def read_model_config(folder: Path, name: str) -> ModelConfig:
    """The ModelConfig of checkpoint ``folder`` (named ``name``), read from its files once.

    diffusers layout: ``transformer/config.json``, ``vae/config.json`` and the scheduler's ``shift``.
    Official layout: the DiT architecture is inferred from the weights' names and shapes, read
    without their data (:func:`infer_transformer_config`); a ``transformers/config.json`` (diffusers
    field names) next to the weights overrides what it names. The VAE config is ``vae/config.json``
    (official names). Both: ``vidtrt.json`` beside the checkpoint overrides the text/tiling/defaults
    sections. Most callers want :meth:`vidtrt.source.model_source.ModelSource.open` (which calls this once).
    """
    config = dataclasses.replace(hunyuan_video_config(), name=name)
    try:
        if detect_layout(folder) == "diffusers":
            cfg_path = folder / "transformer" / "config.json"
            dit_cfg = _read_json(cfg_path)
            if dit_cfg.get("image_condition_type") is not None:
                raise CheckpointError(
                    f"{cfg_path}: image_condition_type={dit_cfg['image_condition_type']!r} is an image-to-video "
                    f"model; only text-to-video (image_condition_type null) is supported"
                )
            config = dataclasses.replace(config, transformer=TransformerConfig.from_dict(dit_cfg),
                                         vae=VAEConfig.from_dict(_read_json(folder / "vae" / "config.json")))
            sched = folder / "scheduler" / "scheduler_config.json"
            if sched.exists():
                shift = float(_read_json(sched).get("shift", config.defaults.flow_shift))
                config = dataclasses.replace(config, defaults=dataclasses.replace(config.defaults, flow_shift=shift))
        else:
            root = official_root(folder)
            config = dataclasses.replace(config, transformer=_official_transformer_config(root))
            vae_json = root / "vae" / "config.json"
            if vae_json.exists():
                vae = VAEConfig.from_dict(_vae_config_from_official(_read_json(vae_json)))
                config = dataclasses.replace(config, vae=vae)
        overrides = folder / VIDTRT_JSON
        if overrides.exists():
            config = _apply_overrides(config, _read_json(overrides))
        return config.validate()
    except ConfigError as e:
        raise CheckpointError(f"{folder}: {e}") from None


def _vae_config_from_official(data: dict) -> dict:
    """The official VAE config.json (``AutoencoderKLCausal3D``) -> VAEConfig fields."""
    out = {k: v for k, v in data.items() if not k.startswith("_")}
    renames = {"time_compression_ratio": "temporal_compression_ratio", "scale_factor": "scaling_factor"}
    for old, new in renames.items():
        if old in out and new not in out:
            out[new] = out.pop(old)
    return out


def _apply_overrides(config: ModelConfig, data: dict) -> ModelConfig:
    changes = {}
    for section in ("text", "tiling", "defaults"):
        target = getattr(config, section)
        values = data.get(section, {})
        for key in values:
            if not hasattr(target, key):
                raise CheckpointError(f"{VIDTRT_JSON}: unknown field {section}.{key}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        changes[section] = dataclasses.replace(target, **values)
    if "sparse_attention" in data:  # sliding-tile attention windows of this checkpoint (STA backends)
        current = dataclasses.asdict(config.sparse_attention)
        changes["sparse_attention"] = SparseAttentionConfig.from_dict({**current, **data["sparse_attention"]})
    if "name" in data:
        changes["name"] = data["name"]
    return dataclasses.replace(config, **changes)


# ------------------------------------------------------------------------------ official DiT config
# rope_axes_dim cannot be read off the weights (RoPE has no parameters); HunyuanVideo's is known.
KNOWN_ROPE_AXES = {128: (16, 56, 56)}


def _official_dit_file(root: Path) -> Path:
    for name in (OFFICIAL_DIT, OFFICIAL_DIT_FP8):
        if (root / name).exists():
            return root / name
    raise CheckpointError(f"no DiT weights under {root}: expected {OFFICIAL_DIT} or {OFFICIAL_DIT_FP8}")


def _official_transformer_config(root: Path) -> TransformerConfig:
    source = _official_dit_file(root)
    cfg_json = root / "transformers" / "config.json"
    overrides = _read_json(cfg_json) if cfg_json.exists() else {}
    count("dit_metadata_read", str(source))
    return infer_transformer_config(read_torch_file(source, shapes_only=True), source, overrides, cfg_json)


def infer_transformer_config(
    sd: dict[str, torch.Tensor],
    source: Path | str = "the checkpoint",
    overrides: dict | None = None,
    config_path: Path | str = "transformers/config.json",
) -> TransformerConfig:
    """The DiT architecture of an official-layout state dict, from its tensor shapes alone.

    hidden size and patch sizes: ``img_in.proj.weight`` [hidden, C_in, pt, p, p]; head_dim: the size of
    a QK-norm weight (heads = hidden / head_dim); layer counts: the block indices present; MLP ratio:
    ``img_mlp.fc1`` (or single-stream ``linear1``) width / hidden; text and pooled dims: the inputs of
    ``txt_in.input_embedder`` and ``vector_in.in_layer``; guidance: ``guidance_in`` present; output
    channels: ``final_layer.linear`` rows / (pt * p * p). ``rope_axes_dim`` has no weights: it is
    (16, 56, 56) for head_dim 128 (HunyuanVideo) and must come from ``overrides`` (config.json,
    diffusers field names, which also override anything inferred) otherwise.
    """
    overrides = {k: v for k, v in (overrides or {}).items() if not k.startswith("_")}

    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise CheckpointError(f"missing key {key!r} in {source} (needed to infer the DiT architecture)")
        return tuple(sd[key].shape)

    def count(prefix: str) -> int:
        found = {int(k[len(prefix):].split(".", 1)[0]) for k in sd if k.startswith(prefix)}
        return max(found) + 1 if found else 0

    img_in = shape("img_in.proj.weight")
    if len(img_in) != 5:
        raise CheckpointError(f"key 'img_in.proj.weight' in {source} has shape {list(img_in)}, expected 5 dims")
    hidden, in_channels, pt, p, p2 = img_in
    if p != p2:
        raise CheckpointError(f"key 'img_in.proj.weight' in {source}: non-square patch {p}x{p2} is not supported")
    n_double, n_single = count("double_blocks."), count("single_blocks.")
    if n_double:
        head_dim = shape("double_blocks.0.img_attn_q_norm.weight")[0]
        mlp_hidden = shape("double_blocks.0.img_mlp.fc1.weight")[0]
    elif n_single:
        head_dim = shape("single_blocks.0.q_norm.weight")[0]
        mlp_hidden = shape("single_blocks.0.linear1.weight")[0] - 3 * hidden
    else:
        raise CheckpointError(f"{source}: no double_blocks.* or single_blocks.* keys; not a HunyuanVideo DiT")
    if hidden % head_dim:
        raise CheckpointError(f"{source}: hidden size {hidden} is not a multiple of the QK-norm width {head_dim}")
    final = shape("final_layer.linear.weight")[0]
    inferred = dict(
        in_channels=in_channels,
        out_channels=final // (pt * p * p),
        num_attention_heads=hidden // head_dim,
        attention_head_dim=head_dim,
        num_layers=n_double,
        num_single_layers=n_single,
        num_refiner_layers=count("txt_in.individual_token_refiner.blocks."),
        mlp_ratio=mlp_hidden / hidden,
        patch_size=p,
        patch_size_t=pt,
        guidance_embeds=any(k.startswith("guidance_in.") for k in sd),
        text_embed_dim=shape("txt_in.input_embedder.weight")[1],
        pooled_projection_dim=shape("vector_in.in_layer.weight")[1],
    )
    inferred.update(overrides)
    if "rope_axes_dim" not in inferred:
        head_dim = inferred["attention_head_dim"]
        if head_dim not in KNOWN_ROPE_AXES:
            raise CheckpointError(
                f"{source}: attention head_dim is {head_dim}, and the RoPE axis split (rope_axes_dim, "
                f"known only for head_dim 128) cannot be read off the weights; write it to {config_path}, "
                f'e.g. {{"rope_axes_dim": [t, h, w]}} with t + h + w = {head_dim}'
            )
        inferred["rope_axes_dim"] = KNOWN_ROPE_AXES[head_dim]
    return TransformerConfig.from_dict(inferred)


def _official_name(key: str) -> str:
    """The official-layout name of a diffusers DiT key (for messages); the key itself if unknown."""
    from vidtrt.models import official_layout as ol

    module, _, param = key.rpartition(".")
    top = {v: k for k, v in ol._TOP.items()}
    if module in top:
        return f"{top[module]}.{param}"
    if module == ol._FINAL_ADALN[1]:
        return f"{ol._FINAL_ADALN[0]}.{param}"
    for off_prefix, dif_prefix, renames, fused in ol._BLOCKS:
        hit = ol._match_block(module, dif_prefix)
        if hit is None:
            continue
        index, sub = hit
        inverse = {v: k for k, v in renames.items()}
        if sub in inverse:
            return f"{off_prefix}.{index}.{inverse[sub]}.{param}"
        owner = next((name for name, parts in fused.items() if sub in parts), None)
        if owner is not None:
            return f"{off_prefix}.{index}.{owner}.{param}"
    return key


# -------------------------------------------------------------------------------------------- modules
def _weights_file(folder: Path) -> Path:
    """What a diffusers component's weights are called (the index of a sharded checkpoint)."""
    index = folder / f"{DIFFUSERS_WEIGHTS}.safetensors.index.json"
    return index if index.exists() else folder / f"{DIFFUSERS_WEIGHTS}.safetensors"


def load_transformer(folder: Path, config: ModelConfig, dtype: torch.dtype = torch.float32, module_cls=None):
    """The DiT of checkpoint ``folder`` built from ``config`` (``module_cls``, default
    HunyuanVideoTransformer3D), on CPU, in ``dtype`` (zero-copy when the file is in ``dtype``).
    CheckpointError for a missing, unexpected or mis-shaped key."""
    from vidtrt.models.transformer import HunyuanVideoTransformer3D

    module_cls = module_cls or HunyuanVideoTransformer3D
    describe = repr
    if detect_layout(folder) == "diffusers":
        sub = folder / "transformer"
        count("dit_read", str(sub))
        tensors, origin = read_weights_dir(sub)
        default = _weights_file(sub)
        where = lambda k: origin.get(k, default)  # noqa: E731
        releaser = PageReleaser(set(origin.values()))
    else:
        tensors, source, releaser = _read_official_dit(official_root(folder), dtype)
        where = lambda k: source  # noqa: E731
        describe = lambda k: f"{k!r} (official name {_official_name(k)!r})"  # noqa: E731
    module = build_on_meta(lambda: module_cls(config.transformer))
    load_state_dict_into(module, tensors, where, dtype=dtype, releaser=releaser, describe=describe)
    _init_buffers(module)
    return module.eval()


def _read_official_dit(root: Path, dtype: torch.dtype = torch.float32):
    """(diffusers-named tensors, source file, releaser) of the official DiT, FP8 dequantized to ``dtype``."""
    from vidtrt.models.official_layout import dequantize_fp8, official_to_diffusers

    source = _official_dit_file(root)
    count("dit_read", str(source))
    sd = read_torch_file(source)
    releaser = PageReleaser([source])
    if source.name == Path(OFFICIAL_DIT_FP8).name:
        fp8_map = root / OFFICIAL_DIT_FP8_MAP
        if not fp8_map.exists():
            raise CheckpointError(f"{source} needs its scale map {fp8_map}, which is missing")
        scales = read_torch_file(fp8_map)
        out = {}
        for key, t in sd.items():  # one tensor at a time: the peak is the dequantized model + one tensor
            try:
                out[key] = dequantize_fp8({key: t}, scales, dtype)[key]
            except CheckpointError as e:
                raise CheckpointError(f"{source} with {fp8_map.name}: {e}") from None
            if out[key] is not t:
                releaser.release(t)
        sd = out
    try:
        converted = official_to_diffusers(sd)
    except CheckpointError as e:
        raise CheckpointError(f"{e} in {source}") from None
    except KeyError as e:
        raise CheckpointError(f"{source}: unexpected key layout ({e})") from None
    return converted, source, releaser


def load_vae_decoder(folder: Path, config: ModelConfig, dtype: torch.dtype = torch.float32, module_cls=None):
    """The VAE decoder (with post-quant conv) of checkpoint ``folder`` built from ``config``
    (``module_cls``, default HunyuanVideoVAEDecoder)."""
    from vidtrt.models.vae import IGNORED_PREFIXES, HunyuanVideoVAEDecoder

    module_cls = module_cls or HunyuanVideoVAEDecoder
    if detect_layout(folder) == "diffusers":
        sub = folder / "vae"
        tensors, origin = read_weights_dir(sub)
        default = _weights_file(sub)
        where = lambda k: origin.get(k, default)  # noqa: E731
        releaser = PageReleaser(set(origin.values()))
    else:
        from vidtrt.models.vae_official_layout import official_vae_to_diffusers

        source = official_root(folder) / OFFICIAL_VAE
        try:
            tensors = official_vae_to_diffusers(read_torch_file(source))
        except CheckpointError as e:
            raise CheckpointError(f"{source}: {e}") from None
        where = lambda k: source  # noqa: E731
        releaser = PageReleaser([source])
    module = build_on_meta(lambda: module_cls(config.vae))
    load_state_dict_into(module, tensors, where, ignored_prefixes=IGNORED_PREFIXES, dtype=dtype, releaser=releaser)
    _init_buffers(module)
    return module.eval()


def _init_buffers(module: nn.Module) -> None:
    """Non-persistent buffers built on meta must be recomputed on CPU (none is expected today)."""
    for name, buf in module.named_buffers():
        if buf.is_meta:
            raise CheckpointError(f"buffer {name!r} of {type(module).__name__} was not initialised by the checkpoint")


def text_encoder_root(folder: Path) -> Path:
    """The folder holding ``text_encoder/`` and ``text_encoder_2/`` for checkpoint ``folder``."""
    if detect_layout(folder) == "official" and not (folder / "text_encoder").is_dir():
        return official_root(folder).parent  # ckpts/ holds text_encoder/ beside hunyuan-video-t2v-720p/
    return folder


def load_text_encoder(folder: Path, config: ModelConfig, dtype: torch.dtype = torch.float32, encoder_cls=None):
    """The LLM + CLIP text encoder of checkpoint ``folder`` (``config.text`` settings; ``encoder_cls``,
    default HunyuanTextEncoder, its ``from_pretrained``)."""
    from vidtrt.models.text_encoders import HunyuanTextEncoder

    encoder_cls = encoder_cls or HunyuanTextEncoder
    return encoder_cls.from_pretrained(text_encoder_root(folder), config.text, torch_dtype=dtype)

