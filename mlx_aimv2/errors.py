"""The one error type a user can cause. The CLI prints its message as one line and exits 1."""


class UserError(Exception):
    """Bad input from the user: a file, a name, a config. The message says what and what to do."""
