"""vidtrt: a serving runtime for text-to-video diffusion transformers (HunyuanVideo first)."""

__version__ = "0.1.0"
