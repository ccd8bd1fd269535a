"""`python -m segjax <command> [flags]`: the same as the `segjax` command."""

from segjax.cli import main

if __name__ == "__main__":
    main()
