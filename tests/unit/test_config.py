import pytest

from batchpredict.config import ConfigError, engine_config


def test_missing_model_uri_names_the_variable() -> None:
    with pytest.raises(ConfigError, match="MODEL_URI is not set"):
        engine_config({})


def test_values_are_parsed_and_defaulted() -> None:
    config = engine_config({"MODEL_URI": "s3://models/lite0/", "MAX_BATCH": "16", "TOP_K": " 3 "})
    assert (config.model_uri, config.max_batch, config.top_k, config.threads) == (
        "s3://models/lite0/",
        16,
        3,
        None,
    )


@pytest.mark.parametrize(
    ("name", "value"), [("MAX_BATCH", "0"), ("MAX_BATCH", "many"), ("INFERENCE_THREADS", "-2")]
)
def test_malformed_values_are_refused_with_their_name(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=f"{name}='{value}' is invalid"):
        engine_config({"MODEL_URI": "/m", name: value})


def test_chunk_size_is_capped_so_a_chunk_fits_in_one_sqs_message() -> None:
    from batchpredict.config import split_config

    env = {
        "TABLE_NAME": "t",
        "OUTPUT_BUCKET": "b",
        "WORK_QUEUE_URL": "w",
        "MANIFEST_QUEUE_URL": "m",
        "FINALIZE_QUEUE_URL": "f",
        "EVENT_BUS_NAME": "e",
    }
    assert split_config(env | {"CHUNK_SIZE": "25"}).settings.chunk_size == 25
    with pytest.raises(ConfigError, match="CHUNK_SIZE='26' is invalid: at most 25"):
        split_config(env | {"CHUNK_SIZE": "26"})


def test_a_full_chunk_of_longest_non_ascii_lines_fits_in_one_sqs_message() -> None:
    from batchpredict.config import MAX_CHUNK_SIZE
    from batchpredict.manifest import MAX_LINE_BYTES, MAX_URL_LENGTH
    from batchpredict.messages import Chunk
    from batchpredict.records import WorkItem

    # Each line at the byte limit: a long URL and metadata of 2-byte UTF-8 characters.
    metadata = {"caption": "é" * ((MAX_LINE_BYTES - MAX_URL_LENGTH - 100) // 2)}
    items = [
        WorkItem(index=i, url="https://example.com/" + "a" * (MAX_URL_LENGTH - 20), metadata=metadata)
        for i in range(MAX_CHUNK_SIZE)
    ]
    assert len(Chunk("job-" + "0" * 20, 99999, items).body().encode()) < 256 * 1024


def test_a_missing_setting_fails_the_invocation_not_each_message(monkeypatch: pytest.MonkeyPatch) -> None:
    from batchpredict.handlers import split_manifest
    from batchpredict.local.lambda_shim import LocalContext

    for name in ("TABLE_NAME", "OUTPUT_BUCKET", "WORK_QUEUE_URL", "MANIFEST_QUEUE_URL", "FINALIZE_QUEUE_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    split_manifest.splitter.cache_clear()
    event = {
        "Records": [
            {
                "messageId": "m1",
                "receiptHandle": "r",
                "body": "{}",
                "attributes": {},
                "eventSource": "aws:sqs",
                "eventSourceARN": "arn:aws:sqs:us-east-1:1:q",
            }
        ]
    }
    with pytest.raises(ConfigError, match="TABLE_NAME is not set"):
        split_manifest.lambda_handler(event, LocalContext("split"))
    split_manifest.splitter.cache_clear()


def test_image_sources_and_allow_list_are_typed_and_closed_by_default() -> None:
    from batchpredict.config import fetch_limits

    closed = fetch_limits({})
    assert (closed.s3_prefixes, closed.allowed_networks) == ((), ())  # no s3:// image, no internal address
    limits = fetch_limits(
        {"IMAGE_SOURCE_PREFIXES": "s3://photos/cats,s3://more/", "ALLOWED_NETWORKS": "127.0.0.1:8123"}
    )
    assert limits.s3_prefixes == ("s3://photos/cats/", "s3://more/")
    assert [str(entry) for entry in limits.allowed_networks] == ["127.0.0.1:8123"]
    with pytest.raises(ConfigError, match="IMAGE_SOURCE_PREFIXES='photos/' is invalid"):
        fetch_limits({"IMAGE_SOURCE_PREFIXES": "photos/"})


def test_a_function_warns_at_start_when_its_allow_list_opens_more_than_one_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from batchpredict import wiring
    from batchpredict.config import fetch_limits

    for spec, warned in (("127.0.0.1:8123, 10.0.0.7", False), ("127.0.0.1:8123, 10.0.0.0/24", True)):
        caplog.clear()
        wiring.fetcher(fetch_limits({"ALLOWED_NETWORKS": spec})).close()
        assert ("more than one host" in caplog.text) is warned, spec
    (record,) = caplog.records
    assert record.networks == ["10.0.0.0/24"]  # type: ignore[attr-defined]
