"""HunyuanTextEncoder vs diffusers' HunyuanVideoPipeline prompt encoding, on the tiny text encoders."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import subprocess
import sys

import pytest
import torch

from vidtrt.config.model_config import TextEncoderConfig, hunyuan_video_config, tiny_config
from vidtrt.errors import CheckpointError, InvalidRequestError
from vidtrt.models.text_encoders import HunyuanTextEncoder, count_template_prefix_tokens, template_prefix
from vidtrt.source.tiny import (
    MODEL_INDEX_ENTRIES,
    _clip_vocab_and_merges,
    _llm_vocab_and_merges,
    build_tiny_text_encoders,
    build_tiny_tokenizers,
    write_text_components,
)

diffusers = pytest.importorskip("diffusers")
from diffusers import HunyuanVideoPipeline  # noqa: E402
from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE  # noqa: E402

CPU = torch.device("cpu")
SHORT = "A cat walks on the grass."
PROMPTS = [
    "A cat walks on the grass, realistic style.",
    "dog",
    "An astronaut rides a horse on the moon; cinematic lighting, 4k. " * 6,  # truncated by both
    "héllo 世界 🎬 — naïve café, \t tabs\nand newlines",
    "",
]


@pytest.fixture(scope="module")
def enc() -> HunyuanTextEncoder:
    from vidtrt.source.tiny import tiny_text_encoder

    return tiny_text_encoder()


@pytest.fixture(scope="module")
def pipe(enc):
    return HunyuanVideoPipeline(
        text_encoder=enc.llm,
        tokenizer=enc.llm_tokenizer,
        transformer=None,
        vae=None,
        scheduler=None,
        text_encoder_2=enc.clip,
        tokenizer_2=enc.clip_tokenizer,
    )


def _reference(pipe, cfg: TextEncoderConfig, crop_start, prompts):
    template = {"template": cfg.prompt_template, "crop_start": crop_start}
    with torch.no_grad():
        embeds, mask = pipe._get_llama_prompt_embeds(
            prompts,
            template,
            device=CPU,
            max_sequence_length=cfg.max_sequence_length,
            num_hidden_layers_to_skip=cfg.num_hidden_layers_to_skip,
        )
        pooled = pipe._get_clip_prompt_embeds(prompts, device=CPU, max_sequence_length=cfg.clip_max_length)
    return embeds, mask, pooled


def _assert_exact(out, ref):
    embeds, mask, pooled = ref
    assert out.prompt_embeds.dtype == torch.float32 and out.pooled.dtype == torch.float32
    assert out.attention_mask.dtype == torch.int64
    assert out.prompt_embeds.shape == embeds.shape and out.pooled.shape == pooled.shape
    assert (out.prompt_embeds - embeds).abs().max().item() == 0.0
    assert torch.equal(out.attention_mask, mask.to(torch.int64))
    assert (out.pooled - pooled).abs().max().item() == 0.0


# ------------------------------------------------------------------ (a) parity with diffusers


def test_tiny_crop_start_counts_template_prefix(enc, pipe):
    cfg = tiny_config().text
    assert cfg.crop_start is None
    # <|begin_of_text|> <|start_header_id|> user <|end_header_id|> \n\n
    assert enc.crop_start == 5
    # diffusers' own crop_start=None rule (template tokens minus "{}" and <|eot_id|>) agrees.
    ids = enc.llm_tokenizer(cfg.prompt_template)["input_ids"]
    assert len(ids) - 2 == enc.crop_start
    _, mask_none, _ = _reference(pipe, cfg, None, ["dog"])
    _, mask_ours, _ = _reference(pipe, cfg, enc.crop_start, ["dog"])
    assert torch.equal(mask_none, mask_ours)


@pytest.mark.parametrize(
    "prompts",
    [PROMPTS[:2], [PROMPTS[1]], [PROMPTS[2]], PROMPTS[3:], PROMPTS],
    ids=["batch2-different-lengths", "one-word", "over-long", "unicode-and-empty", "batch5"],
)
def test_matches_diffusers_exactly(enc, pipe, prompts):
    cfg = enc.config
    out = enc(prompts)
    assert out.prompt_embeds.shape == (len(prompts), cfg.max_sequence_length, 32)
    assert out.pooled.shape == (len(prompts), 16)
    _assert_exact(out, _reference(pipe, cfg, enc.crop_start, prompts))
    # Right-padded masks: a prefix of ones.
    for row in out.attention_mask:
        n = int(row.sum())
        assert n >= 1 and row[:n].all() and not row[n:].any()


def test_over_long_prompt_is_truncated_like_diffusers(enc):
    out = enc([PROMPTS[2], "dog"])
    assert out.attention_mask[0].all()  # filled to max_sequence_length
    assert out.attention_mask[1].sum() < enc.config.max_sequence_length
    n_llm, n_clip = enc.token_counts([PROMPTS[2]])[0]
    assert n_llm > enc.llm_max_length and n_clip > enc.config.clip_max_length


def test_middle_layer_not_final_norm(enc):
    """hidden_states[-3] of a 4-layer Llama: the output of layer 2, before the final norm."""
    assert enc.llm.config.num_hidden_layers == 4
    ids = enc.llm_tokenizer(["dog"], return_tensors="pt")
    with torch.no_grad():
        out = enc.llm(**ids, output_hidden_states=True)
    assert len(out.hidden_states) == 5
    assert not torch.allclose(out.hidden_states[-3], out.hidden_states[-1])
    assert not torch.allclose(out.hidden_states[-3], out.last_hidden_state)


def test_matches_diffusers_encode_prompt(enc, pipe):
    """The public encode_prompt (CLIP fixed at 77 tokens) agrees for prompts that fit the tiny CLIP."""
    cfg = enc.config
    prompts = [SHORT, "dog"]
    assert all(n_clip <= cfg.clip_max_length for _, n_clip in enc.token_counts(prompts))
    with torch.no_grad():
        embeds, pooled, mask = pipe.encode_prompt(
            prompts,
            prompt_template={"template": cfg.prompt_template, "crop_start": enc.crop_start},
            device=CPU,
            max_sequence_length=cfg.max_sequence_length,
        )
    _assert_exact(enc(prompts), (embeds, mask, pooled))


def test_full_template_with_config_crop_start(enc, pipe):
    """The released template and crop_start=95 (the config's): our crop uses config.crop_start as given."""
    full = hunyuan_video_config().text
    assert full.crop_start == 95 == DEFAULT_PROMPT_TEMPLATE["crop_start"]
    assert full.prompt_template == DEFAULT_PROMPT_TEMPLATE["template"]
    assert full.max_sequence_length == 256 and full.num_hidden_layers_to_skip == 2
    assert full.clip_max_length == 77
    big = HunyuanTextEncoder(enc.llm, enc.llm_tokenizer, enc.clip, enc.clip_tokenizer, full)
    assert big.crop_start == 95 and big.llm_max_length == 351
    prompts = [SHORT, PROMPTS[2]]
    out = big(prompts)
    assert out.prompt_embeds.shape == (2, 256, 32)
    _assert_exact(out, _reference(pipe, full, 95, prompts))
    # The tiny tokenizer splits the template into fewer tokens than Llama 3; a crop_start=None config
    # counts them with this tokenizer instead.
    counted = HunyuanTextEncoder(
        enc.llm, enc.llm_tokenizer, enc.clip, enc.clip_tokenizer, dataclasses.replace(full, crop_start=None)
    )
    assert counted.crop_start == count_template_prefix_tokens(enc.llm_tokenizer, full.prompt_template)
    assert counted.crop_start == len(enc.llm_tokenizer(full.prompt_template)["input_ids"]) - 2
    _assert_exact(counted(prompts), _reference(pipe, full, None, prompts))


def test_template_prefix():
    assert template_prefix("ab{{x}}{}cd") == "ab{x}"
    assert template_prefix(tiny_config().text.prompt_template) == "<|start_header_id|>user<|end_header_id|>\n\n"


# ------------------------------------------------------------------ (b) prompt_policy


def test_error_policy_clip_limit(enc):
    cfg = dataclasses.replace(enc.config, clip_max_length=16)
    enc = HunyuanTextEncoder(enc.llm, enc.llm_tokenizer, enc.clip, enc.clip_tokenizer, cfg)
    with pytest.raises(InvalidRequestError) as ei:
        enc([SHORT, PROMPTS[0]], prompt_policy="error")
    err = ei.value
    assert err.param == "prompt" and err.value == PROMPTS[0]
    n_clip = enc.token_counts([PROMPTS[0]])[0][1]
    assert f"at most {enc.config.clip_max_length - 2} CLIP tokens" in str(err)
    assert f"this prompt has {n_clip - 2}" in str(err)
    assert "\n" not in str(err)
    enc([SHORT, "dog"], prompt_policy="error")  # fits: no error


def test_error_policy_llm_limit(enc):
    cfg = dataclasses.replace(enc.config, max_sequence_length=8, clip_max_length=77)
    small = HunyuanTextEncoder(enc.llm, enc.llm_tokenizer, enc.clip, enc.clip_tokenizer, cfg)
    n_llm = small.token_counts([SHORT])[0][0]
    n_prompt = n_llm - small.crop_start - 1  # minus the template prefix and <|eot_id|>
    assert n_prompt > 7
    with pytest.raises(InvalidRequestError, match=rf"at most 7 LLM tokens .*this prompt has {n_prompt}$"):
        small([SHORT], prompt_policy="error")
    assert small(["dog"], prompt_policy="error").prompt_embeds.shape == (1, 8, 32)


def test_truncate_policy_warns(enc, caplog):
    with caplog.at_level(logging.WARNING, logger="vidtrt.models.text_encoders"):
        enc([PROMPTS[2]])
    text = caplog.text
    assert "truncated for the LLM text encoder" in text and "truncated for the CLIP text encoder" in text
    # which text was cut, and what was cut: the prompt (elided) and its tail
    assert text.count("prompt 'An astronaut rides a horse") == 2 and "cut: '" in text
    cut = re.findall(r"cut: '([^']*)'", text)
    assert len(cut) == 2 and all(c.rstrip(" .").endswith("4k") or "..." in c for c in cut), cut


def test_bad_policy_and_prompts(enc):
    with pytest.raises(InvalidRequestError) as ei:
        enc(["dog"], prompt_policy="drop")
    assert ei.value.param == "prompt_policy"
    with pytest.raises(InvalidRequestError):
        enc([])


# ------------------------------------------------------------------ (d) loading and errors


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_text")
    write_text_components(folder)
    return folder


def test_from_pretrained_diffusers_layout(enc, tiny_folder):
    for sub in ("text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2"):
        assert (tiny_folder / sub).is_dir()
    assert list((tiny_folder / "text_encoder").glob("*.safetensors"))
    loaded = HunyuanTextEncoder.from_pretrained(tiny_folder, tiny_config().text)
    prompts = PROMPTS[:2]
    a, b = enc(prompts), loaded(prompts)
    assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.pooled, b.pooled)
    assert torch.equal(a.attention_mask, b.attention_mask)
    half = HunyuanTextEncoder.from_pretrained(tiny_folder, tiny_config().text, torch_dtype=torch.bfloat16)
    assert half.llm.dtype == torch.bfloat16 and half.clip.dtype == torch.bfloat16
    c = half(prompts)
    assert c.prompt_embeds.dtype == torch.float32 and c.pooled.dtype == torch.float32
    assert torch.equal(c.attention_mask, a.attention_mask)
    assert (c.prompt_embeds - a.prompt_embeds).abs().max() < 0.1 * a.prompt_embeds.abs().max()


def test_diffusers_pipeline_loads_text_folders(enc, tiny_folder, tmp_path):
    """model_index.json entries from MODEL_INDEX_ENTRIES load in diffusers and tokenize identically."""
    import shutil

    root = tmp_path / "ckpt"
    shutil.copytree(tiny_folder, root)
    index = {"_class_name": "HunyuanVideoPipeline", "_diffusers_version": diffusers.__version__,
             **MODEL_INDEX_ENTRIES, "transformer": [None, None], "vae": [None, None], "scheduler": [None, None]}
    (root / "model_index.json").write_text(json.dumps(index))
    pipe = HunyuanVideoPipeline.from_pretrained(root, transformer=None, vae=None, scheduler=None,
                                                local_files_only=True)
    formatted = [enc.config.prompt_template.format(p) for p in PROMPTS]
    assert pipe.tokenizer(formatted)["input_ids"] == enc.llm_tokenizer(formatted)["input_ids"]
    assert pipe.tokenizer_2(PROMPTS)["input_ids"] == enc.clip_tokenizer(PROMPTS)["input_ids"]
    assert pipe.tokenizer.padding_side == "right"
    cfg = enc.config
    _assert_exact(enc(PROMPTS), _reference(pipe, cfg, enc.crop_start, PROMPTS))


def test_from_pretrained_official_layout(enc, tmp_path):
    """Tencent layout: text_encoder/ = Llama causal LM + tokenizer, text_encoder_2/ = full CLIP + tokenizer."""
    from transformers import CLIPConfig, CLIPModel, LlamaForCausalLM

    lm = LlamaForCausalLM(enc.llm.config)
    lm.model.load_state_dict(enc.llm.state_dict())
    lm.save_pretrained(tmp_path / "text_encoder")
    enc.llm_tokenizer.save_pretrained(tmp_path / "text_encoder")
    vision = dict(hidden_size=8, intermediate_size=16, num_hidden_layers=1, num_attention_heads=2,
                  image_size=8, patch_size=4)
    clip = CLIPModel(CLIPConfig(text_config=enc.clip.config.to_dict(), vision_config=vision, projection_dim=8))
    clip.text_model.load_state_dict(enc.clip.text_model.state_dict() if hasattr(enc.clip, "text_model")
                                    else enc.clip.state_dict())
    clip.save_pretrained(tmp_path / "text_encoder_2")
    enc.clip_tokenizer.save_pretrained(tmp_path / "text_encoder_2")
    loaded = HunyuanTextEncoder.from_pretrained(tmp_path, enc.config)
    a, b = enc(PROMPTS[:2]), loaded(PROMPTS[:2])
    assert torch.equal(a.prompt_embeds, b.prompt_embeds) and torch.equal(a.pooled, b.pooled)


def _one_line_error(folder) -> str:
    with pytest.raises(CheckpointError) as ei:
        HunyuanTextEncoder.from_pretrained(folder, tiny_config().text)
    msg = str(ei.value)
    assert "\n" not in msg
    return msg


def test_missing_folders_are_named(tiny_folder, tmp_path):
    import shutil

    missing = tmp_path / "nope"
    assert str(missing) in _one_line_error(missing)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert str(empty / "text_encoder") in _one_line_error(empty)

    def copy(name, drop):
        root = tmp_path / name
        shutil.copytree(tiny_folder, root)
        target = root / drop
        shutil.rmtree(target) if target.is_dir() else target.unlink()
        return root

    root = copy("no_clip", "text_encoder_2")
    assert str(root / "text_encoder_2") in _one_line_error(root)
    root = copy("no_weights", "text_encoder/model.safetensors")
    msg = _one_line_error(root)
    assert str(root / "text_encoder") in msg and "weights" in msg
    root = copy("no_tokenizer", "tokenizer")
    msg = _one_line_error(root)
    assert str(root / "tokenizer") in msg and "LLM tokenizer" in msg
    root = copy("no_config", "text_encoder_2/config.json")
    assert str(root / "text_encoder_2" / "config.json") in _one_line_error(root)


def test_mismatched_weights_are_refused(tiny_folder, tmp_path):
    """A checkpoint whose weights do not fit the architecture is an error, not a random init."""
    import shutil

    from safetensors.torch import load_file, save_file

    root = tmp_path / "partial"
    shutil.copytree(tiny_folder, root)
    path = root / "text_encoder" / "model.safetensors"
    state = load_file(path)
    del state[sorted(state)[0]]
    save_file(state, path, metadata={"format": "pt"})
    msg = _one_line_error(root)
    assert "lacks weights" in msg and str(root / "text_encoder") in msg


# ------------------------------------------------------------------ (e) tiny tokenizers and models


def test_tokenizers_deterministic():
    llm = _llm_vocab_and_merges.__wrapped__()
    clip = _clip_vocab_and_merges.__wrapped__()
    assert llm == _llm_vocab_and_merges.__wrapped__()
    assert clip == _clip_vocab_and_merges.__wrapped__()
    a1, c1 = build_tiny_tokenizers()
    a2, c2 = build_tiny_tokenizers()
    assert a1.backend_tokenizer.to_str() == a2.backend_tokenizer.to_str()
    assert c1.get_vocab() == c2.get_vocab()


def test_tokenizers_deterministic_across_processes():
    code = (
        "import hashlib;from vidtrt.source.tiny import build_tiny_tokenizers as b;a,c=b();"
        "print(hashlib.sha256((a.backend_tokenizer.to_str()+c.backend_tokenizer.to_str()).encode()).hexdigest())"
    )
    a, c = build_tiny_tokenizers()
    import hashlib

    here = hashlib.sha256((a.backend_tokenizer.to_str() + c.backend_tokenizer.to_str()).encode()).hexdigest()
    env = dict(os.environ, PYTHONHASHSEED="12345")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.split()[-1] == here


def test_tokenizers_cover_any_text():
    llm, clip = build_tiny_tokenizers()
    for text in PROMPTS + ["\x00\x01 control", "ℝ∑∫ 😀👍🏽", "日本語のテキスト", "<|eot_id|>"]:
        ids = llm(text)["input_ids"]
        assert ids[0] == llm.bos_token_id
        assert llm.decode(ids[1:]) == text  # byte-level: lossless
        cids = clip(text)["input_ids"]
        assert cids[0] == clip.bos_token_id and cids[-1] == clip.eos_token_id
        assert clip.eos_token_id not in cids[1:-1]  # no unknown-token collapse (unk is <|endoftext|>)
        assert clip.unk_token_id not in cids[1:-1]
    # Template special tokens are single tokens.
    for special in ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"):
        ids = llm(special, add_special_tokens=False)["input_ids"]
        assert len(ids) == 1 and llm.convert_ids_to_tokens(ids) == [special]
    assert llm.padding_side == "right" and llm.pad_token is not None
    assert clip.model_max_length == 77 and clip.pad_token == clip.eos_token == "<|endoftext|>"


def test_tokenizers_round_trip(tmp_path):
    from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerFast

    llm, clip = build_tiny_tokenizers()
    llm.save_pretrained(tmp_path / "tokenizer")
    clip.save_pretrained(tmp_path / "tokenizer_2")
    texts = PROMPTS + [tiny_config().text.prompt_template.format(SHORT)]
    for cls in (AutoTokenizer, PreTrainedTokenizerFast):
        again = cls.from_pretrained(tmp_path / "tokenizer", local_files_only=True)
        assert again(texts)["input_ids"] == llm(texts)["input_ids"]
        assert again.padding_side == "right" and again.pad_token_id == llm.pad_token_id
        assert again.bos_token_id == llm.bos_token_id
    for cls in (AutoTokenizer, CLIPTokenizer):
        again = cls.from_pretrained(tmp_path / "tokenizer_2", local_files_only=True)
        assert again(texts)["input_ids"] == clip(texts)["input_ids"]
        assert again.eos_token_id == clip.eos_token_id


def test_tiny_text_encoders_deterministic():
    state = torch.random.get_rng_state()
    llm1, clip1 = build_tiny_text_encoders(0)
    assert torch.equal(torch.random.get_rng_state(), state)  # global RNG untouched
    llm2, clip2 = build_tiny_text_encoders(0)
    llm3, _ = build_tiny_text_encoders(1)
    for m1, m2 in ((llm1, llm2), (clip1, clip2)):
        s1, s2 = m1.state_dict(), m2.state_dict()
        assert s1.keys() == s2.keys() and all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(llm1.embed_tokens.weight, llm3.embed_tokens.weight)
    llm_tok, clip_tok = build_tiny_tokenizers()
    assert llm1.config.hidden_size == 32 and llm1.config.num_hidden_layers == 4
    assert llm1.config.vocab_size == len(llm_tok)
    assert clip1.config.hidden_size == 16 and clip1.config.num_hidden_layers == 2
    assert clip1.config.vocab_size == len(clip_tok) and clip1.config.max_position_embeddings >= 77
    assert clip1.config.eos_token_id == clip_tok.eos_token_id != 2
    tiny = tiny_config()
    assert tiny.transformer.text_embed_dim == llm1.config.hidden_size
    assert tiny.transformer.pooled_projection_dim == clip1.config.hidden_size
