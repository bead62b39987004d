"""Many UDP datagrams per system call: Linux's ``sendmmsg(2)``, reached through ctypes.

Python's socket module has no ``sendmmsg``; StatsD and DogStatsD send one datagram per metric
(Kong's default, ``udp_packet_size = 0``), thousands per batch on a busy gateway. Each datagram
stays a datagram of its own on the wire; only the system calls are shared. The message headers
are built as flat arrays of 64-bit words (their layout checked against ctypes structures at
import), so preparing a datagram costs a few slice assignments rather than Python-level
structure filling. ctypes releases the GIL for the duration of the call, which is what lets a
large batch be sent from a worker thread while the event loop goes on.

``available`` is False where any of this does not hold (another OS, a 32-bit build, a libc
without ``sendmmsg``); callers then send one datagram at a time.
"""

from __future__ import annotations

import array
import ctypes
import errno
import itertools
import sys
from collections.abc import Callable

MAX_PER_CALL = 1024  # UIO_MAXIOV: the kernel sends at most this many messages per call


class _IOVec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.c_void_p),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _MsgHdr), ("msg_len", ctypes.c_uint)]


_WORD = 8
_WORDS = ctypes.sizeof(_MMsgHdr) // _WORD  # 64-bit words per message header
_IOV_WORD = _MsgHdr.msg_iov.offset // _WORD
_IOVLEN_WORD = _MsgHdr.msg_iovlen.offset // _WORD


def _load() -> Callable[[int, int, int, int], int] | None:
    layout_ok = (
        ctypes.sizeof(ctypes.c_void_p) == _WORD
        and ctypes.sizeof(ctypes.c_size_t) == _WORD
        and ctypes.sizeof(_IOVec) == 2 * _WORD
        and ctypes.sizeof(_MMsgHdr) % _WORD == 0
        and _MsgHdr.msg_iov.offset % _WORD == 0
        and _MsgHdr.msg_iovlen.offset % _WORD == 0
        and array.array("Q").itemsize == _WORD
    )
    if not sys.platform.startswith("linux") or not layout_ok:
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sendmmsg
    except (OSError, AttributeError):
        return None
    function.argtypes = (ctypes.c_int, ctypes.c_void_p, ctypes.c_uint, ctypes.c_int)
    function.restype = ctypes.c_int
    return function


_sendmmsg = _load()
available = _sendmmsg is not None

_TEMPLATE = array.array("Q", [0] * _WORDS)  # one message header: one iovec, nothing else
_TEMPLATE[_IOVLEN_WORD] = 1


def send_all(fd: int, datagrams: list[bytes]) -> tuple[int, list[int]]:
    """Send ``datagrams`` in order on the connected socket ``fd``.

    Returns ``(handled, errors)``: ``datagrams[:handled]`` were each sent, or failed with an
    error that is listed in ``errors`` (one errno per failed datagram, which is skipped, as a
    failing ``send`` would be). It stops early, leaving the rest to the caller, when the
    socket's buffer is full or when the kernel sent part of a call without saying why the next
    datagram failed (``sendmmsg`` drops that error).
    """
    function = _sendmmsg
    if function is None:
        return 0, []
    errors: list[int] = []
    handled = 0
    total = len(datagrams)
    while handled < total:
        chunk = datagrams[handled:handled + MAX_PER_CALL]
        count = len(chunk)
        blob = b"".join(chunk)  # one buffer; each iovec points into it
        base = ctypes.cast(ctypes.c_char_p(blob), ctypes.c_void_p).value or 0
        lengths = [len(d) for d in chunk]
        iov = array.array("Q", bytes(2 * _WORD * count))
        iov[0::2] = array.array("Q", [base + offset for offset in
                                      itertools.accumulate(lengths[:-1], initial=0)])
        iov[1::2] = array.array("Q", lengths)
        headers = _TEMPLATE * count
        iov_address = iov.buffer_info()[0]
        headers[_IOV_WORD::_WORDS] = array.array(
            "Q", range(iov_address, iov_address + 2 * _WORD * count, 2 * _WORD))
        result = function(fd, headers.buffer_info()[0], count, 0)
        if result == count:
            handled += count
            continue
        if result > 0:
            return handled + result, errors
        err = ctypes.get_errno()
        if err == errno.EINTR:
            continue
        if result == 0 or err in (errno.EAGAIN, errno.EWOULDBLOCK):
            return handled, errors
        errors.append(err)  # the first datagram of the call failed: skip it, go on
        handled += 1
    return handled, errors
