"""TensorBoard event files of a run (`--log tensorboard`: runs/<name>/tb/), written from the same
rows as metrics.jsonl, which stays the run's record. Needs tensorboardX (no TensorFlow):
pip install 'segjax[tensorboard]'."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from segjax.errors import UserError

FOLDER = "tb"
# metrics.jsonl's keys, and the TensorBoard tag each is shown under (TensorBoard's tags hold
# no spaces)
SCALARS = {
    "train_loss": "loss/train",
    "val_loss": "loss/validation",
    "val_mean_dice": "dice/validation_mean",
    "val_global_dice": "dice/validation_global",
    "val_mean_iou": "iou/validation_mean",
    "lr": "train/learning_rate",
    "loss_scale": "float16/loss_scale",
    "skipped_steps": "float16/skipped_steps",
}


class Writer:
    """One run's event file: a call per finished epoch."""

    def __init__(self, run_dir: str | os.PathLike):
        try:
            from tensorboardX import SummaryWriter
        except ImportError:
            raise UserError(
                "--log tensorboard needs tensorboardX: pip install 'segjax[tensorboard]' "
                "(or pip install tensorboardX)"
            ) from None
        self._writer = SummaryWriter(str(Path(run_dir) / FOLDER))

    def epoch(self, row: dict, step_s: float | None = None, preview: Path | None = None) -> None:
        """The epoch's metrics at its last step; its step time; its preview, if drawn."""
        step = int(row["step"])
        for key, tag in SCALARS.items():
            if key in row:
                self._writer.add_scalar(tag, float(row[key]), step)
        if step_s is not None:
            self._writer.add_scalar("time/seconds_per_step", step_s, step)
        if preview is not None and preview.exists():
            image = np.asarray(Image.open(preview).convert("RGB"))
            self._writer.add_image("preview", image, step, dataformats="HWC")
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
