"""The PyTorch peer of `segjax train`: the same model on the same weights, data, split, recipe and
wall-clock budget, scored as `segjax evaluate --split test` scores (not part of CI).

The model is `pytorch_reference.Lite0UNet`: the EfficientNet-Lite0 of `efficientnet-lite-pytorch`
with its ImageNet weights (the same file segjax reads, through segjax's restricted reader: no
torch.load) and the UNet decoder of segjax's defaults. The split, the decoded images and the
scorer are segjax's own functions; the recipe is segjax's defaults: ImageNet normalisation,
flips, scale/crop and rotation, Adam at 1e-3 with a one-epoch warm-up and a cosine to 1%, BCE +
Dice, the epochs planned to fit the budget after timing a few steps, the best validation epoch
kept. Prints one JSON line.

    pip install torch==2.13.0 efficientnet-lite-pytorch
    python -m benchmarks.pytorch_peer --data-dir ../shared/data/ccp_person --image-size 192x128 \
        --test-fraction 0.1 --time-budget 12
"""

from __future__ import annotations

import time

# The budget counts the whole process, as segjax's does from its command's start: importing
# torch, decoding the photos and building the model are inside it.
STARTED = time.time()

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from benchmarks.pytorch_reference import Lite0UNet, loss_fn  # noqa: E402
from segjax import metrics  # noqa: E402
from segjax.data import decode, layout, sampling  # noqa: E402
from segjax.data.sources import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from segjax.inference.predictor import resize_prob  # noqa: E402
from segjax.models import pretrained, weight_files  # noqa: E402

THRESHOLDS = np.round(np.arange(0.3, 0.701, 0.05), 2)


def load_imagenet(model: Lite0UNet) -> None:
    path = pretrained.weights_file("efficientnet-lite0", "imagenet")
    state = {
        k: torch.from_numpy(np.array(v)) for k, v in weight_files.read_state_dict(path).items()
    }
    model.encoder.load_state_dict(state, strict=True)


def augment(images: torch.Tensor, masks: torch.Tensor, gen: torch.Generator):
    """Flips, scale 0.8-1.25, rotation +-10 degrees and shifts +-10% (segjax's `basic`), one
    sampling grid for image (bilinear) and mask (nearest), mirrored at the borders."""
    b = images.shape[0]
    flip = torch.rand(b, generator=gen) < 0.5
    images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    masks = torch.where(flip[:, None, None, None], masks.flip(-1), masks)
    scale = torch.exp(torch.empty(b).uniform_(math.log(0.8), math.log(1.25), generator=gen))
    angle = torch.empty(b).uniform_(-10, 10, generator=gen) * math.pi / 180
    shift = torch.empty(b, 2).uniform_(-0.2, 0.2, generator=gen)  # [-1, 1] coordinates
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos, -sin, shift[:, 0]], 1), torch.stack([sin, cos, shift[:, 1]], 1)], 1
    )
    grid = nn.functional.affine_grid(theta, list(images.shape), align_corners=False)
    images = nn.functional.grid_sample(images, grid, "bilinear", "reflection", align_corners=False)
    masks = nn.functional.grid_sample(masks, grid, "nearest", "reflection", align_corners=False)
    return images, masks


def to_input(images_u8: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.asarray(images_u8, np.float32) / 255.0).permute(0, 3, 1, 2)
    mean = torch.tensor(IMAGENET_MEAN)[None, :, None, None]
    std = torch.tensor(IMAGENET_STD)[None, :, None, None]
    return ((x - mean) / std).contiguous(memory_format=torch.channels_last)


@torch.no_grad()
def probabilities(model, images_u8: np.ndarray, batch: int) -> np.ndarray:
    model.eval()
    out = [
        torch.sigmoid(model(to_input(images_u8[i : i + batch])))[:, 0]
        for i in range(0, len(images_u8), batch)
    ]
    model.train()
    return torch.cat(out).numpy()


def mean_dice(probs: np.ndarray, masks, threshold: float, sizes=None) -> float:
    """segjax's scorer: per-image Dice (both empty = 1), probabilities resized (bilinear) to
    `sizes` first when given."""
    counts = []
    for i, prob in enumerate(probs):
        if sizes is not None:
            prob = resize_prob(prob, sizes[i])
        counts.append(metrics.confusion_counts_np(metrics.to_mask(prob, threshold), masks[i]))
    return float(metrics.per_image_dice(np.stack(counts)).mean())


def rate(step: int, total: int, warmup: int, lr: float) -> float:
    """segjax's cosine schedule: linear warm-up from 0, then a cosine to 1% of lr."""
    if step < warmup:
        return lr * step / max(warmup, 1)
    fraction = min(max((step - warmup) / max(total - warmup, 1), 0.0), 1.0)
    return lr * 0.01 + (lr - lr * 0.01) / 2 * (math.cos(math.pi * fraction) + 1)


def main() -> None:
    started = STARTED
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--image-size", default="192x128", help="HxW")
    parser.add_argument("--split-seed", type=int, default=0)
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--test-fraction", type=float, default=0.1)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, required=True, help="minutes, as segjax's")
    parser.add_argument("--max-epochs", type=int, default=30, help="as segjax's --epochs")
    args = parser.parse_args()
    h, w = (int(v) for v in (args.image_size.lower().split("x") * 2)[:2])
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    samples = layout.discover(args.data_dir).train
    parts = sampling.split(len(samples), args.split_seed, args.val_fraction, args.test_fraction)
    arrays = decode.load(samples, (h, w))
    train_idx, val_idx, test_idx = parts["train"], parts["val"], parts["test"]
    model = Lite0UNet().to(memory_format=torch.channels_last)
    load_imagenet(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    b = args.batch_size
    steps_per_epoch = len(train_idx) // b

    def step(idx, step_number, total):
        x = to_input(arrays.images[idx])
        y = torch.from_numpy(np.asarray(arrays.masks[idx], np.float32))[:, None]
        x, y = augment(x, y, gen)
        for group in optimizer.param_groups:
            group["lr"] = rate(step_number, total, steps_per_epoch, args.lr)
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        return loss.item()

    # Plan as segjax does: time a few steps and a validation, keep a reserve for the end.
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    for i in range(2):  # warm-up: the first steps allocate and tune
        step(train_idx[i * b : (i + 1) * b], 0, 1)
    tic = time.time()
    for i in range(5):
        step(train_idx[i * b : (i + 1) * b], 0, 1)
    step_s = (time.time() - tic) / 5
    tic = time.time()
    probabilities(model, arrays.images[val_idx], 16)
    val_s = time.time() - tic
    model.load_state_dict(snapshot)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    epoch_s = steps_per_epoch * step_s + val_s + 1.0
    reserve = 10.0 + 5 * val_s + 0.15 * len(val_idx)
    remaining = started + 60 * args.time_budget - time.time()
    epochs = max(1, min(args.max_epochs, int((remaining - reserve) // epoch_s)))
    total = epochs * steps_per_epoch
    best = (-1.0, 0, None)
    rng = np.random.default_rng(args.seed)
    for epoch in range(epochs):
        order = rng.permutation(train_idx)
        for i in range(steps_per_epoch):
            step(order[i * b : (i + 1) * b], epoch * steps_per_epoch + i, total)
        val_masks = arrays.masks[val_idx]
        dice = mean_dice(probabilities(model, arrays.images[val_idx], 16), val_masks, 0.5)
        if dice > best[0]:
            best = (dice, epoch + 1, {k: v.clone() for k, v in model.state_dict().items()})
        if time.time() + epoch_s + reserve > started + 60 * args.time_budget:
            break
    model.load_state_dict(best[2])
    val_probs = probabilities(model, arrays.images[val_idx], 16)
    threshold = max(THRESHOLDS, key=lambda t: mean_dice(val_probs, arrays.masks[val_idx], t))
    test_probs = probabilities(model, arrays.images[test_idx], 16)
    originals = [decode.read_mask(samples[i].mask) for i in test_idx]
    sizes = [m.shape for m in originals]
    print(
        json.dumps(
            {
                "peer": f"torch {torch.__version__}",
                "threads": torch.get_num_threads(),
                "epochs_planned": epochs,
                "epochs_run": epoch + 1,
                "best_epoch": best[1],
                "val_mean_dice": best[0],
                "tuned_threshold": float(threshold),
                "test_mean_dice_at_0.5": mean_dice(test_probs, originals, 0.5, sizes),
                "test_mean_dice": mean_dice(test_probs, originals, float(threshold), sizes),
                "test_images": len(test_idx),
                "wall_minutes": (time.time() - started) / 60,
            }
        )
    )


if __name__ == "__main__":
    main()
