"""`batchpredict predict --stack NAME URL`: the predict API called with SigV4 from the standard
credential chain. A loopback server plays API Gateway's IAM authorizer: it recomputes the
signature with botocore from the signed headers it received, and refuses anything else."""

from __future__ import annotations

import http.server
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from click.testing import CliRunner

from batchpredict.cli import main
from batchpredict.cli.client import StackRef
from batchpredict.local.servers import LoopbackHTTPServer
from batchpredict.records import Prediction, ResultRecord, WorkItem

KEY_ID, SECRET, TOKEN = "AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY", "session-token"
REGION = "eu-west-3"
_AUTH = re.compile(r"AWS4-HMAC-SHA256 Credential=([^,]+), SignedHeaders=([^,]+), Signature=([0-9a-f]+)")


def _verdict(method: str, url: str, headers: dict[str, str], body: bytes) -> str | None:
    """None if the request carries a valid SigV4 signature for our credentials, else why not."""
    found = _AUTH.fullmatch(headers.get("authorization", ""))
    if not found:
        return "no SigV4 Authorization header"
    scope, signed, signature = found.groups()
    key_id, _, region, service, _ = scope.split("/")
    if (key_id, region, service) != (KEY_ID, REGION, "execute-api"):
        return f"wrong scope {scope}"
    if headers.get("x-amz-security-token") != TOKEN:
        return "the session token is missing"
    # Only the headers the client signed, exactly as received.
    request = AWSRequest(
        method=method, url=url, data=body, headers={h: headers[h] for h in signed.split(";")}
    )
    request.context["timestamp"] = headers["x-amz-date"]
    auth = SigV4Auth(Credentials(KEY_ID, SECRET, TOKEN), "execute-api", REGION)
    expected = auth.signature(auth.string_to_sign(request, auth.canonical_request(request)), request)
    return None if expected == signature else "signature does not match"


class FakeIamApi(LoopbackHTTPServer):
    """POST /predict {"urls": [...]}: a record per URL if the signature holds, 403 otherwise."""

    def __init__(self) -> None:
        outer = self
        self.calls: list[list[str]] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                headers = {k.lower(): v for k, v in self.headers.items()}
                url = f"http://{headers['host']}{self.path}"
                problem = _verdict("POST", url, headers, body)
                if problem is not None:
                    self._reply(403, {"message": problem})
                    return
                urls = json.loads(body)["urls"]
                outer.calls.append(urls)
                self._reply(200, {"results": [_record(u) for u in urls]})

            def _reply(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        super().__init__(Handler, name="fake-iam-api")


def _record(url: str) -> dict[str, Any]:
    """What predict_api answers for ``url`` (a record without a job); for a "junk" URL, an object
    that is not a result record."""
    item = WorkItem(index=0, url=url)
    if "missing" in url:
        return ResultRecord.failed(None, item, "http_error", "404").to_json()
    if "junk" in url:
        return {"url": url, "status": "SUCCEEDED"}
    prediction = Prediction(1, 967, "n07920052", "espresso", 0.9)
    return ResultRecord.for_item(None, item, model="m:1", predictions=(prediction,)).to_json()


@pytest.fixture
def api(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeIamApi]:
    server = FakeIamApi()
    url = server.start() + "/predict"
    # The standard chain: here, the environment (no profile, no config file).
    for name, value in {
        "AWS_ACCESS_KEY_ID": KEY_ID,
        "AWS_SECRET_ACCESS_KEY": SECRET,
        "AWS_SESSION_TOKEN": TOKEN,
        "AWS_DEFAULT_REGION": REGION,
        "AWS_CONFIG_FILE": "/nonexistent",
        "AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
    }.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    stacks: list[str] = []

    def from_cloudformation(name: str, cloudformation: Any = None) -> StackRef:
        stacks.append(name)
        return StackRef("in", "out", "table", api_url=url)

    monkeypatch.setattr(StackRef, "from_cloudformation", staticmethod(from_cloudformation))
    server.stacks = stacks  # type: ignore[attr-defined]
    yield server
    server.stop()


def test_predict_stack_signs_its_calls_and_prints_the_results(api: FakeIamApi) -> None:
    urls = [f"https://img.example/{i}.jpg" for i in range(9)] + ["https://img.example/missing.jpg"]

    result = CliRunner().invoke(main, ["predict", "--stack", "prod", "--output", "json", *urls])

    assert api.stacks == ["prod"]  # type: ignore[attr-defined]
    assert api.calls == [urls[:8], urls[8:]]  # 8 per request, predict_api's limit
    lines = [json.loads(line) for line in result.output.splitlines()]
    assert [line["source"] for line in lines] == urls
    assert lines[0]["predictions"][0]["label"] == "espresso"
    assert lines[-1]["error"]["code"] == "http_error"
    assert result.exit_code == 1  # one image failed


def test_a_wrong_secret_is_refused_by_the_verifier(api: FakeIamApi, monkeypatch: pytest.MonkeyPatch) -> None:
    # The verifier bites: the same call signed with another secret gets API Gateway's 403.
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")

    result = CliRunner().invoke(main, ["predict", "--stack", "prod", "https://img.example/a.jpg"])

    assert result.exit_code == 1
    assert "the predict API answered 403" in result.output and "signature does not match" in result.output
    assert api.calls == []


def test_an_answer_that_is_not_result_records_is_an_error(api: FakeIamApi) -> None:
    result = CliRunner().invoke(main, ["predict", "--stack", "prod", "https://img.example/junk.jpg"])

    assert result.exit_code == 1
    assert "the predict API answered something other than result records: KeyError('error')" in result.output


def test_files_are_refused_with_a_stack(api: FakeIamApi) -> None:
    result = CliRunner().invoke(main, ["predict", "--stack", "prod", "photo.jpg"])
    assert result.exit_code == 1 and "the API takes URLs, not files: photo.jpg" in result.output


def test_predict_stack_signs_with_the_profile_given(
    api: FakeIamApi, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    credentials = tmp_path / "credentials"
    credentials.write_text(
        f"[signer]\naws_access_key_id = {KEY_ID}\n"
        f"aws_secret_access_key = {SECRET}\naws_session_token = {TOKEN}\n"
    )
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(credentials))
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(name)

    args = [
        "predict",
        "--stack",
        "prod",
        "--profile",
        "signer",
        "--region",
        REGION,
        "https://img.example/a.jpg",
    ]
    result = CliRunner().invoke(main, args)

    assert result.exit_code == 0, result.output
    assert "espresso" in result.output
    assert api.calls == [["https://img.example/a.jpg"]]
