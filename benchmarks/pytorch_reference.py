"""segjax's train steps in PyTorch, for a side-by-side speed check (not part of CI).

`--model unet` is segjax's scratch UNet (3x3 conv without bias + BatchNorm + ReLU twice per
block, 2x2 max-pool, 2x2 stride-2 transposed-conv upsampling, 1x1 head). `--model lite0` is a
UNet on the EfficientNet-Lite0 of the `efficientnet-lite-pytorch` package (skips: the last
output at each stride) with an SMP-like decoder (nearest upsampling, two conv-BN-ReLU per
stage, 256-128-64-32-16 channels): segjax's `--encoder efficientnet-lite0 --features 16
--upsample nearest`. `--model timm:resnet50` (or another timm encoder with features at strides
2..32) is the same decoder on a timm encoder. Same step (Adam, BCE + soft Dice), NHWC memory
(channels_last). Needs `pip install torch==2.13.0` (and `efficientnet-lite-pytorch` for lite0,
timm for timm:NAME). Prints one JSON line.

    python benchmarks/pytorch_reference.py --compile --image-size 256 --features 32 --batch-size 8
    python benchmarks/pytorch_reference.py --model lite0 --image-size 192x128 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch
from torch import nn


def block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    def __init__(self, features: int = 32, depth: int = 4):
        super().__init__()
        widths = [features * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [block(3 if i == 0 else widths[i - 1], widths[i]) for i in range(depth)]
        )
        self.bottleneck = block(widths[depth - 1], widths[depth])
        self.up = nn.ModuleList(
            [
                nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                for i in reversed(range(depth))
            ]
        )
        self.dec = nn.ModuleList([block(2 * widths[i], widths[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(features, 1, 1)

    def forward(self, x):
        skips = []
        for down in self.down:
            x = down(x)
            skips.append(x)
            x = nn.functional.max_pool2d(x, 2)
        x = self.bottleneck(x)
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


class SmpUNet(nn.Module):
    """An SMP-like decoder (nearest upsampling, two conv-BN-ReLU per stage) on an encoder whose
    `features(x)` gives its skips at strides 2..16 and its stride-32 feature."""

    def __init__(self, channels: list[int], decoder=(256, 128, 64, 32, 16)):
        super().__init__()
        ins = [channels[-1], *decoder[:-1]]
        extra = [*reversed(channels[:-1]), 0]
        self.blocks = nn.ModuleList(
            [block(i + e, o) for i, e, o in zip(ins, extra, decoder, strict=True)]
        )
        self.head = nn.Conv2d(decoder[-1], 1, 1)

    def forward(self, x):
        skips, x = self.features(x)
        for blk in self.blocks:
            x = nn.functional.interpolate(x, scale_factor=2, mode="nearest")
            if skips:
                x = torch.cat([skips.pop(), x], dim=1)
            x = blk(x)
        return self.head(x)


class TimmUNet(SmpUNet):
    """A timm encoder (features at strides 2..32, random init) + the SMP-like decoder:
    segjax's `--encoder resnet50 --features 16 --upsample nearest` and the like."""

    def __init__(self, name: str):
        import timm

        encoder = timm.create_model(name, features_only=True, pretrained=False)
        assert encoder.feature_info.reduction() == [2, 4, 8, 16, 32], name
        super().__init__(encoder.feature_info.channels())
        self.encoder = encoder

    def features(self, x):
        *skips, x = self.encoder(x)
        return skips, x


class Lite0UNet(SmpUNet):
    """EfficientNet-Lite0 encoder (random init: the speed is the same) + SMP-like decoder."""

    def __init__(self):
        from efficientnet_lite_pytorch import EfficientNet

        super().__init__([16, 24, 40, 112, 320])  # channels at strides 2, 4, 8, 16, 32
        self.encoder = EfficientNet.from_name("efficientnet-lite0")

    def features(self, x):
        enc = self.encoder
        x = enc._swish(enc._bn0(enc._conv_stem(x)))
        skips = []
        for b in enc._blocks:
            if b._block_args.stride == 2 or b._block_args.stride == [2]:
                skips.append(x)
            x = b(x)
        return skips, x


def loss_fn(logits, masks):
    bce = nn.functional.binary_cross_entropy_with_logits(logits, masks)
    p = torch.sigmoid(logits).flatten(1)
    y = masks.flatten(1)
    tp = (p * y).sum(1)
    dice = 1 - (2 * tp + 1) / (p.sum(1) + y.sum(1) + 1)
    return bce + dice.mean()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="unet", help="unet, lite0 or timm:NAME (e.g. timm:resnet50)"
    )
    parser.add_argument("--image-size", default="256", help="N or HxW")
    parser.add_argument("--features", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--compile", action="store_true", help="torch.compile the step")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--bf16", action="store_true", help="bfloat16 autocast (GPU)")
    parser.add_argument(
        "--fp16", action="store_true", help="float16 autocast with a GradScaler (GPU)"
    )
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model.startswith("timm:"):
        model = TimmUNet(args.model[len("timm:") :])
    else:
        model = UNet(args.features) if args.model == "unet" else Lite0UNet()
    device = torch.device(args.device)
    model = model.to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    b = args.batch_size
    h, w = (int(v) for v in (args.image_size.split("x") * 2)[:2])
    x = torch.randn(b, 3, h, w, device=device).contiguous(memory_format=torch.channels_last)
    y = (torch.rand(b, 1, h, w, device=device) > 0.5).float()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    low = torch.float16 if args.fp16 else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type, enabled=args.fp16)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=low, enabled=args.bf16 or args.fp16):
            logits = model(x)
        loss = loss_fn(logits.float(), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss

    run = torch.compile(step) if args.compile else step
    for _ in range(3):
        run()
    sync()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - t)
    median = float(np.median(times))
    print(
        json.dumps(
            {
                "framework": f"torch {torch.__version__}",
                "model": args.model,
                "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
                "bf16": args.bf16,
                "fp16": args.fp16,
                "compile": args.compile,
                "threads": torch.get_num_threads(),
                "step_ms": median * 1e3,
                "img_per_s": b / median,
            }
        )
    )


if __name__ == "__main__":
    main()
