"""ONNX export of the CogVideoX DiT through its spec (:func:`vidtrt.config.cogvideox_specs.dit_spec`).

The graph keeps every spec axis dynamic (batch, latent frames, height, width): the RoPE positions are
computed from the latent shape with tensor arithmetic while exporting (``rope_3d``), so no size is baked
in. It runs in :class:`vidtrt.runtime.engines.OnnxRuntimeEngine` with the same spec.

Not exported yet: the VAE tile decoder, whose frame batches and causal conv cache are Python control flow
over the latent frame count (``torch.export`` would fix the count); see docs/cogvideox.md.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vidtrt.config.cogvideox_specs import dit_spec
from vidtrt.export.onnx_export import DEFAULT_OPSET, ExportError, ExportResult, export_onnx
from vidtrt.source.model_source import ModelSource


def export_cogvideox_dit(model: str | Path | ModelSource, out: str | Path, opset: int = DEFAULT_OPSET,
                         module: torch.nn.Module | None = None, quantized: str | Path | None = None) -> ExportResult:
    """Export the DiT of a CogVideoX ``model`` ('tiny-cogvideox', a folder or a ModelSource) to
    ``out/dit.onnx`` (float32; ``module``: an already loaded DiT). ``quantized``: a ``vidtrt quantize`` state
    folder made for this checkpoint (CheckpointError otherwise, before any work): the DiT as FP8 Q/DQ ONNX,
    ``out/dit_fp8.onnx`` + external data, at opset max(``opset``, 19), exactly as HunyuanVideo's
    (:func:`vidtrt.export.onnx_export.export_fp8_dit`, :mod:`vidtrt.export.onnx_fp8`; weights streamed from
    the checkpoint, ``module`` ignored). ExportError for another family."""
    source = ModelSource.open(model)
    if source.family.name != "cogvideox":
        raise ExportError(f"{source.ref} is a {source.family.name} model; this exports CogVideoX DiTs")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if quantized is not None:
        from vidtrt.export.onnx_export import export_fp8_dit
        from vidtrt.export.onnx_fp8 import FP8_DIT_FILE, FP8_MIN_OPSET
        from vidtrt.source.quant_state import QuantState

        state = QuantState.load(quantized, source)
        metadata = {"vidtrt.model": source.config.name, "vidtrt.config_sha256": source.fingerprint}
        result, _ = export_fp8_dit(source, state, dit_spec(source.config), out / FP8_DIT_FILE,
                                   max(opset, FP8_MIN_OPSET), metadata=metadata)
        return result
    module = module if module is not None else source.load_transformer(torch.float32)
    metadata = {"vidtrt.model": source.config.name, "vidtrt.config_sha256": source.fingerprint}
    return export_onnx(module.eval(), dit_spec(source.config), out / "dit.onnx", opset, metadata=metadata)
