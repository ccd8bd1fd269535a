"""Where a run stands between two steps: a frozen value, saved with every checkpoint."""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Progress:
    """The loop replaces it (`dataclasses.replace`) after each epoch or stop; never changes it."""

    epoch: int = 0  # epochs finished; the data stream continues in epoch `epoch` (0-based)
    batch: int = 0  # batches of that epoch already done (> 0: a stop mid-epoch)
    best_dice: float = -1.0  # the best validation mean Dice so far
    best_epoch: int = 0  # the epoch (1-based) that reached it
    bad_epochs: int = 0  # epochs since it (early stopping)
    partial_losses: tuple[float, ...] = ()  # a stopped epoch's step losses so far

    def after_epoch(self, dice: float) -> Progress:
        """The progress once epoch `self.epoch` has finished with validation mean Dice `dice`."""
        epoch = self.epoch + 1
        if dice > self.best_dice:
            better = dict(best_dice=dice, best_epoch=epoch, bad_epochs=0)
        else:
            better = dict(bad_epochs=self.bad_epochs + 1)
        return dataclasses.replace(self, epoch=epoch, batch=0, partial_losses=(), **better)

    def to_meta(self) -> dict[str, Any]:
        """The checkpoint's JSON record (`position` is [epoch, batch], as the data order reads)."""
        meta = {
            "epoch": self.epoch,
            "position": [self.epoch, self.batch],
            "best_dice": self.best_dice,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
        }
        if self.batch:
            meta.update(partial=True, partial_losses=list(self.partial_losses))
        return meta

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Progress:
        epoch, batch = meta["position"]
        return cls(
            epoch=epoch,
            batch=batch,
            best_dice=meta["best_dice"],
            best_epoch=meta["best_epoch"],
            bad_epochs=meta["bad_epochs"],
            partial_losses=tuple(meta.get("partial_losses", ())),
        )
