"""Checkpoint folders: diffusers layout (written by diffusers itself, sharded) and the official Tencent layout.

The same random weights are written in both layouts; our loaders must give diffusers' outputs. Errors are
one line naming the key and the file. A subprocess measures peak RSS to show that loading holds one copy.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers")
from safetensors.torch import load_file, save_file  # noqa: E402

from vidtrt.config.model_config import TINY_CLIP_HIDDEN, TINY_LLM_HIDDEN, TransformerConfig  # noqa: E402
from vidtrt.errors import CheckpointError  # noqa: E402
from vidtrt.models.official_layout import dequantize_fp8, diffusers_to_official, official_to_diffusers  # noqa: E402
from vidtrt.source import checkpoints  # noqa: E402
from vidtrt.source.checkpoints import (  # noqa: E402
    WEIGHT_ALIGNMENT,
    PageReleaser,
    infer_transformer_config,
    read_safetensors,
    write_safetensors_streaming,
)
from vidtrt.source.model_source import ModelSource, load_model_config  # noqa: E402
from vidtrt.testing import randomize_parameters as randomize_  # noqa: E402
from vidtrt.testing import rel_err  # noqa: E402


def load_transformer(model, config=None, dtype=torch.float32):
    """The DiT of ``model``, built from ``config`` when given (a mismatch test) instead of the folder's."""
    source = ModelSource.open(model)
    return checkpoints.load_transformer(source.folder, config or source.config, dtype)


def load_vae_decoder(model):
    return ModelSource.open(model).load_vae_decoder()


def resolve_model(model):
    return ModelSource.open(model).folder

TOL = 1e-5
# head_dim 128, so the official layout needs no config.json (rope (16, 56, 56) is implied); mlp_ratio 2 and
# 2 heads so the inference cannot get lucky with HunyuanVideo's defaults. Text dims = the tiny encoders'.
DIT = dict(
    num_attention_heads=2, attention_head_dim=128, num_layers=2, num_single_layers=2, num_refiner_layers=2,
    mlp_ratio=2.0, text_embed_dim=TINY_LLM_HIDDEN, pooled_projection_dim=TINY_CLIP_HIDDEN,
    rope_axes_dim=(16, 56, 56),
)
VAE = dict(block_out_channels=(8, 8, 16, 16), layers_per_block=1, norm_num_groups=4)
SHIFT = 5.0
OFFICIAL_VAE_CONFIG = {  # the official vae/config.json (AutoencoderKLCausal3D names), at the test's width
    "_class_name": "AutoencoderKLCausal3D", "_diffusers_version": "0.4.2", "act_fn": "silu",
    "block_out_channels": list(VAE["block_out_channels"]), "down_block_types": ["DownEncoderBlockCausal3D"] * 4,
    "up_block_types": ["UpDecoderBlockCausal3D"] * 4, "in_channels": 3, "out_channels": 3, "latent_channels": 16,
    "layers_per_block": VAE["layers_per_block"], "norm_num_groups": VAE["norm_num_groups"], "sample_size": 256,
    "sample_tsize": 64, "scaling_factor": 0.476986, "time_compression_ratio": 4, "mid_block_add_attention": True,
}


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # 2 shared cores
    yield
    torch.set_num_threads(n)


def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


# ------------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def refs():
    """diffusers' transformer and VAE with random weights."""
    torch.manual_seed(0)
    dit = diffusers.HunyuanVideoTransformer3DModel(**DIT).eval()
    randomize_(dit, 11)
    vae = diffusers.AutoencoderKLHunyuanVideo(**VAE).eval()
    randomize_(vae, 12)
    return dit, vae


@pytest.fixture(scope="module")
def diffusers_folder(refs, tmp_path_factory) -> Path:
    """A diffusers-layout folder written by diffusers' own save_pretrained, sharded, plus text, scheduler, index."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    from vidtrt.source.tiny import MODEL_INDEX_ENTRIES, write_text_components

    dit, vae = refs
    folder = tmp_path_factory.mktemp("diffusers_ckpt")
    dit.save_pretrained(folder / "transformer", max_shard_size="8MB")
    vae.save_pretrained(folder / "vae", max_shard_size="300KB")
    FlowMatchEulerDiscreteScheduler(shift=SHIFT).save_pretrained(folder / "scheduler")
    write_text_components(folder, seed=3)
    (folder / "model_index.json").write_text(json.dumps({
        "_class_name": "HunyuanVideoPipeline", "_diffusers_version": diffusers.__version__,
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"],
        "transformer": ["diffusers", "HunyuanVideoTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLHunyuanVideo"], **MODEL_INDEX_ENTRIES,
    }))
    tiny_text = json.loads((resolve_model("tiny") / "vidtrt.json").read_text())["text"]
    (folder / "vidtrt.json").write_text(json.dumps({"text": tiny_text}))
    for sub in ("transformer", "vae"):  # really sharded
        index = json.loads((folder / sub / "diffusion_pytorch_model.safetensors.index.json").read_text())
        assert len(set(index["weight_map"].values())) >= 3, sub
        assert not (folder / sub / "diffusion_pytorch_model.safetensors").exists()
    return folder


def write_official(folder: Path, dit_sd: dict, vae_sd: dict | None, text_from: Path | None) -> Path:
    """The official Tencent layout: ``folder/hunyuan-video-t2v-720p/{transformers,vae}`` + text encoders."""
    root = folder / "hunyuan-video-t2v-720p"
    (root / "transformers").mkdir(parents=True)
    torch.save({"module": diffusers_to_official(dit_sd)}, root / "transformers" / "mp_rank_00_model_states.pt")
    if vae_sd is not None:
        (root / "vae").mkdir()
        torch.save(vae_sd, root / "vae" / "pytorch_model.pt")
        (root / "vae" / "config.json").write_text(json.dumps(OFFICIAL_VAE_CONFIG))
    if text_from is not None:  # each encoder folder carries its own tokenizer
        for model_dir, tok_dir in (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2")):
            shutil.copytree(text_from / model_dir, folder / model_dir)
            for f in (text_from / tok_dir).iterdir():
                shutil.copy(f, folder / model_dir / f.name)
        shutil.copy(text_from / "vidtrt.json", folder / "vidtrt.json")
    return folder


@pytest.fixture(scope="module")
def official_folder(refs, diffusers_folder, tmp_path_factory) -> Path:
    dit, vae = refs
    return write_official(tmp_path_factory.mktemp("ckpts"), dit.state_dict(), vae.state_dict(), diffusers_folder)


@pytest.fixture(scope="module", params=["diffusers", "official", "official-subfolder"])
def folder(request, diffusers_folder, official_folder) -> Path:
    if request.param == "diffusers":
        return diffusers_folder
    if request.param == "official":
        return official_folder  # ckpts/ (the parent of hunyuan-video-t2v-720p/, beside text_encoder/)
    return official_folder / "hunyuan-video-t2v-720p"


def dit_inputs(batch: int, lengths: list[int], text_len: int, seed: int) -> dict:
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(batch, text_len, dtype=torch.int64)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1
    return dict(
        hidden_states=torch.randn(batch, 16, 2, 4, 6, generator=gen),
        timestep=torch.rand(batch, generator=gen) * 1000,
        encoder_hidden_states=torch.randn(batch, text_len, DIT["text_embed_dim"], generator=gen),
        encoder_attention_mask=mask,
        pooled_projections=torch.randn(batch, DIT["pooled_projection_dim"], generator=gen),
        guidance=(1 + 9 * torch.rand(batch, generator=gen)) * 1000,
    )


# ------------------------------------------------------------------------------------ equality
def test_model_config_of_diffusers_folder(diffusers_folder):
    config = load_model_config(diffusers_folder)
    assert config.transformer == TransformerConfig(**DIT)
    assert config.vae.block_out_channels == VAE["block_out_channels"]
    assert (config.vae.layers_per_block, config.vae.norm_num_groups) == (1, 4)
    assert config.defaults.flow_shift == SHIFT
    assert config.text.max_sequence_length == 32  # vidtrt.json applied


def test_official_config_is_inferred_from_weights(official_folder):
    """No transformers/config.json in the official layout: the architecture comes from the tensor shapes."""
    assert not (official_folder / "hunyuan-video-t2v-720p" / "transformers" / "config.json").exists()
    config = load_model_config(official_folder)
    assert config.transformer == TransformerConfig(**DIT)
    assert config.vae.block_out_channels == VAE["block_out_channels"]
    assert config.vae.temporal_compression_ratio == 4 and config.vae.norm_num_groups == 4


@pytest.mark.parametrize("case", ["b1_unpadded", "b2_different_lengths"])
def test_transformer_equals_diffusers(refs, folder, case):
    ref, _ = refs
    ours = load_transformer(folder)
    seed = random.randrange(2**31)
    inputs = dit_inputs(1, [7], 7, seed) if case == "b1_unpadded" else dit_inputs(2, [9, 3], 12, seed)
    with torch.no_grad():
        expected = ref(**inputs, return_dict=False)[0]
        got = ours(**inputs)
    assert got.shape == expected.shape
    assert rel_err(got, expected) <= TOL, f"seed {seed}"


def test_vae_decoder_equals_diffusers(refs, folder):
    _, ref = refs
    ours = load_vae_decoder(folder)
    ref.disable_tiling()
    ref.use_framewise_decoding = False  # diffusers chunks frames by default even without tiling
    z = torch.randn(1, 16, 3, 4, 6, generator=torch.Generator().manual_seed(random.randrange(2**31)))
    with torch.no_grad():
        expected = ref.decode(z).sample
        got = ours(z)
    assert got.shape == expected.shape == (1, 3, 9, 32, 48)
    assert rel_err(got, expected) <= TOL


def test_both_layouts_generate_the_same_video(diffusers_folder, official_folder):
    """The whole pipeline (text encoders with their tokenizers inside, DiT, VAE) from either layout."""
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    kw = dict(prompt="a cat walks on the grass", seed=4, height=32, width=48, num_frames=5, num_inference_steps=2,
              flow_shift=SHIFT)  # the official layout has no scheduler config (its default shift is 7)
    a = HunyuanVideoPipeline.from_model(diffusers_folder).generate(**kw)
    b = HunyuanVideoPipeline.from_model(official_folder).generate(**kw)
    assert a.shape == (5, 32, 48, 3) and np.array_equal(a, b)
    assert a.std() > 1  # not a constant image


def test_fp32_file_is_loaded_zero_copy_where_aligned(diffusers_folder):
    """Parameters are the mapped file itself where the file keeps them 64-byte aligned; the others are
    aligned copies (safetensors aligns its data section to 8 bytes only, so both kinds occur here)."""
    model = load_transformer(diffusers_folder)
    shard_tensors = {}
    for shard in sorted((diffusers_folder / "transformer").glob("*.safetensors")):
        shard_tensors.update(read_safetensors(shard))
    maps = Path("/proc/self/maps").read_text() if Path("/proc/self/maps").exists() else ""
    if not maps:
        pytest.skip(reason="no /proc/self/maps")
    ranges = [(int(lo, 16), int(hi, 16)) for line in maps.splitlines() if "diffusion_pytorch_model-" in line
              for lo, hi in [line.split()[0].split("-")]]
    kinds = set()
    for name, p in model.named_parameters():
        in_file = any(lo <= p.data_ptr() < hi for lo, hi in ranges)
        file_aligned = shard_tensors[name].data_ptr() % WEIGHT_ALIGNMENT == 0
        assert in_file == file_aligned, f"{name}: in the mapped file {in_file}, aligned there {file_aligned}"
        assert p.data_ptr() % WEIGHT_ALIGNMENT == 0, name
        assert torch.equal(p, shard_tensors[name])
        kinds.add(in_file)
    assert kinds == {True, False}  # both paths taken


def test_layouts_give_the_same_parameters_in_the_same_memory_layout(diffusers_folder, folder):
    """What makes the two layouts compute the same bits: equal values, shapes, strides and 64-byte alignment
    of every parameter (the official file's records are 64-byte aligned, safetensors' data 8-byte)."""
    ref = dict(load_transformer(diffusers_folder).named_parameters())
    got = dict(load_transformer(folder).named_parameters())
    vae_ref = dict(load_vae_decoder(diffusers_folder).named_parameters())
    vae_got = dict(load_vae_decoder(folder).named_parameters())
    for mine, theirs in ((got, ref), (vae_got, vae_ref)):
        assert mine.keys() == theirs.keys()
        for name, p in mine.items():
            assert torch.equal(p, theirs[name]) and p.stride() == theirs[name].stride(), name
            assert p.data_ptr() % WEIGHT_ALIGNMENT == 0 and theirs[name].data_ptr() % WEIGHT_ALIGNMENT == 0, name


# ----------------------------------------------------------------------------- config inference
def _official_meta_sd(**kwargs) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = diffusers.HunyuanVideoTransformer3DModel(**kwargs)
    return diffusers_to_official(model.state_dict())


@pytest.mark.parametrize("kwargs", [
    {},  # the released 13 B model: 3072 = 24 x 128, 20 + 40 blocks, text 4096 / 768
    dict(num_attention_heads=3, num_layers=1, num_single_layers=0, num_refiner_layers=1, guidance_embeds=False,
         mlp_ratio=3.0, text_embed_dim=64, pooled_projection_dim=32, patch_size=1),
    dict(num_attention_heads=1, num_layers=0, num_single_layers=3, num_refiner_layers=3, in_channels=4,
         out_channels=8, patch_size_t=2),
], ids=["full-size", "no-guidance-ratio3-patch1", "single-only-patch_t2"])
def test_infer_transformer_config(kwargs):
    expected = TransformerConfig(**kwargs)
    assert infer_transformer_config(_official_meta_sd(**kwargs)) == expected


def test_infer_needs_rope_axes_for_other_head_dims():
    sd = _official_meta_sd(num_attention_heads=2, attention_head_dim=16, num_layers=1, num_single_layers=1,
                           rope_axes_dim=(4, 6, 6))
    with pytest.raises(CheckpointError, match=r"head_dim is 16.*rope_axes_dim.*x/config.json") as e:
        infer_transformer_config(sd, "x/mp.pt", config_path="x/config.json")
    one_line(e)
    config = infer_transformer_config(sd, overrides={"rope_axes_dim": [4, 6, 6], "_class_name": "whatever"})
    assert config.attention_head_dim == 16 and config.rope_axes_dim == (4, 6, 6)


def test_official_folder_with_config_json(tmp_path):
    """head_dim != 128: the loader asks for transformers/config.json, then uses it."""
    tiny = resolve_model("tiny")
    sd = load_file(str(tiny / "transformer" / "diffusion_pytorch_model.safetensors"))
    write_official(tmp_path, sd, None, None)
    cfg_path = tmp_path / "hunyuan-video-t2v-720p" / "transformers" / "config.json"
    with pytest.raises(CheckpointError, match="rope_axes_dim") as e:
        load_model_config(tmp_path)
    assert str(cfg_path) in one_line(e)
    cfg_path.write_text(json.dumps({"rope_axes_dim": [4, 6, 6]}))
    model = load_transformer(tmp_path)
    assert model.config == load_model_config("tiny").transformer
    assert all(torch.equal(p, sd[k]) for k, p in model.state_dict().items())


# ----------------------------------------------------------------------------------------------- fp8
def _quantize(official: dict[str, torch.Tensor]):
    """Hand-made official FP8 file: block Linear weights in E4M3 with a per-tensor absmax scale, rest bf16."""
    fp8_max = torch.finfo(torch.float8_e4m3fn).max
    quantized, scales = {}, {}
    for key, w in official.items():
        module = key.removesuffix(".weight")
        if key.endswith(".weight") and w.ndim == 2 and module.startswith(("double_blocks", "single_blocks")):
            scale = w.abs().max() / fp8_max
            quantized[key] = (w / scale).to(torch.float8_e4m3fn)
            scales[module] = scale.reshape(1).to(torch.bfloat16).float()
        else:
            quantized[key] = w.to(torch.bfloat16)
    return quantized, scales


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_official_fp8_checkpoint(refs, tmp_path, dtype):
    ref, _ = refs
    quantized, scales = _quantize(diffusers_to_official(ref.state_dict()))
    tdir = tmp_path / "hunyuan-video-t2v-720p" / "transformers"
    tdir.mkdir(parents=True)
    torch.save(quantized, tdir / "mp_rank_00_model_states_fp8.pt")  # and no bf16 file
    torch.save(scales, tdir / "mp_rank_00_model_states_fp8_map.pt")
    assert sum(t.dtype == torch.float8_e4m3fn for t in quantized.values()) == 2 * 10 + 2 * 3

    model = load_transformer(tmp_path, dtype=dtype)
    expected = official_to_diffusers(dequantize_fp8(quantized, scales, dtype))
    got = model.state_dict()
    assert set(got) == set(expected)
    for k, t in got.items():
        assert t.dtype == dtype and torch.equal(t, expected[k].to(dtype)), k
    assert load_model_config(tmp_path).transformer == TransformerConfig(**DIT)  # inferred from the fp8 file too

    (tdir / "mp_rank_00_model_states_fp8_map.pt").unlink()
    with pytest.raises(CheckpointError, match="fp8_map.pt") as e:
        load_transformer(tmp_path)
    one_line(e)


# -------------------------------------------------------------------------------------------- errors
@pytest.fixture
def tiny_copy(tmp_path) -> Path:
    folder = tmp_path / "tiny"
    shutil.copytree(resolve_model("tiny"), folder)
    return folder


def _edit_weights(folder: Path, edit) -> Path:
    path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(path))
    edit(sd)
    save_file(sd, str(path))
    return path


KEY = "single_transformer_blocks.0.attn.to_k.weight"


@pytest.mark.parametrize("kind", ["missing", "unexpected", "mis-shaped"])
def test_bad_key_names_key_and_file(tiny_copy, kind):
    edits = {
        "missing": lambda sd: sd.pop(KEY),
        "unexpected": lambda sd: sd.update({KEY.replace("to_k", "to_kk"): torch.zeros(2)}),
        "mis-shaped": lambda sd: sd.update({KEY: sd[KEY][:-1]}),
    }
    path = _edit_weights(tiny_copy, edits[kind])
    with pytest.raises(CheckpointError) as e:
        load_transformer(tiny_copy)
    msg = one_line(e)
    assert (KEY.replace("to_k", "to_kk") if kind == "unexpected" else KEY) in msg and str(path) in msg, msg
    assert {"missing": "missing key", "unexpected": "unexpected key", "mis-shaped": "has shape"}[kind] in msg


def test_sharded_key_missing_from_its_shard(diffusers_folder, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(diffusers_folder / "transformer", folder / "transformer")
    shutil.copytree(diffusers_folder / "vae", folder / "vae")
    index = json.loads((folder / "transformer" / "diffusion_pytorch_model.safetensors.index.json").read_text())
    key = "transformer_blocks.1.ff.net.2.weight"
    shard = folder / "transformer" / index["weight_map"][key]
    sd = load_file(str(shard))
    del sd[key]
    save_file(sd, str(shard))
    with pytest.raises(CheckpointError, match="index.json.*absent from its shard") as e:
        load_transformer(folder)
    assert key in one_line(e)


@pytest.mark.parametrize("kind", ["missing", "unknown"])
def test_official_bad_key_names_official_key_and_file(refs, tmp_path, kind):
    ref, _ = refs
    off = diffusers_to_official(ref.state_dict())
    if kind == "missing":
        del off["single_blocks.1.linear1.weight"]
    else:
        off["double_blocks.0.img_attn_qkvx.weight"] = torch.zeros(1)
    path = tmp_path / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
    path.parent.mkdir(parents=True)
    torch.save({"module": off}, path)
    with pytest.raises(CheckpointError) as e:
        load_transformer(tmp_path, config=load_model_config(tmp_path))
    msg = one_line(e)
    assert str(path) in msg, msg
    if kind == "missing":
        assert "single_blocks.1.linear1.weight" in msg and "missing key" in msg, msg
    else:
        assert "double_blocks.0.img_attn_qkvx.weight" in msg, msg


@pytest.mark.parametrize("kind", ["truncated", "garbage", "huge-header", "empty", "bad-offsets"])
def test_corrupt_safetensors_is_one_line_naming_the_file(tiny_copy, kind):
    path = tiny_copy / "transformer" / "diffusion_pytorch_model.safetensors"
    data = path.read_bytes()
    if kind == "truncated":
        data = data[: len(data) // 2]
    elif kind == "garbage":
        data = bytes(range(256)) * 4
    elif kind == "huge-header":
        data = (2**62).to_bytes(8, "little") + data[8:]
    elif kind == "empty":
        data = b""
    else:  # valid JSON header whose offsets point past the data
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"] = [0, 10**9]
        blob = json.dumps(header).encode()
        data = len(blob).to_bytes(8, "little") + blob + data[8 + header_len :]
    path.write_bytes(data)
    with pytest.raises(CheckpointError) as e:
        load_transformer(tiny_copy)
    msg = one_line(e)
    assert str(path) in msg, msg


@pytest.mark.parametrize("kind", ["garbage", "truncated", "legacy-format"])
def test_official_pt_files(refs, tmp_path, kind):
    """A corrupt .pt is one line naming it; a legacy (non-zip) torch.save file still loads (without mmap)."""
    ref, _ = refs
    path = tmp_path / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
    path.parent.mkdir(parents=True)
    sd = {"module": diffusers_to_official(ref.state_dict())}
    torch.save(sd, path, _use_new_zipfile_serialization=kind != "legacy-format")
    if kind == "legacy-format":
        model = load_transformer(tmp_path)
        assert all(torch.equal(p, ref.state_dict()[k]) for k, p in model.state_dict().items())
        return
    data = path.read_bytes()
    path.write_bytes(bytes(range(256)) * 8 if kind == "garbage" else data[: len(data) // 2])
    with pytest.raises(CheckpointError) as e:
        load_transformer(tmp_path)  # the config is inferred from this file first
    assert str(path) in one_line(e)
    with pytest.raises(CheckpointError) as e:
        load_transformer(tmp_path, config=load_model_config("tiny"))  # and the weights read
    assert str(path) in one_line(e)


def test_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="model folder not found") as e:
        load_transformer(tmp_path / "nope")
    assert str(tmp_path / "nope") in one_line(e)


def test_folder_of_neither_layout(tmp_path):
    (tmp_path / "README.md").write_text("not a checkpoint")
    (tmp_path / "transformers").mkdir()
    with pytest.raises(CheckpointError, match="not a HunyuanVideo checkpoint.*model_index.json.*mp_rank_00") as e:
        load_model_config(tmp_path)
    assert str(tmp_path) in one_line(e)


def test_missing_component_config(tiny_copy):
    (tiny_copy / "vae" / "config.json").unlink()
    with pytest.raises(CheckpointError, match="missing config file") as e:
        load_model_config(tiny_copy)
    assert str(tiny_copy / "vae" / "config.json") in one_line(e)


def test_image_to_video_config_is_refused(tiny_copy):
    path = tiny_copy / "transformer" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "image_condition_type": "latent_concat"}))
    with pytest.raises(CheckpointError, match="image-to-video") as e:
        load_model_config(tiny_copy)
    one_line(e)


def test_page_releaser_ignores_memory_it_does_not_own(tmp_path):
    """Anonymous tensors are never madvised (that would zero them); file pages are, and re-read intact."""
    path = tmp_path / "w.safetensors"
    save_file({"w": torch.arange(4 * 4096, dtype=torch.float32)}, str(path))
    mapped = read_safetensors(path)["w"]
    releaser = PageReleaser([path])
    anon = torch.arange(4 * 4096, dtype=torch.float32)
    assert releaser.release(anon) == 0 and torch.equal(anon, torch.arange(4 * 4096, dtype=torch.float32))
    if sys.platform.startswith("linux"):
        assert releaser.release(mapped) > 0
    assert torch.equal(mapped, torch.arange(4 * 4096, dtype=torch.float32))


CONFIG_CHILD = r"""
import json, sys
from vidtrt.source.model_source import load_model_config

def io(field):
    return int(dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())[field])

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

read0, rss0 = io("rchar"), status("VmRSS")
config = load_model_config(sys.argv[1])
print(json.dumps(dict(read=io("rchar") - read0, rss_before=rss0, peak=status("VmHWM"),
                      heads=config.transformer.num_attention_heads, single=config.transformer.num_single_layers)))
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/io and /proc/self/status")
@pytest.mark.parametrize("fmt", ["zip", "legacy"])
def test_official_config_does_not_load_the_weights(tmp_path, fmt):
    """A 2 GiB official DiT file: inferring its architecture builds meta tensors only. From torch's zip
    format it reads the archive's pickle (KiB); a legacy (pre-zip) file must be read through, but one
    tensor at a time, never held: peak RSS under 300 MB either way, torch's import included (loading the
    legacy file to infer the config, as before, peaked above 2 GB)."""
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in diffusers_to_official(
            diffusers.HunyuanVideoTransformer3DModel(**DIT).state_dict()).items()}
    sd = {k: torch.zeros(shape) for k, shape in shapes.items()}
    for i in range(128):  # 2 GiB more in 16 MiB tensors (inference ignores keys it does not read)
        sd[f"extra.{i}.weight"] = torch.zeros(2**22)
    path = tmp_path / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
    path.parent.mkdir(parents=True)
    torch.save({"module": sd}, path, _use_new_zipfile_serialization=fmt == "zip")
    del sd
    size = path.stat().st_size
    assert size >= 2 * 2**30
    out = subprocess.run([sys.executable, "-c", CONFIG_CHILD, str(tmp_path)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"official config from a {size / 2**30:.2f} GiB {fmt} file: read {got['read'] / 2**20:.1f} MiB, "
          f"peak RSS {got['peak'] / 2**20:.0f} MiB (before loading {got['rss_before'] / 2**20:.0f} MiB)")
    assert (got["heads"], got["single"]) == (DIT["num_attention_heads"], DIT["num_single_layers"])
    assert got["peak"] < 300 * 10**6
    if fmt == "zip":
        assert got["read"] < 16 * 2**20


# -------------------------------------------------------------------------------------------- memory
# Peak RSS minus RSS after imports, in a fresh process. The peak is VmHWM from /proc/self/status, not
# getrusage's ru_maxrss: Linux carries ru_maxrss across fork + exec (a child of a 1 GB pytest process
# starts with ru_maxrss = 1 GB), while VmHWM belongs to the new address space.
# After loading, the child reads every parameter, so every weight page that will ever be resident is
# resident: for a zero-copy load those are file-backed pages of the private mapping (they show as
# RssFile), for a copying load anonymous pages (RssAnon) on top of the touched file pages. RSS counts
# both; the kernel could drop the clean file pages under pressure, so this measurement is the
# pessimistic one. A bf16 file loaded as fp32 must be converted; the source pages are dropped as it
# goes (PageReleaser), without which this case measures 1.5x.
CHILD = r"""
import json, sys, torch
mode, folder, dtype = sys.argv[1], sys.argv[2], getattr(torch, sys.argv[3])
from vidtrt.source.model_source import ModelSource
from vidtrt.models.transformer import HunyuanVideoTransformer3D
from safetensors.torch import load_file

def status(field):
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

source = ModelSource.open(folder)
config = source.config
torch.manual_seed(0)
base = status("VmRSS")
if mode == "ours":
    model = source.load_transformer(dtype)
else:  # the naive way: a randomly initialised module, the file read into RAM, then copied in
    model = HunyuanVideoTransformer3D(config.transformer).to(dtype)
    model.load_state_dict(load_file(folder + "/transformer/diffusion_pytorch_model.safetensors"))
total = sum(float(p.float().sum()) for p in model.parameters())  # touch every byte
peak = status("VmHWM")
print(json.dumps(dict(base=base, peak=peak, anon=status("RssAnon"), file=status("RssFile"), total=total,
                      weights=sum(p.numel() * p.element_size() for p in model.parameters()))))
"""
# 8 heads x 128 = 1024 wide, 1 dual + 1 single block + 1 refiner block: ~76 M parameters, ~305 MB in fp32.
MEM_DIT = dict(num_attention_heads=8, attention_head_dim=128, num_layers=1, num_single_layers=1,
               num_refiner_layers=1, text_embed_dim=256, pooled_projection_dim=64)


def _write_mem_checkpoint(folder: Path, dtype: torch.dtype, official: bool, writer: str = "vidtrt") -> Path:
    """Random weights, streamed to disk tensor by tensor (the test process never holds the model), or
    with ``writer="safetensors"`` written by safetensors itself (data 8-byte aligned: loaded by copies)."""
    from vidtrt.models.transformer import HunyuanVideoTransformer3D
    from vidtrt.source.embedded import _config_dict

    config = TransformerConfig(**MEM_DIT)
    with torch.device("meta"):
        specs = [(k, tuple(v.shape), dtype) for k, v in HunyuanVideoTransformer3D(config).state_dict().items()]
    gen = torch.Generator().manual_seed(0)
    shapes = {k: s for k, s, _ in specs}

    def make(name):
        return (torch.randn(shapes[name], generator=gen) * 0.02).to(dtype)

    vae = {"_class_name": "AutoencoderKLHunyuanVideo", **_config_dict(load_model_config("tiny").vae)}
    if official:
        meta = {k: torch.empty(s, device="meta") for k, s, _ in specs}
        official_shapes = {k: tuple(v.shape) for k, v in diffusers_to_official(meta).items()}
        gen_sd = {k: (torch.randn(s, generator=gen) * 0.02).to(dtype) for k, s in official_shapes.items()}
        path = folder / "hunyuan-video-t2v-720p" / "transformers" / "mp_rank_00_model_states.pt"
        path.parent.mkdir(parents=True)
        torch.save({"module": gen_sd}, path)
        del gen_sd
        (path.parent.parent / "vae").mkdir()
        (path.parent.parent / "vae" / "config.json").write_text(json.dumps(vae))
        return path
    (folder / "transformer").mkdir(parents=True)
    (folder / "vae").mkdir()
    (folder / "transformer" / "config.json").write_text(json.dumps(_config_dict(config)))
    (folder / "vae" / "config.json").write_text(json.dumps(vae))
    path = folder / "transformer" / "diffusion_pytorch_model.safetensors"
    if writer == "safetensors":
        sd = {name: make(name) for name, _, _ in specs}
        for pad in range(WEIGHT_ALIGNMENT):  # metadata of a length that puts the data section off the grid
            save_file(sd, str(path), metadata={"format": "pt", "pad": "x" * pad})
            if min(t.data_ptr() % WEIGHT_ALIGNMENT for t in read_safetensors(path).values()) > 0:
                break
        else:
            raise AssertionError("could not write an unaligned safetensors file")
    else:
        write_safetensors_streaming(path, specs, make)
    return path


def _measure(mode: str, folder: Path, dtype: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", CHILD, mode, str(folder), dtype], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
@pytest.mark.parametrize("case", ["diffusers-fp32", "official-fp32", "bf16-file-to-fp32", "unaligned-fp32"])
def test_loading_holds_one_copy(tmp_path, case):
    """Peak RSS increase <= 1.3 x the loaded weights' size; the naive load (measured too) needs ~2x or more.

    unaligned-fp32: a file written by safetensors itself, whose tensors all sit off the 64-byte grid, so
    every one is copied into aligned memory (source pages dropped as it goes)."""
    file_dtype = torch.bfloat16 if case.startswith("bf16") else torch.float32
    writer = "safetensors" if case.startswith("unaligned") else "vidtrt"
    path = _write_mem_checkpoint(tmp_path, file_dtype, official=case.startswith("official"), writer=writer)
    file_size = path.stat().st_size
    ours = _measure("ours", tmp_path, "float32")
    increase = ours["peak"] - ours["base"]
    weights = ours["weights"]  # fp32 bytes after loading (= the file size for an fp32 file)
    report = (f"{case}: file {file_size / 2**20:.0f} MiB, weights {weights / 2**20:.0f} MiB, "
              f"peak increase {increase / 2**20:.0f} MiB ({increase / weights:.2f}x), "
              f"RssAnon {ours['anon'] / 2**20:.0f} MiB, RssFile {ours['file'] / 2**20:.0f} MiB")
    print(report)
    assert weights > 250 * 2**20
    assert increase <= 1.3 * weights, report
    if case == "unaligned-fp32":
        assert ours["anon"] >= 0.9 * weights, report  # copies, not the file's pages
    if case == "diffusers-fp32":
        # zero-copy: the weights are file pages, not anonymous memory
        assert ours["file"] >= 0.9 * file_size, report
        naive = _measure("naive", tmp_path, "float32")
        naive_increase = naive["peak"] - naive["base"]
        print(f"naive: peak increase {naive_increase / 2**20:.0f} MiB ({naive_increase / weights:.2f}x)")
        assert naive_increase >= 1.8 * weights  # so the bound above can fail
        assert naive["total"] == pytest.approx(ours["total"], rel=1e-4)  # same weights either way
