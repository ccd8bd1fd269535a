"""What every `segjax` command shares: its record, its flags for the process and for several
hosts, the run folder flag, and one line for a user's mistake. No JAX import at module level."""

from __future__ import annotations

import argparse
import contextlib
import sys
import warnings
from collections.abc import Callable
from typing import NamedTuple

from segjax.errors import UserError


class Command(NamedTuple):
    help: str  # one line for `segjax --help`
    description: str  # the command's --help
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int | None]  # returns the exit status (None: 0)
    hugepages: bool = False  # restart with glibc huge pages first (long CPU work)


@contextlib.contextmanager
def user_errors():
    """A user's mistake (UserError) exits with status 2 and one line; other errors keep their
    traceback. Data warnings print as one line too."""
    previous = warnings.showwarning
    warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
    try:
        yield
    except UserError as err:
        print(f"error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    finally:
        warnings.showwarning = previous


def process_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("process")
    group.add_argument(
        "--default-xla-flags", action="store_true", help="do not set segjax's XLA:CPU speed flags"
    )


def distributed_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("several hosts")
    group.add_argument(
        "--distributed",
        action="store_true",
        help="call jax.distributed.initialize() first (run the command on every host)",
    )
    group.add_argument(
        "--coordinator",
        help="host:port of process 0 (default: auto-detected on "
        "Cloud TPU, SLURM, Open MPI; or $JAX_COORDINATOR_ADDRESS)",
    )
    group.add_argument("--num-processes", type=int, help="number of processes (default: detected)")
    group.add_argument("--process-id", type=int, help="this process's index (default: detected)")


def initialize_distributed(args: argparse.Namespace) -> None:
    if not getattr(args, "distributed", False):
        return
    import jax

    # CPU-only hosts need a collectives backend across processes; GPUs and TPUs ignore it.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(args.coordinator, args.num_processes, args.process_id)


def runs_flag(parser: argparse.ArgumentParser, several: bool) -> None:
    if several:
        parser.add_argument(
            "--run-dir",
            nargs="+",
            metavar="RUN",
            help="a run folder, a k-fold folder (train --fold all) or several runs, whose "
            "probabilities are averaged (default: the newest run or k-fold folder under runs/)",
        )
    else:
        parser.add_argument("--run-dir", help="run folder (default: the newest under runs/)")
