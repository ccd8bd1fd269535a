"""Serialise a run's prediction function with jax.export (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runs from a plain checkout
from segjax import cli  # noqa: E402

if __name__ == "__main__":
    cli.export_main()
