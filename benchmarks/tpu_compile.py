"""Compile segjax's real train and predict steps for a TPU slice, on a machine without one.

    pip install "jax[tpu]==<the installed jax version>"    # brings libtpu; no TPU needed
    python benchmarks/tpu_compile.py                        # v5e-8 (and v3-8) at 256 and 512
    python benchmarks/tpu_compile.py --topology v5e:2x4 --sizes 384 --batch-per-chip 16

libtpu describes the slice (`jax.experimental.topologies.get_topology_desc`), the steps are
lowered with the batch sharded over its chips and the state replicated (as `segjax train` runs
them), and XLA's TPU compiler compiles them. Nothing runs: the figures are the compiler's own,
per chip: the memory the program needs (arguments, outputs, temporaries) and its estimate of
the step time ("optimal_seconds" of its cost analysis, a lower bound).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from segjax import parallel
from segjax.config import Config, DataConfig, ModelConfig, RunFacts, TrainConfig
from segjax.data.sources import IMAGENET_MEAN, IMAGENET_STD
from segjax.inference import predictor
from segjax.train.step import create_steps, create_train_state

TOPOLOGIES = ("v5e:2x4", "v3:2x2")  # a v5e-8 (Kaggle's TPU VM) and a v3-8 (8 cores on 4 chips)
# Data-sheet peaks per device (bf16 FLOP/s, HBM bytes/s), for a roofline estimate beside the
# compiler's: a v5e chip 197 TFLOP/s and 819 GB/s; a v3 core (half a chip) 61.5 TFLOP/s and
# 450 GB/s.
PEAKS = {"TPU v5 lite": (197e12, 819e9), "TPU v5e": (197e12, 819e9), "TPU v3": (61.5e12, 450e9)}


def abstract(tree, sharding):
    """ShapeDtypeStructs of a pytree's arrays, placed with `sharding`."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def memory(compiled) -> dict[str, float]:
    stats = compiled.memory_analysis()
    parts = {
        "arguments": stats.argument_size_in_bytes,
        "outputs": stats.output_size_in_bytes,
        "temporaries": stats.temp_size_in_bytes,
        "aliased": stats.alias_size_in_bytes,
    }
    total = parts["arguments"] + parts["outputs"] + parts["temporaries"] - parts["aliased"]
    return {f"{k}_mb": v / 2**20 for k, v in {**parts, "total": total}.items()}


def cost(compiled, device_kind: str) -> dict[str, float]:
    """Per device: FLOPs and bytes accessed, the compiler's estimate of the time
    ("optimal_seconds"; NaN where it gives none: it answers with a negative number for some
    programs) and a roofline estimate from the data-sheet peaks."""
    analysis = compiled.cost_analysis()
    analysis = analysis[0] if isinstance(analysis, list) else analysis
    flops = float(analysis.get("flops", float("nan")))
    moved = float(analysis.get("bytes accessed", float("nan")))
    optimal = float(analysis.get("optimal_seconds", float("nan")))
    peak_flops, peak_bytes = PEAKS.get(device_kind, (float("nan"), float("nan")))
    return {
        "flops": flops,
        "bytes_accessed": moved,
        "optimal_seconds": optimal if optimal > 0 else float("nan"),
        "roofline_seconds": max(flops / peak_flops, moved / peak_bytes),
    }


def compile_steps(config: Config, facts: RunFacts, mesh) -> dict:
    """Lower and compile the train step and the predict step for `mesh`'s devices."""
    rep, shard = parallel.replicated(mesh), parallel.data_sharded(mesh)
    batch, (h, w) = config.train.batch_size, config.data.image_size
    steps = create_steps(config, facts, mesh, 100)
    state = jax.eval_shape(lambda: create_train_state(config, jax.random.key(0), 100, facts))
    images = jax.ShapeDtypeStruct((batch, h, w, 3), jnp.uint8, sharding=shard)
    masks = jax.ShapeDtypeStruct((batch, h, w), jnp.uint8, sharding=shard)
    key = abstract(jax.eval_shape(lambda: jax.random.key(1)), rep)
    train = steps.train.lower(abstract(state, rep), {"image": images, "mask": masks}, key)
    train = train.compile()
    variables = abstract({"params": state.params, "batch_stats": state.batch_stats}, rep)
    predict = predictor.create_predict_fn(config, facts, mesh, tta=False)
    predict = predict.lower(variables, images).compile()
    kind = mesh.devices.flat[0].device_kind
    return {
        "train": {**memory(train), **cost(train, kind)},
        "predict": {**memory(predict), **cost(predict, kind)},
    }


def run(
    topology: str, size: int, per_chip: int, encoder: str = "efficientnet-lite0", features=16
) -> dict:
    from jax.experimental import topologies

    devices = topologies.get_topology_desc(platform="tpu", topology_name=topology).devices
    mesh = jax.sharding.Mesh(np.asarray(devices), (parallel.DATA_AXIS,))
    batch = per_chip * len(devices)
    config = Config(
        data=DataConfig(image_size=(size, size)),
        model=ModelConfig(encoder=encoder, features=features),
        train=TrainConfig(batch_size=batch, eval_batch_size=batch, precision="bf16"),
    )
    facts = RunFacts(mean=IMAGENET_MEAN, std=IMAGENET_STD, dtype="bfloat16", epochs=30)
    result = compile_steps(config, facts, mesh)
    step_s = result["train"]["roofline_seconds"]
    return {
        "topology": topology,
        "device_kind": devices[0].device_kind,
        "devices": len(devices),
        "size": size,
        "batch": batch,
        "encoder": encoder,
        "features": features,
        "precision": "bf16",
        "jax": jax.__version__,
        **{f"{step}_{k}": v for step, figures in result.items() for k, v in figures.items()},
        "train_img_per_s_roofline": batch / step_s if step_s > 0 else float("nan"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--topology", nargs="+", default=list(TOPOLOGIES))
    parser.add_argument("--sizes", nargs="+", type=int, default=[256, 512])
    parser.add_argument("--batch-per-chip", type=int, default=8)
    parser.add_argument("--encoder", default="efficientnet-lite0")
    parser.add_argument("--features", type=int, default=16)
    parser.add_argument("--json", help="also append each row to this JSON-lines file")
    args = parser.parse_args(argv)
    try:
        import libtpu  # noqa: F401
    except ImportError:
        sys.exit(f'no libtpu: pip install "jax[tpu]=={jax.__version__}" (no TPU needed)')
    print(
        f"{'topology':9s} {'size':>5s} {'batch':>5s} {'train MB/dev':>12s} {'GFLOP/dev':>10s} "
        f"{'XLA ms':>7s} {'roofline ms':>11s} {'img/s':>7s} {'predict MB/dev':>14s} "
        f"{'roofline ms':>11s}"
    )
    for topology in args.topology:
        for size in args.sizes:
            try:
                row = run(topology, size, args.batch_per_chip, args.encoder, args.features)
            except Exception as err:  # an unknown topology name for this libtpu, say
                print(f"{topology:9s} {size:5d}  failed: {str(err).splitlines()[0][:200]}")
                continue
            print(
                f"{topology:9s} {size:5d} {row['batch']:5d} {row['train_total_mb']:12.0f} "
                f"{row['train_flops'] / 1e9:10.1f} {1e3 * row['train_optimal_seconds']:7.2f} "
                f"{1e3 * row['train_roofline_seconds']:11.2f} "
                f"{row['train_img_per_s_roofline']:7.0f} {row['predict_total_mb']:14.0f} "
                f"{1e3 * row['predict_roofline_seconds']:11.2f}",
                flush=True,
            )
            if args.json:
                with Path(args.json).open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
