"""metrics.jsonl: one JSON object per epoch, appended; trimmed back on resume."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from segjax.files import write_text


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a killed process
                break
    return rows


def append_metrics(path: str | os.PathLike, row: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def trim_metrics(path: str | os.PathLike, epochs_done: int) -> list[dict[str, Any]]:
    """Keep rows of epochs the restored checkpoint covers (rewritten atomically); return them."""
    rows = [r for r in read_metrics(path) if r["epoch"] <= epochs_done]
    write_text(path, "".join(json.dumps(r) + "\n" for r in rows))
    return rows
