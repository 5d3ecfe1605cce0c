"""Stage-1 data: examples, the chat template, label masking, truncation, batching.

Template (Qwen3 chat format), one user turn with the image blocks first::

    <|im_start|>user\\n [<|image_patch|> x L, \\n] per image  PROMPT <|im_end|>\\n
    <|im_start|>assistant\\n CAPTION <|im_end|>

Labels are the IDs on ``CAPTION <|im_end|>`` and -100 everywhere else (prompt,
placeholders, template, padding). Truncation at ``max_seq_len`` never cuts a
placeholder block: the caption is cut from its end first; when even the
prompt leaves no room for one caption token, the prompt text is shortened;
when the template plus the image blocks alone do not fit, ``TruncationError``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
import torch

from .model import IMAGE_PATCH, patchify
from ..errors import TruncationError

__all__ = ["CoverageReport", "TruncationError", "VLMCollator", "VLMExample", "load_image", "read_examples"]


@dataclass
class VLMExample:
    """One captioning example: images ``[C, H, W]`` float in [0, 1], a prompt and a caption."""

    images: list[torch.Tensor]
    prompt: str
    caption: str


@dataclass
class CoverageReport:
    """Running label coverage: supervised / real tokens, samples with no label, samples truncated."""

    samples: int = 0
    tokens: int = 0
    supervised: int = 0
    samples_without_labels: int = 0
    samples_truncated: int = 0
    prompts_shortened: int = 0
    without_labels_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {
            "samples": self.samples,
            "tokens": self.tokens,
            "supervised_tokens": self.supervised,
            "supervised_fraction": self.supervised / self.tokens if self.tokens else 0.0,
            "samples_without_labels": self.samples_without_labels,
            "samples_truncated": self.samples_truncated,
            "prompts_shortened": self.prompts_shortened,
        }


def load_image(path: str | Path) -> torch.Tensor:
    """An image file (PNG/JPEG/... via Pillow, or ``.npy`` ``[H, W, C]`` uint8 / float in [0, 1]) -> ``[3, H, W]`` float."""
    path = Path(path)
    if path.suffix == ".npy":
        arr = np.load(path, allow_pickle=False)
        if arr.ndim == 2:
            arr = np.repeat(arr[..., None], 3, axis=-1)
        if arr.ndim != 3:
            raise ValueError(f"load_image: expected {path} as [H, W, C], got shape {arr.shape}")
        x = torch.from_numpy(np.ascontiguousarray(arr))
        x = x.float() / 255.0 if arr.dtype == np.uint8 else x.float()
        return x.permute(2, 0, 1)[:3]
    from PIL import Image

    with Image.open(path) as im:
        arr = np.asarray(im.convert("RGB"))
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float() / 255.0


def read_examples(path: str | Path) -> list[VLMExample]:
    """JSONL: one ``{"image": PATH | [PATH, ...], "prompt": str, "caption": str}`` per line.

    Image paths are relative to the file's folder. Raises ValueError naming the line.
    """
    path = Path(path)
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                imgs = obj.get("image", obj.get("images", []))
                imgs = [imgs] if isinstance(imgs, str) else list(imgs)
                out.append(VLMExample([load_image(path.parent / p) for p in imgs],
                                      str(obj.get("prompt", "")), str(obj["caption"])))
            except (ValueError, KeyError, TypeError, OSError) as exc:
                raise ValueError(f"read_examples: {path} line {n}: {type(exc).__name__}: {exc}") from exc
    return out


class VLMCollator:
    """Examples -> a padded batch for ``LumoVLM`` (+ coverage accounting).

    Args:
        uti: ``lumo_uti.UTI`` (text encoding and the token space).
        num_latents: placeholders per image (the connector's latents).
        max_seq_len: longest sequence kept (default 512).
        image_size: images are resized to ``image_size x image_size``.
        patch_size: for a SigLIP2 (NaFlex) tower; None = SigLIP (``[n, C, H, W]`` pixels).
        pad_id: ID of padding positions (default ``<|endoftext|>``).
    """

    def __init__(self, uti: Any, *, num_latents: int = 64, max_seq_len: int = 512, image_size: int = 384,
                 patch_size: Optional[int] = None, pad_id: Optional[int] = None):
        import lumo_uti

        self.uti = uti
        self.num_latents = num_latents
        self.max_seq_len = max_seq_len
        self.image_size = image_size
        self.patch_size = patch_size
        ts = uti.token_space
        self.image_id = ts.id_of(IMAGE_PATCH)
        self.pad_id = ts.id_of("<|endoftext|>") if pad_id is None else pad_id
        self._placeholder = lumo_uti.ImagePlaceholder(num_latents)
        self._head = uti.encode("<|im_start|>user\n")
        self._newline = uti.encode("\n")
        self._turn = uti.encode("<|im_end|>\n<|im_start|>assistant\n")
        self._end = uti.encode("<|im_end|>")
        self.report = CoverageReport()

    def encode(self, example: VLMExample) -> tuple[list[int], list[int], dict[str, bool]]:
        """IDs and labels of one example (truncated), and ``{"truncated", "prompt_shortened"}``."""
        block = self.uti.encode([self._placeholder]) + self._newline
        images = block * len(example.images)
        prompt = self.uti.encode(example.prompt, allow_special=False) if example.prompt else []
        answer = (self.uti.encode(example.caption, allow_special=False) if example.caption else []) + self._end
        fixed = len(self._head) + len(images) + len(self._turn)
        if fixed + 1 > self.max_seq_len:
            raise TruncationError(
                f"VLMCollator: the template and {len(example.images)} image block(s) of {self.num_latents} "
                f"placeholders need {fixed + 1} tokens (with one caption token), max_seq_len={self.max_seq_len}"
            )
        info = {"truncated": False, "prompt_shortened": False}
        if fixed + len(prompt) + len(answer) > self.max_seq_len:
            info["truncated"] = True
            room = self.max_seq_len - fixed
            if len(prompt) >= room:  # keep one caption token: shorten the prompt text
                prompt = prompt[: room - 1]
                info["prompt_shortened"] = True
            answer = answer[: room - len(prompt)]
        prefix = self._head + images + prompt + self._turn
        ids = prefix + answer
        labels = [-100] * len(prefix) + answer
        return ids, labels, info

    def _pixels(self, images: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        s = self.image_size
        resized = []
        for img in images:
            x = img.float()
            if tuple(x.shape[1:]) != (s, s):
                x = torch.nn.functional.interpolate(x[None], size=(s, s), mode="bilinear", align_corners=False)[0]
            resized.append((x - 0.5) / 0.5)  # SigLIP normalisation: mean 0.5, std 0.5
        if self.patch_size is None:
            return {"pixel_values": torch.stack(resized)}
        return patchify(resized, self.patch_size)

    def __call__(self, examples: Sequence[VLMExample]) -> dict[str, Any]:
        """Returns input_ids, attention_mask, labels ``[B, T]``, image_counts, vision inputs and ``coverage``."""
        rows = [self.encode(e) for e in examples]
        T = max(len(ids) for ids, _, _ in rows)
        B = len(rows)
        input_ids = torch.full((B, T), self.pad_id, dtype=torch.long)
        labels = torch.full((B, T), -100, dtype=torch.long)
        attention = torch.zeros((B, T), dtype=torch.long)
        batch_cov = CoverageReport()
        for i, (ids, lab, info) in enumerate(rows):
            input_ids[i, : len(ids)] = torch.tensor(ids)
            labels[i, : len(lab)] = torch.tensor(lab)
            attention[i, : len(ids)] = 1
            sup = sum(1 for x in lab if x != -100)
            for cov in (batch_cov, self.report):
                cov.samples += 1
                cov.tokens += len(ids)
                cov.supervised += sup
                cov.samples_without_labels += int(sup == 0)
                cov.samples_truncated += int(info["truncated"])
                cov.prompts_shortened += int(info["prompt_shortened"])
        batch: dict[str, Any] = {
            "input_ids": input_ids, "attention_mask": attention, "labels": labels,
            "image_counts": [len(e.images) for e in examples], "coverage": batch_cov.as_dict(),
        }
        images = [img for e in examples for img in e.images]
        if images:
            batch.update(self._pixels(images))
        return batch
