"""The component models of a Triton repository: their tensors, and both sides of each call.

Three Triton models carry the three :class:`~vidtrt.config.components.Components` callables:

=================  =========================================  ==============================================
key                tensors (``max_batch_size: 0``, batch kept)  spec
=================  =========================================  ==============================================
``text_encoder``   ``prompts`` BYTES [B], ``prompt_policy``      :func:`text_encoder_spec` (strings in, so not
                   BYTES [1] -> ``prompt_embeds`` FP32 [B,L,D],  an exported ONNX component)
                   ``attention_mask`` INT64 [B,L],
                   ``pooled`` FP32 [B,Dc]
``dit``            :func:`vidtrt.config.specs.dit_spec`                 hidden_states, timestep, encoder_hidden_states,
                                                                 encoder_attention_mask, pooled_projections,
                                                                 guidance -> velocity
``vae_decoder``    :func:`vidtrt.config.specs.vae_decoder_spec`         latents [1,C,t,h,w] -> video [1,3,F,H,W]
                   (``tile=True``: one tile per call)
``dit_probe``      :func:`vidtrt.config.specs.dit_probe_spec`           hidden_states, timestep, pooled_projections,
                   (optional: TeaCache's signal; CogVideoX:      guidance, prev_hidden_states, prev_timestep -> rel_l1
                   ``cogvideox_specs.dit_probe_spec``)           (CogVideoX: timestep, prev_timestep -> rel_l1)
=================  =========================================  ==============================================

Both sides of a call live here so they cannot drift: :func:`remote_components` turns an ``infer``
function (BLS requests inside Triton, or anything else) into Components; :class:`ComponentServer`
turns a component callable into ``feeds -> outputs`` for the component's ``model.py``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from vidtrt.config.components import Components, TextEmbeddings
from vidtrt.config.model_config import ModelConfig
from vidtrt.config.sparse_attention import SparseStep, current_sparse_step, sparse_step
from vidtrt.config.specs import (
    TRITON_DTYPES,
    AxisRange,
    ComponentSpec,
    TensorSpec,
    dit_probe_spec,
    dit_spec,
    vae_decoder_spec,
)
from vidtrt.errors import EngineError, VidtrtError

KEYS = ("text_encoder", "dit", "vae_decoder", "dit_probe")
STRING = "bytes"  # dtype name of string tensors in these specs

# infer(model_name, inputs by name, output names) -> outputs by name (numpy, owned by the caller)
InferFn = Callable[[str, dict[str, np.ndarray], list[str]], dict[str, np.ndarray]]


class ComponentFailure(VidtrtError):
    """A component model failed (its error message is kept)."""


def text_encoder_spec(config: ModelConfig) -> ComponentSpec:
    """Prompts -> DiT conditioning (tokenizers inside the model): strings in, TextEmbeddings out."""
    tc = config.transformer
    n = config.text.max_sequence_length
    return ComponentSpec(
        name="text_encoder",
        inputs=(
            TensorSpec("prompts", STRING, ("batch",), "UTF-8 prompts"),
            TensorSpec("prompt_policy", STRING, (1,), "'truncate' (default) or 'error'"),
        ),
        outputs=(
            TensorSpec("prompt_embeds", "float32", ("batch", "text_length", tc.text_embed_dim),
                       "LLM hidden states after the template crop"),
            TensorSpec("attention_mask", "int64", ("batch", "text_length"), "1 = token, right-padded"),
            TensorSpec("pooled", "float32", ("batch", tc.pooled_projection_dim), "CLIP pooled output"),
        ),
        axes={"batch": AxisRange(1, 1, 2), "text_length": AxisRange(1, n, n)},
        doc="HunyuanVideo text encoders (Llama hidden states + CLIP pooled), tokenizers included",
    )


OPTIONAL_INPUTS = {"text_encoder": ("prompt_policy",), "dit": ("sparse_attention",)}
# The DiT model's extra input (not part of the exported DiT): this step's sliding-tile windows, JSON
# (vidtrt.config.sparse_attention.SparseStep); absent = dense. Used by the STA attention backends only.
SPARSE_INPUT = TensorSpec("sparse_attention", STRING, (1,), "sliding-tile step (JSON), absent = dense")


def specs_for_triton(config: ModelConfig, sparse_input: bool = True) -> dict[str, ComponentSpec]:
    """The spec of each component model, by key (a CogVideoX config: :mod:`vidtrt.config.cogvideox_specs`).
    ``sparse_input``: the HunyuanVideo DiT takes the optional ``sparse_attention`` input (Python-backend DiT
    models; a TensorRT plan does not)."""
    if getattr(config, "family", None) == "cogvideox":
        from vidtrt.config import cogvideox_specs

        return cogvideox_specs.specs_for_triton(config)
    dit = dit_spec(config)
    return {
        "text_encoder": text_encoder_spec(config),
        "dit": dataclasses.replace(dit, inputs=(*dit.inputs, SPARSE_INPUT)) if sparse_input else dit,
        "vae_decoder": vae_decoder_spec(config, tile=True),
        "dit_probe": dit_probe_spec(config),
    }


def triton_type(dtype: str) -> str:
    return "TYPE_STRING" if dtype == STRING else TRITON_DTYPES[dtype]


def spec_io_pbtxt(key: str, spec: ComponentSpec) -> str:
    """``input [...]`` / ``output [...]`` stanzas of a component model (``max_batch_size: 0``: every axis
    is in ``dims``, dynamic ones as -1)."""
    optional = OPTIONAL_INPUTS.get(key, ())

    def row(t: TensorSpec, is_input: bool) -> str:
        dims = ", ".join(str(d) for d in spec.triton_dims(t, batch_axis=None))
        opt = " optional: true" if is_input and t.name in optional else ""
        return f'  {{ name: "{t.name}" data_type: {triton_type(t.dtype)} dims: [ {dims} ]{opt} }}'

    ins = ",\n".join(row(t, True) for t in spec.inputs)
    outs = ",\n".join(row(t, False) for t in spec.outputs)
    return f"input [\n{ins}\n]\noutput [\n{outs}\n]\n"


# ------------------------------------------------------------------------------------------ caller side
def _np(x: torch.Tensor, dtype: np.dtype) -> np.ndarray:
    return np.ascontiguousarray(x.detach().to("cpu").numpy(), dtype=dtype)


def remote_components(infer: InferFn, model_names: Mapping[str, str], config: ModelConfig,
                      dit_sparse: bool = False) -> Components:
    """Components whose calls go through ``infer`` to the component models named in ``model_names``
    (keys ``text_encoder``, ``dit``, ``vae_decoder``, and ``dit_probe`` when one is served: Components.probe,
    else None). Tensors cross as float32 / int64 numpy arrays, the
    dtypes the in-process engines receive, so the same request gives the same bits either way.
    ``dit_sparse``: the DiT model runs a sliding-tile backend, so each sparse step's ``sparse_attention``
    input is sent (other DiT models, TensorRT plans included, never get it)."""
    specs = specs_for_triton(config)
    dit_inputs = specs["dit"].input_names
    text_outputs = specs["text_encoder"].output_names

    def encode_text(prompts: list[str], prompt_policy: str = "truncate") -> TextEmbeddings:
        if isinstance(prompts, str):
            prompts = [prompts]
        feeds = {
            "prompts": np.array([p.encode("utf-8") for p in prompts], dtype=np.object_),
            "prompt_policy": np.array([prompt_policy.encode("utf-8")], dtype=np.object_),
        }
        out = infer(model_names["text_encoder"], feeds, text_outputs)
        embeds = torch.from_numpy(out["prompt_embeds"])
        pooled = out.get("pooled")  # CogVideoX has none
        return TextEmbeddings(
            prompt_embeds=embeds,
            attention_mask=torch.from_numpy(out["attention_mask"]),
            pooled=torch.from_numpy(pooled) if pooled is not None else torch.zeros(embeds.shape[0], 0),
        )

    def dit(latents: torch.Tensor, timestep: torch.Tensor, text: TextEmbeddings, guidance: torch.Tensor):
        feeds = {
            "hidden_states": _np(latents, np.float32),
            "timestep": _np(timestep.reshape(-1), np.float32),
            "encoder_hidden_states": _np(text.prompt_embeds, np.float32),
            "encoder_attention_mask": _np(text.attention_mask, np.int64),
            "pooled_projections": _np(text.pooled, np.float32),
        }
        if "guidance" in dit_inputs:
            feeds["guidance"] = _np(guidance.reshape(-1), np.float32)
        step = current_sparse_step() if dit_sparse else None
        if step is not None:
            feeds["sparse_attention"] = np.array([step.to_json().encode("utf-8")], dtype=np.object_)
        feeds = {k: v for k, v in feeds.items() if k in dit_inputs}  # CogVideoX: no mask, no pooled
        return torch.from_numpy(infer(model_names["dit"], feeds, ["velocity"])["velocity"])

    def decode_tile(latents: torch.Tensor) -> torch.Tensor:
        out = infer(model_names["vae_decoder"], {"latents": _np(latents, np.float32)}, ["video"])
        return torch.from_numpy(out["video"])

    probe = None
    if model_names.get("dit_probe") and "dit_probe" in specs:
        probe_inputs = specs["dit_probe"].input_names

        def probe(latents, timestep, prev_latents, prev_timestep, pooled, guidance):
            values = {"hidden_states": latents, "timestep": timestep.reshape(-1), "pooled_projections": pooled,
                      "guidance": None if guidance is None else guidance.reshape(-1),
                      "prev_hidden_states": prev_latents, "prev_timestep": prev_timestep.reshape(-1)}
            feeds = {k: _np(values[k], np.float32) for k in probe_inputs}  # CogVideoX: the two timesteps only
            return torch.from_numpy(infer(model_names["dit_probe"], feeds, ["rel_l1"])["rel_l1"])

    return Components(encode_text=encode_text, dit=dit, decode_tile=decode_tile, probe=probe)


# ------------------------------------------------------------------------------------------ model side
def _writable(a: np.ndarray) -> np.ndarray:
    """torch.from_numpy needs a writable array; Triton's input views may be read-only."""
    return a if a.flags.writeable and a.flags.c_contiguous else np.array(a, order="C")


def _decode_strings(a: np.ndarray, name: str) -> list[str]:
    out = []
    for v in a.reshape(-1).tolist():
        try:
            out.append(v.decode("utf-8") if isinstance(v, bytes) else str(v))
        except UnicodeDecodeError:
            raise EngineError(f"input {name!r}: not UTF-8 text") from None
    return out


@dataclass
class ComponentServer:
    """One component callable behind ``run(feeds) -> outputs`` (numpy by tensor name), for a model.py.

    ``fail_on_guidance``: test-only fault injection for the DiT: raise when the request's embedded
    guidance scale equals it, answer NaN (an fp16 overflow's look) when it equals it + 1 (the guidance
    input is scale * 1000).
    """

    key: str
    fn: Callable
    fail_on_guidance: float | None = None

    def _injected(self, guidance: torch.Tensor, offset: int) -> bool:
        """Test-only: does the DiT input carry guidance scale ``fail_on_guidance + offset`` (input = scale * 1000)?"""
        if self.fail_on_guidance is None:
            return False
        target = torch.tensor((self.fail_on_guidance + offset) * 1000.0, dtype=guidance.dtype)
        return bool(torch.any(guidance == target))

    @torch.inference_mode()
    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.key == "text_encoder":
            prompts = _decode_strings(feeds["prompts"], "prompts")
            policy_arr = feeds.get("prompt_policy")
            policy = _decode_strings(policy_arr, "prompt_policy")[0] if policy_arr is not None else "truncate"
            emb = self.fn(prompts, policy)
            out = {"prompt_embeds": _np(emb.prompt_embeds, np.float32),
                   "attention_mask": _np(emb.attention_mask, np.int64)}
            if emb.pooled.shape[-1]:  # CogVideoX's T5 has no pooled output
                out["pooled"] = _np(emb.pooled, np.float32)
            return out
        if self.key == "dit":
            t = lambda name: torch.from_numpy(_writable(feeds[name]))  # noqa: E731
            latents = t("hidden_states")
            guidance = t("guidance") if feeds.get("guidance") is not None else torch.zeros(latents.shape[0])
            if self._injected(guidance, 0):
                raise RuntimeError(f"injected DiT failure (embedded_guidance_scale == {self.fail_on_guidance:g})")
            embeds = t("encoder_hidden_states")
            mask = t("encoder_attention_mask") if feeds.get("encoder_attention_mask") is not None else \
                torch.ones(embeds.shape[:2], dtype=torch.int64)
            pooled = t("pooled_projections") if feeds.get("pooled_projections") is not None else \
                torch.zeros(embeds.shape[0], 0)
            text = TextEmbeddings(prompt_embeds=embeds, attention_mask=mask, pooled=pooled)
            sparse = feeds.get("sparse_attention")
            step = SparseStep.from_json(_decode_strings(sparse, "sparse_attention")[0]) if sparse is not None else None
            with sparse_step(step):
                velocity = self.fn(latents, t("timestep"), text, guidance)
            if self._injected(guidance, 1):
                velocity = torch.full_like(velocity, float("nan"))
            return {"velocity": _np(velocity, np.float32)}
        if self.key == "dit_probe":
            # CogVideoX's probe takes the two timesteps only: the other slots stay None
            t = lambda name: torch.from_numpy(_writable(feeds[name])) if feeds.get(name) is not None else None  # noqa: E731
            guidance = t("guidance") if feeds.get("guidance") is not None else torch.zeros(feeds["timestep"].shape)
            rel = self.fn(t("hidden_states"), t("timestep"), t("prev_hidden_states"), t("prev_timestep"),
                          t("pooled_projections"), guidance)
            return {"rel_l1": _np(rel, np.float32)}
        if self.key == "vae_decoder":
            video = self.fn(torch.from_numpy(_writable(feeds["latents"])))
            return {"video": _np(video, np.float32)}
        raise EngineError(f"unknown component {self.key!r}; accepted {list(KEYS)}")

