"""Masks for image files or folders: PNG 0/255 at each image's size (see --help)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # also runs from a plain checkout
from segjax import cli  # noqa: E402

if __name__ == "__main__":
    cli.predict_main()
