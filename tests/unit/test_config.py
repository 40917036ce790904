import pytest

from batchpredict import __version__
from batchpredict.config import ConfigError, engine_config
from batchpredict.useragent import PLACEHOLDER_CONTACT_URL


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


SPLIT_ENV = {
    "TABLE_NAME": "t",
    "OUTPUT_BUCKET": "b",
    "WORK_QUEUE_URL": "w",
    "MANIFEST_QUEUE_URL": "m",
    "FINALIZE_QUEUE_URL": "f",
    "EVENT_BUS_NAME": "e",
}


def test_chunk_size_is_capped_so_a_chunk_fits_in_one_sqs_message() -> None:
    from batchpredict.config import split_config

    assert split_config(SPLIT_ENV | {"CHUNK_SIZE": "25"}).settings.chunk_size == 25
    with pytest.raises(ConfigError, match="CHUNK_SIZE='26' is invalid: at most 25"):
        split_config(SPLIT_ENV | {"CHUNK_SIZE": "26"})


def test_dedupe_max_urls_caps_the_splits_map_of_first_lines() -> None:
    from batchpredict.config import split_config

    assert split_config(SPLIT_ENV).settings.dedupe_max_urls == 500_000
    assert split_config(SPLIT_ENV | {"DEDUPE_MAX_URLS": "0"}).settings.dedupe_max_urls == 0  # off
    with pytest.raises(ConfigError, match="DEDUPE_MAX_URLS='-1' is invalid"):
        split_config(SPLIT_ENV | {"DEDUPE_MAX_URLS": "-1"})


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
        {"IMAGE_SOURCE_PREFIXES": "s3://photos/cats,s3://more/dogs/", "ALLOWED_NETWORKS": "127.0.0.1:8123"}
    )
    assert limits.s3_prefixes == ("s3://photos/cats/", "s3://more/dogs/")
    assert [str(entry) for entry in limits.allowed_networks] == ["127.0.0.1:8123"]
    with pytest.raises(ConfigError, match="IMAGE_SOURCE_PREFIXES='photos/' is invalid"):
        fetch_limits({"IMAGE_SOURCE_PREFIXES": "photos/"})


@pytest.mark.parametrize(
    "spec",
    [
        "s3://photos",
        "s3://photos/",
        "s3://photos//",
        "s3://photos/cats/,s3://more/",
        "s3://photos/cats/ s3://a/b/ s3://c/d/ s3://whole",
    ],
)
def test_an_image_source_that_opens_a_whole_bucket_is_refused(spec: str) -> None:
    from batchpredict.config import fetch_limits

    with pytest.raises(ConfigError, match=r"IMAGE_SOURCE_PREFIXES=.* opens the whole bucket"):
        fetch_limits({"IMAGE_SOURCE_PREFIXES": spec})


@pytest.mark.parametrize("uri", ["s3://models", "s3://models/", "s3://models//", "s3:///lite0/"])
def test_a_model_uri_of_a_whole_bucket_is_refused(uri: str) -> None:
    with pytest.raises(
        ConfigError, match=r"MODEL_URI=.* is invalid: give s3://bucket/prefix/ with a non-empty"
    ):
        engine_config({"MODEL_URI": uri})
    # a prefix, with or without its slash (the bundle loader adds it), and a folder are fine
    for good in ("s3://models/lite0", "s3://models/lite0/", "/opt/model", "build/model/lite0"):
        assert engine_config({"MODEL_URI": good}).model_uri == good


def test_top_k_is_capped_where_a_row_stays_small() -> None:
    from batchpredict.options import MAX_TOP_K

    assert engine_config({"MODEL_URI": "/m", "TOP_K": str(MAX_TOP_K)}).top_k == MAX_TOP_K == 20
    with pytest.raises(ConfigError, match="TOP_K='21' is invalid: at most 20"):
        engine_config({"MODEL_URI": "/m", "TOP_K": "21"})


def test_a_function_warns_at_start_when_its_allow_list_opens_more_than_one_host(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from batchpredict import wiring
    from batchpredict.config import fetch_limits

    for spec, warned in (("127.0.0.1:8123, 10.0.0.7", False), ("127.0.0.1:8123, 10.0.0.0/24", True)):
        caplog.clear()
        env = {"ALLOWED_NETWORKS": spec, "CONTACT_URL": "https://example.org/bot"}
        wiring.fetcher(fetch_limits(env)).close()
        assert ("more than one host" in caplog.text) is warned, spec
    (record,) = caplog.records
    assert record.networks == ["10.0.0.0/24"]  # type: ignore[attr-defined]


def test_a_function_warns_at_start_while_its_user_agent_names_no_contact(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from batchpredict import wiring
    from batchpredict.config import fetch_limits

    wiring.fetcher(fetch_limits({})).close()
    (record,) = caplog.records
    assert "names no contact" in record.getMessage()
    assert record.user_agent == f"batchpredict/{__version__} (+{PLACEHOLDER_CONTACT_URL})"  # type: ignore[attr-defined]
    caplog.clear()
    wiring.fetcher(fetch_limits({"USER_AGENT": "acmebot/2.1 (+https://acme.test/bot)"})).close()
    assert not caplog.records


@pytest.mark.parametrize(
    ("env", "user_agent"),
    [
        ({}, f"batchpredict/{__version__} (+https://github.com/OPERATOR/batchpredict)"),
        (
            {"CONTACT_URL": "https://example.org/bot"},
            f"batchpredict/{__version__} (+https://example.org/bot)",
        ),
        ({"CONTACT_URL": "https://example.org/bot", "USER_AGENT": "acmebot/2.1"}, "acmebot/2.1"),
        ({"USER_AGENT": "  acmebot  "}, "acmebot"),  # trimmed, as every setting
    ],
)
def test_the_user_agent_is_the_stacks_or_names_its_contact(env: dict[str, str], user_agent: str) -> None:
    from batchpredict.config import fetch_limits

    assert fetch_limits(env).user_agent == user_agent


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"USER_AGENT": "acmebot/2.1 \u00e9"}, "USER_AGENT=.* is invalid: printable ASCII"),
        ({"USER_AGENT": "acmebot/2.1\r\nX-Evil: 1"}, "USER_AGENT=.* is invalid: printable ASCII"),
        ({"USER_AGENT": "(acmebot)"}, "USER_AGENT=.* is invalid: printable ASCII starting with a product"),
        ({"USER_AGENT": "a" * 257}, "USER_AGENT=.* is invalid: at most 256 characters, got 257"),
        ({"CONTACT_URL": "mailto:bot@example.org"}, "CONTACT_URL=.* is invalid: an http"),
        ({"CONTACT_URL": "https://example.org/" + "a" * 200}, "CONTACT_URL=.* is invalid: an http"),
        ({"ROBOTS_TXT": "yes"}, "ROBOTS_TXT='yes' is invalid: give on or off"),
    ],
)
def test_a_bad_identity_setting_fails_at_start_naming_it(env: dict[str, str], message: str) -> None:
    from batchpredict.config import fetch_limits

    with pytest.raises(ConfigError, match=message):
        fetch_limits(env)


def test_robots_txt_is_off_unless_turned_on() -> None:
    from batchpredict.config import fetch_limits

    assert fetch_limits({}).robots_txt is False
    assert fetch_limits({"ROBOTS_TXT": "off"}).robots_txt is False
    assert fetch_limits({"ROBOTS_TXT": "ON"}).robots_txt is True
