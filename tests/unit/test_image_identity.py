"""Every result that has image info names the bytes (``image.sha256``) and their format
(``image.format``), issue 19: computed where the payload is decoded, carried into the record."""

from __future__ import annotations

import hashlib
import io

import numpy as np
import pytest
from PIL import Image

from batchpredict.batch import image_record
from batchpredict.images import Preprocess, decode_image
from batchpredict.pipeline import ImageDecoder
from batchpredict.records import ResultRecord, WorkItem
from tests.unit.fakes import ScriptedFetcher
from tests.unit.test_pipeline_stream import _run, _stream, _url

SMALL = Preprocess(resize_shorter=32, crop=32)


def _encoded(fmt: str, size: tuple[int, int] = (48, 40)) -> bytes:
    pixels = np.random.default_rng(7).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt)
    return out.getvalue()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"])
def test_decode_names_the_format_and_the_sha256_of_the_bytes(fmt: str) -> None:
    data = _encoded(fmt)

    decoded = decode_image(data, SMALL)

    assert decoded.format == fmt.lower()
    assert decoded.sha256 == hashlib.sha256(data).hexdigest()
    assert (decoded.width, decoded.height, decoded.bytes) == (48, 40, len(data))


def test_a_callers_digest_is_used_not_computed_again() -> None:
    data = _encoded("PNG")
    assert decode_image(data, SMALL, sha256="ab" * 32).sha256 == "ab" * 32


def test_the_stream_carries_them_into_every_record_with_image_info() -> None:
    payloads = {_url(0): _encoded("PNG"), _url(1): _encoded("JPEG", (64, 32)), _url(2): b"not an image"}
    fetcher = ScriptedFetcher({url: [data] for url, data in payloads.items()})
    predictor, _ = _stream(fetcher, decoder=ImageDecoder(SMALL, 1 << 24))  # type: ignore[arg-type]
    items = [WorkItem(i, _url(i)) for i in range(3)]

    done, _, unfinished = _run(predictor, [items])
    predictor.close()

    assert not unfinished
    lines = [image_record("job-1", result, "m:1").to_json() for result in done[0]]
    assert [line["image"] for line in lines] == [
        {
            "width": 48,
            "height": 40,
            "bytes": len(payloads[_url(0)]),
            "sha256": hashlib.sha256(payloads[_url(0)]).hexdigest(),
            "format": "png",
        },
        {
            "width": 64,
            "height": 32,
            "bytes": len(payloads[_url(1)]),
            "sha256": hashlib.sha256(payloads[_url(1)]).hexdigest(),
            "format": "jpeg",
        },
        None,  # not_an_image: no image info
    ]
    assert lines[2]["error"]["code"] == "not_an_image"
    assert ResultRecord.from_json(lines[1]).to_json() == lines[1]  # and read back the same
