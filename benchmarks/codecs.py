"""Encode throughput of each lumo codec backend against the same Hugging Face model unmodified.

Models are built with random weights from each architecture's default config
(the released models' shapes) unless ``--small`` (for a quick run), saved into
a temp dir and loaded twice: once by lumo (search replaced by lumo ops), once
plain. EnCodec and Mimi get random codebooks (their configs start from all-zero
ones, where every search is one big tie). Both encode the same batch in the
same process, interleaved ABBA (the order flips every round, so a drift in the
machine's load hits both sides alike).

Two timings per backend, each over its own interleaved rounds:

- ``encode``: the whole encode (the codec's ``encode_tensor`` against the
  model's own ``encode``);
- ``quantizer``: the same two calls with the model's ``encoder`` replaced by a
  module that replays its recorded output, so what is left is the quantizer
  step (and the small glue around it: ``quant_conv``, DAC's projections).

Rounds: at least ``--repeats``, then more until ``--budget-s`` seconds are
spent (at most 401): the quantizer is 0.5-10% of an encode, and a cheap
encode (DAC, Mimi) gets the many rounds that resolving that takes. For each
timing: medians; HF time / lumo time (> 1: lumo is faster) as the ratio of
the medians and as the median of the rounds' ratios (paired, so slow drifts
of the machine's load cancel), each with a 95% bootstrap interval
(resampling whole rounds), and the ratio of the minima. One JSON object per
backend; ``ratio_hf_over_lumo`` is the ratio of the medians.

Heap (``--keep-heap``, the default): glibc hands every freed block over
32 MiB back to the OS, so each large activation of an encoder faults fresh
pages in (about 2 us a page on a VM), a cost that varies from call to call
by more than the quantizer's share of the encode. The benchmark raises
glibc's mmap and trim thresholds (``mallopt``) so that both models reuse
their memory; ``--no-keep-heap`` measures with the default allocator.

    python benchmarks/codecs.py [--backends hf-janus,hf-dac] [--repeats 15] [--budget-s 60]
                                [--quantizer-repeats 41] [--threads N] [--no-keep-heap] [--small]
"""

from __future__ import annotations

import argparse
import ctypes
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch
import transformers as hf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from codec_models import TINY, hf_model, make, model_codes, randomize_codebooks  # noqa: E402

from lumo_uti import codecs  # noqa: E402

NAMES = {kind: name for name, (kind, _, _) in TINY.items()}


def _real_model(name: str, root: Path) -> Path:
    kind, class_name, _ = TINY[name]
    config_class = getattr(
        hf,
        class_name.replace("Model", "") + "Config"
        if class_name.endswith("Model")
        else class_name + "Config",
    )
    config = config_class()
    if name == "janus":
        config.num_patches = 24  # Janus-Pro: 384 px, 24 x 24 codes
    torch.manual_seed(0)
    model = getattr(hf, class_name)(config).eval()
    randomize_codebooks(name, model)  # trained codebooks are not all-zero
    path = root / name
    model.save_pretrained(path, safe_serialization=True)
    return path


def _input(name: str, codec) -> tuple[torch.Tensor, float]:
    """A batch in model space and its size in items (images) or seconds (audio)."""
    torch.manual_seed(0)
    if codec.modality == "image":
        side = codec.pixel_size(512, 512)[0] if name != "emu3" else 256
        return torch.randn(2, 3, side, side), 2.0
    seconds = 2.0
    return torch.randn(2, codec.channels, int(codec.sample_rate * seconds)) * 0.1, 2 * seconds


def _keep_heap() -> bool:
    """Keep freed memory in the process (glibc mallopt); False where that is not possible."""
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    limit = 1 << 30  # blocks up to 1 GiB come from the heap, which keeps up to 1 GiB free
    return bool(libc.mallopt(m_mmap_threshold, limit)) and bool(
        libc.mallopt(m_trim_threshold, limit)
    )


class _Replay(torch.nn.Module):
    """Stands in for an encoder: returns the output recorded from the real one."""

    def __init__(self, output):
        super().__init__()
        self.output = output

    def forward(self, *args, **kwargs):
        return self.output


def _record_encoder(model: torch.nn.Module, run: Callable[[], object]):
    """The output of ``model.encoder`` during ``run()``."""
    seen = []
    handle = model.encoder.register_forward_hook(lambda module, args, out: seen.append(out))
    try:
        run()
    finally:
        handle.remove()
    return seen[-1]


def _interleaved(
    ours: Callable[[], object],
    theirs: Callable[[], object],
    repeats: int,
    warmup: int,
    budget_s: float,
    max_rounds: int = 401,
) -> tuple[list[float], list[float]]:
    """Times of ``ours`` and ``theirs``, the order flipped every round: at least ``repeats`` rounds,
    more until ``budget_s`` seconds are spent (at most ``max_rounds``)."""
    for _ in range(warmup):
        ours()
        theirs()
    ours_t: list[float] = []
    theirs_t: list[float] = []
    start = time.perf_counter()
    i = 0
    while i < repeats or (time.perf_counter() - start < budget_s and i < max_rounds):
        for fn, times in (
            ((ours, ours_t), (theirs, theirs_t))
            if i % 2 == 0
            else ((theirs, theirs_t), (ours, ours_t))
        ):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        i += 1
    return ours_t, theirs_t


def _summary(
    ours_t: list[float], theirs_t: list[float], seed: int = 0, resamples: int = 2000
) -> dict[str, object]:
    """Medians (ms); HF / lumo time ratios: of the medians, the median of the rounds' ratios, of the
    minima; 95% bootstrap intervals of the first two (resampling whole rounds: paired)."""
    ours_med, theirs_med = statistics.median(ours_t), statistics.median(theirs_t)
    per_round = [t / o for t, o in zip(theirs_t, ours_t)]
    rng = random.Random(seed)
    n = len(ours_t)
    boot, boot_round = [], []
    for _ in range(resamples):
        idx = [rng.randrange(n) for _ in range(n)]
        boot.append(
            statistics.median(theirs_t[i] for i in idx) / statistics.median(ours_t[i] for i in idx)
        )
        boot_round.append(statistics.median(per_round[i] for i in idx))
    boot.sort()
    boot_round.sort()
    lo, hi = int(0.025 * resamples), int(0.975 * resamples) - 1
    return {
        "lumo_median_ms": round(ours_med * 1e3, 3),
        "hf_median_ms": round(theirs_med * 1e3, 3),
        "lumo_min_ms": round(min(ours_t) * 1e3, 3),
        "hf_min_ms": round(min(theirs_t) * 1e3, 3),
        "ratio": round(theirs_med / ours_med, 4),
        "ratio_ci95": [round(boot[lo], 4), round(boot[hi], 4)],
        "ratio_per_round_median": round(statistics.median(per_round), 4),
        "ratio_per_round_ci95": [round(boot_round[lo], 4), round(boot_round[hi], 4)],
        "ratio_of_minima": round(min(theirs_t) / min(ours_t), 4),
        "rounds": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(NAMES), help="comma-separated codec kinds")
    parser.add_argument(
        "--repeats", type=int, default=15, help="interleaved rounds of the whole encode (at least)"
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=60.0,
        help="keep adding encode rounds until this many seconds are spent (at most 401 rounds)",
    )
    parser.add_argument(
        "--quantizer-repeats",
        type=int,
        default=41,
        help="interleaved rounds of the quantizer step (at least; then up to a 10 s budget)",
    )
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument(
        "--threads", type=int, default=0, help="torch.set_num_threads (0: leave the default)"
    )
    parser.add_argument(
        "--keep-heap",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="raise glibc's mmap/trim thresholds so big activations reuse memory (default: on)",
    )
    parser.add_argument(
        "--small", action="store_true", help="tiny random models (fast, not representative)"
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    if args.threads:
        torch.set_num_threads(args.threads)
    keep_heap = _keep_heap() if args.keep_heap else False
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.backends.split(","):
            name = NAMES[kind]
            path = make(name, Path(tmp)) if args.small else _real_model(name, Path(tmp))
            codec = codecs.load(f"{kind}:{path}")
            plain = hf_model(name, path)
            x, amount = _input(name, codec)

            def ours():
                return codec.encode_tensor(x)

            def theirs():
                return model_codes(name, plain, x)

            codes_ours, codes_theirs = ours(), theirs()
            encode = _summary(*_interleaved(ours, theirs, args.repeats, args.warmup, args.budget_s))

            # Quantizer step: the encoders replay their recorded outputs.
            encoders = codec.model.encoder, plain.encoder
            if hasattr(codec, "encoder_features"):  # hf-emu3 runs the encoder's layers itself
                features = codec.encoder_features(x)
                codec.encoder_features = lambda _x: features
            else:
                codec.model.encoder = _Replay(_record_encoder(codec.model, ours))
            plain.encoder = _Replay(_record_encoder(plain, theirs))
            try:
                replay_identical = bool(
                    torch.equal(ours(), codes_ours) and torch.equal(theirs(), codes_theirs)
                )
                quantizer = _summary(
                    *_interleaved(ours, theirs, args.quantizer_repeats, args.warmup, 10.0)
                )
            finally:
                codec.model.encoder, plain.encoder = encoders
                codec.__dict__.pop("encoder_features", None)

            unit = "items_per_s" if codec.modality == "image" else "audio_seconds_per_s"
            print(
                json.dumps(
                    {
                        "backend": kind,
                        "input": list(x.shape),
                        "codes": list(codes_ours.shape),
                        "codes_identical": bool(torch.equal(codes_ours, codes_theirs))
                        and replay_identical,
                        "threads": torch.get_num_threads(),
                        "keep_heap": keep_heap,
                        f"lumo_{unit}": round(amount / (encode["lumo_median_ms"] / 1e3), 2),
                        f"hf_{unit}": round(amount / (encode["hf_median_ms"] / 1e3), 2),
                        "ratio_hf_over_lumo": encode["ratio"],
                        "encode": encode,
                        "quantizer": quantizer,
                        "quantizer_saving_ms": round(
                            quantizer["hf_median_ms"] - quantizer["lumo_median_ms"], 3
                        ),
                        "small_models": args.small,
                    }
                ),
                flush=True,
            )


if __name__ == "__main__":
    main()
