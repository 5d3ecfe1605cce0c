"""A progress line for dataset runs: documents/s, tokens/s, images/s, audio seconds/s, errors."""

from __future__ import annotations

import sys
import time


class RunProgress:
    """Prints to stderr: rewritten in place on a terminal, one line every ``every`` seconds otherwise."""

    def __init__(self, total: int | None, enabled: bool = True, start_position: int = 0, every: float = 10.0):
        self.total, self.enabled = total, enabled
        self.tty = sys.stderr.isatty()
        self.every = 0.5 if self.tty else every
        self.start = self.last = time.monotonic()
        self.start_position = start_position
        self.docs = self.tokens = self.images = self.errors = 0
        self.audio_seconds = 0.0

    def add(self, tokens: int, images: int, audio_seconds: float, error: bool) -> None:
        self.docs += 1
        self.tokens += tokens
        self.images += images
        self.audio_seconds += audio_seconds
        self.errors += error
        if self.enabled and time.monotonic() - self.last >= self.every:
            self._print()

    def rates(self) -> dict[str, float]:
        dt = max(time.monotonic() - self.start, 1e-9)
        return {"seconds": dt, "documents_per_s": self.docs / dt, "tokens_per_s": self.tokens / dt,
                "images_per_s": self.images / dt, "audio_seconds_per_s": self.audio_seconds / dt}

    def _print(self, final: bool = False) -> None:
        self.last = time.monotonic()
        r = self.rates()
        done = self.start_position + self.docs
        where = f"{done}/{self.total}" if self.total else f"{done}"
        eta = ""
        if self.total and r["documents_per_s"] > 0 and not final:
            eta = f" eta {(self.total - done) / r['documents_per_s']:.0f}s"
        line = (f"tokenize-dataset {where} docs | {r['documents_per_s']:.1f} docs/s {r['tokens_per_s'] / 1e3:.1f}k tok/s "
                f"{r['images_per_s']:.1f} img/s {r['audio_seconds_per_s']:.1f} audio s/s | {self.errors} errors{eta}")
        end = "\n" if (final or not self.tty) else ""
        print(("\r" if self.tty else "") + line, end=end, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.enabled:
            self._print(final=True)
