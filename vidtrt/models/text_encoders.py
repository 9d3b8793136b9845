"""HunyuanVideo's prompt encoding: a Llama-3 LLM used as an encoder plus CLIP-L's pooled output.

Reproduces diffusers' ``HunyuanVideoPipeline._get_llama_prompt_embeds`` and
``_get_clip_prompt_embeds`` exactly (same tokenizer calls, same tensors):

- LLM: ``template.format(prompt)``, tokenized right-padded to ``max_sequence_length + crop_start``
  tokens with truncation; the LLM runs with that attention mask and the hidden states of
  ``hidden_states[-(num_hidden_layers_to_skip + 1)]`` (layer output, no final norm) are taken;
  the first ``crop_start`` positions (the template before the prompt) are cropped from both the
  embeddings and the mask -> ``[B, max_sequence_length, D]``.
- CLIP: the bare prompt, ``clip_max_length`` tokens (padding to max length, truncation), no
  attention mask (as diffusers), ``pooler_output`` -> ``[B, D_clip]``.

``crop_start=None`` in the config means: the number of tokens, special tokens included (Llama 3's
``<|begin_of_text|>``), that this tokenizer gives the template text before ``{}``. For the released
template and the Llama 3 tokenizer that is 95, the value the config carries.
"""

from __future__ import annotations

import contextlib
import logging
import os
import string
from pathlib import Path

import torch

from vidtrt.config.components import TextEmbeddings
from vidtrt.config.model_config import TextEncoderConfig
from vidtrt.config.request import PROMPT_POLICIES
from vidtrt.errors import CheckpointError, ConfigError, InvalidRequestError, one_line

logger = logging.getLogger(__name__)

_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json")


def template_prefix(template: str) -> str:
    """The template's literal text before the prompt placeholder (``{{``/``}}`` unescaped)."""
    prefix = ""
    for literal, field, _, _ in string.Formatter().parse(template):
        prefix += literal
        if field is not None:
            return prefix
    raise ConfigError("prompt_template must contain one '{}' placeholder for the prompt")


def count_template_prefix_tokens(tokenizer, template: str) -> int:
    """Tokens (special tokens included) of the template before ``{}``: the ``crop_start`` to use."""
    return len(tokenizer(template_prefix(template), add_special_tokens=True)["input_ids"])


def _transformers_dtype_kwarg() -> str:
    import transformers

    major = int(transformers.__version__.split(".")[0])
    return "dtype" if major >= 5 else "torch_dtype"


class HunyuanTextEncoder:
    """Prompts -> :class:`TextEmbeddings` (implements ``EncodeText``).

    ``llm`` is any transformers model that returns ``hidden_states`` (``LlamaModel``, or what
    ``AutoModel`` loads from a Llama checkpoint), ``clip`` a ``CLIPTextModel``. Both tokenizers are
    switched to right padding. Outputs are float32 CPU tensors whatever the models' dtype/device.
    """

    def __init__(self, llm, llm_tokenizer, clip, clip_tokenizer, config: TextEncoderConfig):
        self.config = config.validate()
        self.llm = llm.eval()
        self.clip = clip.eval()
        self.llm_tokenizer = llm_tokenizer
        self.clip_tokenizer = clip_tokenizer
        llm_tokenizer.padding_side = "right"
        clip_tokenizer.padding_side = "right"
        if llm_tokenizer.pad_token is None:
            raise ConfigError("the LLM tokenizer has no pad token; padding to max_length needs one")
        n_layers = getattr(llm.config, "num_hidden_layers", None)
        if n_layers is not None and config.num_hidden_layers_to_skip >= n_layers:
            raise ConfigError(
                f"num_hidden_layers_to_skip={config.num_hidden_layers_to_skip} but the LLM has {n_layers} layers"
            )
        clip_positions = getattr(clip.config, "max_position_embeddings", None)
        if clip_positions is not None and config.clip_max_length > clip_positions:
            raise ConfigError(
                f"clip_max_length={config.clip_max_length} exceeds the CLIP model's "
                f"max_position_embeddings={clip_positions}"
            )
        if config.crop_start is not None:
            self.crop_start = config.crop_start
        else:
            self.crop_start = count_template_prefix_tokens(llm_tokenizer, config.prompt_template)
            self._check_prefix_is_stable()
        # Tokens the template adds after the prompt (<|eot_id|>): counted against max_sequence_length.
        empty = len(llm_tokenizer(config.prompt_template.format(""), add_special_tokens=True)["input_ids"])
        self._template_suffix_tokens = max(empty - self.crop_start, 0)

    def _check_prefix_is_stable(self) -> None:
        prefix_ids = self.llm_tokenizer(template_prefix(self.config.prompt_template))["input_ids"]
        full_ids = self.llm_tokenizer(self.config.prompt_template.format("A cat"))["input_ids"]
        if full_ids[: len(prefix_ids)] != prefix_ids:
            logger.warning(
                "the tokens of the prompt template's prefix change when a prompt follows it; "
                "crop_start=%d may not align with the prompt start: set crop_start in the config",
                len(prefix_ids),
            )

    @property
    def device(self) -> torch.device:
        return next(self.llm.parameters()).device

    @property
    def llm_max_length(self) -> int:
        """Tokens fed to the LLM per prompt (template prefix included)."""
        return self.config.max_sequence_length + self.crop_start

    # ------------------------------------------------------------------ loading

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        config: TextEncoderConfig,
        device: str | torch.device = "cpu",
        torch_dtype: torch.dtype = torch.float32,
        clip_dtype: torch.dtype | None = None,
    ) -> HunyuanTextEncoder:
        """Load from a checkpoint folder, diffusers or official Tencent layout.

        diffusers: ``text_encoder/`` (Llama), ``tokenizer/``, ``text_encoder_2/`` (CLIP text model),
        ``tokenizer_2/``. Tencent: ``text_encoder/`` (llava-llama-3 LLM with its tokenizer inside) and
        ``text_encoder_2/`` (CLIP-L folder with its tokenizer inside). ``torch_dtype`` is the LLM's
        dtype, ``clip_dtype`` CLIP's (default: same).
        """
        root = Path(folder)
        if not root.is_dir():
            raise CheckpointError(f"checkpoint folder {root} does not exist or is not a directory")
        llm_tokenizer, clip_tokenizer, llm_dir, clip_dir = load_tokenizers(root)

        from transformers import AutoModel, CLIPTextModel

        dtype_kw = _transformers_dtype_kwarg()
        llm = _load_model(AutoModel, llm_dir, "the LLM text encoder", **{dtype_kw: torch_dtype})
        clip = _load_model(CLIPTextModel, clip_dir, "the CLIP text encoder", **{dtype_kw: clip_dtype or torch_dtype})
        return cls(llm.to(device), llm_tokenizer, clip.to(device), clip_tokenizer, config)

    # ------------------------------------------------------------------ encoding

    def token_counts(self, prompts: list[str]) -> list[tuple[int, int]]:
        """Untruncated ``(llm_tokens, clip_tokens)`` per prompt, special and template tokens included."""
        formatted = [self.config.prompt_template.format(p) for p in prompts]
        llm_ids = self.llm_tokenizer(formatted, add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        clip_ids = self.clip_tokenizer(list(prompts), truncation=False, verbose=False)["input_ids"]
        return [(len(a), len(b)) for a, b in zip(llm_ids, clip_ids, strict=True)]

    def check_prompts(self, prompts: list[str], prompt_policy: str = "truncate") -> None:
        """Raise :class:`InvalidRequestError` (policy ``"error"``) or log a warning (``"truncate"``)
        for each prompt longer than either text encoder takes."""
        if prompt_policy not in PROMPT_POLICIES:
            raise InvalidRequestError("prompt_policy", prompt_policy, f"one of {list(PROMPT_POLICIES)}")
        llm_limit = self.llm_max_length
        clip_limit = self.config.clip_max_length
        overhead = self.crop_start + self._template_suffix_tokens
        for prompt, (n_llm, n_clip) in zip(prompts, self.token_counts(prompts), strict=True):
            if n_llm > llm_limit:
                accepted = (
                    f"at most {llm_limit - overhead} LLM tokens (max_sequence_length "
                    f"{self.config.max_sequence_length} minus {self._template_suffix_tokens} template tokens "
                    f"after the prompt); this prompt has {n_llm - overhead}"
                )
                if prompt_policy == "error":
                    raise InvalidRequestError("prompt", prompt, accepted)
                formatted = self.config.prompt_template.format(prompt)
                ids = self.llm_tokenizer(formatted, add_special_tokens=True)["input_ids"]
                cut = self.llm_tokenizer.decode(ids[llm_limit: n_llm - self._template_suffix_tokens])
                logger.warning("prompt %s truncated for the LLM text encoder: %s; cut: %s",
                               _shown(prompt), accepted, _shown(cut))
            if n_clip > clip_limit:
                accepted = (
                    f"at most {clip_limit - 2} CLIP tokens (clip_max_length {clip_limit} minus start/end "
                    f"tokens); this prompt has {n_clip - 2}"
                )
                if prompt_policy == "error":
                    raise InvalidRequestError("prompt", prompt, accepted)
                ids = self.clip_tokenizer(prompt, truncation=False, verbose=False)["input_ids"]
                cut = self.clip_tokenizer.decode(ids[clip_limit - 1: -1])
                logger.warning("prompt %s truncated for the CLIP text encoder: %s; cut: %s",
                               _shown(prompt), accepted, _shown(cut))

    @torch.inference_mode()
    def encode_llm(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(prompt_embeds [B, max_sequence_length, D] float32, attention_mask [B, max_sequence_length] int64)``."""
        formatted = [self.config.prompt_template.format(p) for p in prompts]
        inputs = self.llm_tokenizer(
            formatted,
            max_length=self.llm_max_length,
            padding="max_length",
            truncation=True,
            return_tensors="pt",
            return_attention_mask=True,
        )
        device = self.device
        input_ids = inputs["input_ids"].to(device)
        mask = inputs["attention_mask"].to(device)
        hidden = self.llm(input_ids=input_ids, attention_mask=mask, output_hidden_states=True).hidden_states
        embeds = hidden[-(self.config.num_hidden_layers_to_skip + 1)]
        if self.crop_start > 0:
            embeds = embeds[:, self.crop_start :]
            mask = mask[:, self.crop_start :]
        return embeds.float().cpu(), mask.to(torch.int64).cpu()

    @torch.inference_mode()
    def encode_clip(self, prompts: list[str]) -> torch.Tensor:
        """CLIP ``pooler_output`` float32 ``[B, D_clip]``."""
        inputs = self.clip_tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.config.clip_max_length,
            truncation=True,
            return_tensors="pt",
        )
        clip_device = next(self.clip.parameters()).device
        pooled = self.clip(inputs["input_ids"].to(clip_device), output_hidden_states=False).pooler_output
        return pooled.float().cpu()

    def __call__(self, prompts: list[str], prompt_policy: str = "truncate") -> TextEmbeddings:
        if isinstance(prompts, str):
            prompts = [prompts]
        prompts = list(prompts)
        if not prompts:
            raise InvalidRequestError("prompt", prompts, "a non-empty list of prompts")
        for p in prompts:
            if not isinstance(p, str):
                raise InvalidRequestError("prompt", p, "a string")
        self.check_prompts(prompts, prompt_policy)
        embeds, mask = self.encode_llm(prompts)
        pooled = self.encode_clip(prompts)
        return TextEmbeddings(prompt_embeds=embeds, attention_mask=mask, pooled=pooled)


def _shown(text: str, limit: int = 60) -> str:
    """``text`` quoted for a log line, its middle elided past ``limit`` characters."""
    text = " ".join(text.split())
    if len(text) > limit:
        text = text[: limit // 2 - 2] + " ... " + text[-(limit // 2 - 3):]
    return repr(text)


def load_tokenizers(root: Path):
    """The LLM and CLIP tokenizers of a checkpoint folder (diffusers or official layout), with the folders
    of the two text models: ``(llm_tokenizer, clip_tokenizer, llm_dir, clip_dir)``."""
    from transformers import AutoTokenizer, CLIPTokenizer, PreTrainedTokenizerFast

    llm_dir = _model_dir(root, "text_encoder", "the LLM text encoder")
    clip_dir = _model_dir(root, "text_encoder_2", "the CLIP text encoder")
    llm_tok_dir = _tokenizer_dir(root, "tokenizer", llm_dir, "the LLM tokenizer")
    clip_tok_dir = _tokenizer_dir(root, "tokenizer_2", clip_dir, "the CLIP tokenizer")
    with quiet_transformers():
        try:
            # tokenizer.json is authoritative: load it as is (transformers 5's LlamaTokenizerFast would
            # rebuild a SentencePiece-style pipeline and mangle Llama 3's byte-level BPE).
            if (llm_tok_dir / "tokenizer.json").is_file():
                llm_tokenizer = PreTrainedTokenizerFast.from_pretrained(llm_tok_dir, local_files_only=True)
            else:
                llm_tokenizer = AutoTokenizer.from_pretrained(llm_tok_dir, local_files_only=True)
        except Exception as e:  # transformers raises many types; report one line
            raise CheckpointError(f"cannot load the LLM tokenizer from {llm_tok_dir}: {one_line(e)}") from e
        try:
            clip_tokenizer = CLIPTokenizer.from_pretrained(clip_tok_dir, local_files_only=True)
        except Exception as e:
            raise CheckpointError(f"cannot load the CLIP tokenizer from {clip_tok_dir}: {one_line(e)}") from e
    return llm_tokenizer, clip_tokenizer, llm_dir, clip_dir


@contextlib.contextmanager
def quiet_transformers():
    """No transformers progress bars / info logs while loading or saving (restored afterwards)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    level = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)
        if bars:
            hf_logging.enable_progress_bar()


def _load_model(model_cls, path: Path, what: str, **kwargs):
    """``model_cls.from_pretrained`` that refuses to leave weights randomly initialised."""
    try:
        with quiet_transformers():
            model, info = model_cls.from_pretrained(path, local_files_only=True, output_loading_info=True,
                                                    **kwargs)
    except Exception as e:  # transformers raises many types; report one line
        raise CheckpointError(f"cannot load {what} from {path}: {one_line(e)}") from e
    missing = sorted(info.get("missing_keys") or ())
    if missing:
        shown = ", ".join(missing[:3]) + (f" and {len(missing) - 3} more" if len(missing) > 3 else "")
        raise CheckpointError(f"{what} in {path} lacks weights: {shown}")
    return model


def _has_weights(path: Path) -> bool:
    return any(f.name.endswith(_WEIGHT_SUFFIXES) for f in path.iterdir() if f.is_file())


def _model_dir(root: Path, name: str, what: str) -> Path:
    path = root / name
    if not path.is_dir():
        raise CheckpointError(f"{what} folder {path} is missing (expected {name}/ in the checkpoint folder {root})")
    if not (path / "config.json").is_file():
        raise CheckpointError(f"{what}: {path / 'config.json'} is missing")
    if not _has_weights(path):
        raise CheckpointError(f"{what}: no weights (*.safetensors or *.bin) in {path}")
    return path


def _tokenizer_dir(root: Path, name: str, model_dir: Path, what: str) -> Path:
    """diffusers layout ``root/name``, else the model's own folder (Tencent layout)."""
    markers = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
    for path in (root / name, model_dir):
        if path.is_dir() and any((path / m).is_file() for m in markers):
            return path
    raise CheckpointError(
        f"{what} is missing: neither {root / name} nor {model_dir} has tokenizer files "
        f"({', '.join(markers)})"
    )
