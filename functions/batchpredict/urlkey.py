"""A URL's dedupe key: two manifest lines with the same key are fetched once (issue 19).

Normalised (and nothing else): the scheme and host lower-cased, a default port dropped (http
80, https 443; an empty port too), the fragment dropped, an empty path written ``/``, a bare
``?`` (empty query) dropped. The fetcher (fetch.py) sends exactly the same request for URLs
that differ only in these ways, so lines that share a key share a fetch safely.

Left as written, because they can name a different resource or the fetcher sends them as
written: the path and query, their case, order and percent-encoding (``/A`` is not ``/a``,
``?a=1&b=2`` is not ``?b=2&a=1``, ``%2F`` is not ``/``); userinfo (``user@``, case
significant; the fetcher never sends it, so merging would be safe, but it is rare and the issue
asks for no more); a Unicode host is lower-cased but not converted to its ``xn--`` form (both
fetch the same, but are different keys); an IPv6 literal is lower-cased but not compressed
(``[2001:0db8::1]`` keeps its zeros: the Host header carries it as written); a trailing dot in
a host stays. ``s3://bucket/key``: only the scheme is lower-cased; bucket and key are kept as
they are, ``?`` and ``#`` included (they are part of an S3 key, as fetch.py reads it). A URL
that does not parse, or of another scheme, keeps its raw text as its key.
"""

from __future__ import annotations

import hashlib
from urllib.parse import urlsplit

_DEFAULT_PORTS = {"http": 80, "https": 443}
DIGEST_BYTES = 16  # 1M distinct URLs: a collision chance of ~1e-27


def url_key(url: str) -> str:
    """``url`` normalised as the module says."""
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() == "s3":
        return "s3://" + rest
    try:
        parts = urlsplit(url)
        port = parts.port  # raises on a non-numeric or out-of-range port
    except ValueError:
        return url
    host = parts.hostname  # lower-cased, brackets and port removed
    if parts.scheme not in _DEFAULT_PORTS or host is None:
        return url
    userinfo, at, _ = parts.netloc.rpartition("@")
    netloc = userinfo + at + (f"[{host}]" if ":" in host else host)
    if port is not None and port != _DEFAULT_PORTS[parts.scheme]:
        netloc += f":{port}"
    query = f"?{parts.query}" if parts.query else ""
    return f"{parts.scheme}://{netloc}{parts.path or '/'}{query}"


def url_digest(url: str) -> bytes:
    """A short fixed-size digest of ``url``'s key, for maps of many URLs."""
    key = url_key(url).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=DIGEST_BYTES).digest()
