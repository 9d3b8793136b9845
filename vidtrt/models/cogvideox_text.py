"""CogVideoX's text encoder: T5 (transformers ``T5EncoderModel``, T5-XXL in the released models).

As diffusers' ``CogVideoXPipeline._get_t5_prompt_embeds``: prompts are tokenized with the end token,
padded / truncated to ``max_sequence_length`` (226) tokens, and encoded *without* an attention mask (the
padding tokens are encoded and attended to, by T5 and by the DiT, exactly as in the reference).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from vidtrt.config.cogvideox_config import CogVideoXTextConfig
from vidtrt.config.components import TextEmbeddings
from vidtrt.config.request import PROMPT_POLICIES
from vidtrt.errors import CheckpointError, InvalidRequestError, one_line
from vidtrt.models.text_encoders import _load_model, _model_dir, _shown, _transformers_dtype_kwarg, quiet_transformers

logger = logging.getLogger(__name__)


def load_t5_tokenizer(folder: Path):
    """The T5 tokenizer of ``folder`` (``tokenizer.json`` or SentencePiece ``spiece.model``)."""
    from transformers import AutoTokenizer

    with quiet_transformers():
        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as e:  # transformers raises many types; report one line
            raise CheckpointError(f"cannot load the T5 tokenizer from {folder}: {one_line(e)}") from e


class T5TextEncoder:
    """Prompts -> :class:`TextEmbeddings` (prompt_embeds float32 [B, L, D_t5], attention_mask int64 [B, L]
    of ones (every token is attended to), pooled float32 [B, 0]); L = ``config.max_sequence_length``."""

    def __init__(self, model, tokenizer, config: CogVideoXTextConfig):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config

    @classmethod
    def from_pretrained(cls, folder: str | os.PathLike, config: CogVideoXTextConfig, device="cpu",
                        torch_dtype: torch.dtype = torch.float32) -> T5TextEncoder:
        """diffusers layout: ``text_encoder/`` (T5EncoderModel) and ``tokenizer/``."""
        from transformers import T5EncoderModel

        root = Path(folder)
        model_dir = _model_dir(root, "text_encoder", "the T5 text encoder")
        tok_dir = root / "tokenizer"
        if not tok_dir.is_dir():
            raise CheckpointError(f"the T5 tokenizer folder {tok_dir} is missing")
        tokenizer = load_t5_tokenizer(tok_dir)
        dtype_kw = {_transformers_dtype_kwarg(): torch_dtype}
        model = _load_model(T5EncoderModel, model_dir, "the T5 text encoder", **dtype_kw)
        return cls(model.to(device), tokenizer, config)

    @property
    def hidden_size(self) -> int:
        return int(self.model.config.d_model)

    def check_prompts(self, prompts: list[str], prompt_policy: str = "truncate") -> None:
        """InvalidRequestError (policy 'error') or a warning ('truncate') for prompts over the token limit."""
        if prompt_policy not in PROMPT_POLICIES:
            raise InvalidRequestError("prompt_policy", prompt_policy, f"one of {list(PROMPT_POLICIES)}")
        limit = self.config.max_sequence_length
        ids = self.tokenizer(list(prompts), add_special_tokens=True, truncation=False, verbose=False)["input_ids"]
        for prompt, seq in zip(prompts, ids, strict=True):
            if len(seq) > limit:
                accepted = (f"at most {limit - 1} T5 tokens (max_sequence_length {limit} minus the end token); "
                            f"this prompt has {len(seq) - 1}")
                if prompt_policy == "error":
                    raise InvalidRequestError("prompt", prompt, accepted)
                logger.warning("prompt %s truncated for the T5 text encoder: %s", _shown(prompt), accepted)

    @torch.inference_mode()
    def __call__(self, prompts: list[str], prompt_policy: str = "truncate") -> TextEmbeddings:
        if not isinstance(prompts, list) or not prompts:
            raise InvalidRequestError("prompt", prompts, "a non-empty list of prompts")
        self.check_prompts(prompts, prompt_policy)
        limit = self.config.max_sequence_length
        ids = self.tokenizer(prompts, padding="max_length", max_length=limit, truncation=True,
                             add_special_tokens=True, return_tensors="pt").input_ids
        device = next(self.model.parameters()).device
        states = self.model(ids.to(device))[0].to("cpu", torch.float32)
        return TextEmbeddings(prompt_embeds=states, attention_mask=torch.ones(ids.shape, dtype=torch.int64),
                              pooled=torch.zeros(len(prompts), 0, dtype=torch.float32))
