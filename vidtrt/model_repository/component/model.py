"""Triton Python-backend model serving one HunyuanVideo component (text encoder, DiT or VAE tile decoder).

The same file serves the three component models of a vidtrt repository; the config parameter
``component`` says which (``text_encoder``, ``dit``, ``vae_decoder``). Tensors are declared in
:mod:`vidtrt.serving.component_io` (DiT and decoder from :mod:`vidtrt.config.specs`); the call itself is
:class:`vidtrt.serving.component_io.ComponentServer`, so this file only moves tensors.

The model comes from the repository's ``vidtrt-repository.json`` record
(:meth:`vidtrt.source.model_source.ModelSource.from_repository`: no config file or weight read for it), checked
against the config's ``model_fingerprint``. Parameters (config.pbtxt): ``model`` (for readers),
``engine`` ('torch' or an engine from vidtrt.runtime.engine_components; onnxruntime reads the ONNX files
``vidtrt build`` put in this model's version folder), ``device``
('cpu', or 'cuda' taken from the instance's GPU with KIND_GPU), ``attention`` (the torch DiT's attention
backend), ``fail_on_guidance`` (test-only fault injection for the DiT), ``sp_degree`` (DiT only: this process
is rank 0 of that many, the others are worker processes it starts and restarts, see vidtrt.runtime.parallel_dit).

Errors: a bad request gets an error response for that request only (INVALID_ARG for request
content, INTERNAL otherwise); the model never takes the server down.
"""

from __future__ import annotations

import json
import traceback

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        from pathlib import Path

        from vidtrt.errors import VidtrtError
        from vidtrt.runtime.engine_components import load_component
        from vidtrt.serving.component_io import KEYS, ComponentServer, specs_for_triton
        from vidtrt.source.model_source import ModelSource

        self.model_name = args["model_name"]
        config = json.loads(args["model_config"])
        params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
        key = params.get("component", "")
        if key not in KEYS:
            raise pb_utils.TritonModelException(
                f"{self.model_name}: parameter 'component' is {key!r}; accepted {list(KEYS)}")
        if not params.get("model_fingerprint"):
            raise pb_utils.TritonModelException(
                f"{self.model_name}: parameter 'model_fingerprint' is missing; rebuild with `vidtrt build`")
        if pb_utils.using_decoupled_model_transaction_policy(config):
            raise pb_utils.TritonModelException(f"{self.model_name}: component models must not be decoupled")
        if args.get("model_instance_kind") == "GPU":
            device = f"cuda:{args.get('model_instance_device_id', '0')}"
        else:
            device = params.get("device") or "cpu"

        model_dir = Path(args["model_repository"])
        try:
            source = ModelSource.from_repository(model_dir.parent, params["model_fingerprint"])
            spec = specs_for_triton(source.config)[key]
            declared_in = [t["name"] for t in config.get("input", [])]
            declared_out = [t["name"] for t in config.get("output", [])]
            if sorted(declared_in) != sorted(spec.input_names) or sorted(declared_out) != sorted(spec.output_names):
                raise pb_utils.TritonModelException(
                    f"{self.model_name}: config tensors {declared_in} -> {declared_out} do not match the {key} spec "
                    f"{spec.input_names} -> {spec.output_names}; rebuild the repository with `vidtrt build`")
            engine = params.get("engine") or "torch"
            version_dir = model_dir / str(args.get("model_version") or "1")
            artifacts = version_dir if engine != "torch" else None
            fp8_amax = None
            if params.get("quantized"):  # torch fp8 DiT: static scales from the state `vidtrt build` linked here
                from vidtrt.source.quant_state import QuantState

                fp8_amax = QuantState.load(version_dir / params["quantized"], source).amax
            fn = load_component(key, source, engine=engine, device=device, artifacts=artifacts,
                                precision=params.get("precision") or "fp32", attention=params.get("attention") or None,
                                sp_degree=int(params.get("sp_degree") or 1),  # >1: starts DiT worker processes
                                fp8_amax=fp8_amax)
        except VidtrtError as e:
            raise pb_utils.TritonModelException(f"{self.model_name}: {e}") from None
        fail = params.get("fail_on_guidance") or None
        self.server = ComponentServer(key, fn, fail_on_guidance=float(fail) if fail else None)
        self.input_names = spec.input_names
        self.logger = pb_utils.Logger

    def execute(self, requests: list) -> list:
        from vidtrt.errors import InvalidRequestError

        responses = []
        for request in requests:
            try:
                feeds = {}
                for name in self.input_names:
                    t = pb_utils.get_input_tensor_by_name(request, name)
                    if t is not None:
                        feeds[name] = t.as_numpy()
                outputs = self.server.run(feeds)
                responses.append(pb_utils.InferenceResponse(
                    output_tensors=[pb_utils.Tensor(name, value) for name, value in outputs.items()]))
            except InvalidRequestError as e:
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(str(e), pb_utils.TritonError.INVALID_ARG)))
            except Exception as e:  # one failing request must not take the others (or the server) down
                self.logger.log_error(f"{self.model_name}: {traceback.format_exc()}")
                responses.append(pb_utils.InferenceResponse(
                    error=pb_utils.TritonError(f"{type(e).__name__}: {e}", pb_utils.TritonError.INTERNAL)))
        return responses

    def finalize(self) -> None:
        close = getattr(self.server.fn, "close", None) if self.server is not None else None
        if close is not None:  # a sequence-parallel DiT: stop its worker processes
            close()
        self.server = None
