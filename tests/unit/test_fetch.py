"""Tests for fetch.py against real HTTP(S) servers on 127.0.0.1.

No traffic may leave the machine: an autouse spy fails any connect() to a
non-loopback address and any DNS lookup of a name, and the guard tests assert
that not even a loopback connection was attempted.
"""

from __future__ import annotations

import contextlib
import datetime
import gzip
import io
import ipaddress
import socket
import ssl
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError, EndpointConnectionError
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from moto import mock_aws

from batchpredict import aws
from batchpredict.errors import ErrorCode, PredictionError, RefusedError
from batchpredict.fetch import (
    Fetched,
    Fetcher,
    FetchLimits,
    Resolver,
    _Deadline,
    parse_networks,
    parse_s3_prefixes,
    wide_allowances,
)
from tests.aws_env import dummy_aws

IMAGE = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8
LOOPBACK = parse_networks("127.0.0.0/8")
FAST = FetchLimits(max_bytes=64 * 1024, connect_timeout=1.0, read_timeout=2.0, allowed_networks=LOOPBACK)
Address = tuple[Any, ...]
# Per-operation timeouts far beyond the 1 s deadlines the deadline tests give: only the
# whole-fetch deadline can end those fetches in time.
PATIENT = {"connect_timeout": 10.0, "read_timeout": 10.0}
# A bound against the unbounded behaviour (a fetch outliving its deadline by minutes), with
# room for a loaded machine: not a speed benchmark.
DEADLINE_SLACK = 3.0
RAW_RESPONSES = {
    # Malformed: the server breaks HTTP, which a retry will not fix.
    "bad-status-line": b"HELLO WORLD\r\n\r\n",
    "bad-status-code": b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n",
    "unknown-version": b"HTTP/9.9 200 OK\r\nContent-Length: 0\r\n\r\n",
    "no-status-line": b"GIF89a\x01\x00\x01\x00",
    "header-too-long": b"HTTP/1.1 200 OK\r\nX-Big: " + b"a" * 70_000 + b"\r\n\r\n",
    "too-many-headers": b"HTTP/1.1 200 OK\r\n" + b"X-Many: a\r\n" * 120 + b"\r\n",
    "conflicting-lengths": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 5\r\n\r\nabc",
    "bad-chunk-size": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n",
    "chunk-size-too-long": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"1" * 70_000,
    # Cut short: the connection dropped; another attempt may get it all.
    "cut-before-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n",
    "cut-inside-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nabc",
    "cut-body": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc",
}


# -- network spies ----------------------------------------------------------------


@pytest.fixture(autouse=True)
def connections(monkeypatch: pytest.MonkeyPatch) -> list[Address]:
    """Every address a socket connects to during the test; anything off loopback fails the test."""
    seen: list[Address] = []
    real_connect = socket.socket.connect

    def spy_connect(sock: socket.socket, address: Address) -> None:
        seen.append(address)
        if not ipaddress.ip_address(address[0]).is_loopback:
            raise AssertionError(f"test tried to connect to {address}")
        real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", spy_connect)
    return seen


@pytest.fixture(autouse=True)
def no_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names must come from an injected resolver; only IP literals may reach getaddrinfo."""
    real_getaddrinfo = socket.getaddrinfo

    def literal_only(host: Any, *args: Any, **kwargs: Any) -> Any:
        ipaddress.ip_address(host)  # raises ValueError for a name
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", literal_only)


class StaticResolver:
    """Injected resolver: fixed answers per name, records every call."""

    def __init__(self, answers: dict[str, list[str]] | None = None) -> None:
        self.answers = answers or {}
        self.calls: list[tuple[str, int]] = []

    def __call__(self, host: str, port: int) -> list[str]:
        self.calls.append((host, port))
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return self.answers[host]


def refusing_resolver(host: str, port: int) -> list[str]:
    raise AssertionError(f"resolver must not be called (asked for {host}:{port})")


def refusing_s3() -> Any:
    raise AssertionError("no S3 client may be created")


def offline_s3() -> Any:
    """A real S3 client (botocore validates bucket names and encodes keys) that never sends."""

    def refuse(request: Any, **kwargs: Any) -> None:
        raise AssertionError(f"no S3 request may be sent ({request.url})")

    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    client = session.client("s3")
    client.meta.events.register("before-send", refuse)
    return client


# -- test servers -----------------------------------------------------------------


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # handlers parked on keep-alive or /hang must not block teardown

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.stop = threading.Event()
        self.sni_names: list[str | None] = []

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients hanging up mid-response (too large, timeouts) is what several tests do.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        query = {key: values[0] for key, values in parse_qs(parts.query).items()}
        route, _, arg = parts.path.strip("/").partition("/")
        getattr(self, f"route_{route.replace('-', '_')}")(arg, query)

    def reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in {"Content-Length": str(len(body)), **(headers or {})}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def route_image(self, arg: str, query: dict[str, str]) -> None:
        self.reply(200, IMAGE, {"Content-Type": "image/png"})

    def route_bytes(self, arg: str, query: dict[str, str]) -> None:
        self.reply(200, b"x" * int(arg), {"Content-Type": "application/octet-stream"})

    def route_status(self, arg: str, query: dict[str, str]) -> None:
        self.reply(int(arg), b"nope")

    def route_echo_host(self, arg: str, query: dict[str, str]) -> None:
        self.reply(200, self.headers["Host"].encode())

    def route_redirect(self, arg: str, query: dict[str, str]) -> None:
        """/redirect/N answers with N relative redirects before the image."""
        hops = int(arg)
        if hops == 0:
            self.route_image(arg, query)
            return
        status = int(query.get("code", "302"))
        self.reply(status, b"moved", {"Location": f"/redirect/{hops - 1}?code={status}"})

    def route_redirect_to(self, arg: str, query: dict[str, str]) -> None:
        self.reply(302, b"", {"Location": query["url"]})

    def route_no_location(self, arg: str, query: dict[str, str]) -> None:
        self.reply(302, b"")

    def route_huge_length(self, arg: str, query: dict[str, str]) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(10**12))
        self.end_headers()
        self.wfile.write(b"x" * 1024)
        self.close_connection = True

    def route_chunked(self, arg: str, query: dict[str, str]) -> None:
        """Chunked body of N KiB, no Content-Length."""
        self.send_response(200)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for _ in range(int(arg)):
            self.wfile.write(b"400\r\n" + b"x" * 1024 + b"\r\n")
        self.wfile.write(b"0\r\n\r\n")

    def route_gzip(self, arg: str, query: dict[str, str]) -> None:
        self.reply(200, gzip.compress(IMAGE), {"Content-Encoding": "gzip"})

    def route_drip(self, arg: str, query: dict[str, str]) -> None:
        """Headers at once, then one byte every 50 ms: each read is quick, the body never ends."""
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        self.wfile.flush()
        while not self.server.stop.wait(0.05):
            self.wfile.write(b"x")
            self.wfile.flush()

    def route_drip_headers(self, arg: str, query: dict[str, str]) -> None:
        """The status line, then one header byte every 50 ms: each read is quick, headers never end."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\n")
        self.wfile.flush()
        while not self.server.stop.wait(0.05):
            self.wfile.write(b"X")
            self.wfile.flush()
        self.close_connection = True

    def route_slow_redirect(self, arg: str, query: dict[str, str]) -> None:
        """/slow-redirect/N: each hop answers after 0.4 s, redirecting to N-1 (the image at 0)."""
        if self.server.stop.wait(0.4):
            return
        hops = int(arg)
        if hops == 0:
            self.route_image(arg, query)
            return
        self.reply(302, b"", {"Location": f"/slow-redirect/{hops - 1}"})

    def route_raw(self, arg: str, query: dict[str, str]) -> None:
        """/raw/NAME: the bytes of RAW_RESPONSES[NAME] as the whole response, then hang up."""
        self.wfile.write(RAW_RESPONSES[arg])
        self.wfile.flush()
        self.close_connection = True

    def route_rst(self, arg: str, query: dict[str, str]) -> None:
        """Half a response, then a TCP reset (SO_LINGER 0)."""
        self.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\nabc")
        self.wfile.flush()
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.connection.close()
        self.close_connection = True

    def route_s3drip(self, arg: str, query: dict[str, str]) -> None:
        """Bucket "s3drip" of a fake S3 endpoint: its objects' bodies drip like /drip."""
        self.route_drip(arg, query)

    def route_hang(self, arg: str, query: dict[str, str]) -> None:
        self.server.stop.wait(10)
        self.close_connection = True

    def route_reset(self, arg: str, query: dict[str, str]) -> None:
        self.close_connection = True  # hang up without a status line


@dataclass(frozen=True)
class Server:
    scheme: str
    port: int
    httpd: _Server

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        return f"{self.scheme}://{host}:{self.port}{path}"


@contextlib.contextmanager
def _serving(tls: ssl.SSLContext | None = None, httpd: _Server | None = None) -> Iterator[Server]:
    httpd = httpd or _Server()
    if tls is not None:
        tls.sni_callback = lambda sock, name, ctx: httpd.sni_names.append(name)
        httpd.socket = tls.wrap_socket(httpd.socket, server_side=True)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server("https" if tls else "http", httpd.server_address[1], httpd)
    finally:
        httpd.stop.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def server() -> Iterator[Server]:
    with _serving() as running:
        yield running


@pytest.fixture
def make_fetcher() -> Iterator[Callable[..., Fetcher]]:
    """Build fetchers (FAST limits, loopback allowed, no DNS unless given); close them after the test."""
    made: list[Fetcher] = []

    def make(resolver: Any = refusing_resolver, s3: Any = None, **limits: Any) -> Fetcher:
        fetcher = Fetcher(replace(FAST, **limits), resolver=resolver, s3_client_factory=s3)
        made.append(fetcher)
        return fetcher

    yield make
    for fetcher in made:
        fetcher.close()


def fetch_error(fetcher: Fetcher, url: str) -> PredictionError:
    with pytest.raises(PredictionError) as raised:
        fetcher.fetch(url)
    return raised.value


def assert_error(error: PredictionError, code: ErrorCode, *, transient: bool) -> None:
    assert (error.code, error.transient) == (code, transient), error.message


# -- parse_networks ---------------------------------------------------------------


def test_parse_networks_reads_a_mixed_list() -> None:
    networks = parse_networks("127.0.0.0/8, ::1/128 10.0.0.7 127.0.0.1:8080,[::1]:9000")
    assert [str(n) for n in networks] == [
        "127.0.0.0/8",
        "::1/128",
        "10.0.0.7/32",
        "127.0.0.1:8080",
        "[::1]:9000",
    ]
    assert parse_networks(" ") == ()
    assert wide_allowances(networks) == ["127.0.0.0/8"]  # one host, or one port of it, is narrow


@pytest.mark.parametrize(
    "spec",
    ["banana", "127.0.0.1/8", "10.0.0.0/33", "127.0.0.0/8:80", "127.0.0.1:0", "127.0.0.1:x", "[::1]9000"],
)
def test_parse_networks_rejects_bad_input(spec: str) -> None:
    with pytest.raises(ValueError, match="Invalid network"):
        parse_networks(spec)


# -- happy path -------------------------------------------------------------------


def test_fetches_image_bytes(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    url = server.url("/image")
    assert make_fetcher().fetch(url) == Fetched(IMAGE, url)


def test_body_of_exactly_max_bytes_is_accepted(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    assert make_fetcher(max_bytes=5000).fetch(server.url("/bytes/5000")).data == b"x" * 5000


def test_chunked_body_under_the_limit_is_read_whole(
    server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    assert make_fetcher().fetch(server.url("/chunked/10")).data == b"x" * 10 * 1024


def test_connects_to_the_checked_ip_and_sends_the_original_host(
    server: Server, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    # A rebinding DNS server answers loopback first, then an internal address.
    answers = iter([["127.0.0.1"], ["10.0.0.1"], ["10.0.0.1"]])
    calls: list[str] = []

    def rebinding(host: str, port: int) -> list[str]:
        calls.append(host)
        return next(answers)

    fetched = make_fetcher(resolver=rebinding).fetch(server.url("/echo-host", host="images.test"))
    assert fetched.data == f"images.test:{server.port}".encode()
    assert calls == ["images.test"]  # resolved once; the connection used that answer
    assert connections == [("127.0.0.1", server.port)]


# -- address guard ----------------------------------------------------------------

NUMERIC_LOOPBACK_HOSTS = [
    "127.0.0.1",
    "2130706433",
    "0x7f000001",
    "017700000001",
    "127.1",
    "[::ffff:127.0.0.1]",
]

BLOCKED_LITERAL_URLS = [
    *(f"http://{host}/" for host in NUMERIC_LOOPBACK_HOSTS),
    "http://[::1]/",
    "http://0.0.0.0/",
    "http://[::]/",
    "http://169.254.169.254/latest/meta-data/",
    "http://0251.0376.0251.0376/latest/meta-data/",  # 169.254.169.254 in octal
    "https://0xa9fea9fe/",  # 169.254.169.254 in hex
    "http://[fd00:ec2::254]/",  # IMDS over IPv6
    "http://10.0.0.1/",
    "http://172.16.0.1/",
    "http://192.168.1.1/",
    "http://100.64.0.1/",  # carrier-grade NAT
    "http://224.0.0.1/",
    "http://[ff02::1]/",
    "http://[fe80::1]/",
    "http://[fc00::1]/",
    "http://[fec0::1]/",  # deprecated site-local
    "http://[::ffff:10.0.0.1]/",
    "http://[::ffff:a9fe:a9fe]/",
    "http://[2002:7f00:1::]/",  # 6to4 wrapping 127.0.0.1
    "http://[64:ff9b::a00:1]/",  # NAT64 wrapping 10.0.0.1
]


@pytest.mark.parametrize("url", BLOCKED_LITERAL_URLS)
def test_internal_ip_literals_are_blocked_before_connecting(
    url: str, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    error = fetch_error(make_fetcher(allowed_networks=()), url)
    assert_error(error, ErrorCode.BLOCKED_ADDRESS, transient=False)
    assert connections == []


@pytest.mark.parametrize(
    "answer",
    [
        ["10.1.2.3"],
        ["127.0.0.1"],
        ["169.254.169.254"],
        ["::1"],
        ["fe80::1%1"],
        ["::ffff:10.0.0.1"],
        ["93.184.215.14", "10.0.0.1"],  # one bad answer is enough
    ],
)
def test_names_resolving_to_internal_addresses_are_blocked(
    answer: list[str], make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    resolver = StaticResolver({"images.test": answer})
    error = fetch_error(make_fetcher(resolver=resolver, allowed_networks=()), "http://images.test/cat.png")
    assert_error(error, ErrorCode.BLOCKED_ADDRESS, transient=False)
    assert "images.test" in error.message
    assert resolver.calls == [("images.test", 80)]
    assert connections == []


@pytest.mark.parametrize("answer", [["::1"], ["127.0.0.1", "10.0.0.1"]])
def test_allow_list_opens_only_what_it_names(
    answer: list[str], make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    resolver = StaticResolver({"images.test": answer})
    error = fetch_error(make_fetcher(resolver=resolver), "http://images.test/cat.png")  # 127.0.0.0/8 allowed
    assert_error(error, ErrorCode.BLOCKED_ADDRESS, transient=False)
    assert connections == []


@pytest.mark.parametrize("host", NUMERIC_LOOPBACK_HOSTS)
def test_allowed_loopback_works_in_every_numeric_form(
    host: str, server: Server, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    assert make_fetcher().fetch(server.url("/image", host=host)).data == IMAGE
    assert connections == [("127.0.0.1", server.port)]


def test_allowed_loopback_works_by_name(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    resolver = StaticResolver({"images.test": ["127.0.0.1"]})
    assert make_fetcher(resolver=resolver).fetch(server.url("/image", host="images.test")).data == IMAGE
    assert resolver.calls == [("images.test", server.port)]


def test_unknown_name_is_a_permanent_connection_error(make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(resolver=StaticResolver()), "http://nowhere.test/cat.png")
    assert_error(error, ErrorCode.CONNECTION_ERROR, transient=False)


# -- schemes ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "ftp://example.com/cat.png",
        "file:///etc/passwd",
        "data:image/png;base64,iVBORw0KGgo=",
        "gopher://example.com/",
    ],
)
def test_unsupported_schemes_are_refused(
    url: str, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    error = fetch_error(make_fetcher(s3=refusing_s3), url)
    assert_error(error, ErrorCode.UNSUPPORTED_SCHEME, transient=False)
    assert connections == []


INVALID_URLS = [
    "",
    "cat.png",
    "//example.com/cat.png",
    "http:///cat.png",
    "https://",
    "http://[::1/",
    "http://[::1",
    "http://example.com:99999/",
    "http://example.com:0/",
    "http://example.com:-1/",
    "http://example.com:1_0/",
    "http://example.com:80:80/",
    "http://[fe80::1%eth0]/a.jpg",  # IPv6 zone id
    "http://[fe80::1%25eth0]/a.jpg",  # the same, percent-encoded as RFC 6874 writes it
    "http://[::1]junk/",
    "http://[v1.fe80::a]/",  # IPvFuture
    "http://[127.0.0.1]/",
    "http://[nope]/",
    "http://exa mple.com/",
    "http://%31%32%37.0.0.1/",
    "http://a..b/",
    "http://" + "a" * 64 + ".com/",
    "http://" + "a." * 130 + "com/",
    "http://ex\\ample.com/",
    "http://\ud800.example/",
    "http://example.com/\ud800",
    "s3://bucket-only",
    "s3:///key-only",
    "s3://",
]


@pytest.mark.parametrize("url", INVALID_URLS)
def test_unparsable_urls_are_invalid(
    url: str, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    error = fetch_error(make_fetcher(s3=refusing_s3), url)
    assert_error(error, ErrorCode.INVALID_URL, transient=False)
    assert connections == []


def test_zone_id_is_refused_even_when_the_network_is_allowed(make_fetcher: Callable[..., Fetcher]) -> None:
    fetcher = make_fetcher(allowed_networks=parse_networks("fe80::/10"))
    error = fetch_error(fetcher, "http://[fe80::1%eth0]/a.jpg")
    assert_error(error, ErrorCode.INVALID_URL, transient=False)
    assert "zone id" in error.message


@pytest.mark.parametrize(
    "url",
    [
        *INVALID_URLS,
        "http://[::1]:65536/",
        "http://xn--/",
        "http://\u0661\u0662\u0663/",  # Arabic-Indic digits
        "http://example.com\x00/",
        "http://ex%00ample.com/",
        "http://[::ffff:127.0.0.1%1]/",
        "https://user:pa@ss@[::1]:x/",
        "http://\uff0fexample.com/",  # a fullwidth solidus: NFKC turns it into '/'
        "HTTP://example.com:8080\u2100/",  # NFKC: a/c
        "s3://bucket\ud800/key",
        "s3://bucket/\ud800",
        "s3://bad bucket/key",
        "http://" + "x" * 5000,
        "\x00http://example.com/",
    ],
)
def test_hostile_urls_end_as_prediction_errors(url: str, make_fetcher: Callable[..., Fetcher]) -> None:
    """Whatever the string, fetch() raises a PredictionError with a specific code, nothing else."""
    error = fetch_error(make_fetcher(resolver=StaticResolver(), s3=offline_s3), url)
    assert error.code in {ErrorCode.INVALID_URL, ErrorCode.UNSUPPORTED_SCHEME, ErrorCode.CONNECTION_ERROR}


# -- redirects --------------------------------------------------------------------


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_follows_one_redirect(code: int, server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    fetched = make_fetcher().fetch(server.url(f"/redirect/1?code={code}"))
    assert (fetched.data, fetched.final_url) == (IMAGE, server.url(f"/redirect/0?code={code}"))


def test_follows_up_to_max_redirects(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    assert make_fetcher(max_redirects=3).fetch(server.url("/redirect/3")).data == IMAGE


def test_too_many_redirects(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(max_redirects=3), server.url("/redirect/4"))
    assert_error(error, ErrorCode.TOO_MANY_REDIRECTS, transient=False)
    assert "3 redirects" in error.message


def test_redirect_to_metadata_address_is_blocked(
    server: Server, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    url = server.url("/redirect-to?url=http://169.254.169.254/latest/meta-data/")
    error = fetch_error(make_fetcher(), url)
    assert_error(error, ErrorCode.BLOCKED_ADDRESS, transient=False)
    assert "169.254.169.254" in error.message
    assert {address[0] for address in connections} == {"127.0.0.1"}


def test_redirect_to_name_resolving_internal_is_blocked(
    server: Server, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    resolver = StaticResolver({"internal.test": ["10.0.0.1"]})
    error = fetch_error(make_fetcher(resolver=resolver), server.url("/redirect-to?url=http://internal.test/"))
    assert_error(error, ErrorCode.BLOCKED_ADDRESS, transient=False)
    assert resolver.calls == [("internal.test", 80)]
    assert {address[0] for address in connections} == {"127.0.0.1"}


@pytest.mark.parametrize("target", ["file:///etc/passwd", "s3://bucket/key", "gopher://127.0.0.1/"])
def test_redirect_to_other_schemes_is_refused(
    target: str, server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    error = fetch_error(make_fetcher(), server.url(f"/redirect-to?url={target}"))
    assert_error(error, ErrorCode.UNSUPPORTED_SCHEME, transient=False)


@pytest.mark.parametrize(
    "location",
    [
        "http://[::1",
        "//[::1/x",
        "http://[fe80::1%eth0]/a.jpg",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "http://[nope]/",
    ],
)
def test_unparsable_redirect_location_is_an_invalid_redirect(
    location: str, server: Server, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    error = fetch_error(make_fetcher(), server.url(f"/redirect-to?url={quote(location, safe='')}"))
    assert_error(error, ErrorCode.INVALID_REDIRECT, transient=False)
    assert connections == [("127.0.0.1", server.port)]


def test_redirect_without_location(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(), server.url("/no-location"))
    assert_error(error, ErrorCode.HTTP_ERROR, transient=False)


# -- HTTP status ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "transient"),
    [
        *((status, False) for status in (300, 400, 403, 404, 410)),
        *((status, True) for status in (408, 500, 502)),
    ],
)
def test_http_status_errors(
    status: int, transient: bool, server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    error = fetch_error(make_fetcher(), server.url(f"/status/{status}"))
    assert_error(error, ErrorCode.HTTP_ERROR, transient=transient)
    assert error.message == f"HTTP {status} from 127.0.0.1"


@pytest.mark.parametrize("status", [429, 503])
def test_a_refusal_is_rate_limited_not_an_http_error(
    status: int, server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    """429 and 503 say "not now": the line is deferred (hostlimiter.py), not failed http_error."""
    error = fetch_error(make_fetcher(), server.url(f"/status/{status}"))
    assert isinstance(error, RefusedError)
    assert_error(error, ErrorCode.RATE_LIMITED, transient=True)
    assert error.message == f"HTTP {status} from 127.0.0.1"
    assert error.retry_after is None  # the test server sends no Retry-After


def test_compressed_body_is_refused(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(), server.url("/gzip"))
    assert_error(error, ErrorCode.HTTP_ERROR, transient=False)
    assert "gzip" in error.message


# -- size -------------------------------------------------------------------------


def test_huge_content_length_is_refused_before_reading(
    server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    error = fetch_error(make_fetcher(), server.url("/huge-length"))
    assert_error(error, ErrorCode.TOO_LARGE, transient=False)
    assert str(10**12) in error.message
    assert str(FAST.max_bytes) in error.message


def test_chunked_body_over_the_limit_is_cut_off(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(max_bytes=16 * 1024), server.url("/chunked/200"))
    assert_error(error, ErrorCode.TOO_LARGE, transient=False)
    assert "16384-byte limit" in error.message


def test_pool_recovers_after_an_aborted_body(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    fetcher = make_fetcher(max_bytes=16 * 1024)
    assert_error(fetch_error(fetcher, server.url("/chunked/200")), ErrorCode.TOO_LARGE, transient=False)
    assert fetcher.fetch(server.url("/bytes/100")).data == b"x" * 100


# -- time -------------------------------------------------------------------------


def test_slow_drip_body_hits_the_deadline(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    started = time.monotonic()
    error = fetch_error(make_fetcher(read_timeout=0.3), server.url("/drip"))
    assert_error(error, ErrorCode.FETCH_TIMEOUT, transient=True)
    assert time.monotonic() - started < 1.5


def test_headers_dripped_a_byte_at_a_time_hit_the_whole_fetch_deadline(
    server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    # Every read returns within read_timeout, so only the whole-fetch watchdog can stop it.
    started = time.monotonic()
    error = fetch_error(make_fetcher(read_timeout=0.3, total_timeout=0.8), server.url("/drip-headers"))
    assert_error(error, ErrorCode.FETCH_TIMEOUT, transient=False)
    assert "in all" in error.message
    assert time.monotonic() - started < 2.0


def test_server_that_never_answers_times_out(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    started = time.monotonic()
    error = fetch_error(make_fetcher(read_timeout=0.3), server.url("/hang"))
    assert_error(error, ErrorCode.FETCH_TIMEOUT, transient=True)
    assert error.message == "No response from 127.0.0.1 within 0.3 s"
    assert time.monotonic() - started < 1.5


@contextlib.contextmanager
def _silent_listener(*, full: bool) -> Iterator[int]:
    """A port whose listener never accepts nor sends. ``full``: its accept queue is full, so
    further SYNs are dropped and connect() hangs; otherwise the kernel completes the TCP
    handshake and the client then waits for an answer that never comes."""
    with socket.socket() as listener, contextlib.ExitStack() as fillers:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0 if full else 8)
        address = listener.getsockname()
        if full:
            with contextlib.suppress(TimeoutError):
                for _ in range(8):
                    fillers.enter_context(socket.create_connection(address, timeout=0.2))
        yield address[1]


def test_connect_timeout(make_fetcher: Callable[..., Fetcher]) -> None:
    with _silent_listener(full=True) as port:
        error = fetch_error(make_fetcher(connect_timeout=0.3), f"http://127.0.0.1:{port}/")
    assert_error(error, ErrorCode.FETCH_TIMEOUT, transient=True)
    assert "connecting" in error.message


def fetch_past_deadline(fetcher: Fetcher, url: str, seconds: float = 1.0) -> PredictionError:
    """Fetch with a deadline ``seconds`` away; it must end as that deadline's timeout, in time."""
    started = time.monotonic()
    with pytest.raises(PredictionError) as raised:
        fetcher.fetch(url, deadline=started + seconds)
    elapsed = time.monotonic() - started
    assert_error(raised.value, ErrorCode.FETCH_TIMEOUT, transient=False)
    assert "deadline" in raised.value.message
    assert elapsed < seconds + DEADLINE_SLACK
    return raised.value


@pytest.fixture
def stuck_resolver() -> Iterator[Callable[[str, int], list[str]]]:
    """A resolver that answers only after the test (getaddrinfo has no timeout either)."""
    release = threading.Event()

    def stuck(host: str, port: int) -> list[str]:
        release.wait(10)
        return ["127.0.0.1"]

    yield stuck
    release.set()


def test_deadline_ends_a_dns_lookup_that_never_answers(
    stuck_resolver: Resolver, make_fetcher: Callable[..., Fetcher]
) -> None:
    fetcher = make_fetcher(resolver=stuck_resolver, **PATIENT)
    error = fetch_past_deadline(fetcher, "http://images.test/cat.png")
    assert "the total fetch limit is 30 s" in error.message


def test_total_timeout_alone_ends_a_dns_lookup_that_never_answers(
    stuck_resolver: Resolver, make_fetcher: Callable[..., Fetcher]
) -> None:
    started = time.monotonic()
    error = fetch_error(
        make_fetcher(resolver=stuck_resolver, total_timeout=1.0), "http://images.test/cat.png"
    )
    assert_error(error, ErrorCode.FETCH_TIMEOUT, transient=False)
    assert error.message == "Fetching http://images.test/cat.png took over 1 s in all"
    assert time.monotonic() - started < 1.0 + DEADLINE_SLACK


def test_deadline_ends_a_connect_that_hangs(make_fetcher: Callable[..., Fetcher]) -> None:
    with _silent_listener(full=True) as port:
        fetch_past_deadline(make_fetcher(**PATIENT), f"http://127.0.0.1:{port}/")


def test_deadline_ends_a_tls_handshake_that_never_answers(make_fetcher: Callable[..., Fetcher]) -> None:
    with _silent_listener(full=False) as port:
        fetch_past_deadline(make_fetcher(**PATIENT), f"https://127.0.0.1:{port}/")


def test_deadline_ends_a_chain_of_slow_redirects(
    server: Server, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    # Each hop answers in 0.4 s, well within every per-operation timeout; the chain does not.
    fetch_past_deadline(make_fetcher(max_redirects=10, **PATIENT), server.url("/slow-redirect/8"))
    assert len(connections) <= 3  # hop 4 would start at 1.2 s: none starts past the deadline


def test_deadline_ends_headers_dripped_a_byte_at_a_time(
    server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    fetch_past_deadline(make_fetcher(**PATIENT), server.url("/drip-headers"))


def test_deadline_ends_a_body_dripped_a_byte_at_a_time(
    server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    fetch_past_deadline(make_fetcher(**PATIENT), server.url("/drip"))


def test_deadline_covers_a_connection_reused_from_the_pool(
    server: Server, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    fetcher = make_fetcher(**PATIENT)
    assert fetcher.fetch(server.url("/image")).data == IMAGE
    fetch_past_deadline(fetcher, server.url("/drip-headers"))
    assert connections == [("127.0.0.1", server.port)]  # one socket: the second fetch reused it


def test_no_hop_starts_after_the_deadline(
    server: Server, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    with pytest.raises(PredictionError) as raised:
        make_fetcher().fetch(server.url("/image"), deadline=time.monotonic() - 1)
    assert_error(raised.value, ErrorCode.FETCH_TIMEOUT, transient=False)
    assert connections == []


def test_an_earlier_total_timeout_wins_over_a_later_deadline(
    server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    started = time.monotonic()
    fetcher = make_fetcher(total_timeout=0.8, **PATIENT)
    with pytest.raises(PredictionError) as raised:
        fetcher.fetch(server.url("/drip-headers"), deadline=started + 60)
    assert_error(raised.value, ErrorCode.FETCH_TIMEOUT, transient=False)
    assert "took over 0.8 s in all" in raised.value.message
    assert time.monotonic() - started < 0.8 + DEADLINE_SLACK


def test_a_socket_watched_after_the_deadline_fired_is_shut_at_once() -> None:
    deadline = _Deadline(time.monotonic() - 1, "too late")
    deadline.expire()
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(5)
        deadline.watch(left)
        assert left.recv(1) == b""  # shut: no wait for the 5 s timeout
    deadline.finish()


# -- connection failures ----------------------------------------------------------


def test_connection_refused(make_fetcher: Callable[..., Fetcher]) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed again before the fetch: nothing listens there
    error = fetch_error(make_fetcher(), f"http://127.0.0.1:{port}/")
    assert_error(error, ErrorCode.CONNECTION_ERROR, transient=True)


def test_connection_closed_without_response(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(), server.url("/reset"))
    assert_error(error, ErrorCode.CONNECTION_ERROR, transient=True)


def test_connection_reset_mid_body_is_transient(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(), server.url("/rst"))
    assert_error(error, ErrorCode.CONNECTION_ERROR, transient=True)


@pytest.mark.parametrize("name", [name for name in RAW_RESPONSES if not name.startswith("cut-")])
def test_malformed_responses_are_permanent_http_errors(
    name: str, server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    error = fetch_error(make_fetcher(), server.url(f"/raw/{name}"))
    assert_error(error, ErrorCode.HTTP_ERROR, transient=False)
    assert error.message.startswith("Malformed response from 127.0.0.1")


@pytest.mark.parametrize("name", [name for name in RAW_RESPONSES if name.startswith("cut-")])
def test_responses_cut_short_are_transient_connection_errors(
    name: str, server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    error = fetch_error(make_fetcher(), server.url(f"/raw/{name}"))
    assert_error(error, ErrorCode.CONNECTION_ERROR, transient=True)


# -- TLS: pinned to the checked IP, verified against the hostname --------------------


@dataclass(frozen=True)
class _Pki:
    ca_file: Path
    server_context: ssl.SSLContext


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> _Pki:
    """A throwaway CA and a server certificate for images.test."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "batchpredict test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    leaf_cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "images.test")]))
        .issuer_name(ca_name)
        .public_key(leaf_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName("images.test")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    folder = tmp_path_factory.mktemp("pki")
    ca_file = folder / "ca.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    chain_file = folder / "server.pem"
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    chain_file.write_bytes(leaf_cert.public_bytes(serialization.Encoding.PEM) + key_pem)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(chain_file)
    return _Pki(ca_file, context)


@pytest.fixture
def tls_server(pki: _Pki, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    # The fetcher loads the default trust store; point it at the test CA only.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)
    with _serving(pki.server_context) as running:
        yield running


def test_https_verifies_the_hostname_while_connecting_to_the_ip(
    tls_server: Server, make_fetcher: Callable[..., Fetcher], connections: list[Address]
) -> None:
    resolver = StaticResolver({"images.test": ["127.0.0.1"]})
    fetched = make_fetcher(resolver=resolver).fetch(tls_server.url("/echo-host", host="images.test"))
    assert fetched.data == f"images.test:{tls_server.port}".encode()
    assert tls_server.httpd.sni_names == ["images.test"]
    assert connections == [("127.0.0.1", tls_server.port)]


def test_https_certificate_for_another_name_is_refused(
    tls_server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    resolver = StaticResolver({"other.test": ["127.0.0.1"]})
    error = fetch_error(make_fetcher(resolver=resolver), tls_server.url("/image", host="other.test"))
    assert_error(error, ErrorCode.CONNECTION_ERROR, transient=False)
    assert "TLS" in error.message


# -- s3:// ------------------------------------------------------------------------


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    dummy_aws(monkeypatch)
    with mock_aws():
        client = boto3.client("s3", region_name="us-east-1")
        client.create_bucket(Bucket="images")
        client.put_object(Bucket="images", Key="cat.png", Body=IMAGE, ContentType="image/png")
        client.put_object(Bucket="images", Key="odd name?#1.png", Body=IMAGE)
        yield client


def test_s3_object_is_fetched(s3: Any, make_fetcher: Callable[..., Fetcher]) -> None:
    factory_calls: list[int] = []

    def factory() -> Any:
        factory_calls.append(1)
        return s3

    fetcher = make_fetcher(s3=factory)
    assert fetcher.fetch("s3://images/cat.png") == Fetched(IMAGE, "s3://images/cat.png")
    assert fetcher.fetch("s3://images/odd name?#1.png").data == IMAGE  # '?' and '#' belong to the key
    assert factory_calls == [1]  # one client, reused


@pytest.mark.parametrize("url", ["s3://images/missing.png", "s3://no-such-bucket/cat.png"])
def test_s3_missing_object(url: str, s3: Any, make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(s3=lambda: s3), url)
    assert_error(error, ErrorCode.S3_NOT_FOUND, transient=False)


def test_s3_object_over_the_limit(s3: Any, make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(s3=lambda: s3, max_bytes=100), "s3://images/cat.png")
    assert_error(error, ErrorCode.TOO_LARGE, transient=False)
    assert "100-byte limit" in error.message


class _FakeS3:
    def __init__(
        self,
        *,
        error: Exception | None = None,
        body: bytes = b"",
        length: int | None = None,
        stream: Any = None,
    ) -> None:
        self.error, self.body, self.length, self.stream = error, body, length, stream

    def get_object(self, Bucket: str, Key: str) -> dict[str, Any]:
        if self.error:
            raise self.error
        return {"Body": self.stream or io.BytesIO(self.body), "ContentLength": self.length}


def test_s3_body_longer_than_declared_is_cut_off(make_fetcher: Callable[..., Fetcher]) -> None:
    fake = _FakeS3(body=b"x" * 500, length=10)
    error = fetch_error(make_fetcher(s3=lambda: fake, max_bytes=100), "s3://images/cat.png")
    assert_error(error, ErrorCode.TOO_LARGE, transient=False)


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


@pytest.mark.parametrize(
    ("error", "code", "transient"),
    [
        (_client_error("AccessDenied", 403), ErrorCode.S3_ACCESS_DENIED, False),
        (_client_error("404", 404), ErrorCode.S3_NOT_FOUND, False),
        (_client_error("SlowDown", 503), ErrorCode.HTTP_ERROR, True),
        (_client_error("InternalError", 500), ErrorCode.HTTP_ERROR, True),
        (_client_error("InvalidRequest", 400), ErrorCode.HTTP_ERROR, False),
        (EndpointConnectionError(endpoint_url="https://s3.test"), ErrorCode.CONNECTION_ERROR, True),
    ],
)
def test_s3_errors(
    error: Exception, code: ErrorCode, transient: bool, make_fetcher: Callable[..., Fetcher]
) -> None:
    fake = _FakeS3(error=error)
    assert_error(fetch_error(make_fetcher(s3=lambda: fake), "s3://images/cat.png"), code, transient=transient)


@pytest.mark.parametrize(
    "url",
    [
        "s3://bad_bucket!/cat.png",
        "s3://bucket:443/cat.png",
        "s3://" + "b" * 300 + "/cat.png",
        "s3://arn:aws:s3:us-east-1:12345678901x:accesspoint:ap/cat.png",
        "s3://images/\ud800.png",
    ],
)
def test_s3_url_botocore_refuses_is_invalid(url: str, make_fetcher: Callable[..., Fetcher]) -> None:
    error = fetch_error(make_fetcher(s3=offline_s3), url)
    assert_error(error, ErrorCode.INVALID_URL, transient=False)


def test_default_s3_client_is_built_by_aws_client_with_the_fetch_timeouts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    dummy_aws(monkeypatch)
    built: list[Any] = []
    real_client = aws.client

    def spy(service: str, config: Any = None) -> Any:
        built.append(real_client(service, config=config))
        return built[-1]

    monkeypatch.setattr(aws, "client", spy)
    fetcher = Fetcher(replace(FAST, connect_timeout=1.5, read_timeout=2.5))
    try:
        error = fetch_error(fetcher, "s3://bad_bucket!/cat.png")  # refused before anything is sent
    finally:
        fetcher.close()
    assert_error(error, ErrorCode.INVALID_URL, transient=False)
    [client] = built
    config = client.meta.config
    assert (config.connect_timeout, config.read_timeout) == (1.5, 2.5)
    assert config.retries == {"mode": "standard", "total_max_attempts": 3}  # max_attempts=2 retries


class _DrippingBody:
    """A body without a socket to reach (like a fake or a future botocore): one byte a read."""

    def __init__(self) -> None:
        self.reads = 0

    def read(self, amt: int) -> bytes:
        self.reads += 1
        time.sleep(0.1)
        return b"x"

    def close(self) -> None:
        pass


def test_s3_body_read_stops_at_the_deadline(make_fetcher: Callable[..., Fetcher]) -> None:
    body = _DrippingBody()
    fake = _FakeS3(stream=body, length=1000)
    fetch_past_deadline(make_fetcher(s3=lambda: fake, **PATIENT), "s3://images/cat.png")
    assert body.reads < 20


def test_s3_body_dripped_from_a_real_socket_stops_at_the_deadline(
    server: Server, make_fetcher: Callable[..., Fetcher]
) -> None:
    # A real client against a loopback endpoint: the body's socket is watched like an HTTP one.
    session = boto3.session.Session(
        aws_access_key_id="testing", aws_secret_access_key="testing", region_name="us-east-1"
    )
    config = Config(read_timeout=10, connect_timeout=10, retries={"max_attempts": 1})
    client = session.client("s3", endpoint_url=f"http://127.0.0.1:{server.port}", config=config)
    fetch_past_deadline(make_fetcher(s3=lambda: client), "s3://s3drip/cat.png")


def test_s3_fetch_after_the_deadline_sends_nothing(make_fetcher: Callable[..., Fetcher]) -> None:
    fake = _FakeS3(error=AssertionError("no request may be sent past the deadline"))
    with pytest.raises(PredictionError) as raised:
        make_fetcher(s3=lambda: fake).fetch("s3://images/cat.png", deadline=time.monotonic() - 1)
    assert_error(raised.value, ErrorCode.FETCH_TIMEOUT, transient=False)


# -- allow-lists: one port of loopback, s3:// prefixes ------------------------------------------------


def test_a_port_entry_opens_that_port_only(server: Server, make_fetcher: Callable[..., Fetcher]) -> None:
    # The local stack: its samples server is reachable, moto and DynamoDB Local (other ports) not.
    with _serving() as other:
        fetcher = make_fetcher(allowed_networks=parse_networks(f"127.0.0.1:{server.port}"))
        assert fetcher.fetch(server.url("/image")).data == IMAGE
        error = fetch_error(fetcher, other.url("/image"))
        assert_error(error, ErrorCode.BLOCKED_ADDRESS, transient=False)
        redirected = fetch_error(fetcher, server.url(f"/redirect-to?url={other.url('/image')}"))
        assert redirected.code is ErrorCode.BLOCKED_ADDRESS  # no way around it through a redirect


def test_parse_s3_prefixes_forces_the_trailing_slash() -> None:
    assert parse_s3_prefixes("s3://photos/cats, s3://photos/dogs/ s3://whole-bucket") == (
        "s3://photos/cats/",
        "s3://photos/dogs/",
        "s3://whole-bucket/",
    )
    for bad in ("photos/cats/", "s3:///cats/", "s3://photos/*/", "https://photos/"):
        with pytest.raises(ValueError, match="not an s3://bucket/prefix/"):
            parse_s3_prefixes(bad)


class RefusingS3:
    """An S3 client that fails the test if asked anything."""

    def get_object(self, **kwargs: Any) -> Any:
        raise AssertionError(f"S3 was asked for {kwargs}")


@pytest.mark.parametrize(
    "url",
    [
        "s3://images/other/cat.png",  # another prefix of the same bucket
        "s3://images/cats-private/x.png",  # shares the prefix's letters, not its folder
        "s3://input-bucket/manifests/secret.jsonl",
        "s3://images/cats/../manifests/a.jsonl",
        "s3://images/cats/./x.png",
    ],
)
def test_s3_urls_outside_the_prefixes_are_refused_before_s3_is_asked(
    url: str, make_fetcher: Callable[..., Fetcher]
) -> None:
    fetcher = make_fetcher(s3=RefusingS3, s3_prefixes=parse_s3_prefixes("s3://images/cats"))
    error = fetch_error(fetcher, url)
    assert_error(error, ErrorCode.BLOCKED_ADDRESS, transient=False)
    assert "allowed: s3://images/cats/" in error.message


def test_s3_urls_under_a_prefix_are_fetched(s3: Any, make_fetcher: Callable[..., Fetcher]) -> None:
    s3.put_object(Bucket="images", Key="cats/tabby.png", Body=IMAGE)
    fetcher = make_fetcher(s3=lambda: s3, s3_prefixes=("s3://images/cats/",))
    assert fetcher.fetch("s3://images/cats/tabby.png").data == IMAGE
    assert fetch_error(fetcher, "s3://images/cats/absent.png").code is ErrorCode.S3_NOT_FOUND
    none = make_fetcher(s3=RefusingS3, s3_prefixes=())  # a function with no IMAGE_SOURCE_PREFIXES
    assert "allowed: none" in fetch_error(none, "s3://images/cats/tabby.png").message
