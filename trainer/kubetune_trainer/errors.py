"""Failure kinds the trainer tells apart, because the operator reacts to each differently.

- UserError: the spec, the data or a URI is wrong; retrying cannot help (exit 10, job fails at once).
- InfraError: storage, network, hardware; a retry may succeed (exit 20, retried up to backoffLimit).
Anything else that escapes is a bug in kubetune (exit 30, traceback on stderr).

Messages are shown to users (termination log, status.message): say what is wrong and where
(field, file, row, column), never include a secret.
"""

from __future__ import annotations


class TrainerError(Exception):
    """A failure with a message a user can act on."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserError(TrainerError):
    """Bad spec, data or URI: retrying cannot help."""


class InfraError(TrainerError):
    """Storage, network or hardware trouble: a retry may succeed."""
