"""Exceptions of the durable layer. Only opening a store raises; the hot path never does."""

from __future__ import annotations


class SpoolError(Exception):
    """A store file cannot be used: not one of ours, locked by another process, unreadable."""


class SpoolLockedError(SpoolError):
    """Another process (or another object in this one) has the spool file open."""


class SpoolCorruptError(SpoolError):
    """The file is damaged beyond a torn tail, and ``on_corruption="raise"`` forbade salvage.

    The message names the file and what is wrong; ``Spool.recover(path)`` keeps every intact
    record and moves the damaged original aside.
    """
