"""The exceptions for mistakes a user can fix: the CLI prints them as one line, exit status 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad data, a bad flag combination, a missing run or file: the message says what to do."""


class DataError(UserError):
    """A problem with the user's data: the message names the file and the fault."""


class DataWarning(UserWarning):
    """Something in the user's data that segjax skipped: the message names it."""
