"""The codec protocols: ``ImageCodec`` and ``AudioCodec``.

A codec turns media into codes and back. Subclasses implement the tensor-level
``encode_tensor`` / ``decode_tensor`` in the model's own space; these base
classes add the media side: preprocessing (``image_io`` / ``audio_io``
policies), batching with shape buckets (items of equal shape share one forward
pass, so batched codes equal one-at-a-time codes), and conversion to
``ImageCodes`` / ``AudioCodes``.

Codecs pickle by value (model, options, identity) at any point of their life:
caches of packed codebooks are dropped and rebuilt on the next encode, and
tensors are written as dtype, shape, device and bytes, so that two pickles of
equal codecs are equal bytes (torch's own tensor pickling writes storage
addresses). The Hugging Face codecs pickle by reference to their directory
instead (``hf_common.reduce_by_directory``).
"""

from __future__ import annotations

import io
import pickle
from abc import ABC, abstractmethod
from collections import defaultdict
from typing import Any, Sequence

import torch

from ..media import Audio
from ..segments import AudioCodes, ImageCodes
from . import audio_io, image_io


def _as_list(items: Any, single_type: type) -> tuple[list, bool]:
    if isinstance(items, single_type):
        return [items], True
    if isinstance(items, (list, tuple)):
        return list(items), False
    raise TypeError(f"expected a {single_type.__name__} or a list of them, got {type(items).__name__}")


def _buckets(shapes: Sequence[tuple]) -> dict[tuple, list[int]]:
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, shape in enumerate(shapes):
        groups[shape].append(index)
    return groups


# Fixed, so that the bytes do not depend on the protocol the outer pickle uses.
_STATE_PROTOCOL = 4


class _StatePickler(pickle._Pickler):
    """A pickler whose bytes depend on values, not on object identities or addresses.

    Tensors and parameters go as (bytes, dtype, shape, device) (torch writes
    storage addresses), and strings are not memoized (equal strings may or may
    not be one object: interning, and an unpickled copy shares differently), as
    ``datasets``' hashing pickler does. The pure-Python pickler, as the C one
    always memoizes strings; the objects pickled here are few and the tensor
    bytes go out in one write each.
    """

    def memoize(self, obj: Any) -> None:
        if type(obj) is not str:
            super().memoize(obj)

    def reducer_override(self, obj: Any) -> Any:
        if type(obj) is torch.Tensor or type(obj) is torch.nn.Parameter:
            t = obj.detach().to("cpu").contiguous()
            data = t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b""
            return _rebuild_tensor, (data, t.dtype, tuple(t.shape), str(obj.device),
                                     type(obj) is torch.nn.Parameter, obj.requires_grad)
        return NotImplemented


def _rebuild_tensor(data: bytes, dtype: torch.dtype, shape: tuple, device: str, parameter: bool,
                    requires_grad: bool) -> torch.Tensor:
    t = torch.frombuffer(bytearray(data), dtype=dtype) if data else torch.empty(0, dtype=dtype)
    t = t.reshape(shape).to(device)
    if parameter:
        return torch.nn.Parameter(t, requires_grad=requires_grad)
    return t.requires_grad_() if requires_grad else t


def _restore_codec(payload: bytes) -> "Codec":
    cls, state = pickle.loads(payload)
    codec = cls.__new__(cls)
    codec.__dict__.update(state)
    return codec


class Codec(ABC):
    """What every codec has: identity, codebook geometry, device.

    Picklable by value at any time (see the module docstring); the copy's
    packed-codebook caches start empty.
    """

    modality: str
    kind: str  # backend name, e.g. "hf-janus"
    codebook_size: int
    num_codebooks: int

    @property
    @abstractmethod
    def identity(self) -> dict[str, Any]:
        """JSON-able: kind, name, weights_hash, config_hash, options."""

    @property
    def weights_hash(self) -> str:
        return self.identity["weights_hash"]

    @property
    @abstractmethod
    def device(self) -> torch.device: ...

    @abstractmethod
    def to(self, device: str | torch.device) -> "Codec": ...

    def accepts(self, item: Any) -> bool:
        """Whether ``item`` is a media object this codec encodes."""
        return False

    def __reduce__(self) -> tuple:
        buf = io.BytesIO()
        _StatePickler(buf, protocol=_STATE_PROTOCOL).dump((type(self), dict(self.__dict__)))
        return _restore_codec, (buf.getvalue(),)


class ImageCodec(Codec):
    """Images <-> ``ImageCodes`` ``[H', W']``.

    Subclasses set ``codebook_size``, ``num_codebooks`` (1), ``downsample``
    (pixels per code side), ``mean``/``std`` (pixel normalisation) and
    implement ``encode_tensor``, ``decode_tensor`` and ``pixel_size``.
    """

    modality = "image"
    downsample: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    @abstractmethod
    def encode_tensor(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """``[B, 3, H, W]`` pixel values as the model expects them -> int64 codes ``[B, H', W']``."""

    @abstractmethod
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 codes ``[B, H', W']`` -> pixel values ``[B, 3, H, W]`` in model space."""

    @abstractmethod
    def pixel_size(self, width: int, height: int) -> tuple[int, int]:
        """The (width, height) the model takes for an input of this size."""

    def accepts(self, item: Any) -> bool:
        from PIL import Image

        return isinstance(item, Image.Image)

    def preprocess(self, image, where: str = "image") -> torch.Tensor:
        """One PIL image -> ``[3, H, W]`` float32 in model space (see ``image_io``)."""
        from PIL import Image

        rgb = image_io.to_rgb(image, where)
        w, h = self.pixel_size(*rgb.size)
        if (w, h) != rgb.size:
            if w == h:
                rgb = image_io.fit_square(rgb, w)
            else:
                rgb = rgb.resize((w, h), Image.Resampling.BICUBIC)
        return image_io.images_to_tensor([rgb], self.mean, self.std)[0]

    @torch.inference_mode()
    def encode(self, images: Any) -> list[ImageCodes]:
        """PIL image(s) -> one ``ImageCodes`` per image (batched by size)."""
        from PIL import Image

        items, _ = _as_list(images, Image.Image)
        pixels = [self.preprocess(img, f"image {i}") for i, img in enumerate(items)]
        out: list[ImageCodes | None] = [None] * len(items)
        for _, idx in _buckets([tuple(p.shape) for p in pixels]).items():
            codes = self.encode_tensor(torch.stack([pixels[i] for i in idx]).to(self.device)).cpu()
            for j, i in enumerate(idx):
                out[i] = ImageCodes(codes[j].numpy())
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def decode(self, codes: Any) -> list:
        """``ImageCodes`` (one or a list) -> RGB PIL images."""
        items, _ = _as_list(codes, ImageCodes)
        out: list = [None] * len(items)
        for shape, idx in _buckets([c.shape for c in items]).items():
            if len(shape) != 2:
                raise ValueError(f"{self.kind}: expected single-layer image codes [H', W'], got shape {shape}")
            batch = torch.stack([torch.from_numpy(items[i].codes.copy()) for i in idx]).to(self.device)
            images = image_io.tensor_to_images(self.decode_tensor(batch), self.mean, self.std)
            for j, i in enumerate(idx):
                out[i] = images[j]
        return out


class AudioCodec(Codec):
    """``Audio`` <-> ``AudioCodes`` ``[T', Q]``.

    Subclasses set ``sample_rate``, ``channels``, ``frame_rate``,
    ``codebook_size``, ``num_codebooks`` (the Q in use) and implement
    ``encode_tensor`` / ``decode_tensor``.
    """

    modality = "audio"
    sample_rate: int
    channels: int
    frame_rate: float

    @abstractmethod
    def encode_tensor(self, waveforms: torch.Tensor) -> torch.Tensor:
        """``[B, C, T]`` at ``sample_rate`` -> int64 codes ``[B, T', Q]``."""

    @abstractmethod
    def decode_tensor(self, codes: torch.Tensor) -> torch.Tensor:
        """int64 codes ``[B, T', Q]`` -> waveforms ``[B, C, T]``."""

    def accepts(self, item: Any) -> bool:
        return isinstance(item, Audio)

    @torch.inference_mode()
    def encode(self, audios: Any) -> list[AudioCodes]:
        """``Audio`` (one or a list) -> one ``AudioCodes`` per item (batched by length)."""
        items, _ = _as_list(audios, Audio)
        waves = [audio_io.prepare(a, self.sample_rate, self.channels, f"audio {i}") for i, a in enumerate(items)]
        out: list[AudioCodes | None] = [None] * len(items)
        for _, idx in _buckets([tuple(w.shape) for w in waves]).items():
            codes = self.encode_tensor(torch.stack([waves[i] for i in idx]).to(self.device)).cpu()
            for j, i in enumerate(idx):
                out[i] = AudioCodes(codes[j].numpy())
        return out  # type: ignore[return-value]

    @torch.inference_mode()
    def decode(self, codes: Any) -> list[Audio]:
        """``AudioCodes`` (one or a list) -> ``Audio`` at ``sample_rate``."""
        items, _ = _as_list(codes, AudioCodes)
        out: list = [None] * len(items)
        for shape, idx in _buckets([c.shape for c in items]).items():
            if shape[1] != self.num_codebooks:
                raise ValueError(f"{self.kind}: expected codes [T, {self.num_codebooks}], got {shape}")
            if shape[0] == 0:
                for i in idx:
                    out[i] = Audio(torch.zeros(self.channels, 0), self.sample_rate)
                continue
            batch = torch.stack([torch.from_numpy(items[i].codes.copy()) for i in idx]).to(self.device)
            waves = self.decode_tensor(batch).float().cpu()
            for j, i in enumerate(idx):
                out[i] = Audio(waves[j], self.sample_rate)
        return out
