"""Predictive block coding for ``lumo-vq``: each block's code quantises what its neighbours do not predict.

A plain block VQ spends part of every code on what the neighbouring blocks already
say (the block's mean colour, the continuation of an edge). With prediction, the
block at grid position ``(i, j)`` is first predicted, linearly, from the
already *reconstructed* pixels next to it, and its code is the nearest codebook
entry to the prediction error; the block's reconstruction is the prediction
plus that entry. The codebook then holds prediction errors (k-means of the
errors on training images), and a 16384-entry codebook spends its 14 bits on
what cannot be predicted.

The prediction of block ``(i, j)`` reads ``prediction_features`` values: the
bottom row of the block above (``3 * p``), the right column of the block to the
left (``3 * p``), the bottom-right pixel of the block above-left (3), whether
there is a block above and to the left (1 or 0 each), and a constant 1;
missing neighbours read as 0. The prediction is ``features @ W``, ``W``
``[6p + 6, 3p^2]``, computed in float64 and rounded to multiples of
``PREDICTION_GRID``, so that encoder and decoder get bit-identical predictions
at any thread count and batch size (float32 sums depend on both, and a
prediction that differs by one ulp could flip a later code).

Blocks are coded in anti-diagonal order (``d = i + j`` = 0, 1, ...): every
neighbour a block reads lies on an earlier diagonal, so each diagonal is one
batched codebook search (63 searches for a 32 x 32 grid) and decoding runs the
same order with lookups instead of searches. On the CPU the whole loop runs in
one native call (``_C.predictive_code``: the threads stay in one job across the
diagonals); elsewhere it runs here, diagonal by diagonal, with the same results.

Block vectors are in ``pixel_unshuffle`` order: channel, then row, then column.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F

from ..ops import PackedCodebook, _abi, _native

# Predictions are rounded to this grid (after float64 arithmetic): see the module docstring.
PREDICTION_GRID = 2.0 ** -12


def feature_count(patch: int) -> int:
    """Length of a block's prediction features for ``patch x patch`` blocks."""
    return 6 * patch + 6


def _features(padded: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor, patch: int) -> torch.Tensor:
    """Features ``[B, n, 6p + 6]`` (float64) of blocks ``(rows, cols)`` read from ``padded``
    ``[B, h + 1, w + 1, 3, p, p]``: the reconstructed grid with a zero row on top and a zero column on
    the left (block ``(i, j)`` at ``[i + 1, j + 1]``)."""
    p = patch
    above = padded[:, rows, cols + 1, :, p - 1, :]          # [B, n, 3, p]
    left = padded[:, rows + 1, cols, :, :, p - 1]           # [B, n, 3, p]
    corner = padded[:, rows, cols, :, p - 1, p - 1]         # [B, n, 3]
    b, n = above.shape[:2]
    flags = torch.stack([(rows > 0), (cols > 0), torch.ones_like(rows, dtype=torch.bool)], -1)
    flags = flags.to(torch.float64).expand(b, n, 3)
    return torch.cat([above.reshape(b, n, -1).double(), left.reshape(b, n, -1).double(),
                      corner.double(), flags], -1)


def predict(features: torch.Tensor, weight64: torch.Tensor) -> torch.Tensor:
    """``features @ weight`` in float64, rounded to ``PREDICTION_GRID``, as float32."""
    return (torch.round((features @ weight64) / PREDICTION_GRID) * PREDICTION_GRID).float()


def _diagonals(h: int, w: int, device: torch.device):
    for d in range(h + w - 1):
        rows = torch.arange(max(0, d - w + 1), min(d, h - 1) + 1, device=device)
        yield rows, d - rows


@functools.lru_cache(maxsize=16)
def _diagonal_plan(h: int, w: int, patch: int, device: torch.device) -> tuple:
    """Per anti-diagonal of an ``h x w`` grid: ``(blocks, targets, reads, flags)``, the blocks'
    indices in the grid (``i * w + j``), their indices in the padded grid (``(i + 1) * (w + 1) + j
    + 1``), the flat positions in the padded grid that ``_features`` reads (``[n, 6p + 3]``, the
    same order) and the flag columns (``[n, 3]`` float64). Built once per grid shape: the encode
    loop then gathers and scatters with one indexed op each."""
    p, dim = patch, 3 * patch * patch
    k = torch.arange(p)
    channel = torch.arange(3)[:, None] * p * p
    bottom_row = (channel + (p - 1) * p + k).reshape(-1)          # above: [c, p - 1, :]
    right_col = (channel + k * p + (p - 1)).reshape(-1)           # left: [c, :, p - 1]
    corner = channel.reshape(-1) + (p - 1) * p + (p - 1)          # above-left: [c, p - 1, p - 1]
    plan = []
    for rows, cols in _diagonals(h, w, torch.device("cpu")):
        above = (rows * (w + 1) + cols + 1)[:, None] * dim
        left = ((rows + 1) * (w + 1) + cols)[:, None] * dim
        above_left = (rows * (w + 1) + cols)[:, None] * dim
        reads = torch.cat([above + bottom_row, left + right_col, above_left + corner], 1)
        flags = torch.stack([rows > 0, cols > 0, torch.ones_like(rows, dtype=torch.bool)], -1).double()
        plan.append(tuple(t.to(device) for t in (rows * w + cols, (rows + 1) * (w + 1) + cols + 1,
                                                  reads.reshape(-1), flags)))
    return tuple(plan)


def code_blocks(blocks: torch.Tensor, codebook: torch.Tensor, weight: torch.Tensor,
                search: Callable[[torch.Tensor], torch.Tensor] | None = None,
                codes: torch.Tensor | None = None,
                packed: PackedCodebook | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Encode (``codes`` None) or decode (``codes`` given) a grid of blocks with prediction.

    ``blocks``: ``[B, h, w, D]`` float32, the blocks to encode; when decoding only its shape, dtype
    and device are read (``reconstruct`` passes zeros). ``search(z [B, n, D]) -> codes
    [B, n]``: the nearest-entry search (a packed codebook's, or ``vq_search`` against ``codebook``).
    ``packed``: ``codebook``'s ``PackedCodebook`` (l2, computed norms), where the caller has one.
    Returns ``(codes [B, h, w] int64, reconstruction [B, h, w, D] float32)``.

    On the CPU with the native module, the whole loop runs there in one call (``_native_code``:
    encoding needs ``packed``); else diagonal by diagonal below. Both give the same codes and
    reconstruction. Below, the features are those of ``_features`` (the reference definition,
    which the tests compare with), gathered through ``_diagonal_plan``. The reconstructed grid is
    kept in float64: it only ever holds float32 values (prediction + entry, summed in float32), so
    the features equal ``_features``' float64 copies of them.
    """
    b, h, w, dim = blocks.shape
    p = int(round((dim // 3) ** 0.5))
    if 3 * p * p != dim:
        raise ValueError(f"block vectors must hold 3 * p * p values, got {dim}")
    out_codes = torch.zeros(b, h, w, dtype=torch.long, device=blocks.device) if codes is None else codes
    if b == 0 or h == 0 or w == 0:
        return out_codes, blocks.new_zeros(b, h, w, dim)
    native = _native_code(blocks, codebook, weight, p, codes, packed)
    if native is not None:
        return native
    weight64 = weight.double()
    padded = torch.zeros(b, (h + 1) * (w + 1), dim, dtype=torch.float64, device=blocks.device)
    flat_padded = padded.view(b, -1)
    flat_blocks = blocks.reshape(b, h * w, dim)
    flat_codes = out_codes.view(b, h * w) if codes is None else codes.reshape(b, h * w)
    for at, target, reads, flags in _diagonal_plan(h, w, p, blocks.device):
        n = at.shape[0]
        features = torch.cat([flat_padded.index_select(1, reads).view(b, n, -1), flags.expand(b, n, 3)], -1)
        pred = predict(features, weight64)                                   # [B, n, D]
        if codes is None:
            chosen = search(flat_blocks.index_select(1, at) - pred)
            flat_codes.index_copy_(1, at, chosen)
        else:
            chosen = flat_codes.index_select(1, at)
        padded.index_copy_(1, target, (pred + codebook[chosen]).double())
    grid = padded.view(b, h + 1, w + 1, dim)[:, 1:, 1:].float()
    return out_codes, grid


def _native_code(blocks: torch.Tensor, codebook: torch.Tensor, weight: torch.Tensor, p: int,
                 codes: torch.Tensor | None, packed: PackedCodebook | None
                 ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """``code_blocks`` through the native CPU loop (``_C.predictive_code``), or None where it does
    not run: another device, no native module (or ``LUMO_FORCE_REFERENCE``), a codebook that is
    not float32, or (encoding) float32 blocks without a packed l2 copy of this codebook."""
    tensors = (blocks, codebook, weight) if codes is None else (codebook, weight, codes)
    if any(t.device.type != "cpu" for t in tensors) or codebook.dtype != torch.float32:
        return None
    module = _abi.cpu_module()
    if module is None or weight.shape != (feature_count(p), codebook.shape[1]):
        return None
    b, h, w, dim = blocks.shape
    handle = None
    if codes is None:
        if packed is None or packed.codebook is not codebook or blocks.dtype != torch.float32:
            return None
        handle = packed._native_packed()
        if handle is None:
            return None
        out_codes = torch.empty(b, h, w, dtype=torch.long)
    else:
        out_codes = codes.to(torch.long).contiguous()
    recon = torch.empty(b, h, w, dim, dtype=torch.float32)
    x = blocks.contiguous()
    cb = codebook.detach().contiguous()
    w64 = weight.detach().to(torch.float64).contiguous()
    # SAFETY: every buffer is a contiguous CPU tensor alive for the synchronous call.
    bad = module.predictive_code(
        packed=handle, blocks=_native.buffer(x if codes is None else None), codebook=_native.buffer(cb),
        k=cb.shape[0], weight=_native.buffer(w64), b=b, h=h, w=w, patch=p, grid=PREDICTION_GRID,
        codes=_native.buffer(out_codes), recon=_native.buffer(recon), num_threads=_abi.threads())
    if bad >= 0:
        n, rest = divmod(bad, h * w)
        at = f"block ({n}, {rest // w}, {rest % w}) of [B, h, w] = [{b}, {h}, {w}]"
        if codes is not None:
            raise ValueError(f"lumo-vq: the code of {at} is {int(out_codes.view(-1)[bad])}, "
                             f"outside [0, {cb.shape[0]})")
        if not bool(torch.isfinite(x.view(-1, dim)[bad]).all()):
            raise ValueError(f"lumo-vq: expected finite values, got inf/NaN in {at}")
        raise ValueError(f"lumo-vq: the prediction error of {at} overflows fp32 (values too large)")
    return out_codes, recon


def reconstruct(codes: torch.Tensor, codebook: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """codes ``[B, h, w]`` -> reconstructed blocks ``[B, h, w, D]`` (prediction + looked-up entry)."""
    b, h, w = codes.shape
    grid = codebook.new_zeros(b, h, w, codebook.shape[1])
    return code_blocks(grid, codebook, weight, codes=codes)[1]


def open_loop_features(grid: torch.Tensor) -> torch.Tensor:
    """Features ``[B, h, w, 6p + 6]`` (float64) of every block of ``grid`` ``[B, h, w, D]``, read
    from the original neighbours instead of reconstructed ones (for fitting the predictor)."""
    b, h, w, dim = grid.shape
    p = int(round((dim // 3) ** 0.5))
    padded = F.pad(grid.reshape(b, h, w, 3, p, p), (0, 0, 0, 0, 0, 0, 1, 0, 1, 0))
    rows = torch.arange(h, device=grid.device).repeat_interleave(w)
    cols = torch.arange(w, device=grid.device).repeat(h)
    return _features(padded, rows, cols, p).reshape(b, h, w, -1)


def fit_predictor(grids: list[torch.Tensor], ridge: float = 1e-6) -> torch.Tensor:
    """The least-squares predictor ``W`` ``[6p + 6, D]`` (float32) of blocks from their (original)
    neighbours over ``grids`` (each ``[B, h, w, D]``); ``ridge`` keeps the normal equations solvable
    (a feature that is constant over the data)."""
    if not grids:
        raise ValueError("fit_predictor needs at least one grid of blocks")
    dim = grids[0].shape[-1]
    p = int(round((dim // 3) ** 0.5))
    m = feature_count(p)
    gram = torch.zeros(m, m, dtype=torch.float64)
    cross = torch.zeros(m, dim, dtype=torch.float64)
    for g in grids:
        f = open_loop_features(g).reshape(-1, m)
        gram += f.T @ f
        cross += f.T @ g.reshape(-1, dim).double()
    gram += ridge * torch.eye(m, dtype=torch.float64) * max(1.0, float(gram.diagonal().mean()))
    return torch.linalg.solve(gram, cross).float()


def open_loop_residuals(grid: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Blocks minus their prediction from the original neighbours, ``[B * h * w, D]`` (k-means data)."""
    dim = grid.shape[-1]
    return (grid.reshape(-1, dim) - predict(open_loop_features(grid).reshape(-1, weight.shape[0]),
                                            weight.double()))
