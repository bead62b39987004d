"""Request-path handling as Kong's router does it: normalise, strip, and build the upstream URI.

Kong routes on a normalised path (``kong.tools.uri.normalize``: percent-decoding of characters
that need no encoding, removal of ``.``/``..`` segments, merged slashes), and builds the
upstream path from the service's ``path`` and what remains after a stripped route prefix
(``get_upstream_uri_v0``). The rules have many corner cases users depend on (trailing slashes,
double slashes), so they are reproduced branch by branch.
"""

from __future__ import annotations

import re
from urllib.parse import quote

# RFC 3986 reserved characters: kept percent-encoded (with upper-case hex) when decoding.
_RESERVED = frozenset(b"!#$&'()*+,/:;=?@[]%")
_TRIPLET = re.compile(r"%([0-9A-Fa-f]{2})")
_SLASHES = re.compile(r"//+")
# What may appear in an upstream path unescaped: unreserved, reserved and '%' of triplets.
_SAFE = "/!$&'()*+,;=:@-._~%"


def _decode_triplet(m: re.Match[str]) -> str:
    code = int(m.group(1), 16)
    if code in _RESERVED or code < 0x20 or code >= 0x7F:
        return m.group(0).upper()
    return chr(code)


def normalize(path: str) -> str:
    """Kong's ``normalize(uri, true)`` for routing: decode, drop dot segments, merge slashes."""
    if path in ("", "/"):
        return path or "/"
    if "%" in path:
        path = _TRIPLET.sub(_decode_triplet, path)
    if "//" in path:
        path = _SLASHES.sub("/", path)
    if "." not in path:
        return path
    segments: list[str] = []
    parts = path.split("/")
    for i, seg in enumerate(parts):
        last = i == len(parts) - 1
        if seg == ".":
            if last:
                segments.append("")
            continue
        if seg == "..":
            if len(segments) > 1:
                segments.pop()
            if last:
                segments.append("")
            continue
        segments.append(seg)
    out = "/".join(segments)
    return out if out.startswith("/") else "/" + out


def escape(path: str) -> str:
    """Percent-encode what must not travel raw in a request target (spaces, controls, UTF-8)."""
    return quote(path, safe=_SAFE)


def sanitize_postfix(postfix: str) -> str:
    """Kong's ``sanitize_uri_postfix``: a stripped remainder never starts a dot segment."""
    if postfix in (".", ".."):
        return ""
    if postfix.startswith("./"):
        return postfix[2:]
    if postfix.startswith("../"):
        return postfix[3:]
    return postfix


def upstream_path(req_path: str, matched: str | None, strip_path: bool,
                  service_path: str | None, path_handling: str = "v0") -> str:
    """The upstream path for a normalised request path ``req_path``.

    ``matched`` is the route path that matched (the prefix, or a regex's matched text);
    ``None`` when the route had no paths.
    """
    base = service_path or "/"
    if strip_path and matched is not None:
        postfix = sanitize_postfix(req_path[len(matched):])
    else:
        postfix = sanitize_postfix(req_path[1:])
    strip = strip_path and matched is not None
    if path_handling == "v1":
        return _v1(req_path, postfix, strip, base)
    return _v0(req_path, postfix, strip, base)


def _v0(req_path: str, postfix: str, strip: bool, base: str) -> str:
    if base.endswith("/"):
        if strip:
            if postfix == "":
                if base == "/":
                    return "/"
                return base if req_path.endswith("/") else base[:-1]
            if postfix.startswith("/"):
                return base[:-1] + postfix
            return base + postfix
        return base + req_path[1:]
    if strip:
        if postfix == "":
            return base + "/" if len(req_path) > 1 and req_path.endswith("/") else base
        if postfix.startswith("/"):
            return base + postfix
        return base + "/" + postfix
    return base if req_path == "/" else base + req_path


def _v1(req_path: str, postfix: str, strip: bool, base: str) -> str:
    if strip:
        if base.endswith("/") and postfix.startswith("/"):
            return base[:-1] + postfix
        return base + postfix
    return base + req_path[1:]
