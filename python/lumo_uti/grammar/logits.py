"""A Hugging Face ``LogitsProcessor`` that keeps generation inside the grammar.

Each row's grammar state is parsed leniently from its prompt once, then
advanced by one token per call, so a generation step costs O(batch) Python
work plus one masked fill. The allowed-ID masks are cached on the scores'
device per grammar state.
"""

from __future__ import annotations

import numpy as np
import torch
from transformers import LogitsProcessor

from .constraints import Constraints, Mode, State


class UTILogitsProcessor(LogitsProcessor):
    """Sets the scores of every ID the grammar forbids next to ``-inf``.

    Args:
        constraints: the grammar's ``Constraints`` (``uti.grammar.constraints``).

    Columns of ``scores`` beyond ``padded_vocab_size`` (a model table padded
    further) are always forbidden; a ``scores`` narrower than the token space's
    ``vocab_size`` is an error.
    """

    def __init__(self, constraints: Constraints):
        self.constraints = constraints
        self._layout = constraints.layout
        self._rows: list[tuple[int, int, State]] = []  # (length parsed, last ID, state) per row
        self._device_masks: dict[tuple, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget all row states (they are rebuilt from ``input_ids`` anyway)."""
        self._rows = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if input_ids.dim() != 2 or scores.dim() != 2 or input_ids.shape[0] != scores.shape[0]:
            raise ValueError(
                f"UTILogitsProcessor: expected input_ids [B, S] and scores [B, V], got {tuple(input_ids.shape)} "
                f"and {tuple(scores.shape)}"
            )
        vocab = scores.shape[1]
        ts = self._layout.token_space
        if vocab < ts.vocab_size:
            raise ValueError(
                f"UTILogitsProcessor: scores has {vocab} columns but the token space needs {ts.vocab_size}; "
                "expand the model's vocabulary to the token space first"
            )
        ids = input_ids.detach().cpu().numpy()
        states = [self._row_state(b, ids[b]) for b in range(ids.shape[0])]
        allowed = torch.stack([self._device_mask(s, vocab, scores.device) for s in states])
        return scores.masked_fill(~allowed, float("-inf"))

    def _row_state(self, b: int, row: np.ndarray) -> State:
        length = len(row)
        cached = self._rows[b] if b < len(self._rows) else None
        if cached is not None and cached[0] == length - 1 and length >= 2 and cached[1] == int(row[-2]):
            kind = self._layout.kinds(row[-1:])[0]
            state = self.constraints.lenient_step(cached[2], kind, int(row[-1]))
        else:  # first call or a new sequence: parse the whole prefix
            state, _ = self.constraints.state_after(row, lenient=True)
        entry = (length, int(row[-1]) if length else -1, state)
        if b < len(self._rows):
            self._rows[b] = entry
        else:
            self._rows.append(entry)
        return state

    def _device_mask(self, state: State, vocab: int, device: torch.device) -> torch.Tensor:
        index = state.index if state.mode in (Mode.IMAGE_CODES, Mode.AUDIO) else 0
        key = (state.mode, index, vocab, str(device))
        mask = self._device_masks.get(key)
        if mask is None:
            host = np.zeros(vocab, dtype=bool)
            m = self.constraints.mask(state)
            host[: min(vocab, len(m))] = m[:vocab]
            mask = torch.from_numpy(host).to(device)
            self._device_masks[key] = mask
        return mask
