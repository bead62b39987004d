"""StatsD/DogStatsD datagrams sent many per system call (``sendmmsg``), large batches from a
worker thread: every datagram still arrives whole and in order, failures are skipped and logged
as one ``send`` per datagram would, and whatever ``sendmmsg`` cannot vouch for goes out one by
one. The control flow is also driven by a scripted ``sendmmsg`` for the kernel's rarer answers
(a full buffer, a partial send, an interrupted call)."""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import socket
from collections.abc import Iterator

import pytest

from relayq.plugins import _mmsg, _udp

pytestmark = pytest.mark.skipif(not _mmsg.available, reason="sendmmsg needs 64-bit Linux")


@pytest.fixture
def receiver() -> Iterator[socket.socket]:
    """A bound UDP socket whose buffer holds every datagram these tests send."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(5)
    yield sock
    sock.close()


def sender(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setblocking(False)
    sock.connect(("127.0.0.1", port))
    return sock


def receive(sock: socket.socket, count: int) -> list[bytes]:
    return [sock.recv(65535) for _ in range(count)]


def lines(count: int) -> list[bytes]:
    # varied lengths, an empty datagram included, as a boundary check
    return [f"kong.metric.{i}:{i}|c".encode() * (i % 3) for i in range(count)]


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize("thread_min", [2, 10**9], ids=["worker-thread", "inline"])
async def test_datagrams_arrive_whole_and_in_order(
        receiver: socket.socket, monkeypatch: pytest.MonkeyPatch, thread_min: int) -> None:
    monkeypatch.setattr(_mmsg, "MAX_PER_CALL", 64)  # several calls per batch
    monkeypatch.setattr(_udp, "THREAD_MIN_DATAGRAMS", thread_min)
    sock = sender(receiver.getsockname()[1])
    datagrams = lines(200)
    fds = open_fds()
    sent = await _udp.send_datagrams(sock, datagrams, where="here", tag="statsd")
    assert sent == len(datagrams)
    assert receive(receiver, len(datagrams)) == datagrams
    assert open_fds() == fds  # the worker thread's duplicate descriptor is closed
    sock.send(b"still usable")
    assert receiver.recv(100) == b"still usable"
    sock.close()


async def test_without_sendmmsg_each_datagram_is_sent_on_its_own(
        receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_mmsg, "available", False)
    sock = sender(receiver.getsockname()[1])
    datagrams = lines(50)
    assert await _udp.send_datagrams(sock, iter(datagrams), where="here") == 50
    assert receive(receiver, 50) == datagrams
    sock.close()


async def test_refused_datagrams_are_logged_and_the_rest_still_sent(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    caplog.set_level(logging.ERROR, logger="relayq.plugins")
    monkeypatch.setattr(_udp, "_send_errors", {})  # no rate limit left over from other tests
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again: the kernel answers port unreachable
    sock = sender(port)
    sent = await _udp.send_datagrams(sock, lines(600), where=f"127.0.0.1:{port}", tag="statsd")
    assert 0 < sent < 600  # every other datagram meets the previous one's ICMP error
    assert f"[statsd] failed to send data to 127.0.0.1:{port}: connection refused" in [
        r.getMessage() for r in caplog.records]
    sock.close()


class ScriptedSendmmsg:
    """Stands in for libc's sendmmsg: answers from a script, sends nothing itself."""

    def __init__(self, script: list[tuple[int, int]]) -> None:
        self.script = script  # (return value, errno) per call; then "all sent"
        self.calls: list[int] = []

    def __call__(self, fd: int, headers: int, count: int, flags: int) -> int:
        self.calls.append(count)
        if not self.script:
            return count
        result, err = self.script.pop(0)
        ctypes.set_errno(err)
        return min(result, count)


@pytest.mark.parametrize(
    ("script", "handled", "errors", "calls"),
    [
        ([], 10, [], [4, 4, 2]),
        ([(-1, errno.EAGAIN)], 0, [], [4]),
        ([(4, 0), (2, 0)], 6, [], [4, 4]),  # partial: the 7th's fate is unknown
        ([(-1, errno.ECONNREFUSED)], 10, [errno.ECONNREFUSED], [4, 4, 4, 1]),
        ([(-1, errno.EINTR)], 10, [], [4, 4, 4, 2]),
    ],
    ids=["all", "buffer-full", "partial", "refused-one", "interrupted"],
)
def test_send_all_control_flow(monkeypatch: pytest.MonkeyPatch, script: list[tuple[int, int]],
                               handled: int, errors: list[int], calls: list[int]) -> None:
    fake = ScriptedSendmmsg(script)
    monkeypatch.setattr(_mmsg, "_sendmmsg", fake)
    monkeypatch.setattr(_mmsg, "MAX_PER_CALL", 4)
    assert _mmsg.send_all(99, lines(10)) == (handled, errors)
    assert fake.calls == calls


async def test_what_sendmmsg_leaves_is_sent_one_by_one(
        receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    # The "kernel" takes 3, then reports a full buffer: the other 7 go out one per send().
    fake = ScriptedSendmmsg([(3, 0), (-1, errno.EAGAIN)])
    monkeypatch.setattr(_mmsg, "_sendmmsg", fake)
    sock = sender(receiver.getsockname()[1])
    datagrams = lines(10)
    assert await _udp.send_datagrams(sock, datagrams, where="here") == 10
    assert receive(receiver, 7) == datagrams[3:]
    sock.close()


async def test_cancelled_batch_leaves_no_descriptor_behind(
        receiver: socket.socket, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_udp, "THREAD_MIN_DATAGRAMS", 2)
    sock = sender(receiver.getsockname()[1])
    fds = open_fds()
    task = asyncio.ensure_future(_udp.send_datagrams(sock, lines(100), where="here"))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    sock.close()  # what the handler's ``finally`` does; the thread holds its own descriptor
    deadline = asyncio.get_running_loop().time() + 5
    while open_fds() >= fds and asyncio.get_running_loop().time() < deadline:
        await asyncio.sleep(0.01)
    assert open_fds() < fds
