"""The embedded ``tiny-cogvideox`` model: a CogVideoX-5B-architecture checkpoint generated from a seed.

Written once in the diffusers layout (``model_index.json`` naming ``CogVideoXPipeline``, ``transformer/``,
``vae/``, ``scheduler/``, ``text_encoder/`` = a 2-layer ``T5EncoderModel``, ``tokenizer/``), then loaded
through the same code as any user checkpoint; diffusers' ``CogVideoXPipeline.from_pretrained`` loads it
as it is (the tests do).

The tokenizer is a T5-style Unigram model (transformers' tokenizers-backed ``T5Tokenizer``: ``<pad>`` 0,
``</s>`` 1, ``<unk>`` 2, Metaspace pre-tokenizer) whose pieces are the words of the tiny models' fixed
corpus plus every printable ASCII character, built in process (no download, identical on every machine).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import torch

from vidtrt.config.cogvideox_config import TINY_T5_HIDDEN, CogVideoXModelConfig

_SPACE = "\u2581"


def _t5_vocab() -> list[tuple[str, float]]:
    from vidtrt.source.tiny import _corpus_lines

    words: dict[str, int] = {}
    for line in _corpus_lines():
        for w in re.findall(r"[A-Za-z]+|[0-9]", line):
            words[w] = words.get(w, 0) + 1
    ranked = sorted(words, key=lambda w: (-words[w], w))
    vocab = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), (_SPACE, -2.0)]
    vocab += [(_SPACE + w, -3.0 - i / 1000) for i, w in enumerate(ranked)]
    chars = [chr(c) for c in range(33, 127)]
    vocab += [(c, -8.0) for c in chars] + [(_SPACE + c, -7.0) for c in chars if _SPACE + c not in dict(vocab)]
    return vocab


def build_t5_tokenizer():
    """The tiny T5 tokenizer (no download); deterministic."""
    from transformers import T5Tokenizer

    return T5Tokenizer(vocab=_t5_vocab(), extra_ids=0)


def build_tiny_t5(seed: int, vocab_size: int):
    """A 2-layer T5 encoder (d_model TINY_T5_HIDDEN) initialised from ``seed``."""
    from transformers import T5Config, T5EncoderModel

    cfg = T5Config(vocab_size=vocab_size, d_model=TINY_T5_HIDDEN, d_kv=16, d_ff=64, num_layers=2, num_heads=2,
                   relative_attention_num_buckets=8, relative_attention_max_distance=32, feed_forward_proj="gated-gelu",
                   decoder_start_token_id=0, pad_token_id=0, eos_token_id=1)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = T5EncoderModel(cfg)
    return model.eval()


def _config_dict(obj) -> dict:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=list))


def _save_component(folder: Path, module: torch.nn.Module, class_name: str, config) -> None:
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"_class_name": class_name, "_diffusers_version": "0.32.0", **_config_dict(config)}
    (folder / "config.json").write_text(json.dumps(cfg, indent=2))
    save_file({k: v.detach().contiguous() for k, v in module.state_dict().items()},
              str(folder / "diffusion_pytorch_model.safetensors"))


def write_tiny_cogvideox_checkpoint(folder: str | os.PathLike, config: CogVideoXModelConfig, seed: int = 0) -> Path:
    """Write ``config`` (the tiny preset) with seeded weights in the diffusers layout (+ ``vidtrt.json``)."""
    from vidtrt.config.model_config import VIDTRT_JSON
    from vidtrt.models.cogvideox_transformer import CogVideoXTransformer3D
    from vidtrt.models.cogvideox_vae import CogVideoXVAEDecoder
    from vidtrt.models.text_encoders import quiet_transformers

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        dit = CogVideoXTransformer3D(config.transformer)
        torch.manual_seed(seed + 1)
        vae = CogVideoXVAEDecoder(config.vae)
    _save_component(folder / "transformer", dit, "CogVideoXTransformer3DModel", config.transformer)
    vae_cfg = _config_dict(config.vae)
    _save_component(folder / "vae", vae, "AutoencoderKLCogVideoX", config.vae)
    (folder / "vae" / "config.json").write_text(json.dumps({
        "_class_name": "AutoencoderKLCogVideoX", "_diffusers_version": "0.32.0", **vae_cfg,
        "down_block_types": ["CogVideoXDownBlock3D"] * len(config.vae.block_out_channels),
        "up_block_types": ["CogVideoXUpBlock3D"] * len(config.vae.block_out_channels)}, indent=2))

    sched = {k: v for k, v in _config_dict(config.scheduler).items() if k != "solver"}
    name = "CogVideoXDPMScheduler" if config.scheduler.solver == "dpm" else "CogVideoXDDIMScheduler"
    (folder / "scheduler").mkdir(exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps({"_class_name": name, "_diffusers_version": "0.32.0", **sched}, indent=2))

    tokenizer = build_t5_tokenizer()
    t5 = build_tiny_t5(seed + 2, len(tokenizer))
    with quiet_transformers():
        tokenizer.save_pretrained(folder / "tokenizer")
        t5.save_pretrained(folder / "text_encoder")
    index = {
        "_class_name": "CogVideoXPipeline", "_diffusers_version": "0.32.0",
        "scheduler": ["diffusers", name], "transformer": ["diffusers", "CogVideoXTransformer3DModel"],
        "vae": ["diffusers", "AutoencoderKLCogVideoX"], "text_encoder": ["transformers", "T5EncoderModel"],
        "tokenizer": ["transformers", "T5Tokenizer"],
    }
    (folder / "model_index.json").write_text(json.dumps(index, indent=2))
    overrides = {"name": config.name, "text": _config_dict(config.text), "tiling": _config_dict(config.tiling),
                 "defaults": _config_dict(config.defaults)}
    (folder / VIDTRT_JSON).write_text(json.dumps(overrides, indent=2))
    return folder
