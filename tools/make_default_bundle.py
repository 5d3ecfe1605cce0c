"""Install trained codecs as the embedded default bundle (a maintainer's step, see docs/codec_training.md).

    python tools/make_default_bundle.py IMAGE_CODEC_DIR AUDIO_CODEC_DIR \
        [--image-eval DIR] [--audio-eval DIR]

Copies the two codec directories into ``python/lumo_uti/data/default/codecs``,
rewrites the default ``token_space.json`` from ``build_default_token_space()``
(which records the new weight hashes), and, when evaluation corpora are given,
refreshes the bundled evaluation samples in ``python/lumo_uti/data/eval``
(three of the evaluation photos and 12 drawn images at 256 x 256; 8 sentences from
different evaluation voices and two music clips) that ``lumo audit``
uses by default.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DATA = ROOT / "python" / "lumo_uti" / "data"
# The two codecs' weights together may not exceed this (the package carries them).
MAX_WEIGHT_BYTES = 20_000_000


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("image_codec")
    p.add_argument("audio_codec")
    p.add_argument("--image-eval", help="an image eval corpus (lumo codec-corpus image --split eval)")
    p.add_argument("--audio-eval", help="an audio eval corpus (lumo codec-corpus audio --split eval)")
    args = p.parse_args()

    weights = sum((Path(src) / "model.safetensors").stat().st_size for src in (args.image_codec, args.audio_codec))
    if weights > MAX_WEIGHT_BYTES:
        p.error(f"the two codecs' weights are {weights / 1e6:.1f} MB; the package allows "
                f"{MAX_WEIGHT_BYTES / 1e6:.0f} MB")
    # Read both codecs first: a source may be the installed codec itself (e.g. keeping the audio one).
    sources = {modality: {name: (Path(src) / name).read_bytes() for name in ("config.json", "model.safetensors")}
               for modality, src in (("image", args.image_codec), ("audio", args.audio_codec))}
    for modality, contents in sources.items():
        dest = PACKAGE_DATA / "default" / "codecs" / modality
        shutil.rmtree(dest, ignore_errors=True)
        dest.mkdir(parents=True)
        for name, data in contents.items():
            (dest / name).write_bytes(data)
    import lumo_uti

    lumo_uti.build_default_token_space().save(PACKAGE_DATA / "default" / "token_space.json")
    if args.image_eval:
        _image_samples(Path(args.image_eval), PACKAGE_DATA / "eval" / "images")
    if args.audio_eval:
        _audio_samples(Path(args.audio_eval), PACKAGE_DATA / "eval" / "audio")
    total = sum(f.stat().st_size for f in (PACKAGE_DATA / "default").rglob("*") if f.is_file())
    print(f"default bundle: {total / 1e6:.1f} MB")


def _image_samples(src: Path, dest: Path) -> None:
    from PIL import Image

    from lumo_uti.codecs.image_io import fit_square, to_rgb

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    # Only photos with a clear licence ship (chelsea, coffee: CC0; rocket: public domain);
    # motorcycle_left (Middlebury 2014) states none, so it stays out of the package.
    photos = [p for p in sorted(src.glob("photo_*.png")) if "motorcycle" not in p.name]
    chosen = photos + sorted(src.glob("drawn_*.png"))[:12]
    for path in chosen:
        with Image.open(path) as im:
            fit_square(to_rgb(im), 256).save(dest / path.name, optimize=True)


def _audio_samples(src: Path, dest: Path) -> None:
    import soundfile

    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    by_voice: dict[str, Path] = {}
    for path in sorted(src.glob("speech_*.wav")):
        by_voice.setdefault(path.stem.rsplit("_", 1)[0], path)
    chosen = list(by_voice.values())[:6] + sorted(src.glob("speech_*.wav"))[1:3]
    # Music, but no noise clip: SI-SNR of coded white noise says nothing about the codec and
    # would dominate the mean that the audio gate checks.
    chosen += sorted(src.glob("music_*.wav"))[:2]
    for path in dict.fromkeys(chosen):
        samples, rate = soundfile.read(str(path), dtype="float32")
        soundfile.write(dest / path.name, samples, rate, subtype="PCM_16")


if __name__ == "__main__":
    main()
