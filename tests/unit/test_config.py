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
