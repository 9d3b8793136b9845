"""A model resolved once: :class:`ModelSource`.

Every entry point (``vidtrt run``, :meth:`vidtrt.runtime.pipeline.HunyuanVideoPipeline.from_model`, the engine
loaders, ``vidtrt export`` / ``vidtrt build``) turns the model the user named ('tiny', 'small' or a
checkpoint folder) into one :class:`ModelSource` with :meth:`ModelSource.open` and passes that object
down; nothing below re-resolves a name or re-reads a config. ``vidtrt build`` writes
:meth:`ModelSource.to_record` into the repository, and each Triton model process rebuilds the same
object with :meth:`ModelSource.from_record`: no config file and no weight is read for it, and every
process of a repository checks the one fingerprint the repository was built with.

Moving a repository to another machine or container: embedded presets regenerate themselves into
the cache there; a checkpoint folder is re-pointed with ``$VIDTRT_MODEL_ROOT`` (one setting for all
model processes), checked against the recorded layout and fingerprint.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from vidtrt.config.families import FAMILIES, HUNYUAN_VIDEO, ModelFamily, family_for_pipeline_class
from vidtrt.config.model_config import EMBEDDED_PRESETS, ModelConfig
from vidtrt.config.specs import COMPONENTS, ComponentSpec, TextEncoderDims, component_specs
from vidtrt.counters import count
from vidtrt.errors import CheckpointError, ConfigError, one_line
from vidtrt.paths import REPOSITORY_FILE
from vidtrt.source.checkpoints import (
    detect_layout,
    load_text_encoder,
    load_transformer,
    load_vae_decoder,
    text_encoder_root,
)

RECORD_FORMAT = "vidtrt-model-source/1"
MODEL_ROOT_ENV = "VIDTRT_MODEL_ROOT"


@dataclass(frozen=True)
class ModelSource:
    """A model's files, layout, family, validated frozen config and fingerprint, resolved once.

    ``ref``: what the user named ('tiny', 'small' or the folder as given). ``folder``: the checkpoint
    folder (embedded presets: their cache folder, written on first use). ``layout``: 'diffusers' or
    'official'. ``fingerprint``: ``config.fingerprint()``, the sha256 artifacts and repositories are
    matched by. Text-encoder dimensions and specs are built lazily, once.
    """

    ref: str
    folder: Path
    layout: str
    family: ModelFamily
    config: ModelConfig
    fingerprint: str

    # -- making one ---------------------------------------------------------------------------------
    @classmethod
    def open(cls, model: str | os.PathLike | ModelSource) -> ModelSource:
        """Resolve ``model`` ('tiny', 'small' or a checkpoint folder; a ModelSource is returned as is).

        Reads the folder's config files once (the official DiT: its tensor names and shapes only).
        CheckpointError (exit 2 in the CLI) for a missing folder, another pipeline class, a corrupt
        ``model_index.json`` or config, naming the accepted values."""
        if isinstance(model, ModelSource):
            return model
        ref = str(model)
        count("resolve", ref)
        if ref in EMBEDDED_PRESETS:
            from vidtrt.source.embedded import tiny_checkpoint

            folder, name = tiny_checkpoint(ref), ref
        else:
            folder = Path(model).expanduser()
            if not folder.is_dir():
                presets = " or ".join(repr(p) for p in EMBEDDED_PRESETS)
                raise CheckpointError(f"model folder not found: {folder} (accepted: {presets} or a checkpoint folder)")
            folder, name = folder.resolve(), folder.name
        layout = detect_layout(folder)
        family = _family_of(folder, layout)
        count("config_load", ref)
        config = family.load("config_reader")(folder, name)
        return cls(ref=ref, folder=folder, layout=layout, family=family, config=config,
                   fingerprint=config.fingerprint())

    def to_record(self) -> dict[str, Any]:
        """JSON-ready record (no weights): what :meth:`from_record` rebuilds this object from."""
        return {"format": RECORD_FORMAT, "ref": self.ref,
                "folder": None if self.ref in EMBEDDED_PRESETS else str(self.folder),
                "layout": self.layout, "family": self.family.name, "config": self.config.to_dict(),
                "fingerprint": self.fingerprint}

    @classmethod
    def from_record(cls, record: dict[str, Any], expected_fingerprint: str | None = None,
                    where: str = "the model record") -> ModelSource:
        """The object :meth:`to_record` described, without reading config files or weights.

        The folder is the recorded one, or ``$VIDTRT_MODEL_ROOT`` when set (a repository moved to
        another machine or container); embedded presets are regenerated into this machine's cache.
        CheckpointError if the record is malformed, the folder is missing or of another layout, or the
        fingerprint differs from the record's config or from ``expected_fingerprint`` (the one the
        repository's config.pbtxt was built with)."""
        if not isinstance(record, dict) or record.get("format") != RECORD_FORMAT:
            raise CheckpointError(f"{where} is not a vidtrt model record (expected format {RECORD_FORMAT!r})")
        ref = str(record.get("ref"))
        count("resolve", f"record:{ref}")
        try:
            family = FAMILIES[record["family"]]
            config = family.load("config_type").from_dict(record["config"])
        except (ConfigError, KeyError, TypeError) as e:
            raise CheckpointError(f"{where}: malformed model record ({e})") from None
        count("config_load", f"record:{ref}")
        fingerprint = config.fingerprint()
        if fingerprint != record.get("fingerprint"):
            theirs = str(record.get("fingerprint"))[:12]
            raise CheckpointError(f"{where}: its config does not match its fingerprint {theirs} (edited by hand?); "
                                  "rebuild with `vidtrt build`")
        if expected_fingerprint is not None and fingerprint != expected_fingerprint:
            raise CheckpointError(f"{where}: model fingerprint {fingerprint[:12]} differs from the "
                                  f"{expected_fingerprint[:12]} this model was built with; rebuild with `vidtrt build`")
        if ref in EMBEDDED_PRESETS:
            from vidtrt.source.embedded import tiny_checkpoint

            folder = tiny_checkpoint(ref)
        else:
            root = os.environ.get(MODEL_ROOT_ENV)
            folder = Path(root or record.get("folder") or "")
            if not folder.is_dir():
                how = f"${MODEL_ROOT_ENV}" if root else f"{where} (set ${MODEL_ROOT_ENV} to where it is now)"
                raise CheckpointError(f"model folder not found: {folder}, from {how}")
        layout = detect_layout(folder)
        if layout != record.get("layout"):
            raise CheckpointError(f"{folder} is a {layout}-layout checkpoint; {where} was built from a "
                                  f"{record.get('layout')}-layout one")
        return cls(ref=ref, folder=folder, layout=layout, family=family, config=config, fingerprint=fingerprint)

    @classmethod
    def from_repository(cls, repository: str | os.PathLike, expected_fingerprint: str | None = None) -> ModelSource:
        """:meth:`from_record` of the record ``vidtrt build`` wrote into ``repository`` (what a Triton
        model process calls, with the fingerprint from its config.pbtxt)."""
        path = Path(repository) / REPOSITORY_FILE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot read {path} ({e}); rebuild the repository with `vidtrt build`") from None
        return cls.from_record(data.get("model_source") if isinstance(data, dict) else None,
                               expected_fingerprint, str(path))

    # -- what is derived from it, once -----------------------------------------------------------------
    @cached_property
    def text_files(self):
        """``(llm_tokenizer, clip_tokenizer, llm_config, clip_config)`` without weights: the same files and
        classes as :meth:`load_text_encoder`; configs are the text models' transformers configs (a
        nested ``text_config`` is taken when the folder holds a multimodal model)."""
        from transformers import AutoConfig

        from vidtrt.models.text_encoders import load_tokenizers, quiet_transformers

        root = text_encoder_root(self.folder)
        llm_tok, clip_tok, llm_dir, clip_dir = load_tokenizers(root)
        with quiet_transformers():
            try:
                llm_cfg = AutoConfig.from_pretrained(llm_dir, local_files_only=True)
                clip_cfg = AutoConfig.from_pretrained(clip_dir, local_files_only=True)
            except Exception as e:
                raise CheckpointError(f"cannot read the text encoder configs in {root}: {one_line(e)}") from e
        llm_cfg = getattr(llm_cfg, "text_config", None) or llm_cfg
        clip_cfg = getattr(clip_cfg, "text_config", None) or clip_cfg
        return llm_tok, clip_tok, llm_cfg, clip_cfg

    @cached_property
    def text_dims(self) -> TextEncoderDims:
        """Hidden sizes and vocabularies of the text encoders (configs only) and the template crop
        (counted with the LLM tokenizer when the config leaves it None)."""
        from vidtrt.models.text_encoders import count_template_prefix_tokens

        llm_tok, _, llm_cfg, clip_cfg = self.text_files
        crop = self.config.text.crop_start
        if crop is None:
            crop = count_template_prefix_tokens(llm_tok, self.config.text.prompt_template)
        return TextEncoderDims(llm_hidden=int(llm_cfg.hidden_size), llm_vocab=int(llm_cfg.vocab_size),
                               clip_hidden=int(clip_cfg.hidden_size), clip_vocab=int(clip_cfg.vocab_size),
                               crop_start=int(crop))

    def specs(self, names=None) -> dict[str, ComponentSpec]:
        """The component specs ``names`` (default: all of the family's; text-encoder dims read only when a
        text component is asked)."""
        if self.family.name == "cogvideox":
            from vidtrt.config import cogvideox_specs

            return cogvideox_specs.component_specs(self.config, names or cogvideox_specs.COGVIDEOX_COMPONENTS)
        names = names or COMPONENTS
        text = self.text_dims if any(n in ("llm_text_encoder", "clip_text_encoder") for n in names) else None
        return component_specs(self.config, text, names)

    # -- weights -------------------------------------------------------------------------------------
    def load_transformer(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """The DiT on CPU in ``dtype`` (its file read once, zero-copy where it can be)."""
        return load_transformer(self.folder, self.config, dtype, self.family.load("transformer"))

    def load_vae_decoder(self, dtype: torch.dtype = torch.float32) -> torch.nn.Module:
        """The VAE decoder (with post-quant conv) on CPU in ``dtype``."""
        return load_vae_decoder(self.folder, self.config, dtype, self.family.load("vae_decoder"))

    def load_text_encoder(self, dtype: torch.dtype = torch.float32):
        """The LLM + CLIP :class:`~vidtrt.models.text_encoders.HunyuanTextEncoder` on CPU in ``dtype``."""
        return load_text_encoder(self.folder, self.config, dtype, self.family.load("text_encoder"))


def _family_of(folder: Path, layout: str) -> ModelFamily:
    """The family a checkpoint folder declares (diffusers: ``model_index.json``'s ``_class_name``)."""
    index = folder / "model_index.json"
    if layout != "diffusers" or not index.is_file():
        return HUNYUAN_VIDEO  # the official layout is Tencent's HunyuanVideo release
    try:
        data = json.loads(index.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{index} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{index} must hold a JSON object, got {type(data).__name__}")
    if "_class_name" not in data:
        return HUNYUAN_VIDEO  # a hand-made folder; its transformer/config.json decides the rest
    try:
        return family_for_pipeline_class(data["_class_name"], str(index))
    except ConfigError as e:
        raise CheckpointError(str(e)) from None


def load_model_config(model: str | os.PathLike | ModelSource) -> ModelConfig:
    """``ModelSource.open(model).config``: a convenience for callers that need the config only."""
    return ModelSource.open(model).config
