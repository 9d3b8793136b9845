"""Ulysses sequence parallelism on CPU (gloo): the DiT over 2 and 4 processes equals one process, the whole
generation in process equals one process, a dead or hung worker fails one call with one line and the
next call is served; bad degrees are refused before any weight loads.

Each ParallelDenoiser is closed in a finally block (its workers also exit when this process is gone), and
every wait has a timeout.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import torch

from vidtrt.config.components import TextEmbeddings
from vidtrt.errors import ConfigError
from vidtrt.models.sequence_parallel import check_degree, comm_bytes_per_step, split_degree
from vidtrt.runtime.parallel_dit import ParallelDenoiser, ParallelGroupError
from vidtrt.source.model_source import ModelSource

PROMPT = "a cat walks on the grass"


def dit_inputs(config, latent_shape, text_lengths, seed):
    """Fresh random DiT inputs: latents [B, C, T, H, W], right-padded text of per-sample lengths."""
    g = torch.Generator().manual_seed(seed)
    tc = config.transformer
    b = latent_shape[0]
    length = max(text_lengths) + 2
    latents = torch.randn(b, tc.in_channels, *latent_shape[1:], generator=g)
    timestep = torch.rand(b, generator=g) * 1000
    mask = (torch.arange(length)[None, :] < torch.tensor(text_lengths)[:, None]).to(torch.int64)
    text = TextEmbeddings(prompt_embeds=torch.randn(b, length, tc.text_embed_dim, generator=g), attention_mask=mask,
                          pooled=torch.randn(b, tc.pooled_projection_dim, generator=g))
    guidance = torch.full((b,), 6000.0)
    return latents, timestep, text, guidance


def reference(module, latents, timestep, text, guidance):
    with torch.inference_mode():
        return module(latents, timestep, text.prompt_embeds, text.attention_mask, text.pooled, guidance)


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


# Latent shapes [B, T', H', W'] (patch 2 spatially): tokens 2*3*5 = 30 (uneven for 4 ranks: 8 + 8 + 8 + 6),
# 1 latent frame with 3*4 = 12 tokens, batch 2 with different text lengths, an odd aspect ratio (1x7).
# 25 tokens (1 x 5 x 5): uneven for 2, 3 and 4 ranks.
SHAPES = [((1, 2, 6, 10), (5,)), ((1, 1, 6, 8), (3,)), ((2, 2, 4, 6), (4, 1)), ((1, 3, 2, 14), (6,)),
          ((1, 1, 10, 10), (2,))]


@pytest.fixture(scope="module")
def six_heads(tmp_path_factory):
    """The tiny checkpoint with a 6-head DiT (seeded random weights), for degree 3."""
    import dataclasses
    import json
    import shutil

    from safetensors.torch import save_file

    from vidtrt.models.transformer import HunyuanVideoTransformer3D

    folder = tmp_path_factory.mktemp("six-heads") / "model"
    shutil.copytree(ModelSource.open("tiny").folder, folder)
    tiny = ModelSource.open("tiny").config.transformer
    config = dataclasses.replace(tiny, num_attention_heads=6)
    torch.manual_seed(6)
    dit = HunyuanVideoTransformer3D(config)
    cfg = {"_class_name": "HunyuanVideoTransformer3DModel", **json.loads(json.dumps(dataclasses.asdict(config)))}
    (folder / "transformer" / "config.json").write_text(json.dumps(cfg))
    save_file({k: v.contiguous() for k, v in dit.state_dict().items()},
              str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    return str(folder)


@pytest.mark.parametrize("model, degree, split", [("six_heads", 3, (3, 1)), ("small", 4, (4, 1)),
                                                  ("tiny", 4, (2, 2)), ("tiny", 3, (1, 3))])
def test_dit_over_ranks_equals_one_rank(model, degree, split, request):
    """Ulysses over 3 gloo ranks (6 heads) and 4 (small: 8 heads); past the head count (tiny: 2 heads) 4 ranks
    as 2 Ulysses x 2 key/value-gather and 3 as pure key/value gather: fp32 velocity within 1e-6 relative of one
    rank, on uneven token counts (padding), 1 latent frame, batch 2 with per-sample text lengths. (2 ranks:
    the failure test below.)"""
    source = ModelSource.open(request.getfixturevalue(model) if model == "six_heads" else model)
    assert split_degree(source.config.transformer.num_attention_heads, degree) == split
    dit = ParallelDenoiser(source, degree, threads=1, timeout_s=120)
    try:
        for i, (shape, lengths) in enumerate(SHAPES):
            args = dit_inputs(source.config, shape, lengths, seed=100 + i)
            ours = dit(*args)
            ref = reference(dit.module, *args)
            assert ours.shape == ref.shape
            assert rel_err(ours, ref) <= 1e-6, (shape, rel_err(ours, ref))
        assert (dit.sp.stats.all_to_all > 0) == (split[0] > 1) and dit.sp.stats.all_gather > 0
        assert dit.restarts == 0
    finally:
        dit.close()
    assert all(p.poll() is not None for p in dit.workers) and not dit.workers


def test_degree_split():
    assert [split_degree(24, n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 16)] == [
        (1, 1), (2, 1), (3, 1), (4, 1), (1, 5), (6, 1), (1, 7), (8, 1), (8, 2)]
    assert split_degree(2, 4) == (2, 2)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ConfigError, match="invalid sequence-parallel degree .*: accepted an integer >= 1"):
            check_degree(24, bad)


def test_comm_volume_formula():
    # 720x1280x129: 33 x 45 x 80 = 118,800 image tokens, 256 text tokens, C = 3072, 60 blocks, bf16.
    s, length, c = 118_800, 256, 3072
    assert comm_bytes_per_step(s, length, c, 60, 1) == 0
    assert comm_bytes_per_step(s, length, c, 60, 2) == 60 * 2 * (4 * 59_400 * c // 2 + length * c // 2)
    vols = [comm_bytes_per_step(s, length, c, 60, n) for n in (2, 3, 4, 6, 8)]
    assert all(a > b for a, b in zip(vols, vols[1:], strict=False))  # Ulysses per rank ~ (N-1)/N^2: shrinks with N
    assert round(vols[0] / 2**30, 1) == 40.8  # GiB per rank per step at N = 2
    # 5 ranks do not split 24 heads: pure key/value gather, 2 S_loc C (N - 1) per layer.
    assert comm_bytes_per_step(s, length, c, 60, 5) == 60 * 2 * 2 * 23_760 * c * 4
    assert comm_bytes_per_step(s, length, c, 60, 16) == 60 * 2 * (
        (4 * 7425 * c + length * c) * 7 // 8 + 2 * 7425 * c)


def _stop_then(dit: ParallelDenoiser, args, kill: bool):
    """Freeze rank 1 (SIGSTOP), start a call, then SIGKILL rank 1 mid-call (``kill``) or leave it hung."""
    victim = dit.workers[0]
    os.kill(victim.pid, signal.SIGSTOP)
    box: dict = {}

    def call():
        try:
            box["out"] = dit(*args)
        except Exception as e:  # noqa: BLE001 - the test inspects it
            box["error"] = e

    t = threading.Thread(target=call, daemon=True)
    t.start()
    time.sleep(1.0)
    if kill:
        os.kill(victim.pid, signal.SIGKILL)
    t.join(timeout=60)
    assert not t.is_alive(), "the call hung"
    return victim, box


def test_dead_or_hung_worker_fails_the_call_then_the_group_restarts():
    """Killed mid-call, hung past timeout_s, killed between calls: each failed call is one line, the group
    restarts, the next call is served with the right velocity; no call hangs (joins have timeouts)."""
    source = ModelSource.open("tiny")
    dit = ParallelDenoiser(source, 2, threads=1, timeout_s=5)
    try:
        for i, (shape, lengths) in enumerate(SHAPES):  # 2 ranks: the velocity of one rank
            more = dit_inputs(source.config, shape, lengths, seed=200 + i)
            assert rel_err(dit(*more), reference(dit.module, *more)) <= 1e-6, shape
        args = dit_inputs(source.config, (1, 2, 6, 10), (5,), seed=7)
        ref = reference(dit.module, *args)
        for kill, restarts in ((True, 1), (False, 2)):
            victim, box = _stop_then(dit, args, kill)
            err = box.get("error")
            assert isinstance(err, ParallelGroupError), box
            msg = str(err)
            assert "\n" not in msg and msg.startswith("sequence-parallel DiT failed: "), msg
            if kill:
                assert f"DiT worker rank 1 of 2 (pid {victim.pid}) killed by SIGKILL" in msg, msg
            else:
                assert "no answer from a DiT worker within timeout_s = 5 s (hung?)" in msg, msg
            assert msg.endswith("; restarted the group (2 ranks)"), msg
            assert victim.poll() is not None and dit.restarts == restarts
            assert rel_err(dit(*args), ref) <= 1e-6  # the next call is served by the fresh group
        # A worker that dies between calls: the next call restarts the group first and is served.
        os.kill(dit.workers[0].pid, signal.SIGKILL)
        dit.workers[0].wait(10)
        assert rel_err(dit(*args), ref) <= 1e-6 and dit.restarts == 3
    finally:
        dit.close()


def test_generation_in_process_equals_one_process(tmp_path):
    """`vidtrt run --nproc-per-node 2` writes the frames one process generates, bit for bit."""
    from vidtrt.cli import main
    from vidtrt.runtime.pipeline import HunyuanVideoPipeline

    expected = HunyuanVideoPipeline.from_model("tiny").generate(PROMPT, seed=3, num_frames=5, height=48, width=80,
                                                               num_inference_steps=3)
    out = tmp_path / "sp.npy"
    assert main(["run", PROMPT, "--seed", "3", "--frames", "5", "--height", "48", "--width", "80", "--steps", "3",
                 "--nproc-per-node", "2", "-o", str(out), "--no-progress"]) == 0
    np.testing.assert_array_equal(np.load(out), expected)


def test_run_refuses_a_bad_degree_before_loading(capsys):
    from vidtrt.cli import main

    assert main(["run", PROMPT, "--nproc-per-node", "0", "-o", "x.npy"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "vidtrt: error: invalid sequence-parallel degree 0: accepted an integer >= 1", err


def test_one_gpu_per_rank_is_checked_before_loading():
    have = torch.cuda.device_count()
    want = rf"^sequence-parallel degree {have + 1} needs GPUs 0..{have} \(one per rank\); this machine has {have}$"
    with pytest.raises(ConfigError, match=want):
        ParallelDenoiser(ModelSource.open("tiny"), have + 1, device="cuda")
