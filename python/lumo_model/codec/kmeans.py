"""k-means on ``lumo_uti.ops.vq_search``, with dead-code restarts.

Lloyd iterations: assign every sample to its nearest centroid with the fused
search (no N x K matrix), then move each centroid to the mean of its samples.
A centroid that got no sample ("dead code") is restarted on a sample drawn
from those with the largest error, so the whole codebook stays in use. All
randomness comes from a seeded generator: the same data and seed give the same
codebook.
"""

from __future__ import annotations

from typing import Callable

import torch

from lumo_uti.ops import vq_search


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


def lloyd_step(samples: torch.Tensor, centroids: torch.Tensor, generator: torch.Generator) -> dict:
    """One assignment + update, in place on ``centroids``; returns stats (mse, dead codes restarted)."""
    k = centroids.shape[0]
    codes, dists = assign(samples, centroids)
    counts = torch.bincount(codes, minlength=k)
    sums = torch.zeros_like(centroids).index_add_(0, codes, samples)
    alive = counts > 0
    centroids[alive] = sums[alive] / counts[alive, None].to(sums.dtype)
    dead = int((~alive).sum())
    if dead:
        # Restart dead codes on badly served samples: draw among the worst 10% (at least `dead`).
        pool = max(dead, samples.shape[0] // 10)
        worst = torch.topk(dists, min(pool, samples.shape[0])).indices
        pick = worst[torch.randint(0, worst.numel(), (dead,), generator=generator)]
        centroids[~alive] = samples[pick]
    return {"mse": float(dists.mean()) / samples.shape[1], "dead": dead, "used": int(alive.sum())}


def kmeans(samples: torch.Tensor, k: int, iterations: int, *, seed: int = 0, centroids: torch.Tensor | None = None,
           start: int = 0, on_iteration: Callable[[int, torch.Tensor, dict], None] | None = None) -> torch.Tensor:
    """k-means of ``samples`` [N, D] -> centroids [k, D].

    ``centroids``/``start`` resume a run (iteration ``start`` onwards);
    ``on_iteration(i, centroids, stats)`` is called after each iteration
    (checkpoints, progress).
    """
    generator = torch.Generator().manual_seed(seed)
    if centroids is None:
        centroids = init_centroids(samples, k, generator)
    for i in range(start, iterations):
        generator.manual_seed(seed * 1_000_003 + i + 1)  # resumable: each iteration's draws depend only on i
        stats = lloyd_step(samples, centroids, generator)
        if on_iteration is not None:
            on_iteration(i, centroids, stats)
    return centroids
