"""User-facing errors.

Every problem a user can cause (a bad path, a corrupt file, a bad option) raises a
`HearthError` whose message is one line naming the problem and what to do. The CLI prints
that line and exits non-zero; anything else is a bug and keeps its traceback.
"""


class HearthError(Exception):
    """A problem with the user's input, reported as one line without a traceback."""


class ModelFormatError(HearthError):
    """A weights file or directory hearth cannot read (missing, corrupt, unsupported)."""


class ContextLengthError(HearthError):
    """The prompt plus the requested tokens do not fit in the model's context window."""


class Interrupted(HearthError):
    """The user stopped a long job (Ctrl-C) and it stopped cleanly; the CLI exits 130."""
