"""The FP8 quantization state ``vidtrt quantize`` writes and every FP8 step loads (no ModelOpt needed).

A state is a folder:

- ``vidtrt-quant.json``: ``{"format": "vidtrt-fp8-quant/1", "model_fingerprint": <ModelSource.fingerprint>,
  "weights_fingerprint": <weights_fingerprint(source)>, "modelopt_version": ..., "quant_config": {...},
  "calibration": {...}, "quality": {...}}``;
- ``amax.safetensors``: float32 amax per quantizer, scalar (per tensor) or [C] (per channel), keyed
  ``<DiT module path>.input_quantizer`` / ``.weight_quantizer`` for every Linear and
  ``<attention module path>.q_quantizer`` / ``.k_quantizer`` / ``.v_quantizer`` / ``.softmax_quantizer``
  (module paths of ``named_modules()``, which are diffusers' names). FP8 scales are ``amax / 448``.

:meth:`QuantState.load` refuses, with one line (:class:`~vidtrt.errors.CheckpointError`, exit 2), a
missing or corrupt folder, an unknown format, and a state made for another checkpoint (config or
weights fingerprint differs).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

import torch

from vidtrt.errors import CheckpointError, one_line

QUANT_FORMAT = "vidtrt-fp8-quant/1"
STATE_FILE = "vidtrt-quant.json"
AMAX_FILE = "amax.safetensors"
QUALITY_FILE = "quality.json"
_SAMPLE_BYTES = 1 << 16  # bytes read at each sampled offset of a weight file
_SAMPLES = 8  # sampled offsets per file (plus its head, which holds a safetensors header)


def dit_weight_files(folder: Path) -> list[Path]:
    """The files the DiT's weights come from: ``transformer/*.safetensors`` (+ index) of a diffusers folder,
    ``transformers/mp_rank_00_model_states*.pt`` (+ FP8 map) of the official layout."""
    from vidtrt.source.checkpoints import official_root

    sub = folder / "transformer"
    if sub.is_dir():
        files = sorted(p for p in sub.iterdir() if p.is_file() and (p.suffix == ".safetensors"
                                                                   or p.name.endswith(".safetensors.index.json")))
        if files:
            return files
    root = official_root(folder)
    if root is not None:
        files = sorted((root / "transformers").glob("mp_rank_00_model_states*.pt"))
        if files:
            return files
    raise CheckpointError(f"no DiT weight files found in {folder}")


def weights_fingerprint(folder: str | os.PathLike) -> str:
    """sha256 over the DiT weight files' names, sizes, first 64 KiB (safetensors headers: every tensor's
    name, dtype, shape, offset) and 8 evenly spaced 64 KiB samples: changes when the weights change,
    reads at most ~0.6 MB per file whatever the model size. Copying or moving the folder keeps it."""
    h = hashlib.sha256()
    for path in dit_weight_files(Path(folder)):
        size = path.stat().st_size
        h.update(f"{path.name}\0{size}\0".encode())
        with open(path, "rb") as f:
            offsets = sorted({0, *(i * max(size - _SAMPLE_BYTES, 0) // _SAMPLES for i in range(1, _SAMPLES + 1))})
            for off in offsets:
                f.seek(off)
                h.update(f.read(_SAMPLE_BYTES))
    return h.hexdigest()


def _check_amax(amax: Mapping[str, torch.Tensor], where: str) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in amax.items():
        if not isinstance(t, torch.Tensor) or t.dtype != torch.float32 or t.ndim > 1:
            raise CheckpointError(f"{where}: amax {name!r} must be a float32 scalar or vector, got "
                                  f"{getattr(t, 'dtype', type(t).__name__)} {list(getattr(t, 'shape', []))}")
        if not bool(torch.isfinite(t).all()) or bool((t < 0).any()):
            raise CheckpointError(f"{where}: amax {name!r} is not finite and >= 0 (corrupt state)")
        out[name] = t
    return out


@dataclass(frozen=True)
class QuantState:
    """A loaded quantization state (see the module docstring); read-only.

    ``amax``: quantizer name -> float32 tensor (scalar or [C]); ``config``: the quantization config
    (``quant_config`` of the JSON); ``calibration`` / ``quality``: what ``vidtrt quantize`` recorded.
    """

    folder: Path
    model_fingerprint: str
    weights_fingerprint: str
    modelopt_version: str
    config: Mapping[str, Any]
    calibration: Mapping[str, Any]
    quality: Mapping[str, Any]
    amax: Mapping[str, torch.Tensor] = field(repr=False)

    @classmethod
    def load(cls, folder: str | os.PathLike, source=None, check_weights: bool = True) -> QuantState:
        """Read ``folder``; with ``source`` (a :class:`~vidtrt.source.model_source.ModelSource`), check it was
        made for that checkpoint: same config fingerprint, and (``check_weights``) same weights fingerprint.
        CheckpointError (one line) otherwise."""
        folder = Path(folder)
        meta = folder / STATE_FILE
        if not folder.is_dir():
            raise CheckpointError(f"quantization state folder not found: {folder} (make one with `vidtrt quantize`)")
        if not meta.is_file():
            raise CheckpointError(f"{folder} is not a quantization state: {STATE_FILE} is missing "
                                  "(make one with `vidtrt quantize`)")
        try:
            data = json.loads(meta.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{meta} is corrupt (not JSON: {one_line(e)}); re-run `vidtrt quantize`") from None
        if not isinstance(data, dict) or data.get("format") != QUANT_FORMAT:
            got = data.get("format") if isinstance(data, dict) else type(data).__name__
            raise CheckpointError(f"{meta}: unknown format {got!r}; accepted: {QUANT_FORMAT!r}")
        for key in ("model_fingerprint", "weights_fingerprint", "quant_config"):
            if key not in data:
                raise CheckpointError(f"{meta} is corrupt: no {key!r}; re-run `vidtrt quantize`")
        if source is not None:
            if data["model_fingerprint"] != source.fingerprint:
                theirs = str(data["model_fingerprint"])[:12]
                raise CheckpointError(
                    f"quantization state {folder} was made for another model (config {theirs}, this model "
                    f"{source.config.name!r} is {source.fingerprint[:12]}); re-run "
                    f"`vidtrt quantize --model {source.ref}`")
            if check_weights:
                mine = weights_fingerprint(source.folder)
                if data["weights_fingerprint"] != mine:
                    raise CheckpointError(
                        f"quantization state {folder} was made for other weights (weights "
                        f"{str(data['weights_fingerprint'])[:12]}, {source.folder} has {mine[:12]}); re-run "
                        f"`vidtrt quantize --model {source.ref}`")
        amax_path = folder / AMAX_FILE
        if not amax_path.is_file():
            raise CheckpointError(f"{folder}: {AMAX_FILE} is missing; re-run `vidtrt quantize`")
        try:
            from safetensors.torch import load_file

            amax = load_file(str(amax_path))
        except Exception as e:  # safetensors raises its own error types for truncated/garbled files
            raise CheckpointError(f"{amax_path} is corrupt ({one_line(e)}); re-run `vidtrt quantize`") from None
        amax = _check_amax(amax, str(amax_path))
        if not amax:
            raise CheckpointError(f"{amax_path} holds no amax; re-run `vidtrt quantize`")
        return cls(folder=folder, model_fingerprint=data["model_fingerprint"],
                   weights_fingerprint=data["weights_fingerprint"],
                   modelopt_version=str(data.get("modelopt_version", "unknown")),
                   config=MappingProxyType(dict(data["quant_config"])),
                   calibration=MappingProxyType(dict(data.get("calibration") or {})),
                   quality=MappingProxyType(dict(data.get("quality") or {})),
                   amax=MappingProxyType(amax))

    def apply(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` (our DiT) as its FP8 fake-quant twin, in place (:func:`vidtrt.models.fp8.apply_fp8`);
        CheckpointError when the amax names do not match its modules."""
        from vidtrt.models.fp8 import apply_fp8

        try:
            return apply_fp8(module, self.amax)
        except ValueError as e:
            raise CheckpointError(f"quantization state {self.folder} does not fit this DiT: {e}") from None

    def scales(self) -> dict[str, torch.Tensor]:
        """Quantizer name -> float32 FP8 scale (``amax / 448``; what Q/DQ nodes and FP8 GEMMs use)."""
        from vidtrt.models.fp8 import fp8_scale

        return {k: fp8_scale(v) for k, v in self.amax.items()}


def write_quant_state(folder: str | os.PathLike, source, amax: Mapping[str, torch.Tensor],
                      quant_config: Mapping[str, Any], calibration: Mapping[str, Any],
                      quality: Mapping[str, Any] | None = None, modelopt_version: str = "unknown") -> Path:
    """Write a state folder for ``source`` (ModelSource): the JSON and ``amax.safetensors`` (atomically
    replaced). Returns the JSON's path."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    amax = {k: v.detach().to("cpu", torch.float32).reshape(-1 if v.numel() > 1 else ()).contiguous()
            for k, v in amax.items()}
    _check_amax(amax, "amax to write")
    tmp = folder / (AMAX_FILE + ".tmp")
    save_file(amax, str(tmp), metadata={"format": QUANT_FORMAT})
    os.replace(tmp, folder / AMAX_FILE)
    data = {"format": QUANT_FORMAT, "model": source.config.name, "model_fingerprint": source.fingerprint,
            "weights_fingerprint": weights_fingerprint(source.folder), "modelopt_version": modelopt_version,
            "quant_config": dict(quant_config), "calibration": dict(calibration), "quality": dict(quality or {})}
    meta = folder / STATE_FILE
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(tmp, meta)
    return meta
