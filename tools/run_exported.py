"""Run a model exported by `scripts/export.py`: needs only jax, numpy, flatbuffers and Pillow.

    python tools/run_exported.py model.jaxexport photo.jpg another.png --out masks/

Writes <out>/<stem>.png masks (0/255) at each image's own size, thresholded at the run's tuned
threshold (morphological post-processing, if the run tuned any, is segjax's: not applied here).
As a library: `probabilities(load("model.jaxexport"), images_u8)`.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.export  # a submodule that jax before 0.6 does not import itself
import numpy as np
from PIL import Image


def load(path: str | Path):
    """(the deserialised function, its JSON record)."""
    path = Path(path)
    exported = jax.export.deserialize(bytearray(path.read_bytes()))
    record = json.loads(path.with_name(path.name + ".json").read_text())
    return exported, record


def probabilities(model, images_u8: np.ndarray) -> np.ndarray:
    """uint8 [b, H, W, C] at the training size -> float32 probabilities [b, H, W]."""
    exported, _ = model
    return np.asarray(exported.call(np.asarray(images_u8, np.uint8)))


def mask(model, image: Image.Image) -> np.ndarray:
    """One image of any size -> bool mask at its size."""
    _, record = model
    h, w = record["image_size"]
    mode = "L" if record["channels"] == 1 else "RGB"
    x = np.asarray(image.convert(mode).resize((w, h), Image.Resampling.BILINEAR))
    x = x.reshape(1, h, w, record["channels"])
    prob = Image.fromarray(probabilities(model, x)[0], mode="F")
    prob = np.asarray(prob.resize(image.size, Image.Resampling.BILINEAR))
    return prob >= record["postprocess"]["threshold"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="the .jaxexport file (its .json beside it)")
    parser.add_argument("images", nargs="+")
    parser.add_argument("--out", required=True, help="folder for the masks")
    args = parser.parse_args()
    model = load(args.model)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.images:
        result = mask(model, Image.open(name))
        Image.fromarray(result.astype(np.uint8) * 255).save(out / f"{Path(name).stem}.png")
    print(f"wrote {len(args.images)} masks to {out}")


if __name__ == "__main__":
    main()
