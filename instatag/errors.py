"""Errors every stage shares."""


class UserError(Exception):
    """Bad input or set-up the user can fix: the CLI prints it without a traceback (exit code 2)."""
