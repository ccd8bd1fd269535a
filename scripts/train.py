"""Train a UNet-family model into runs/<name>/: python scripts/train.py --arch attn (see --help)."""

from segjax.cli import run

if __name__ == "__main__":
    run("train")
