"""The few file operations the stores need, in one place.

Callers go through this module's attributes (``_fileio.pwrite_all(...)``) so tests can inject
disk-full or I/O errors at exactly these points without touching ``os`` for the whole process.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

from relayq.durable._errors import SpoolLockedError

# Errors that mean "no room": the store fails soft and tries again later.
SPACE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
_COPY_CHUNK = 1 << 20


def open_file(path: Path) -> int:
    """Open (creating it and its directory if needed) for reading and writing; owner-only mode,
    since entries are access logs that may hold personal data."""
    path.parent.mkdir(parents=True, exist_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)


def lock(fd: int, path: Path, *, exclusive: bool = True, wait: bool = False) -> None:
    """flock the file; without ``wait``, a held lock is a ``SpoolLockedError`` naming the file."""
    flags = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | (0 if wait else fcntl.LOCK_NB)
    try:
        fcntl.flock(fd, flags)
    except BlockingIOError:
        raise SpoolLockedError(
            f"{path}: already open by another process or Spool object; a spool file has one "
            f"owner (give each worker process its own spool path)") from None


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)


def pwrite_all(fd: int, data: bytes, offset: int) -> None:
    """Write all of ``data`` at ``offset`` (``pwrite`` may write less than asked)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def fsync(fd: int) -> None:
    os.fsync(fd)


def truncate(fd: int, size: int) -> None:
    os.ftruncate(fd, size)


def fsync_dir(path: Path) -> None:
    """Make a create or rename in ``path``'s directory durable."""
    fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def size_of(fd: int) -> int:
    return os.fstat(fd).st_size


def same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (another process may replace it)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


@contextlib.contextmanager
def mapped(fd: int, size: int) -> Iterator[tuple[mmap.mmap | bytes, memoryview]]:
    """The file's first ``size`` bytes, memory-mapped (read-only) so scanning a large file does
    not copy it into the heap."""
    if size == 0:
        yield b"", memoryview(b"")
        return
    mm = mmap.mmap(fd, size, access=mmap.ACCESS_READ)
    view = memoryview(mm)
    try:
        yield mm, view
    finally:
        view.release()
        mm.close()


def read_ranges(fd: int, runs: Iterable[tuple[int, int]]) -> Iterator[bytes]:
    """The bytes of each ``(start, stop)`` run, in pieces of at most 1 MiB."""
    for start, stop in runs:
        for pos in range(start, stop, _COPY_CHUNK):
            piece = os.pread(fd, min(stop, pos + _COPY_CHUNK) - pos, pos)
            if not piece:
                raise OSError(f"unexpected end of file at offset {pos}")
            yield piece


def write_new(path: Path, chunks: Iterable[bytes], *, durable: bool, exclusive: bool) -> int:
    """Write ``chunks`` to a temporary file beside ``path``, then rename it over ``path``.

    A crash at any point leaves either the old file or the complete new one. Returns the new
    file's descriptor, already locked when ``exclusive``. On error the temporary file is removed
    and the old file is untouched.
    """
    tmp = path.with_name(path.name + ".compact")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        if exclusive:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        offset = 0
        for chunk in chunks:
            pwrite_all(fd, chunk, offset)
            offset += len(chunk)
        if durable:
            fsync(fd)
        os.replace(tmp, path)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        # The rename is already visible; if this fails, only a power loss before the directory
        # reaches the disk could bring back the old file, which is why it is not an error.
        with contextlib.suppress(OSError):
            fsync_dir(path)
    return fd


def remove_leftover(path: Path) -> None:
    """Delete a temporary file left by a crash during ``write_new``."""
    with contextlib.suppress(FileNotFoundError):
        path.with_name(path.name + ".compact").unlink()


def describe_os_error(exc: OSError) -> str:
    if exc.errno is None:
        return str(exc)
    return f"[Errno {exc.errno}] {exc.strerror or exc}"
