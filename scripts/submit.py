"""Write runs/<name>/submission.csv from a run's best checkpoint (see --help)."""

from segjax.cli import run

if __name__ == "__main__":
    run("submit")
