"""The one error type for bad user input: its message names the file, row, key or value at fault."""


class InputError(ValueError):
    """Bad input from the user (data, config or command line); shown as one line, exit code 2."""
