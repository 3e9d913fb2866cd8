"""The one base class for errors caused by user input: the CLI prints these without a traceback."""


class UserError(Exception):
    """Bad input (a config, a file, a name): the message says what was wrong and what is accepted."""
