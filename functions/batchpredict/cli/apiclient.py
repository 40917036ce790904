"""Calls to a deployed stack's predict API (``ApiAuth`` AWS_IAM, the default), signed with
SigV4 by botocore's own signer from the standard credential chain (environment, profile,
SSO, instance role), as the AWS CLI signs its calls."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest

from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.predictor import Outcome
from batchpredict.records import ResultRecord

# predict_api's API_MAX_URLS default: URLs per request.
URLS_PER_REQUEST = 8
# API Gateway ends a request at 30 s; a little more, so its own answer (504) is what we see.
TIMEOUT_SECONDS = 35.0
_REGION_IN_HOST = re.compile(r"\.execute-api\.([a-z0-9-]+)\.amazonaws\.com")


class ApiError(Exception):
    """The API refused the call or answered with something other than results."""


def signed_request(api_url: str, body: bytes, session: boto3.session.Session) -> AWSRequest:
    """A POST of ``body`` to ``api_url`` with its SigV4 Authorization header."""
    credentials = session.get_credentials()
    if credentials is None:
        raise ApiError("no AWS credentials: configure them (aws configure, AWS_PROFILE) to call the API")
    found = _REGION_IN_HOST.search(api_url)
    region = found.group(1) if found else session.region_name
    if not region:
        raise ApiError(f"cannot tell the region of {api_url}: set AWS_REGION")
    request = AWSRequest(method="POST", url=api_url, data=body, headers={"Content-Type": "application/json"})
    SigV4Auth(credentials.get_frozen_credentials(), "execute-api", region).add_auth(request)
    return request


def predict_remote(
    api_url: str,
    urls: list[str],
    session: boto3.session.Session | None = None,
    *,
    ignore_robots: bool = False,
) -> list[ResultRecord]:
    """One result record per URL, in order, from the API at ``api_url``. ``ignore_robots``: the
    request's ``robots: ignore`` (the caller's own hosts)."""
    session = session or boto3.session.Session()
    records: list[ResultRecord] = []
    for start in range(0, len(urls), URLS_PER_REQUEST):
        request: dict[str, object] = {"urls": urls[start : start + URLS_PER_REQUEST]}
        if ignore_robots:
            request["robots"] = "ignore"
        body = json.dumps(request).encode()
        prepared = signed_request(api_url, body, session).prepare()
        call = urllib.request.Request(prepared.url, data=body, headers=dict(prepared.headers), method="POST")
        try:
            with urllib.request.urlopen(call, timeout=TIMEOUT_SECONDS) as response:
                answer = json.loads(response.read())
            records.extend(ResultRecord.from_json(record) for record in answer["results"])
        except (KeyError, TypeError, ValueError) as exc:  # ValueError: JSONDecodeError too
            raise ApiError(f"the predict API answered something other than result records: {exc!r}") from exc
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", errors="replace")[:300]
            raise ApiError(f"the predict API answered {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ApiError(f"cannot reach the predict API at {api_url}: {exc}") from exc
    return records


def outcome_of(record: ResultRecord, top_k: int) -> Outcome:
    """An API record as the local predictor's Outcome, so both print alike."""
    if record.error is not None:
        try:
            code = ErrorCode(record.error.code)
        except ValueError:  # a newer stack's code this client does not know yet
            code = ErrorCode.INTERNAL_ERROR
        return Outcome(error=PredictionError(code, record.error.message))
    return Outcome(list(record.predictions[:top_k]))
