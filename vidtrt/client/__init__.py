"""vidtrt.client: generate videos through a Triton Inference Server running a vidtrt repository.

:class:`VideoClient` streams progress over gRPC (decoupled ``hunyuan_video``) or calls the
non-streaming ``hunyuan_video_sync`` model over HTTP. ``vidtrt generate`` is :mod:`vidtrt.client.cli`.
"""

from vidtrt.client.video_client import GenerationResult, Progress, ServerRequestError, VideoClient

__all__ = ["GenerationResult", "Progress", "ServerRequestError", "VideoClient"]
