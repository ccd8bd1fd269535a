"""A run's prediction function as an ONNX model: for onnxruntime (Python, C++, mobile) and a
web page (onnxruntime-web), without JAX.

The model takes uint8 RGB images [batch, H, W, 3] (L: [batch, H, W, 1]) at the training size,
NHWC, and returns float32 person probabilities [batch, H, W]: normalisation, the network with
its weights and flip TTA as tuned are inside. `model.onnx.json` beside it says the rest: the
size, the threshold and post-processing, how to resize back. Needs `pip install
'segjax[onnx]'` (jax2onnx, which needs jax 0.8.1 or newer, and onnxruntime for the check).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import jax
import jax.export  # a submodule that jax before 0.6 does not import itself
import jax.numpy as jnp
import numpy as np

from segjax.config import InferenceOptions, check
from segjax.errors import UserError
from segjax.files import check_output_file, write_bytes, write_text
from segjax.inference import tuning
from segjax.inference.run_loader import load_run
from segjax.models import apply, convolutions
from segjax.models.builder import create_model
from segjax.models.registry import ARCHS, ENCODERS

OPSET = 18  # onnxruntime and onnxruntime-web run it; jax2onnx writes ReduceMean as 18 has it
# How far onnxruntime's probabilities may be from segjax's: float32 sums in another order
# through up to ~60 convolutions move a probability by a few 1e-6 (seen: 1.2e-7 on the scratch
# UNet, up to 3e-6 on the pretrained encoders); a wrong layer or weight moves it by 1e-2.
TOLERANCE = 1e-4


def unsupported(config) -> str | None:
    """Why a model cannot be exported to ONNX, or None when it can (every registered encoder
    and decoder is listed here or exports)."""
    for name, entry in (("--encoder", ENCODERS[config.model.encoder]),
                        ("--arch", ARCHS[config.model.arch])):  # fmt: skip
        reason = getattr(entry, "onnx_refused", "")
        if reason:
            value = config.model.encoder if name == "--encoder" else config.model.arch
            return f"{name} {value}: {reason}"
    return None


def _convert(fn, spec):
    try:
        import jax2onnx
    except ImportError:
        raise UserError(
            "exporting to ONNX needs jax2onnx: pip install 'segjax[onnx]' (it needs jax 0.8.1 "
            "or newer)"
        ) from None
    logging.getLogger("onnx_ir").setLevel(logging.ERROR)  # its notes on shape metadata
    # jax2onnx adds a convolution's bias by broadcasting (allowed whatever the caller's setting)
    with convolutions.portable(), jax.numpy_rank_promotion("allow"):  # one form of each layer
        proto = jax2onnx.to_onnx(
            fn, [spec], opset=OPSET, input_names=["images"], output_names=["probabilities"]
        )
    # The intermediate shapes it declares are optional metadata, and some are wrong (a
    # BatchNorm's NCHW output declared NHWC), which onnxruntime-web refuses: leave them out and
    # check that ONNX's own shape inference runs through the whole graph.
    import onnx

    del proto.graph.value_info[:]
    onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    return proto


def export_onnx(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    options: InferenceOptions = InferenceOptions(),
    *,
    batch: int | None = None,
) -> dict:
    """Write `out` (model.onnx) and `out.json`, check the model with onnxruntime against segjax
    on a batch of random images, and return the JSON's content. `batch`: a fixed batch size
    (default: any)."""
    check(options)
    out = check_output_file(out, example="model.onnx")
    loaded = load_run(run_dir, options.checkpoint)
    config, facts = loaded.config, loaded.facts
    refused = unsupported(config)
    if refused:
        raise UserError(f"{run_dir}: cannot export to ONNX: {refused}")
    post, tta = tuning.settings(run_dir, options.threshold, options.tta)
    variables = jax.device_get(loaded.variables)
    model = create_model(config.model, facts.dtype)

    def probabilities(images_u8: jax.Array) -> jax.Array:  # what segjax predicts with
        return apply.predict_probs(
            variables, images_u8, apply_fn=model.apply, mean=facts.mean, std=facts.std, tta=tta
        )

    def exported(images_u8: jax.Array) -> jax.Array:
        """The same probabilities; with TTA the images and their mirrors go through the
        network as one batch, so that the file holds the weights once."""
        if not tta:
            return probabilities(images_u8)
        both = jnp.concatenate([images_u8, images_u8[:, :, ::-1]], axis=0)
        probs = apply.probabilities(model.apply, variables, both, facts.mean, facts.std)
        plain, mirrored = probs.reshape(2, *images_u8.shape[:3])  # a symbolic batch splits so
        return 0.5 * (plain + mirrored[:, :, ::-1])

    h, w = config.data.image_size
    channels = config.data.channels
    size = batch if batch else jax.export.symbolic_shape("batch")[0]
    proto = _convert(exported, jax.ShapeDtypeStruct((size, h, w, channels), jnp.uint8))
    write_bytes(out, proto.SerializeToString())
    error = check_against_segjax(out, probabilities, (batch or 2, h, w, channels))
    record = {
        "input": f"images: uint8 [batch, {h}, {w}, {channels}] (NHWC, "
        f"{'L' if channels == 1 else 'RGB'} at the training size; batch "
        f"{batch if batch else 'any'})",
        "output": f"probabilities: float32 [batch, {h}, {w}]",
        "image_size": [h, w],
        "channels": channels,
        "channel_order": "L" if channels == 1 else "RGB",
        "resize_input": "bilinear to the training size (PIL's, as segjax decodes)",
        "resize_output": "bilinear: the probabilities to the image's own size, then threshold",
        "normalization": {"mean": list(facts.mean), "std": list(facts.std), "inside": True},
        "tta": tta,
        "postprocess": dataclasses.asdict(post),
        "checkpoint": loaded.step,
        "run_dir": str(run_dir),
        "opset": OPSET,
        "checked": f"onnxruntime within {error:.1e} of segjax (tolerance {TOLERANCE:g})",
    }
    write_text(out.with_name(out.name + ".json"), json.dumps(record, indent=2) + "\n")
    return record


def check_against_segjax(path: Path, fn, shape: tuple[int, ...]) -> float:
    """The largest difference between onnxruntime's and segjax's probabilities on random
    images of `shape`; an error when it exceeds TOLERANCE (the file is removed then)."""
    images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    theirs = session(path).run(None, {"images": images})[0]
    ours = np.asarray(jax.jit(fn)(images))
    error = float(np.max(np.abs(theirs - ours)))
    if not error <= TOLERANCE:
        path.unlink(missing_ok=True)
        raise UserError(
            f"{path}: onnxruntime's probabilities differ from segjax's by {error:.2g} (more than "
            f"{TOLERANCE:g}); not written"
        )
    return error


def session(path: str | os.PathLike):
    """An onnxruntime inference session of a model file on the CPU."""
    try:
        import onnxruntime
    except ImportError:
        raise UserError("running ONNX models needs onnxruntime: pip install onnxruntime") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # its shape-merge notes are not the user's concern
    options.enable_cpu_mem_arena = False  # batches of one size: its arena only grew the RSS
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def attach(loaded, path: str | os.PathLike | None, tta: bool):
    """The loaded run with an onnxruntime session of its exported model (default
    <run>/model.onnx) as its network, for `--backend onnxruntime`; the model's TTA (fixed when
    it was exported) must be the one asked for."""
    path = Path(path) if path else Path(loaded.run_dir) / "model.onnx"
    record_path = path.with_name(path.name + ".json")
    if not path.is_file() or not record_path.is_file():
        raise UserError(
            f"{path}: no ONNX model (and its .json) there; export it first: segjax export "
            f"--format onnx --run-dir {loaded.run_dir} --out {path}"
        )
    record = json.loads(record_path.read_text())
    if record["image_size"] != list(loaded.config.data.image_size):
        raise UserError(f"{path}: exported at {record['image_size']}, not for this run")
    if bool(record["tta"]) != bool(tta):
        raise UserError(
            f"{path} was exported with TTA {'on' if record['tta'] else 'off'}: export it again "
            f"with --{'' if tta else 'no-'}tta to predict with TTA {'on' if tta else 'off'}"
        )
    return loaded._replace(network=session(path))
