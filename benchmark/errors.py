"""User-facing errors: one paragraph naming the file, the field and the fix; no traceback."""

from __future__ import annotations

import errno
import os
from functools import partial


class BenchError(Exception):
    """An error the CLI prints as a clear paragraph and exits non-zero on."""

    def __init__(self, message: str, *, file: str | None = None, field: str | None = None, fix: str | None = None):
        self.message = message
        self.file = file
        self.field = field
        self.fix = fix
        super().__init__(self.render())

    def __reduce__(self):  # survive a process pool (``--jobs``): rebuild from the parts, not the text
        return (partial(type(self), file=self.file, field=self.field, fix=self.fix), (self.message,))

    def render(self) -> str:
        where = ", ".join(w for w in (self.file and f"in {self.file}", self.field and f"at field '{self.field}'") if w)
        text = (f"Error {where}: " if where else "Error: ") + self.message.rstrip(".") + "."
        if self.fix:
            text += f" Fix: {self.fix.rstrip('.')}."
        return text


class SpecError(BenchError):
    """A spec file is malformed or inconsistent."""


class DataError(BenchError):
    """A dataset split cannot be found or does not match its spec."""


class CheckpointError(BenchError):
    """A weights file is malformed or does not fit the model."""


class DataUnavailable(DataError):
    """A split's data is not there (a missing local file, a split the mirror lacks, the Hub unreachable).

    Unlike other DataErrors this is an expected state of a checkout, not a broken spec: a plan skips
    the task with this message instead of training (and failing) its runs.
    """


class HubUnreachable(DataUnavailable):
    """The Hugging Face Hub did not answer (``benchmark/data/hub.py``); every Hub task is skipped at once."""


class StorageError(BenchError):
    """Writing results, weights or caches failed in the operating system (disk full, read-only, quota).

    Raised instead of a chain of OSErrors so the runner can stop the grid with one paragraph; every
    file is written to a temp name and renamed, so what was finished before is intact.
    """

    @classmethod
    def from_os_error(cls, path, e: Exception, *, kept: str | None = None, fix: str | None = None) -> StorageError:
        """``kept``: what is intact (default: a run's results); ``fix``: the way out (default: --results-dir)."""
        code = getattr(e, "errno", None)
        name = errno.errorcode.get(code, "") if code else ""
        what = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is used up",
                errno.EROFS: "the file system is read-only", errno.EACCES: "permission is denied",
                errno.EPERM: "permission is denied"}.get(code, "the operating system refused the write")
        where = os.path.dirname(os.fspath(path)) or "."
        return cls(
            f"writing {os.path.basename(os.fspath(path))} failed: {what} ({name or type(e).__name__}: "
            f"{getattr(e, 'strerror', None) or e}) in {where}; "
            + (kept or "results finished before are intact (each is written to a temp file and renamed into "
                       "place) and the run being written is not counted as finished"),
            file=os.fspath(path),
            fix=fix or (f"free space (or fix permissions) on the file system of {where}, or point --results-dir / "
                        "AFBENCH_RESULTS_DIR elsewhere, then rerun: finished runs are skipped"),
        )


class PathOutsideRoot(BenchError):
    """A path the program would write is not inside its root (a spec name such as ``../../x``)."""

    def __init__(self, path, root=None, **kw):
        if kw:  # rebuilt from its parts (``__reduce__``)
            super().__init__(path, **kw)
            return
        super().__init__(f"refusing to write {path}: it is not inside {root}", file=str(path),
                         fix="names in specs must be plain identifiers (letters, digits, _ - .) and paths must "
                             "stay inside their folder; rename the spec or choose another folder")
