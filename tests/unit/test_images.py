"""images.py: every mode to the right RGB, orientation, JPEG draft, size limits, broken bytes."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import ExifTags, Image, ImageFile, JpegImagePlugin

from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.images import DEFAULT_MAX_PIXELS, DecodedImage, Preprocess, decode_image, load_rgb

RED, BLUE, WHITE = (255, 0, 0), (0, 0, 255), (255, 255, 255)
SIZE = (40, 30)
# Identity normalisation: the tensor holds the plain 0..255 channel values.
RAW = Preprocess(resize_shorter=16, crop=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))


def encode(image: Image.Image, fmt: str, **params: Any) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def opened_mode(data: bytes) -> str:
    with Image.open(io.BytesIO(data)) as image:
        return image.mode


def solid_colour(data: bytes) -> npt.NDArray[np.float32]:
    """The one colour of a decoded solid image, as (R, G, B)."""
    tensor = decode_image(data, RAW).tensor
    assert np.ptp(tensor, axis=(1, 2)).max() <= 2, "expected a solid colour"
    return np.asarray(tensor.mean(axis=(1, 2)), dtype=np.float32)


def png_header(width: int, height: int) -> bytes:
    """A PNG that claims width x height but holds no pixels: cheap to build, costly to decode."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale
    signature = b"\x89PNG\r\n\x1a\n"
    return signature + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def paletted(mode: str, fill: int | tuple[int, int]) -> Image.Image:
    image = Image.new(mode, SIZE, fill)
    image.putpalette([0, 0, 0, 1, 1, 1, 2, 2, 2, 200, 10, 20])
    return image


def animated(fmt: str) -> bytes:
    first, second = Image.new("RGB", SIZE, RED), Image.new("RGB", SIZE, BLUE)
    params = {"lossless": True} if fmt == "WEBP" else {}
    return encode(first, fmt, save_all=True, append_images=[second], **params)


MID_GREY_16 = 128 * 257  # 32896: mid-grey on the 0..65535 scale

# id: (build the encoded bytes, mode Pillow opens them as, expected RGB, tolerance)
MODE_CASES: dict[str, tuple[Callable[[], bytes], str, tuple[int, int, int], float]] = {
    "1": (lambda: encode(Image.new("1", SIZE, 1), "PNG"), "1", WHITE, 0),
    "L": (lambda: encode(Image.new("L", SIZE, 100), "PNG"), "L", (100, 100, 100), 0),
    "LA-opaque": (lambda: encode(Image.new("LA", SIZE, (100, 255)), "PNG"), "LA", (100, 100, 100), 0),
    "LA-clear": (lambda: encode(Image.new("LA", SIZE, (100, 0)), "PNG"), "LA", WHITE, 0),
    "P": (lambda: encode(paletted("P", 3), "PNG"), "P", (200, 10, 20), 0),
    "P-transparency": (lambda: encode(paletted("P", 3), "PNG", transparency=3), "P", WHITE, 0),
    "PA-opaque": (lambda: encode(paletted("PA", (3, 255)), "TIFF"), "PA", (200, 10, 20), 0),
    "PA-clear": (lambda: encode(paletted("PA", (3, 0)), "TIFF"), "PA", WHITE, 0),
    "RGB-transparency": (
        lambda: encode(Image.new("RGB", SIZE, (10, 20, 30)), "PNG", transparency=(10, 20, 30)),
        "RGB",
        WHITE,
        0,
    ),
    "RGBA-opaque": (
        lambda: encode(Image.new("RGBA", SIZE, (10, 20, 30, 255)), "PNG"),
        "RGBA",
        (10, 20, 30),
        0,
    ),
    "RGBA-clear": (lambda: encode(Image.new("RGBA", SIZE, (10, 20, 30, 0)), "PNG"), "RGBA", WHITE, 0),
    # Half-transparent black over white is mid-grey (over black it would stay black).
    "RGBA-half": (lambda: encode(Image.new("RGBA", SIZE, (0, 0, 0, 128)), "PNG"), "RGBA", (127, 127, 127), 1),
    "CMYK-TIFF": (
        lambda: encode(Image.new("CMYK", SIZE, (0, 128, 255, 0)), "TIFF"),
        "CMYK",
        (255, 127, 0),
        0,
    ),
    "CMYK-JPEG": (
        lambda: encode(Image.new("CMYK", SIZE, (0, 255, 255, 0)), "JPEG", quality=95),
        "CMYK",
        RED,
        3,
    ),
    "YCbCr": (
        lambda: encode(Image.new("RGB", SIZE, (200, 100, 50)).convert("YCbCr"), "TIFF"),
        "YCbCr",
        (200, 100, 50),
        2,
    ),
    "I;16-mid-grey": (
        lambda: encode(Image.new("I;16", SIZE, MID_GREY_16), "PNG"),
        "I;16",
        (128, 128, 128),
        0,
    ),
    "I;16-white": (lambda: encode(Image.new("I;16", SIZE, 65535), "PNG"), "I;16", WHITE, 0),
    "I;16B": (lambda: encode(Image.new("I;16B", SIZE, MID_GREY_16), "TIFF"), "I;16B", (128, 128, 128), 0),
    "I": (lambda: encode(Image.new("I", SIZE, MID_GREY_16), "TIFF"), "I", (128, 128, 128), 0),
    "F": (lambda: encode(Image.new("F", SIZE, 100.4), "TIFF"), "F", (100, 100, 100), 0),
    "F-over-range": (lambda: encode(Image.new("F", SIZE, 300.0), "TIFF"), "F", WHITE, 0),
    "GIF-animated": (lambda: animated("GIF"), "P", RED, 0),
    "WEBP-animated": (lambda: animated("WEBP"), "RGB", RED, 0),
}


@pytest.mark.parametrize("case", MODE_CASES.values(), ids=MODE_CASES.keys())
def test_every_mode_becomes_the_expected_rgb(
    case: tuple[Callable[[], bytes], str, tuple[int, int, int], float],
) -> None:
    build, mode, expected, tolerance = case
    data = build()
    assert opened_mode(data) == mode  # the file really exercises that mode's conversion
    np.testing.assert_allclose(solid_colour(data), expected, atol=tolerance + 1e-4)
    assert load_rgb(data).mode == "RGB"


def test_output_shape_dtype_normalisation_and_metadata() -> None:
    data = encode(Image.new("RGB", (300, 400), (200, 100, 50)), "PNG")

    decoded = decode_image(data, Preprocess())

    assert isinstance(decoded, DecodedImage)
    assert decoded.tensor.shape == (3, 224, 224)
    assert decoded.tensor.dtype == np.float32
    assert decoded.tensor.flags.c_contiguous
    expected = (np.array([200, 100, 50], dtype=np.float32) - 127) / 128
    np.testing.assert_allclose(decoded.tensor[:, 100, 100], expected, atol=1e-6)
    assert (decoded.width, decoded.height, decoded.bytes) == (300, 400, len(data))


def test_bgr_reverses_channels_and_takes_mean_std_in_bgr_order() -> None:
    data = encode(Image.new("RGB", SIZE, (200, 100, 50)), "PNG")
    preprocess = Preprocess(
        resize_shorter=16, crop=16, mean=(10.0, 20.0, 30.0), std=(2.0, 4.0, 5.0), color="BGR"
    )

    tensor = decode_image(data, preprocess).tensor

    # channel 0 is blue (50), normalised with mean[0] / std[0]
    np.testing.assert_allclose(tensor[:, 0, 0], [(50 - 10) / 2, (100 - 20) / 4, (200 - 30) / 5], atol=1e-5)


def test_resize_shorter_side_then_centre_crop() -> None:
    # 400x100, red = x // 2 and green = y // 2, so halving with "nearest" makes both equal the new coordinate.
    xs, ys = np.meshgrid(np.arange(400), np.arange(100))
    pixels = np.stack([xs // 2, ys // 2, np.zeros_like(xs)], axis=-1).astype(np.uint8)
    data = encode(Image.fromarray(pixels), "PNG")
    preprocess = Preprocess(
        resize_shorter=50, crop=50, interpolation="nearest", mean=(0, 0, 0), std=(1, 1, 1)
    )

    tensor = decode_image(data, preprocess).tensor

    # resized to 200x50, cropped at left = (200 - 50) // 2 = 75, top = 0
    np.testing.assert_array_equal(tensor[0], np.broadcast_to(75 + np.arange(50), (50, 50)))
    np.testing.assert_array_equal(tensor[1], np.broadcast_to(np.arange(50)[:, None], (50, 50)))


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest", "lanczos"])
def test_every_interpolation_keeps_a_solid_colour(interpolation: str) -> None:
    data = encode(Image.new("RGB", (97, 61), (200, 100, 50)), "PNG")
    preprocess = Preprocess(
        resize_shorter=32, crop=24, interpolation=interpolation, mean=(0, 0, 0), std=(1, 1, 1)
    )

    tensor = decode_image(data, preprocess).tensor

    assert tensor.shape == (3, 24, 24)
    np.testing.assert_allclose(tensor.mean(axis=(1, 2)), [200, 100, 50], atol=1e-4)


@pytest.mark.parametrize(
    "params",
    [{"interpolation": "area"}, {"color": "RGBA"}, {"crop": 300}, {"crop": 0}, {"std": (1.0, 0.0, 1.0)}],
)
def test_preprocess_rejects_bad_settings(params: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        Preprocess(**params)


def test_exif_orientation_6_rotates_before_anything_else() -> None:
    # Stored 60x30, red left and blue right; orientation 6 = show rotated 90 degrees clockwise,
    # so the picture is 30x60 with red on top.
    stored = Image.new("RGB", (60, 30), RED)
    stored.paste(BLUE, (30, 0, 60, 30))
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    data = encode(stored, "JPEG", exif=exif, quality=95)

    image = load_rgb(data)
    assert image.size == (30, 60)
    pixels = np.asarray(image)
    np.testing.assert_allclose(pixels[10, 15], RED, atol=8)
    np.testing.assert_allclose(pixels[50, 15], BLUE, atol=8)

    decoded = decode_image(data, Preprocess(resize_shorter=30, crop=30, mean=(0, 0, 0), std=(1, 1, 1)))
    assert (decoded.width, decoded.height) == (30, 60)
    # crop rows 15..44 of the 30x60 picture: the top half red, the bottom half blue
    np.testing.assert_allclose(decoded.tensor[:, 5, 15], RED, atol=8)
    np.testing.assert_allclose(decoded.tensor[:, 25, 15], BLUE, atol=8)


@pytest.fixture(scope="module")
def big_jpeg() -> bytes:
    image = Image.new("RGB", (4000, 3000), RED)
    image.paste(BLUE, (2000, 0, 4000, 3000))
    return encode(image, "JPEG", quality=90)


@pytest.fixture
def draft_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str | None, tuple[int, int] | None]]:
    calls: list[tuple[str | None, tuple[int, int] | None]] = []
    original = JpegImagePlugin.JpegImageFile.draft

    def spy(self: JpegImagePlugin.JpegImageFile, mode: str | None, size: tuple[int, int] | None) -> Any:
        calls.append((mode, size))
        return original(self, mode, size)

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    return calls


def test_big_jpeg_is_drafted_and_still_correct(
    big_jpeg: bytes, draft_calls: list[tuple[str | None, tuple[int, int] | None]]
) -> None:
    decoded = decode_image(big_jpeg, Preprocess())

    assert len(draft_calls) == 1
    mode, size = draft_calls[0]
    assert mode == "RGB"
    assert size is not None
    assert min(size) >= 256
    assert (decoded.width, decoded.height) == (4000, 3000)  # the original size, not the draft's
    assert decoded.tensor.shape == (3, 224, 224)
    np.testing.assert_allclose(decoded.tensor[:, 112, 10], (np.array(RED) - 127) / 128, atol=0.05)
    np.testing.assert_allclose(decoded.tensor[:, 112, 210], (np.array(BLUE) - 127) / 128, atol=0.05)
    # libjpeg really decoded at 1/8 scale: 500x375, shorter side still >= 256
    assert load_rgb(big_jpeg, draft_to=256).size == (500, 375)


@pytest.mark.parametrize(
    "size", [(2048, 2048), (2047, 4000), (4000, 2047), (1023, 1100), (600, 257), (255, 900)]
)
def test_draft_never_undershoots_the_shorter_side(size: tuple[int, int]) -> None:
    data = encode(Image.new("RGB", size, RED), "JPEG")

    drafted = load_rgb(data, draft_to=256).size

    assert min(drafted) >= min(256, *size)
    assert drafted[0] / drafted[1] == pytest.approx(size[0] / size[1], rel=0.01)


def test_drafted_jpeg_reports_size_after_orientation() -> None:
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 8  # rotate 90 degrees counter-clockwise
    data = encode(Image.new("RGB", (2400, 1600), RED), "JPEG", exif=exif)

    decoded = decode_image(data, Preprocess())

    assert (decoded.width, decoded.height) == (1600, 2400)
    # drafted at 1/4 (600x400), then oriented
    assert load_rgb(data, draft_to=256).size == (400, 600)


def test_too_large_header_is_rejected_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    data = png_header(10_000, 6_000)  # 60 MP: over our 50 MP, under Pillow's own bomb limit

    with pytest.raises(PredictionError) as raised:
        decode_image(data, Preprocess())

    assert raised.value.code is ErrorCode.IMAGE_TOO_LARGE
    assert "10000x6000" in raised.value.message
    assert DEFAULT_MAX_PIXELS < 10_000 * 6_000


def test_max_pixels_is_inclusive() -> None:
    data = encode(Image.new("RGB", (100, 100), RED), "PNG")

    assert load_rgb(data, max_pixels=10_000).size == (100, 100)
    with pytest.raises(PredictionError) as raised:
        load_rgb(data, max_pixels=9_999)
    assert raised.value.code is ErrorCode.IMAGE_TOO_LARGE


def test_pillow_decompression_bomb_error_becomes_image_too_large() -> None:
    # 10^10 pixels: Pillow refuses it inside Image.open, even with our own limit raised.
    with pytest.raises(PredictionError) as raised:
        decode_image(png_header(100_000, 100_000), Preprocess(), max_pixels=10**12)
    assert raised.value.code is ErrorCode.IMAGE_TOO_LARGE


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")
def test_pillow_decompression_bomb_warning_as_error_becomes_image_too_large() -> None:
    with pytest.raises(PredictionError) as raised:
        decode_image(png_header(10_000, 10_000), Preprocess(), max_pixels=10**9)
    assert raised.value.code is ErrorCode.IMAGE_TOO_LARGE


def truncated_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    data = encode(Image.fromarray(pixels), "JPEG")
    return data[: len(data) // 2]


NOT_IMAGES = {
    "empty": (lambda: b"", "cannot identify image format"),
    "garbage": (lambda: bytes(range(256)) * 8, "cannot identify image format"),
    "text": (lambda: b"url,id\nhttps://example.com/cat.jpg,1\n", "cannot identify image format"),
    "truncated-jpeg": (truncated_jpeg, "image data is truncated or corrupt"),
    "corrupt-png": (
        lambda: encode(Image.new("RGB", SIZE, RED), "PNG").replace(b"IDAT", b"IDAT\xff\xff\xff\xff", 1),
        "image data is truncated or corrupt",
    ),
    # Pillow reads it, but PCX is not a format we accept from untrusted sources.
    "unsupported-format": (
        lambda: encode(Image.new("RGB", SIZE, RED), "PCX"),
        "cannot identify image format",
    ),
}


@pytest.mark.parametrize("case", NOT_IMAGES.values(), ids=NOT_IMAGES.keys())
def test_bytes_that_are_not_an_image(case: tuple[Callable[[], bytes], str]) -> None:
    build, message = case

    with pytest.raises(PredictionError) as raised:
        decode_image(build(), Preprocess())

    assert raised.value.code is ErrorCode.NOT_AN_IMAGE
    assert raised.value.message.startswith(message)
    assert not raised.value.transient


def test_a_thin_strip_is_not_blown_up_to_its_resized_whole() -> None:
    # 1x8000 pixels: resizing the whole strip to a shorter side of 256 would allocate
    # 256x2,048,000 RGB pixels (~1.5 GB). Only the crop's source box may be resized. The child
    # process runs under a 1 GiB address-space limit (maxrss would include this process's).
    import os
    import subprocess
    import sys

    code = (
        "import io, resource\n"
        "resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))\n"
        "from PIL import Image\n"
        "from batchpredict.images import Preprocess, decode_image\n"
        "buf = io.BytesIO(); Image.new('RGB', (1, 8000), (200, 10, 10)).save(buf, 'PNG')\n"
        "print(decode_image(buf.getvalue(), Preprocess()).tensor.shape)\n"
    )
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=False)
    assert done.returncode == 0, done.stderr[-500:]
    assert done.stdout.strip() == "(3, 224, 224)"
