"""Threshold and morphology of one probability map (scipy.ndimage), sizes relative to the image."""

from __future__ import annotations

import dataclasses

import numpy as np
from scipy import ndimage

from segjax import metrics


@dataclasses.dataclass(frozen=True)
class PostProcess:
    threshold: float = 0.5  # probability at or above which a pixel is person
    open_radius: float = 0.0  # opening disk radius as a fraction of the shorter side (0 = off)
    min_area: float = 0.0  # drop components smaller than this fraction of the image area
    fill_holes: bool = False  # fill background fully enclosed by person
    # drop components smaller than this fraction of the largest one: a crowd's small people
    # stay, specks beside a person go
    min_relative: float = 0.0

    @property
    def active(self) -> bool:
        return bool(self.open_radius or self.min_area or self.min_relative or self.fill_holes)

    def __str__(self) -> str:
        """What the morphology does, in words ('off' when nothing)."""
        steps = [
            f"opening radius {self.open_radius:g} of the shorter side" if self.open_radius else "",
            f"components under {self.min_area:.1%} of the image removed" if self.min_area else "",
            f"components under {self.min_relative:.0%} of the largest removed"
            if self.min_relative
            else "",
            "holes filled" if self.fill_holes else "",
        ]
        return ", ".join(s for s in steps if s) or "off"


def disk(radius: int) -> np.ndarray:
    y, x = np.ogrid[-radius : radius + 1, -radius : radius + 1]
    return x * x + y * y <= radius * radius


def opening(mask: np.ndarray, radius: int) -> np.ndarray:
    """Binary opening by a disk, outside the image counting as background.

    Large disks go through two Euclidean distance transforms (cost independent of the radius;
    the same pixels as `binary_opening`, tested): a radius-13 opening of an 800x800 mask took
    120 ms instead of 420 ms.
    """
    if radius <= 7:
        return ndimage.binary_opening(mask, structure=disk(radius))
    pad = radius + 1
    padded = np.pad(mask, pad)
    eroded = ndimage.distance_transform_edt(padded) > radius
    return (ndimage.distance_transform_edt(~eroded) <= radius)[pad:-pad, pad:-pad]


def clean(mask: np.ndarray, params: PostProcess) -> np.ndarray:
    """Opening, then small-component removal (under a share of the image, or of the largest
    component), then hole filling."""
    mask = np.asarray(mask, dtype=bool)
    h, w = mask.shape
    radius = int(round(params.open_radius * min(h, w)))
    if radius > 0:
        mask = opening(mask, radius)
    if params.min_area > 0 or params.min_relative > 0:
        labels, count = ndimage.label(mask)
        if count:
            areas = np.bincount(labels.ravel())[1:]
            least = max(params.min_area * h * w, params.min_relative * areas.max())
            mask = np.concatenate([[False], areas >= least])[labels]
    if params.fill_holes:
        mask = ndimage.binary_fill_holes(mask)
    return mask


def apply(prob: np.ndarray, params: PostProcess, postprocess: bool = True) -> np.ndarray:
    """Probability map -> bool mask: threshold, then (optionally) morphology."""
    mask = metrics.to_mask(np.asarray(prob), params.threshold)
    return clean(mask, params) if postprocess and params.active else mask
