"""Paths the program shows and paths it writes (ARCHITECTURE.md, "spec").

``shown_path``: how a path is written into anything that may be committed or shared (results, reports):
relative to the working directory when it lies inside it, else only its last two parts, never a
machine's absolute path. ``under`` / ``write_atomic`` / ``swap_in`` / ``remove`` are the one way every writer
puts files and folders under its root, so a spec name like ``../../x`` never decides where a file lands
(``tests/test_writers.py`` fails on any other writer); ``read_regular`` is the one bounded reader of files a
user or a record names. Imports only ``errors`` (layer 0 too): every layer may use it.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
from pathlib import Path

from benchmark.errors import PathOutsideRoot, StorageError


def shown_path(path: str | Path) -> str:
    p = Path(path)
    try:
        return str(p.resolve().relative_to(Path.cwd().resolve()))
    except (ValueError, OSError):
        return str(Path(*p.parts[-2:])) if len(p.parts) >= 2 else p.name


def under(root: str | Path, *parts: str | Path) -> Path:
    """``root / parts...``, refused with ``PathOutsideRoot`` before anything is opened when a part is
    absolute or holds ``..``, or the result (parent resolved) is not inside ``root``."""
    base = Path(root)
    for p in parts:
        s = os.fspath(p)
        if not s or "\x00" in s or os.path.isabs(s) or ".." in Path(s).parts:
            raise PathOutsideRoot(os.path.join(os.fspath(base), *[os.fspath(q) for q in parts]), base)
    return inside(base, base.joinpath(*parts))


def inside(root: str | Path, path: str | Path) -> Path:
    """``path`` if it lies inside ``root`` (its parent resolved, so a run folder may itself be a symlink
    to another disk), else ``PathOutsideRoot``."""
    path = Path(path)
    try:
        ok = (path.parent.resolve() / path.name).is_relative_to(Path(root).resolve()) and path.name not in ("", "..")
    except (OSError, RuntimeError, ValueError):
        ok = False
    if not ok:
        raise PathOutsideRoot(path, root)
    return path


def write_atomic(path: str | Path, data: str | bytes, *, root: str | Path | None = None, kept: str | None = None,
                 fix: str | None = None, exclusive: bool = False) -> Path:
    """Write ``data`` to ``path`` (checked to lie under ``root`` when given) through a temp file beside it,
    fsync, rename. An OSError becomes one StorageError naming the file (``kept``, ``fix``: the writer's own
    words for what is intact and the way out, ``StorageError.from_os_error``); ``path`` is then as it was.
    ``exclusive``: the file appears complete or not at all, and only if nothing is at ``path`` (a hard
    link, not a rename); FileExistsError otherwise (the experiment lock)."""
    path = inside(root, path) if root is not None else Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            fh.flush()
            os.fsync(fh.fileno())
        if exclusive:
            os.link(tmp, path)
            tmp.unlink()
        else:
            os.replace(tmp, path)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if exclusive and isinstance(e, FileExistsError):
            raise
        raise StorageError.from_os_error(path, e, kept=kept, fix=fix) from None
    return path


def swap_in(new: str | Path, final: str | Path, old: str | Path | None = None) -> bool:
    """Move ``new`` (a finished file or folder) to ``final``. A file replaces what is there in one rename; a
    folder cannot be renamed over another, so with ``old`` given what is at ``final`` (a folder, file or link,
    never followed) moves there first, and a crash between the two renames leaves it for the caller's
    recovery. Returns whether something moved to ``old`` (the caller removes or keeps it)."""
    moved = old is not None and os.path.lexists(final)
    if moved:
        os.replace(final, old)
    os.replace(new, final)
    return moved


def remove(path: str | Path) -> None:
    """Remove a folder, or only the link when it is a symlink (a run folder linked to another disk: its
    target is the old result, which a swap replaced; rmtree refuses links and would leave it)."""
    path = Path(path)
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
    elif path.exists():
        shutil.rmtree(path, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is alive: a zombie (dead, not yet reaped) is not; someone else's
    live process is."""
    if isinstance(pid, bool) or not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):
        return False
    except PermissionError:  # someone else's live process
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            return fh.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def read_regular(path: str | Path, limit: int) -> bytes:
    """The bytes of ``path`` if it is a regular file of at most ``limit`` bytes. Anything else raises an
    OSError whose ``strerror`` says why (EINVAL: a FIFO, a device such as /dev/zero, a socket or a folder;
    EFBIG: over ``limit``), decided on the opened file itself (``fstat``), so a FIFO never blocks the open
    and no more than ``limit + 1`` bytes are read even from a file that grows."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    try:
        st = os.fstat(fd)
        mode = st.st_mode
        if not stat.S_ISREG(mode):
            what = {stat.S_IFIFO: "a FIFO", stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device",
                    stat.S_IFSOCK: "a socket", stat.S_IFDIR: "a folder"}.get(stat.S_IFMT(mode), "a special file")
            raise OSError(errno.EINVAL, f"not a regular file but {what}", os.fspath(path))
        if st.st_size > limit:
            raise OSError(errno.EFBIG, f"the file is {st.st_size:,} bytes, over the limit of {limit:,}",
                          os.fspath(path))
        chunks, size = [], 0
        while size <= limit and (chunk := os.read(fd, min(1 << 20, limit + 1 - size))):
            chunks.append(chunk)
            size += len(chunk)
        if size > limit:
            raise OSError(errno.EFBIG, f"the file is over the limit of {limit:,} bytes", os.fspath(path))
        return b"".join(chunks)
    finally:
        os.close(fd)
