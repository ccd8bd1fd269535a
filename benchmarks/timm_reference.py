"""Reference logits and state-dict layouts of timm's encoders, for segjax's timm tests.

Computed once from timm's own definitions (never from segjax), in float64:
- for every timm model segjax offers as an encoder: its state dict's keys and shapes, and its
  parameter count without the classifier head (`layout`);
- for one model per family (ResNet-50, ResNeXt-50 32x4d, EfficientNet-B0, ConvNeXt-Tiny):
  seeded random weights (each tensor from numpy's `default_rng(crc32(key))`, the same `draw` as
  `benchmarks/reference_logits.py`, so the test draws the same weights from the key names) and
  the logits of one seeded input (`logits`).

    python -m venv /tmp/timmvenv && /tmp/timmvenv/bin/pip install torch==2.14.1 \\
        torchvision==0.29.1 timm safetensors
    /tmp/timmvenv/bin/python benchmarks/timm_reference.py  # writes tests/data/timm_reference.json
"""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import timm
import torch

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"

# segjax's encoder name -> timm's model name.
MODELS = {
    "resnet50": "resnet50",
    "resnet101": "resnet101",
    "resnext50-32x4d": "resnext50_32x4d",
    **{f"efficientnet-b{i}": f"efficientnet_b{i}" for i in range(6)},
    "convnext-tiny": "convnext_tiny",
    "convnext-small": "convnext_small",
}
CHECKED = ("resnet50", "resnext50-32x4d", "efficientnet-b0", "convnext-tiny")
HEADS = ("fc.", "classifier.", "conv_head.", "bn2.", "head.")  # the classifier heads' keys
INPUT = "numpy default_rng(2).uniform(-2, 2, (1, 64, 64, 3))"


def draw(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The seeded random value of one tensor (the test has the same function)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
        return rng.uniform(0.5, 1.5, shape)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape)
    if len(shape) == 1:
        return rng.normal(0.0, 0.1, shape)
    return rng.normal(0.0, np.sqrt(2.0 / int(np.prod(shape[1:]))), shape)


def main() -> None:
    record = {
        "about": "timm's state-dict layouts and, on seeded random weights, float64 logits; "
        f"computed with benchmarks/timm_reference.py (timm {timm.__version__}, torch "
        f"{torch.__version__}), never from segjax.",
        "input": INPUT,
        "models": {},
    }
    x = np.random.default_rng(2).uniform(-2, 2, (1, 64, 64, 3))
    for name, timm_name in MODELS.items():
        model = timm.create_model(timm_name, pretrained=False).double().eval()
        state = model.state_dict()
        params = dict(model.named_parameters())
        entry = {
            "timm": timm_name,
            "encoder_params": sum(v.numel() for k, v in params.items() if not k.startswith(HEADS)),
            "layout": {k: list(v.shape) for k, v in state.items()},
        }
        if name in CHECKED:
            drawn = {
                k: torch.from_numpy(draw(k, tuple(v.shape))).to(v.dtype) for k, v in state.items()
            }
            model.load_state_dict(drawn, strict=True)
            with torch.no_grad():
                logits = model(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()))[0].numpy()
            entry["logits"] = logits.tolist()
        record["models"][name] = entry
        print(name, entry["encoder_params"], flush=True)
    (DATA / "timm_reference.json").write_text(json.dumps(record, separators=(",", ":")))


if __name__ == "__main__":
    main()
