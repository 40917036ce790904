"""Fetch the bytes of one image: ``http(s)://`` behind an address guard, or ``s3://bucket/key``.

Manifest URLs are untrusted, so every HTTP hop is fetched with size, time and
address limits: the host is resolved once, every resolved address is checked, and
the connection goes to the checked address (never a second lookup that DNS
rebinding could answer differently). Host header and TLS SNI/certificate checks
still use the hostname from the URL. Redirects are followed by hand so each hop
passes the same guard.

Each fetch has one wall-clock deadline. Every lookup and socket operation waits at
most the time left, and a watchdog shuts every socket of a fetch whose deadline
passes, so nothing (slow DNS, a stalled TLS handshake, a redirect chain, dripped
headers) runs past it. Any failure, a hostile URL included, is a
:class:`PredictionError` with a specific code.
"""

from __future__ import annotations

import contextlib
import heapq
import http.client
import ipaddress
import itertools
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urljoin, urlsplit

import urllib3
import urllib3.connection
from botocore import exceptions as boto_errors
from botocore.config import Config
from urllib3.exceptions import (
    ConnectTimeoutError,
    DecodeError,
    HTTPError,
    InvalidChunkLength,
    InvalidHeader,
    LocationValueError,
    NewConnectionError,
    ProtocolError,
    ReadTimeoutError,
    SSLError,
)

from batchpredict import aws
from batchpredict.errors import ErrorCode, PredictionError, RefusedError
from batchpredict.hostlimits import parse_retry_after
from batchpredict.robots import (
    ROBOTS_MAX_BYTES,
    ROBOTS_REDIRECTS,
    RobotsCache,
    RobotsRules,
    x_robots_forbidding,
)
from batchpredict.useragent import DEFAULT_USER_AGENT, product_token

if TYPE_CHECKING:
    from botocore.response import StreamingBody
    from mypy_boto3_s3 import S3Client

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], list[str]]

REDIRECT_STATUSES = frozenset({301, 302, 303, 307, 308})
# Statuses that say "try again later" rather than "this URL is wrong".
TRANSIENT_STATUSES = frozenset({408, 429})
# Of those, the ones that say "you are asking too often": the host's limit, not the line's fault.
REFUSAL_STATUSES = frozenset({429, 503})

_HTTP_SCHEMES = ("http", "https")
_DEFAULT_PORTS = {"http": 80, "https": 443}
_READ_CHUNK = 64 * 1024  # an S3 body's reads (each may take several recvs)
# An HTTP body's reads: read1 makes at most one recv per call, capped at the time left, so the
# deadline is checked between recvs whatever this is. 256 KiB takes a 0.7 MB photo in ~4 calls
# rather than ~13 (64 KiB), ~15% less CPU per loopback fetch.
_HTTP_READ = 256 * 1024
_MAX_POOLS = 32  # distinct (address, port, hostname) pools kept; least recently used are closed
_CONNECTIONS_PER_POOL = 8  # concurrent fetches from one host reuse up to this many connections
_RESOLVER_THREADS = 4  # concurrent lookups; more wait in line (within their own deadline)
_RESOLVER_IDLE_SECONDS = 30.0  # an idle resolver thread exits after this long
_CLOCK_SLACK = 0.005
_REQUEST_HEADERS = {  # and the stack's User-Agent (FetchLimits.user_agent)
    "Accept": "image/*,*/*;q=0.8",
    # We cap the bytes we read; a compressed body would let a small transfer expand past the cap.
    "Accept-Encoding": "identity",
}
# [IPv6 literal] or a name, then an optional port; the userinfo before '@' is cut off first.
_HOST_AND_PORT = re.compile(r"(?:\[(?P<literal>[^\]]*)\]|(?P<name>[^\[\]:]*))(?::(?P<port>[0-9]*))?")
# DNS labels, plus '_' (seen in real hostnames); the legacy numeric IPv4 forms match too.
_HOSTNAME = re.compile(r"[a-z0-9_-]{1,63}(?:\.[a-z0-9_-]{1,63})*\.?")
_MAX_HOSTNAME = 254  # 253 characters, plus the dot of a fully qualified name
_S3_NOT_FOUND = frozenset({"NoSuchKey", "NoSuchBucket", "NotFound", "404"})
_S3_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "Forbidden", "403"})
_S3_TRANSIENT = frozenset(
    {"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout", "InternalError"}
)
# Raised by botocore before anything is sent: the bucket name or ARN cannot be used as written.
_S3_INVALID: tuple[type[Exception], ...] = (
    boto_errors.ParamValidationError,
    boto_errors.ValidationError,
    boto_errors.EndpointProviderError,
    boto_errors.InvalidHostLabelError,
    boto_errors.InvalidDNSNameError,
    boto_errors.UnsupportedS3ArnError,
    boto_errors.UnsupportedS3AccesspointConfigurationError,
    boto_errors.UnsupportedS3ConfigurationError,
    boto_errors.UnsupportedOutpostResourceError,
    boto_errors.MissingDependencyException,
)


@dataclass(frozen=True)
class Allowed:
    """One entry of the address guard's allow-list: a network, and one port of it or all."""

    network: IPNetwork
    port: int | None = None  # None: every port

    def covers(self, address: IPAddress, port: int) -> bool:
        return address in self.network and self.port in (None, port)

    @property
    def one_host(self) -> bool:
        return self.network.num_addresses == 1

    def __str__(self) -> str:
        if self.port is None:
            return str(self.network)
        host = self.network.network_address
        return f"[{host}]:{self.port}" if host.version == 6 else f"{host}:{self.port}"


@dataclass(frozen=True)
class FetchLimits:
    """Limits applied to every fetch.

    ``read_timeout`` bounds each socket read and also the whole body read, so a
    server dripping one byte at a time cannot hold a worker. ``allowed_networks``
    is an explicit allow-list that overrides the internal-address guard (the local
    stack allows its samples server's address and port, nothing else on loopback).
    ``s3_prefixes``: the only ``s3://`` URLs fetched (``s3://bucket/prefix/``); None lets any
    through, for the CLI on the user's own credentials. The functions always get a tuple.
    ``user_agent``: sent with every request (USER_AGENT); ``robots_txt``: check each host's
    robots.txt before fetching from it (ROBOTS_TXT, off by default: see robots.py).
    """

    max_bytes: int = 20 * 1024 * 1024
    connect_timeout: float = 3.0
    read_timeout: float = 10.0
    max_redirects: int = 3
    allowed_networks: tuple[Allowed, ...] = ()
    s3_prefixes: tuple[str, ...] | None = None
    # The whole fetch: DNS, connect, TLS, every hop, headers and body. A server dripping its
    # headers a byte at a time passes every per-read timeout; this deadline still ends it.
    total_timeout: float = 30.0
    user_agent: str = DEFAULT_USER_AGENT
    robots_txt: bool = False


@dataclass(frozen=True)
class FetchPolicy:
    concurrency: int = 16
    attempts: int = 3  # transient failures are tried this many times in all
    backoff_seconds: float = 0.5  # doubled after each round


@dataclass(frozen=True)
class Fetched:
    """An image's bytes and the URL they came from (the last hop of any redirects)."""

    data: bytes
    final_url: str


@dataclass(frozen=True)
class _Target:
    """One HTTP hop: where to connect and what to put in the request line and Host header."""

    scheme: str
    host: str  # ASCII hostname or IP literal, without brackets
    port: int
    host_header: str
    request_target: str


def parse_networks(spec: str) -> tuple[Allowed, ...]:
    """Parse a comma- or space-separated list such as ``"127.0.0.1:8080, 10.0.0.0/8, [::1]:80"``.

    A bare address means a single host, ``address:port`` (``[v6]:port``) one port of it. Host
    bits set (``127.0.0.1/8``) are an error rather than silently widened, since this list
    opens the address guard.
    """
    entries: list[Allowed] = []
    for part in spec.replace(",", " ").split():
        try:
            entries.append(_allowed(part))
        except ValueError as exc:
            raise ValueError(f"Invalid network {part!r} in allowed networks: {exc}") from None
    return tuple(entries)


def _allowed(part: str) -> Allowed:
    host, port = part, None
    if part.startswith("["):
        host, _, rest = part[1:].partition("]")
        if not rest.startswith(":"):
            raise ValueError("expected [address]:port")
        port = rest[1:]
    elif part.count(":") == 1:
        host, port = part.split(":")
    network = ipaddress.ip_network(host, strict=True)
    if port is None:
        return Allowed(network)
    if network.num_addresses != 1 or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError("a port goes with one address and is 1-65535")
    return Allowed(network, int(port))


def wide_allowances(allowed: tuple[Allowed, ...]) -> list[str]:
    """The allow-list entries that open more than one host (worth a warning at start)."""
    return [str(entry) for entry in allowed if not entry.one_host]


def parse_s3_prefixes(spec: str) -> tuple[str, ...]:
    """``s3://bucket/prefix/`` entries, comma- or space-separated; each gets a trailing ``/`` so
    ``s3://b/models/x`` cannot also open ``s3://b/models/x-other/``."""
    prefixes = []
    for part in spec.replace(",", " ").split():
        bucket, _, path = part.removeprefix("s3://").partition("/")
        if not part.startswith("s3://") or not bucket or any(c in part for c in "*?"):
            raise ValueError(f"{part!r} is not an s3://bucket/prefix/ (no wildcards)")
        prefixes.append(f"s3://{bucket}/{path.rstrip('/') + '/' if path else ''}")
    return tuple(prefixes)


# -- Deadlines ------------------------------------------------------------------


class _Deadline:
    """One fetch's wall-clock deadline, and the sockets to shut when it passes.

    The watchdog keeps a duplicate descriptor of each socket: shutdown() acts on the socket,
    not on the descriptor, so it still wakes a TLS handshake after ssl has detached the
    original socket object, and it can never hit an unrelated socket that reused a closed
    descriptor number.
    """

    def __init__(self, at: float, message: str) -> None:
        self.at = at
        self._message = message
        self._lock = threading.Lock()
        self._sockets: list[socket.socket] = []
        self._fired = False
        self._finished = False

    @property
    def fired(self) -> bool:
        """The watchdog shut this fetch's sockets: whatever was read since may be cut short."""
        return self._fired

    @property
    def finished(self) -> bool:
        return self._finished

    @property
    def passed(self) -> bool:
        # The slack absorbs clock rounding: a socket timeout capped at the deadline may end
        # a hair before monotonic() reaches it.
        return self._fired or time.monotonic() >= self.at - _CLOCK_SLACK

    def error(self) -> PredictionError:
        # Not retried: a source this slow would spend the whole invocation on retries and
        # take the rest of its batch down with it.
        return PredictionError(ErrorCode.FETCH_TIMEOUT, self._message, transient=False)

    def left(self) -> float:
        """Seconds left; past the deadline, raise the fetch's timeout error."""
        left = self.at - time.monotonic()
        if left <= 0 or self._fired:
            raise self.error()
        return left

    def cap(self, timeout: float | None) -> float:
        """``timeout`` (None: no limit of its own) cut to the time left."""
        left = self.left()
        return left if timeout is None else min(timeout, left)

    def watch(self, sock: socket.socket) -> None:
        """Have the watchdog shut ``sock`` at the deadline (at once if it has passed)."""
        try:
            duplicate = socket.fromfd(sock.fileno(), sock.family, sock.type)
        except OSError:
            return  # already closed: nothing to wake
        with self._lock:
            if self._finished:
                duplicate.close()
                return
            self._sockets.append(duplicate)
            if self._fired:
                _shut(duplicate)

    def expire(self) -> None:
        """The watchdog's call: shut every socket of the fetch, so its blocked call returns."""
        with self._lock:
            if self._finished:
                return
            self._fired = True
            for sock in self._sockets:
                _shut(sock)

    def finish(self) -> None:
        with self._lock:
            self._finished = True
            for sock in self._sockets:
                sock.close()  # the duplicate only; the connection keeps its own descriptor
            self._sockets.clear()


def _shut(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):  # not connected (yet, or any more): nothing to wake
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """One thread per Fetcher expiring deadlines in time order; it ends when none is pending."""

    def __init__(self) -> None:
        self._wake = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._order = itertools.count()  # breaks ties, so deadlines themselves are never compared
        self._running = False

    def add(self, deadline: _Deadline) -> None:
        with self._wake:
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            if not self._running:
                self._running = True
                threading.Thread(target=self._run, name="fetch-watchdog", daemon=True).start()
            elif self._heap[0][2] is deadline:
                # Only a new earliest deadline changes what the thread waits for; waking it for
                # every fetch cost a thread switch each (~10% of a loopback fetch's CPU).
                self._wake.notify()

    def wake(self) -> None:
        """Let the thread drop finished fetches (and end, when none is left) now."""
        with self._wake:
            self._wake.notify()

    def _run(self) -> None:
        while (due := self._next_due()) is not None:
            due.expire()

    def _next_due(self) -> _Deadline | None:
        """Wait for the earliest pending deadline to pass; None once nothing is pending."""
        with self._wake:
            while self._heap:
                at, _, deadline = self._heap[0]
                wait = at - time.monotonic()
                if deadline.finished or wait <= 0:
                    heapq.heappop(self._heap)
                    if not deadline.finished:
                        return deadline
                else:
                    self._wake.wait(wait)
            self._running = False
            return None


class _ResolverThreads:
    """Run lookups on a few daemon threads, so that a fetch can stop waiting at its deadline.

    getaddrinfo has no timeout: a thread stuck in it is abandoned to finish on its own (its
    answer is dropped). While every thread is stuck, new lookups wait in line and their
    fetches time out; the pool never grows past its size.
    """

    def __init__(self, resolve: Resolver, size: int) -> None:
        self._resolve = resolve
        self._size = size
        self._jobs: queue.SimpleQueue[tuple[Future[list[str]], str, int]] = queue.SimpleQueue()
        self._idle = threading.Semaphore(0)  # one token per idle thread not yet promised a job
        self._lock = threading.Lock()
        self._threads = 0

    def submit(self, host: str, port: int) -> Future[list[str]]:
        future: Future[list[str]] = Future()
        self._jobs.put((future, host, port))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if self._threads < self._size:
                    self._threads += 1
                    threading.Thread(target=self._work, name="fetch-resolver", daemon=True).start()
        return future

    def _work(self) -> None:
        while True:
            try:
                future, host, port = self._jobs.get(timeout=_RESOLVER_IDLE_SECONDS)
            except queue.Empty:
                with self._lock:
                    # Take back an idle token before leaving; none left means a job is on its way.
                    if self._idle.acquire(blocking=False):
                        self._threads -= 1
                        return
                continue
            if future.set_running_or_notify_cancel():  # False: its fetch gave up waiting
                try:
                    future.set_result(self._resolve(host, port))
                except BaseException as exc:  # handed to the waiting fetch, which classifies it
                    future.set_exception(exc)
            self._idle.release()


# The deadline of the fetch running on each thread, for the connections it opens or reuses.
_ACTIVE = threading.local()


def _active_deadline() -> _Deadline | None:
    deadline: _Deadline | None = getattr(_ACTIVE, "deadline", None)
    return deadline


class _DeadlineHTTPConnection(urllib3.connection.HTTPConnection):
    """A connection whose sockets end by the deadline of the fetch using it.

    A socket is registered with the watchdog when it is created (before connect) or when a
    pooled connection is reused, and every connect, send and receive waits at most the time
    left.
    """

    _watched_for: _Deadline | None = None

    def _new_conn(self) -> socket.socket:
        deadline = _active_deadline()
        try:
            # An IP literal (we connect to the checked address): no DNS lookup happens here.
            family, kind, proto, _, address = socket.getaddrinfo(
                self.host, self.port, type=socket.SOCK_STREAM, flags=socket.AI_NUMERICHOST
            )[0]
            sock = socket.socket(family, kind, proto)
        except OSError as exc:
            raise NewConnectionError(self, f"Failed to open a socket: {exc}") from exc
        try:
            self._connect(sock, address, deadline)
        except TimeoutError as exc:
            sock.close()
            raise ConnectTimeoutError(self, f"Connection to {self.host} timed out") from exc
        except OSError as exc:
            sock.close()
            raise NewConnectionError(self, f"Failed to establish a new connection: {exc}") from exc
        except BaseException:
            sock.close()
            raise
        return sock

    def _connect(self, sock: socket.socket, address: Any, deadline: _Deadline | None) -> None:
        if deadline is not None:
            deadline.watch(sock)
            self._watched_for = deadline
        for option in self.socket_options or ():
            sock.setsockopt(*option)
        sock.settimeout(deadline.cap(self.timeout) if deadline else self.timeout)
        sock.connect(address)
        if deadline is not None:  # the TLS handshake runs on this timeout
            sock.settimeout(deadline.cap(self.timeout))

    def request(self, *args: Any, **kwargs: Any) -> None:
        deadline = _active_deadline()
        if deadline is not None:
            self.timeout = deadline.cap(self.timeout)
            if self.sock is not None and self._watched_for is not deadline:  # reused from the pool
                deadline.watch(self.sock)
                self._watched_for = deadline
        super().request(*args, **kwargs)

    def getresponse(self) -> urllib3.HTTPResponse:  # type: ignore[override]  # as urllib3 does
        deadline = _active_deadline()
        if deadline is not None:
            self.timeout = deadline.cap(self.timeout)
        return super().getresponse()


class _DeadlineHTTPSConnection(_DeadlineHTTPConnection, urllib3.connection.HTTPSConnection):
    pass


class _DeadlineHTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


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
        s3_client_factory: Callable[[], S3Client] | None = None,
        resolver: Resolver | None = None,
    ) -> None:
        self._limits = limits
        self._resolvers = _ResolverThreads(resolver or _getaddrinfo, _RESOLVER_THREADS)
        self._watchdog = _Watchdog()
        self._s3_client_factory = s3_client_factory or self._default_s3_client
        self._s3_client: S3Client | None = None
        self._s3_lock = threading.Lock()
        # No proxies (a proxy would connect on our behalf, bypassing the guard) and
        # no urllib3 retries or redirects: both are handled here.
        self._pools = urllib3.PoolManager(
            num_pools=_MAX_POOLS,
            maxsize=_CONNECTIONS_PER_POOL,
            timeout=urllib3.Timeout(connect=limits.connect_timeout, read=limits.read_timeout),
            retries=False,
        )
        self._pools.pool_classes_by_scheme = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}
        self._headers = {**_REQUEST_HEADERS, "User-Agent": limits.user_agent}
        self._product = product_token(limits.user_agent)
        self._robots_txt = RobotsCache()

    def fetch(self, url: str, deadline: float | None = None, *, robots: bool = True) -> Fetched:
        """Return the bytes behind ``url``; raise :class:`PredictionError` on any failure.

        ``deadline`` is an absolute ``time.monotonic()`` value; the fetch ends by it, or by
        ``limits.total_timeout`` from now if that comes first. ``robots``: honour the hosts'
        X-Robots-Tag (and robots.txt, when ``limits.robots_txt``); False for the user's own hosts.
        """
        clock = self._deadline(url, deadline)
        scheme = _scheme_of(url)
        if scheme == "s3":
            return self._fetch_s3(url, clock)
        if scheme in _HTTP_SCHEMES:
            return self._fetch_http(url, clock, robots)
        if not scheme:
            raise _invalid_url(f"URL has no scheme (use http, https or s3): {url[:200]!r}")
        raise _unsupported(f"Unsupported URL scheme {scheme!r}; use http, https or s3")

    def close(self) -> None:
        self._pools.clear()
        self._watchdog.wake()

    def _deadline(self, url: str, deadline: float | None) -> _Deadline:
        total = self._limits.total_timeout
        started = time.monotonic()
        if deadline is None or deadline >= started + total:
            return _Deadline(started + total, f"Fetching {url[:200]} took over {total:g} s in all")
        return _Deadline(
            deadline,
            f"Fetching {url[:200]} ran past its deadline, {max(deadline - started, 0):.1f} s after "
            f"it started (the total fetch limit is {total:g} s)",
        )

    def _within(self, deadline: _Deadline, fetch: Callable[[], Fetched]) -> Fetched:
        """Run ``fetch`` under the watchdog; its failures past the deadline become the deadline's."""
        self._watchdog.add(deadline)
        try:
            fetched = fetch()
        except Exception as exc:  # past the deadline, whatever broke, the deadline is the cause
            if deadline.passed:
                raise deadline.error() from exc
            raise
        finally:
            deadline.finish()
        if deadline.fired:  # a shut socket can also look like a short, complete response
            raise deadline.error()
        return fetched

    # -- HTTP -----------------------------------------------------------------

    def _fetch_http(self, url: str, deadline: _Deadline, robots: bool) -> Fetched:
        target = _parse_http_url(url, ErrorCode.INVALID_URL)
        _ACTIVE.deadline = deadline
        try:
            return self._within(deadline, lambda: self._follow(url, target, deadline, robots))
        finally:
            _ACTIVE.deadline = None

    def _follow(self, url: str, target: _Target, deadline: _Deadline, robots: bool) -> Fetched:
        current = url
        for hop in range(self._limits.max_redirects + 1):
            deadline.left()  # no hop starts once the time is up
            if hop:
                target = _parse_http_url(current, ErrorCode.INVALID_REDIRECT)
            if robots and self._limits.robots_txt:
                self._check_robots_txt(target, deadline)
            with self._open(target, deadline) as response:
                if response.status not in REDIRECT_STATUSES:
                    _check_status(response.status, target.host, response.headers.get("Retry-After"))
                    if robots:  # before a byte of the body is read
                        self._check_x_robots_tag(response, target.host)
                    _check_encoding(response, target.host)
                    data = self._read_body(response, target.host, deadline)
                    return Fetched(data, current)
                location = response.headers.get("Location")
            if not location:
                raise _http_error(f"HTTP {response.status} without Location from {target.host}")
            current = _redirect_target(current, location, target.host)
        raise PredictionError(
            ErrorCode.TOO_MANY_REDIRECTS,
            f"More than {self._limits.max_redirects} redirects, last from {target.host}",
            transient=False,
        )

    @contextmanager
    def _open(self, target: _Target, deadline: _Deadline) -> Iterator[urllib3.BaseHTTPResponse]:
        """Send the request to the checked address; hand the connection back afterwards."""
        address = self._checked_address(target.host, target.port, deadline)
        # SNI and certificate hostname checks use the URL's host, not the IP we connect to.
        tls = {"server_hostname": target.host} if target.scheme == "https" else {}
        try:
            pool = self._pools.connection_from_host(address, target.port, target.scheme, pool_kwargs=tls)
            response = pool.urlopen(
                "GET",
                target.request_target,
                headers={**self._headers, "Host": target.host_header},
                redirect=False,
                retries=False,
                preload_content=False,
                decode_content=False,
            )
        except LocationValueError as exc:  # before HTTPError: it is one
            raise _invalid_url(f"Cannot connect to host {target.host!r}: {exc}") from exc
        except HTTPError as exc:
            raise self._transport_error(exc, target.host, in_body=False) from exc
        try:
            yield response
        finally:
            # A connection with an unread body left on it cannot be reused.
            if not response.closed:
                response.close()
            response.release_conn()

    def _checked_address(self, host: str, port: int, deadline: _Deadline) -> str:
        """Resolve ``host`` and return an address to connect to, if every address is allowed."""
        literal = _literal_ip(host)
        resolved = [literal] if literal else self._resolved(host, port, deadline)
        addresses = [_normalised(ip) for ip in resolved]
        for address in addresses:
            reason = _blocked_reason(address, port, self._limits.allowed_networks)
            if reason:
                shown = host if str(address) == host else f"{host} ({address})"
                raise PredictionError(
                    ErrorCode.BLOCKED_ADDRESS, f"Refusing {reason} address {shown}", transient=False
                )
        return str(addresses[0])

    def _resolved(self, host: str, port: int, deadline: _Deadline) -> list[IPAddress]:
        lookup = self._resolvers.submit(host, port)
        try:
            names = lookup.result(timeout=deadline.left())
        except FutureTimeout:
            lookup.cancel()  # still queued: never run it; already running: its answer is dropped
            raise deadline.error() from None
        except (OSError, UnicodeError) as exc:
            # EAI_NONAME will not change on retry; other resolver failures may.
            transient = isinstance(exc, OSError) and not (
                isinstance(exc, socket.gaierror) and exc.errno == socket.EAI_NONAME
            )
            raise PredictionError(
                ErrorCode.CONNECTION_ERROR, f"Cannot resolve {host}: {exc}", transient=transient
            ) from exc
        if not names:
            raise PredictionError(ErrorCode.CONNECTION_ERROR, f"No addresses for {host}", transient=True)
        return [_resolved_ip(name, host) for name in names]

    def _read_body(self, response: urllib3.BaseHTTPResponse, host: str, deadline: _Deadline) -> bytes:
        return _read_capped(
            self._body_chunks(response, host, deadline),
            _content_length(response),
            self._limits.max_bytes,
            f"Body from {host}",
        )

    def _body_chunks(
        self, response: urllib3.BaseHTTPResponse, host: str, deadline: _Deadline
    ) -> Callable[[], bytes]:
        """The body's next piece (empty at its end) per call, each read bounded in time."""
        body_deadline = time.monotonic() + self._limits.read_timeout

        def next_chunk() -> bytes:
            self._shrink_read_timeout(response, body_deadline, deadline, host)
            try:
                # read1: at most one recv per call, so the deadline is checked between recvs.
                return response.read1(_HTTP_READ)
            except HTTPError as exc:
                raise self._transport_error(exc, host, in_body=True) from exc

        return next_chunk

    # -- What hosts ask of us (robots.py) --------------------------------------

    def _check_x_robots_tag(self, response: urllib3.BaseHTTPResponse, host: str) -> None:
        directive = x_robots_forbidding(response.headers.getlist("X-Robots-Tag"), self._product)
        if directive is not None:
            raise _refused(
                ErrorCode.ROBOTS_DISALLOWED, f"{host} answered X-Robots-Tag {directive!r} for this image"
            )

    def _check_robots_txt(self, target: _Target, deadline: _Deadline) -> None:
        try:
            rules = self._robots_txt.get(
                (target.scheme, target.host, target.port),
                lambda: self._read_robots_txt(target, deadline),
                deadline.left,
            )
        except TimeoutError:  # another fetch is reading it, past this one's deadline
            raise deadline.error() from None
        if rules.unreachable is not None:
            raise _refused(
                ErrorCode.ROBOTS_DISALLOWED,
                f"robots.txt of {target.host} could not be read ({rules.unreachable}): the host counts"
                " as disallowing everything for a while (RFC 9309)",
            )
        if not rules.allows(target.request_target):
            raise _refused(
                ErrorCode.ROBOTS_DISALLOWED,
                f"robots.txt of {target.host} disallows {target.request_target[:200]} for {self._product}",
            )

    def _read_robots_txt(self, origin: _Target, deadline: _Deadline) -> RobotsRules:
        """The host's rules, through the same guard and deadline as its images. A deadline that
        passes raises (the answer is not kept); any other failure makes the host unreachable."""
        current = f"{origin.scheme}://{origin.host_header}/robots.txt"
        target = replace(origin, request_target="/robots.txt")
        try:
            for hop in range(ROBOTS_REDIRECTS + 1):
                if hop:
                    target = _parse_http_url(current, ErrorCode.INVALID_REDIRECT)
                with self._open(target, deadline) as response:
                    location = response.headers.get("Location")
                    if response.status not in REDIRECT_STATUSES or not location:
                        return self._robots_rules(response, target.host, deadline)
                current = _redirect_target(current, location, target.host)
            return RobotsRules()  # RFC 9309 2.3.1.2: past the redirects, "unavailable": no rules
        except PredictionError as exc:
            if deadline.passed:
                raise
            return RobotsRules.cannot_read(f"{exc.code.value}: {exc.message}"[:300])

    def _robots_rules(
        self, response: urllib3.BaseHTTPResponse, host: str, deadline: _Deadline
    ) -> RobotsRules:
        if not 200 <= response.status < 300:
            return RobotsRules.for_status(response.status)
        _check_encoding(response, host)
        next_chunk = self._body_chunks(response, host, deadline)
        chunks: list[bytes] = []
        size = 0
        while size < ROBOTS_MAX_BYTES and (chunk := next_chunk()):  # the rest is ignored (RFC 9309)
            chunks.append(chunk)
            size += len(chunk)
        return RobotsRules.parse(b"".join(chunks), self._product)

    def _shrink_read_timeout(
        self, response: urllib3.BaseHTTPResponse, body_deadline: float, deadline: _Deadline, host: str
    ) -> None:
        """Cap the next recv at the time left, so a slow drip ends at the deadline."""
        remaining = body_deadline - time.monotonic()
        if remaining <= 0:
            raise PredictionError(
                ErrorCode.FETCH_TIMEOUT,
                f"Body from {host} not received within {self._limits.read_timeout} s",
                transient=True,
            )
        timeout = deadline.cap(min(remaining, self._limits.read_timeout))
        sock = getattr(response.connection, "sock", None)
        if sock is not None:
            with contextlib.suppress(OSError):  # closed: the read will say so
                sock.settimeout(timeout)

    def _transport_error(self, exc: HTTPError, host: str, *, in_body: bool) -> PredictionError:
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
                f"Timed out reading the body from {host} after {self._limits.read_timeout} s"
                if in_body
                else f"No response from {host} within {self._limits.read_timeout} s",
                transient=True,
            )
        if isinstance(exc, SSLError):
            # Bad or mismatched certificates do not fix themselves on retry.
            return PredictionError(
                ErrorCode.CONNECTION_ERROR, f"TLS error with {host}: {exc}", transient=False
            )
        if isinstance(exc, DecodeError):
            return _http_error(f"Undecodable body from {host}")
        if isinstance(exc, InvalidHeader):
            return _http_error(f"Malformed response from {host}: {exc}")
        cause = _cause(exc)
        if _malformed(cause):
            return _http_error(f"Malformed response from {host}: {cause!r}"[:300])
        reason = "connection broken" if isinstance(exc, ProtocolError) else type(exc).__name__
        doing = "reading the body from" if in_body else "requesting from"
        return PredictionError(ErrorCode.CONNECTION_ERROR, f"Error {doing} {host}: {reason}", transient=True)

    # -- S3 -------------------------------------------------------------------

    def _fetch_s3(self, url: str, deadline: _Deadline) -> Fetched:
        bucket, key = _parse_s3_url(url)
        self._check_s3_source(url, key)
        client = self._s3()
        return self._within(deadline, lambda: self._get_s3(client, url, bucket, key, deadline))

    def _check_s3_source(self, url: str, key: str) -> None:
        """RefusedError before S3 is asked: IAM is not the only guard, and a refusal says nothing about
        whether the object exists. Dot segments are refused too, under an allowed prefix or not."""
        prefixes = self._limits.s3_prefixes
        if prefixes is None:
            return
        dotted = any(segment in (".", "..") for segment in key.split("/"))
        if dotted or not any(url.startswith(prefix) for prefix in prefixes):
            allowed = ", ".join(prefixes) or "none"
            raise _refused(
                ErrorCode.BLOCKED_ADDRESS,
                f"{url[:200]} is not under an allowed image source prefix (allowed: {allowed})",
            )

    def _get_s3(self, client: S3Client, url: str, bucket: str, key: str, deadline: _Deadline) -> Fetched:
        # botocore takes no per-call timeout: the request itself is bounded only by the client's
        # connect/read timeouts (the fetch limits) and its retries; the body by the deadline.
        deadline.left()
        try:
            response = client.get_object(Bucket=bucket, Key=key)
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise _s3_error(exc, url) from exc
        except UnicodeError as exc:  # a key botocore cannot encode
            raise _invalid_url(f"Cannot encode the S3 key of {url[:200]!r}: {exc}") from exc
        body = response["Body"]
        try:
            data = self._read_s3_body(body, response.get("ContentLength"), url, deadline)
        except (boto_errors.ClientError, boto_errors.BotoCoreError) as exc:
            raise _s3_error(exc, url) from exc
        finally:
            body.close()
        return Fetched(data, url)

    def _read_s3_body(
        self, body: StreamingBody, declared: int | None, url: str, deadline: _Deadline
    ) -> bytes:
        sock = _s3_body_socket(body)
        if sock is not None:
            deadline.watch(sock)

        def next_chunk() -> bytes:
            timeout = deadline.cap(self._limits.read_timeout)
            if sock is not None:
                with contextlib.suppress(OSError):  # closed: the read will say so
                    sock.settimeout(timeout)
            return body.read(_READ_CHUNK)

        return _read_capped(next_chunk, declared, self._limits.max_bytes, url)

    def _s3(self) -> S3Client:
        with self._s3_lock:
            if self._s3_client is None:
                self._s3_client = self._s3_client_factory()
            return self._s3_client

    def _default_s3_client(self) -> S3Client:
        return aws.client(
            "s3",
            config=Config(
                connect_timeout=self._limits.connect_timeout,
                read_timeout=self._limits.read_timeout,
                retries={"mode": "standard", "max_attempts": 2},
            ),
        )


def _read_capped(next_chunk: Callable[[], bytes], declared: int | None, limit: int, what: str) -> bytes:
    """The body ``next_chunk`` returns piece by piece until an empty one, joined; too_large as soon
    as its declared size or the bytes received pass ``limit`` (a body longer than declared too)."""
    if declared is not None and declared > limit:
        raise _too_large(f"{what} is {declared} bytes, over the {limit}-byte limit")
    chunks: list[bytes] = []
    size = 0
    while chunk := next_chunk():
        size += len(chunk)
        if size > limit:
            raise _too_large(f"{what} exceeds the {limit}-byte limit")
        chunks.append(chunk)
    return b"".join(chunks)


def _s3_body_socket(body: object) -> socket.socket | None:
    """The socket under a botocore StreamingBody, or None (a fake, or botocore changed).

    botocore exposes no socket; its own ``set_socket_timeout`` reaches into the body the same
    way, and logs an error each time it cannot.
    """
    connection = getattr(getattr(body, "_raw_stream", None), "connection", None)
    sock = getattr(connection, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


# -- URL parsing ----------------------------------------------------------------


def _scheme_of(url: str) -> str:
    try:
        return urlsplit(url).scheme.lower()
    except ValueError as exc:
        raise _invalid_url(f"Malformed URL {url[:200]!r}: {exc}") from exc


def _parse_http_url(url: str, malformed: ErrorCode) -> _Target:
    """Split an http(s) URL; anything unparsable is ``malformed`` (invalid_url or invalid_redirect)."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _refused(malformed, f"Malformed URL {url[:200]!r}: {exc}") from exc
    scheme = parts.scheme.lower()
    if scheme not in _HTTP_SCHEMES:
        # Reached through a redirect, e.g. to file:// or s3://.
        raise _unsupported(f"Unsupported URL scheme {scheme!r} in redirect target")
    host, explicit_port = _host_and_port(parts.netloc, malformed)
    port = explicit_port or _DEFAULT_PORTS[scheme]
    bracketed = f"[{host}]" if ":" in host else host
    host_header = f"{bracketed}:{explicit_port}" if explicit_port else bracketed
    path = parts.path or "/"
    target = f"{path}?{parts.query}" if parts.query else path
    try:
        # Percent-encode spaces and non-ASCII; keep existing escapes and URL delimiters.
        request_target = quote(target, safe="!$%&'()*+,/:;=?@[]~")
    except UnicodeError as exc:  # lone surrogates
        raise _refused(malformed, f"Malformed path in {url[:200]!r}") from exc
    return _Target(scheme, host, port, host_header, request_target)


def _host_and_port(netloc: str, malformed: ErrorCode) -> tuple[str, int | None]:
    """The host (ASCII, lower case, no brackets) and explicit port of a URL's authority."""
    host_port = netloc.rpartition("@")[2]  # credentials are never sent
    match = _HOST_AND_PORT.fullmatch(host_port)
    if match is None:
        raise _refused(malformed, f"Malformed host or port {host_port[:200]!r}")
    port = None
    if match["port"]:
        port = int(match["port"])
        if not 0 < port < 65536:
            raise _refused(malformed, f"Invalid port {port} in {host_port[:200]!r}")
    literal = match["literal"]
    if literal is not None:
        return _ipv6_literal(literal, malformed), port
    return _ascii_host(match["name"], malformed), port


def _ipv6_literal(literal: str, malformed: ErrorCode) -> str:
    # A zone id names one of *our* interfaces: meaningless in a shared URL, and urllib3 cannot
    # carry it anyway.
    if "%" in literal:
        raise _refused(malformed, f"IPv6 zone ids are not supported: [{literal[:200]}]")
    try:
        ipaddress.IPv6Address(literal)
    except ValueError as exc:
        raise _refused(malformed, f"Invalid IPv6 address [{literal[:200]}]") from exc
    return literal.lower()


def _ascii_host(hostname: str, malformed: ErrorCode) -> str:
    if not hostname:
        raise _refused(malformed, "URL has no host")
    try:
        host = hostname.lower().encode("idna").decode("ascii")
    except UnicodeError as exc:
        raise _refused(malformed, f"Invalid host {hostname[:200]!r}") from exc
    if len(host) > _MAX_HOSTNAME or not _HOSTNAME.fullmatch(host):
        raise _refused(malformed, f"Invalid host {hostname[:200]!r}")
    return host


def _redirect_target(current: str, location: str, host: str) -> str:
    try:
        return urljoin(current, location)
    except ValueError as exc:
        raise _refused(
            ErrorCode.INVALID_REDIRECT, f"Unparsable redirect Location {location[:200]!r} from {host}"
        ) from exc


def _parse_s3_url(url: str) -> tuple[str, str]:
    # Split by hand: keys may contain '?' or '#', which urlsplit would cut off.
    bucket, _, key = url[len("s3://") :].partition("/")
    if not bucket or not key:
        raise _invalid_url(f"S3 URL needs a bucket and a key: {url[:200]!r}")
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


def _resolved_ip(name: str, host: str) -> IPAddress:
    try:
        address = ipaddress.ip_address(name)
    except ValueError as exc:
        raise PredictionError(
            ErrorCode.BLOCKED_ADDRESS, f"Resolver gave a non-IP for {host}: {exc}", transient=False
        ) from exc
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        # Only link-local addresses carry a zone, and the pool cannot connect to one.
        raise PredictionError(
            ErrorCode.BLOCKED_ADDRESS, f"Refusing scoped address {host} ({address})", transient=False
        )
    return address


def _normalised(address: IPAddress) -> IPAddress:
    """``::ffff:a.b.c.d`` is a.b.c.d on a dual-stack socket: check it, and connect to it, as IPv4."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def _blocked_reason(address: IPAddress, port: int, allowed: tuple[Allowed, ...]) -> str | None:
    """Why ``address`` must not be fetched, or None. IPv4 inside 6to4/Teredo forms is checked too."""
    for candidate in (address, *_embedded_ipv4(address)):
        if any(entry.covers(candidate, port) for entry in allowed):
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


def _check_status(status: int, host: str, retry_after: str | None = None) -> None:
    if 200 <= status < 300:
        return
    if status in REFUSAL_STATUSES:
        seconds = parse_retry_after(retry_after, time.time())
        told = f" (Retry-After {seconds:g} s)" if seconds is not None else ""
        raise RefusedError(f"HTTP {status} from {host}{told}", seconds)
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


def _cause(exc: HTTPError) -> BaseException | None:
    """What urllib3 wrapped: ``ProtocolError(message, cause)``, else the chained exception."""
    wrapped = exc.args[1] if len(exc.args) > 1 else None
    return wrapped if isinstance(wrapped, BaseException) else exc.__cause__


def _malformed(cause: BaseException | None) -> bool:
    """A response that breaks HTTP (bad status line, headers, chunking), not a dropped connection."""
    if isinstance(cause, InvalidChunkLength):
        return True
    if isinstance(cause, http.client.IncompleteRead):
        # http.client reports a bad chunk-size line as IncompleteRead raised while handling
        # int()'s ValueError; a body cut off before a chunk-size line does the same with b''.
        context = cause.__context__
        return isinstance(context, ValueError) and not str(context).endswith("b''")
    # RemoteDisconnected is a BadStatusLine too, but means "closed without a response".
    return isinstance(cause, http.client.HTTPException) and not isinstance(cause, ConnectionError)


def _s3_error(exc: boto_errors.ClientError | boto_errors.BotoCoreError, url: str) -> PredictionError:
    if isinstance(exc, _S3_INVALID):
        return _invalid_url(f"Cannot fetch {url[:200]} as written: {exc}"[:500])
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


def _refused(code: ErrorCode, message: str) -> PredictionError:
    return PredictionError(code, message, transient=False)


def _invalid_url(message: str) -> PredictionError:
    return _refused(ErrorCode.INVALID_URL, message)


def _unsupported(message: str) -> PredictionError:
    return _refused(ErrorCode.UNSUPPORTED_SCHEME, message)


def _http_error(message: str) -> PredictionError:
    return _refused(ErrorCode.HTTP_ERROR, message)


def _too_large(message: str) -> PredictionError:
    return _refused(ErrorCode.TOO_LARGE, message)
