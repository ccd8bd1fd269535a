"""PNG previews (image / truth / prediction), training curves and the worst-cases grid."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw

from segjax.files import save_png, write_atomic

TRUTH, PRED, MISSED = (40, 220, 60), (230, 40, 40), (40, 90, 255)


def _rgb(image_u8: np.ndarray) -> np.ndarray:
    image_u8 = np.asarray(image_u8)
    return np.repeat(image_u8, 3, axis=-1) if image_u8.shape[-1] == 1 else image_u8[..., :3]


def overlay(image_u8: np.ndarray, mask: np.ndarray, colour, alpha: float = 0.5) -> np.ndarray:
    """The image with `mask` pixels tinted by `colour`."""
    out = _rgb(image_u8).astype(np.float32)
    m = np.asarray(mask, dtype=bool)[..., None]
    out = np.where(m, (1 - alpha) * out + alpha * np.asarray(colour, np.float32), out)
    return out.astype(np.uint8)


def error_map(truth: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Black = right, red = false positive, blue = false negative."""
    out = np.zeros((*truth.shape, 3), np.uint8)
    t, p = truth.astype(bool), pred.astype(bool)
    out[p & ~t], out[~p & t] = PRED, MISSED
    return out


def save_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], path, captions=None):
    """Rows of equally sized RGB tiles with column titles (and optional row captions) as a PNG."""
    h, w = rows[0][0].shape[:2]
    header, gap = 14, 2
    grid = Image.new("RGB", (len(titles) * (w + gap), header + len(rows) * (h + gap)), "white")
    draw = ImageDraw.Draw(grid)
    for c, title in enumerate(titles):
        draw.text((c * (w + gap) + 2, 1), title, fill="black")
    for r, row in enumerate(rows):
        for c, tile in enumerate(row):
            grid.paste(Image.fromarray(tile), (c * (w + gap), header + r * (h + gap)))
        if captions:
            xy = (2, header + r * (h + gap) + 2)
            draw.rectangle(draw.textbbox(xy, captions[r]), fill="black")
            draw.text(xy, captions[r], fill="yellow")
    save_png(grid, path)


def save_preview(images_u8, truths, probs, path, threshold: float = 0.5) -> None:
    """Each row: the image, the truth in green, the prediction in red."""
    rows = [
        [_rgb(x), overlay(x, t, TRUTH), overlay(x, p >= threshold, PRED)]
        for x, t, p in zip(images_u8, truths, probs, strict=True)
    ]
    save_grid(rows, ["image", "truth", "prediction"], path)


def save_curves(rows: Sequence[dict], path: str | os.PathLike) -> None:
    """Loss (train, val) and validation Dice per epoch, from metrics.jsonl rows."""
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global state

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 3.6))
    ax_loss, ax_dice = fig.subplots(1, 2)
    ax_loss.plot(epochs, [r["train_loss"] for r in rows], label="train")
    ax_loss.plot(epochs, [r["val_loss"] for r in rows], label="validation")
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_loss.legend()
    ax_dice.plot(epochs, [r["val_mean_dice"] for r in rows], label="mean Dice")
    ax_dice.plot(epochs, [r["val_global_dice"] for r in rows], label="global Dice")
    ax_dice.set(xlabel="epoch", ylabel="Dice", title="validation")
    ax_dice.legend()
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90, format="png"))
