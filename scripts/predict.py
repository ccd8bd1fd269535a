"""Masks for image files or folders: PNG 0/255 at each image's size (see --help)."""

from segjax.cli import run

if __name__ == "__main__":
    run("predict")
