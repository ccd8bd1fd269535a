"""Everything before the first step: checks, the run folder, the data, the jitted steps, and a
fresh state (pretrained or `--init-from` weights) or the state of the newest readable checkpoint."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import MappingProxyType
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from segjax import parallel
from segjax.config import Config, RunFacts, check
from segjax.data import decode, sampling, sources
from segjax.data.decode import Arrays
from segjax.errors import DataError, UserError
from segjax.models import pretrained, weight_files
from segjax.models.builder import total_stride
from segjax.runs import checkpoint, metrics_log, run_folder
from segjax.train import optim, precision
from segjax.train.progress import Progress
from segjax.train.step import (
    Steps,
    TrainState,
    compile_ahead,
    create_steps,
    create_train_state,
    init_variables,
    state_parts,
)


class Setup(NamedTuple):
    """What one `fit` call works with, besides the train state and its progress."""

    config: Config  # the user's settings (config.json)
    facts: RunFacts  # what the run found (run.json): normalisation, dtype, weights, epochs
    run_dir: Path
    splits: sources.Splits
    steps_per_epoch: int
    steps: Steps
    mesh: Any
    manager: Any  # the Orbax CheckpointManager of run_dir/checkpoints
    lead: bool  # process 0: writes the run folder's files
    # where the time before the first step went, in seconds: "decode" (the images or their
    # cache), "compile" (the steps; meanwhile the model's init and its weights), "eval_compile"
    # (of which the evaluation step's: tuning compiles two like it)
    startup: Mapping[str, float] = MappingProxyType({})
    budget: Any = None  # --time-budget: a `segjax.train.budget.Budget` (the plan is in facts)
    session: Any = None  # --session-limit: a `segjax.train.budget.SessionLimit`

    @property
    def epochs(self) -> int:
        """The epochs the schedule spans (the last may be cut: see `schedule_steps`)."""
        return self.facts.epochs

    @property
    def schedule_steps(self) -> int:
        """The steps the schedule spans: training ends there."""
        return self.facts.steps or self.facts.epochs * self.steps_per_epoch


Extra = tuple[Arrays, str] | None  # more training images, and their record for run.json


def check_image_size(config: Config) -> None:
    """The training size must be at least the model's total stride on each side."""
    stride = total_stride(config.model)
    h, w = config.data.image_size
    small = config.train.small_size
    if small and (small[0] > h or small[1] > w or small[0] < stride or small[1] < stride):
        raise UserError(
            f"--small-size {small[0]}x{small[1]}: progressive resizing's size must be at most "
            f"--image-size {h}x{w} and at least the model's total stride {stride} on each side"
        )
    if min(h, w) < stride:
        scratch = config.model.encoder == "scratch"
        raise UserError(
            f"--image-size {h}x{w} is smaller than the model's total stride {stride} "
            f"({'2^depth' if scratch else f'of the {config.model.encoder} encoder'}): use at "
            f"least {stride}x{stride}{', or a smaller --depth' if scratch else ''}"
        )


def small_phase(fraction: float, epochs: int) -> int:
    """Progressive resizing's smaller phase: the share `fraction` of `epochs`, leaving at least
    one epoch at the full size."""
    return min(round(fraction * epochs), max(epochs - 1, 0))


def initial_facts(config: Config, splits: sources.Splits) -> RunFacts:
    """What a new run knows before its first step: the normalisation statistics of its
    training images, its compute dtype, its schedule's length."""
    mean, std = sources.normalization(config, splits.arrays.images[splits.train])
    tc = config.train
    chosen = precision.choose(tc.precision, precision.this_device())
    dtype = precision.COMPUTE_DTYPES[chosen]
    small = small_phase(tc.small_fraction, tc.epochs) if tc.small_size else 0
    return RunFacts(mean=mean, std=std, dtype=dtype, epochs=tc.epochs, small_epochs=small)


def start(
    config: Config, run_dir: Path, *, resume: bool, overwrite: bool, extra: Extra = None
) -> tuple[Setup, TrainState, Progress]:
    """Check, claim the folder, decode and split the data, jit the steps, then start fresh or
    from the newest readable checkpoint (`resume`): the setup, the state and where the run
    stands. A new run's folder is created last, once everything it needs has been read.
    `extra`: more training images (pseudo-labels) and their record for run.json; a resume must
    be given the same ones."""
    check(config)
    tc = config.train
    parallel.check_batch_size(tc.batch_size)
    parallel.check_batch_size(tc.eval_batch_size, "--eval-batch-size")
    check_image_size(config)
    lead = jax.process_index() == 0
    if lead:
        run_folder.claim(run_dir, resume=resume, overwrite=overwrite)
        if not resume:  # a wrong weights file fails here, before anything compiles
            path = pretrained.weights_file(config.model.encoder, config.model.encoder_weights)
            if path is not None:
                weight_files.check_readable(path)
    mesh = parallel.create_mesh()
    began = time.perf_counter()
    splits = sources.load_splits(config)
    if not len(splits.val):
        raise DataError("the validation split is empty: raise --val-fraction")
    resuming = resume and run_folder.has_checkpoints(run_dir)
    facts = run_folder.read_facts(run_dir) if resuming else initial_facts(config, splits)
    if extra is not None:
        splits, facts = _with_extra(splits, facts, extra, resuming, run_dir)
    spe = sampling.steps_per_epoch(len(splits.train), tc.batch_size)
    key = jax.random.fold_in(jax.random.key(tc.seed), 0)
    steps = create_steps(config, facts, mesh, spe)
    decoded = time.perf_counter()
    # The steps compile in threads while this one initialises the model (itself a compiled
    # program) and reads the weights or the checkpoint: on a cold start compiling is most of
    # the time to the first step, and XLA compiles several programs at once.
    with ThreadPoolExecutor(3) as pool:
        parts = state_parts(config, spe, facts)
        shapes = jax.eval_shape(lambda: create_train_state(config, key, spe, facts, parts))
        compiling = compile_ahead(steps, shapes, config, mesh, pool)
        state = parallel.put_replicated(
            create_train_state(config, key, spe, facts, parts), parallel.replicated(mesh)
        )
        setup = Setup(config, facts, run_dir, splits, spe, steps, mesh, None, lead)
        begun = _resume(_with_manager(setup), state) if resuming else _fresh(setup, state)
        seconds = {name: done.result() for name, done in compiling.items()}
    setup, state, progress = begun
    startup = {
        "decode": decoded - began,
        "compile": time.perf_counter() - decoded,
        "eval_compile": seconds["eval"],
    }
    setup = setup._replace(startup=MappingProxyType(startup))
    if resuming:
        return setup, state, progress
    setup = _with_manager(setup)
    if extra is not None and lead:  # kept, so that a resume trains on these very labels
        decode.save_arrays(run_dir / run_folder.PSEUDO_FILE, extra[0])
    return setup, state, progress


def _with_extra(splits, facts: RunFacts, extra: Extra, resuming: bool, run_dir: Path):
    """Pseudo-labelled images join the training split; a resume checks they are the ones the
    run started with."""
    arrays, record = extra
    if resuming and facts.pseudo_labels != record:
        raise UserError(
            f"{run_dir}: the pseudo-labels differ from the ones this run started with "
            f"({facts.pseudo_labels or 'none'}; now {record}): has the labelling run changed? "
            "Start a new run instead of resuming"
        )
    return sources.with_extra(splits, arrays), dataclasses.replace(facts, pseudo_labels=record)


def _with_manager(setup: Setup) -> Setup:
    """The run's checkpoint manager (creating the run folder)."""
    folder = run_folder.writable(setup.run_dir) / "checkpoints"
    return setup._replace(manager=checkpoint.create_manager(folder))


def _resume(setup: Setup, state: TrainState) -> tuple[Setup, TrainState, Progress]:
    """The newest readable checkpoint: state, and progress with the metrics rows it covers."""
    state, meta, step, skipped = checkpoint.restore_newest_readable(setup.manager, state)
    for reason in skipped:
        print(f"warning: {reason}; resuming from epoch {step}", flush=True)
    metrics_path = setup.run_dir / "metrics.jsonl"
    epoch = meta["position"][0]
    rows = metrics_log.trim_metrics(metrics_path, epoch) if setup.lead else []
    progress = Progress.from_meta(meta, tuple(rows))
    epochs, steps = setup.config.train.epochs, 0
    saved = _saved_steps(meta, setup.steps_per_epoch)
    if meta["config"]["train"]["epochs"] != epochs:  # --epochs changed on resume: a new length
        _report_schedule_change(saved, setup, state)
    else:
        epochs, steps = _saved_epochs(meta), meta["facts"].get("steps", 0)
    small = meta["facts"].get("small_epochs", setup.facts.small_epochs)
    facts = dataclasses.replace(setup.facts, epochs=epochs, steps=steps, small_epochs=small)
    return setup._replace(facts=facts), state, progress


def _saved_epochs(meta: dict) -> int:
    """The schedule's length when the checkpoint was written."""
    return meta["facts"]["epochs"]


def _saved_steps(meta: dict, spe: int) -> int:
    return meta["facts"].get("steps", 0) or _saved_epochs(meta) * spe


def _fresh(setup: Setup, state: TrainState) -> tuple[Setup, TrainState, Progress]:
    """Pretrained encoder weights or another run's (`--init-from`), and no metrics yet."""
    state, source = load_pretrained(state, setup.config, setup.mesh)
    if source:
        setup = setup._replace(facts=dataclasses.replace(setup.facts, encoder_source=source))
    if setup.config.train.init_from:
        state = _init_from(state, setup.config)
    if state.ema is not None:  # the averages start from the weights training starts from
        weights = {"params": state.params, "batch_stats": state.batch_stats}
        state = state.replace(ema=jax.tree.map(jnp.copy, weights))  # copies: see create_train_state
    if setup.lead:
        (setup.run_dir / "metrics.jsonl").unlink(missing_ok=True)
    return setup, state, Progress()


def load_pretrained(state: TrainState, config: Config, mesh) -> tuple[TrainState, str]:
    """Put the pretrained encoder's weights into a fresh state; also return their source
    (the file and its sha256; "" when there is nothing to load)."""
    m = config.model
    path = pretrained.weights_file(m.encoder, m.encoder_weights)
    if path is None:
        return state, ""
    template = {"params": state.params["encoder"]}
    if "encoder" in state.batch_stats:  # ConvNeXt has no BatchNorm
        template["batch_stats"] = state.batch_stats["encoder"]
    template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), template)
    loaded, source = pretrained.load_file(m.encoder, path, template)
    loaded = parallel.put_replicated(loaded, parallel.replicated(mesh))
    state = state.replace(params={**state.params, "encoder": loaded["params"]})
    if "batch_stats" in loaded:
        state = state.replace(batch_stats={**state.batch_stats, "encoder": loaded["batch_stats"]})
    return state, source


def _init_from(state: TrainState, config: Config) -> TrainState:
    """Fine-tuning: the weights and BatchNorm statistics of another run's best epoch (their
    moving averages, if that run kept them: what it validated)."""
    source_dir = Path(config.train.init_from)
    source, facts = run_folder.read_run(source_dir)
    shapes = lambda tree: jax.tree.map(lambda x: tuple(x.shape), tree)
    theirs = jax.eval_shape(lambda: init_variables(source, jax.random.key(0), facts.dtype))
    if shapes(theirs["params"]) != shapes(state.params):
        raise UserError(
            f"--init-from {source_dir}: its model differs from this run's (arch/options)"
        )
    manager = checkpoint.create_manager(source_dir / "checkpoints", read_only=True)
    template = {"params": state.params, "batch_stats": state.batch_stats}
    try:
        step = checkpoint.resolve_step(manager, "best")
        variables = checkpoint.restore_variables(manager, step, template, source.train.ema > 0)
    finally:
        manager.close()
    return state.replace(params=variables["params"], batch_stats=variables["batch_stats"])


def _report_schedule_change(saved: int, setup: Setup, state: TrainState) -> None:
    """One line when a resume changes the schedule's length (--epochs), so the rate moves;
    `saved`: the steps it spanned."""
    tc, spe = setup.config.train, setup.steps_per_epoch
    if tc.schedule in ("constant", "plateau"):
        return
    step = int(state.step)
    old = optim.learning_rate_at(tc, step, saved, spe)
    new = optim.learning_rate_at(tc, step, tc.epochs * spe, spe)
    print(
        f"resuming at step {step} with --epochs {tc.epochs} (was {saved / spe:.3g}): the "
        f"{tc.schedule} schedule now spans {tc.epochs} epochs, so the learning rate continues "
        f"at {float(new):.3g} instead of {float(old):.3g} and ends with epoch {tc.epochs}",
        flush=True,
    )
