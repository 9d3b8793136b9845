"""Helpers for comparing our modules with reference implementations (tests and benchmarks)."""

from __future__ import annotations

import math

import torch


def randomize_parameters(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Every parameter random, in place, so that a misplaced or ignored tensor cannot go unnoticed:
    weights ~ N(0, 1/fan_in), biases ~ N(0, 0.1^2), norm scales ~ 1 + N(0, 0.2^2)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if p.ndim == 1 and "norm" in name and name.endswith("weight"):
                p.copy_(1 + 0.2 * noise)
            elif p.ndim == 1:
                p.copy_(0.1 * noise)
            else:
                p.copy_(noise / math.sqrt(p[0].numel()))
    return model


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| in float64 (``b`` is the reference)."""
    a, b = a.double(), b.double()
    return float((a - b).norm() / b.norm())
