"""PyTorch modules of the HunyuanVideo architecture (diffusers parameter names)."""
