"""The one exception type for user error: the CLI prints its message on one line and exits with code 2."""


class UserError(Exception):
    """Bad input from the user (a path, a config value, a corpus); the message names the field or file."""
