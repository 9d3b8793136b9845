"""Suite-wide settings: a private cache for the embedded tiny model, the Triton interpreter on CPU."""

import os
import tempfile

# Before anything imports triton: kernels run in the interpreter on machines without a GPU.
if not os.environ.get("CUDA_VISIBLE_DEVICES") and not os.path.exists("/dev/nvidia0"):
    os.environ.setdefault("TRITON_INTERPRET", "1")
# One tiny checkpoint for the whole session (servers started by tests inherit this too).
os.environ.setdefault("VIDTRT_CACHE", tempfile.mkdtemp(prefix="vidtrt-test-cache-"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
