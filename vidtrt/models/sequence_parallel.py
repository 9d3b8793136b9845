"""Ulysses sequence parallelism for the HunyuanVideo DiT (DeepSpeed-Ulysses; xDiT's scheme for HunyuanVideo).

``N`` ranks of a ``torch.distributed`` process group (NCCL on GPUs, gloo on CPU) run one DiT forward
together. Every rank holds the whole text stream (replicated: ``L`` is a few hundred tokens) and a
contiguous ``1/N`` slice of the image tokens (``t -> h -> w`` order). Around each attention:

    q, k, v image [B, S/N, H, D]  --all-to-all-->  [B, S, H/N, D]   (all tokens, this rank's heads)
    q, k, v text  [B, L,   H, D]  --head slice-->  [B, L, H/N, D]   (no communication: text is replicated)
    attention over concat(image, text) with the usual key lengths (our kernels, unchanged)
    out image     [B, S, H/N, D]  --all-to-all-->  [B, S/N, H, D]
    out text      [B, L, H/N, D]  --all-gather-->  [B, L, H, D]     (every rank keeps the whole text)

QK RMSNorm + RoPE run before the all-to-all on the local slice with the cos/sin rows of that slice
(the fused kernel is unchanged); norms, MLPs and projections are per token, so nothing else talks.

Uneven sequences (``T' * H' * W'`` not a multiple of ``N``): the image tokens are padded with zeros to
``S_pad = ceil(S / N) * N``; after the first all-to-all the padding rows are cut off before the text is
appended, so they are never queries or keys (exact, no mask), and after the second all-to-all they
come back as zeros and are dropped when the output is gathered.

Degrees the heads do not allow (24 heads: anything but 1, 2, 3, 4, 6, 8, 12, 24): ``N = u * r`` with
``u = gcd(heads, N)``; Ulysses over groups of ``u`` ranks, and each group's keys / values all-gathered
over the ``r`` groups (:meth:`SequenceParallel._attention_kv_gather`): exact, our kernels unchanged
(they take fewer queries than keys), more traffic and whole-sequence K / V per rank. Not ring attention,
which would need the kernels' log-sum-exp.

Activation: ``with use_sequence_parallel(SequenceParallel.from_world()): dit(...)`` on every rank with
the same inputs; outside such a block the DiT runs exactly as before (no collective, no extra copy).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from vidtrt.errors import ConfigError
from vidtrt.models.attention import attention


def check_degree(num_heads: int, degree: int) -> int:
    """``degree`` if it is a usable number of ranks (an integer >= 1), else a one-line ConfigError. Any
    degree works with any ``num_heads`` (:func:`split_degree` says how)."""
    if not isinstance(degree, int) or isinstance(degree, bool) or degree < 1:
        raise ConfigError(f"invalid sequence-parallel degree {degree!r}: accepted an integer >= 1")
    return degree


def split_degree(num_heads: int, degree: int) -> tuple[int, int]:
    """(Ulysses degree ``u``, key/value-gather degree ``r``), ``u * r = degree``: ``u = gcd(heads, degree)``,
    the most ranks the heads can be split over. 24 heads: 8 -> (8, 1), 16 -> (8, 2), 5 -> (1, 5)."""
    check_degree(num_heads, degree)
    u = math.gcd(num_heads, degree)
    return u, degree // u


@dataclass
class CommStats:
    """Bytes this rank received from other ranks, per collective (what ``bench_sequence_parallel`` prints)."""

    all_to_all: int = 0
    all_gather: int = 0
    calls: int = 0

    @property
    def total(self) -> int:
        return self.all_to_all + self.all_gather


@dataclass
class SequenceParallel:
    """One rank's view of the group: ``rank`` of ``world`` in ``group`` (None: the default group).

    ``ring`` > 1 (the degree exceeds what the heads allow, see :func:`split_degree`): ranks
    ``j * u .. j * u + u - 1`` form Ulysses group ``j`` (``ulysses_group``), ranks ``i, u + i, 2u + i ..``
    the key/value group of head slice ``i`` (``kv_group``)."""

    rank: int
    world: int
    group: object | None = None
    stats: CommStats = field(default_factory=CommStats)
    ulysses: int = 0  # u (0: world)
    ring: int = 1  # r
    ulysses_group: object | None = None
    kv_group: object | None = None
    # Image tokens of the forward in progress (set by shard; one forward at a time per group, as its
    # collectives are ordered anyway).
    num_image_tokens: int = 0

    @classmethod
    def from_world(cls, num_heads: int | None = None) -> SequenceParallel:
        """This rank of the default group; with ``num_heads`` not divisible by the world size, the
        Ulysses x key/value-gather groups (every rank must call this, in the same order)."""
        rank, world = dist.get_rank(), dist.get_world_size()
        u, r = split_degree(num_heads, world) if num_heads else (world, 1)
        sp = cls(rank, world, None, ulysses=u, ring=r)
        if r > 1:
            for j in range(r):
                g = dist.new_group([j * u + i for i in range(u)])
                if rank // u == j:
                    sp.ulysses_group = g
            for i in range(u):
                g = dist.new_group([j * u + i for j in range(r)])
                if rank % u == i:
                    sp.kv_group = g
        return sp

    # ------------------------------------------------------------------------------ token layout
    def local_len(self, num_image_tokens: int) -> int:
        """Image tokens per rank after padding: ``ceil(S / N)``."""
        return math.ceil(num_image_tokens / self.world)

    def shard(self, img: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """This rank's slice of the image tokens [B, S, C] -> [B, S_loc, C] and of the RoPE tables
        [S, D] -> [S_loc, D]; the last ranks' slices are zero-padded when ``S % N != 0``."""
        s = self.num_image_tokens = img.shape[1]
        n = self.local_len(s)
        lo, hi = self.rank * n, min((self.rank + 1) * n, s)
        pad = n - max(hi - lo, 0)

        def take(x: torch.Tensor, dim: int) -> torch.Tensor:
            part = x.narrow(dim, min(lo, s), max(hi - lo, 0))
            if pad:
                shape = list(part.shape)
                shape[dim] = pad
                part = torch.cat((part, part.new_zeros(shape)), dim=dim)
            return part.contiguous()

        return take(img, 1), take(cos, 0), take(sin, 0)

    def gather(self, out: torch.Tensor, num_image_tokens: int) -> torch.Tensor:
        """Every rank's [B, S_loc, P] -> the whole [B, S, P] on every rank (padding dropped)."""
        out = out.contiguous()
        parts = [torch.empty_like(out) for _ in range(self.world)]
        dist.all_gather(parts, out, group=self.group)
        self.stats.all_gather += out.numel() * out.element_size() * (self.world - 1)
        return torch.cat(parts, dim=1)[:, :num_image_tokens]

    # ------------------------------------------------------------------------------ collectives
    def _all_to_all(self, x: torch.Tensor, group=None, size: int | None = None) -> torch.Tensor:
        """Chunk ``r`` of dim 0 goes to (group) rank ``r``; chunk ``r`` of the result came from rank ``r``."""
        size = size or self.world
        x = x.contiguous()
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x, group=group if group is not None else self.group)
        self.stats.all_to_all += x.numel() * x.element_size() * (size - 1) // size
        self.stats.calls += 1
        return out

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_local_image_tokens: int,
                  num_image_tokens: int, key_lengths: torch.Tensor | None) -> torch.Tensor:
        """Joint attention of the local image slice and the replicated text over all tokens.

        Args:
            q, k, v: [B, S_loc + L, H, D]: this rank's image tokens (normed and rotated), then the text.
            num_local_image_tokens: ``S_loc``; num_image_tokens: ``S`` (all ranks, without padding).
            key_lengths: int [B] over the whole joint sequence ``S + L`` (as without parallelism).
        Returns:
            [B, S_loc + L, H, D]: the attention output of these tokens, all heads.
        """
        if self.ring > 1:
            return self._attention_kv_gather(q, k, v, num_local_image_tokens, num_image_tokens, key_lengths)
        n, world = num_local_image_tokens, self.world
        b, _, h, d = q.shape
        hl = h // world
        lo = self.rank * hl
        # One all-to-all for q, k and v: [world(dst), 3, B, S_loc, H/N, D].
        img = torch.stack((q[:, :n], k[:, :n], v[:, :n]))  # [3, B, S_loc, H, D]
        img = img.unflatten(3, (world, hl)).permute(3, 0, 1, 2, 4, 5)
        img = self._all_to_all(img)  # [world(src), 3, B, S_loc, H/N, D]
        img = img.permute(1, 2, 0, 3, 4, 5).reshape(3, b, world * n, hl, d)[:, :, :num_image_tokens]
        qi, ki, vi = img.unbind(0)
        txt = slice(lo, lo + hl)
        out = attention(torch.cat((qi, q[:, n:, txt]), 1), torch.cat((ki, k[:, n:, txt]), 1),
                        torch.cat((vi, v[:, n:, txt]), 1), key_lengths)  # [B, S + L, H/N, D]
        img_out = out[:, :num_image_tokens]
        if world * n > num_image_tokens:
            img_out = torch.cat((img_out, img_out.new_zeros(b, world * n - num_image_tokens, hl, d)), 1)
        img_out = self._all_to_all(img_out.unflatten(1, (world, n)).transpose(0, 1))  # [world(src heads), B, n, hl, d]
        img_out = img_out.permute(1, 2, 0, 3, 4).reshape(b, n, h, d)
        txt_out = out[:, num_image_tokens:].contiguous()
        parts = [torch.empty_like(txt_out) for _ in range(world)]
        dist.all_gather(parts, txt_out, group=self.group)
        self.stats.all_gather += txt_out.numel() * txt_out.element_size() * (world - 1)
        return torch.cat((img_out, torch.cat(parts, dim=2)), dim=1)


    def _attention_kv_gather(self, q, k, v, n: int, num_image_tokens: int, key_lengths):
        """Ulysses over ``u`` ranks, then an all-gather of keys / values over the ``r`` Ulysses groups: rank
        ``(j, i)`` queries with image block ``j`` (``u * S_loc`` tokens, padding included: padding queries
        only produce padding rows) against all image keys / values of head slice ``i``. Same arguments
        and result as :meth:`attention`; our attention kernels take ``S_q != S_k`` as they are."""
        u, r = self.ulysses, self.ring
        b, _, h, d = q.shape
        hl, i = h // u, self.rank % u
        img = torch.stack((q[:, :n], k[:, :n], v[:, :n]))  # [3, B, S_loc, H, D]
        if u > 1:
            img = self._all_to_all(img.unflatten(3, (u, hl)).permute(3, 0, 1, 2, 4, 5), self.ulysses_group, u)
            img = img.permute(1, 2, 0, 3, 4, 5).reshape(3, b, u * n, hl, d)  # block j, head slice i
        kv = img[1:].contiguous()
        parts = [torch.empty_like(kv) for _ in range(r)]
        dist.all_gather(parts, kv, group=self.kv_group)
        self.stats.all_gather += kv.numel() * kv.element_size() * (r - 1)
        kv = torch.cat(parts, dim=2)[:, :, :num_image_tokens]  # [2, B, S, H/u, D]
        txt = slice(i * hl, (i + 1) * hl)
        out = attention(torch.cat((img[0], q[:, n:, txt]), 1), torch.cat((kv[0], k[:, n:, txt]), 1),
                        torch.cat((kv[1], v[:, n:, txt]), 1), key_lengths)  # [B, u * S_loc + L, H/u, D]
        img_out, txt_out = out[:, : u * n], out[:, u * n:].contiguous()
        if u == 1:
            return torch.cat((img_out, txt_out), dim=1)
        img_out = self._all_to_all(img_out.unflatten(1, (u, n)).transpose(0, 1), self.ulysses_group, u)
        img_out = img_out.permute(1, 2, 0, 3, 4).reshape(b, n, h, d)
        parts = [torch.empty_like(txt_out) for _ in range(u)]
        dist.all_gather(parts, txt_out, group=self.ulysses_group)
        self.stats.all_gather += txt_out.numel() * txt_out.element_size() * (u - 1)
        return torch.cat((img_out, torch.cat(parts, dim=2)), dim=1)


_current: ContextVar[SequenceParallel | None] = ContextVar("vidtrt_sequence_parallel", default=None)


@contextlib.contextmanager
def use_sequence_parallel(sp: SequenceParallel | None) -> Iterator[SequenceParallel | None]:
    """Within the block, DiT forwards on this thread / task run as rank ``sp.rank`` of ``sp.world``."""
    token = _current.set(sp if sp is not None and sp.world > 1 else None)
    try:
        yield sp
    finally:
        _current.reset(token)


def current() -> SequenceParallel | None:
    """The active group (None: the DiT runs whole on this rank)."""
    return _current.get()


def joint_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_image_tokens: int,
                    key_lengths: torch.Tensor | None) -> torch.Tensor:
    """The DiT blocks' attention call over [B, S + L, H, D] (image first): plain
    :func:`~vidtrt.models.attention.attention` without a group; with one, :meth:`SequenceParallel.attention`
    (``num_image_tokens`` is then this rank's slice, and the whole image is what ``shard`` saw)."""
    sp = _current.get()
    if sp is None:
        return attention(q, k, v, key_lengths)
    return sp.attention(q, k, v, num_image_tokens, sp.num_image_tokens, key_lengths)


# ---------------------------------------------------------------------------------------------- volume
def comm_bytes_per_step(num_image_tokens: int, text_tokens: int, dim: int, layers: int, degree: int,
                        batch: int = 1, bytes_per_element: int = 2, num_heads: int = 24) -> int:
    """Bytes one rank receives from the others per DiT forward (one denoising step without true CFG).

    Per attention layer, with ``(u, r) = split_degree(num_heads, degree)`` and ``S_loc = ceil(S / N)``: two
    all-to-alls over ``u`` ranks (q/k/v in: ``3 B S_loc C``; output back: ``B S_loc C``), each keeping
    ``1/u`` of its data local; the text output's all-gather over heads (``B L C/u`` from each of ``u - 1``
    ranks); with ``r > 1`` the key/value all-gather (``2 B u S_loc C/u`` from each of ``r - 1`` ranks). The
    final velocity gather (``64`` channels per token, ~2% of one layer) is left out. Pure Ulysses (r = 1):

        bytes = layers * bytes_per_element * B * (u - 1) / u * (4 * S_loc * C + L * C)
    """
    u, r = split_degree(num_heads, degree)
    s_loc = math.ceil(num_image_tokens / degree)
    per_layer = (4 * s_loc * dim + text_tokens * dim) * (u - 1) // u + 2 * s_loc * dim * (r - 1)
    return layers * bytes_per_element * batch * per_layer
