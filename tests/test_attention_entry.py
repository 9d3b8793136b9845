"""The attention entry point: exact varlen semantics without a mask tensor, and its traced form."""

import pytest
import torch

from vidtrt.models import attention as A


def _reference(q, k, v, lengths):
    """float64 softmax attention over each sample's first ``lengths[b]`` keys."""
    out = torch.empty_like(q, dtype=torch.float64)
    for b, n in enumerate(lengths.tolist()):
        qb, kb, vb = (x[b].double().transpose(0, 1) for x in (q, k, v))  # [H, S, D]
        s = qb @ kb[:, :n].transpose(-1, -2) / q.shape[-1] ** 0.5
        out[b] = (s.softmax(-1) @ vb[:, :n]).transpose(0, 1)
    return out


@pytest.mark.parametrize("lengths", [[13, 13], [13, 5], [1, 9, 13]])
def test_sdpa_key_lengths_exact(lengths):
    g = torch.Generator().manual_seed(len(lengths))
    b = len(lengths)
    q, k, v = (torch.randn(b, 13, 3, 16, generator=g) for _ in range(3))
    key_lengths = torch.tensor(lengths)
    ref = _reference(q, k, v, key_lengths)
    out = A.attention(q, k, v, key_lengths)
    assert out.shape == q.shape and out.dtype == q.dtype
    assert ((out.double() - ref).norm() / ref.norm()) < 1e-6
    # the traced form (a per-key bias) is the same function
    bias = A.key_length_bias(key_lengths, 13, q.dtype)
    assert bias.shape == (b, 1, 1, 13)
    traced = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=bias).transpose(1, 2)
    assert ((traced.double() - ref).norm() / ref.norm()) < 1e-6


def test_padded_keys_do_not_matter():
    q, k, v = (torch.randn(2, 8, 2, 16) for _ in range(3))
    lengths = torch.tensor([8, 3])
    out = A.attention(q, k, v, lengths)
    k2, v2 = k.clone(), v.clone()
    k2[1, 3:] = 1e3
    v2[1, 3:] = -1e3
    assert torch.equal(out, A.attention(q, k2, v2, lengths))


def test_backend_switch():
    assert A.get_backend() == "sdpa"
    with pytest.raises(ValueError, match="unknown attention backend 'nope'; accepted: .*sdpa"):
        A.set_backend("nope")
    A.set_backend("sdpa")
