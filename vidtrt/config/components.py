"""The three component callables the orchestrator drives, and the data passed between them.

Both transports implement these: in process they wrap engines; inside Triton they are BLS
requests to the component models. Tensors are torch tensors on the CPU side of the boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch


@dataclass
class TextEmbeddings:
    """Conditioning for one batch of prompts.

    prompt_embeds: float32 [B, L, D_llm], LLM hidden states after the template crop.
    attention_mask: int64 [B, L], 1 for tokens, 0 for padding; right-padded (a prefix of ones).
    pooled: float32 [B, D_clip], CLIP pooled output.
    """

    prompt_embeds: torch.Tensor
    attention_mask: torch.Tensor
    pooled: torch.Tensor


class EncodeText(Protocol):
    def __call__(self, prompts: list[str], prompt_policy: str = "truncate") -> TextEmbeddings: ...


class Denoiser(Protocol):
    def __call__(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text: TextEmbeddings,
        guidance: torch.Tensor,
    ) -> torch.Tensor:
        """Velocity float32 [B, C, T', H', W'] for latents [B, C, T', H', W'], timestep [B] (1000 * sigma),
        guidance [B] (embedded scale * 1000)."""
        ...


class DecodeTile(Protocol):
    def __call__(self, latents: torch.Tensor) -> torch.Tensor:
        """Video float32 [1, 3, F, H, W] in about [-1, 1] for latents [1, C, T', h, w] already divided by
        the VAE scaling factor (F = 4 (T' - 1) + 1, H = 8 h, W = 8 w)."""
        ...


class DitProbe(Protocol):
    def __call__(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        prev_latents: torch.Tensor,
        prev_timestep: torch.Tensor,
        pooled: torch.Tensor,
        guidance: torch.Tensor,
    ) -> torch.Tensor:
        """Relative L1 change float32 [B] of the DiT's first-block modulated input from (prev_latents,
        prev_timestep) to (latents, timestep) (:mod:`vidtrt.models.dit_probe`; spec ``dit_probe``). CogVideoX:
        of its timestep embedding, from the timesteps alone (:mod:`vidtrt.models.cogvideox_probe`; the other
        arguments may be None)."""
        ...


@dataclass
class Components:
    """The orchestrator's callables. ``probe``: the DiT probe TeaCache decides from (None: not served, so
    ``cache_policy teacache`` is refused per request)."""

    encode_text: EncodeText
    dit: Denoiser
    decode_tile: DecodeTile
    probe: DitProbe | None = None
