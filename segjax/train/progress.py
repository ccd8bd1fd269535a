"""Where a run stands between two steps (a frozen value, saved with every checkpoint), and why
a `fit` call ended."""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, NamedTuple


@dataclasses.dataclass(frozen=True)
class Progress:
    """The loop replaces it (`dataclasses.replace`) after each epoch or stop; never changes it."""

    epoch: int = 0  # epochs finished; the data stream continues in epoch `epoch` (0-based)
    batch: int = 0  # batches of that epoch already done (> 0: a stop mid-epoch)
    best_dice: float = -1.0  # the best validation mean Dice so far
    best_epoch: int = 0  # the epoch (1-based) that reached it
    bad_epochs: int = 0  # epochs since it (early stopping)
    partial_losses: tuple[float, ...] = ()  # the step losses of epoch `epoch` so far
    rows: tuple[dict, ...] = ()  # the finished epochs' metrics rows (metrics.jsonl keeps them)

    def after_steps(self, batch: int, losses) -> Progress:
        """The progress once the current epoch has reached batch `batch` with these more step
        losses."""
        return dataclasses.replace(
            self, batch=batch, partial_losses=(*self.partial_losses, *losses)
        )

    def after_epoch(self, row: dict) -> Progress:
        """The progress once epoch `self.epoch` has finished with metrics row `row` (its
        validation mean Dice decides the best epoch)."""
        epoch, dice = self.epoch + 1, row["val_mean_dice"]
        if dice > self.best_dice:
            better = dict(best_dice=dice, best_epoch=epoch, bad_epochs=0)
        else:
            better = dict(bad_epochs=self.bad_epochs + 1)
        rows = (*self.rows, row)
        return dataclasses.replace(
            self, epoch=epoch, batch=0, partial_losses=(), rows=rows, **better
        )

    def to_meta(self) -> dict[str, Any]:
        """The checkpoint's JSON record (`position` is [epoch, batch], as the data order reads;
        the rows are metrics.jsonl's)."""
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
    def from_meta(cls, meta: dict[str, Any], rows: tuple[dict, ...] = ()) -> Progress:
        epoch, batch = meta["position"]
        return cls(
            rows=rows,
            epoch=epoch,
            batch=batch,
            best_dice=meta["best_dice"],
            best_epoch=meta["best_epoch"],
            bad_epochs=meta["bad_epochs"],
            partial_losses=tuple(meta.get("partial_losses", ())),
        )


class Ended(enum.Enum):
    """Why a `fit` call stopped training."""

    FINISHED = "finished"  # the schedule's last step
    EARLY_STOPPED = "early-stopped"  # --early-stop epochs without a better validation Dice
    STOPPED_AT_EPOCH = "stopped at epoch"  # --stop-at-epoch, before the schedule's end
    BUDGET_SPENT = "budget spent"  # --time-budget: the next epoch would not end in time
    SESSION_PAUSED = "session paused"  # --session-limit: the next epoch would not end in time
    INTERRUPTED = "interrupted"  # SIGINT or SIGTERM: the step finished, the position saved

    @property
    def paused(self) -> bool:
        """A later `--resume` continues the same schedule (tuning waits for the run's end)."""
        return self in (Ended.STOPPED_AT_EPOCH, Ended.SESSION_PAUSED, Ended.INTERRUPTED)


class Fit(NamedTuple):
    """What `fit` returns: why it ended and where the run stands."""

    ended: Ended
    progress: Progress

    @property
    def row(self) -> dict:
        """The last finished epoch's metrics ({} when none finished)."""
        return self.progress.rows[-1] if self.progress.rows else {}
