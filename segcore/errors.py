"""The one exception type for bad input. Jobs print its one-line message and exit non-zero."""


class InputError(ValueError):
    """Bad user input (a file, a key, a value): the message names it and says what was expected."""
