"""Helpers for the lumo-vq tests: tiny image folders, training runs, determinism checks."""

from __future__ import annotations


def training_images(root, n: int, seed: int):
    """``n`` drawn 64-pixel images (``drawn_*``) and one more as ``photo_x.png`` in ``root``; returns ``root``."""
    from lumo_model.codec import corpus

    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        corpus.procedural_image(seed + i, 64).save(root / f"drawn_{i}.png")
    corpus.procedural_image(seed + 99, 64).save(root / "photo_x.png")
    return root


def train_and_eval_folders(tmp_path_factory, name: str):
    """A training folder (3 drawn images + a photo) and a disjoint evaluation folder (2 + a photo)."""
    root = tmp_path_factory.mktemp(name)
    return training_images(root / "train", 3, 0), training_images(root / "eval", 2, 1000)


def train_in_stops(train, out, evald, config) -> tuple[dict, int]:
    """Run ``train_image_codec`` with a time limit that stops it at every checkpoint, rerunning the
    same call until it finishes; returns (its report, the number of stops)."""
    from lumo_model.codec.train import train_image_codec
    from lumo_model.errors import TimeUp

    stops = 0
    while True:
        try:
            return train_image_codec(train, out, eval_data=evald, config=config, progress=False,
                                     time_limit_s=1e-9), stops
        except TimeUp:
            stops += 1


def same_weights(codec_a, codec_b) -> bool:
    """Whether two codec directories hold bit-identical ``model.safetensors`` tensors (the same names)."""
    import torch
    from safetensors.torch import load_file

    a, b = (load_file(str(d / "model.safetensors")) for d in (codec_a, codec_b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def encodes_at_thread_counts_and_batch_splits(codec, x) -> list:
    """The codes of images ``x`` (5 of them) encoded at 1, 2 and 3 threads, each whole, one by one
    and split 2 + 3; the thread count is restored afterwards."""
    import torch

    threads = torch.get_num_threads()
    try:
        results = []
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            results.append(codec.encode_tensor(x))
            results.append(torch.cat([codec.encode_tensor(x[i:i + 1]) for i in range(len(x))]))
            results.append(torch.cat([codec.encode_tensor(x[:2]), codec.encode_tensor(x[2:])]))
    finally:
        torch.set_num_threads(threads)
    return results
