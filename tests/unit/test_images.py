"""images.py: every mode to the right RGB, orientation, JPEGs decoded in full, the resize and crop
of the reference preprocessing bit for bit, size limits, broken bytes, the scan-count guard, the
decode deadline, and the memory estimate against measured peaks."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from PIL import ExifTags, Image, ImageFile, ImageOps, JpegImagePlugin

from batchpredict import images
from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.fidelity import Fidelity
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


@pytest.fixture
def resized_sizes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """The size of each picture decode_image hands to the resize."""
    sizes: list[tuple[int, int]] = []
    original = images._resize_and_crop

    def spy(image: Image.Image, preprocess: Preprocess, reducing_gap: float | None = None) -> Image.Image:
        sizes.append(image.size)
        return original(image, preprocess, reducing_gap)

    monkeypatch.setattr(images, "_resize_and_crop", spy)
    return sizes


def test_a_big_jpeg_is_decoded_in_full(
    big_jpeg: bytes,
    draft_calls: list[tuple[str | None, tuple[int, int] | None]],
    resized_sizes: list[tuple[int, int]],
) -> None:
    decoded = decode_image(big_jpeg, Preprocess())

    assert draft_calls == []
    assert resized_sizes == [(4000, 3000)]
    assert (decoded.width, decoded.height) == (4000, 3000)
    assert decoded.tensor.shape == (3, 224, 224)
    np.testing.assert_allclose(decoded.tensor[:, 112, 10], (np.array(RED) - 127) / 128, atol=0.05)
    np.testing.assert_allclose(decoded.tensor[:, 112, 210], (np.array(BLUE) - 127) / 128, atol=0.05)


@pytest.mark.parametrize(
    ("resize_shorter", "size"),
    [(256, (8000, 6000)), (256, (2048, 2048)), (128, (4096, 4100)), (320, (5200, 2600)), (256, (700, 500))],
)
@pytest.mark.parametrize("progressive", [False, True])
def test_decode_image_never_drafts_a_jpeg(
    resized_sizes: list[tuple[int, int]], resize_shorter: int, size: tuple[int, int], progressive: bool
) -> None:
    # A draft at any scale moves probabilities and reorders near ties
    # (tests/unit/test_decode_fidelity.py).
    data = encode(Image.new("RGB", size, RED), "JPEG", quality=50, progressive=progressive)

    decode_image(data, Preprocess(resize_shorter=resize_shorter, crop=resize_shorter))

    assert resized_sizes == [size]


@pytest.mark.parametrize(
    ("resize_shorter", "size", "drafted"),
    [
        (256, (8000, 6000), (2000, 1500)),  # 1/4: the largest scale that keeps >= 768
        (256, (2048, 2048), (1024, 1024)),
        (128, (4096, 4100), (512, 513)),  # 1/8 keeps >= 384
        (320, (5200, 2600), (2600, 1300)),
        (256, (1535, 3000), (1535, 3000)),  # half of it would be under 768: not drafted
    ],
)
def test_fidelity_fast_drafts_a_jpeg_down_to_three_times_the_resize_target(
    resized_sizes: list[tuple[int, int]], resize_shorter: int, size: tuple[int, int], drafted: tuple[int, int]
) -> None:
    data = encode(Image.new("RGB", size, RED), "JPEG", quality=50)

    decoded = decode_image(data, Preprocess(resize_shorter, resize_shorter), fidelity=Fidelity.FAST)

    assert resized_sizes == [drafted]
    assert (decoded.width, decoded.height) == size


def test_load_rgb_still_drafts_for_thumbnails(big_jpeg: bytes) -> None:
    # report.py's thumbnails: libjpeg decodes at 1/8 scale when asked, shorter side still >= 256.
    assert load_rgb(big_jpeg, draft_to=256).size == (500, 375)
    assert load_rgb(big_jpeg).size == (4000, 3000)


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
    # load_rgb's draft (thumbnails): 1/4 (600x400), then oriented
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


# --- Same pixels as the plain conversion --------------------------------------------------------

REFERENCE_DEEP = {"I;16": 257.0, "I;16B": 257.0, "I": 257.0, "F": 1.0}


def resized_then_cropped(image: Image.Image, preprocess: Preprocess) -> Image.Image:
    """The reference resize: the whole picture, shorter side to resize_shorter (Pillow's
    ImageOps.cover and its rounding), then the centre crop."""
    target, crop = preprocess.resize_shorter, preprocess.crop
    resized = ImageOps.cover(image, (target, target), images._RESAMPLING[preprocess.interpolation])
    left, top = (resized.width - crop) // 2, (resized.height - crop) // 2
    return resized.crop((left, top, left + crop, top + crop))


def reference_tensor(data: bytes, preprocess: Preprocess) -> npt.NDArray[np.float32]:
    """decode_image the plain way: whole-image conversions to RGB first, then resize the whole
    and crop, then normalise. decode_image saves memory (strips, grey kept grey, in-place float)
    but must give these very bits."""
    with Image.open(io.BytesIO(data)) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)
    if image.mode in REFERENCE_DEEP:
        values = np.asarray(image, dtype=np.float32) / REFERENCE_DEEP[image.mode]
        grey = np.rint(np.clip(np.nan_to_num(values), 0, 255)).astype(np.uint8)
        rgb = Image.fromarray(grey).convert("RGB")
    elif "A" in image.getbands() or "a" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", image.size, WHITE)
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    else:
        rgb = image.convert("RGB")
    rgb = resized_then_cropped(rgb, preprocess)
    pixels = np.asarray(rgb, dtype=np.float32)
    if preprocess.color == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(preprocess.mean, dtype=np.float32)
    std = np.asarray(preprocess.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


NOISE_SIZE = (97, 61)


def noise(channels: int, dtype: type = np.uint8, high: int = 256, seed: int = 0) -> npt.NDArray[Any]:
    shape = (NOISE_SIZE[1], NOISE_SIZE[0], channels) if channels > 1 else (NOISE_SIZE[1], NOISE_SIZE[0])
    return np.random.default_rng(seed).integers(0, high, shape).astype(dtype)


def noisy_palette(mode: str) -> Image.Image:
    """Random indices into a random 8-colour palette; "PA" adds a random alpha band."""
    indices = Image.frombytes("L", NOISE_SIZE, noise(1, high=8).tobytes())
    if mode == "PA":
        image = Image.merge("PA", (indices, Image.frombytes("L", NOISE_SIZE, noise(1, seed=1).tobytes())))
    else:
        image = Image.frombytes("P", NOISE_SIZE, indices.tobytes())
    image.putpalette(np.random.default_rng(2).integers(0, 256, 8 * 3).tolist())
    return image


def float_noise() -> Image.Image:
    values = np.random.default_rng(3).uniform(-50, 300, (NOISE_SIZE[1], NOISE_SIZE[0])).astype(np.float32)
    values[0, :3] = [np.nan, np.inf, -np.inf]
    return Image.fromarray(values, "F")


EXIF_6 = Image.Exif()
EXIF_6[ExifTags.Base.Orientation] = 6

NOISE_CASES: dict[str, Callable[[], bytes]] = {
    "1": lambda: encode(Image.fromarray(noise(1, high=2).astype(bool)), "PNG"),
    "L": lambda: encode(Image.fromarray(noise(1)), "PNG"),
    "L-transparency": lambda: encode(Image.fromarray(noise(1)), "PNG", transparency=7),
    "LA": lambda: encode(Image.fromarray(noise(2), "LA"), "PNG"),
    "P": lambda: encode(noisy_palette("P"), "PNG"),
    "P-transparency": lambda: encode(noisy_palette("P"), "PNG", transparency=3),
    "P-alpha-palette": lambda: encode(noisy_palette("P"), "PNG", transparency=bytes(range(0, 256, 32))),
    "PA": lambda: encode(noisy_palette("PA"), "TIFF"),
    "RGB": lambda: encode(Image.fromarray(noise(3)), "PNG"),
    "RGB-transparency": lambda: encode(
        Image.fromarray(noise(3, high=2) * 255), "PNG", transparency=(0, 0, 0)
    ),
    "RGBA": lambda: encode(Image.fromarray(noise(4), "RGBA"), "PNG"),
    "RGBA-exif-6": lambda: encode(Image.fromarray(noise(4), "RGBA"), "PNG", exif=EXIF_6),
    "CMYK": lambda: encode(Image.fromarray(noise(4), "CMYK"), "TIFF"),
    "YCbCr": lambda: encode(Image.fromarray(noise(3), "YCbCr"), "TIFF"),
    "I;16": lambda: encode(Image.fromarray(noise(1, np.uint16, 65536)), "PNG"),
    "I;16B": lambda: encode(
        Image.fromarray(noise(1, np.uint16, 65536)).convert("I").convert("I;16B"), "TIFF"
    ),
    "I": lambda: encode(Image.fromarray(noise(1, np.int32, 1 << 20) - (1 << 16)), "TIFF"),
    "F": lambda: encode(float_noise(), "TIFF"),
    "GIF-transparency": lambda: encode(noisy_palette("P"), "GIF", transparency=2),
    "WEBP-RGBA": lambda: encode(Image.fromarray(noise(4), "RGBA"), "WEBP", lossless=True),
    "JPEG-L": lambda: encode(Image.fromarray(noise(1)), "JPEG"),
    "JPEG-exif-6": lambda: encode(Image.fromarray(noise(3)), "JPEG", exif=EXIF_6),
}


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest", "lanczos"])
@pytest.mark.parametrize("case", NOISE_CASES.values(), ids=NOISE_CASES.keys())
def test_decoding_gives_the_very_bits_of_the_plain_conversion(
    monkeypatch: pytest.MonkeyPatch, case: Callable[[], bytes], interpolation: str
) -> None:
    monkeypatch.setattr(images, "_STRIP_PIXELS", 500)  # several strips per image
    data = case()
    preprocess = Preprocess(
        resize_shorter=40,
        crop=32,
        interpolation=interpolation,
        mean=(120.5, 110.0, 99.0),
        std=(60.1, 61.0, 59.9),
    )

    tensor = decode_image(data, preprocess).tensor

    np.testing.assert_array_equal(tensor, reference_tensor(data, preprocess))
    assert tensor.flags.c_contiguous
    assert tensor.dtype == np.float32


def test_bgr_gives_the_very_bits_of_the_plain_conversion() -> None:
    data = NOISE_CASES["RGBA"]()
    preprocess = Preprocess(
        resize_shorter=40, crop=32, mean=(1.5, 2.0, 3.0), std=(50.0, 60.0, 70.0), color="BGR"
    )

    np.testing.assert_array_equal(decode_image(data, preprocess).tensor, reference_tensor(data, preprocess))


def test_a_big_photo_gives_the_very_bits_of_the_plain_full_decode(big_jpeg: bytes) -> None:
    np.testing.assert_array_equal(
        decode_image(big_jpeg, Preprocess()).tensor, reference_tensor(big_jpeg, Preprocess())
    )


# Sizes where resizing only the crop's box (Pillow takes the box in float32) leaves pixels 1-2
# levels off the whole resize, sizes where it happens not to, upscales, squares, portraits, and
# 457x448 at a target of 224, where ImageOps.cover rounds the longer side's 228.5 up to 229 (the
# one division long * target / short rounds half to even, to 228).
RESIZE_SIZES = [(337, 224), (350, 233), (640, 427), (427, 640), (1000, 500), (512, 512), (97, 61), (61, 300)]
RESIZE_TARGETS = [(256, 224), (320, 288), (224, 224), (299, 255)]


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear", "nearest", "lanczos"])
@pytest.mark.parametrize("target", RESIZE_TARGETS, ids=[f"{t}-{c}" for t, c in RESIZE_TARGETS])
def test_resize_and_crop_is_the_whole_resize_then_the_crop(
    interpolation: str, target: tuple[int, int]
) -> None:
    rng = np.random.default_rng(5)
    preprocess = Preprocess(resize_shorter=target[0], crop=target[1], interpolation=interpolation)
    sizes = [*RESIZE_SIZES, (457, 448), (448, 457)]
    for mode, channels in (("RGB", 3), ("L", 1)):
        for width, height in sizes:
            shape = (height, width, channels) if channels > 1 else (height, width)
            image = Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode)

            produced = images._resize_and_crop(image, preprocess)

            assert produced.size == (target[1], target[1])
            np.testing.assert_array_equal(
                np.asarray(produced),
                np.asarray(resized_then_cropped(image, preprocess)),
                err_msg=f"{width}x{height}",
            )


def test_the_longer_side_is_rounded_as_pillow_rounds_it() -> None:
    image = Image.new("RGB", (457, 448))

    assert images._resized_size(image.size, 224) == ImageOps.cover(image, (224, 224)).size == (229, 224)
    assert images._resized_size((448, 457), 224) == (224, 229)
    assert images._resized_size((300, 300), 256) == (256, 256)


@pytest.fixture
def box_resizes(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """For each Image.resize, whether it was given a box."""
    boxed: list[bool] = []
    original = Image.Image.resize

    def spy(
        self: Image.Image, size: Any, resample: Any = None, box: Any = None, **kwargs: Any
    ) -> Image.Image:
        boxed.append(box is not None)
        return original(self, size, resample, box, **kwargs)

    monkeypatch.setattr(Image.Image, "resize", spy)
    return boxed


def smooth(size: tuple[int, int]) -> Image.Image:
    """Photo-like content: slow waves, unlike noise, which no resampler agrees on."""
    xs, ys = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    waves = [128 + 100 * np.sin(xs / 9 + c) * np.cos(ys / 13 - c) for c in (0.0, 1.0, 2.0)]
    return Image.fromarray(np.stack(waves, axis=-1).astype(np.uint8))


@pytest.mark.parametrize(
    ("size", "boxed"),
    [
        ((1024, 16), False),  # resized to 16384x256: 2^22 pixels, the most resized whole
        ((16, 1024), False),
        ((1040, 16), True),  # 16640x256: only the crop's box is resized
        ((16, 1040), True),
        ((300, 20000), True),
    ],
)
@pytest.mark.parametrize("interpolation", ["bicubic", "lanczos"])
def test_only_a_strip_is_resized_through_the_crop_box(
    box_resizes: list[bool], size: tuple[int, int], boxed: bool, interpolation: str
) -> None:
    image = smooth(size)
    preprocess = Preprocess(interpolation=interpolation)

    produced = np.asarray(images._resize_and_crop(image, preprocess), dtype=np.int16)

    assert box_resizes == [boxed]
    assert images._WHOLE_RESIZE_PIXELS == 1 << 22
    reference = np.asarray(resized_then_cropped(image, preprocess), dtype=np.int16)
    if boxed:  # the box's single-precision coordinates: close to the whole resize, not the same bits
        assert np.abs(produced - reference).max() <= 2
    else:
        np.testing.assert_array_equal(produced, reference)


# --- Scan-count guard -----------------------------------------------------------------------------


def jpeg_with_scans(size: tuple[int, int], scans: int, mode: str = "RGB") -> bytes:
    """A progressive JPEG whose last scan is repeated until it has ``scans`` scans. Each repeat
    costs a few dozen bytes and a pass over every block of its component."""
    data = encode(Image.new(mode, size, (120, 80, 40) if mode == "RGB" else 100), "JPEG", progressive=True)
    last = data.rfind(b"\xff\xda")  # Pillow writes no thumbnail: every FF DA is a scan
    written = data.count(b"\xff\xda")
    assert data.endswith(b"\xff\xd9") and scans >= written
    return data[:-2] + data[last:-2] * (scans - written) + data[-2:]


def test_real_encoders_write_few_scans() -> None:
    rgb = encode(Image.fromarray(noise(3)), "JPEG")
    progressive = encode(Image.fromarray(noise(3)), "JPEG", progressive=True)
    grey = encode(Image.fromarray(noise(1)), "JPEG", progressive=True)

    assert len(images._jpeg_scan_offsets(rgb, None)) == 1
    assert len(images._jpeg_scan_offsets(progressive, None)) == 10  # libjpeg-turbo's script
    assert len(images._jpeg_scan_offsets(grey, None)) == 6
    assert images.MAX_JPEG_SCANS >= 100


def test_a_jpeg_with_too_many_scans_is_refused_before_decoding(monkeypatch: pytest.MonkeyPatch) -> None:
    data = jpeg_with_scans((64, 64), images.MAX_JPEG_SCANS + 1)
    assert decode_image(data[: data.rfind(b"\xff\xda")] + b"\xff\xd9", RAW).tensor.shape == (3, 16, 16)

    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    with pytest.raises(PredictionError) as raised:
        decode_image(data, RAW)

    assert raised.value.code is ErrorCode.IMAGE_TOO_COMPLEX
    assert f"over the limit of {images.MAX_JPEG_SCANS}" in raised.value.message
    assert not raised.value.transient


def test_a_big_scan_bomb_is_refused_fast() -> None:
    data = jpeg_with_scans((7000, 7000), 3000)  # ~0.5 MB; decoding it takes ~90 s

    started = time.monotonic()
    with pytest.raises(PredictionError) as raised:
        decode_image(data, Preprocess())

    assert raised.value.code is ErrorCode.IMAGE_TOO_COMPLEX
    assert time.monotonic() - started < 2.0  # ~20 ms: the header and a regex over the scans


def test_a_jpeg_at_the_scan_limit_decodes() -> None:
    data = jpeg_with_scans((64, 64), images.MAX_JPEG_SCANS)

    assert len(images._jpeg_scan_offsets(data, None)) == images.MAX_JPEG_SCANS
    np.testing.assert_allclose(solid_colour(data), (120, 80, 40), atol=3)


def test_scans_are_counted_as_libjpeg_meets_them() -> None:
    # FF DA inside a comment segment is no scan, nor are the scans of a JPEG appended after the
    # EOI (an MPO's second picture, a gain map): libjpeg stops at the first EOI.
    photo = encode(Image.fromarray(noise(3)), "JPEG", progressive=True)
    comment = b"\xff\xda" * 500
    commented = photo[:2] + b"\xff\xfe" + struct.pack(">H", len(comment) + 2) + comment + photo[2:]
    data = commented + jpeg_with_scans((64, 64), 500)

    assert len(images._jpeg_scan_offsets(data, None)) == 10
    np.testing.assert_array_equal(decode_image(data, RAW).tensor, decode_image(photo, RAW).tensor)


# --- Decode deadline ------------------------------------------------------------------------------


def test_the_deadline_stops_a_scan_bomb(monkeypatch: pytest.MonkeyPatch) -> None:
    # 3000x3000 with 3,000 scans: ~15 s to decode. Let it past the scan guard, give it 0.3 s.
    monkeypatch.setattr(images, "MAX_JPEG_SCANS", 10**6)
    data = jpeg_with_scans((3000, 3000), 3000)

    started = time.monotonic()
    with pytest.raises(PredictionError) as raised:
        decode_image(data, Preprocess(), deadline=started + 0.3)

    assert raised.value.code is ErrorCode.DECODE_TIMEOUT
    assert time.monotonic() - started < 3.0  # one scan (~6 ms here) after the deadline, in fact


def test_a_passed_deadline_decodes_nothing() -> None:
    with pytest.raises(PredictionError) as raised:
        decode_image(encode(Image.new("RGB", SIZE, RED), "PNG"), RAW, deadline=time.monotonic() - 1)
    assert raised.value.code is ErrorCode.DECODE_TIMEOUT


def test_a_deadline_in_the_future_changes_nothing(big_jpeg: bytes) -> None:
    far = time.monotonic() + 3600
    for data in (big_jpeg, NOISE_CASES["RGBA"](), NOISE_CASES["I;16"]()):
        np.testing.assert_array_equal(
            decode_image(data, Preprocess(), deadline=far).tensor, decode_image(data, Preprocess()).tensor
        )


INTERRUPTIBLE = {
    "JPEG": lambda: encode(Image.fromarray(noise_image(3)), "JPEG", quality=95),
    "JPEG-progressive": lambda: encode(Image.fromarray(noise_image(3)), "JPEG", progressive=True),
    "PNG": lambda: encode(Image.fromarray(noise_image(3)), "PNG"),
    "GIF": lambda: encode(Image.fromarray(noise_image(1)).convert("P"), "GIF"),
    "BMP": lambda: encode(Image.fromarray(noise_image(3)), "BMP"),
    "TIFF-raw": lambda: encode(Image.fromarray(noise_image(3)), "TIFF"),
}
ONE_CALL = {
    "WEBP": lambda: encode(Image.fromarray(noise_image(3)), "WEBP"),
    "AVIF": lambda: encode(Image.fromarray(noise_image(3)), "AVIF", speed=10),
    "TIFF-deflate": lambda: encode(Image.fromarray(noise_image(3)), "TIFF", compression="tiff_adobe_deflate"),
}


def noise_image(channels: int) -> npt.NDArray[np.uint8]:
    shape = (400, 300, channels) if channels > 1 else (400, 300)
    return np.random.default_rng(4).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture
def clock_stops_while_loading(monkeypatch: pytest.MonkeyPatch) -> dict[str, int]:
    """A clock that reads 0 until the third look at it inside ImageFile.load(), then 10^9:
    with a deadline of 1, a decode that looks at the deadline while it decodes stops there."""
    state = {"loading": 0, "looks": 0, "raised_in_load": 0}
    original = ImageFile.ImageFile.load

    def load(self: ImageFile.ImageFile) -> Any:
        state["loading"] += 1
        try:
            return original(self)
        except PredictionError:
            state["raised_in_load"] += 1
            raise
        finally:
            state["loading"] -= 1

    def monotonic() -> float:
        if state["loading"]:
            state["looks"] += 1
        return 1e9 if state["looks"] >= 3 else 0.0

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(images, "time", SimpleNamespace(monotonic=monotonic))
    return state


@pytest.mark.parametrize("build", INTERRUPTIBLE.values(), ids=INTERRUPTIBLE.keys())
def test_the_deadline_interrupts_a_decode_between_reads(
    clock_stops_while_loading: dict[str, int], build: Callable[[], bytes]
) -> None:
    data = build()

    with pytest.raises(PredictionError) as raised:
        decode_image(data, Preprocess(), deadline=1.0)

    assert raised.value.code is ErrorCode.DECODE_TIMEOUT
    assert clock_stops_while_loading["raised_in_load"] >= 1  # stopped inside the decoder's loop


@pytest.mark.parametrize("build", ONE_CALL.values(), ids=ONE_CALL.keys())
def test_a_one_call_decoder_is_timed_out_right_after(
    monkeypatch: pytest.MonkeyPatch, build: Callable[[], bytes]
) -> None:
    # libwebp, libavif and libtiff decode in one call that no read interrupts; the deadline is
    # looked at again as soon as it returns. The clock jumps once pixels start to load.
    loading = []
    original = Image.Image.load

    def load(self: Image.Image) -> Any:
        loading.append(True)
        return original(self)

    monkeypatch.setattr(Image.Image, "load", load)
    monkeypatch.setattr(images, "time", SimpleNamespace(monotonic=lambda: 1e9 if loading else 0.0))
    data = build()

    with pytest.raises(PredictionError) as raised:
        decode_image(data, Preprocess(), deadline=1.0)

    assert raised.value.code is ErrorCode.DECODE_TIMEOUT
    assert loading  # it did decode, and was stopped after


# --- Memory estimate ------------------------------------------------------------------------------

PEAK_CHILD = """
import io, json, sys
from PIL import Image
from batchpredict.images import Preprocess, decode_image, decode_memory_bytes
def status(field):
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))
for fmt in ("JPEG", "PNG", "WEBP", "GIF", "TIFF", "BMP", "AVIF"):  # load every codec first
    buffer = io.BytesIO(); Image.new("RGB", (600, 600)).save(buffer, fmt)
    decode_image(buffer.getvalue(), Preprocess())
data = open(sys.argv[1], "rb").read()
with open("/proc/self/clear_refs", "w") as clear_refs:
    clear_refs.write("5")  # the high-water mark back to the current RSS (ru_maxrss survives exec)
before = status("VmRSS")
decode_image(data, Preprocess())
peak = status("VmHWM") - before
print(json.dumps({"peak": peak, "estimate": decode_memory_bytes(data, Preprocess())}))
"""


def webp_canvas(width: int, height: int) -> bytes:
    """An animated WebP of one 1x1 frame on a width x height canvas: ~100 bytes."""
    frame = encode(Image.new("RGBA", (1, 1), (*RED, 255)), "WEBP", lossless=True)[12:]  # its VP8L chunk

    def chunk(fourcc: bytes, body: bytes) -> bytes:
        return fourcc + struct.pack("<I", len(body)) + body + b"\x00" * (len(body) % 2)

    size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
    body = (
        b"WEBP"
        + chunk(b"VP8X", bytes([0x12, 0, 0, 0]) + size)  # animation, alpha
        + chunk(b"ANIM", struct.pack("<IH", 0xFFFFFFFF, 0))
        + chunk(b"ANMF", bytes(12) + (100).to_bytes(3, "little") + b"\x00" + frame)
    )
    return b"RIFF" + struct.pack("<I", len(body)) + body


def png_16bit_grey(width: int, height: int) -> bytes:
    row = b"\x00" + bytes(2 * width)
    packer = zlib.compressobj(1)
    pixels = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 16, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def palette_with_transparency(side: int) -> bytes:
    image = Image.new("P", (side, side), 3)
    image.putpalette([0, 0, 0, 1, 1, 1, 2, 2, 2, 200, 10, 20])
    return encode(image, "PNG", transparency=3)


def wide_progressive_444(width: int) -> bytes:
    # Progressive 4:4:4 (6 bytes of coefficients a pixel), turned by its EXIF orientation (a
    # second copy of the picture), and resized whole: 25:1, a 6400x256 intermediate.
    exif = Image.Exif()
    exif[ExifTags.Base.Orientation] = 6
    image = Image.new("RGB", (width, 1000), (10, 200, 30))
    return encode(image, "JPEG", progressive=True, subsampling=0, exif=exif)


def photo_jpeg(size: tuple[int, int], progressive: bool) -> bytes:
    """A 4:2:0 JPEG of a smooth gradient (its content changes nothing to the memory)."""
    ramp = np.linspace(0, 255, size[0], dtype=np.float32).astype(np.uint8)
    pixels = np.broadcast_to(ramp[None, :, None], (size[1], size[0], 3))
    return encode(Image.fromarray(np.ascontiguousarray(pixels)), "JPEG", quality=85, progressive=progressive)


# 25-48 MP each: towards the cap, so that the per-pixel terms, not the fixed ones, are what is
# tested. The JPEGs decode in full: 4 bytes a pixel of RGB, and for a progressive one its
# coefficients (3 bytes a pixel at 4:2:0) beside them.
HOSTILE = {
    "palette-png-transparency": lambda: palette_with_transparency(5000),
    "animated-webp-canvas": lambda: webp_canvas(5000, 5000),
    "wide-progressive-444-jpeg-oriented": lambda: wide_progressive_444(25_000),
    "16-bit-png": lambda: png_16bit_grey(5000, 5000),
    "48mp-baseline-jpeg": lambda: photo_jpeg((8000, 6000), progressive=False),
    "48mp-progressive-jpeg": lambda: photo_jpeg((8000, 6000), progressive=True),
    "64-to-1-panorama-jpeg": lambda: photo_jpeg((44_800, 700), progressive=False),
}


@pytest.mark.parametrize("build", HOSTILE.values(), ids=HOSTILE.keys())
def test_the_memory_estimate_bounds_the_measured_peak(tmp_path: Path, build: Callable[[], bytes]) -> None:
    # A fresh process per image: its peak RSS growth over the decode (VmHWM, reset just before)
    # against the estimate.
    path = tmp_path / "payload"
    path.write_bytes(build())
    env = os.environ | {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", PEAK_CHILD, str(path)], capture_output=True, text=True, env=env, check=False
    )
    assert done.returncode == 0, done.stderr[-800:]
    measured = json.loads(done.stdout)

    assert measured["peak"] <= measured["estimate"]
    assert measured["estimate"] <= 1.5 * measured["peak"] + (32 << 20)  # and not uselessly loose


def test_the_memory_estimate_reads_only_the_header(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_decoding(self: ImageFile.ImageFile) -> None:
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", no_decoding)
    side = 7071  # 50 MP
    estimate = images.decode_memory_bytes(palette_with_transparency(side), Preprocess())

    assert estimate >= 5 * side * side  # the palette image and its RGB over white
    assert images.decode_memory_bytes(webp_canvas(7000, 7000), Preprocess()) >= 16 * 7000 * 7000


@pytest.mark.parametrize(
    "data",
    [b"", b"not an image", png_header(10_000, 6_000), jpeg_with_scans((64, 64), 500)],
    ids=["empty", "garbage", "over-the-pixel-cap", "too-many-scans"],
)
def test_bytes_refused_before_decoding_cost_only_the_fixed_estimate(data: bytes) -> None:
    assert images.decode_memory_bytes(data, Preprocess()) == images._FIXED_BYTES
