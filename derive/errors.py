"""Errors for bad user input: one line that says what is wrong and where."""

from __future__ import annotations

__all__ = ["SpecError", "GenerationError"]


class SpecError(ValueError):
    """An architecture spec or a command-line option is invalid.

    ``where`` names the place (file, field, layer) and the message says what would be valid.
    """

    def __init__(self, message: str, where: str = "") -> None:
        self.where = where
        self.message = message
        super().__init__(f"{where}: {message}" if where else message)


class GenerationError(RuntimeError):
    """A layer cannot be generated for this weight space (for example a size limit is hit)."""
