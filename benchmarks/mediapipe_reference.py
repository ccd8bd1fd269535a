"""MediaPipe's selfie segmentation model, zero-shot, scored like segjax's held-out evaluation.

The external reference of the pretrained-encoder table: the same held-out photos as
`scripts/evaluate.py --split test` (segjax's seeded split), each image stretched to 256x256 RGB
in [0, 1], the probability map resized (bilinear) to the photo's original size, thresholded at
0.5, per-image Dice averaged (both empty = 1). Run from a checkout; not part of the package.

    pip download --no-deps mediapipe==0.10.21   # only for the .tflite file inside the wheel
    unzip -o mediapipe-0.10.21-*.whl 'mediapipe/modules/selfie_segmentation/*' -d mp
    pip install ai-edge-litert numpy pillow
    python benchmarks/mediapipe_reference.py \\
        --model mp/mediapipe/modules/selfie_segmentation/selfie_segmentation.tflite \\
        --data-dir ../shared/data/ccp_person --split-seed 0 --val-fraction 0.1 --test-fraction 0.1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from segjax.data import decode, layout, sampling  # noqa: E402  (numpy and Pillow only)


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    tp = np.sum(pred & truth)
    denominator = pred.sum() + truth.sum()
    return 1.0 if denominator == 0 else float(2 * tp / denominator)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="selfie_segmentation.tflite")
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--out", help="write the scores as JSON here")
    args = parser.parse_args()
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=args.model)
    interpreter.allocate_tensors()
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    size = tuple(int(v) for v in inp["shape"][1:3])
    samples = layout.discover(args.data_dir).train
    parts = sampling.split(len(samples), args.split_seed, args.val_fraction, args.test_fraction)
    scores, tic = {}, time.perf_counter()
    for i, sample in enumerate(samples):
        image = decode.read_image(sample.image)
        x = np.asarray(image.resize(size[::-1], Image.Resampling.BILINEAR), np.float32) / 255.0
        interpreter.set_tensor(inp["index"], x[None])
        interpreter.invoke()
        prob = interpreter.get_tensor(out["index"])[0, ..., 0]
        prob = Image.fromarray(prob.astype(np.float32), mode="F").resize(
            image.size, Image.Resampling.BILINEAR
        )
        scores[i] = dice(np.asarray(prob) >= 0.5, decode.read_mask(sample.mask).astype(bool))
    seconds = time.perf_counter() - tic
    held_out = [scores[i] for i in parts["test"]]
    record = {
        "model": Path(args.model).name,
        "input": f"{size[0]}x{size[1]} RGB stretch in [0, 1]",
        "held_out_images": len(held_out),
        "held_out_mean_dice": float(np.mean(held_out)),
        "all_images": len(scores),
        "all_mean_dice": float(np.mean(list(scores.values()))),
        "seconds_per_image": seconds / len(scores),
    }
    print(json.dumps(record, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
