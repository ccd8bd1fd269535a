"""Error analysis of a run on its validation or held-out test split (see --help)."""

from segjax.cli import run

if __name__ == "__main__":
    run("evaluate")
