"""The embedded tiny model's text side: tokenizers and text encoders built offline, no download.

Both tokenizers are byte-level BPE, learned in process from a fixed built-in corpus by a small
deterministic BPE learner (most frequent pair first, ties broken by the pair's text), so two
builds give identical vocabularies on any machine. Every byte has a base token, so any prompt
(any language, emoji, control characters) tokenizes without unknown tokens.

- LLM side (Llama 3 style): Llama 3's pre-tokenizer regex + ByteLevel, BPE without an end-of-word
  suffix, ``<|begin_of_text|>`` prepended to every sequence, special tokens ``<|begin_of_text|>``,
  ``<|end_of_text|>``, ``<|start_header_id|>``, ``<|end_header_id|>``, ``<|eot_id|>``, ``<|pad|>``
  (right padding). Wrapped as ``PreTrainedTokenizerFast`` (saved as ``tokenizer.json``).
- CLIP side: the original CLIP file format (``vocab.json``: 256 byte symbols, the same with
  ``</w>``, one entry per merge, then ``<|startoftext|>`` and ``<|endoftext|>``; ``merges.txt``),
  loaded with transformers' ``CLIPTokenizer`` exactly like openai/clip-vit-large-patch14 (pad is
  ``<|endoftext|>``, 77 tokens max). ``<|endoftext|>`` has the highest id, so CLIPTextModel's pooled
  output (first ``eos_token_id`` position) selects the end of the prompt.

The text encoders are a 4-layer ``LlamaModel`` (hidden ``TINY_LLM_HIDDEN``; ``hidden_states[-3]``
is the output of layer 2, a real middle layer) and a 2-layer ``CLIPTextModel`` (hidden
``TINY_CLIP_HIDDEN``, 77 positions), initialised from ``torch.manual_seed(seed)``.
"""

from __future__ import annotations

import functools
import json
import os
import re
import tempfile
from collections import Counter

import torch

from vidtrt.config.model_config import TINY_CLIP_HIDDEN, TINY_LLM_HIDDEN

LLM_BOS = "<|begin_of_text|>"
LLM_EOS = "<|end_of_text|>"
LLM_PAD = "<|pad|>"
LLM_SPECIAL_TOKENS = (LLM_BOS, LLM_EOS, "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", LLM_PAD)
CLIP_BOS = "<|startoftext|>"
CLIP_EOS = "<|endoftext|>"
CLIP_MAX_POSITIONS = 77

# Llama 3's pre-tokenizer pattern (tokenizer.json of Meta-Llama-3).
_LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# CLIP's pre-tokenizer pattern (transformers' CLIPTokenizer).
_CLIP_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""

_LLM_MERGES = 600
_CLIP_MERGES = 400

# Fixed training text: video-description English, the HunyuanVideo prompt templates, digits and
# punctuation. Changing it changes every tiny checkpoint's token ids.
_CORPUS = """
<|start_header_id|>system<|end_header_id|>

Describe the video by detailing the following aspects: 1. The main content and theme of the video.
2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects.
3. Actions, events, behaviors temporal relationships, physical movement changes of the objects.
4. background environment, light, style and atmosphere.
5. camera angles, movements, and transitions used in the video:<|eot_id|>
<|start_header_id|>user<|end_header_id|>

{}<|eot_id|>
<|start_header_id|>user<|end_header_id|>

{}<|eot_id|>
A cat walks on the grass, realistic style. A dog runs along the beach at sunset.
A red car drives down a wet city street at night, neon lights reflecting in the puddles.
An astronaut rides a horse on the surface of the moon, cinematic lighting, 4k, high detail.
A woman in a blue dress dances in the rain while the camera slowly moves around her.
Two children play with a yellow ball in a green park; trees sway in the wind.
A close-up of a cup of coffee with steam rising, soft morning light from the window.
Aerial view of a mountain lake surrounded by snow, clouds drifting over the peaks.
A panda eats bamboo in a forest. The bird flies over the river and lands on a branch.
An old man reads a book by the fire, warm colors, slow zoom in, film grain.
A time-lapse of a busy street: people walk, cars pass, the sky turns from day to night.
Waves crash against the rocks, white foam, dramatic clouds, wide shot, 24 fps.
A robot cooks dinner in a modern kitchen; it cuts vegetables and stirs the pot.
Fish swim in a coral reef with bright orange and purple colors, underwater camera.
A train moves through the countryside past fields of wheat and small houses.
A girl smiles and waves at the camera, shallow depth of field, portrait, 35mm lens.
Fireworks explode over the city skyline; the crowd cheers and the water reflects the light.
A chef slices bread on a wooden table. Snow falls quietly on a small village at night.
The sun rises behind the hills, golden hour, long shadows, the camera pans left to right.
A man skateboards down a ramp, slow motion, sports, action shot, tracking camera.
Leaves fall from the trees in autumn; a squirrel jumps between the branches.
A spaceship lands on a distant planet with two moons, science fiction, epic scale.
Rain drops on a window, blurred lights behind the glass, quiet mood, dark tones.
A horse gallops across an open field; dust rises behind it; wide angle, low angle shot.
Close up of hands playing the piano, soft focus, black and white, vintage style.
A small boat sails on calm water under a clear blue sky, gentle movement, peaceful.
Overexposed, low quality, deformation, a poor composition, bad hands, bad teeth, bad eyes,
bad limbs, distortion. Aerial view, aerial view, blurry, jittery, watermark, text, logo.
What is this? It's great! They're here; we've seen it, I'm sure you'll like it, he'd go.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 12 16 24 30 60 100 129 256 720 1080 1280 2024 3.14 50%
Punctuation: . , ; : ! ? ' " ( ) [ ] { } < > / \\ | - _ + = * & ^ % $ # @ ~ ` ...
"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character table (used by ByteLevel and CLIP)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs), strict=True))


def _learn_bpe(words: Counter, num_merges: int) -> list[tuple[str, str]]:
    """Deterministic BPE: repeatedly merge the most frequent adjacent pair (ties: smallest pair text).

    ``words`` maps a tuple of initial symbols to its count. Stops early when no pair occurs twice.
    """
    seqs = [list(w) for w in sorted(words)]
    counts = [words[w] for w in sorted(words)]
    pair_counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = {}
    for i, s in enumerate(seqs):
        for p in zip(s, s[1:], strict=False):
            pair_counts[p] += counts[i]
            where.setdefault(p, set()).add(i)
    merges = []
    for _ in range(num_merges):
        best = None
        for p, c in pair_counts.items():
            if c >= 2 and (best is None or c > best[1] or (c == best[1] and p < best[0])):
                best = (p, c)
        if best is None:
            break
        pair = best[0]
        merges.append(pair)
        joined = pair[0] + pair[1]
        for i in sorted(where.get(pair, ())):
            s = seqs[i]
            for p in zip(s, s[1:], strict=False):
                pair_counts[p] -= counts[i]
                if pair_counts[p] <= 0:
                    del pair_counts[p]
            out, j = [], 0
            while j < len(s):
                if j + 1 < len(s) and s[j] == pair[0] and s[j + 1] == pair[1]:
                    out.append(joined)
                    j += 2
                else:
                    out.append(s[j])
                    j += 1
            seqs[i] = out
            for p in zip(out, out[1:], strict=False):
                pair_counts[p] += counts[i]
                where.setdefault(p, set()).add(i)
        where.pop(pair, None)
    return merges


def _corpus_lines() -> list[str]:
    return [line for line in _CORPUS.split("\n") if line] + ["\n\n", " \n", "\n"]


@functools.lru_cache(maxsize=1)
def _llm_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    from tokenizers import Regex, pre_tokenizers

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    # Segments between special tokens, as the tokenizer sees them (added tokens are split off first).
    segments = re.split("|".join(re.escape(t) for t in LLM_SPECIAL_TOKENS), _CORPUS)
    words: Counter = Counter()
    for segment in segments:
        for piece, _ in pre.pre_tokenize_str(segment):
            words[tuple(piece)] += 1
    merges = _learn_bpe(words, _LLM_MERGES)
    vocab: dict[str, int] = {}
    for ch in _bytes_to_unicode().values():
        vocab[ch] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    return tuple(vocab.items()), tuple(merges)


@functools.lru_cache(maxsize=1)
def _clip_vocab_and_merges() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    from tokenizers import Regex, normalizers, pre_tokenizers

    norm = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "), normalizers.Lowercase()])
    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    words: Counter = Counter()
    for line in _corpus_lines():
        for piece, _ in pre.pre_tokenize_str(norm.normalize_str(line)):
            if piece in (CLIP_BOS, CLIP_EOS):
                continue
            words[tuple(piece[:-1]) + (piece[-1] + "</w>",)] += 1
    merges = _learn_bpe(words, _CLIP_MERGES)
    byte_syms = list(_bytes_to_unicode().values())
    vocab: dict[str, int] = {}
    for sym in byte_syms + [s + "</w>" for s in byte_syms]:
        vocab[sym] = len(vocab)
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    vocab[CLIP_BOS] = len(vocab)
    vocab[CLIP_EOS] = len(vocab)
    return tuple(vocab.items()), tuple(merges)


def build_llm_tokenizer():
    """The tiny Llama-3-style tokenizer as a ``PreTrainedTokenizerFast`` (right padding)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab, merges = _llm_vocab_and_merges()
    vocab = dict(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=list(merges), dropout=None, fuse_unk=False, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_LLAMA3_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in LLM_SPECIAL_TOKENS])
    bos_id = tok.token_to_id(LLM_BOS)
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(
            single=f"{LLM_BOS}:0 $A:0",
            pair=f"{LLM_BOS}:0 $A:0 {LLM_BOS}:1 $B:1",
            special_tokens=[(LLM_BOS, bos_id)],
        ),
    ])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=LLM_BOS,
        eos_token=LLM_EOS,
        pad_token=LLM_PAD,
        padding_side="right",
        truncation_side="right",
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],
    )


def _write_clip_vocab_files(folder: str) -> None:
    """CLIP's ``vocab.json`` + ``merges.txt`` (what slow and fast CLIPTokenizer both read)."""
    vocab, merges = _clip_vocab_and_merges()
    with open(os.path.join(folder, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump(dict(vocab), f, ensure_ascii=False)
    with open(os.path.join(folder, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)


def build_clip_tokenizer():
    """The tiny CLIP tokenizer, loaded by transformers' ``CLIPTokenizer`` from CLIP-format files."""
    from transformers import CLIPTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        _write_clip_vocab_files(tmp)
        tok = CLIPTokenizer.from_pretrained(tmp, model_max_length=CLIP_MAX_POSITIONS, local_files_only=True)
    tok.padding_side = "right"
    for key in ("is_local", "local_files_only", "name_or_path"):  # loading details, not tokenizer config
        tok.init_kwargs.pop(key, None)
    return tok


def build_tiny_tokenizers():
    """``(llm_tokenizer, clip_tokenizer)``; identical on every call and machine."""
    return build_llm_tokenizer(), build_clip_tokenizer()


def build_tiny_text_encoders(seed: int = 0, llm_tokenizer=None, clip_tokenizer=None):
    """``(LlamaModel, CLIPTextModel)`` at toy width, float32, eval mode, weights from ``seed``.

    The global torch RNG is left as it was.
    """
    from transformers import CLIPTextConfig, CLIPTextModel, LlamaConfig, LlamaModel

    if llm_tokenizer is None or clip_tokenizer is None:
        llm_tokenizer, clip_tokenizer = build_tiny_tokenizers()
    llm_config = LlamaConfig(
        vocab_size=len(llm_tokenizer),
        hidden_size=TINY_LLM_HIDDEN,
        intermediate_size=2 * TINY_LLM_HIDDEN,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
        rms_norm_eps=1e-5,
        rope_theta=500000.0,
        initializer_range=0.2,
        bos_token_id=llm_tokenizer.bos_token_id,
        eos_token_id=llm_tokenizer.eos_token_id,
        pad_token_id=llm_tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    clip_config = CLIPTextConfig(
        vocab_size=len(clip_tokenizer),
        hidden_size=TINY_CLIP_HIDDEN,
        intermediate_size=2 * TINY_CLIP_HIDDEN,
        projection_dim=TINY_CLIP_HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        max_position_embeddings=CLIP_MAX_POSITIONS,
        hidden_act="quick_gelu",
        initializer_range=0.2,
        initializer_factor=1.0,
        bos_token_id=clip_tokenizer.bos_token_id,
        eos_token_id=clip_tokenizer.eos_token_id,
        pad_token_id=clip_tokenizer.pad_token_id,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        llm = LlamaModel(llm_config)
        torch.manual_seed(seed + 1)
        clip = CLIPTextModel(clip_config)
    return llm.float().eval(), clip.float().eval()


def write_text_components(folder: str | os.PathLike, seed: int = 0) -> None:
    """Save ``text_encoder/``, ``tokenizer/``, ``text_encoder_2/``, ``tokenizer_2/`` (diffusers layout,
    safetensors) under ``folder``.

    diffusers' ``model_index.json`` entries for them: ``"text_encoder": ["transformers", "LlamaModel"]``,
    ``"tokenizer": ["transformers", "PreTrainedTokenizerFast"]``, ``"text_encoder_2": ["transformers",
    "CLIPTextModel"]``, ``"tokenizer_2": ["transformers", "CLIPTokenizer"]`` (see :data:`MODEL_INDEX_ENTRIES`).
    """
    folder = os.fspath(folder)
    llm_tok, clip_tok = build_tiny_tokenizers()
    llm, clip = build_tiny_text_encoders(seed, llm_tok, clip_tok)
    from vidtrt.models.text_encoders import quiet_transformers

    with quiet_transformers():
        llm.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
        clip.save_pretrained(os.path.join(folder, "text_encoder_2"), safe_serialization=True)
    llm_tok.save_pretrained(os.path.join(folder, "tokenizer"))
    clip_tok.save_pretrained(os.path.join(folder, "tokenizer_2"))
    _write_clip_vocab_files(os.path.join(folder, "tokenizer_2"))  # as in openai/clip-vit-large-patch14
    # transformers 5 records "TokenizersBackend", a name transformers 4 does not know; Llama 3
    # checkpoints say "PreTrainedTokenizerFast", which both load from tokenizer.json as is.
    config_path = os.path.join(folder, "tokenizer", "tokenizer_config.json")
    with open(config_path, encoding="utf-8") as f:
        tok_config = json.load(f)
    tok_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(tok_config, f, indent=2, ensure_ascii=False)
        f.write("\n")


# The model_index.json entries (library, class) diffusers needs to load these folders.
MODEL_INDEX_ENTRIES = {
    "text_encoder": ["transformers", "LlamaModel"],
    "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
    "text_encoder_2": ["transformers", "CLIPTextModel"],
    "tokenizer_2": ["transformers", "CLIPTokenizer"],
}


def tiny_text_encoder(config=None, seed: int = 0):
    """The embedded tiny text encoders as a :class:`~vidtrt.models.text_encoders.HunyuanTextEncoder` (no files, no
    download); ``config``: a TextEncoderConfig (default: the tiny preset's)."""
    from vidtrt.config.model_config import tiny_config
    from vidtrt.models.text_encoders import HunyuanTextEncoder

    llm_tok, clip_tok = build_tiny_tokenizers()
    llm, clip = build_tiny_text_encoders(seed, llm_tok, clip_tok)
    return HunyuanTextEncoder(llm, llm_tok, clip, clip_tok, config or tiny_config().text)
