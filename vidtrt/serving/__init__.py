"""Layer 4: the Triton side: the component wire and the tritonserver launcher (`vidtrt serve`)."""
