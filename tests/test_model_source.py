"""ModelSource: a model resolved once per process, rebuilt from a record without reading weights.

Counters (:mod:`vidtrt.counters`) show what a ``vidtrt run`` does: one resolve, one config load, one
read of the DiT file (diffusers and official layout); the record round trip reads no weight and no
config file; a record refuses another fingerprint, a moved folder unless ``$VIDTRT_MODEL_ROOT`` names
it, and another layout. The server-side counts (each Triton model process) are in test_serving.py.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from vidtrt import counters
from vidtrt.cli import main
from vidtrt.errors import CheckpointError
from vidtrt.models.official_layout import diffusers_to_official
from vidtrt.source.model_source import MODEL_ROOT_ENV, ModelSource

RUN = ["a cat walks on the grass", "--frames", "5", "--steps", "2", "--seed", "3", "--no-progress"]


@pytest.fixture(scope="module")
def tiny() -> ModelSource:
    return ModelSource.open("tiny")


@pytest.fixture(scope="module")
def official_tiny(tiny, tmp_path_factory) -> Path:
    """The tiny model in the official Tencent layout (ckpts/ with hunyuan-video-t2v-720p/ and text encoders)."""
    folder = tmp_path_factory.mktemp("ckpts")
    root = folder / "hunyuan-video-t2v-720p"
    (root / "transformers").mkdir(parents=True)
    torch.save({"module": diffusers_to_official(tiny.load_transformer().state_dict())},
               root / "transformers" / "mp_rank_00_model_states.pt")
    # RoPE has no weights: the axis split of a head dim other than 128 is given in config.json
    (root / "transformers" / "config.json").write_text(json.dumps(
        {"rope_axes_dim": list(tiny.config.transformer.rope_axes_dim)}))
    (root / "vae").mkdir()
    torch.save(tiny.load_vae_decoder().state_dict(), root / "vae" / "pytorch_model.pt")
    (root / "vae" / "config.json").write_text(json.dumps(tiny.config.to_dict()["vae"]))
    for model_dir, tok_dir in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
        shutil.copytree(tiny.folder / model_dir, folder / model_dir)
        for f in (tiny.folder / tok_dir).iterdir():
            shutil.copy(f, folder / model_dir / f.name)
    shutil.copy(tiny.folder / "vidtrt.json", folder / "vidtrt.json")
    return folder


@pytest.mark.parametrize("layout", ["diffusers", "official"])
def test_vidtrt_run_resolves_once_loads_config_once_reads_dit_once(layout, official_tiny, tmp_path, capsys):
    model = "tiny" if layout == "diffusers" else str(official_tiny)
    counters.COUNTS.clear()
    assert main(["run", *RUN, "--model", model, "-o", str(tmp_path / "v.npy")]) == 0
    capsys.readouterr()
    want = {"resolve": 1, "config_load": 1, "dit_read": 1}
    if layout == "official":
        want["dit_metadata_read"] = 1  # the architecture from names and shapes, no tensor data
    assert dict(counters.COUNTS) == want


def test_official_layout_video_equals_diffusers_layout(official_tiny, tmp_path, capsys):
    paths = []
    for i, model in enumerate(["tiny", str(official_tiny)]):
        paths.append(tmp_path / f"{i}.npy")
        assert main(["run", *RUN, "--model", model, "-o", str(paths[-1])]) == 0
    capsys.readouterr()
    np.testing.assert_array_equal(np.load(paths[0]), np.load(paths[1]))


def test_open_is_idempotent_and_the_source_is_frozen(tiny):
    counters.COUNTS.clear()
    assert ModelSource.open(tiny) is tiny
    assert not counters.COUNTS
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.config.transformer.num_layers = 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        tiny.folder = Path("/elsewhere")
    assert tiny.fingerprint == tiny.config.fingerprint() and len(tiny.fingerprint) == 64


@pytest.mark.parametrize("model", ["tiny", "official"])
def test_record_round_trip_reads_no_weights(model, tiny, official_tiny):
    source = tiny if model == "tiny" else ModelSource.open(official_tiny)
    record = json.loads(json.dumps(source.to_record()))  # what a repository stores
    counters.COUNTS.clear()
    again = ModelSource.from_record(record, expected_fingerprint=source.fingerprint)
    assert dict(counters.COUNTS) == {"resolve": 1, "config_load": 1}  # no dit_read, no dit_metadata_read
    assert (again.config, again.fingerprint, again.folder, again.layout, again.family) == (
        source.config, source.fingerprint, source.folder, source.layout, source.family)


def test_record_refuses_another_fingerprint(tiny):
    record = tiny.to_record()
    with pytest.raises(CheckpointError, match=r"differs from the [0-9a-f]{12} this model was built with") as e:
        ModelSource.from_record(record, expected_fingerprint="0" * 64)
    assert "\n" not in str(e.value)
    edited = json.loads(json.dumps(record))
    edited["config"]["defaults"]["fps"] = 30  # a record edited by hand no longer matches its fingerprint
    with pytest.raises(CheckpointError, match="does not match its fingerprint"):
        ModelSource.from_record(edited)
    with pytest.raises(CheckpointError, match="not a vidtrt model record"):
        ModelSource.from_record({"format": "something else"})


def test_record_of_a_moved_folder_is_found_through_model_root(official_tiny, tmp_path, monkeypatch):
    record = ModelSource.open(official_tiny).to_record()
    moved = tmp_path / "moved"
    shutil.copytree(official_tiny, moved)
    record["folder"] = str(tmp_path / "gone")
    monkeypatch.delenv(MODEL_ROOT_ENV, raising=False)
    with pytest.raises(CheckpointError, match=f"set \\${MODEL_ROOT_ENV}"):
        ModelSource.from_record(record)
    monkeypatch.setenv(MODEL_ROOT_ENV, str(moved))
    assert ModelSource.from_record(record).folder == moved
    monkeypatch.setenv(MODEL_ROOT_ENV, str(ModelSource.open("tiny").folder))  # a diffusers folder
    with pytest.raises(CheckpointError, match="diffusers-layout checkpoint; .* official-layout one"):
        ModelSource.from_record(record)


def test_another_pipeline_class_is_named_before_any_shape_error(tiny, tmp_path):
    folder = tmp_path / "cogvideox"
    shutil.copytree(tiny.folder, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps({**index, "_class_name": "LTXPipeline"}))
    with pytest.raises(CheckpointError, match=r"_class_name 'LTXPipeline' is not a supported pipeline; "
                                              r"accepted \['HunyuanVideoPipeline', 'CogVideoXPipeline'\]"):
        ModelSource.open(folder)
    (folder / "model_index.json").write_text('{"_class_name": "HunyuanVideoPipeline",')  # corrupt
    with pytest.raises(CheckpointError, match="model_index.json is not valid JSON"):
        ModelSource.open(folder)


def test_cli_names_a_foreign_pipeline_with_exit_2(tiny, tmp_path, capsys):
    folder = tmp_path / "sd"
    shutil.copytree(tiny.folder, folder)
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    assert main(["run", *RUN, "--model", str(folder), "-o", str(tmp_path / "v.npy")]) == 2
    err = capsys.readouterr().err.strip()
    assert "StableDiffusionPipeline" in err and "HunyuanVideoPipeline" in err and len(err.splitlines()) == 1
