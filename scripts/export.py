"""Serialise a run's prediction function with jax.export (see --help)."""

from segjax.cli import run

if __name__ == "__main__":
    run("export")
