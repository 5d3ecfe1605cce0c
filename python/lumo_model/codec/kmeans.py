"""k-means on ``lumo_uti.ops.vq_search``, with dead-code restarts.

Lloyd iterations: assign every sample to its nearest centroid with the fused
search (no N x K matrix), then move each centroid to the mean of its samples.
A centroid that got no sample ("dead code") is restarted on a sample drawn
from those with the largest error, so the whole codebook stays in use. All
randomness comes from a seeded generator: the same data and seed give the same
codebook.

``pin_zero``: entry 0 is the zero vector and stays there. The audio codec uses it
so that digital silence (all-zero frames, common in synthesised and edited
speech) encodes to code 0 at every stage and decodes to exact silence: a zero
sample's distance to entry 0 is 0, and equal distances go to the lower index.
"""

from __future__ import annotations

from typing import Callable

import torch

from lumo_uti.ops import rvq_decode, rvq_encode, vq_search


def assign(samples: torch.Tensor, centroids: torch.Tensor, chunk: int = 65536) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes [N], squared distances [N]) of each sample's nearest centroid."""
    codes, dists = [], []
    for start in range(0, samples.shape[0], chunk):
        c, d = vq_search(samples[start:start + chunk], centroids, return_distance=True)
        codes.append(c)
        dists.append(d)
    return torch.cat(codes), torch.cat(dists)


def init_centroids(samples: torch.Tensor, k: int, generator: torch.Generator) -> torch.Tensor:
    """k distinct random samples (with repeats only when there are fewer than k samples)."""
    n = samples.shape[0]
    if n == 0:
        raise ValueError("k-means needs at least one sample")
    index = torch.randperm(n, generator=generator)[:k]
    if index.numel() < k:
        index = torch.cat([index, torch.randint(0, n, (k - index.numel(),), generator=generator)])
    return samples[index].clone()


def lloyd_step(samples: torch.Tensor, centroids: torch.Tensor, generator: torch.Generator,
               pin_zero: bool = False) -> dict:
    """One assignment + update, in place on ``centroids``; returns stats (mse, dead codes restarted).
    ``pin_zero``: entry 0 stays the zero vector (never moved, never counted as dead)."""
    k = centroids.shape[0]
    codes, dists = assign(samples, centroids)
    counts = torch.bincount(codes, minlength=k)
    sums = torch.zeros_like(centroids).index_add_(0, codes, samples)
    movable = torch.ones(k, dtype=torch.bool)
    movable[0] = not pin_zero
    alive = counts > 0
    update = alive & movable
    centroids[update] = sums[update] / counts[update, None].to(sums.dtype)
    dead_mask = ~alive & movable
    dead = int(dead_mask.sum())
    if dead:
        # Restart dead codes on badly served samples: draw among the worst 10% (at least `dead`).
        pool = max(dead, samples.shape[0] // 10)
        worst = torch.topk(dists, min(pool, samples.shape[0])).indices
        pick = worst[torch.randint(0, worst.numel(), (dead,), generator=generator)]
        centroids[dead_mask] = samples[pick]
    return {"mse": float(dists.mean()) / samples.shape[1], "dead": dead, "used": int(alive.sum())}


def kmeans(samples: torch.Tensor, k: int, iterations: int, *, seed: int = 0, centroids: torch.Tensor | None = None,
           start: int = 0, on_iteration: Callable[[int, torch.Tensor, dict], None] | None = None,
           pin_zero: bool = False) -> torch.Tensor:
    """k-means of ``samples`` [N, D] -> centroids [k, D].

    ``centroids``/``start`` resume a run (iteration ``start`` onwards);
    ``on_iteration(i, centroids, stats)`` is called after each iteration
    (checkpoints, progress). ``pin_zero``: see the module docstring.
    """
    generator = torch.Generator().manual_seed(seed)
    if centroids is None:
        centroids = init_centroids(samples, k, generator)
    if pin_zero:
        centroids[0] = 0
    for i in range(start, iterations):
        generator.manual_seed(seed * 1_000_003 + i + 1)  # resumable: each iteration's draws depend only on i
        stats = lloyd_step(samples, centroids, generator, pin_zero)
        if on_iteration is not None:
            on_iteration(i, centroids, stats)
    return centroids


def rvq_refine_step(samples: torch.Tensor, codebooks: torch.Tensor, *, pin_zero: bool = False,
                    dtype: torch.dtype | None = None) -> dict:
    """One pass of joint refinement of residual codebooks ``[Q, K, D]``, in place.

    Stage-by-stage k-means fits each codebook to the residual the earlier ones left, and never
    revisits it. Here the samples are encoded greedily with all ``Q`` codebooks, then each codebook
    in turn moves every entry to the mean of what its samples need from it given the others' current
    entries (block coordinate descent on the squared error, codes fixed). Entries no sample uses stay
    put; with ``pin_zero`` entry 0 stays zero. ``dtype``: entries are rounded to it (the stored
    precision) as they are updated, so the next codebook fits what will ship.

    Returns ``{"mse": before, "mse_refit": after}`` per coordinate: ``mse`` is the greedy encoding's
    error with the codebooks as they came in, ``mse_refit`` that of the same codes after the update.
    """
    q_count, k, _ = codebooks.shape
    codes = rvq_encode(samples, codebooks)
    recon = rvq_decode(codes, codebooks)
    before = float(((samples - recon) ** 2).mean())
    movable = torch.ones(k, dtype=torch.bool)
    movable[0] = not pin_zero
    for q in range(q_count):
        own = codebooks[q][codes[:, q]]
        counts = torch.bincount(codes[:, q], minlength=k)
        sums = torch.zeros_like(codebooks[q]).index_add_(0, codes[:, q], samples - recon + own)
        update = (counts > 0) & movable
        entries = codebooks[q].clone()
        entries[update] = sums[update] / counts[update, None].to(sums.dtype)
        if dtype is not None:
            entries = entries.to(dtype).to(codebooks.dtype)
        recon += entries[codes[:, q]] - own
        codebooks[q] = entries
    return {"mse": before, "mse_refit": float(((samples - recon) ** 2).mean())}
