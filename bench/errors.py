"""The errors a user can cause; the CLI prints each as one line and exits with status 2."""


class BenchError(Exception):
    """Bad input (flag, configuration, plugin name, results folder); the message says what and where."""


class DataError(BenchError):
    """A suite's data set is missing, malformed or too small; the message says what was expected and where."""
