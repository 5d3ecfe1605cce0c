"""A Hugging Face ``LogitsProcessor`` that keeps generation inside the grammar.

Each row's grammar state is parsed leniently from its prompt once, then
advanced by one token per call, so a generation step costs O(batch) Python
work plus one masked fill. The allowed-ID masks are cached on the scores'
device per grammar state.

States are keyed on the row's content, never on its position in the batch:
beam search reorders, duplicates and drops rows between steps, so row ``b``
of one call may continue row ``c`` of the previous call. A row continues a
known prefix exactly when its IDs without the last one equal a row of the
previous call; otherwise its whole prefix is parsed again.
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
        # The previous call's rows: their int64 bytes -> grammar state after them.
        self._previous: dict[bytes, State] = {}
        self._device_masks: dict[tuple, torch.Tensor] = {}

    def reset(self) -> None:
        """Forget all row states (they are rebuilt from ``input_ids`` anyway)."""
        self._previous = {}

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
        ids = np.ascontiguousarray(input_ids.detach().cpu().numpy(), dtype=np.int64)
        current: dict[bytes, State] = {}
        states = [self._row_state(ids[b], current) for b in range(ids.shape[0])]
        self._previous = current
        allowed = torch.stack([self._device_mask(s, vocab, scores.device) for s in states])
        return scores.masked_fill(~allowed, float("-inf"))

    def _row_state(self, row: np.ndarray, current: dict[bytes, State]) -> State:
        """The state after ``row`` (int64 [S]); records it in ``current`` for the next call."""
        key = row.tobytes()
        state = current.get(key)  # beams often share a prefix within one call
        if state is None:
            parent = self._previous.get(key[:-8]) if len(row) else None
            if parent is not None:
                kind = self._layout.kinds(row[-1:])[0]
                state = self.constraints.lenient_step(parent, kind, int(row[-1]))
            else:  # first call, a new sequence, or a row we did not see: parse the whole prefix
                state, _ = self.constraints.state_after(row, lenient=True)
            current[key] = state
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
