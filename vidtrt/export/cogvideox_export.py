"""ONNX export of CogVideoX components through their specs (:mod:`vidtrt.config.cogvideox_specs`).

- The DiT (``dit.onnx``) keeps every spec axis dynamic (batch, latent frames, height, width): the RoPE
  positions are computed from the latent shape with tensor arithmetic while exporting (``rope_3d``).
- The VAE tile decoder is exported as one frame batch (``vae_decoder_batch.onnx``): dynamic in the batch's
  frame count (1..3) and the tile size, with each causal conv's cache as an input and an output and a
  ``first`` flag for the first batch (:class:`vidtrt.models.cogvideox_vae.CogVideoXVAEFrameBatch`). The
  onnxruntime engine of ``vae_decoder_tile`` loops over the batches
  (:class:`vidtrt.runtime.cogvideox_engines.FrameBatchTileDecoder`).

``vidtrt export --model <cogvideox model>`` writes both through :func:`vidtrt.export.onnx_export.export_components`;
the functions here export one of them (``module``: an already loaded network, e.g. a test's random one).
"""

from __future__ import annotations

from pathlib import Path

import torch

from vidtrt.config.cogvideox_specs import dit_spec, vae_decoder_batch_spec
from vidtrt.export.onnx_export import DEFAULT_OPSET, ExportError, ExportResult, export_onnx
from vidtrt.source.model_source import ModelSource


def _cogvideox(model) -> ModelSource:
    source = ModelSource.open(model)
    if source.family.name != "cogvideox":
        raise ExportError(f"{source.ref} is a {source.family.name} model; this exports CogVideoX components")
    return source


def export_cogvideox_dit(model: str | Path | ModelSource, out: str | Path, opset: int = DEFAULT_OPSET,
                         module: torch.nn.Module | None = None, quantized: str | Path | None = None) -> ExportResult:
    """Export the DiT of a CogVideoX ``model`` ('tiny-cogvideox', a folder or a ModelSource) to
    ``out/dit.onnx`` (float32; ``module``: an already loaded DiT). ``quantized``: a ``vidtrt quantize`` state
    folder made for this checkpoint (CheckpointError otherwise, before any work): the DiT as FP8 Q/DQ ONNX,
    ``out/dit_fp8.onnx`` + external data, at opset max(``opset``, 19), exactly as HunyuanVideo's
    (:func:`vidtrt.export.onnx_export.export_fp8_dit`, :mod:`vidtrt.export.onnx_fp8`; weights streamed from
    the checkpoint, ``module`` ignored). ExportError for another family."""
    source = _cogvideox(model)
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


def export_cogvideox_vae(model: str | Path | ModelSource, out: str | Path, opset: int = DEFAULT_OPSET,
                         decoder: torch.nn.Module | None = None) -> ExportResult:
    """Export the VAE decoder of a CogVideoX ``model`` as its frame-batch graph ``out/vae_decoder_batch.onnx``
    (float32; ``decoder``: an already loaded :class:`~vidtrt.models.cogvideox_vae.CogVideoXVAEDecoder`, whose
    own config then sets the spec's cache channels). ExportError for another family."""
    from vidtrt.models.cogvideox_vae import CogVideoXVAEFrameBatch

    source = _cogvideox(model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    decoder = decoder if decoder is not None else source.load_vae_decoder(torch.float32)
    config = source.config
    if decoder.config != config.vae:
        import dataclasses

        config = dataclasses.replace(config, vae=decoder.config)
    metadata = {"vidtrt.model": source.config.name, "vidtrt.config_sha256": source.fingerprint}
    return export_onnx(CogVideoXVAEFrameBatch(decoder).eval(), vae_decoder_batch_spec(config),
                       out / "vae_decoder_batch.onnx", opset, metadata=metadata)
