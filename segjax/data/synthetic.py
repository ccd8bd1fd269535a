"""Synthetic demo data in the competition layout: person-like figures on textured backgrounds."""

from __future__ import annotations

import contextlib
import os
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from segjax import runtime

# (height, width): square and non-square, small enough to make hundreds in seconds.
DEMO_SIZES = ((192, 192), (160, 224), (224, 160), (256, 256), (176, 208))


def _colour(rng: np.random.Generator, low: int = 0, high: int = 256) -> tuple[int, int, int]:
    return tuple(int(c) for c in rng.integers(low, high, size=3))


def _background(rng: np.random.Generator, height: int, width: int) -> Image.Image:
    """A vertical colour gradient, building-like boxes and blobs, then pixel noise."""
    top, bottom = np.array(_colour(rng)), np.array(_colour(rng))
    ramp = np.linspace(0.0, 1.0, height)[:, None, None]
    canvas = (top * (1 - ramp) + bottom * ramp) * np.ones((1, width, 1))
    image = Image.fromarray(canvas.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(3, 9))):
        x0, y0 = rng.integers(0, width), rng.integers(0, height)
        w, h = rng.integers(width // 10, width // 2), rng.integers(height // 10, height // 2)
        shape = draw.rectangle if rng.random() < 0.6 else draw.ellipse
        shape((int(x0), int(y0), int(x0 + w), int(y0 + h)), fill=_colour(rng))
    return image.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.0, 1.5))))


def _limb(draw, start, angle, length, width, fill):
    """A straight limb from `start` at `angle` radians from straight down; returns its end."""
    end = (start[0] + length * np.sin(angle), start[1] + length * np.cos(angle))
    draw.line([start, end], fill=fill, width=max(1, int(width)))
    r = width / 2
    draw.ellipse((end[0] - r, end[1] - r, end[0] + r, end[1] + r), fill=fill)
    return end


def _person(rng, draws, height: int, width: int) -> None:
    """Draw one figure on every (draw, colours-or-None) pair: None = the mask's 255."""
    tall = rng.uniform(0.45, 0.9) * height
    cx, top = rng.uniform(0.15, 0.85) * width, rng.uniform(0.02, 0.95 * height - tall)
    skin, shirt, pants = _colour(rng, 60, 240), _colour(rng), _colour(rng)
    head_r, shoulder, hip_w = 0.07 * tall, 0.13 * tall, 0.1 * tall
    neck, hip = top + 2 * head_r, top + 0.5 * tall
    lean = rng.uniform(-0.15, 0.15)
    hip_x = cx + lean * (hip - neck)
    arm = [rng.uniform(0.1, 2.6) * s for s in (-1, 1)]
    leg = [rng.uniform(0.02, 0.45) * s for s in (-1, 1)]
    bend = rng.uniform(-0.6, 0.6, size=4)
    for draw, paint in draws:
        c = (lambda colour: colour) if paint else (lambda colour: 255)
        draw.ellipse((cx - head_r, top, cx + head_r, top + 2 * head_r), fill=c(skin))
        torso = [
            (cx - shoulder, neck + 0.03 * tall),
            (cx + shoulder, neck + 0.03 * tall),
            (hip_x + hip_w, hip),
            (hip_x - hip_w, hip),
        ]
        draw.polygon(torso, fill=c(shirt))
        for side, (a, b) in enumerate(zip(arm, bend[:2], strict=True)):
            shoulder_xy = (cx + (2 * side - 1) * shoulder * 0.9, neck + 0.06 * tall)
            elbow = _limb(draw, shoulder_xy, a, 0.19 * tall, 0.06 * tall, c(shirt))
            _limb(draw, elbow, a + b, 0.18 * tall, 0.05 * tall, c(skin))
        for side, (a, b) in enumerate(zip(leg, bend[2:], strict=True)):
            hip_xy = (hip_x + (2 * side - 1) * hip_w * 0.55, hip - 0.02 * tall)
            knee = _limb(draw, hip_xy, a, 0.25 * tall, 0.085 * tall, c(pants))
            _limb(draw, knee, a + 0.3 * b, 0.24 * tall, 0.075 * tall, c(pants))


def make_example(seed: int, index: int, size: tuple[int, int]) -> tuple[Image.Image, np.ndarray]:
    """One RGB image and its {0, 1} mask, a pure function of (seed, index, size)."""
    rng = np.random.default_rng([seed, index])
    height, width = size
    image = _background(rng, height, width)
    mask = Image.new("L", (width, height), 0)
    people = rng.choice([0] + [1] * 15 + [2] * 4)  # 1 in 20 images has nobody
    for _ in range(people):
        _person(rng, [(ImageDraw.Draw(image), True), (ImageDraw.Draw(mask), False)], height, width)
    pixels = np.asarray(image).astype(np.float32)
    pixels += rng.normal(0.0, rng.uniform(2.0, 12.0), size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8), "RGB")
    return image, (np.asarray(mask) > 127).astype(np.uint8)


def _write_train(root: Path, seed: int, index: int, size: tuple[int, int]) -> None:
    image, mask = make_example(seed, index, size)
    name = f"{1000 + index}"
    # As in the real competition, a few images are grayscale or RGBA and a few masks are 0/1 RGB.
    if index % 15 == 7:
        image = image.convert("L")
    elif index % 17 == 3:
        image = image.convert("RGBA")
    image.save(root / "train/images" / f"{name}.png")
    if index % 11 == 5:
        Image.fromarray(np.repeat(mask[..., None], 3, axis=2), "RGB").save(
            root / "train/masks" / f"{name}.png"
        )
    else:
        Image.fromarray(mask * 255, "L").save(root / "train/masks" / f"{name}.png")


def _write_test(root: Path, seed: int, index: int, size: tuple[int, int]) -> str:
    image, _ = make_example(seed + 7919, index, size)  # a different stream from the training set
    name = f"{5000 + index}.png"
    image.save(root / "test/images" / name)
    return name


def generate(
    root: str | os.PathLike,
    n_train: int = 320,
    n_test: int = 64,
    seed: int = 0,
    sizes: tuple[tuple[int, int], ...] = DEMO_SIZES,
    test_sizes: tuple[tuple[int, int], ...] | None = None,
) -> Path:
    """Write train/images, train/masks, test/images and sample_submission.csv under `root`.

    The folder appears complete or not at all: it is written under a temporary name first.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists")
    tmp = root.with_name(root.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for sub in ("train/images", "train/masks", "test/images"):
        (tmp / sub).mkdir(parents=True)
    test_sizes = test_sizes or sizes
    try:
        with ThreadPoolExecutor(4) as pool:
            list(
                pool.map(
                    lambda i: _write_train(tmp, seed, i, sizes[i % len(sizes)]), range(n_train)
                )
            )
            names = list(
                pool.map(
                    lambda i: _write_test(tmp, seed, i, test_sizes[i % len(test_sizes)]),
                    range(n_test),
                )
            )
        # Row order deliberately not sorted, to exercise "order from sample_submission.csv".
        order = np.random.default_rng(seed).permutation(len(names))
        lines = ["id,encoded_pixels"] + [f"{names[i]}," for i in order]
        (tmp / "sample_submission.csv").write_text("\n".join(lines) + "\n")
        os.replace(tmp, root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root


def demo_data_dir(n_train: int = 320, n_test: int = 64, seed: int = 0) -> Path:
    """The demo dataset's folder, generated on first use."""
    root = runtime.cache_dir() / f"demo-s{seed}-{n_train}-{n_test}"
    if not root.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileExistsError):  # another process finished it first
            generate(root, n_train=n_train, n_test=n_test, seed=seed)
    return root
