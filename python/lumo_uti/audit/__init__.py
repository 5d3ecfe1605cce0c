"""``lumo audit``: prove a bundle's ABI and quality before anyone trains on its tokens.

User documentation in docs/audit.md. Modules, one concept each:

- ``results``: ``Check`` (one verdict) and ``AuditResult`` (all of them);
- ``data``: finding and reading the evaluation samples;
- ``abi``: opening a bundle without aborting on a hash mismatch, and the ABI checks;
- ``determinism``: repeat / batch / threads / CPU-vs-CUDA code agreement;
- ``roundtrip``: encode + decode of every sample in the codec's own space;
- ``sanity``: token-range and decode-sanity checks on the round trips;
- ``quality``: metrics_v2 (PSNR, SSIM, block-edge ratio, SI-SNR, STFT/mel distance, codebook usage);
- ``gates``: the gates file (load, validate, compare, write with margins);
- ``pictures``: reconstruction grids, waveform/spectrogram comparisons, histograms (PIL);
- ``report``: ``audit.json`` and ``audit.md``;
- ``runner``: ``run_audit``, which ties them together;
- ``cli``: the ``lumo audit`` command.
"""

from __future__ import annotations

from .._lazy import lazy_exports

# Imported on first use, so that registering ``lumo audit`` keeps ``lumo --help`` free of torch.
_EXPORTS = {
    "GATE_METRICS": "gates",
    "Gates": "gates",
    "GatesError": "gates",
    "load_gates": "gates",
    "AuditResult": "results",
    "Check": "results",
    "AuditUsageError": "runner",
    "Margins": "runner",
    "run_audit": "runner",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
