"""The project's errors: every one is a sentence naming the object, what was expected and what
was found, and the fix; the command line maps each kind to its exit code, once."""


class SinError(Exception):
    """Base of every error the project reports without a traceback."""

    exit_code = 1


class InputError(SinError):
    """Bad input or a state the command cannot work with; nothing was changed (exit 2)."""

    exit_code = 2


class OperationFailed(SinError):
    """A step failed; the live data was left as it was or put back (exit 1)."""

    exit_code = 1
