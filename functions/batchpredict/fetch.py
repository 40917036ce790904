"""Fetch the bytes of one image: ``http(s)://`` behind an address guard, or ``s3://bucket/key``.

Manifest URLs are untrusted, so every HTTP hop is fetched with size, time and
address limits: the host is resolved once, every resolved address is checked, and
the connection goes to the checked address (never a second lookup that DNS
rebinding could answer differently). Host header and TLS SNI/certificate checks
still use the hostname from the URL. Redirects are followed by hand so each hop
passes the same guard.
"""

from __future__ import annotations

import contextlib
import ipaddress
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urljoin, urlsplit

import boto3
import urllib3
import urllib3.connection
from botocore import exceptions as boto_errors
from botocore.config import Config
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from batchpredict.errors import ErrorCode, PredictionError

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Statuses that say "try again later" rather than "this URL is wrong".
TRANSIENT_STATUSES = frozenset({408, 429})

_HTTP_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_READ_CHUNK = 64 * 1024
_MAX_POOLS = 32  # distinct (address, port, hostname) pools kept; least recently used are closed
_CONNECTIONS_PER_POOL = 8  # concurrent fetches from one host reuse up to this many connections
_REQUEST_HEADERS = {
    "User-Agent": "batchpredict/0.1",
    "Accept": "image/*,*/*;q=0.8",
    # We cap the bytes we read; a compressed body would let a small transfer expand past the cap.
    "Accept-Encoding": "identity",
}
_S3_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_S3_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "Forbidden", "403"})
_S3_TRANSIENT = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}
)


@dataclass(frozen=True)
class FetchLimits:
    """Limits applied to every fetch.

    ``read_timeout`` bounds each socket read and also the whole body read, so a
    server dripping one byte at a time cannot hold a worker. ``allowed_networks``
    is an explicit allow-list that overrides the internal-address guard (the local
    demo allows ``127.0.0.0/8``).
    """

    max_bytes: int = 20 * 1024 * 1024
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    max_redirects: int = 3
    allowed_networks: tuple[IPNetwork, ...] = ()
    # The whole fetch, every hop, headers included: a server dripping its headers a byte at
    # a time passes every per-read timeout, so a watchdog shuts the socket at this deadline.
    total_timeout: float = 30.0


@dataclass(frozen=True)
class FetchPolicy:
    concurrency: int = 16
    attempts: int = 3  # transient failures are tried this many times in all
    backoff_seconds: float = 0.5  # doubled after each round


@dataclass(frozen=True)
class Fetched:
    data: bytes
    final_url: str
    content_type: str | None


@dataclass(frozen=True)
class _Target:
    """One HTTP hop: where to connect and what to put in the request line and Host header."""

    scheme: str
    host: str  # ASCII hostname or IP literal, without brackets
    port: int
    host_header: str
    request_target: str


def parse_networks(spec: str) -> tuple[IPNetwork, ...]:
    """Parse a comma- or space-separated list such as ``"127.0.0.0/8, ::1/128"``.

    A bare address means a single host. Host bits set (``127.0.0.1/8``) are an
    error rather than silently widened, since this list opens the address guard.
    """
    networks: list[IPNetwork] = []
    for part in spec.replace(",", " ").split():
        try:
            networks.append(ipaddress.ip_network(part, strict=True))
        except ValueError as exc:
            raise ValueError(f"Invalid network {part!r} in allowed networks: {exc}") from None
    return tuple(networks)


# The connection each fetching thread is waiting on, so that the watchdog (another thread)
# can shut its socket when the whole-fetch deadline passes.
_CONNECTION_OF_THREAD: dict[int, Any] = {}


class _WatchedHTTPConnection(urllib3.connection.HTTPConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _CONNECTION_OF_THREAD[threading.get_ident()] = self
        super().request(*args, **kwargs)


class _WatchedHTTPSConnection(urllib3.connection.HTTPSConnection):
    def request(self, *args: Any, **kwargs: Any) -> None:
        _CONNECTION_OF_THREAD[threading.get_ident()] = self
        super().request(*args, **kwargs)


class _WatchedHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _WatchedHTTPConnection


class _WatchedHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _WatchedHTTPSConnection


def _shut(connection: Any) -> None:
    sock = getattr(connection, "sock", None)
    if sock is not None:
        with contextlib.suppress(OSError):  # already closed: nothing left to wake
            sock.shutdown(socket.SHUT_RDWR)  # wakes the blocked recv in the fetching thread


class Fetcher:
    """Fetch image bytes for one URL at a time; safe to share between threads.

    Parameters
    ----------
    limits
        Size, time, redirect and address limits.
    s3_client_factory
        Builds the boto3 S3 client for ``s3://`` URLs, once, on first use.
        Defaults to a client using ``limits``' timeouts.
    resolver
        ``(host, port) -> [ip, ...]``; defaults to ``socket.getaddrinfo``.
    """

    def __init__(
        self,
        limits: FetchLimits,
        *,
        s3_client_factory: Callable[[], Any] | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._limits = limits
        self._resolve = resolver or _getaddrinfo
        self._s3_client_factory = s3_client_factory or self._default_s3_client
        self._s3_client: Any = None
        self._s3_lock = threading.Lock()
        # No proxies (a proxy would connect on our behalf, bypassing the guard) and
        # no urllib3 retries or redirects: both are handled here.
        self._pools = urllib3.PoolManager(
            num_pools=_MAX_POOLS,
            maxsize=_CONNECTIONS_PER_POOL,
            timeout=urllib3.Timeout(connect=limits.connect_timeout, read=limits.read_timeout),
            retries=False,
        )
        self._pools.pool_classes_by_scheme = {"http": _WatchedHTTPPool, "https": _WatchedHTTPSPool}

    def fetch(self, url: str) -> Fetched:
        """Return the bytes behind ``url``; raise :class:`PredictionError` on any failure."""
        scheme = _scheme_of(url)
        if scheme == "s3":
            return self._fetch_s3(url)
        if scheme in _HTTP_SCHEMES:
            return self._fetch_http(url)
        raise _unsupported(f"Unsupported URL scheme {scheme!r}; use http, https or s3")

    def close(self) -> None:
        self._pools.clear()

    # -- HTTP -----------------------------------------------------------------

    def _fetch_http(self, url: str) -> Fetched:
        fired = threading.Event()
        thread = threading.get_ident()

        def expire() -> None:
            fired.set()
            _shut(_CONNECTION_OF_THREAD.get(thread))

        watchdog = threading.Timer(self._limits.total_timeout, expire)
        watchdog.daemon = True
        watchdog.start()
        try:
            fetched = self._follow(url)
        except PredictionError as exc:
            if fired.is_set():
                raise self._overall_timeout(url) from exc
            raise
        finally:
            watchdog.cancel()
            _CONNECTION_OF_THREAD.pop(thread, None)
        if fired.is_set():  # a shut socket can also look like a short, complete response
            raise self._overall_timeout(url)
        return fetched

    def _overall_timeout(self, url: str) -> PredictionError:
        # Not retried: a source this slow would spend the whole invocation on retries and
        # take the rest of its batch down with it.
        return PredictionError(
            ErrorCode.FETCH_TIMEOUT,
            f"Fetching {url[:200]} took over {self._limits.total_timeout} s in all",
            transient=False,
        )

    def _follow(self, url: str) -> Fetched:
        current = url
        for _hop in range(self._limits.max_redirects + 1):
            target = _parse_http_url(current)
            with self._open(target) as response:
                if response.status not in REDIRECT_STATUSES:
                    _check_status(response.status, target.host)
                    _check_encoding(response, target.host)
                    data = self._read_body(response, target.host)
                    return Fetched(data, current, response.headers.get("Content-Type"))
                location = response.headers.get("Location")
            if not location:
                raise _http_error(f"HTTP {response.status} without Location from {target.host}")
            current = urljoin(current, location)
        raise PredictionError(
            ErrorCode.TOO_MANY_REDIRECTS,
            f"More than {self._limits.max_redirects} redirects, last from {target.host}",
            transient=False,
        )

    @contextmanager
    def _open(self, target: _Target) -> Iterator[urllib3.BaseHTTPResponse]:
        """Send the request to the checked address; hand the connection back afterwards."""
        address = self._checked_address(target.host, target.port)
        # SNI and certificate hostname checks use the URL's host, not the IP we connect to.
        tls = {"server_hostname": target.host} if target.scheme == "https" else {}
        pool = self._pools.connection_from_host(address, target.port, target.scheme, pool_kwargs=tls)
        try:
            response = pool.urlopen(
                "GET",
                target.request_target,
                headers={**_REQUEST_HEADERS, "Host": target.host_header},
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
            )
        except HTTPError as exc:
            raise self._transport_error(exc, target.host, "connecting to") from exc
        try:
            yield response
        finally:
            # A connection with an unread body left on it cannot be reused.
            if not response.closed:
                response.close()
            response.release_conn()

    def _checked_address(self, host: str, port: int) -> str:
        """Resolve ``host`` and return an address to connect to, if every address is allowed."""
        literal = _literal_ip(host)
        addresses = [_normalised(ip) for ip in ([literal] if literal else self._resolved(host, port))]
        for address in addresses:
            reason = _blocked_reason(address, self._limits.allowed_networks)
            if reason:
                shown = host if str(address) == host else f"{host} ({address})"
                raise PredictionError(
                    ErrorCode.BLOCKED_ADDRESS, f"Refusing {reason} address {shown}", transient=False
                )
        return str(addresses[0])

    def _resolved(self, host: str, port: int) -> list[IPAddress]:
        try:
            names = self._resolve(host, port)
        except OSError as exc:
            # EAI_NONAME will not change on retry; other resolver failures may.
            transient = not (isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_NONAME)
            raise PredictionError(
                ErrorCode.CONNECTION_ERROR, f"Cannot resolve {host}: {exc}", transient=transient
            ) from exc
        if not names:
            raise PredictionError(ErrorCode.CONNECTION_ERROR, f"No addresses for {host}", transient=True)
        try:
            return [ipaddress.ip_address(name) for name in names]
        except ValueError as exc:
            raise PredictionError(
                ErrorCode.BLOCKED_ADDRESS, f"Resolver gave a non-IP for {host}: {exc}", transient=False
            ) from exc

    def _read_body(self, response: urllib3.BaseHTTPResponse, host: str) -> bytes:
        limit = self._limits.max_bytes
        declared = _content_length(response)
        if declared is not None and declared > limit:
            raise _too_large(f"{host} declares {declared} bytes, over the {limit}-byte limit")
        deadline = time.monotonic() + self._limits.read_timeout
        chunks: list[bytes] = []
        size = 0
        while True:
            self._shrink_read_timeout(response, deadline, host)
            try:
                # read1: at most one recv per call, so the deadline is checked between recvs.
                chunk = response.read1(_READ_CHUNK)
            except HTTPError as exc:
                raise self._transport_error(exc, host, "reading from") from exc
            if not chunk:
                return b"".join(chunks)
            size += len(chunk)
            if size > limit:
                raise _too_large(f"Body from {host} exceeds the {limit}-byte limit")
            chunks.append(chunk)

    def _shrink_read_timeout(self, response: urllib3.BaseHTTPResponse, deadline: float, host: str) -> None:
        """Cap the next recv at the time left, so a slow drip ends at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise PredictionError(
                ErrorCode.FETCH_TIMEOUT,
                f"Body from {host} not received within {self._limits.read_timeout} s",
                transient=True,
            )
        connection = response.connection
        sock = getattr(connection, "sock", None)
        if sock is not None:
            sock.settimeout(min(remaining, self._limits.read_timeout))

    def _transport_error(self, exc: HTTPError, host: str, doing: str) -> PredictionError:
        # NewConnectionError subclasses ConnectTimeoutError, so it must be tested first.
        if isinstance(exc, NewConnectionError):
            return PredictionError(ErrorCode.CONNECTION_ERROR, f"Cannot connect to {host}", transient=True)
        if isinstance(exc, ConnectTimeoutError):
            return PredictionError(
                ErrorCode.FETCH_TIMEOUT,
                f"Timed out connecting to {host} after {self._limits.connect_timeout} s",
                transient=True,
            )
        if isinstance(exc, ReadTimeoutError):
            return PredictionError(
                ErrorCode.FETCH_TIMEOUT,
                f"Timed out {doing} {host} after {self._limits.read_timeout} s",
                transient=True,
            )
        if isinstance(exc, SSLError):
            # Bad or mismatched certificates do not fix themselves on retry.
            return PredictionError(
                ErrorCode.CONNECTION_ERROR, f"TLS error with {host}: {exc}", transient=False
            )
        if isinstance(exc, DecodeError):
            return _http_error(f"Undecodable body from {host}")
        reason = "connection broken" if isinstance(exc, ProtocolError) else type(exc).__name__
        return PredictionError(ErrorCode.CONNECTION_ERROR, f"Error {doing} {host}: {reason}", transient=True)

    # -- S3 -------------------------------------------------------------------

    def _fetch_s3(self, url: str) -> Fetched:
        bucket, key = _parse_s3_url(url)
        client = self._s3()
        try:
            response = client.get_object(Bucket=bucket, Key=key)
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise _s3_error(exc, url) from exc
        body = response["Body"]
        try:
            data = self._read_s3_body(body, response.get("ContentLength"), url)
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise _s3_error(exc, url) from exc
        finally:
            body.close()
        return Fetched(data, url, response.get("ContentType"))

    def _read_s3_body(self, body: Any, declared: int | None, url: str) -> bytes:
        limit = self._limits.max_bytes
        if declared is not None and declared > limit:
            raise _too_large(f"{url} is {declared} bytes, over the {limit}-byte limit")
        # Read one byte past the limit so an object bigger than it claimed is still caught.
        data: bytes = body.read(limit + 1)
        if len(data) > limit:
            raise _too_large(f"{url} exceeds the {limit}-byte limit")
        return data

    def _s3(self) -> Any:
        with self._s3_lock:
            if self._s3_client is None:
                self._s3_client = self._s3_client_factory()
            return self._s3_client

    def _default_s3_client(self) -> Any:
        config = Config(
            connect_timeout=self._limits.connect_timeout,
            read_timeout=self._limits.read_timeout,
            retries={"mode": "standard", "max_attempts": 2},
        )
        return boto3.client("s3", config=config)


# -- URL parsing ----------------------------------------------------------------


def _scheme_of(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise _unsupported(f"Malformed URL: {exc}") from exc


def _parse_http_url(url: str) -> _Target:
    try:
        parts = urlsplit(url)
        explicit_port = parts.port
    except ValueError as exc:
        raise _unsupported(f"Malformed URL: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _HTTP_SCHEMES:
        # Reached through a redirect, e.g. to file:// or s3://.
        raise _unsupported(f"Unsupported URL scheme {scheme!r} in redirect target")
    host = _ascii_host(parts.hostname)
    port = explicit_port or _DEFAULT_PORTS[scheme]
    bracketed = f"[{host}]" if ":" in host else host
    host_header = f"{bracketed}:{explicit_port}" if explicit_port else bracketed
    path = parts.path or "/"
    target = f"{path}?{parts.query}" if parts.query else path
    # Percent-encode spaces and non-ASCII; keep existing escapes and URL delimiters.
    return _Target(scheme, host, port, host_header, quote(target, safe="!$%&'()*+,/:;=?@[]~"))


def _ascii_host(hostname: str | None) -> str:
    if not hostname:
        raise _unsupported("URL has no host")
    try:
        host = hostname.encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise _unsupported(f"Invalid host {hostname!r}") from exc
    if any(ch.isspace() or not ch.isprintable() for ch in host):
        raise _unsupported(f"Invalid host {hostname!r}")
    return host


def _parse_s3_url(url: str) -> tuple[str, str]:
    # Split by hand: keys may contain '?' or '#', which urlsplit would cut off.
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or not key:
        raise _unsupported(f"S3 URL needs a bucket and a key: {url!r}")
    return bucket, key


# -- Address guard --------------------------------------------------------------


def _getaddrinfo(host: str, port: int) -> list[str]:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def _literal_ip(host: str) -> IPAddress | None:
    """Parse IP literals, including the legacy forms inet_aton accepts (2130706433, 0x7f000001, 127.1).

    Parsing them here means numeric hosts never reach the resolver and are checked
    exactly as the connection will use them.
    """
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def _normalised(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` is a.b.c.d on a dual-stack socket: check it, and connect to it, as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _blocked_reason(address: IPAddress, allowed: tuple[IPNetwork, ...]) -> str | None:
    """Why ``address`` must not be fetched, or None. IPv4 inside 6to4/Teredo forms is checked too."""
    for candidate in (address, *_embedded_ipv4(address)):
        if any(candidate in network for network in allowed):
            continue
        reason = _internal_reason(candidate)
        if reason:
            return reason
    return None


def _embedded_ipv4(address: IPAddress) -> list[ipaddress.IPv4Address]:
    if not isinstance(address, ipaddress.IPv6Address):
        return []
    # 6to4 (2002::/16) counts as global, yet 2002:7f00:1:: carries 127.0.0.1.
    embedded = [address.sixtofour, *(address.teredo or ())]
    return [ip for ip in embedded if ip is not None]


def _internal_reason(address: IPAddress) -> str | None:
    checks = (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("private", address.is_private),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("reserved", address.is_reserved),
        ("site-local", isinstance(address, ipaddress.IPv6Address) and address.is_site_local),
        # Catches the rest of the special-purpose ranges, e.g. 100.64.0.0/10 (carrier NAT).
        ("non-global", not address.is_global),
    )
    return next((name for name, hit in checks if hit), None)


# -- Responses and errors -------------------------------------------------------


def _check_status(status: int, host: str) -> None:
    if 200 <= status < 300:
        return
    transient = status in TRANSIENT_STATUSES or 500 <= status < 600
    raise PredictionError(ErrorCode.HTTP_ERROR, f"HTTP {status} from {host}", transient=transient)


def _check_encoding(response: urllib3.BaseHTTPResponse, host: str) -> None:
    # We ask for identity; a compressed body would be a bomb risk and is not an image anyway.
    encoding = (response.headers.get("Content-Encoding") or "identity").strip().lower()
    if encoding != "identity":
        raise _http_error(f"Unsupported Content-Encoding {encoding!r} from {host}")


def _content_length(response: urllib3.BaseHTTPResponse) -> int | None:
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None  # a bogus header is ignored; the streaming cap still applies


def _s3_error(exc: boto_errors.ClientError | boto_errors.BotoCoreError, url: str) -> PredictionError:
    if isinstance(exc, boto_errors.ConnectTimeoutError | boto_errors.ReadTimeoutError):
        return PredictionError(ErrorCode.FETCH_TIMEOUT, f"Timed out reading {url}", transient=True)
    if isinstance(exc, boto_errors.BotoCoreError):
        return PredictionError(
            ErrorCode.CONNECTION_ERROR, f"Cannot reach S3 for {url}: {exc}", transient=True
        )
    code = str(exc.response.get("Error", {}).get("Code", ""))
    status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0))
    if code in _S3_NOT_FOUND or status == 404:
        return PredictionError(ErrorCode.S3_NOT_FOUND, f"No such S3 object {url}", transient=False)
    if code in _S3_DENIED or status == 403:
        return PredictionError(ErrorCode.S3_ACCESS_DENIED, f"Access denied to {url}", transient=False)
    transient = code in _S3_TRANSIENT or status in TRANSIENT_STATUSES or status >= 500
    return PredictionError(ErrorCode.HTTP_ERROR, f"S3 {code or status} for {url}", transient=transient)


def _unsupported(message: str) -> PredictionError:
    return PredictionError(ErrorCode.UNSUPPORTED_SCHEME, message, transient=False)


def _http_error(message: str) -> PredictionError:
    return PredictionError(ErrorCode.HTTP_ERROR, message, transient=False)


def _too_large(message: str) -> PredictionError:
    return PredictionError(ErrorCode.TOO_LARGE, message, transient=False)
