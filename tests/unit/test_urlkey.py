"""URL normalisation for dedupe (urlkey.py): what makes two URLs one fetch, and what does not."""

from __future__ import annotations

import pytest

from batchpredict.urlkey import DIGEST_BYTES, url_digest, url_key


@pytest.mark.parametrize(
    ("url", "key"),
    [
        # scheme and host case
        ("HTTP://EXAMPLE.COM/a.jpg", "http://example.com/a.jpg"),
        ("hTTpS://Img.Example.Org/a.jpg", "https://img.example.org/a.jpg"),
        # default ports dropped, others kept (as a number)
        ("http://example.com:80/a.jpg", "http://example.com/a.jpg"),
        ("https://example.com:443/a.jpg", "https://example.com/a.jpg"),
        ("http://example.com:443/a.jpg", "http://example.com:443/a.jpg"),
        ("https://example.com:80/a.jpg", "https://example.com:80/a.jpg"),
        ("https://example.com:8443/a.jpg", "https://example.com:8443/a.jpg"),
        ("http://example.com:/a.jpg", "http://example.com/a.jpg"),  # an empty port is the default
        ("http://example.com:0080/a.jpg", "http://example.com/a.jpg"),
        ("http://example.com:08080/a.jpg", "http://example.com:8080/a.jpg"),
        # fragment dropped
        ("https://example.com/a.jpg#top", "https://example.com/a.jpg"),
        ("https://example.com/a.jpg?x=1#top", "https://example.com/a.jpg?x=1"),
        ("https://example.com/a.jpg#", "https://example.com/a.jpg"),
        # empty path -> /
        ("https://example.com", "https://example.com/"),
        ("https://example.com?x=1", "https://example.com/?x=1"),
        ("https://EXAMPLE.com:443#f", "https://example.com/"),
        # an empty query sends none (fetch.py): dropped
        ("https://example.com/a.jpg?", "https://example.com/a.jpg"),
        # path and query: case, order and escapes are significant, kept as written
        ("https://example.com/A.JPG", "https://example.com/A.JPG"),
        ("https://example.com/a.jpg?B=2&a=1", "https://example.com/a.jpg?B=2&a=1"),
        ("https://example.com/a%2fb.jpg", "https://example.com/a%2fb.jpg"),
        ("https://example.com/./a/../b.jpg", "https://example.com/./a/../b.jpg"),
        ("https://example.com//a.jpg", "https://example.com//a.jpg"),
        # userinfo kept as written (the host after it still lower-cased)
        ("https://User:PassWord@EXAMPLE.com/a.jpg", "https://User:PassWord@example.com/a.jpg"),
        ("https://a@b@EXAMPLE.com/a.jpg", "https://a@b@example.com/a.jpg"),
        # IPv6 literals lower-cased, brackets kept, not compressed
        ("http://[2001:DB8::1]/a.jpg", "http://[2001:db8::1]/a.jpg"),
        ("http://[2001:DB8::1]:80/a.jpg", "http://[2001:db8::1]/a.jpg"),
        ("http://[2001:0DB8:0:0::1]:8080/a.jpg", "http://[2001:0db8:0:0::1]:8080/a.jpg"),
        # IDN: lower-cased, not converted to xn--
        ("https://BÜCHER.example/a.jpg", "https://bücher.example/a.jpg"),
        ("https://xn--bcher-kva.example/a.jpg", "https://xn--bcher-kva.example/a.jpg"),
        # a trailing dot in the host stays
        ("https://example.com./a.jpg", "https://example.com./a.jpg"),
        # s3: the scheme only; bucket and key as they are, '?' and '#' part of the key
        ("S3://Bucket/Photos/A.jpg", "s3://Bucket/Photos/A.jpg"),
        ("s3://bucket/key#with-hash?and=query", "s3://bucket/key#with-hash?and=query"),
        ("s3://bucket/", "s3://bucket/"),
        # what does not parse, or has another scheme, keeps its raw text
        ("http://[::1/a.jpg", "http://[::1/a.jpg"),
        ("http://example.com:99999/a.jpg", "http://example.com:99999/a.jpg"),
        ("http://example.com:abc/a.jpg", "http://example.com:abc/a.jpg"),
        ("FTP://Example.com/a.jpg", "FTP://Example.com/a.jpg"),
        ("example.com/a.jpg", "example.com/a.jpg"),
        ("http:///a.jpg", "http:///a.jpg"),
        ("", ""),
    ],
)
def test_url_key(url: str, key: str) -> None:
    assert url_key(url) == key
    assert url_key(key) == key  # idempotent


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("HTTP://Example.COM:80/x.jpg#a", "http://example.com/x.jpg"),
        ("https://example.com:443", "https://EXAMPLE.com/#frag"),
        ("http://[2001:db8::1]:80/x", "http://[2001:DB8::1]/x"),
    ],
)
def test_one_fetch_one_digest(a: str, b: str) -> None:
    assert url_digest(a) == url_digest(b)
    assert len(url_digest(a)) == DIGEST_BYTES


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("https://example.com/a.jpg", "https://example.com/A.jpg"),
        ("https://example.com/a.jpg?x=1&y=2", "https://example.com/a.jpg?y=2&x=1"),
        ("http://example.com/a.jpg", "https://example.com/a.jpg"),
        ("https://example.com:8443/a.jpg", "https://example.com/a.jpg"),
        ("https://u@example.com/a.jpg", "https://example.com/a.jpg"),
        ("s3://bucket/a#1", "s3://bucket/a#2"),
        ("https://bücher.example/a.jpg", "https://xn--bcher-kva.example/a.jpg"),
    ],
)
def test_different_keys(a: str, b: str) -> None:
    assert url_digest(a) != url_digest(b)


def test_a_lone_surrogate_still_has_a_digest() -> None:
    # UTF-8 cannot carry it (split refuses such lines), but the digest must not raise.
    assert len(url_digest("https://example.com/\ud800.jpg")) == DIGEST_BYTES
