"""``lumo train-codec``: train the ``lumo-vq`` image and ``lumo-rvq`` audio codecs.

Both follow the same two stages, each checkpointed so a killed run resumes
where it stopped (same seed, same result). ``OUT/checkpoint`` is a run folder
of ``lumo_model.checkpoint``: its step number counts the run's checkpoints
(each one is the previous one's step + 1); where training stands goes in the
state (``stage`` plus the k-means ``iteration`` (and ``codebook``, audio) or
the refinement ``step``), the codebooks in the tensor group ``codebook`` /
``codebooks``, the trained module's weights in ``model`` and AdamW's state as
the checkpoint's optimizer (refinement checkpoints only).

1. **Codebooks by k-means** on ``lumo_uti.ops.vq_search`` with dead-code
   restarts (``kmeans``): image blocks ``patch x patch x 3`` for ``lumo-vq``
   (with ``predict``, their errors from a least-squares block predictor fitted
   first on the same crops; the predictor goes in the ``codebook`` group);
   MDCT frames, one residual stage after another, for ``lumo-rvq`` (entry 0 of
   every audio codebook pinned to zero: silence in, silence out), then
   ``refine_iterations`` passes of joint refinement of all the audio codebooks
   (``rvq_refine_step``; state ``stage: refine`` and its ``iteration``).
2. **Decoder refinement**: the codebooks are fixed by stage 1. Image: the
   context decoder, the full-resolution refiner and any learned encoder learn,
   with AdamW, L1 + (1 - SSIM) (+ MSE, + commitment; ``ImageTrainConfig``) with
   straight-through codes; the evaluation photos are measured every
   ``eval_every`` steps. Audio: the post-filter learns the mean squared error.
   ``--init-codebook`` replaces the image k-means by an existing codec's
   codebook; a time limit stops a run at a checkpoint (``TimeUp``).

Then a final evaluation on ``--eval-data`` (PSNR/SSIM/block-edge ratio at 256 x 256
and codebook usage for images; SI-SNR, mel and multi-resolution STFT distances and
per-codebook usage for audio) and the export: ``OUT/codec`` is a codec
directory (``lumo-vq:OUT/codec`` / ``lumo-rvq:OUT/codec``) and
``OUT/eval.json`` holds the measurements. ``OUT/log.jsonl`` records every
logged step.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from lumo_uti._io import atomic_write_text

from .. import checkpoint
from ..errors import CheckpointError, TimeUp
from .corpus import files
from .kmeans import kmeans, rvq_refine_step

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff")
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class Progress:
    """A one-line progress bar on stderr (rewritten in place on a terminal, one line per update otherwise)."""

    def __init__(self, label: str, total: int, enabled: bool = True):
        self.label, self.total, self.enabled = label, max(total, 1), enabled
        self.start = time.monotonic()
        self.tty = sys.stderr.isatty()
        self.last = 0.0

    def update(self, done: int, note: str = "") -> None:
        if not self.enabled:
            return
        now = time.monotonic()
        if not self.tty and done < self.total and now - self.last < 5.0:
            return  # logs: at most one line per 5 s
        self.last = now
        frac = done / self.total
        eta = (now - self.start) / max(frac, 1e-9) * (1 - frac) if done else float("nan")
        bar = "#" * int(24 * frac)
        line = f"{self.label} [{bar:<24}] {done}/{self.total} {note} eta {eta:5.0f}s"
        print(("\r" if self.tty else "") + line, end="" if self.tty else "\n", file=sys.stderr, flush=True)
        if self.tty and done >= self.total:
            print(file=sys.stderr)


@dataclass
class ImageTrainConfig:
    patch: int = 8
    codebook_size: int = 16384
    kmeans_samples: int = 1_000_000
    kmeans_iterations: int = 20
    # A lumo-vq codec directory whose codebook replaces stage 1 (k-means), e.g. an earlier run's
    # codec trained with the same patch, codebook size and data; "" = run k-means.
    init_codebook: str = ""
    # A lumo-vq codec directory whose decoder and refiner (and encoder) weights start the decoder
    # stage: fine-tuning instead of training from random weights. Its architecture must match; its
    # codebook and deblocking weights are not used. "" = random initial weights.
    init_decoder: str = ""
    # Share of the k-means blocks and decoder crops cut from photos (files named photo_*) when the data
    # holds both photos and other images; photo crops also get a random quarter turn. None: every
    # scaled view of every image equally likely (the first codecs' sampling, in which the 17
    # photos gave about 4% of the blocks beside 400 drawn images).
    photo_share: float | None = 0.2
    # The same share for the decoder's crops (None: photo_share). The k-means share is held down by
    # the codebook usage of the evaluation split (mostly drawn images); the decoder's is not.
    decoder_photo_share: float | None = None
    # Block prediction (lumo_uti.codecs.block_prediction): each code quantises what the block's
    # reconstructed neighbours do not predict; k-means then runs on prediction errors of crops of
    # ``crop`` pixels, the predictor being fitted (least squares) on the same crops first.
    predict: bool = False
    decoder_channels: int = 160
    decoder_blocks: int = 3
    encoder_channels: int = 96
    encoder_blocks: int = 0
    refine_channels: int = 24
    refine_blocks: int = 1
    refine_extra: int = 4
    decoder_steps: int = 5000
    batch_size: int = 16
    crop: int = 96
    lr: float = 1e-3
    # Loss on pixels in [0, 1]: l1_weight * L1 + ssim_weight * (1 - SSIM) + mse_weight * MSE,
    # plus commitment * ||latents - looked-up code||^2 when there is an encoder.
    l1_weight: float = 0.16
    ssim_weight: float = 0.84
    mse_weight: float = 0.0
    commitment: float = 0.25
    scales: tuple[float, ...] = (1.0, 0.75, 0.5, 0.35)
    seed: int = 0
    save_every: int = 100
    eval_every: int = 500
    eval_size: int = 256


@dataclass
class AudioTrainConfig:
    sample_rate: int = 16000
    hop: int = 256
    num_codebooks: int = 8
    codebook_size: int = 1024
    kmeans_iterations: int = 12
    # Joint refinement passes after the stage-by-stage k-means (``rvq_refine_step``).
    refine_iterations: int = 10
    # The post-filter is off by default: on the first codec it added 0.02 dB SI-SNR and raised the
    # mel distance (1.47 -> 1.56), painting low-level sound over digital silence.
    postfilter_channels: int = 256
    postfilter_blocks: int = 0
    postfilter_steps: int = 1500
    batch_size: int = 16
    segment_frames: int = 64
    lr: float = 1e-3
    seed: int = 0
    save_every: int = 100


# -- shared ----------------------------------------------------------------------------
# The integer fields the state of each stage's checkpoints holds.
_STAGE_FIELDS = {"image": {"kmeans": ("iteration",), "decoder": ("step",)},
                 "audio": {"kmeans": ("codebook", "iteration"), "refine": ("iteration",), "postfilter": ("step",)}}


class _Run:
    """Output folder bookkeeping: log.jsonl, checkpoints, the config the run was started with."""

    def __init__(self, out: str | Path, config: Any, kind: str, time_limit_s: float | None = None):
        if time_limit_s is not None and not time_limit_s > 0:
            raise ValueError(f"the time limit must be a positive number of seconds, got {time_limit_s}")
        self.deadline = None if time_limit_s is None else time.monotonic() + time_limit_s
        self.out = Path(out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt = self.out / "checkpoint"
        self.saved = 0  # step number of the run's last checkpoint
        self.kind = kind
        self.config = asdict(config)
        saved = self.out / "train_config.json"
        if saved.is_file():
            previous = json.loads(saved.read_text())
            if previous.get("config") != json.loads(json.dumps(self.config)):
                diff = sorted(k for k in self.config if previous.get("config", {}).get(k) != json.loads(json.dumps(self.config[k])))
                raise ValueError(f"{self.out} holds a run with other settings ({diff}); use a new --out or the same settings")
        else:
            atomic_write_text(saved, json.dumps({"kind": kind, "config": self.config}, indent=2) + "\n")

    def resume(self) -> checkpoint.Checkpoint | None:
        """The run's last checkpoint (its state checked against this kind of run), or None."""
        # A state.json without latest.json is no run folder of this format: load says so.
        if checkpoint.latest(self.ckpt) is None and not (self.ckpt / "state.json").is_file():
            return None
        ckpt = checkpoint.load(self.ckpt)
        fields = _STAGE_FIELDS[self.kind].get(ckpt.state.get("stage"))
        if fields is None or not all(isinstance(ckpt.state.get(k), int) for k in fields):
            raise CheckpointError(f"checkpoint {ckpt.path}: not a train-codec {self.kind} checkpoint "
                                  f"(state {ckpt.state})")
        self.saved = ckpt.step
        return ckpt

    def save(self, state: dict[str, Any], tensors: dict[str, dict[str, torch.Tensor]],
             optimizer: torch.optim.Optimizer | None = None) -> None:
        """Write the run's next checkpoint (step = the last one's + 1)."""
        self.saved += 1
        checkpoint.save(self.ckpt, self.saved, tensors=tensors, optimizer=optimizer, state=state)

    def log(self, record: dict[str, Any]) -> None:
        with open(self.out / "log.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")

    def check_time(self, stage: str, position: int) -> None:
        """Call right after a checkpoint: stop the run (``TimeUp``) once its time limit has passed."""
        if self.deadline is not None and time.monotonic() >= self.deadline:
            raise TimeUp(stage, position)


def _adam_stage(run: _Run, module: torch.nn.Module, steps: int, lr: float, save_every: int, progress: bool,
                loss_fn: Callable[[int], torch.Tensor], extra_tensors: dict[str, dict[str, torch.Tensor]],
                stage_name: str, start_step: int, resumed: checkpoint.Checkpoint | None,
                evaluate: tuple[int, Callable[[], dict[str, Any]]] | None = None) -> None:
    """Train ``module`` for ``steps`` Adam steps (cosine decay), checkpointing every ``save_every``.

    ``extra_tensors``: tensor groups saved beside the module's (``model``); ``resumed``: the
    checkpoint to take AdamW's state from (None or one without it: a fresh optimizer).
    ``evaluate``: (every, fn): every ``every`` steps ``fn()``'s measurements go to the log (they use
    no randomness, so they do not change the training).
    """
    params = [p for p in module.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    if resumed is not None:
        resumed.load_optimizer(opt)
    bar = Progress(stage_name, steps, progress)

    def save(step: int) -> None:
        run.save({"stage": stage_name, "step": step}, {**extra_tensors, "model": module.state_dict()}, opt)

    module.train()
    recent: list[float] = []
    for step in range(start_step, steps):
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps)) * min(1.0, (step + 1) / 50)
        loss = loss_fn(step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        recent.append(float(loss.detach()))
        if (step + 1) % 20 == 0 or step + 1 == steps:
            run.log({"stage": stage_name, "step": step + 1, "loss": sum(recent) / len(recent)})
            bar.update(step + 1, f"loss {sum(recent) / len(recent):.5f}")
            recent = []
        if evaluate is not None and evaluate[0] > 0 and (step + 1) % evaluate[0] == 0:
            module.eval()
            with torch.no_grad():
                measured = evaluate[1]()
            module.train()
            run.log({"stage": "eval", "step": step + 1, **measured})
            _say(progress, f"{stage_name} step {step + 1}: " + ", ".join(f"{k} {v:.4g}" for k, v in measured.items()))
        if (step + 1) % save_every == 0 or step + 1 == steps:
            save(step + 1)
            if step + 1 < steps:
                run.check_time(stage_name, step + 1)
    module.eval()


def _load_trained_module(model: torch.nn.Module, ckpt: checkpoint.Checkpoint | None) -> None:
    """Load the module weights a refinement-stage checkpoint holds (none before its first save)."""
    if ckpt is not None and ckpt.state["stage"] in ("decoder", "postfilter") and ckpt.state["step"] > 0:
        model.load_state_dict(ckpt.tensors("model"))


# -- images ----------------------------------------------------------------------------
def _load_images(folder: str | Path, *, names: list[str] | None = None) -> list[Any]:
    """The RGB images under ``folder`` (sorted by path); their file names are appended to ``names``."""
    from PIL import Image, UnidentifiedImageError

    from lumo_uti.codecs.image_io import to_rgb

    images = []
    for path in files(folder, IMAGE_SUFFIXES):
        try:
            with Image.open(path) as im:
                images.append(to_rgb(im, str(path)).copy())
        except (UnidentifiedImageError, OSError) as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
        if names is not None:
            names.append(path.name)
    return images


def _image_pool(images: list[Any], scales: tuple[float, ...], min_side: int, *,
                allow_empty: bool = False) -> list[torch.Tensor]:
    """Each image at each scale (bicubic) as ``[3, H, W]`` in [-1, 1]; too-small versions skipped."""
    from PIL import Image

    pool = []
    for image in images:
        for s in scales:
            w, h = round(image.width * s), round(image.height * s)
            if min(w, h) < min_side:
                continue
            im = image if s == 1.0 else image.resize((w, h), Image.Resampling.BICUBIC)
            pool.append(torch.from_numpy(np.asarray(im, np.float32) / 127.5 - 1).permute(2, 0, 1).contiguous())
    if not pool and not allow_empty:
        raise ValueError(f"no training image is at least {min_side} pixels on its shorter side")
    return pool


def _random_crop(pool: list[torch.Tensor], size: int, rng: np.random.Generator) -> torch.Tensor:
    img = pool[rng.integers(len(pool))]
    _, h, w = img.shape
    y, x = rng.integers(0, h - size + 1), rng.integers(0, w - size + 1)
    crop = img[:, y:y + size, x:x + size]
    if rng.random() < 0.5:
        crop = crop.flip(-1)
    return crop


def _random_crops(pool: list[torch.Tensor], n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    return torch.stack([_random_crop(pool, size, rng) for _ in range(n)])


class _ImagePools:
    """The training images' scaled views, split into photos (files named ``photo_*``) and the others."""

    def __init__(self, images: list[Any], names: list[str], scales: tuple[float, ...], min_side: int):
        views = [_image_pool([image], scales, min_side, allow_empty=True) for image in images]
        self.all = [v for per_image in views for v in per_image]  # image by image: the order of old runs
        if not self.all:
            raise ValueError(f"no training image is at least {min_side} pixels on its shorter side")
        # The same tensors, by kind (a view of a photo_* file is a photo).
        self.photos = [v for per_image, name in zip(views, names) if name.startswith("photo_") for v in per_image]
        self.others = [v for per_image, name in zip(views, names) if not name.startswith("photo_")
                       for v in per_image]

    def crops(self, n: int, size: int, rng: np.random.Generator, photo_share: float | None) -> torch.Tensor:
        """``n`` random crops ``[n, 3, size, size]``, the same for the same ``rng`` state.

        A share ``photo_share`` of them from photos, each turned by a random quarter turn; with
        ``None``, or with one kind of image only, every view is equally likely (no turns).
        """
        if photo_share is None or not (self.photos and self.others):
            return _random_crops(self.all, n, size, rng)
        crops = []
        for _ in range(n):
            if rng.random() < photo_share:
                crops.append(torch.rot90(_random_crop(self.photos, size, rng), int(rng.integers(4)), (1, 2)))
            else:
                crops.append(_random_crop(self.others, size, rng))
        return torch.stack(crops)


def _image_block_samples(pools: _ImagePools, n: int, patch: int, rng: np.random.Generator,
                         photo_share: float | None) -> torch.Tensor:
    """n random (unaligned, sometimes mirrored) ``patch x patch`` blocks as ``[n, 3 * patch * patch]``."""
    per_crop = 64  # blocks cut from each 64-block crop
    crops = pools.crops(math.ceil(n / per_crop), patch * 8, rng, photo_share)
    return F.pixel_unshuffle(crops, patch).permute(0, 2, 3, 1).reshape(-1, 3 * patch * patch)[:n].contiguous()


def _prediction_error_samples(pools: _ImagePools, cfg: ImageTrainConfig, rng: np.random.Generator,
                              predictor: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """k-means data for block prediction: ``cfg.kmeans_samples`` prediction errors ``[n, D]`` of the
    blocks of random ``cfg.crop``-pixel crops, and the predictor (fitted on those crops unless given,
    as when a run resumes; rounded to float16, as it will be stored)."""
    from lumo_uti.codecs.block_prediction import fit_predictor, open_loop_residuals

    side = cfg.crop - cfg.crop % cfg.patch
    per_crop = (side // cfg.patch) ** 2
    crops = math.ceil(cfg.kmeans_samples / per_crop)
    grids = [F.pixel_unshuffle(pools.crops(min(1024, crops - start), side, rng, cfg.photo_share), cfg.patch)
             .permute(0, 2, 3, 1).contiguous() for start in range(0, crops, 1024)]
    if predictor is None:
        predictor = fit_predictor(grids).to(torch.float16).float()
    errors = torch.cat([open_loop_residuals(g, predictor) for g in grids])
    return errors[:cfg.kmeans_samples].contiguous(), predictor


def _image_model(cfg: ImageTrainConfig):
    from lumo_uti.codecs.lumo_vq import PatchVQ

    return PatchVQ(patch=cfg.patch, codebook_size=cfg.codebook_size, decoder_channels=cfg.decoder_channels,
                   decoder_blocks=cfg.decoder_blocks, encoder_channels=cfg.encoder_channels,
                   encoder_blocks=cfg.encoder_blocks, refine_channels=cfg.refine_channels,
                   refine_blocks=cfg.refine_blocks, refine_extra=cfg.refine_extra, predict=int(cfg.predict))


def image_loss(model, x: torch.Tensor, cfg: ImageTrainConfig) -> torch.Tensor:
    """The training loss of ``model`` on images ``x`` ``[B, 3, H, W]`` in [-1, 1] (see ImageTrainConfig).

    Codes are the nearest codebook vectors to the (float32) latents; gradients pass
    the lookup straight through to the encoder.
    """
    from lumo_uti.ops import vq_search

    from .image_quality import ssim_map

    z = model.latents(x)
    with torch.no_grad():
        if model.predictor is not None:  # (no encoder: the codes are the model's own encode)
            codes = model.encode(x)
        else:
            codes = vq_search(z.detach().permute(0, 2, 3, 1).contiguous(), model.codebook)
        q = model.lookup(codes)
    y = model.decode_blocks(z + (q - z).detach() if model.encoder is not None else q)
    a, b = (y + 1) / 2, (x + 1) / 2
    loss = cfg.l1_weight * (a - b).abs().mean()
    if cfg.ssim_weight:
        loss = loss + cfg.ssim_weight * (1 - ssim_map(a, b).mean())
    if cfg.mse_weight:
        loss = loss + cfg.mse_weight * F.mse_loss(a, b)
    if model.encoder is not None and cfg.commitment:
        loss = loss + cfg.commitment * F.mse_loss(z, q)
    return loss


def _load_eval_photos(eval_data: str | Path, size: int) -> torch.Tensor | None:
    """The evaluation photos (files named ``photo_*``) at ``size`` x ``size`` in [-1, 1], or None."""
    from PIL import Image

    from lumo_uti.codecs.image_io import fit_square, images_to_tensor, to_rgb

    xs = []
    for path in files(eval_data, IMAGE_SUFFIXES):
        if path.name.startswith("photo_"):
            with Image.open(path) as im:
                xs.append(images_to_tensor([fit_square(to_rgb(im, str(path)).copy(), size)], (0.5,) * 3, (0.5,) * 3))
    return torch.cat(xs) if xs else None


def _quick_image_eval(model, photos: torch.Tensor) -> dict[str, float]:
    """Mean PSNR/SSIM/block-edge ratio of the photos, decoded as the codec would (8-bit rounding)."""
    from lumo_uti.metrics import psnr, ssim

    from .image_quality import block_edge_ratio

    device = next(model.parameters()).device
    ref = (photos + 1) / 2
    rec = torch.cat([model.decode(model.encode(x[None].to(device))).clamp(-1, 1).cpu() for x in photos])
    rec = ((rec + 1) / 2 * 255).round() / 255
    return {
        "photos_psnr_db": float(np.mean([psnr(r[None], t[None]) for r, t in zip(ref, rec)])),
        "photos_ssim": float(np.mean([ssim(r[None], t[None]) for r, t in zip(ref, rec)])),
        "photos_block_edge_ratio": float(np.mean([block_edge_ratio(t[None], model.patch) for t in rec])),
    }


def _codebook_from(directory: str, cfg: ImageTrainConfig) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The codebook (and block predictor, if any) of the lumo-vq codec in ``directory``, checked
    against the run's patch, size and ``predict``, and the codec's config."""
    from lumo_uti.codecs.hf_common import CodecError
    from lumo_uti.codecs.lumo_vq import load_model

    try:
        model, config = load_model(directory)
    except CodecError as e:
        raise ValueError(f"--init-codebook: {e}") from None
    want = (cfg.codebook_size, 3 * cfg.patch * cfg.patch)
    if tuple(model.codebook.shape) != want:
        raise ValueError(f"--init-codebook: {directory} has a codebook of shape {tuple(model.codebook.shape)}, "
                         f"this run needs {want} (codebook size x 3 * patch * patch)")
    if (model.predictor is not None) != bool(cfg.predict):
        raise ValueError(f"--init-codebook: {directory} is a codec {'with' if model.predictor is not None else 'without'} "
                         f"block prediction; give {'--predict' if model.predictor is not None else 'no --predict'} "
                         "(its codebook holds prediction errors only with prediction)")
    tensors = {"codebook": model.codebook.clone()}
    if model.predictor is not None:
        tensors["predictor"] = model.predictor.clone()
    return tensors, config


# The fields of an image run's config that say how its k-means codebook was made.
_CODEBOOK_FIELDS = ("patch", "codebook_size", "kmeans_samples", "kmeans_iterations", "photo_share", "scales", "seed",
                    "predict", "crop")


def _codebook_source(directory: str, meta: dict[str, Any]) -> dict[str, Any]:
    """Where the codebook of the lumo-vq codec in ``directory`` (config ``meta``) came from, for the config of a run that
    takes it (``--init-codebook``): that run's own k-means settings say nothing about its codebook.

    The codec's own ``codebook_source`` when it has one (its codebook was taken from another codec
    in turn), else its directory, training data and k-means settings as its ``config.json`` states
    them (with its ``init_codebook`` when it names one but predates this record).
    """
    if isinstance(meta.get("codebook_source"), dict):
        return meta["codebook_source"]
    trained = meta.get("train_config") or {}
    source = {"codec": str(directory), "trained_on": meta.get("trained_on")}
    source |= {k: trained[k] for k in _CODEBOOK_FIELDS if k in trained}
    return source | ({"init_codebook": trained["init_codebook"]} if trained.get("init_codebook") else {})


def _logged_codebook_source(out: Path) -> dict[str, Any] | None:
    """The ``codebook_source`` the run logged when it took its codebook from a codec (None if it did not)."""
    log = out / "log.jsonl"
    found = None
    for line in (log.read_text().splitlines() if log.is_file() else []):
        record = json.loads(line)
        if isinstance(record.get("codebook_source"), dict):
            found = record["codebook_source"]
    return found


def _decoder_weights_from(directory: str, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The trained weights (all but the codebook) of the lumo-vq codec in ``directory``, as float32,
    checked against ``model``'s; its deblocking weights, if any, are left out (refitted after training)."""
    from lumo_uti.codecs.hf_common import CodecError
    from lumo_uti.codecs.lumo_vq import load_model

    try:
        source, _ = load_model(directory)
    except CodecError as e:
        raise ValueError(f"--init-decoder: {e}") from None
    coding = {"codebook", "predictor"}  # what the run's own stage 1 gives
    theirs = {k: v for k, v in source.state_dict().items() if not k.startswith("deblock.")}
    ours = {k: v for k, v in model.state_dict().items() if k not in coding}
    differ = sorted(k for k in (ours.keys() | theirs.keys()) - coding
                    if k not in theirs or k not in ours or theirs[k].shape != ours[k].shape)
    if differ:
        raise ValueError(f"--init-decoder: {directory} has another architecture than this run "
                         f"(weights that differ or are missing: {', '.join(differ[:6])}"
                         f"{', ...' if len(differ) > 6 else ''}); give the same --decoder-channels, "
                         "--decoder-blocks, --refine-* and --encoder-* as that codec")
    return {k: theirs[k].float() for k in ours}


def train_image_codec(data: str | Path, out: str | Path, *, eval_data: str | Path | None = None,
                      config: ImageTrainConfig | None = None, device: str = "cpu", progress: bool = True,
                      name: str = "lumo-vq", time_limit_s: float | None = None) -> dict[str, Any]:
    """Train a ``lumo-vq`` codec on the images in ``data``; returns the evaluation (see module doc).

    ``time_limit_s``: stop at the first checkpoint after this many seconds by raising ``TimeUp``
    (the same call again continues the run exactly).
    """
    from lumo_uti.codecs.lumo_vq import save_model

    cfg = config or ImageTrainConfig()
    for field in ("photo_share", "decoder_photo_share"):
        value = getattr(cfg, field)
        if value is not None and not 0 <= value <= 1:
            raise ValueError(f"{field} must lie in [0, 1] (or be None), got {value}")
    decoder_share = cfg.photo_share if cfg.decoder_photo_share is None else cfg.decoder_photo_share
    torch.manual_seed(cfg.seed)  # decoder init: the same whether or not the run was resumed
    model = _image_model(cfg)
    # Checked before anything is written or computed: a wrong --init-decoder fails at once.
    initial = _decoder_weights_from(cfg.init_decoder, model) if cfg.init_decoder else None
    run = _Run(out, cfg, "image", time_limit_s)
    names: list[str] = []
    images = _load_images(data, names=names)
    pools = _ImagePools(images, names, cfg.scales, max(cfg.crop, cfg.patch * 8))
    pool = pools.all
    resumed = run.resume()
    state = resumed.state if resumed else {"stage": "kmeans", "iteration": 0}
    # The codebook (and, with --predict, the block predictor): in every checkpoint.
    coding = dict(resumed.tensors("codebook")) if resumed else {}
    _say(progress, f"train-codec image: {len(images)} images ({len(pool)} scaled views) from {data}"
         + (f"; resuming at {state['stage']} {state.get('iteration', state.get('step'))}" if resumed else ""))

    # Stage 1: k-means codebook on random image blocks (or an existing codec's codebook).
    if state["stage"] == "kmeans" and cfg.init_codebook:
        coding, source_config = _codebook_from(cfg.init_codebook, cfg)
        run.log({"stage": "kmeans", "init_codebook": cfg.init_codebook,
                 "codebook_source": _codebook_source(cfg.init_codebook, source_config)})
        state, resumed = {"stage": "decoder", "step": 0}, None
        run.save(state, {"codebook": coding})
    if state["stage"] == "kmeans":
        rng = np.random.default_rng(cfg.seed)
        if cfg.predict:
            predictor = coding.get("predictor")
            samples, predictor = _prediction_error_samples(pools, cfg, rng, predictor)
            coding["predictor"] = predictor
            if state["iteration"] == 0:
                run.log({"stage": "kmeans", "predictor_fitted": True,
                         "prediction_error_mse": float(samples.square().mean())})
        else:
            samples = _image_block_samples(pools, cfg.kmeans_samples, cfg.patch, rng, cfg.photo_share)
        bar = Progress("k-means", cfg.kmeans_iterations, progress)

        def on_iteration(i: int, centroids: torch.Tensor, stats: dict) -> None:
            run.log({"stage": "kmeans", "iteration": i + 1, **stats})
            bar.update(i + 1, f"mse {stats['mse']:.5f} dead {stats['dead']}")
            run.save({"stage": "kmeans", "iteration": i + 1}, {"codebook": {**coding, "codebook": centroids}})
            if i + 1 < cfg.kmeans_iterations:
                run.check_time("k-means iteration", i + 1)

        codebook = kmeans(samples, cfg.codebook_size, cfg.kmeans_iterations, seed=cfg.seed,
                          centroids=coding.get("codebook"), start=state["iteration"], on_iteration=on_iteration)
        # Stored in float16: the codebook the codec will search is the rounded one.
        coding["codebook"] = codebook.to(torch.float16).float()
        state, resumed = {"stage": "decoder", "step": 0}, None
        run.save(state, {"codebook": coding})
        del samples

    model.codebook.copy_(coding["codebook"])
    if model.predictor is not None:
        model.predictor.copy_(coding["predictor"])
    if initial is not None:
        model.load_state_dict({**model.state_dict(), **initial})
    model.to(device)
    # A checkpoint past step 0 holds trained weights: load them whether or not steps remain, so a
    # rerun after the last checkpoint (or a resume after a kill during export) exports them again.
    _load_trained_module(model, resumed)
    if state["stage"] == "decoder" and any(True for _ in model.parameters()) and state["step"] < cfg.decoder_steps:

        def loss_fn(step: int) -> torch.Tensor:
            rng = np.random.default_rng([cfg.seed, step])
            return image_loss(model, pools.crops(cfg.batch_size, cfg.crop, rng, decoder_share).to(device), cfg)

        photos = _load_eval_photos(eval_data, cfg.eval_size) if eval_data else None
        evaluate = (cfg.eval_every, lambda: _quick_image_eval(model, photos)) if photos is not None else None
        _adam_stage(run, model, cfg.decoder_steps, cfg.lr, cfg.save_every, progress, loss_fn,
                    {"codebook": coding}, "decoder", state["step"], resumed, evaluate)
    model.eval().cpu()
    codec_dir = run.out / "codec"
    codec_dir.mkdir(exist_ok=True)
    extra = {"trained_on": str(data), "train_config": run.config}
    source = _logged_codebook_source(run.out) if cfg.init_codebook else None
    if source is not None:
        extra["codebook_source"] = source
    save_model(model, codec_dir, name=name, extra=extra)
    report = evaluate_image_codec(codec_dir, eval_data, size=cfg.eval_size) if eval_data else {}
    report = {"codec": str(codec_dir), "kind": "lumo-vq", **report}
    atomic_write_text(run.out / "eval.json", json.dumps(report, indent=2) + "\n")
    return report


def fit_image_deblock(codec_dir: str | Path, data: str | Path, out: str | Path, *, taps: int = 3,
                      pattern: str = "photo_*", size: int = 256, iterations: int = 60,
                      progress: bool = True) -> dict[str, Any]:
    """Fit the learned deblocking of a trained ``lumo-vq`` codec; write the codec with it to ``out``.

    Everything else (codebook, encoder, decoder, refiner) is kept, so the codes are the same. The
    training images in ``data`` whose file names match ``pattern`` (default: the corpus's photos;
    ``"*"`` for all), shorter side resized to ``size`` and centre-cropped, are decoded once without
    deblocking; then the ``taps`` weights of ``BlockEdgeBlend`` minimise the squared error over all
    of them, by full-batch L-BFGS (a few parameters: seconds once decoded). A codec that already
    deblocks is refitted from scratch.

    Why squared error on photos: on the decoder's own loss (L1 + SSIM) the weights come out near
    zero (SSIM barely registers a block step), and on the corpus's drawn images, whose hard edges
    often fall on block boundaries, they come out small; the photos are what shows the grid.
    Returns the weights and the mean squared error before and after.
    """
    import fnmatch

    from PIL import Image

    from lumo_uti.codecs.image_io import fit_square, images_to_tensor, to_rgb
    from lumo_uti.codecs.lumo_vq import BlockEdgeBlend, load_model, save_model

    model, config = load_model(codec_dir)
    model.deblock = None
    blend = BlockEdgeBlend(taps, model.patch)
    paths = [p for p in files(data, IMAGE_SUFFIXES) if fnmatch.fnmatch(p.name, pattern)]
    if not paths:
        raise FileNotFoundError(f"no image in {data} matches {pattern!r}")
    refs, decoded = [], []
    bar = Progress("decode training images", len(paths), progress)
    with torch.no_grad():
        for i, path in enumerate(paths):
            with Image.open(path) as im:
                x = images_to_tensor([fit_square(to_rgb(im, str(path)).copy(), size)], (0.5,) * 3, (0.5,) * 3)
            refs.append(x)
            decoded.append(model.decode(model.encode(x)))
            bar.update(i + 1)
    ref, dec = torch.cat(refs), torch.cat(decoded)

    def loss_and_grad(backward: bool) -> float:
        total = 0.0
        for i in range(0, len(refs), 32):  # chunks: the intermediates of a few images at a time
            value = ((blend(dec[i:i + 32]) - ref[i:i + 32]) ** 2).sum() / ref.numel()
            if backward:
                value.backward()
            total += float(value.detach())
        return total

    with torch.no_grad():
        before = loss_and_grad(False)
    opt = torch.optim.LBFGS(blend.parameters(), lr=0.5, max_iter=iterations, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        return torch.tensor(loss_and_grad(True))

    opt.step(closure)
    with torch.no_grad():
        blend.taps.copy_(blend.taps.to(torch.float16).float())  # what the float16 file will hold
        after = loss_and_grad(False)
    model.deblock = blend.requires_grad_(False)
    # Squared error on [-1, 1] pixels; PSNR on [0, 1] is 10 log10(4 / mse).
    fitted = {"taps": [round(float(t), 6) for t in blend.taps], "mse_before": before, "mse_after": after,
              "images": len(refs), "data": str(data), "pattern": pattern, "size": size}
    _say(progress, f"deblock weights {fitted['taps']}: mean squared error on {len(refs)} training images "
         f"{before:.6f} -> {after:.6f}")
    keep = {k: v for k, v in config.items() if k in ("trained_on", "train_config", "codebook_source")}
    save_model(model, out, name=config.get("name", "lumo-vq"), extra={**keep, "deblock_fit": fitted})
    return fitted


@torch.inference_mode()
def evaluate_image_codec(codec_dir: str | Path, eval_data: str | Path, *, size: int = 256,
                         **options: Any) -> dict[str, Any]:
    """PSNR/SSIM/block-edge ratio at ``size`` x ``size`` (shorter side resized, centre crop) per image
    and on average, and codebook usage over all evaluation images (photos = files named ``photo_*``).
    ``options``: codec options (e.g. ``decode_views``)."""
    from lumo_uti.codecs.image_io import fit_square, images_to_tensor
    from lumo_uti.codecs.lumo_vq import LumoVQCodec
    from lumo_uti.metrics import codebook_usage, psnr, ssim

    from .image_quality import block_edge_ratio

    codec = LumoVQCodec(codec_dir, **options)
    paths = files(eval_data, IMAGE_SUFFIXES)
    per_image, all_codes, photo_codes = {}, [], []
    from PIL import Image

    from lumo_uti.codecs.image_io import to_rgb

    for path in paths:
        with Image.open(path) as im:
            rgb = to_rgb(im, str(path)).copy()
        x = images_to_tensor([fit_square(rgb, size)], codec.mean, codec.std)
        codes = codec.encode_tensor(x)
        y = codec.decode_tensor(codes).clamp(-1, 1)
        ref, rec = (x + 1) / 2, (y + 1) / 2
        rec = (rec * 255).round() / 255  # what a PNG of the decode holds
        per_image[path.name] = {"psnr_db": psnr(ref, rec), "ssim": ssim(ref, rec),
                                "block_edge_ratio": block_edge_ratio(rec, codec.downsample)}
        all_codes.append(codes.flatten())
        if path.name.startswith("photo_"):
            photo_codes.append(codes.flatten())
    photos = {k: v for k, v in per_image.items() if k.startswith("photo_")}

    def mean(d: dict, key: str) -> float:
        return float(np.mean([v[key] for v in d.values()])) if d else float("nan")

    usage = codebook_usage(torch.cat(all_codes), codec.codebook_size)
    usage.pop("histogram")
    out = {
        "size": size,
        "decode_views": codec.decode_views,
        "images": len(per_image),
        "psnr_db": mean(per_image, "psnr_db"),
        "ssim": mean(per_image, "ssim"),
        "photos_psnr_db": mean(photos, "psnr_db"),
        "photos_ssim": mean(photos, "ssim"),
        "block_edge_ratio": mean(per_image, "block_edge_ratio"),
        "photos_block_edge_ratio": mean(photos, "block_edge_ratio"),
        "codebook_usage": usage,
        "per_image": per_image,
    }
    if photo_codes:
        photo_usage = codebook_usage(torch.cat(photo_codes), codec.codebook_size)
        photo_usage.pop("histogram")
        out["photos_codebook_usage"] = photo_usage
    return out


# -- audio -----------------------------------------------------------------------------
def _load_waves(folder: str | Path, sample_rate: int) -> list[tuple[str, torch.Tensor]]:
    from lumo_uti.codecs.audio_io import prepare
    from lumo_uti.media import Audio

    waves = []
    for path in files(folder, AUDIO_SUFFIXES):
        try:
            audio = Audio.load(path)
        except ValueError as e:
            raise ValueError(f"cannot read audio {path}: {e}") from None
        waves.append((path.name, prepare(audio, sample_rate, 1, str(path))[0]))
    return waves


def train_audio_codec(data: str | Path, out: str | Path, *, eval_data: str | Path | None = None,
                      config: AudioTrainConfig | None = None, device: str = "cpu", progress: bool = True,
                      name: str = "lumo-rvq", time_limit_s: float | None = None) -> dict[str, Any]:
    """Train a ``lumo-rvq`` codec on the audio files in ``data``; returns the evaluation (see module doc).

    ``time_limit_s``: as for ``train_image_codec``.
    """
    from lumo_uti.codecs.lumo_rvq import MdctRVQ, save_model
    from lumo_uti.ops import rvq_decode, rvq_encode

    cfg = config or AudioTrainConfig()
    run = _Run(out, cfg, "audio", time_limit_s)
    waves = [w for _, w in _load_waves(data, cfg.sample_rate)]
    torch.manual_seed(cfg.seed)  # post-filter init: the same whether or not the run was resumed
    model = MdctRVQ(sample_rate=cfg.sample_rate, hop=cfg.hop, num_codebooks=cfg.num_codebooks,
                    codebook_size=cfg.codebook_size, postfilter_channels=cfg.postfilter_channels,
                    postfilter_blocks=cfg.postfilter_blocks)
    frames = torch.cat([model.analyse(w[None])[0] for w in waves])  # [N, hop]
    resumed = run.resume()
    state = resumed.state if resumed else {"stage": "kmeans", "codebook": 0, "iteration": 0}
    codebooks = (resumed.tensors("codebooks")["codebooks"] if resumed  # in every checkpoint
                 else torch.zeros(cfg.num_codebooks, cfg.codebook_size, cfg.hop))
    _say(progress, f"train-codec audio: {len(waves)} files, {frames.shape[0]} frames "
         f"({frames.shape[0] * cfg.hop / cfg.sample_rate / 60:.1f} min) from {data}"
         + (f"; resuming at {state['stage']}" if resumed else ""))

    # Stage 1: residual k-means, one codebook after another.
    if state["stage"] == "kmeans":
        done = state["codebook"]
        bar = Progress("residual k-means", cfg.num_codebooks * cfg.kmeans_iterations, progress)
        residual = frames - rvq_decode(rvq_encode(frames, codebooks[:done]), codebooks[:done]) if done else frames.clone()
        for q in range(done, cfg.num_codebooks):
            start = state["iteration"] if q == done else 0

            def on_iteration(i: int, centroids: torch.Tensor, stats: dict, q: int = q) -> None:
                run.log({"stage": "kmeans", "codebook": q, "iteration": i + 1, **stats})
                bar.update(q * cfg.kmeans_iterations + i + 1, f"codebook {q + 1} mse {stats['mse']:.2e}")
                codebooks[q] = centroids
                run.save({"stage": "kmeans", "codebook": q, "iteration": i + 1}, {"codebooks": {"codebooks": codebooks}})
                if i + 1 < cfg.kmeans_iterations:
                    run.check_time(f"k-means of codebook {q + 1}, iteration", i + 1)

            # Entry 0 of every codebook stays zero: digital silence encodes to code 0 at every stage
            # and decodes to exact silence (before, 20% of an eval sentence's samples were silence
            # decoded as faint noise, which the log-mel distance punishes hard).
            centroids = kmeans(residual, cfg.codebook_size, cfg.kmeans_iterations, seed=cfg.seed + q,
                               centroids=codebooks[q].clone() if start else None, start=start,
                               on_iteration=on_iteration, pin_zero=True)
            codebooks[q] = centroids.to(torch.float16).float()  # stored in float16
            residual -= rvq_decode(rvq_encode(residual, codebooks[q:q + 1]), codebooks[q:q + 1])
            run.save({"stage": "kmeans", "codebook": q + 1, "iteration": 0}, {"codebooks": {"codebooks": codebooks}})
        state = {"stage": "refine", "iteration": 0}
        run.save(state, {"codebooks": {"codebooks": codebooks}})

    # Stage 2: joint refinement of all codebooks (each pass one checkpoint).
    if state["stage"] == "refine":
        bar = Progress("joint refinement", cfg.refine_iterations, progress)
        for i in range(state["iteration"], cfg.refine_iterations):
            stats = rvq_refine_step(frames, codebooks, pin_zero=True, dtype=torch.float16)
            run.log({"stage": "refine", "iteration": i + 1, **stats})
            bar.update(i + 1, f"mse {stats['mse']:.3e} -> {stats['mse_refit']:.3e}")
            run.save({"stage": "refine", "iteration": i + 1}, {"codebooks": {"codebooks": codebooks}})
            if i + 1 < cfg.refine_iterations:
                run.check_time("joint refinement, pass", i + 1)
        state, resumed = {"stage": "postfilter", "step": 0}, None
        run.save(state, {"codebooks": {"codebooks": codebooks}})

    model.codebooks.copy_(codebooks)
    _load_trained_module(model, resumed)  # see train_image_codec
    if model.postfilter is not None and state["stage"] == "postfilter" and state["step"] < cfg.postfilter_steps:
        # Fixed codes: quantise every frame once (on the CPU, where the data is), then train on
        # random segments of whole files on `device`.
        coefs = [model.analyse(w[None])[0] for w in waves]
        quantised = [rvq_decode(rvq_encode(c, model.codebooks), model.codebooks) for c in coefs]
        model.to(device)
        usable = [i for i, c in enumerate(coefs) if c.shape[0] >= cfg.segment_frames]
        if not usable:
            raise ValueError(f"no training file is at least {cfg.segment_frames} frames long")

        def loss_fn(step: int) -> torch.Tensor:
            rng = np.random.default_rng([cfg.seed, step])
            xs, qs = [], []
            for _ in range(cfg.batch_size):
                i = usable[rng.integers(len(usable))]
                s = rng.integers(0, coefs[i].shape[0] - cfg.segment_frames + 1)
                xs.append(coefs[i][s:s + cfg.segment_frames])
                qs.append(quantised[i][s:s + cfg.segment_frames])
            x, q = torch.stack(xs).to(device), torch.stack(qs).to(device)
            return F.mse_loss(model.refine(q), x)

        _adam_stage(run, model, cfg.postfilter_steps, cfg.lr, cfg.save_every, progress, loss_fn,
                    {"codebooks": {"codebooks": model.codebooks}}, "postfilter", state["step"], resumed)
    model.eval().cpu()
    codec_dir = run.out / "codec"
    codec_dir.mkdir(exist_ok=True)
    save_model(model, codec_dir, name=name, extra={"trained_on": str(data), "train_config": run.config})
    report = evaluate_audio_codec(codec_dir, eval_data) if eval_data else {}
    report = {"codec": str(codec_dir), "kind": "lumo-rvq", **report}
    atomic_write_text(run.out / "eval.json", json.dumps(report, indent=2) + "\n")
    return report


@torch.inference_mode()
def evaluate_audio_codec(codec_dir: str | Path, eval_data: str | Path, **options: Any) -> dict[str, Any]:
    """SI-SNR, mel and MR-STFT distances per file and by group (speech/music/noise: the file name's
    first word), and per-codebook usage over all files. ``options``: codec options (e.g. ``beam``)."""
    from lumo_uti.codecs.lumo_rvq import LumoRVQCodec
    from lumo_uti.metrics import codebook_usage, mel_distance, multi_resolution_stft_distance, si_snr

    codec = LumoRVQCodec(codec_dir, **options)
    sr = codec.sample_rate
    per_file, codes_all = {}, []
    for name, wave in _load_waves(eval_data, sr):
        codes = codec.encode_tensor(wave[None, None])
        rec = codec.decode_tensor(codes)[0, 0, : wave.shape[0]]
        per_file[name] = {
            "si_snr_db": si_snr(wave, rec),
            "mel_distance": mel_distance(wave, rec, sr),
            "stft_distance": multi_resolution_stft_distance(wave, rec, sr),
        }
        codes_all.append(codes[0])
    groups: dict[str, dict[str, float]] = {}
    for group in sorted({n.split("_")[0] for n in per_file}):
        members = [v for n, v in per_file.items() if n.split("_")[0] == group]
        groups[group] = {k: float(np.mean([m[k] for m in members])) for k in members[0]} | {"files": len(members)}
    codes = torch.cat(codes_all)
    usage = []
    for q in range(codes.shape[1]):
        u = codebook_usage(codes[:, q], codec.codebook_size)
        u.pop("histogram")
        usage.append(u)
    return {
        "sample_rate": sr,
        "frame_rate": codec.frame_rate,
        "kbps": codec.frame_rate * codec.num_codebooks * math.log2(codec.codebook_size) / 1000,
        "files": len(per_file),
        "groups": groups,
        "codebook_usage": usage,
        "per_file": per_file,
    }


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr, flush=True)
