"""Encode throughput of each lumo codec backend against the same Hugging Face model unmodified.

Models are built with random weights from each architecture's default config
(the released models' shapes) unless ``--small`` (for a quick run), saved into
a temp dir and loaded twice: once by lumo (search replaced by lumo ops), once
plain. Both encode the same batch, interleaved, in the same process. One JSON
object per backend: items/s (images) or audio seconds/s, medians and the ratio.

    python benchmarks/codecs.py [--backends hf-janus,hf-encodec] [--repeats 5] [--small]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import transformers as hf

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from codec_models import TINY, hf_model, make, model_codes  # noqa: E402

from lumo_uti import codecs  # noqa: E402

NAMES = {kind: name for name, (kind, _, _) in TINY.items()}


def _real_model(name: str, root: Path) -> Path:
    kind, class_name, _ = TINY[name]
    config_class = getattr(hf, class_name.replace("Model", "") + "Config" if class_name.endswith("Model") else class_name + "Config")
    config = config_class()
    if name == "janus":
        config.num_patches = 24  # Janus-Pro: 384 px, 24 x 24 codes
    torch.manual_seed(0)
    model = getattr(hf, class_name)(config).eval()
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backends", default=",".join(NAMES), help="comma-separated codec kinds")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--small", action="store_true", help="tiny random models (fast, not representative)")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.backends.split(","):
            name = NAMES[kind]
            path = make(name, Path(tmp)) if args.small else _real_model(name, Path(tmp))
            codec = codecs.load(f"{kind}:{path}")
            plain = hf_model(name, path)
            x, amount = _input(name, codec)
            ours_t, theirs_t = [], []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                ours = codec.encode_tensor(x)
                ours_t.append(time.perf_counter() - t0)
                t0 = time.perf_counter()
                theirs = model_codes(name, plain, x)
                theirs_t.append(time.perf_counter() - t0)
            ours_med, theirs_med = statistics.median(ours_t), statistics.median(theirs_t)
            unit = "items_per_s" if codec.modality == "image" else "audio_seconds_per_s"
            print(json.dumps({
                "backend": kind, "input": list(x.shape), "codes": list(ours.shape),
                "codes_identical": bool(torch.equal(ours, theirs)),
                "lumo_median_s": round(ours_med, 4), "hf_median_s": round(theirs_med, 4),
                f"lumo_{unit}": round(amount / ours_med, 2), f"hf_{unit}": round(amount / theirs_med, 2),
                "ratio_hf_over_lumo": round(theirs_med / ours_med, 3), "small_models": args.small,
            }), flush=True)


if __name__ == "__main__":
    main()
