"""predict_api: the original post's synchronous endpoint behind an HTTP API.

``GET /predict?url=…`` or ``POST /predict {"url": …}`` returns that image's record;
``POST {"urls": [...]}`` (up to API_MAX_URLS) returns ``{"results": [...]}``. ``fidelity``
(``exact``, the default, or ``fast``: a query field for GET, a body field for POST) chooses the
decode as a job's x-amz-meta-fidelity does; ``robots`` (``honour``, the default, or ``ignore``,
for the caller's own hosts) as a job's x-amz-meta-robots. 400 for bad input, 422 for a single image that
cannot be predicted. Same engine and fetch guard as the batch path; the model is loaded once
per process, not on every request.
"""

from __future__ import annotations

import base64
import json
import os
import time
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, CORSConfig, Response, content_types
from aws_lambda_powertools.utilities.typing import LambdaContext

from batchpredict import wiring
from batchpredict.batch import predict_urls
from batchpredict.config import api_config
from batchpredict.fidelity import DEFAULT_FIDELITY, Fidelity
from batchpredict.manifest import check_url
from batchpredict.observability import logger, metrics, tracer
from batchpredict.options import ROBOTS_IGNORE, OptionError, parse_fidelity, parse_robots
from batchpredict.pipeline import StreamingPredictor
from batchpredict.records import SUCCEEDED

app = APIGatewayHttpResolver(cors=CORSConfig(allow_origin="*"))


@dataclass(frozen=True)
class Service:
    predictor: StreamingPredictor
    max_urls: int
    reply_reserve_seconds: float


@cache
def service() -> Service:
    config = api_config(os.environ)
    return Service(wiring.url_predictor(config), config.max_urls, config.reply_reserve_seconds)


def _json(status: int, body: dict[str, Any]) -> Response[str]:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body))


def _bad_request(code: str, message: str) -> Response[str]:
    return _json(400, {"error": {"code": code, "message": message}})


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _body_json(body: str | None, base64_encoded: bool) -> Any:
    """The request body's JSON value; ValueError for a body that is not JSON text, whatever the
    reason: bad base64 (API Gateway sends a binary body so), bytes that are not UTF-8, a syntax
    error, NaN or Infinity, a number too long to read, nesting past the parser's recursion limit,
    or a lone surrogate (raw, or escaped as \\ud800), which no UTF-8 text can carry."""
    try:
        text = base64.b64decode(body or "", validate=True).decode() if base64_encoded else body or ""
        value = json.loads(text, parse_constant=_no_constant)
        json.dumps(value, ensure_ascii=False).encode()  # UnicodeEncodeError on a lone surrogate
    except RecursionError as exc:
        raise ValueError("nested too deeply") from exc
    return value


def _predict(urls: list[str], single: bool, fidelity: object = None, robots: object = None) -> Response[str]:
    svc = service()
    try:
        chosen = DEFAULT_FIDELITY if fidelity is None else _fidelity(fidelity)
        ignore_robots = robots is not None and _robots(robots) == ROBOTS_IGNORE
    except OptionError as exc:
        return _bad_request("invalid_request", str(exc))
    if not urls:
        return _bad_request("invalid_request", 'give an image URL: ?url=… or a JSON body {"url": …}')
    if len(urls) > svc.max_urls:
        return _bad_request("invalid_request", f"at most {svc.max_urls} URLs per request, got {len(urls)}")
    for url in urls:
        if not isinstance(url, str):
            return _bad_request("invalid_request", "every url must be a string")
        problem = check_url(url)
        if problem is not None:
            return _bad_request(problem[0].value, problem[1])
    # The batch path's stream: same fetch guard, decoders, engine and records.
    remaining = app.lambda_context.get_remaining_time_in_millis() / 1000
    deadline = time.monotonic() + remaining - svc.reply_reserve_seconds
    records = predict_urls(svc.predictor, urls, deadline, chosen, honour_robots=not ignore_robots)
    if single:
        return _json(200 if records[0].status == SUCCEEDED else 422, records[0].to_json())
    return _json(200, {"results": [record.to_json() for record in records]})


def _fidelity(value: object) -> Fidelity:
    if not isinstance(value, str):
        raise OptionError(f"fidelity: give one of {', '.join(f.value for f in Fidelity)} as a string")
    return parse_fidelity(value)


def _robots(value: object) -> str | None:
    if not isinstance(value, str):
        raise OptionError("robots: give honour or ignore as a string")
    return parse_robots(value)


@app.get("/predict")
def predict_get() -> Response[str]:
    event = app.current_event
    url = event.get_query_string_value(name="url", default_value="") or ""
    query = event.get_query_string_value
    return _predict(
        [url] if url else [], single=True, fidelity=query(name="fidelity"), robots=query(name="robots")
    )


@app.post("/predict")
def predict_post() -> Response[str]:
    event = app.current_event
    try:
        body = _body_json(event.body, bool(event.is_base64_encoded))
    except ValueError:
        return _bad_request("invalid_request", 'the body must be JSON: {"url": …} or {"urls": [...]}')
    if not isinstance(body, dict):
        return _bad_request("invalid_request", "the body must be a JSON object")
    if "urls" in body:
        urls = body["urls"]
        if not isinstance(urls, list):
            return _bad_request("invalid_request", '"urls" must be a list')
        return _predict(urls, single=False, fidelity=body.get("fidelity"), robots=body.get("robots"))
    url = [body["url"]] if body.get("url") else []
    return _predict(url, single=True, fidelity=body.get("fidelity"), robots=body.get("robots"))


@logger.inject_lambda_context(clear_state=True)
@tracer.capture_lambda_handler
@metrics.log_metrics(capture_cold_start_metric=True)
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
