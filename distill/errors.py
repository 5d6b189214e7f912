"""Errors meant for the user: one line, no traceback, exit code 2."""


class UserError(Exception):
    """A mistake in the user's input (recipe, data, command line) that they can fix."""

    exit_code = 2


class RecipeError(UserError):
    """A recipe key is unknown, of the wrong type, or points at something missing."""


class DataError(UserError):
    """A data row is malformed; the message names its file and line."""


class StageError(Exception):
    """A stage could not finish for a reason other than bad input."""
