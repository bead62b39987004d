"""kill -9 at random points: no acknowledged-durable entry is lost, nothing damaged is replayed.

A forked child appends (single and batched), acks some of its own entries, and keeps a side
file of what it was told: ``I seq`` once ``append`` returned it, ``D seq digest`` once
``wait_durable`` confirmed it, ``A seq`` just before acking it. The parent SIGKILLs it after a
random delay (during open and salvage, mid-append, mid-commit, mid-compaction), then reopens the
spool and checks: every durable, unacked entry is there with its exact value; every value is
intact (each carries a hash of itself); the file shows at most a torn tail, never damage inside;
numbers issued after a restart are above every number issued before it; and entries the parent
acked (and closed) never come back. The parent "delivers" a random half of what it finds, so
entries also survive several crash cycles and the compactions in between.

``RELAYQ_CRASH_KILLS`` sets the number of kills (default 60).
"""

from __future__ import annotations

import hashlib
import itertools
import os
import random
import signal
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from relayq.durable import Spool, _fileio

KILLS = int(os.environ.get("RELAYQ_CRASH_KILLS", "60"))
INTERVALS = (0.0, 0.001, 0.01, 0.05)


def _value(seed: int, i: int, rnd: random.Random) -> bytes:
    body = b"%d/%d/" % (seed, i) + rnd.randbytes(rnd.randrange(0, 600))
    return body + hashlib.blake2b(body, digest_size=8).digest()


def _intact(value: bytes) -> bool:
    return hashlib.blake2b(value[:-8], digest_size=8).digest() == value[-8:]


def _inject_crash(kind: str, nth: int, fraction: float,
                  note: Callable[[list[str]], None]) -> None:
    """Die by SIGKILL in the ``nth`` file operation of ``kind``: inside a write (after writing
    ``fraction`` of it), or before (fraction < 0.5) or after an fsync, truncate or rename."""
    calls = itertools.count(1)

    def die(where: str) -> None:
        note([f"K {where}\n"])
        os.kill(os.getpid(), signal.SIGKILL)

    def write(real: Callable[[int, bytes, int], None]) -> Callable[[int, bytes, int], None]:
        def wrapped(fd: int, data: bytes, offset: int) -> None:
            if next(calls) == nth:
                real(fd, data[:int(len(data) * fraction)], offset)
                die("inside a write")
            real(fd, data, offset)
        return wrapped

    def around(real: Callable[..., None]) -> Callable[..., None]:
        def wrapped(*args: Any) -> None:
            if next(calls) == nth:
                if fraction < 0.5:
                    die(f"before {kind}")
                real(*args)
                die(f"after {kind}")
            real(*args)
        return wrapped

    if kind == "write":
        _fileio.pwrite_all = write(_fileio.pwrite_all)  # type: ignore[assignment]
    elif kind == "fsync":
        _fileio.fsync = around(_fileio.fsync)
    elif kind == "truncate":
        _fileio.truncate = around(_fileio.truncate)
    else:
        os.replace = around(os.replace)


def _child(path: Path, side: Path, interval: float, seed: int,
           crash: tuple[str, int, float] | None = None, acks: str = "few") -> None:
    """Append until killed. ``acks``: "few" (entries pile up), "most" (frequent compactions),
    "all" (and wait until delivered, so the empty spool is cut back)."""
    rnd = random.Random(seed)
    out = os.open(side, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    def note(lines: list[str]) -> None:
        if lines:
            os.write(out, "".join(lines).encode())

    try:
        if crash is not None:
            _inject_crash(*crash, note)
        spool = Spool(path, commit_interval=interval, compact_threshold=4096)
        unconfirmed: list[tuple[int, bytes]] = []
        durable: list[int] = []
        i = 0
        while True:
            values = [_value(seed, i + k, rnd) for k in range(rnd.randrange(1, 40))]
            i += len(values)
            if rnd.random() < 0.5:
                seqs = spool.append_many(values)
            else:
                seqs = [spool.append(v) for v in values]
            got = [(s, v) for s, v in zip(seqs, values, strict=True) if s is not None]
            note([f"I {s}\n" for s, _ in got])
            unconfirmed += got
            if (interval == 0 or rnd.random() < 0.3) and spool.wait_durable(10):
                note([f"D {s} {v[-8:].hex()}\n" for s, v in unconfirmed])
                durable += [s for s, _ in unconfirmed]
                unconfirmed = []
            if durable and rnd.random() < (0.2 if acks == "few" else 0.3):
                n = len(durable)
                k = {"few": min(n, rnd.randrange(1, 30)), "most": max(0, n - rnd.randrange(3)),
                     "all": n}[acks]
                acked = rnd.sample(durable, k=k)
                note([f"A {s}\n" for s in acked])
                spool.ack(acked)
                if acks == "all":  # pause until delivered: an empty spool is cut back (truncate)
                    deadline = time.monotonic() + 1
                    while spool.count > len(unconfirmed) and time.monotonic() < deadline:
                        time.sleep(0.001)
                durable = [s for s in durable if s not in set(acked)]
    except BaseException:
        note(["E " + traceback.format_exc().replace("\n", " | ") + "\n"])
        os._exit(3)


def _read_side(side: Path) -> tuple[set[int], dict[int, str], set[int], list[str], str]:
    where = "after a random delay"
    issued: set[int] = set()
    durable: dict[int, str] = {}
    acked: set[int] = set()
    errors: list[str] = []
    if not side.exists():
        return issued, durable, acked, errors, where
    text = side.read_text()
    for line in text.splitlines(keepends=True):
        if not line.endswith("\n"):
            break  # torn by the kill
        kind, *rest = line.split()
        if kind == "I":
            issued.add(int(rest[0]))
        elif kind == "D":
            durable[int(rest[0])] = rest[1]
        elif kind == "A":
            acked.add(int(rest[0]))
        elif kind == "E":
            errors.append(line)
        elif kind == "K":
            where = line[2:].strip()
    return issued, durable, acked, errors, where


class Checker:
    """What the parent knows across kills, and the checks after each one."""

    def __init__(self, path: Path, seed: int) -> None:
        self.path = path
        self.rnd = random.Random(seed)
        self.required: dict[int, str] = {}  # durable, not acked by anyone: must be there
        self.delivered: set[int] = set()  # acked by the parent and closed: must not come back
        self.max_issued = 0
        self.torn_tails = self.checked = 0
        self.kills_by_place: dict[str, int] = {}

    def after(self, kill: int, side: Path, status: int, deliver_share: float = 0.5) -> None:
        issued, durable, acked, errors, where = _read_side(side)
        self.kills_by_place[where] = self.kills_by_place.get(where, 0) + 1
        assert not errors, errors
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, status
        if issued:
            assert min(issued) > self.max_issued, "a sequence number was issued twice"
            self.max_issued = max(issued)
        self.required.update(durable)
        for seq in acked:
            self.required.pop(seq, None)
        with Spool(self.path) as spool:
            if spool.recovery is not None:
                assert spool.recovery.torn_tail_only, spool.recovery.describe()
                self.torn_tails += 1
            pending = spool.pending()
            present = dict(pending)
            assert len(present) == len(pending)
            assert all(_intact(v) for _, v in pending), "a damaged entry was replayed"
            missing = [s for s in self.required if s not in present]
            assert not missing, f"kill {kill}: durable entries lost: {missing[:10]}"
            assert all(present[s][-8:].hex() == d for s, d in self.required.items())
            assert not self.delivered & present.keys(), "an entry acked and closed came back"
            self.max_issued = max([self.max_issued, *present])  # appended, killed before noted
            self.checked += len(self.required)
            deliver = [s for s in present if self.rnd.random() < deliver_share]
            spool.ack(deliver)
        self.delivered.update(deliver)
        for seq in deliver:
            self.required.pop(seq, None)

    def summary(self, kills: int, started: float) -> str:
        return (f"{kills} kills in {time.monotonic() - started:.1f} s, {self.checked} durable "
                f"entries checked, {self.torn_tails} torn tails cut off; killed: "
                f"{dict(sorted(self.kills_by_place.items()))}")


@pytest.mark.timeout(180)
def test_sigkill_at_random_times(tmp_path: Path) -> None:
    checker = Checker(tmp_path / "q.spool", seed=20240607)
    started = time.monotonic()
    for kill in range(KILLS):
        side = tmp_path / f"side{kill}.txt"
        pid = os.fork()
        if pid == 0:
            _child(checker.path, side, INTERVALS[kill % len(INTERVALS)], seed=kill)
            os._exit(4)
        time.sleep(checker.rnd.uniform(0.002, 0.12))
        os.kill(pid, signal.SIGKILL)
        checker.after(kill, side, os.waitpid(pid, 0)[1])
    print(checker.summary(KILLS, started))
    assert checker.checked > 0 and checker.max_issued > 0


@pytest.mark.timeout(180)
def test_sigkill_inside_file_operations(tmp_path: Path) -> None:
    """The same checks, with the kill placed inside a write (after part of it), or around an
    fsync, truncate or rename: every state a crash can leave on the way."""
    checker = Checker(tmp_path / "q.spool", seed=99)
    started = time.monotonic()
    for kill in range(KILLS):
        side = tmp_path / f"side{kill}.txt"
        kind = ("write", "fsync", "truncate", "rename")[kill % 4]
        nth = checker.rnd.randrange(1, 100 if kind in ("write", "fsync") else 4)
        crash = (kind, nth, checker.rnd.random())
        pid = os.fork()
        if pid == 0:
            _child(checker.path, side, INTERVALS[kill % len(INTERVALS)], seed=1000 + kill,
                   crash=crash, acks="all" if kind == "truncate" else "most")
            os._exit(4)
        status = _wait(pid, timeout=1)
        # Before a round aimed at truncation (which compaction does once nothing is live),
        # deliver everything, so the child can empty its spool.
        checker.after(kill, side, status, deliver_share=1.0 if kill % 4 == 1 else 0.5)
    print(checker.summary(KILLS, started))
    assert checker.torn_tails > 0  # the injected kills do tear writes
    places = checker.kills_by_place
    assert all(any(kind in place for place in places)
               for kind in ("write", "fsync", "truncate", "rename")), places


def _wait(pid: int, timeout: float) -> int:
    """The child's status once it has killed itself; killed here if it never got that far."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    return os.waitpid(pid, 0)[1]
