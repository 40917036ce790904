"""Untrusted image bytes -> oriented RGB picture -> the model's normalised CHW float32 tensor."""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from batchpredict.defaults import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from batchpredict.errors import ErrorCode, PredictionError

# The formats an image URL plausibly serves. Pillow reads ~40 more (EPS even runs Ghostscript);
# each is attack surface for untrusted bytes and of no use here.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

_RESAMPLING = {
    "bicubic": Image.Resampling.BICUBIC,
    "bilinear": Image.Resampling.BILINEAR,
    "nearest": Image.Resampling.NEAREST,
    "lanczos": Image.Resampling.LANCZOS,
}

# Divisor that brings each high-bit-depth mode to 0..255. Pillow's convert() clips instead of
# scaling, which turns every 16-bit value above 255 white. F is taken on Pillow's 0..255 scale.
_DEEP_MODES = {"I;16": 257.0, "I;16L": 257.0, "I;16B": 257.0, "I;16N": 257.0, "I": 257.0, "F": 1.0}

_SWAPPING_ORIENTATIONS = frozenset({5, 6, 7, 8})  # transpose, rotate 90/270, transverse
_WHITE = (255, 255, 255)


@dataclass(frozen=True)
class Preprocess:
    """How the model wants its input: resize, centre crop, normalise, channel order."""

    resize_shorter: int = 256
    crop: int = 224
    interpolation: str = "bicubic"
    mean: tuple[float, float, float] = (127.0, 127.0, 127.0)  # model's colour order, 0-255 scale
    std: tuple[float, float, float] = (128.0, 128.0, 128.0)
    color: str = "RGB"

    def __post_init__(self) -> None:
        if self.interpolation not in _RESAMPLING:
            raise ValueError(
                f"interpolation must be one of {sorted(_RESAMPLING)}, not {self.interpolation!r}"
            )
        if self.color not in ("RGB", "BGR"):
            raise ValueError(f"color must be 'RGB' or 'BGR', not {self.color!r}")
        if not 0 < self.crop <= self.resize_shorter:
            raise ValueError(f"need 0 < crop <= resize_shorter, got {self.crop} and {self.resize_shorter}")
        if 0 in self.std:
            raise ValueError("std must not contain 0")


@dataclass(frozen=True)
class DecodedImage:
    tensor: npt.NDArray[np.float32]  # (3, crop, crop), (x - mean) / std, channels per Preprocess.color
    width: int  # of the original image, after EXIF orientation
    height: int
    bytes: int  # size of the encoded input


def decode_image(data: bytes, preprocess: Preprocess, max_pixels: int = DEFAULT_MAX_PIXELS) -> DecodedImage:
    """Decode untrusted image bytes into the model's input tensor.

    Raises PredictionError NOT_AN_IMAGE or IMAGE_TOO_LARGE.
    """
    image, (width, height) = _load(data, max_pixels, draft_to=preprocess.resize_shorter)
    image = _resize_and_crop(image, preprocess)
    pixels = np.asarray(image, dtype=np.float32)  # HWC, RGB
    if preprocess.color == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(preprocess.mean, dtype=np.float32)
    std = np.asarray(preprocess.std, dtype=np.float32)
    tensor = np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))
    return DecodedImage(tensor=tensor, width=width, height=height, bytes=len(data))


def load_rgb(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS, draft_to: int | None = None) -> Image.Image:
    """Decode untrusted image bytes into an EXIF-oriented RGB image (first frame if animated).

    ``draft_to`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale as long as its shorter side stays
    >= draft_to. Raises PredictionError NOT_AN_IMAGE or IMAGE_TOO_LARGE.
    """
    return _load(data, max_pixels, draft_to)[0]


def _load(data: bytes, max_pixels: int, draft_to: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Return the oriented RGB image and the oriented full size (a JPEG draft may have shrunk it)."""
    try:
        # Image.open reads only the header and leaves an animation on its first frame.
        with Image.open(io.BytesIO(data), formats=FORMATS) as image:
            width, height = image.size
            if width * height > max_pixels:
                raise PredictionError(
                    ErrorCode.IMAGE_TOO_LARGE,
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
                )
            if draft_to is not None:
                # A no-op except for JPEG. Pillow picks the scale as min(w // n, h // n) for a
                # requested (n, n), so the shorter side stays >= n and never undershoots.
                image.draft("RGB", (draft_to, draft_to))
            image.load()
            if image.getexif().get(ExifTags.Base.Orientation, 1) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
            ImageOps.exif_transpose(image, in_place=True)
    except PredictionError:
        raise
    except UnidentifiedImageError as exc:
        raise PredictionError(
            ErrorCode.NOT_AN_IMAGE, f"cannot identify image format (supported: {', '.join(FORMATS)})"
        ) from exc
    # Pillow's own bomb check: the error above 2x Image.MAX_IMAGE_PIXELS, and the warning if
    # someone made warnings errors. Our max_pixels check above is the one we rely on.
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise PredictionError(ErrorCode.IMAGE_TOO_LARGE, str(exc)) from exc
    except MemoryError:
        raise
    except Exception as exc:  # whatever a decoder raises on hostile bytes: OSError, SyntaxError, ...
        raise PredictionError(ErrorCode.NOT_AN_IMAGE, f"image data is truncated or corrupt: {exc}") from exc
    try:
        return _to_rgb(image), (width, height)
    except ValueError as exc:  # a mode Pillow cannot convert, e.g. "La"
        raise PredictionError(ErrorCode.NOT_AN_IMAGE, f"unsupported image mode {image.mode}: {exc}") from exc


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _DEEP_MODES:
        values = np.asarray(image, dtype=np.float32) / _DEEP_MODES[image.mode]
        grey = np.rint(np.clip(np.nan_to_num(values), 0, 255)).astype(np.uint8)
        return Image.fromarray(grey).convert("RGB")
    bands = image.getbands()
    if "A" in bands or "a" in bands or "transparency" in image.info:
        # Composite over white, not the black a plain convert("RGB") leaves under clear pixels:
        # transparent backgrounds are meant to be seen on a (white) page.
        rgba = image.convert("RGBA")
        flat = Image.new("RGB", image.size, _WHITE)
        flat.paste(rgba, mask=rgba.getchannel("A"))
        return flat
    return image if image.mode == "RGB" else image.convert("RGB")  # 1, L, P, CMYK, YCbCr, ...


def _resize_and_crop(image: Image.Image, preprocess: Preprocess) -> Image.Image:
    """Shorter side to ``resize_shorter``, centre crop ``crop``, in one resize of the crop's
    source box: the same pixels as resizing the whole image first, without ever allocating
    the resized whole (a 1x8000 strip would otherwise grow to 256x2M pixels, gigabytes)."""
    width, height = image.size
    target = preprocess.resize_shorter
    long_side = round(max(width, height) * target / min(width, height))
    size = (target, long_side) if width <= height else (long_side, target)
    crop = preprocess.crop
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    scale_x, scale_y = width / size[0], height / size[1]
    box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
    return image.resize((crop, crop), _RESAMPLING[preprocess.interpolation], box=box)
