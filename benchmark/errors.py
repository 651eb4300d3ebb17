"""User-facing errors: one paragraph naming the file, the field and the fix; no traceback."""

from __future__ import annotations


class BenchError(Exception):
    """An error the CLI prints as a clear paragraph and exits non-zero on."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None, fix: str | None = None):
        self.message = message
        self.file = file
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def render(self) -> str:
        where = []
        if self.file:
            where.append(f"in {self.file}")
        if self.field:
            where.append(f"at field '{self.field}'")
        text = ("Error " + ", ".join(where) + ": " if where else "Error: ") + self.message.rstrip(".") + "."
        if self.fix:
            text += f" Fix: {self.fix.rstrip('.')}."
        return text


class SpecError(BenchError):
    """A spec file is malformed or inconsistent."""


class DataError(BenchError):
    """A dataset split cannot be found or does not match its spec."""


class CheckpointError(BenchError):
    """A weights file is malformed or does not fit the model."""


class StorageError(BenchError):
    """Results or weights could not be written (disk full, permissions): the grid stops."""
