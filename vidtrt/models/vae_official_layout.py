"""The official Tencent VAE checkpoint (``hunyuan-video-t2v-720p/vae/pytorch_model.pt``) <-> diffusers.

The official ``AutoencoderKLCausal3D`` (hyvideo/vae) is built from the same module tree as diffusers'
``AutoencoderKLHunyuanVideo``: ``encoder``/``decoder`` with ``conv_in``, ``down_blocks``/``up_blocks``
(``resnets.N.{norm1,conv1.conv,norm2,conv2.conv,conv_shortcut.conv}``, ``downsamplers.0.conv.conv`` /
``upsamplers.0.conv.conv``), ``mid_block`` (``resnets``, ``attentions.0.{group_norm,to_q,to_k,to_v,
to_out.0}``), ``conv_norm_out``, ``conv_out.conv``, plus ``quant_conv``/``post_quant_conv``. diffusers'
conversion script (scripts/convert_hunyuan_video_to_diffusers.py) accordingly has an empty VAE rename
table and loads the official tensors strictly. The parameter names are therefore identical; what
differs is the container:

* the ``.pt`` file may wrap the tensors in ``{"state_dict": ...}`` (also ``"model"``/``"module"``,
  which diffusers' script unwraps);
* training checkpoints prefix the VAE's keys with ``vae.`` next to other modules' keys; the official
  loader (hyvideo/vae ``load_vae``) keeps only the ``vae.``-prefixed keys and strips the prefix.

``official_vae_to_diffusers`` undoes both; ``diffusers_vae_to_official`` writes the bare layout the
released file uses (the same names).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from vidtrt.errors import CheckpointError

_WRAPPERS = ("state_dict", "model", "module")
_PREFIX = "vae."


def _unwrap(sd: Mapping[str, Any]) -> Mapping[str, Any]:
    for _ in range(3):  # nested wrappers, e.g. {"module": {"state_dict": ...}}
        for key in _WRAPPERS:
            inner = sd.get(key) if isinstance(sd, Mapping) else None
            if isinstance(inner, Mapping):
                sd = inner
                break
        else:
            break
    return sd


def official_vae_to_diffusers(sd: Mapping[str, Any]) -> dict[str, Any]:
    """Official VAE checkpoint contents (as ``torch.load`` returns them) -> diffusers-layout state dict."""
    sd = _unwrap(sd)
    if not isinstance(sd, Mapping) or not sd:
        raise CheckpointError("official VAE checkpoint holds no tensors; accepted: a state dict of the VAE")
    if any(k.startswith(_PREFIX) for k in sd):
        sd = {k[len(_PREFIX) :]: v for k, v in sd.items() if k.startswith(_PREFIX)}
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise CheckpointError(f"official VAE checkpoint key {k!r} is not a string; accepted: a state dict")
        out[k] = v
    return out


def diffusers_vae_to_official(sd: Mapping[str, Any]) -> dict[str, Any]:
    """diffusers-layout VAE state dict -> the official ``pytorch_model.pt`` layout (bare keys, same names)."""
    return dict(sd)
