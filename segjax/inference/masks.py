"""Masks for any images: files or folders in, PNG masks (and overlays, probability maps) out.

The same prediction path as the submission: one jitted function, batched and padded, TTA and
post-processing as tuned, probabilities resized to each image's original size.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from segjax import viz
from segjax.config import InferenceOptions, check
from segjax.data import decode, layout
from segjax.errors import DataError, UserError
from segjax.files import check_output_folder, save_png
from segjax.inference import onnx_export, postprocess, predictor, tuning
from segjax.inference.postprocess import PostProcess
from segjax.inference.run_loader import load_run

CHUNK = 256  # images decoded at a time: memory stays bounded for any folder


class Report(NamedTuple):
    written: int  # masks written
    failed: list[str]  # input files that could not be read, with the reason
    out: Path


def collect(inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """Image files named directly or found in the given folders (sorted, not recursive).

    A folder's system files are skipped; two inputs with one stem would write one mask: error.
    """
    files: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += [
                p
                for p in sorted(item.iterdir())
                if p.is_file()
                and p.suffix.lower() in layout.IMAGE_EXTENSIONS
                and p.name not in layout.JUNK
                and not p.name.startswith(".")
            ]
        elif item.is_file():
            files.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    if not files:
        raise UserError(f"no images in {', '.join(map(str, inputs))}")
    seen: dict[str, Path] = {}
    for path in files:
        if path.stem in seen and seen[path.stem] != path:
            raise UserError(
                f"{seen[path.stem]} and {path} would both write {path.stem}.png: predict them "
                "into different --out folders"
            )
        seen[path.stem] = path
    return list(dict.fromkeys(files))


class Outputs(NamedTuple):
    """What is written for each input: <out>/<stem>.png, and optionally more."""

    out: Path
    overlay: bool = False  # <stem>_overlay.png: the prediction drawn over the image
    probs: bool = False  # <stem>_prob.png: the probability map, 8-bit

    def paths(self, path: Path) -> list[Path]:
        names = [f"{path.stem}.png"]
        names += [f"{path.stem}_overlay.png"] * self.overlay
        names += [f"{path.stem}_prob.png"] * self.probs
        return [self.out / name for name in names]


def _decode(paths: Sequence[Path], size, grayscale: bool):
    """(decoded uint8 images at `size`, original images as RGB uint8, kept paths, failures)."""
    images, originals, kept, failed = [], [], [], []
    for path in paths:
        try:
            image = decode.read_image(path, grayscale)
        except DataError as err:
            failed.append(str(err))
            continue
        images.append(decode.resize_image(image, size))
        originals.append(np.asarray(image.convert("RGB")))
        kept.append(path)
    return images, originals, kept, failed


def _write_png(array: np.ndarray, path: Path) -> None:
    save_png(Image.fromarray(array), path)


def predict_files(
    run_dir: str | os.PathLike,
    inputs: Sequence[str | os.PathLike],
    outputs: Outputs,
    options: InferenceOptions = InferenceOptions(),
    *,
    force: bool = False,
) -> Report:
    """Write `<out>/<stem>.png` (0/255) for every input image, at its original size.

    Unreadable files are skipped and returned in `failed`; existing outputs are an error
    unless `force`.
    """
    check(options)
    check_output_folder(outputs.out)
    paths = collect(inputs)
    taken = [o for p in paths for o in outputs.paths(p) if o.exists()]
    if taken and not force:
        shown = ", ".join(map(str, taken[:5])) + (" ..." if len(taken) > 5 else "")
        raise UserError(f"{len(taken)} outputs exist already ({shown}): add --force to replace")
    loaded, post, tta = _loaded(run_dir, options)
    config = loaded.config
    batch = options.batch_size or config.train.eval_batch_size
    outputs.out.mkdir(parents=True, exist_ok=True)
    failed, written = [], 0
    bar = tqdm(total=len(paths), desc="predict", unit="img", disable=not options.progress)
    for start in range(0, len(paths), CHUNK):
        chunk = paths[start : start + CHUNK]
        images, originals, kept, bad = _decode(chunk, config.data.image_size, config.data.grayscale)
        failed += bad
        if images:
            for idx, prob_batch in predictor.iterate_probs(loaded, np.stack(images), batch, tta):
                for i, prob in zip(idx, prob_batch, strict=True):
                    _write_outputs(kept[i], originals[i], prob, post, outputs)
                    written += 1
        bar.update(len(chunk))
    bar.close()
    return Report(written, failed, outputs.out)


def _loaded(run_dir, options: InferenceOptions):
    """The run to predict with (on the backend asked for), its post-processing and TTA."""
    loaded = load_run(run_dir, options.checkpoint)
    post, tta = tuning.settings(run_dir, options.threshold, options.tta)
    post = post if options.postprocess else PostProcess(post.threshold)
    if options.backend != "jax":
        loaded = onnx_export.attach(loaded, options.onnx or None, tta)
    return loaded, post, tta


def _write_outputs(path: Path, original, prob, post: PostProcess, outputs: Outputs) -> None:
    full = predictor.resize_prob(prob, original.shape[:2])
    mask = postprocess.apply(full, post)
    _write_png(mask.astype(np.uint8) * 255, outputs.out / f"{path.stem}.png")
    if outputs.overlay:
        _write_png(viz.overlay(original, mask, viz.PRED), outputs.out / f"{path.stem}_overlay.png")
    if outputs.probs:
        prob_u8 = np.clip(np.round(full * 255.0), 0, 255).astype(np.uint8)
        _write_png(prob_u8, outputs.out / f"{path.stem}_prob.png")


def _as_image(item, grayscale: bool) -> Image.Image:
    """A file path, a PIL image or a uint8 array [H, W] or [H, W, C] as an RGB (or L) image."""
    if isinstance(item, (str, os.PathLike)):
        return decode.read_image(Path(item), grayscale)
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8 or item.ndim not in (2, 3):
            raise UserError(
                f"an image array must be uint8 [H, W] or [H, W, C], not {item.dtype} "
                f"{list(item.shape)}"
            )
        item = Image.fromarray(item[..., :3] if item.ndim == 3 else item)
    if not isinstance(item, Image.Image):
        raise UserError(f"not an image: {type(item).__name__} (a path, a PIL image or an array)")
    return decode.to_mode(item, grayscale)


def predict_masks(
    run_dir: str | os.PathLike, images: Sequence, options: InferenceOptions = InferenceOptions()
) -> list[np.ndarray]:
    """The masks (uint8 0/1, each image's original size) of image files, PIL images or uint8
    arrays, by the submission's path: tuned threshold, post-processing and TTA."""
    check(options)
    loaded, post, tta = _loaded(run_dir, options)
    config = loaded.config
    batch = options.batch_size or config.train.eval_batch_size
    originals = [_as_image(item, config.data.grayscale) for item in images]
    if not originals:
        return []
    stack = np.stack([decode.resize_image(image, config.data.image_size) for image in originals])
    masks: list = [None] * len(originals)
    for idx, prob_batch in predictor.iterate_probs(loaded, stack, batch, tta):
        for i, prob in zip(idx, prob_batch, strict=True):
            size = (originals[i].height, originals[i].width)
            masks[i] = mask_at(prob, size, post)
    return masks


def mask_at(prob: np.ndarray, size: tuple[int, int], post: PostProcess) -> np.ndarray:
    """A probability map at the training size -> the uint8 0/1 mask at `size` (H, W)."""
    return postprocess.apply(predictor.resize_prob(prob, size), post).astype(np.uint8)


def report_failures(report: Report) -> int:
    """Print the unreadable files; the exit status: 1 if any, else 0."""
    for line in report.failed:
        print(f"skipped: {line}", file=sys.stderr)
    return 1 if report.failed else 0
