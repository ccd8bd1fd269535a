"""The one exception type for mistakes a user can fix: the CLI prints it as one line, status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad data, a bad flag combination, a missing run or file: the message says what to do."""
