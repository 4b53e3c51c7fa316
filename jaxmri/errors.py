"""Exceptions that mean "the input is wrong", as opposed to a bug in jaxmri.

Readers and validators raise :class:`UserInputError` (a ``ValueError``) when a file, folder or
option given by the user cannot be used: a missing or corrupt data file, a volume that is
constant, k-space of the wrong dtype, a batch size larger than the training set, an unwritable
workdir. Its message is one sentence that names the file or option, says what is wrong with it
and, where there is one, what to do instead. The experiment entry points
(:func:`jaxmri.train.cli.exit_on_user_error`) print exactly that message as
``error: <message>`` and exit with code 2; any other exception is a bug and keeps its traceback.

Library users catch ``ValueError`` (or ``FileNotFoundError`` for a missing path) as before: the
subclasses below keep those bases.
"""

from __future__ import annotations

__all__ = ["UserInputError", "MissingInputError", "MissingCheckpointError"]


class UserInputError(ValueError):
    """Input the user gave (data, folder, option) cannot be used; the message says why."""


class MissingInputError(UserInputError, FileNotFoundError):
    """A path the user gave does not exist."""


class MissingCheckpointError(UserInputError, FileNotFoundError):
    """Resuming was required but the workdir holds no checkpoint.

    Attributes: ``directory``, the checkpoint folder that was searched.
    """

    def __init__(self, message: str, directory):
        super().__init__(message)
        self.directory = directory
