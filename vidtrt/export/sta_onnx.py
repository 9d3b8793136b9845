"""The sliding-tile (STA) plugin graph of the DiT: one ONNX serving every video size, window and step.

The block-sparse layout of sliding-tile attention depends on the video's size, the text length and the
window, so the graph takes it as inputs (``dit_spec(config, sparse=True)``, :func:`vidtrt.config.specs.sta_inputs`):

- ``sta_tile_rows`` int64 [P]: the tile order. The image tokens enter it with one Gather (a padding row
  reads an appended zero row; the RoPE tables likewise, cos 1 / sin 0) right after the patch embedding and
  leave it with one ScatterND before the output projection (the padding rows all land on one extra row,
  dropped). Norms, MLPs and the QK-norm + RoPE plugin are token-wise, so they run on the tile order.
- ``sta_kv_end`` and one ``sta_kv_idx_<g>`` / ``sta_kv_cnt_<g>`` pair per distinct layer window ``g`` of
  the model config: the layouts (128 x 64 blocks, what the plugins' payloads are compiled for).

Every joint attention of the DiT blocks is one ``vidtrt::attention_sta`` node (``plugin-sta``) or, with
in-graph FP8 quantization, ``vidtrt::attention_sta_fp8`` (``plugin-sta-fp8``); the token refiner keeps the
dense ``attention`` / ``attention_fp8`` node; the norm + RoPE is ``qk_norm_rope``. The host makes the
extra inputs per request shape and step (:mod:`vidtrt.runtime.sta_inputs`); a dense step is a layout
whose window covers the video.

``reference=True`` attaches the plugins' reference ONNX functions (``onnx_plugins.reference_functions``),
so onnxruntime runs the file on CPU (dense masked attention: for checks and tiny models, never for
TensorRT, which refuses such a file). TensorRT builds the file without them (``vidtrt.export.tensorrt_build``
registers the plugins first); in bfloat16 (``dtype=torch.bfloat16``, float32 I/O) as every plan.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

from vidtrt.config.sparse_attention import SparseStep, window_groups
from vidtrt.config.specs import ComponentSpec, dit_spec
from vidtrt.errors import ConfigError, one_line
from vidtrt.export import onnx_export
from vidtrt.export.bf16_onnx import bf16_io
from vidtrt.export.options import DEFAULT_OPSET
from vidtrt.kernels import onnx_plugins
from vidtrt.models.sparse_tiles import GraphTilePlan, graph_tile_plan
from vidtrt.runtime.sta_inputs import StaInputs
from vidtrt.source.model_source import ModelSource

STA_FLAVOURS = ("plugin-sta", "plugin-sta-fp8")
STA_DIT_FILE = {"plugin-sta": "dit_sta.onnx", "plugin-sta-fp8": "dit_sta_fp8.onnx"}
# onnxruntime (reference functions) vs torch eager on the same tiny DiT, float32: max |diff| / max |ref|
# (measured ~1e-6; the bound leaves room for other BLAS orders).
STA_VERIFY_TOL = 1e-4


class StaPluginDiT(nn.Module):
    """``dit`` taking the STA graph's extra inputs after its own: ``forward(*dit_inputs, sta_tile_rows,
    sta_kv_end, sta_kv_idx_0, sta_kv_cnt_0, ...)`` runs the DiT in the tile order they give
    (:class:`~vidtrt.models.sparse_tiles.GraphTilePlan`). In eager mode on CPU the plugin ops are their torch
    references, so under :func:`onnx_plugins.plugin_flavour` this is the graph's torch twin."""

    def __init__(self, dit: nn.Module, num_dit_inputs: int, layer_group: tuple[int, ...]):
        super().__init__()
        self.dit, self.n, self.layer_group = dit, num_dit_inputs, tuple(layer_group)

    def forward(self, *args: torch.Tensor) -> torch.Tensor:
        dit_args, (rows, kv_end), groups = args[: self.n], args[self.n: self.n + 2], args[self.n + 2:]
        layouts = [(groups[2 * g], groups[2 * g + 1], kv_end) for g in range(len(groups) // 2)]
        with graph_tile_plan(GraphTilePlan(rows, layouts, self.layer_group)):
            return self.dit(*dit_args)


def sta_module(dit: nn.Module, config, spec: ComponentSpec, dtype: torch.dtype = torch.float32) -> nn.Module:
    """:class:`StaPluginDiT` of ``dit`` in ``dtype`` behind float32 I/O, ``forward`` taking ``spec``'s inputs by
    name (what ``torch.onnx.export`` needs)."""
    tc = config.transformer
    _, layer_group = window_groups(config.sparse_attention.layer_window_list(tc.num_layers + tc.num_single_layers))
    n = len(dit_spec(config).inputs)
    return bf16_io(StaPluginDiT(dit.to(dtype), n, layer_group), spec.input_names, dtype)


def example_feeds(config, spec: ComponentSpec, seed: int = 0, axes: dict | None = None,
                  step: SparseStep | None | str = "config") -> dict[str, np.ndarray]:
    """Consistent inputs of the STA graph: the DiT's random ones at ``axes`` (default: the spec's export axes)
    plus :class:`StaInputs` for ``step`` (``"config"``: the model config's window). For the export, every
    dynamic size differs from the others (nothing specialises): the text length is moved until they do and
    the max-keys axes are padded (entries past ``kv_cnt`` are never read)."""
    tc = config.transformer
    sta = StaInputs(config)
    if step == "config":
        step = SparseStep(tuple(config.sparse_attention.tile),
                          config.sparse_attention.layer_window_list(tc.num_layers + tc.num_single_layers))
    base = dict(axes or spec.export_axes)
    keys = [a for a in spec.axes if not a.startswith("sta_max_blocks")]
    for text in [base["text_length"], *range(2, spec.axes["text_length"].max + 1)]:
        base["text_length"] = text
        plain = dit_spec(config)
        feeds = plain.example_inputs({k: v for k, v in base.items() if k in plain.axes}, seed=seed)
        feeds.update(sta.feeds(feeds["hidden_states"].shape, text, step))
        if axes is not None:
            return feeds
        sizes = axis_sizes(spec, feeds)
        taken = [sizes[a] for a in keys if a in sizes]
        if len(set(taken)) == len(taken) and min(taken) > 1:
            break
    taken = set(taken)
    for name in [n for n in feeds if n.startswith("sta_kv_idx")]:
        k = feeds[name].shape[2]
        while k in taken or k < 2:
            k += 1
        taken.add(k)
        feeds[name] = np.pad(feeds[name], ((0, 0), (0, 0), (0, k - feeds[name].shape[2])))
    return feeds


def axis_sizes(spec: ComponentSpec, feeds) -> dict[str, int]:
    """Each dynamic axis of ``spec`` -> its size in ``feeds``."""
    return {d: int(feeds[t.name].shape[i]) for t in spec.inputs if t.name in feeds
            for i, d in t.dynamic_axes.items()}


def export_sta_dit(model: str | Path | ModelSource, out: str | Path, flavour: str = "plugin-sta",
                   dtype: torch.dtype = torch.float32, opset: int | None = None, reference: bool = False,
                   optimize: bool = True, log: Callable[[str], None] | None = None) -> dict:
    """Write the STA plugin graph of ``model``'s DiT into ``out`` (``dit_sta.onnx`` / ``dit_sta_fp8.onnx``)
    and its entry (component ``dit``, ``flavour``, ``reference_functions``) into ``out/manifest.json``, the
    artifacts manifest the onnxruntime engine reads (:func:`vidtrt.runtime.engine_components.engine_dit`
    then feeds it through :class:`~vidtrt.runtime.sta_inputs.StaInputs`). Returns the manifest.

    ``dtype``: float32 (onnxruntime checks) or bfloat16 (TensorRT). Raises ExportError, one line (a tile
    that is no multiple of 128 tokens, an unknown flavour)."""
    if flavour not in STA_FLAVOURS:
        raise onnx_export.ExportError(f"flavour {flavour!r}: accepted {', '.join(STA_FLAVOURS)}")
    source = ModelSource.open(model)
    config = source.config
    try:
        spec = dit_spec(config, sparse=True)
    except ConfigError as e:
        raise onnx_export.ExportError(f"dit: {one_line(e)}") from None
    opset = opset or (onnx_plugins.FP8_OPSET if flavour.endswith("fp8") else DEFAULT_OPSET)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    module = sta_module(source.load_transformer(torch.float32), config, spec, dtype).eval()
    feeds = example_feeds(config, spec)
    with onnx_plugins.plugin_flavour(flavour):
        model_ir = onnx_export.trace_onnx(module, spec, opset, optimize,
                                          custom_translation_table=onnx_plugins.custom_translation_table(),
                                          example=feeds)
    meta = {"vidtrt.model": config.name, "vidtrt.config_sha256": source.fingerprint, "vidtrt.flavour": flavour,
            "vidtrt.precision": "bf16" if dtype == torch.bfloat16 else "fp32"}
    path = out / STA_DIT_FILE[flavour]
    result = onnx_export.save_onnx(model_ir, spec, path, "auto", meta, time.perf_counter() - t0)
    if reference:
        proto = onnx.load(str(path), load_external_data=False)
        proto = onnx_plugins.attach_reference_functions(proto)
        onnx.save(proto, str(path))
        onnx.checker.check_model(str(path))
    from vidtrt.runtime.engine_components import MANIFEST_FORMAT, MANIFEST_NAME

    manifest_file = out / MANIFEST_NAME
    try:
        manifest = json.loads(manifest_file.read_text())
    except (OSError, ValueError):
        manifest = {}
    if manifest.get("model", {}).get("config_sha256") != source.fingerprint:
        manifest = {"format": MANIFEST_FORMAT, "opset": opset, "components": {},
                    "model": {"name": config.name, "config_sha256": source.fingerprint,
                              "record": source.to_record()}}
    nodes = sorted(n.op_type for n in onnx_plugins.plugin_nodes(onnx.load(str(path), load_external_data=False)))
    manifest["components"]["dit"] = {**result.manifest_entry(spec), "flavour": flavour, "opset": opset,
                                     "reference_functions": reference, "plugin_nodes": nodes}
    onnx_export._write_json(manifest_file, manifest)
    if log:
        log(f"dit: {flavour} ONNX {path} ({len(nodes)} plugin nodes, {result.num_nodes} nodes) in "
            f"{result.seconds:.1f}s")
    return manifest
