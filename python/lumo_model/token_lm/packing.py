"""Token shards -> fixed-length training windows for ``lumo tokenlm train --data SHARDS/``.

The token stream of epoch ``e`` is every document of the shards once, in the
order of a seeded permutation of their indices (``default_rng([seed, e])``),
each followed by ``<|endoftext|>`` unless the shards already end every
document with it (manifest setting ``append_eos``). Epochs follow each other
without a gap: the stream is epoch 0, epoch 1, ...

Window ``g`` is the stream's tokens ``[g * (L - 1), g * (L - 1) + L)`` for
``L = seq_len``: consecutive windows share one token, so every token after the
stream's first is a target exactly once (the shared token is window ``g``'s
last target and window ``g + 1``'s first context). Rank ``r``'s batch at step
``s`` is windows ``(s * world + r) * B + b`` for ``b < B``: a pure function of
(seed, step, rank, world, B, L) and the shards, so ranks get disjoint targets
and a resumed run reads exactly what the killed run would have.

Document boundaries: a window holds pieces of several documents. Each piece
attends only to itself (block-diagonal causal mask), its position IDs restart
at 0, and the first token of a document is not a target (it would be
predicted from another document). A long document is cut across windows; its
continuation in the next window starts at position 0 without the earlier part
as context.

Memory: the document lengths, one permutation and one cumulative-length array
per cached epoch (int64 ``[documents]`` each); the tokens stay memory-mapped.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lumo_uti._hashing import canonical_json, sha256_bytes
from lumo_uti.errors import TokenSpaceLookupError

from .tasks import EOS

__all__ = ["Window", "ShardPacker", "document_attention_mask", "collate_windows", "open_token_shards"]


@dataclass(frozen=True)
class Window:
    """One packed window of ``L`` tokens.

    ids: [L] int64 global IDs; segment: [L] int64, one value per document piece
    (0, 1, ... in window order); position: [L] int64, restarting at 0 in each
    piece; doc_start: [L] bool, True at the first token of a document.
    """

    ids: np.ndarray
    segment: np.ndarray
    position: np.ndarray
    doc_start: np.ndarray


class ShardPacker:
    """Packs the documents of a ``TokenShards`` into windows (see the module docstring).

    Args:
        shards: ``TokenShards`` (or any sequence with ``len``, ``[i]`` -> int IDs
            and ``.lengths``).
        seq_len: tokens per window ``L`` (>= 2).
        seed: the data-order seed.
        separator: the ID appended after every document, or None when the
            documents already end with one.

    Raises:
        ValueError: seq_len < 2, or the shards hold no tokens.
    """

    def __init__(self, shards: Any, seq_len: int, seed: int, separator: int | None):
        if seq_len < 2:
            raise ValueError(f"ShardPacker: expected seq_len >= 2, got {seq_len}")
        self.shards = shards
        self.seq_len = seq_len
        self.seed = seed
        self.separator = separator
        self._spans = np.asarray(shards.lengths, dtype=np.int64) + (separator is not None)
        self.epoch_tokens = int(self._spans.sum())
        if self.epoch_tokens == 0:
            raise ValueError("ShardPacker: the shards hold no tokens")
        self._cache: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        """Windows per epoch (rounded up; the last one runs into the next epoch)."""
        return -(-max(self.epoch_tokens - 1, 1) // (self.seq_len - 1))

    def epoch_order(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """``(order [N], ends [N])``: document indices of the epoch and the stream end of each."""
        hit = self._cache.get(epoch)
        if hit is None:
            order = np.random.default_rng([self.seed, epoch]).permutation(len(self._spans))
            hit = (order, np.cumsum(self._spans[order]))
            if len(self._cache) >= 2:  # a window spans at most two epochs in a row
                self._cache.pop(min(self._cache))
            self._cache[epoch] = hit
        return hit

    def window(self, g: int) -> Window:
        """Window ``g`` of the stream."""
        if g < 0:
            raise ValueError(f"ShardPacker.window: expected g >= 0, got {g}")
        L, total = self.seq_len, self.epoch_tokens
        ids = np.empty(L, dtype=np.int64)
        segment = np.empty(L, dtype=np.int64)
        position = np.empty(L, dtype=np.int64)
        doc_start = np.zeros(L, dtype=bool)
        p, filled, piece = g * (L - 1), 0, 0
        while filled < L:
            epoch, offset = divmod(p, total)
            order, ends = self.epoch_order(epoch)
            k = int(np.searchsorted(ends, offset, side="right"))  # skips empty documents
            begin = int(ends[k - 1]) if k else 0
            within = offset - begin
            take = min(L - filled, int(ends[k]) - offset)
            doc = self.shards[int(order[k])]
            n = len(doc)
            lo, hi = within, within + take
            if lo < n:
                ids[filled : filled + min(hi, n) - lo] = doc[lo : min(hi, n)]
            if hi > n:  # the separator, at index n of the document's span
                ids[filled + n - lo] = self.separator
            segment[filled : filled + take] = piece
            position[filled : filled + take] = np.arange(take)
            doc_start[filled] = within == 0
            filled, p, piece = filled + take, p + take, piece + 1
        return Window(ids, segment, position, doc_start)

    def batch(self, step: int, batch_size: int, rank: int, world: int) -> list[Window]:
        """Rank ``rank``'s windows at ``step``: a pure function of the arguments and the shards."""
        first = (step * world + rank) * batch_size
        return [self.window(first + b) for b in range(batch_size)]


def document_attention_mask(segment: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``[B, 1, L, L]`` additive mask: 0 where query ``i`` may see key ``j`` (same piece, ``j <= i``), dtype-min elsewhere.

    An additive float mask, not a bool one: Hugging Face models take a 4D mask
    as given, and eager attention adds it to the scores while SDPA accepts
    either, so the float form means the same under both.
    """
    L = segment.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=segment.device).tril()
    allowed = (segment[:, :, None] == segment[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=segment.device)
    return mask.masked_fill_(~allowed, torch.finfo(dtype).min)[:, None]


def collate_windows(windows: list[Window], loss_ids: torch.Tensor, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Model inputs and labels of a batch of windows.

    Args:
        windows: ``B`` windows of ``L`` tokens.
        loss_ids: ``[V]`` bool, True for the IDs that may be targets (``tasks.loss_id_mask``).
        dtype: the model's dtype (of the attention mask).

    Returns:
        ``input_ids [B, L]``, ``attention_mask [B, 1, L, L]`` (``document_attention_mask``),
        ``position_ids [B, L]``, ``labels [B, L]`` (-100 = no loss: IDs outside ``loss_ids``
        and the first token of every document).
    """
    ids = torch.from_numpy(np.stack([w.ids for w in windows]))
    segment = torch.from_numpy(np.stack([w.segment for w in windows]))
    start = torch.from_numpy(np.stack([w.doc_start for w in windows]))
    labels = torch.where(loss_ids[ids] & ~start, ids, -100)
    return {
        "input_ids": ids,
        "attention_mask": document_attention_mask(segment, dtype),
        "position_ids": torch.from_numpy(np.stack([w.position for w in windows])),
        "labels": labels,
    }


def open_token_shards(path: str | os.PathLike, token_space: Any) -> tuple[Any, int | None, str]:
    """Open a token-shard folder for training with ``token_space``.

    Returns ``(shards, separator, data_hash)``: the ``TokenShards``; the
    ``<|endoftext|>`` ID to append after each document, or None when the shards
    were made with ``append_eos``; and ``sha256:...`` of the manifest's identity
    and per-shard hashes (what a resumed run must read again).

    Raises:
        ValueError: not a finished shard folder (``ShardFolderError``), or the
            shards' token space is not ``token_space`` (fingerprints differ).
    """
    from lumo_uti.datasets import TokenShards

    shards = TokenShards(path)
    identity = shards.manifest.get("identity", {})
    theirs = identity.get("token_space", {}).get("fingerprint")
    if theirs != token_space.fingerprint:
        raise ValueError(
            f"tokenlm train: the token shards in {path} were made with token space {theirs}, the bundle has "
            f"{token_space.fingerprint} ({token_space.name}); pass the --bundle they were made with, or tokenize again"
        )
    separator = None
    if not identity.get("settings", {}).get("append_eos", False):
        separator = token_space.special_tokens.get(EOS)
        if separator is None:
            raise TokenSpaceLookupError(
                "special", f"tokenlm train: token space {token_space.name!r} has no {EOS} to separate documents"
            )
    files = [[s.get("bin_sha256"), s.get("idx_sha256"), s.get("documents"), s.get("tokens")]
             for s in shards.manifest["shards"]]
    return shards, separator, sha256_bytes(canonical_json({"identity": identity, "shards": files}))
