"""Write docs/cli.md: every command's flags, generated from segjax's settings.

python tools/cli_reference.py            # rewrites docs/cli.md
"""

from __future__ import annotations

from pathlib import Path

from segjax.cli.reference import markdown

PAGE = Path(__file__).resolve().parents[1] / "docs" / "cli.md"

if __name__ == "__main__":
    PAGE.write_text(markdown())
    print(f"wrote {PAGE}")
