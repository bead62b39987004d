"""Disk full, quota and I/O errors: never raised into append/ack, counted, logged, recovered.

Two kinds of fault: an injected one (``_fileio``'s write and fsync replaced by a model of a full
disk: writes that need new blocks fail, overwriting allocated bytes still works, as on a real
file system) for exact errnos (ENOSPC, EDQUOT, EIO); and a real one from the kernel, a file-size
limit (RLIMIT_FSIZE, so EFBIG) in a forked child, which needs no privileges or mounts.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import resource
import signal
from pathlib import Path

import pytest

from relayq.durable import Spool, _fileio
from tests.durable._helpers import eventually, raw_appends


class Disk:
    """A switchable fault model over ``_fileio``'s writes and fsyncs."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full: int | None = None  # errno for writes that need new space
        self.fsync_error: int | None = None
        self.partial = False  # write half of the data before failing (a torn write)
        real_write, real_fsync = _fileio.pwrite_all, _fileio.fsync

        def pwrite_all(fd: int, data: bytes, offset: int) -> None:
            if self.full is not None and offset + len(data) > os.fstat(fd).st_size:
                if self.partial:
                    real_write(fd, data[:len(data) // 2], offset)
                raise OSError(self.full, os.strerror(self.full))
            real_write(fd, data, offset)

        def fsync(fd: int) -> None:
            if self.fsync_error is not None:
                raise OSError(self.fsync_error, os.strerror(self.fsync_error))
            real_fsync(fd)

        monkeypatch.setattr(_fileio, "pwrite_all", pwrite_all)
        monkeypatch.setattr(_fileio, "fsync", fsync)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Disk:
    return Disk(monkeypatch)


@pytest.mark.parametrize(("code", "partial"), [(errno.ENOSPC, False), (errno.EDQUOT, True)])
def test_full_disk_fails_soft_and_recovers(tmp_path: Path, disk: Disk,
                                           caplog: pytest.LogCaptureFixture, code: int,
                                           partial: bool) -> None:
    caplog.set_level(logging.INFO, logger="relayq.durable")
    path = tmp_path / "q.spool"
    accepted: dict[int, bytes] = {}
    with Spool(path, commit_interval=0.01) as spool:
        for i in range(50):
            seq = spool.append(b"before %d" % i)
            assert seq is not None
            accepted[seq] = b"before %d" % i
        assert spool.wait_durable(5)

        disk.full, disk.partial = code, partial
        waiting = spool.append(b"waits in memory")
        assert waiting is not None  # accepted: the writer has not failed yet
        accepted[waiting] = b"waits in memory"
        assert not spool.wait_durable(0.3)
        eventually(lambda: spool.stats().failing, what="the writer noticing the full disk")
        assert spool.errors >= 1
        refused = [spool.append(b"refused %d" % i) for i in range(20)]  # never raises
        assert refused == [None] * 20
        assert spool.stats().refused == 20
        spool.ack([next(iter(accepted))])  # acks are kept too
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1  # one line per episode, not one per attempt
        assert str(path) in errors[0].getMessage()
        assert os.strerror(code) in errors[0].getMessage()
        assert "no space" in errors[0].getMessage()

        disk.full = None  # space returns
        assert spool.wait_durable(10)
        eventually(lambda: not spool.stats().failing, what="recovery")
        assert any("writes succeed again; 20 appends were refused" in r.getMessage()
                   for r in caplog.records)
        late = spool.append(b"after recovery")
        assert late is not None
        accepted[late] = b"after recovery"
        del accepted[next(iter(accepted))]
    with Spool(path) as spool:
        assert spool.recovery is None  # the failed writes were rolled back: no torn bytes
        assert dict(spool.pending()) == accepted


def test_failing_fsync_is_retried_without_duplicates(tmp_path: Path, disk: Disk) -> None:
    path = tmp_path / "q.spool"
    with Spool(path, commit_interval=0.01) as spool:
        disk.fsync_error = errno.EIO
        seqs = [spool.append(b"%d" % i) for i in range(10)]
        eventually(lambda: spool.stats().failing, what="the failed fsync")
        assert spool.stats().last_error is not None
        assert "Input/output error" in (spool.stats().last_error or "")
        disk.fsync_error = None
        assert spool.wait_durable(10)
    on_disk = raw_appends(path)
    assert sorted(on_disk) == seqs  # rewritten once in place, not appended twice
    with Spool(path) as spool:
        assert [s for s, _ in spool.pending()] == seqs


def test_synchronous_appends_fail_individually(tmp_path: Path, disk: Disk) -> None:
    path = tmp_path / "q.spool"
    with Spool(path, commit_interval=0) as spool:
        ok = spool.append(b"ok")
        disk.full = errno.ENOSPC
        assert spool.append(b"lost") is None
        assert spool.append_many([b"x", b"y"]) == [None, None]
        assert spool.errors >= 2
        assert spool.count == 1
        disk.full = None
        again = spool.append(b"again")
        assert again is not None
        assert spool.wait_durable(5)
    with Spool(path) as spool:
        assert spool.pending() == [(ok, b"ok"), (again, b"again")]


def test_full_disk_with_everything_delivered_empties_the_file(tmp_path: Path,
                                                               disk: Disk) -> None:
    """The ack records themselves cannot be written, yet emptying the file needs no space."""
    path = tmp_path / "q.spool"
    with Spool(path, commit_interval=0.01) as spool:
        seqs = [spool.append(b"x" * 500) for _ in range(100)]
        assert spool.wait_durable(5)
        disk.full = errno.ENOSPC
        spool.ack(s for s in seqs if s is not None)
        eventually(lambda: spool.count == 0, timeout=10, what="the file emptied")
        assert path.stat().st_size == 64 and spool.bytes == 0
        eventually(lambda: not spool.stats().failing, timeout=10, what="appends accepted again")
        disk.full = None
        new = spool.append(b"new")
        assert new is not None
        assert spool.wait_durable(10)
    with Spool(path) as spool:
        assert new in dict(spool.pending())
        assert not set(seqs) & set(dict(spool.pending()))


def _fsize_child(path: Path, report: Path) -> None:
    """In a forked child: hit a real file-size limit, then lift it."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG instead of being killed
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    spool = Spool(path, commit_interval=0.005)
    resource.setrlimit(resource.RLIMIT_FSIZE, (32 * 1024, hard))
    accepted: dict[int, str] = {}
    refused = 0
    for i in range(3000):
        seq = spool.append(b"%06d" % i + b"." * 94)
        if seq is None:
            refused += 1
        else:
            accepted[seq] = f"{i:06d}"
        if i % 100 == 0:
            spool.wait_durable(0.05)
    stats = spool.stats()
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # the space returns
    lifted = spool.wait_durable(10)
    after = spool.append(b"after")
    if after is not None:
        accepted[after] = "after"
    durable = spool.wait_durable(10)
    spool.close()
    report.write_text(json.dumps({
        "accepted": accepted, "refused": refused, "errors": stats.errors,
        "failing": stats.failing, "last_error": stats.last_error, "lifted": lifted,
        "durable": durable}))


def test_real_file_size_limit_in_a_child_process(tmp_path: Path) -> None:
    path, report = tmp_path / "q.spool", tmp_path / "report.json"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            _fsize_child(path, report)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    result = json.loads(report.read_text())
    assert result["errors"] >= 1 and result["refused"] > 0
    assert "File too large" in result["last_error"]
    assert result["lifted"] and result["durable"]
    assert "after" in result["accepted"].values()
    with Spool(path) as spool:
        assert spool.recovery is None
        pending = {str(s): v[:6].decode() if v != b"after" else "after"
                   for s, v in spool.pending()}
    assert pending == result["accepted"]
