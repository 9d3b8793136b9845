"""Building a Triton model repository (vidtrt.export.repository) and the component wire (vidtrt.serving.component_io),
without a server."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from vidtrt.config.request import GenerationRequest
from vidtrt.errors import EngineError
from vidtrt.export.repository import MARKER, RepositoryError, build_repository, templates_dir
from vidtrt.runtime.engine_components import load_component
from vidtrt.serving.component_io import ComponentServer, remote_components, specs_for_triton

MODELS = ["hunyuan_video", "hunyuan_video_sync", "hunyuan_video_text_encoder", "hunyuan_video_dit",
          "hunyuan_video_vae_decoder", "hunyuan_video_dit_probe"]


def _entries(text: str, stanza: str) -> dict[str, tuple[str, str, bool]]:
    block = re.search(rf"^{stanza} \[\n(.*?)\n\]", text, re.S | re.M).group(1)
    return {n: (t, d, bool(o)) for n, t, d, o in
            re.findall(r'\{ name: "(\w+)" data_type: (\w+) dims: \[ ([^\]]*) \]( optional: true)? \}', block)}


def _params(text: str) -> dict[str, str]:
    return dict(re.findall(r'parameters \{ key: "(\w+)" value \{ string_value: "([^"]*)" \} \}', text))


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    return build_repository("tiny", tmp_path_factory.mktemp("b") / "repo", fail_on_guidance=77)


def test_layout_and_manifest(repo):
    assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(MODELS)
    for name in MODELS:
        assert (repo / name / "config.pbtxt").is_file() and (repo / name / "1" / "model.py").is_file()
        assert f'name: "{name}"' in (repo / name / "config.pbtxt").read_text()
    manifest = json.loads((repo / MARKER).read_text())
    assert manifest["generation_model"] == "hunyuan_video" and manifest["engine"] == "torch"
    bls = (repo / "hunyuan_video" / "1" / "model.py").read_text()
    assert bls == (repo / "hunyuan_video_sync" / "1" / "model.py").read_text()
    assert "run_generation" in bls and "remote_components" in bls


def test_generation_model_configs(repo):
    stream = (repo / "hunyuan_video" / "config.pbtxt").read_text()
    sync = (repo / "hunyuan_video_sync" / "config.pbtxt").read_text()
    assert "model_transaction_policy { decoupled: true }" in stream
    assert "model_transaction_policy" not in sync
    for text in (stream, sync):
        assert "max_batch_size: 0" in text and 'backend: "python"' in text
        ins = _entries(text, "input")
        assert ins["prompt"] == ("TYPE_STRING", "1", False) and all(o for n, (_, _, o) in ins.items() if n != "prompt")
        assert _entries(text, "output")["video"] == ("TYPE_UINT8", "-1, -1, -1, 3", False)
        p = _params(text)
        assert p["model"] == "tiny" and p["dit_model"] == "hunyuan_video_dit"
        assert p["vae_decoder_model"] == "hunyuan_video_vae_decoder"


def test_component_configs_follow_the_specs(repo):
    from vidtrt.source.model_source import load_model_config

    specs = specs_for_triton(load_model_config("tiny"))
    for key, spec in specs.items():
        text = (repo / f"hunyuan_video_{key}" / "config.pbtxt").read_text()
        ins, outs = _entries(text, "input"), _entries(text, "output")
        assert list(ins) == spec.input_names and list(outs) == spec.output_names
        for t in spec.inputs:
            assert ins[t.name][1] == ", ".join(str(d) for d in spec.triton_dims(t, batch_axis=None))
        assert "KIND_CPU" in text and _params(text)["component"] == key
    dit = (repo / "hunyuan_video_dit" / "config.pbtxt").read_text()
    assert _entries(dit, "input")["hidden_states"] == ("TYPE_FP32", "-1, 16, -1, -1, -1", False)
    assert _entries(dit, "output")["velocity"] == ("TYPE_FP32", "-1, 16, -1, -1, -1", False)
    assert _params(dit)["fail_on_guidance"] == "77"
    assert "fail_on_guidance" not in (repo / "hunyuan_video_vae_decoder" / "config.pbtxt").read_text()
    te = (repo / "hunyuan_video_text_encoder" / "config.pbtxt").read_text()
    assert _entries(te, "input") == {"prompts": ("TYPE_STRING", "-1", False),
                                     "prompt_policy": ("TYPE_STRING", "1", True)}


def test_gpu_flag_and_instances(tmp_path):
    out = build_repository("tiny", tmp_path / "r", device="cuda", dit_instances=2, sync_instances=3)
    dit = (out / "hunyuan_video_dit" / "config.pbtxt").read_text()
    assert "kind: KIND_GPU count: 2" in dit and _params(dit)["device"] == "cuda"
    assert "kind: KIND_CPU count: 1" in (out / "hunyuan_video" / "config.pbtxt").read_text()  # BLS stays on CPU
    assert "count: 3" in (out / "hunyuan_video_sync" / "config.pbtxt").read_text()


def test_refusals(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("x")
    with pytest.raises(RepositoryError, match="not a vidtrt repository"):
        build_repository("tiny", foreign)
    assert (foreign / "keep.txt").exists()
    with pytest.raises(RepositoryError, match="templates"):
        build_repository("tiny", templates_dir() / "build")
    with pytest.raises(RepositoryError, match="engine"):
        build_repository("tiny", tmp_path / "a", engine="tensorflow")
    with pytest.raises(RepositoryError, match="artifacts"):
        build_repository("tiny", tmp_path / "b", engine="onnxruntime")
    with pytest.raises(RepositoryError, match="dit_instances"):
        build_repository("tiny", tmp_path / "c", dit_instances=0)
    out = build_repository("tiny", tmp_path / "d")
    with pytest.raises(RepositoryError, match="exists"):
        build_repository("tiny", out, overwrite=False)
    assert build_repository("tiny", out) == out  # a vidtrt repository is replaced


def test_build_cli(tmp_path, capsys):
    from vidtrt.cli import main

    assert main(["build", "--model", "tiny", "--out", str(tmp_path / "r")]) == 0
    assert "hunyuan_video_dit/config.pbtxt" in capsys.readouterr().out
    assert main(["build", "--engine", "onnxruntime", "--out", str(tmp_path / "x")]) == 2
    assert "needs --artifacts" in capsys.readouterr().err


def test_remote_components_give_the_same_frames_as_in_process():
    from vidtrt.runtime.pipeline import load_components

    config, comps = load_components("tiny")
    servers = {"te": ComponentServer("text_encoder", comps.encode_text), "dit": ComponentServer("dit", comps.dit),
               "vae": ComponentServer("vae_decoder", comps.decode_tile)}
    calls = []

    def infer(name, feeds, outputs):
        calls.append(name)
        specs = specs_for_triton(config)
        key = {"te": "text_encoder", "dit": "dit", "vae": "vae_decoder"}[name]
        assert set(feeds) <= set(specs[key].input_names)
        result = servers[name].run(feeds)
        assert set(result) == set(specs[key].output_names)
        return {k: result[k].copy() for k in outputs}

    remote = remote_components(infer, {"text_encoder": "te", "dit": "dit", "vae_decoder": "vae"}, config)
    from vidtrt.runtime.orchestrator import run_generation

    for request in (GenerationRequest("a cat", seed=3, num_inference_steps=2),
                    GenerationRequest("a cat", seed=4, num_inference_steps=2, true_cfg_scale=3.0)):
        np.testing.assert_array_equal(run_generation(request, config, remote), run_generation(request, config, comps))
    assert calls.count("te") == 3 and "vae" in calls


def test_component_server_fault_injection_and_hook():
    server = ComponentServer("dit", lambda *a: None, fail_on_guidance=77.0)
    feeds = {"hidden_states": np.zeros((1, 16, 1, 2, 2), np.float32), "timestep": np.zeros(1, np.float32),
             "encoder_hidden_states": np.zeros((1, 3, 32), np.float32),
             "encoder_attention_mask": np.ones((1, 3), np.int64), "pooled_projections": np.zeros((1, 16), np.float32),
             "guidance": np.array([77000.0], np.float32)}
    with pytest.raises(RuntimeError, match="injected DiT failure"):
        server.run(feeds)
    with pytest.raises(EngineError, match="unknown component"):
        load_component("unet", "tiny")


def test_bad_model_leaves_existing_repository(tmp_path):
    from vidtrt.errors import CheckpointError
    from vidtrt.export.repository import build_repository

    out = build_repository("tiny", tmp_path / "repo")
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(CheckpointError, match="model folder not found"):
        build_repository(tmp_path / "typo", out)
    assert sorted(p.name for p in out.iterdir()) == before


def test_build_refuses_artifacts_of_another_model_or_incomplete(tmp_path):
    import shutil

    from onnx_artifacts import tiny_artifacts

    other = tmp_path / "other"
    shutil.copytree(tiny_artifacts(), other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["model"]["config_sha256"] = "f" * 64
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(RepositoryError, match=r"exported from model 'tiny' \(config ffffffffffff\), not from 'tiny'"):
        build_repository("tiny", tmp_path / "r", engine="onnxruntime", artifacts=other)
    assert not (tmp_path / "r").exists()  # checked before anything is written
    shutil.copytree(tiny_artifacts(), other, dirs_exist_ok=True)
    (other / "dit.onnx").unlink()
    with pytest.raises(RepositoryError, match="dit.onnx is listed in its manifest but missing"):
        build_repository("tiny", tmp_path / "r", engine="onnxruntime", artifacts=other)


def _text_files(root):
    return {p: p.read_text() for p in root.rglob("*") if p.suffix in (".pbtxt", ".json", ".py")}


@pytest.mark.server
def test_onnxruntime_repository_is_relocatable_and_serves_the_in_process_frames(tmp_path):
    """Built with --artifacts from a folder that is then deleted, moved elsewhere: no host path is left in
    it, and the real tritonserver serves it (each model process rebuilds the model from the record)."""
    import shutil

    from onnx_artifacts import tiny_artifacts

    from vidtrt.client import VideoClient
    from vidtrt.runtime.engine_components import load_pipeline_with_engine
    from vidtrt.serving.server import TritonServer

    artifacts = tmp_path / "artifacts"
    shutil.copytree(tiny_artifacts(), artifacts)
    built = build_repository("tiny", tmp_path / "build" / "repo", engine="onnxruntime", artifacts=artifacts)
    shutil.rmtree(artifacts)
    moved = tmp_path / "elsewhere" / "repo"
    moved.parent.mkdir()
    shutil.move(built, moved)
    for path, text in _text_files(moved).items():
        assert str(tmp_path) not in text, f"{path} names a host path"
    for key, files in (("dit", ["dit.onnx"]), ("vae_decoder", ["vae_decoder_tile.onnx"]),
                       ("text_encoder", ["llm_text_encoder.onnx", "clip_text_encoder.onnx"])):
        for f in files + ["manifest.json"]:
            assert (moved / f"hunyuan_video_{key}" / "1" / f).is_file()

    request = dict(num_frames=5, num_inference_steps=2, seed=5)
    want = load_pipeline_with_engine("tiny", "onnxruntime", tiny_artifacts()).generate("a red car", **request)
    with TritonServer(moved, log_file=tmp_path / "server.log", exit_timeout_s=5, ready_timeout_s=600) as srv:
        got = VideoClient(srv.grpc_url).generate("a red car", **request)
    assert got.shape == want.shape
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1  # same ONNX files; thread counts may differ
