"""Training augmentation on normalized batch tensors, reproducible per sample.

The original pipeline per modality image is Resize -> RandomHorizontalFlip(0.5) -> Pad(10, black) -> RandomCrop(H, W)
-> ToTensor -> Normalize(0.5, 0.5) -> RandomErasing (probability 0.5, area ratio in [0.02, 1/3], aspect ratio in
[0.3, 1/0.3] drawn log-uniformly, up to 10 attempts, fill drawn per pixel from N(0, 1) on the normalised image).
Flip, pad and crop commute with the per-channel normalization, so the same result is obtained on the collated,
normalized tensors (black = -1.0 after normalization with mean = std = 0.5), which lets the augmentation run on the
training device.

Every random draw of a sample comes from a ``torch.Generator`` seeded with that sample's seed (see
:func:`mmreid.sampler.sample_seed`), on the CPU, so the result depends only on ``(seed, epoch, position)`` -- not on
the device, the global RNG or the number of dataloader workers.

By default each modality image draws its own flip, crop and erasing, as the original does (its transform runs once
per image); ``modality_augment="shared"`` gives the three aligned images of a triple one shared geometry.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODALITY_AUGMENT_MODES", "AugmentParams", "ReIDAugment"]

MODALITY_AUGMENT_MODES = ("independent", "shared")


@dataclass
class AugmentParams:
    """Geometry drawn for one image (or one aligned triple)."""

    flip: bool
    top: int
    left: int
    erase: tuple[int, int, int, int] | None  # (y, x, h, w) or None


class ReIDAugment(nn.Module):
    """Flip / pad + random crop / random erasing on ``(B, M, C, H, W)`` normalized tensors, one seed per sample.

    The augmentation options of train.py are generated from this signature (their one definition).

    Args:
        flip_prob: Horizontal flip probability.
        padding: Black padding (pixels) before the random crop back to the input size.
        erasing_prob: Random erasing probability (the erased box is filled with per-pixel N(0, 1) noise).
        modality_augment: independent: each modality image draws its own flip, crop and erasing (the original);
            shared: the aligned RGB, NIR and TIR images of a triple share one draw.
        erasing_area: Range of the erased box's area, as a fraction of the image.
        erasing_aspect: Range of the erased box's aspect ratio, drawn log-uniformly.
        pad_value: Value of the padding on normalized images: one value (-1.0 is black with mean = std = 0.5) or
            one per channel (black under a tower's own normalisation: :meth:`set_black`).
    """

    def __init__(
        self,
        flip_prob: float = 0.5,
        padding: int = 10,
        erasing_prob: float = 0.5,
        modality_augment: str = "independent",
        erasing_area: tuple[float, float] = (0.02, 1 / 3),
        erasing_aspect: tuple[float, float] = (0.3, 1 / 0.3),
        pad_value: float | tuple[float, ...] = -1.0,
    ):
        super().__init__()
        if modality_augment not in MODALITY_AUGMENT_MODES:
            raise ValueError(f"modality_augment must be one of {', '.join(MODALITY_AUGMENT_MODES)}, "
                             f"got {modality_augment!r}")
        for name, p in (("flip_prob", flip_prob), ("erasing_prob", erasing_prob)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"`{name}` must be a probability in [0, 1], got {p}")
        if int(padding) < 0:
            raise ValueError(f"`padding` must be >= 0, got {padding}")
        lo, hi = erasing_area
        if not 0.0 < lo <= hi <= 1.0:
            raise ValueError(f"`erasing_area` must satisfy 0 < min <= max <= 1, got {erasing_area}")
        if not 0.0 < erasing_aspect[0] <= erasing_aspect[1]:
            raise ValueError(f"`erasing_aspect` must satisfy 0 < min <= max, got {erasing_aspect}")
        self.flip_prob = float(flip_prob)
        self.padding = int(padding)
        self.erasing_prob = float(erasing_prob)
        self.erasing_area = (float(lo), float(hi))
        self.erasing_aspect = (float(erasing_aspect[0]), float(erasing_aspect[1]))
        per_channel = isinstance(pad_value, (tuple, list))
        self.pad_value = tuple(float(v) for v in pad_value) if per_channel else float(pad_value)
        self.independent_modalities = modality_augment == "independent"

    def extra_repr(self) -> str:
        return (
            f"flip_prob={self.flip_prob}, padding={self.padding}, erasing_prob={self.erasing_prob}, "
            f"erasing_area={self.erasing_area}, erasing_aspect={self.erasing_aspect}, "
            f"independent_modalities={self.independent_modalities}"
        )

    def set_black(self, image_mean, image_std) -> None:
        """Pad with black as the model's pixel normalisation writes it, (0 - mean) / std per channel: -1.0 for the
        authors' mean = std = 0.5, per-channel values for a tower's own statistics (e.g. ImageNet's)."""
        black = tuple(-float(m) / float(s) for m, s in zip(image_mean, image_std))
        self.pad_value = black[0] if len(set(black)) == 1 else black

    def _pad(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` padded by ``padding`` on every side with ``pad_value``."""
        p = self.padding
        if not isinstance(self.pad_value, tuple):
            return F.pad(images, (p, p, p, p), value=self.pad_value)
        fill = torch.tensor(self.pad_value, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        padded = fill.expand(images.shape[0], -1, images.shape[2] + 2 * p, images.shape[3] + 2 * p).clone()
        padded[:, :, p : p + images.shape[2], p : p + images.shape[3]] = images
        return padded

    @staticmethod
    def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
        return lo + (hi - lo) * torch.rand(1, generator=gen, dtype=torch.float64).item()

    def draw(self, gen: torch.Generator, height: int, width: int) -> AugmentParams:
        """Draw flip, crop offset and erasing box for one image; the draw order is part of the reproducibility contract."""
        flip = torch.rand(1, generator=gen).item() < self.flip_prob
        top = int(torch.randint(2 * self.padding + 1, (1,), generator=gen))
        left = int(torch.randint(2 * self.padding + 1, (1,), generator=gen))
        erase = None
        if torch.rand(1, generator=gen).item() < self.erasing_prob:
            area = height * width
            log_lo, log_hi = math.log(self.erasing_aspect[0]), math.log(self.erasing_aspect[1])
            for _ in range(10):  # like the original: up to 10 attempts to fit a box
                target = self._uniform(gen, *self.erasing_area) * area
                aspect = math.exp(self._uniform(gen, log_lo, log_hi))
                h = int(round(math.sqrt(target * aspect)))
                w = int(round(math.sqrt(target / aspect)))
                if 0 < h < height and 0 < w < width:
                    y = int(torch.randint(height - h + 1, (1,), generator=gen))
                    x = int(torch.randint(width - w + 1, (1,), generator=gen))
                    erase = (y, x, h, w)
                    break
        return AugmentParams(flip, top, left, erase)

    def forward(self, pixel_values: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        """Augment ``pixel_values`` (B, M, C, H, W) with one seed per row of ``seeds`` (B,); returns a new tensor."""
        if pixel_values.dim() != 5:
            raise ValueError(f"`pixel_values` must be (batch, modalities, channels, H, W), got {tuple(pixel_values.shape)}")
        seeds = torch.as_tensor(seeds)
        if seeds.dim() != 1 or seeds.shape[0] != pixel_values.shape[0] or seeds.dtype.is_floating_point:
            raise ValueError(
                f"`seeds` must be an integer tensor of shape ({pixel_values.shape[0]},), got "
                f"{tuple(seeds.shape)} {seeds.dtype}"
            )
        b, m, c, h, w = pixel_values.shape
        p = self.padding
        padded = self._pad(pixel_values.flatten(0, 1)).view(b, m, c, h + 2 * p, w + 2 * p)
        out = torch.empty_like(pixel_values)
        for i, seed in enumerate(seeds.tolist()):
            gen = torch.Generator()
            gen.manual_seed(int(seed))
            shared = None if self.independent_modalities else self.draw(gen, h, w)
            for j in range(m):
                prm = self.draw(gen, h, w) if shared is None else shared
                img = padded[i, j]
                if prm.flip:
                    img = img.flip(-1)  # flipping before padding == flipping the (symmetrically) padded image
                out[i, j] = img[:, prm.top : prm.top + h, prm.left : prm.left + w]
                if prm.erase is not None:
                    y, x, eh, ew = prm.erase
                    noise = torch.randn((c, eh, ew), generator=gen)
                    out[i, j, :, y : y + eh, x : x + ew] = noise.to(device=out.device, dtype=out.dtype)
        return out
