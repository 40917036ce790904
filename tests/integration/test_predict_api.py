"""predict_api: API Gateway HTTP API (payload 2.0) events in, the same records out."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from batchpredict.handlers import predict_api
from batchpredict.local.lambda_shim import LocalContext
from tests.unit.test_robots import Answer, Host, host

__all__ = ["host"]  # the fixture


@pytest.fixture
def api(bundle_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("MODEL_URI", str(bundle_dir))
    monkeypatch.setenv("ALLOWED_NETWORKS", "127.0.0.0/8")
    monkeypatch.setenv("API_MAX_URLS", "3")
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    predict_api.service.cache_clear()
    yield
    predict_api.service.cache_clear()


def _call(
    method: str, query: dict[str, str] | None = None, body: Any = None, base64_encoded: bool = False
) -> tuple[int, dict[str, Any], dict]:
    event = {
        "version": "2.0",
        "routeKey": f"{method} /predict",
        "rawPath": "/predict",
        "rawQueryString": "&".join(f"{k}={v}" for k, v in (query or {}).items()),
        "queryStringParameters": query,
        "headers": {"origin": "https://example.com"},
        "requestContext": {
            "http": {"method": method, "path": "/predict", "sourceIp": "127.0.0.1"},
            "requestId": "r1",
            "stage": "$default",
        },
        "body": body if isinstance(body, str) or body is None else json.dumps(body),
        "isBase64Encoded": base64_encoded,
    }
    response = predict_api.lambda_handler(event, LocalContext("predict_api"))
    return response["statusCode"], json.loads(response["body"]), response.get("headers", {})


def test_get_predicts_one_image(api: None, image_server: str) -> None:
    status, body, headers = _call("GET", {"url": f"{image_server}/coffee.png"})
    assert status == 200
    assert body["status"] == "SUCCEEDED" and body["predictions"][0]["label"] == "espresso"
    assert set(body["predictions"][0]) == {"rank", "class_index", "wnid", "label", "probability"}
    assert body["model"] == "efficientnet-lite0:1" and body["image"]["width"] == 600
    assert headers.get("Access-Control-Allow-Origin") == "*"


def test_post_several_urls(api: None, image_server: str) -> None:
    status, body, _ = _call(
        "POST", body={"urls": [f"{image_server}/flower.jpg", f"{image_server}/missing.png"]}
    )
    assert status == 200
    first, second = body["results"]
    assert first["predictions"][0]["label"] == "daisy"
    assert second["status"] == "FAILED" and second["error"]["code"] == "http_error"


@pytest.mark.parametrize(
    ("method", "query", "body", "code"),
    [
        ("GET", None, None, "invalid_request"),
        ("GET", {"url": "ftp://example.com/a.jpg"}, None, "unsupported_scheme"),
        ("POST", None, "not json", "invalid_request"),
        ("POST", None, {"urls": "http://x/y.jpg"}, "invalid_request"),
        ("POST", None, {"urls": ["http://a/1.jpg"] * 4}, "invalid_request"),
    ],
)
def test_bad_input_is_400(api: None, method: str, query: Any, body: Any, code: str) -> None:
    status, response, _ = _call(method, query, body)
    assert status == 400 and response["error"]["code"] == code


def test_fidelity_is_a_query_field_for_get_and_a_body_field_for_post(api: None, image_server: str) -> None:
    url = f"{image_server}/coffee.png"
    status, body, _ = _call("GET", {"url": url, "fidelity": "fast"})
    assert status == 200 and body["fidelity"] == "fast" and body["predictions"][0]["label"] == "espresso"
    status, body, _ = _call("GET", {"url": url})
    assert status == 200 and body["fidelity"] == "exact"
    status, body, _ = _call("POST", body={"urls": [url, f"{image_server}/flower.jpg"], "fidelity": "fast"})
    assert status == 200 and [r["fidelity"] for r in body["results"]] == ["fast", "fast"]
    status, body, _ = _call("POST", body={"url": url, "fidelity": "exact"})
    assert status == 200 and body["fidelity"] == "exact"


@pytest.mark.parametrize(
    ("method", "query", "body"),
    [
        ("GET", {"url": "http://127.0.0.1/a.jpg", "fidelity": "slow"}, None),
        ("POST", None, {"url": "http://127.0.0.1/a.jpg", "fidelity": "slow"}),
        ("POST", None, {"urls": ["http://127.0.0.1/a.jpg"], "fidelity": 1}),
    ],
)
def test_a_bad_fidelity_is_400_naming_it(api: None, method: str, query: Any, body: Any) -> None:
    status, response, _ = _call(method, query, body)
    assert (status, response["error"]["code"]) == (400, "invalid_request")
    assert response["error"]["message"].startswith("fidelity")


DEEP = 100_000


@pytest.mark.parametrize(
    "body",
    [
        "[" * DEEP + "]" * DEEP,  # past the parser's recursion limit (was a 500: RecursionError)
        '{"url": ' * DEEP + '"x"' + "}" * DEEP,
        '{"url": "http://127.0.0.1/\\ud800.jpg"}',  # an escaped lone surrogate (was a 422)
        '{"urls": ["http://127.0.0.1/\ud800.jpg"]}',  # a raw one (was a 200 of FAILED records)
        '{"\\udfff": 1, "url": "http://127.0.0.1/a.jpg"}',  # in a key (was read past)
    ],
    ids=["deep-array", "deep-object", "escaped-surrogate", "raw-surrogate", "surrogate-key"],
)
def test_a_body_that_is_not_json_text_is_400(api: None, body: str) -> None:
    status, response, _ = _call("POST", body=body)
    assert (status, response["error"]["code"]) == (400, "invalid_request")
    assert "the body must be JSON" in response["error"]["message"]


def test_a_base64_body_is_decoded_before_it_is_read(api: None) -> None:
    """API Gateway sends a body it takes for binary base64-encoded: it is read as the JSON it
    encodes (was a 400 for any), and one that is not UTF-8 or not base64 is a 400."""
    encoded = base64.b64encode(b'{"url": "gopher://x/y.jpg"}').decode()
    status, response, _ = _call("POST", body=encoded, base64_encoded=True)
    assert (status, response["error"]["code"]) == (400, "unsupported_scheme")
    for body in (base64.b64encode(b'{"url": "\xff"}').decode(), "not base64!"):
        status, response, _ = _call("POST", body=body, base64_encoded=True)
        assert (status, response["error"]["code"]) == (400, "invalid_request")


def test_image_that_cannot_be_predicted_is_422(api: None, image_server: str) -> None:
    for url, code in [
        (f"{image_server}/notes.txt", "not_an_image"),
        ("http://169.254.169.254/", "blocked_address"),
    ]:
        status, body, _ = _call("POST", body={"url": url})
        assert status == 422 and body["error"]["code"] == code


def test_model_is_loaded_once_per_process(api: None, image_server: str) -> None:
    _call("GET", {"url": f"{image_server}/coffee.png"})
    engine = predict_api.service().predictor.engine
    _call("GET", {"url": f"{image_server}/flower.jpg"})
    assert predict_api.service().predictor.engine is engine


def test_local_http_endpoint_speaks_like_api_gateway(api: None, image_server: str) -> None:
    import urllib.error
    import urllib.parse
    import urllib.request

    from batchpredict.local.api_server import ApiServer

    server = ApiServer(predict_api.lambda_handler)
    base = server.start()
    try:
        query = urllib.parse.urlencode({"url": f"{image_server}/coffee.png"})
        # A browser sends Origin; Powertools answers it with the CORS header.
        get = urllib.request.Request(f"{base}/predict?{query}", headers={"Origin": "https://example.com"})
        with urllib.request.urlopen(get, timeout=30) as response:
            body = json.loads(response.read())
            assert response.status == 200 and response.headers["Access-Control-Allow-Origin"] == "*"
        assert body["predictions"][0]["label"] == "espresso"
        request = urllib.request.Request(
            f"{base}/predict",
            data=b'{"url": "gopher://x/y"}',
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        with pytest.raises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(request, timeout=30)
        assert caught.value.code == 400
        assert json.loads(caught.value.read())["error"]["code"] == "unsupported_scheme"
    finally:
        server.stop()


def test_s3_urls_are_refused_unless_the_api_lists_their_prefix(
    api: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No S3 client is ever built: the refusal comes first, so it says nothing about the object.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:9")  # nothing listens there
    status, body, _ = _call("GET", {"url": "s3://input-bucket/manifests/private.jsonl"})
    assert (status, body["error"]["code"]) == (422, "blocked_address")
    assert "allowed: none" in body["error"]["message"]
    monkeypatch.setenv("IMAGE_SOURCE_PREFIXES", "s3://photos/public/")
    predict_api.service.cache_clear()
    status, body, _ = _call("GET", {"url": "s3://photos/private/cat.jpg"})
    assert (status, body["error"]["code"]) == (422, "blocked_address")
    assert "allowed: s3://photos/public/" in body["error"]["message"]


@pytest.fixture
def noai_server(samples_dir: Path, host: Host) -> str:
    """coffee.png, answered with X-Robots-Tag: noai."""
    photo = (samples_dir / "coffee.png").read_bytes()
    host.answer("/coffee.png", Answer(body=photo, headers=[("X-Robots-Tag", "noai")]))
    return host.url("/coffee.png")


def test_robots_is_honoured_unless_the_caller_says_ignore(api: None, noai_server: str) -> None:
    status, body, _ = _call("GET", {"url": noai_server})
    assert (status, body["error"]["code"]) == (422, "robots_disallowed")
    status, body, _ = _call("GET", {"url": noai_server, "robots": "ignore"})
    assert status == 200 and body["predictions"][0]["label"] == "espresso"
    status, body, _ = _call("POST", body={"urls": [noai_server], "robots": "ignore"})
    assert status == 200 and body["results"][0]["status"] == "SUCCEEDED"
    status, body, _ = _call("POST", body={"url": noai_server, "robots": "honour"})
    assert (status, body["error"]["code"]) == (422, "robots_disallowed")
    status, body, _ = _call("POST", body={"url": noai_server, "robots": True})
    assert (status, body["error"]["code"]) == (400, "invalid_request")
    assert body["error"]["message"].startswith("robots")
