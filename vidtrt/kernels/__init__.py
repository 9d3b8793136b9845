"""Triton-language kernels of vidtrt (importable as ``vidtrt.kernels``; needs the ``triton`` extra).

Modules (import them explicitly; this package imports nothing, so CPU installs need no triton):
  rope           ``fused_qk_norm_rope``: per-head RMSNorm + 3D RoPE of q and k in one kernel
                 (bf16/fp16/fp32, optional FP8 e4m3 output); ``install_fused_qk_norm_rope`` hooks it
                 into the DiT's ``qk_norm_rope`` (CUDA; CPU keeps the torch path).
  attention      ``flash_attention``: non-causal flash attention for [B, S, H, D] with per-sample key
                 lengths (``tma=True``: K / V by Hopper TMA descriptors).
  attention_fp8  ``flash_attention_fp8`` / ``quantize_qkv_fp8``: FP8 e4m3 attention (per-block q/k,
                 per-channel v, smooth K, P quantized for the PV product; ``tma=True`` as above).
  block_sparse   ``block_sparse_attention(_fp8)``: flash attention visiting only the key blocks a
                 per-query-block list allows (BF16 / FP8, pointer and TMA flavours).
  sparse_layout  (no triton) block-sparse layouts, the sliding-tile token order and their references.
  backends       the DiT's attention backends "triton", "triton-fp8", their TMA flavours
                 "triton-tma", "triton-fp8-tma", and the sliding-tile "triton-sta", "triton-fp8-sta"
                 (vidtrt.models.attention registers them on first use).
  reference      torch references (no triton): the definitions the kernels are tested against.
  aot            ahead-of-time payloads (PTX for sm_90, launch grid / scalars) for TensorRT plugins,
                 with their ptxas / SASS facts (registers, spills, instruction mix).
  trt_plugins    TensorRT quickly deployable plugins (AOT) built on ``aot``.
  onnx_plugins   ONNX export flavour with plugin nodes; attention backends "trt-plugin(-fp8)",
                 "trt-plugin-sta(-fp8)" (block-sparse nodes in the STA graph), the FP8 Q/DQ graph's
                 attention as an attention_fp8 node ("plugin-qdq-fp8").
"""
