"""Encode and decode time of the default bundle's own codecs, with the alternatives their settings were chosen over.

- ``lumo-vq`` (image, 256 x 256): encode, with and without the block
  prediction (the same codebook searched block by block in one batch: the
  plain codec's encoding work), with the prediction's diagonal loop run from
  Python instead of the native loop (same codes), and decode with and without the
  learned deblocking (the same codec with ``BlockEdgeBlend`` removed) and with
  the ``decode_views`` option at 2, 4 and 8 (the mean of that many mirrored /
  transposed decoder runs);
- ``lumo-rvq`` (audio, 10 s of a bundled evaluation sentence, looped): encode
  greedily (beam 1) and with the default bundle's beam of 4, and decode; the
  beam search alone with its float32 screen and with every score in float64
  (the same codes, checked first).

All cases run in one process, interleaved (one call of each per round), after
one warm-up round; the JSON holds the median milliseconds of each, the ratios
that matter (beam 4 / greedy, deblocked / plain decode, N views / one view,
real time / beam-4 encode, predictive / plain image encode, Python / native loop) and the machine (CPU model, ISA, threads).

    python benchmarks/lumo_codecs.py [--repeats 15] [--threads 2] [--out FILE]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from machine import machine

import lumo_uti
from lumo_uti._io import atomic_write_text
from lumo_uti.codecs import block_prediction
from lumo_uti.codecs.audio_io import prepare
from lumo_uti.codecs.lumo_rvq import rvq_beam_encode
from lumo_uti.media import Audio

EVAL_AUDIO = Path(lumo_uti.__file__).parent / "data" / "eval" / "audio"


def python_loop(fn):
    """fn() with block prediction's diagonal loop in Python (the native loop turned off)."""
    native = block_prediction._native_code
    block_prediction._native_code = lambda *args: None
    try:
        return fn()
    finally:
        block_prediction._native_code = native


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    uti = lumo_uti.load()
    image = uti.image_codec
    plain = copy.copy(image)
    plain.model = copy.deepcopy(image.model)
    plain.model.deblock = None
    unpredicted = None
    if image.model.predictor is not None:
        unpredicted = copy.copy(image)
        unpredicted.model = copy.deepcopy(image.model)
        unpredicted.model.predictor = None
    views = {n: lumo_uti.codecs.load(f"lumo-vq:{image.directory}", decode_views=n) for n in (2, 4, 8)}
    beam = uti.audio_codec
    greedy = lumo_uti.codecs.load(f"lumo-rvq:{beam.directory}", num_quantizers=beam.num_codebooks)
    if getattr(beam, "beam", 1) == 1:
        sys.exit("the default bundle's audio codec encodes greedily: nothing to compare")

    pixels = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    clip = sorted(EVAL_AUDIO.glob("speech_*.wav"))[0]
    wave = prepare(Audio.load(clip), greedy.sample_rate, 1, str(clip))[0]
    seconds = 10.0
    wave = wave.repeat(int(seconds * greedy.sample_rate) // wave.shape[0] + 1)[: int(seconds * greedy.sample_rate)]
    wave = wave[None, None]

    with torch.inference_mode():
        image_codes = image.encode_tensor(pixels)
        if not torch.equal(python_loop(lambda: image.encode_tensor(pixels)), image_codes):
            sys.exit("the native and the Python prediction loop disagree")
        audio_codes = greedy.encode_tensor(wave)
        coefficients = beam.model.analyse(wave[0])
        codebooks = beam.model.codebooks
        if not torch.equal(rvq_beam_encode(coefficients, codebooks, beam.beam),
                           rvq_beam_encode(coefficients, codebooks, beam.beam, screen=False)):
            sys.exit("the screened and the float64-only beam search disagree")
        cases = {
            "image_encode_256": lambda: image.encode_tensor(pixels),
            **({"image_encode_256_without_prediction": lambda: unpredicted.encode_tensor(pixels),
                "image_encode_256_python_loop": lambda: python_loop(lambda: image.encode_tensor(pixels))}
               if unpredicted is not None else {}),
            "image_decode_256": lambda: image.decode_tensor(image_codes),
            "image_decode_256_without_deblocking": lambda: plain.decode_tensor(image_codes),
            **{f"image_decode_256_views_{n}": (lambda c=c: c.decode_tensor(image_codes)) for n, c in views.items()},
            "audio_encode_10s_greedy": lambda: greedy.encode_tensor(wave),
            "audio_encode_10s_beam": lambda: beam.encode_tensor(wave),
            "audio_decode_10s": lambda: greedy.decode_tensor(audio_codes),
            # the beam search alone, on the same MDCT coefficients: with its float32 screen (what the
            # codec runs) and with every pair scored in float64 (the screen's baseline)
            "audio_beam_search_10s": lambda: rvq_beam_encode(coefficients, codebooks, beam.beam),
            "audio_beam_search_10s_float64_only": lambda: rvq_beam_encode(coefficients, codebooks, beam.beam,
                                                                          screen=False),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for round_ in range(args.repeats + 1):
            for name, fn in cases.items():
                start = time.perf_counter()
                fn()
                if round_:  # round 0 warms up
                    times[name].append((time.perf_counter() - start) * 1000)
    ms = {name: round(statistics.median(v), 3) for name, v in times.items()}
    report = {
        "suite": "lumo_codecs",
        "command": "python benchmarks/lumo_codecs.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "repeats": args.repeats,
        "audio_beam": beam.beam,
        "audio_clip": clip.name,
        "median_ms": ms,
        "ratios": {
            "audio_beam_over_greedy_encode": round(ms["audio_encode_10s_beam"] / ms["audio_encode_10s_greedy"], 2),
            "audio_beam_search_float64_only_over_screened": round(
                ms["audio_beam_search_10s_float64_only"] / ms["audio_beam_search_10s"], 2),
            "audio_real_time_over_beam_encode": round(seconds * 1000 / ms["audio_encode_10s_beam"], 1),
            "image_decode_with_over_without_deblocking": round(
                ms["image_decode_256"] / ms["image_decode_256_without_deblocking"], 3),
            **({"image_encode_with_over_without_prediction": round(
                ms["image_encode_256"] / ms["image_encode_256_without_prediction"], 2),
                "image_encode_python_loop_over_native_loop": round(
                ms["image_encode_256_python_loop"] / ms["image_encode_256"], 2)} if unpredicted else {}),
            **{f"image_decode_views_{n}_over_one": round(ms[f"image_decode_256_views_{n}"] / ms["image_decode_256"], 2)
               for n in views},
        },
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")  # a failed write keeps the previous report


if __name__ == "__main__":
    main()
