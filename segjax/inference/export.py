"""A run's prediction function serialised with `jax.export`: it runs without segjax or flax.

The exported function takes uint8 images [b, H, W, C] at the training size (b symbolic) and
returns float32 person probabilities [b, H, W]: normalisation, the network with its weights,
and flip TTA as tuned are all inside. A JSON beside it says what a caller needs to finish
(threshold, post-processing, the size to resize to). `tools/run_exported.py` loads it with
only jax, numpy and flatbuffers installed.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.export  # a submodule that jax before 0.6 does not import itself
import jax.numpy as jnp

from segjax.config import InferenceOptions, check
from segjax.errors import UserError
from segjax.files import check_output_file, write_bytes, write_text
from segjax.inference import tuning
from segjax.inference.run_loader import load_run
from segjax.models import apply
from segjax.models.builder import create_model

PLATFORMS = ("cpu", "cuda", "tpu")


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    options: InferenceOptions = InferenceOptions(),
    platforms: tuple[str, ...] = PLATFORMS,
) -> dict:
    """Write `out` (the serialised function) and `out.json`; return that JSON's content.

    A platform that the model does not lower for is left out (and named in the JSON). Of
    `options`, the checkpoint, TTA and threshold apply.
    """
    check(options)
    out = check_output_file(out, example="model.jaxexport")
    loaded = load_run(run_dir, options.checkpoint)
    config, facts = loaded.config, loaded.facts
    post, tta = tuning.settings(run_dir, options.threshold, options.tta)
    variables = jax.device_get(loaded.variables)  # constants of the function, on no mesh
    model = create_model(config.model, facts.dtype)

    def probabilities(images_u8: jax.Array) -> jax.Array:
        return apply.predict_probs(
            variables, images_u8, apply_fn=model.apply, mean=facts.mean, std=facts.std, tta=tta
        )

    h, w = config.data.image_size
    (batch,) = jax.export.symbolic_shape("b")
    spec = jax.ShapeDtypeStruct((batch, h, w, config.data.channels), jnp.uint8)
    exported, skipped = _export(probabilities, spec, platforms)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_bytes(out, exported.serialize())
    record = {
        "function": "uint8 images [b, H, W, C] -> float32 probabilities [b, H, W]",
        "image_size": [h, w],
        "channels": config.data.channels,
        "normalization": {"mean": list(facts.mean), "std": list(facts.std)},
        "tta": tta,
        "postprocess": dataclasses.asdict(post),
        "checkpoint": loaded.step,
        "run_dir": str(run_dir),
        "platforms": list(exported.platforms),
        "not_exported_for": skipped,
        "jax_version": jax.__version__,
        "note": "resize probabilities (bilinear) to the image's size, then threshold; needs this "
        "jax version or newer, numpy and flatbuffers",
    }
    write_text(out.with_name(out.name + ".json"), json.dumps(record, indent=2) + "\n")
    return record


def _export(fn, spec, platforms: tuple[str, ...]):
    """Export for all `platforms`; drop the ones that do not lower, one at a time."""
    skipped: list[str] = []
    wanted = list(platforms)
    while wanted:
        try:
            return jax.export.export(jax.jit(fn), platforms=tuple(wanted))(spec), skipped
        except Exception as err:  # lowering rules raise many kinds for an unsupported platform
            culprit = next((p for p in wanted if p in str(err).lower()), wanted[-1])
            if culprit == "cpu":
                raise
            wanted.remove(culprit)
            skipped.append(f"{culprit}: {str(err).splitlines()[0][:200]}")
    raise UserError("the model could not be exported for any platform")
