"""segjax: UNet-family person segmentation in JAX/Flax, and Kaggle submissions.

    import segjax
    config = segjax.Config.build(arch="attn", epochs=3)   # no data_dir: the synthetic demo
    run = segjax.train(config, "runs/attn")
    table = segjax.evaluate(run)                         # per-image scores, a DataFrame
    segjax.submit(run)                                   # runs/attn/submission.csv
    masks = segjax.predict(run, ["photo.jpg"])

The names load on first use, so `import segjax` imports no JAX. docs/api.md has more.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Config": "segjax.config",
    "Run": "segjax.api",
    "train": "segjax.api",
    "submit": "segjax.api",
    "evaluate": "segjax.api",
    "predict": "segjax.api",
    "Ended": "segjax.train.progress",
    "errors": "segjax.errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'segjax' has no attribute {name!r}")
    if name == "Config":  # its choices come from the registries, which fill in on import
        importlib.import_module("segjax.models.registry")
        importlib.import_module("segjax.losses")
    module = importlib.import_module(_EXPORTS[name])
    return module if name == "errors" else getattr(module, name)


def __dir__() -> list[str]:
    return __all__
