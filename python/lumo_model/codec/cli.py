"""``lumo train-codec``, ``lumo codec-eval`` and ``lumo codec-corpus`` (see docs/codec_training.md).

Heavy imports happen inside the commands only, so that ``lumo --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

__all__ = ["register"]


def register(subparsers: Any) -> None:
    """Add ``train-codec``, ``codec-eval`` and ``codec-corpus`` to the ``lumo`` parser."""
    sp = subparsers.add_parser(
        "train-codec", help="train the lumo-vq image or lumo-rvq audio codec on a folder of files",
        description="Train a codec: k-means codebooks on lumo's vq_search (dead-code restarts), then the "
                    "decoder refinement; checkpoints in OUT/checkpoint (a rerun with the same OUT resumes), "
                    "the codec in OUT/codec, the evaluation in OUT/eval.json.")
    sp.set_defaults(func=_cmd_train)
    sp.add_argument("modality", choices=("image", "audio"))
    sp.add_argument("--data", required=True, metavar="DIR", help="training files (images or audio, searched recursively)")
    sp.add_argument("--eval-data", metavar="DIR", help="evaluation files, disjoint from --data (final evaluation)")
    sp.add_argument("--out", required=True, metavar="DIR", help="output folder (resumed if it holds a checkpoint)")
    sp.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--name", help="codec name recorded in its config (default: lumo-vq / lumo-rvq)")
    sp.add_argument("--codebook-size", type=int, help="entries per codebook (default: image 16384, audio 1024)")
    sp.add_argument("--kmeans-iterations", type=int, help="Lloyd iterations (per codebook for audio)")
    sp.add_argument("--steps", type=int, help="decoder / post-filter training steps (0 = lookup only)")
    sp.add_argument("--batch-size", type=int)
    sp.add_argument("--lr", type=float)
    sp.add_argument("--save-every", type=int, help="checkpoint every N decoder steps")
    sp.add_argument("--patch", type=int, help="image: pixels per code side (default 8)")
    sp.add_argument("--kmeans-samples", type=int, help="image: blocks sampled for k-means (default 1000000)")
    sp.add_argument("--init-codebook", metavar="CODEC_DIR",
                    help="image: take the codebook of this lumo-vq codec instead of running k-means "
                         "(e.g. an earlier run's OUT/codec with the same data, patch and codebook size)")
    sp.add_argument("--init-decoder", metavar="CODEC_DIR",
                    help="image: start the decoder stage from this lumo-vq codec's decoder and refiner weights "
                         "(fine-tuning; same architecture) instead of random weights")
    sp.add_argument("--photo-share", type=_share, metavar="FRACTION",
                    help="image: share of k-means blocks and decoder crops cut from photo_* files when the data "
                         "also holds other images (default 0.2; 'none' = every image view equally likely, the "
                         "sampling of the codecs before 2026-12)")
    sp.add_argument("--decoder-photo-share", type=_fraction, metavar="FRACTION",
                    help="image: the same for the decoder's crops alone (default: --photo-share)")
    sp.add_argument("--predict", action="store_true",
                    help="image: block prediction: each code quantises what the block's decoded neighbours "
                         "above and to the left do not predict (k-means on prediction errors; "
                         "docs/codec_training.md)")
    sp.add_argument("--decoder-channels", type=int, help="image: context decoder width (default 160)")
    sp.add_argument("--decoder-blocks", type=int, help="image: context decoder residual blocks (default 3; 0 = none)")
    sp.add_argument("--encoder-channels", type=int, help="image: learned encoder width (default 96)")
    sp.add_argument("--encoder-blocks", type=int, help="image: learned encoder residual blocks (default 0: "
                                                       "nearest-block search)")
    sp.add_argument("--refine-channels", type=int, help="image: full-resolution refiner width (default 24)")
    sp.add_argument("--refine-blocks", type=int, help="image: full-resolution refiner residual blocks (default 1; "
                                                      "0 = none)")
    sp.add_argument("--eval-every", type=int, help="image: log the evaluation photos' PSNR/SSIM every N steps "
                                                   "(default 500; 0 = only at the end)")
    sp.add_argument("--crop", type=int, help="image: decoder training crop side (default 96; images must be at least this big)")
    sp.add_argument("--sample-rate", type=int, help="audio: codec sample rate (default 16000)")
    sp.add_argument("--hop", type=int, help="audio: samples per frame (default 256: 62.5 frames/s, 5 kbps at 16 kHz)")
    sp.add_argument("--num-codebooks", type=int, help="audio: residual codebooks (default 8)")
    sp.add_argument("--refine-iterations", type=int, help="audio: joint refinement passes over all codebooks "
                                                          "after the residual k-means (default 10; 0 = none)")
    sp.add_argument("--postfilter-blocks", type=int, help="audio: post-filter residual blocks (default 0: none; "
                                                          "it helped little, see docs/codec_training.md)")
    sp.add_argument("--time-limit", type=float, metavar="MINUTES",
                    help="stop at the first checkpoint after this many minutes (exit status 3); the same "
                         "command again continues exactly where it stopped")
    sp.add_argument("--quiet", action="store_true", help="no progress output")

    sp = subparsers.add_parser(
        "codec-eval", help="measure a lumo-vq or lumo-rvq codec on an evaluation folder (as train-codec does)",
        description="The final evaluation of lumo train-codec for an existing codec directory: images: PSNR, SSIM "
                    "and block-edge ratio at 256 x 256 and codebook usage; audio: SI-SNR, mel and MR-STFT "
                    "distances and per-codebook usage. Prints JSON (per file with --per-file).")
    sp.set_defaults(func=_cmd_eval)
    sp.add_argument("modality", choices=("image", "audio"))
    sp.add_argument("--codec", required=True, metavar="DIR", help="a lumo-vq (image) or lumo-rvq (audio) directory")
    sp.add_argument("--eval-data", required=True, metavar="DIR", help="evaluation files")
    sp.add_argument("--per-file", action="store_true", help="include the per-file measurements")
    sp.add_argument("--beam", type=int, help="audio: the lumo-rvq beam option (default 1: greedy encoding)")
    sp.add_argument("--decode-views", type=int, metavar="N",
                    help="image: the lumo-vq decode_views option (1, 2, 4 or 8; default 1: one decoder run)")

    sp = subparsers.add_parser(
        "codec-deblock", help="fit the learned deblocking of a trained lumo-vq codec (writes a new codec)",
        description="Decode the training images (files matching --pattern) with the codec, fit the weights "
                    "that spread the step at each block boundary over --taps pixels per side for the least "
                    "squared error, and write the codec with them to --out. Codes are unchanged; only "
                    "decoding gains the deblocking (docs/codec_training.md).")
    sp.set_defaults(func=_cmd_deblock)
    sp.add_argument("--codec", required=True, metavar="DIR", help="a trained lumo-vq directory (e.g. OUT/codec)")
    sp.add_argument("--data", required=True, metavar="DIR", help="training images (never the evaluation ones)")
    sp.add_argument("--out", required=True, metavar="DIR", help="where the deblocking codec is written")
    sp.add_argument("--pattern", default="photo_*", help="file names to fit on (default photo_*: the corpus's "
                                                         "photos; '*' for every image)")
    sp.add_argument("--taps", type=int, default=3, help="pixels on each side of a boundary (default 3; at most "
                                                        "half a block)")
    sp.add_argument("--quiet", action="store_true", help="no progress output")

    sp = subparsers.add_parser(
        "codec-corpus", help="write the reproducible training/evaluation corpus for the default codecs",
        description="Images: scikit-image photos (+ natural photos from Debian's plasma-workspace-wallpapers, "
                    "mate-backgrounds, lomiri-wallpapers-16.04 and -20.04 and from scikit-learn and matplotlib, "
                    "train split) + drawn images. Audio: espeak-ng speech + synthetic music "
                    "and noise. The train and eval splits share no photo, voice, sentence or seed.")
    sp.set_defaults(func=_cmd_corpus)
    sp.add_argument("modality", choices=("image", "audio"))
    sp.add_argument("--split", choices=("train", "eval"), required=True)
    sp.add_argument("--out", required=True, metavar="DIR")
    sp.add_argument("--count", type=int, help="drawn images (default 400) / sentences per voice "
                                               "(default train 40, eval 10; at most 100)")
    sp.add_argument("--no-extra-photos", action="store_true",
                    help="image train split: the scikit-image photos only (the codecs' corpus before 2026-12), "
                         "without the natural photos from Debian's wallpaper packages, scikit-learn and matplotlib")


def _fraction(text: str) -> float:
    """--decoder-photo-share: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1], got {text!r}")
    return value


def _share(text: str) -> str:
    """--photo-share: a fraction in [0, 1] or 'none' (kept as text; the caller converts)."""
    if text != "none":
        try:
            _fraction(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1] or 'none', got {text!r}") from None
    return text


def _cmd_train(args) -> int:
    from dataclasses import replace

    from ..errors import TimeUp
    from .train import AudioTrainConfig, ImageTrainConfig, train_audio_codec, train_image_codec

    common = {"seed": args.seed, "codebook_size": args.codebook_size, "kmeans_iterations": args.kmeans_iterations,
              "batch_size": args.batch_size, "lr": args.lr, "save_every": args.save_every}
    if args.time_limit is not None and not args.time_limit > 0:
        print(f"lumo train-codec: --time-limit must be a positive number of minutes, got {args.time_limit}",
              file=sys.stderr)
        return 2
    limit = None if args.time_limit is None else args.time_limit * 60
    try:
        if args.modality == "image":
            extra = {"patch": args.patch, "kmeans_samples": args.kmeans_samples, "decoder_steps": args.steps,
                     "crop": args.crop, "decoder_channels": args.decoder_channels,
                     "decoder_blocks": args.decoder_blocks, "encoder_channels": args.encoder_channels,
                     "encoder_blocks": args.encoder_blocks, "refine_channels": args.refine_channels,
                     "refine_blocks": args.refine_blocks, "eval_every": args.eval_every,
                     "init_codebook": args.init_codebook, "init_decoder": args.init_decoder,
                     "predict": args.predict or None}
            cfg = replace(ImageTrainConfig(), **{k: v for k, v in {**common, **extra}.items() if v is not None})
            if args.photo_share is not None:
                cfg = replace(cfg, photo_share=None if args.photo_share == "none" else float(args.photo_share))
            if args.decoder_photo_share is not None:
                cfg = replace(cfg, decoder_photo_share=args.decoder_photo_share)
            report = train_image_codec(args.data, args.out, eval_data=args.eval_data, config=cfg, device=args.device,
                                       progress=not args.quiet, name=args.name or "lumo-vq", time_limit_s=limit)
        else:
            extra = {"sample_rate": args.sample_rate, "hop": args.hop, "num_codebooks": args.num_codebooks,
                     "postfilter_steps": args.steps, "refine_iterations": args.refine_iterations,
                     "postfilter_blocks": args.postfilter_blocks}
            cfg = replace(AudioTrainConfig(), **{k: v for k, v in {**common, **extra}.items() if v is not None})
            report = train_audio_codec(args.data, args.out, eval_data=args.eval_data, config=cfg, device=args.device,
                                       progress=not args.quiet, name=args.name or "lumo-rvq", time_limit_s=limit)
    except TimeUp as e:
        print(f"lumo train-codec: {e}", file=sys.stderr)
        return 3
    except (ValueError, FileNotFoundError) as e:
        print(f"lumo train-codec: {e}", file=sys.stderr)
        return 2
    summary = {k: v for k, v in report.items() if k not in ("per_image", "per_file")}
    print(json.dumps(summary, indent=2))
    print(f"codec: {args.modality} codec in {report['codec']} (load it as {report['kind']}:{report['codec']})")
    return 0


def _cmd_eval(args) -> int:
    from lumo_uti.codecs.hf_common import CodecError

    from .train import evaluate_audio_codec, evaluate_image_codec

    wrong = "--beam" if args.modality == "image" and args.beam is not None else (
        "--decode-views" if args.modality == "audio" and args.decode_views is not None else None)
    if wrong:
        print(f"lumo codec-eval: {wrong} does not apply to {args.modality} codecs", file=sys.stderr)
        return 2
    try:
        if args.modality == "image":
            report = evaluate_image_codec(args.codec, args.eval_data,
                                          **({"decode_views": args.decode_views}
                                             if args.decode_views is not None else {}))
        else:
            report = evaluate_audio_codec(args.codec, args.eval_data,
                                          **({"beam": args.beam} if args.beam is not None else {}))
    except (CodecError, ValueError, FileNotFoundError) as e:
        print(f"lumo codec-eval: {e}", file=sys.stderr)
        return 2
    if not args.per_file:
        report = {k: v for k, v in report.items() if k not in ("per_image", "per_file")}
    print(json.dumps(report, indent=2))
    return 0


def _cmd_deblock(args) -> int:
    from lumo_uti.codecs.hf_common import CodecError

    from .train import fit_image_deblock

    try:
        fitted = fit_image_deblock(args.codec, args.data, args.out, taps=args.taps, pattern=args.pattern,
                                   progress=not args.quiet)
    except (CodecError, ValueError, FileNotFoundError) as e:
        print(f"lumo codec-deblock: {e}", file=sys.stderr)
        return 2
    print(json.dumps({"codec": str(args.out), **fitted}, indent=2))
    return 0


def _cmd_corpus(args) -> int:
    from . import corpus

    def say(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    try:
        if args.modality == "image":
            count = args.count if args.count is not None else 400
            out = corpus.write_image_corpus(args.out, args.split, procedural=count, extra=not args.no_extra_photos,
                                            progress=say)
        else:
            count = args.count if args.count is not None else (40 if args.split == "train" else 10)
            out = corpus.write_audio_corpus(args.out, args.split, sentences_per_voice=count,
                                            music_clips=40 if args.split == "train" else 5,
                                            noise_clips=20 if args.split == "train" else 3, progress=say)
    except (RuntimeError, ValueError) as e:  # missing scikit-image / espeak-ng, an unknown voice, a bad count
        print(f"lumo codec-corpus: {e}", file=sys.stderr)
        return 2
    print(f"wrote {sum(1 for p in out.iterdir() if p.is_file())} files to {out}")
    return 0
