"""ONNX export of every tiny component: real onnxruntime vs our torch modules at shapes from the specs (all
through one exported file each), dynamic axes that stay dynamic, no dense text mask, the manifest, external
data, the CLI and its one-line errors.

The tiny components are exported once per session (``onnx_artifacts.tiny_artifacts``) and shared with
test_engines.py.
"""

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
from onnx_artifacts import tiny_artifacts

from vidtrt.cli import main as cli_main
from vidtrt.config.specs import COMPONENTS
from vidtrt.errors import EngineError
from vidtrt.export.onnx_export import relative_error
from vidtrt.runtime.engine_components import (
    MANIFEST_NAME,
    component_module,
    text_encoder_modules,
)
from vidtrt.runtime.engines import OnnxRuntimeEngine
from vidtrt.source.model_source import ModelSource, load_model_config

TOL = 1e-4


@pytest.fixture(scope="module")
def artifacts():
    return tiny_artifacts()


@pytest.fixture(scope="module")
def config():
    return load_model_config("tiny")


@pytest.fixture(scope="module")
def specs(config):
    return ModelSource.open("tiny").specs()


@pytest.fixture(scope="module")
def modules(config):
    _, llm, clip = text_encoder_modules(ModelSource.open("tiny"))
    vae = component_module(ModelSource.open("tiny"), "vae_decoder")
    return {"dit": component_module(ModelSource.open("tiny"), "dit"), "vae_decoder_tile": vae, "vae_decoder": vae,
            "llm_text_encoder": llm, "clip_text_encoder": clip}


def compare(name, artifacts, specs, modules, cases):
    """ORT (one session, one file) vs torch for each (axes, seed, lengths) case; returns the errors."""
    spec = specs[name]
    engine = OnnxRuntimeEngine(artifacts / f"{name}.onnx", spec)
    errors = []
    for axes, seed, lengths in cases:
        feeds = spec.example_inputs(axes, seed=seed, lengths=lengths)
        got = engine.run(feeds)
        with torch.no_grad():
            want = modules[name](*(torch.from_numpy(feeds[n]) for n in spec.input_names))
        for out_name, w in zip(spec.output_names, (want,) if torch.is_tensor(want) else want, strict=True):
            w = w.float().numpy()
            assert got[out_name].shape == w.shape == spec.output_shape(out_name, axes)
            errors.append(relative_error(got[out_name], w))
    print(f"{name}: onnxruntime vs torch relative errors {[f'{e:.1e}' for e in errors]}")
    assert max(errors) <= TOL, errors
    return errors


def test_dit_matches_torch_at_bucket_shapes(artifacts, specs, modules):
    spec = specs["dit"]
    buckets = spec.buckets
    pick = lambda f, h, w: next(b for b in buckets if (b["latent_frames"], b["latent_height"],  # noqa: E731
                                                     b["latent_width"]) == (f, h, w))
    cases = [
        # batch 2, one latent frame (64x96, 1 frame), different text lengths at the 16-token bucket
        ({**pick(1, 8, 12), "batch": 2, "text_length": 16}, 0, [16, 5]),
        ({**pick(3, 12, 8), "batch": 2, "text_length": 8}, 1, [3, 8]),  # 96x64, 9 frames
        ({**pick(1, 16, 16), "batch": 1, "text_length": 32}, 2, [32]),  # 128x128, 1 frame, full text
        ({**pick(9, 8, 8), "batch": 1, "text_length": 8}, 3, [2]),  # 64x64, 33 frames, padded text
    ]
    compare("dit", artifacts, specs, modules, cases)


def test_vae_tile_decoder_matches_torch_at_tile_shapes(artifacts, specs, modules):
    spec = specs["vae_decoder_tile"]
    tiles = [(5, 8, 8), (1, 2, 2), (3, 8, 6), (5, 4, 8)]
    assert all({"latent_frames": t, "latent_height": h, "latent_width": w} in spec.buckets for t, h, w in tiles)
    cases = [({"latent_frames": t, "latent_height": h, "latent_width": w}, i, None) for i, (t, h, w) in
             enumerate(tiles)]
    compare("vae_decoder_tile", artifacts, specs, modules, cases)


def test_vae_decoder_matches_torch_at_dynamic_shapes(artifacts, specs, modules):
    cases = [({"batch": 2, "latent_frames": 3, "latent_height": 8, "latent_width": 12}, 0, None),
             ({"batch": 1, "latent_frames": 1, "latent_height": 8, "latent_width": 8}, 1, None),
             ({"batch": 1, "latent_frames": 2, "latent_height": 12, "latent_width": 6}, 2, None),
             ({"batch": 2, "latent_frames": 1, "latent_height": 4, "latent_width": 4}, 3, None)]
    compare("vae_decoder", artifacts, specs, modules, cases)


def test_llm_text_encoder_matches_torch_at_text_buckets(artifacts, specs, modules):
    spec = specs["llm_text_encoder"]
    n = [b["tokens"] for b in spec.buckets]
    cases = [({"batch": 2, "tokens": n[0]}, 0, [n[0], 4]),
             ({"batch": 2, "tokens": n[1]}, 1, [7, n[1]]),
             ({"batch": 1, "tokens": n[2]}, 2, [n[2]]),
             ({"batch": 1, "tokens": n[2]}, 3, [9])]
    # padded positions are never read by the DiT, but they come out of the same graph: compare everything
    compare("llm_text_encoder", artifacts, specs, modules, cases)


def test_clip_text_encoder_matches_torch(artifacts, specs, modules):
    _, clip_tok, _, _ = ModelSource.open("tiny").text_files
    spec = specs["clip_text_encoder"]
    engine = OnnxRuntimeEngine(artifacts / "clip_text_encoder.onnx", spec)
    prompts = ["a cat walks on the grass", "a red car drives down a wet street at night, neon lights"]
    errors = []
    for batch in (prompts, prompts[:1]):
        ids = clip_tok(batch, padding="max_length", max_length=77, truncation=True, return_tensors="np")["input_ids"]
        got = engine.run({"input_ids": ids.astype(np.int64)})["pooled"]
        with torch.no_grad():
            want = modules["clip_text_encoder"](torch.from_numpy(ids.astype(np.int64))).numpy()
        errors.append(relative_error(got, want))
    errors += compare("clip_text_encoder", artifacts, specs, modules,
                      [({"batch": 2}, 5, None), ({"batch": 1}, 6, None)])
    assert max(errors) <= TOL and len(errors) >= 4


def test_graphs_keep_spec_axes_dynamic_and_named(artifacts, specs):
    for name in COMPONENTS:
        model = onnx.load(str(artifacts / f"{name}.onnx"), load_external_data=False)
        onnx.checker.check_model(str(artifacts / f"{name}.onnx"))
        spec = specs[name]
        for values, tensors in ((model.graph.input, spec.inputs), (model.graph.output, spec.outputs)):
            assert [v.name for v in values] == [t.name for t in tensors]
            for v, t in zip(values, tensors, strict=True):
                dims = [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
                assert dims == list(t.shape), (name, v.name, dims)
        props = {p.key: p.value for p in model.metadata_props}
        assert props["vidtrt.component"] == name and json.loads(props["vidtrt.spec"])["name"] == name


def test_dit_text_padding_is_a_key_bias_not_a_dense_mask(artifacts):
    """Every attention's additive mask is [batch, 1, 1, keys] (O(S)); no [.., S, S] mask tensor exists."""
    model = onnx.shape_inference.infer_shapes(onnx.load(str(artifacts / "dit.onnx")))
    shapes = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
              for v in list(model.graph.value_info) + list(model.graph.input)}
    producer = {o: n for n in model.graph.node for o in n.output}
    softmaxes = [n for n in model.graph.node if n.op_type == "Softmax"]
    assert len(softmaxes) == 3  # refiner, dual-stream block, single-stream block
    for sm in softmaxes:
        add = producer[sm.input[0]]
        assert add.op_type == "Add"
        masks = [shapes.get(i) for i in add.input if shapes.get(i) and shapes[i][1:3] == [1, 1]]
        assert len(masks) == 1 and len(masks[0]) == 4 and masks[0][0] == "batch", [shapes.get(i) for i in add.input]
    assert not any(n.op_type == "Attention" for n in model.graph.node)


def test_manifest_records_model_opset_and_specs(artifacts, config, specs):
    manifest = json.loads((artifacts / MANIFEST_NAME).read_text())
    assert manifest["model"]["name"] == "tiny" and manifest["model"]["config_sha256"] == config.fingerprint()
    assert manifest["opset"] == 18 and set(manifest["components"]) == set(COMPONENTS)
    for name, entry in manifest["components"].items():
        assert entry["file"] == f"{name}.onnx" and entry["external_data"] is None  # tiny: far below 1 GiB
        assert entry["spec"] == json.loads(json.dumps(specs[name].to_dict()))
    # the LLM graph keeps only the layers up to hidden_states[-3]: 2 of the tiny LLM's 4 (one MLP
    # down-projection [64, 32] per layer)
    llm = onnx.load(str(artifacts / "llm_text_encoder.onnx"))
    assert sum(list(i.dims) == [64, 32] for i in llm.graph.initializer) == 2


def test_engine_file_errors_are_one_line(artifacts, specs, tmp_path):
    spec = specs["clip_text_encoder"]

    def err(path, s=spec):
        with pytest.raises(EngineError) as e:
            OnnxRuntimeEngine(path, s)
        assert "\n" not in str(e.value)
        return str(e.value)

    assert err(tmp_path / "nope.onnx") == f"clip_text_encoder: ONNX file not found: {tmp_path / 'nope.onnx'} " \
                                          "(run `vidtrt export` first)"
    bad = tmp_path / "corrupt.onnx"
    bad.write_bytes(b"\x08\x07garbage" * 100)
    assert str(bad) in err(bad) and "cannot" in err(bad)
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes((artifacts / "clip_text_encoder.onnx").read_bytes()[:5000])
    assert str(truncated) in err(truncated)
    # the right file for another component
    assert "has inputs ['latents']" in err(artifacts / "vae_decoder_tile.onnx")


def test_cli_export_with_external_data_and_errors(tmp_path, capsys, specs):
    out = tmp_path / "art"
    rc = cli_main(["export", "--model", "tiny", "--out", str(out), "--components", "clip_text_encoder",
                   "--external-data", "always"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "clip_text_encoder:" in printed and "external data clip_text_encoder.onnx.data" in printed
    data = out / "clip_text_encoder.onnx.data"
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert data.stat().st_size >= 0.9 * manifest["components"]["clip_text_encoder"]["weight_bytes"] > 50_000
    graph = onnx.load(str(out / "clip_text_encoder.onnx"), load_external_data=False).graph
    assert all(i.data_location == onnx.TensorProto.EXTERNAL or len(i.raw_data) <= 256 for i in graph.initializer)
    assert not any(p.key == "pkg.torch.onnx.stack_trace" for n in graph.node for p in n.metadata_props)
    onnx.checker.check_model(str(out / "clip_text_encoder.onnx"))
    assert manifest["components"]["clip_text_encoder"]["external_data"] == data.name
    engine = OnnxRuntimeEngine(out / "clip_text_encoder.onnx", specs["clip_text_encoder"])
    assert engine.run(specs["clip_text_encoder"].example_inputs({"batch": 1}))["pooled"].shape == (1, 16)

    # external data moved away: one line naming the missing file
    moved = tmp_path / "moved.data"
    shutil.move(data, moved)
    with pytest.raises(EngineError, match="needs its external data file .*clip_text_encoder.onnx.data, which is "
                                          "missing"):
        OnnxRuntimeEngine(out / "clip_text_encoder.onnx", specs["clip_text_encoder"])

    assert cli_main(["export", "--model", "tiny", "--out", str(out), "--components", "dit", "--opset", "17"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidtrt: error: --opset 17 is not supported; accepted: 18..22 (") and "\n" not in err
    assert cli_main(["export", "--model", str(tmp_path / "missing"), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vidtrt: error:") and str(tmp_path / "missing") in err and "\n" not in err
