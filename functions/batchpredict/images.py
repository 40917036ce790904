"""Untrusted image bytes -> oriented RGB picture -> the model's normalised CHW float32 tensor.

Hostile bytes are bounded three ways before and while they decode:

* size: the header's pixel count against ``max_pixels`` (IMAGE_TOO_LARGE), before any pixel;
* work: a JPEG with more than MAX_JPEG_SCANS scans is refused unread (IMAGE_TOO_COMPLEX), and a
  ``deadline`` stops a decode that runs long (DECODE_TIMEOUT);
* memory: ``decode_memory_bytes`` tells from the header alone how much a decode will hold at
  its peak, so that a caller can admit decodes into a memory budget.
"""

from __future__ import annotations

import bisect
import hashlib
import io
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from PIL import ExifTags, Image, ImageFile, ImageOps, UnidentifiedImageError

from batchpredict.defaults import DEFAULT_MAX_PIXELS as DEFAULT_MAX_PIXELS
from batchpredict.errors import ErrorCode, PredictionError
from batchpredict.fidelity import DEFAULT_FIDELITY, FAST_DRAFT_FACTOR, FAST_REDUCING_GAP, Fidelity

# The formats an image URL plausibly serves. Pillow reads ~40 more (EPS even runs Ghostscript);
# each is attack surface for untrusted bytes and of no use here.
FORMATS = ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")

# A progressive JPEG's scans each revisit every block of their component: a 7000x7000 file whose
# last 75-byte scan is repeated 3,000 times is 0.5 MB and takes ~90 s to decode. Real encoders
# write few scans: libjpeg(-turbo) 10 for colour and 6 for greyscale progressive, Photoshop 3-5,
# 1-3 for baseline; mozjpeg's optimised scripts are of the same order. Chrome (Skia) and libtiff
# give up at the 100th scan, so a JPEG with more is not something any browser shows. Within the
# limit a 50 MP file costs at most ~3 s of scans (30 ms each), which the deadline bounds.
MAX_JPEG_SCANS = 100

# Pillow pulls encoded bytes through fp.read(decodermaxblock) and decodes each block before the
# next read, so the block size sets how often the deadline is looked at. 16 KiB keeps a block of
# the densest inputs (zlib at 1:1032, GIF LZW) to ~50 ms at 50 MP; a read costs ~4 us. A JPEG
# keeps Pillow's 64 KiB: its reads are cut at every scan instead (see _DeadlineReader), and 64 KiB
# of baseline data is at most ~20 ms of work.
_READ_BLOCK = 16 * 1024

# Conversions of a whole image run strip by strip, so their temporaries stay ~this many pixels.
_STRIP_PIXELS = 1 << 20

# A picture is resized whole (then cropped) while its resized whole stays within this many pixels
# (16 MB as RGB): up to an aspect ratio of 64:1 at a resize target of 256. See _resize_and_crop.
_WHOLE_RESIZE_PIXELS = 1 << 22

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
    sha256: str | None = None  # hex digest of the encoded input (decode_image always sets it)
    format: str | None = None  # what Pillow read it as, lower case: jpeg, png, webp, gif, bmp, tiff, avif


def decode_image(
    data: bytes,
    preprocess: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    *,
    deadline: float | None = None,
    fidelity: Fidelity = DEFAULT_FIDELITY,
    sha256: str | None = None,
) -> DecodedImage:
    """Decode untrusted image bytes into the model's input tensor.

    The result names the bytes' format and sha256 (``sha256``: the caller's digest of ``data``
    if it has one, so a payload is hashed once; else computed here: ~0.6 ms a MiB, ~1% of the
    decode of a photo of that size).

    ``deadline`` is an absolute ``time.monotonic()``; a decode still running then stops with
    DECODE_TIMEOUT (see ``_DeadlineReader`` for how promptly). Raises PredictionError
    NOT_AN_IMAGE, IMAGE_TOO_LARGE, IMAGE_TOO_COMPLEX or DECODE_TIMEOUT.

    ``exact``: the tensor is, bit for bit, the reference preprocessing's: the whole picture
    decoded at full resolution, resized, centre-cropped (tests/unit/test_decode_fidelity.py). A
    JPEG is never drafted (libjpeg's 1/2, 1/4, 1/8 scaled IDCT): a draft at any scale moves
    probabilities (~0.01 even at 8x the resize target) and reorders near-tied classes.

    ``fast``: a JPEG is drafted to a shorter side of at least FAST_DRAFT_FACTOR x the resize
    target, and the picture is reduced by an integer factor down to FAST_REDUCING_GAP x the
    target before the resize (fidelity.py; agreement in benchmarks/fidelity_agreement.py).
    """
    fast = fidelity is Fidelity.FAST
    draft_to = FAST_DRAFT_FACTOR * preprocess.resize_shorter if fast else None
    image, (width, height), kind = _load(data, max_pixels, draft_to, deadline)
    _check_deadline(deadline)
    tensor = _to_tensor(image, preprocess, FAST_REDUCING_GAP if fast else None)
    digest = sha256 or hashlib.sha256(data).hexdigest()
    return DecodedImage(tensor, width, height, len(data), digest, kind)


def load_rgb(
    data: bytes,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    draft_to: int | None = None,
    *,
    deadline: float | None = None,
) -> Image.Image:
    """Decode untrusted image bytes into an EXIF-oriented RGB image (first frame if animated).

    ``draft_to`` lets a JPEG decode at 1/2, 1/4 or 1/8 scale as long as its shorter side stays
    >= draft_to: for thumbnails (report.py); a model's input is drafted only by ``decode_image``
    at fidelity ``fast``. Raises PredictionError like ``decode_image``.
    """
    image = _load(data, max_pixels, draft_to, deadline)[0]
    return image if image.mode == "RGB" else image.convert("RGB")


def decode_memory_bytes(
    data: bytes,
    preprocess: Preprocess,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    fidelity: Fidelity = DEFAULT_FIDELITY,
) -> int:
    """An upper bound on the memory ``decode_image(data, preprocess, max_pixels, fidelity=...)``
    holds at its peak, beyond ``data`` itself, read from the header alone (no pixel is decoded).

    Bytes that ``decode_image`` refuses before decoding (not an image, too large, too complex)
    get the small fixed cost of finding that out.
    """
    try:
        image = Image.open(io.BytesIO(data), formats=FORMATS)
    except MemoryError:
        raise
    except Exception:  # whatever Image.open raises on hostile bytes: decode_image fails as early
        return _FIXED_BYTES
    with image:
        pixels = image.width * image.height
        if pixels > max_pixels:
            return _FIXED_BYTES
        try:
            scans = _jpeg_scan_offsets(data, None) if image.format in ("JPEG", "MPO") else []
            if len(scans) > MAX_JPEG_SCANS:
                return _FIXED_BYTES
            gap = FAST_REDUCING_GAP if fidelity is Fidelity.FAST else None
            return _FIXED_BYTES + _peak_bytes(image, data, preprocess, len(scans), gap)
        except MemoryError:
            raise
        except Exception:  # a header too odd to model (tags of unexpected types, ...)
            return _FIXED_BYTES + _WORST_BYTES_PER_PIXEL * pixels + 2 * len(data)


# ---------------------------------------------------------------------------------------------
# Decoding


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.monotonic() >= deadline:
        raise PredictionError(ErrorCode.DECODE_TIMEOUT, "image took too long to decode")


class _DeadlineReader(io.BytesIO):
    """The encoded bytes as the file Pillow decodes from, checking the deadline on every read.

    Pillow's ImageFile.load() decodes incrementally: read a block, decode it, read the next. So a
    read raising DECODE_TIMEOUT stops the decode within one block's work, and the decoder is
    cleaned up on the way out. For a JPEG, a read never runs past the start of the next scan:
    libjpeg does a progressive scan's work over the whole image as soon as its (possibly 26-byte)
    data arrives, so whatever the block size, one read hands it at most one scan. Measured on a
    7000x7000 progressive JPEG whose last scan repeats: reads 32 ms apart (median; max 56 ms,
    ~100 ms on a loaded machine), then the output pass after the last read (~70 ms at 1/4 scale).

    This covers JPEG, PNG, GIF, BMP and uncompressed TIFF. WebP, AVIF and compressed TIFF decode
    in one call into libwebp, libavif or libtiff, which no read interrupts: the deadline is
    checked before and after. Their cost is linear in pixels, which max_pixels bounds (~1.3 s at
    50 MP here); libtiff itself gives up on a JPEG-in-TIFF strip at its 100th scan.
    """

    def __init__(self, data: bytes, deadline: float | None) -> None:
        super().__init__(data)
        self._deadline = deadline
        self._cuts: Sequence[int] = ()

    def cut_at(self, offsets: Sequence[int]) -> None:
        """Never let one read run across one of these (sorted) offsets."""
        self._cuts = offsets

    def read(self, size: int | None = -1, /) -> bytes:
        _check_deadline(self._deadline)
        if self._cuts and size is not None and size > 0:
            position = self.tell()
            following = bisect.bisect_right(self._cuts, position)
            if following < len(self._cuts):
                size = min(size, self._cuts[following] - position)
        return super().read(size)


def _load(
    data: bytes, max_pixels: int, draft_to: int | None, deadline: float | None
) -> tuple[Image.Image, tuple[int, int], str]:
    """Return the oriented picture in "RGB" or "L", its oriented full size (a JPEG draft may
    have shrunk the picture) and its format, lower case (an MPO, a camera's JPEG with extra
    frames, is a jpeg)."""
    _check_deadline(deadline)
    reader = _DeadlineReader(data, deadline)
    try:
        # Image.open reads only the header and leaves an animation on its first frame.
        with Image.open(reader, formats=FORMATS) as image:
            width, height = image.size
            kind = "jpeg" if image.format == "MPO" else str(image.format).lower()
            if width * height > max_pixels:
                raise PredictionError(
                    ErrorCode.IMAGE_TOO_LARGE,
                    f"image is {width}x{height} = {width * height} pixels, over the limit of {max_pixels}",
                )
            if image.format in ("JPEG", "MPO"):
                scans = _jpeg_scan_offsets(data, deadline)
                if len(scans) > MAX_JPEG_SCANS:
                    raise PredictionError(
                        ErrorCode.IMAGE_TOO_COMPLEX,
                        f"JPEG has {len(scans)} scans, over the limit of {MAX_JPEG_SCANS}",
                    )
                reader.cut_at(scans)
            else:
                image.decodermaxblock = _READ_BLOCK
            if draft_to is not None:
                # A no-op except for JPEG. Pillow picks the scale as min(w // n, h // n) for a
                # requested (n, n), so the shorter side stays >= n and never undershoots.
                image.draft("RGB", (draft_to, draft_to))
            image.load()
            _check_deadline(deadline)
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
        return _flatten(image, deadline), (width, height), kind
    except ValueError as exc:  # a mode Pillow cannot convert, e.g. "La"
        raise PredictionError(ErrorCode.NOT_AN_IMAGE, f"unsupported image mode {image.mode}: {exc}") from exc


def _has_alpha(image: Image.Image) -> bool:
    bands = image.getbands()
    return "A" in bands or "a" in bands or "transparency" in image.info


def _flatten(image: Image.Image, deadline: float | None) -> Image.Image:
    """The picture as "RGB", or as "L" when it is grey: the RGB copy of a grey picture would cost
    four times the memory, and resizing grey then copying it to RGB gives the very same pixels.

    Whole-image conversions go strip by strip, so that only the result is allocated in full.
    """
    if image.mode in _DEEP_MODES:
        return _deep_to_grey(image, _DEEP_MODES[image.mode], deadline)
    if _has_alpha(image):
        # Composite over white, not the black a plain convert("RGB") leaves under clear pixels:
        # transparent backgrounds are meant to be seen on a (white) page.
        flat = Image.new("RGB", image.size, _WHITE)
        for box in _strips(image.size):
            _check_deadline(deadline)
            rgba = image.crop(box).convert("RGBA")  # crop keeps the palette and "transparency"
            flat.paste(rgba, box, mask=rgba)  # an RGBA mask is its alpha band
        return flat
    if image.mode in ("RGB", "L"):
        return image
    return image.convert("L" if image.mode == "1" else "RGB")  # P, CMYK, YCbCr, LAB, ...


def _deep_to_grey(image: Image.Image, divisor: float, deadline: float | None) -> Image.Image:
    grey = Image.new("L", image.size)
    for box in _strips(image.size):
        _check_deadline(deadline)
        values = np.array(image.crop(box), dtype=np.float32)  # a writable copy, even of "F"
        np.divide(values, divisor, out=values)
        np.nan_to_num(values, copy=False)
        np.clip(values, 0, 255, out=values)
        np.rint(values, out=values)
        grey.paste(Image.fromarray(values.astype(np.uint8)), box)
    return grey


def _strips(size: tuple[int, int]) -> Iterator[tuple[int, int, int, int]]:
    width, height = size
    rows = max(1, _STRIP_PIXELS // max(width, 1))
    for top in range(0, height, rows):
        yield (0, top, width, min(top + rows, height))


def _to_tensor(
    image: Image.Image, preprocess: Preprocess, reducing_gap: float | None = None
) -> npt.NDArray[np.float32]:
    """Resize, crop and normalise an "RGB" or "L" picture into the model's CHW float32 input."""
    image = _resize_and_crop(image, preprocess, reducing_gap)
    if image.mode != "RGB":  # "L": grey resizes channel for channel like its RGB copy would
        image = image.convert("RGB")
    pixels = np.asarray(image)  # HWC uint8, RGB
    if preprocess.color == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(preprocess.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(preprocess.std, dtype=np.float32)[:, None, None]
    # One float32 CHW array, normalised in place: (x - mean) / std in float32, as before.
    tensor = np.empty((3, *pixels.shape[:2]), dtype=np.float32)
    np.subtract(pixels.transpose(2, 0, 1), mean, out=tensor)
    np.divide(tensor, std, out=tensor)
    return tensor


def _resized_size(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """The size with the shorter side ``shorter`` and the aspect ratio kept, rounded the way
    Pillow's ImageOps.cover rounds it."""
    width, height = size
    if width < height:
        return shorter, round(height / width * shorter)
    if width > height:
        return round(width / height * shorter), shorter
    return shorter, shorter


def _resize_and_crop(
    image: Image.Image, preprocess: Preprocess, reducing_gap: float | None = None
) -> Image.Image:
    """Shorter side to ``resize_shorter``, then the centre ``crop`` x ``crop``.

    ``reducing_gap`` (fidelity ``fast`` only; None: exact): Pillow first shrinks the picture by
    an integer factor (``Image.reduce``, a box filter) as long as it stays ``reducing_gap``
    times the target, then resamples the rest of the way.

    The whole picture is resized and then cropped: the reference preprocessing, bit for bit.
    Resizing only the crop's source box (``resize(box=...)``) is not: Pillow takes the box in
    single precision, which moves filter taps by ~1e-6 pixel, and since Pillow 13 (which picks
    the order of its two passes from the sizes) it may run them in the other order for a box
    than for the whole. On photos that left a pixel value a level off here and there on about
    half of them, enough to swap two near-tied classes (tests/unit/test_decode_fidelity.py).

    Only a picture whose resized whole would exceed _WHOLE_RESIZE_PIXELS (an aspect ratio past
    64:1 at a 256 target: a strip, not a photo) is resized through the crop's box, or a 1x8000
    strip would grow to 256x2M pixels, gigabytes. Its crop is then close to the reference's, not
    the same bits: within 2 levels on photo content (4 with "nearest"), far more on noise.
    """
    size = _resized_size(image.size, preprocess.resize_shorter)
    crop = preprocess.crop
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    resampling = _RESAMPLING[preprocess.interpolation]
    if size[0] * size[1] <= _WHOLE_RESIZE_PIXELS:
        resized = image.resize(size, resampling, reducing_gap=reducing_gap)
        return resized.crop((left, top, left + crop, top + crop))
    scale_x, scale_y = image.width / size[0], image.height / size[1]
    box = (left * scale_x, top * scale_y, (left + crop) * scale_x, (top + crop) * scale_y)
    return image.resize((crop, crop), resampling, box=box)


# ---------------------------------------------------------------------------------------------
# JPEG structure

# libjpeg's next_marker(): any run of 0xFF followed by a byte other than 0x00 is a marker; bytes
# before it are skipped. Inside entropy-coded data FF 00 is a stuffed FF and RSTn markers belong
# to the scan, so a scan's data ends at the first marker that is neither. (Spelt \xff\xff* rather
# than \xff+ so that re can skip ahead to each 0xFF: 2.7 GB/s instead of 140 MB/s.)
_MARKER = re.compile(rb"\xff\xff*[^\x00\xff]")
_END_OF_SCAN = re.compile(rb"\xff\xff*[^\x00\xd0-\xd7\xff]")
_PARAMETERLESS = frozenset({0x01, *range(0xD0, 0xD8)})  # TEM, RST0-7
_SOS, _EOI = 0xDA, 0xD9


def _jpeg_scan_offsets(data: bytes, deadline: float | None) -> list[int]:
    """Offsets of the SOS markers libjpeg meets before EOI, walking the marker segments by their
    lengths (an EXIF thumbnail's or an ICC profile's bytes are skipped, as libjpeg skips them)
    and skipping each scan's entropy-coded data. Costs ~0.4 ms per MB."""
    offsets: list[int] = []
    position, end = 2, len(data)  # after SOI
    segments = 0
    while position < end:
        found = _MARKER.search(data, position)
        if found is None:
            break
        marker, after = data[found.end() - 1], found.end()
        if marker == _EOI:
            break
        segments += 1
        if segments % 1024 == 0:
            _check_deadline(deadline)
        if marker in _PARAMETERLESS:
            position = after
            continue
        if after + 2 > end:
            break
        position = after + int.from_bytes(data[after : after + 2], "big")
        if marker == _SOS:
            offsets.append(found.end() - 2)
            if len(offsets) > MAX_JPEG_SCANS:  # enough to refuse it; no need to read further
                break
            scan_end = _END_OF_SCAN.search(data, position)
            position = end if scan_end is None else scan_end.start()
    return offsets


# ---------------------------------------------------------------------------------------------
# Memory estimate. Every term is a buffer alive at the peak of some stage of a decode;
# tests/unit/test_images.py measures the real peak (RSS of a child process) of hostile images
# against it. "Pixels" are those of the image at its full size: a ``fast`` decode (drafted,
# reduced) holds less, so the same estimate bounds it too.

_FIXED_BYTES = 16 << 20  # codec state, row buffers, Python objects, the tensor

# Pillow keeps 1-, 8- and 16-bit modes in 1 or 2 bytes a pixel and every other mode in 4.
_STORED_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16L": 2, "I;16B": 2, "I;16N": 2}

# Strip temporaries of _flatten: the crop, its RGBA or float32 copy, numpy's and the result's.
_STRIP_BYTES = 16 * _STRIP_PIXELS

# Above any decode's peak per pixel modelled below (WebP's 16 is the most), for a header the
# model cannot read.
_WORST_BYTES_PER_PIXEL = 24

# WebP and AVIF copy the whole payload into their decoder when the header is read.
_PAYLOAD_COPIES = {"WEBP": 2, "AVIF": 2}


def _peak_bytes(
    image: ImageFile.ImageFile, data: bytes, preprocess: Preprocess, scans: int, reducing_gap: float | None
) -> int:
    decoding = held = 0  # decoder memory beside Pillow's image: at its peak, and kept after
    if image.format in ("JPEG", "MPO"):
        decoding = _jpeg_buffer_bytes(image, scans)
    width, height = image.size
    pixels = width * height
    if image.format == "WEBP":
        # libwebp's animation decoder (Pillow's only WebP reader) decodes the first frame into
        # its canvas (with a VP8L ARGB plane, an alpha plane: 5 B/px at most, before Pillow's
        # image exists) and then keeps the canvas and a copy of it; Pillow copies the canvas out
        # as bytes and decodes those into its image.
        held = 8 * pixels
        decoding = held + 4 * pixels
    elif image.format == "AVIF":
        # libavif keeps its YUV(A) planes; while decoding there are also the RGB it converts
        # them to and Pillow's bytes copy of that, which Pillow then decodes into its image.
        held = _avif_planes_bytes(data) * pixels // 2
        decoding = held + 4 * pixels
    elif image.format == "TIFF" and getattr(image, "use_load_libtiff", True):
        decoding = _tiff_buffer_bytes(image)
    stored = _STORED_BYTES.get(image.mode, 4) * pixels
    # Flattening to RGB or L (as _flatten does): the result (and strips) beside the decoded image.
    if image.mode in _DEEP_MODES:
        flat_mode, flattening = "L", pixels + _STRIP_BYTES
    elif _has_alpha(image):
        flat_mode, flattening = "RGB", 4 * pixels + _STRIP_BYTES
    elif image.mode in ("RGB", "L"):
        flat_mode, flattening = image.mode, 0
    else:
        flat_mode = "L" if image.mode == "1" else "RGB"
        flattening = _STORED_BYTES.get(flat_mode, 4) * pixels
    converted = 0 if flattening == 0 else _STORED_BYTES.get(flat_mode, 4) * pixels
    # EXIF orientation turns the decoded image into a copy beside it.
    oriented = _may_be_oriented(image, data)
    turning = stored if oriented else 0
    # Resizing the flattened picture: its intermediate and output beside it (either way up if
    # the picture may be turned).
    resizing = _resize_bytes((width, height), flat_mode, preprocess, reducing_gap)
    if oriented:
        resizing = max(resizing, _resize_bytes((height, width), flat_mode, preprocess, reducing_gap))
    copies = _PAYLOAD_COPIES.get(str(image.format), 0) * len(data)
    peak = copies + max(decoding, held + turning, held + flattening, held + converted + resizing) + stored
    return peak + peak // 16  # allocator slack: glibc arenas, page rounding, alignment


def _resize_bytes(
    size: tuple[int, int], mode: str, preprocess: Preprocess, reducing_gap: float | None = None
) -> int:
    """What ``_resize_and_crop`` allocates for a ``size`` picture in ``mode`` ("RGB" or "L"):
    the intermediate of Pillow's first pass (at most the output's width by every row, or every
    column by the output's height, whichever pass runs first), the output, the crop's copy;
    with a ``reducing_gap`` also the reduced copy the passes then start from (half the picture
    at most: Pillow reduces by a factor of 2 or more along one axis at least)."""
    width, height = size
    resized = _resized_size(size, preprocess.resize_shorter)
    crop = preprocess.crop
    if resized[0] * resized[1] <= _WHOLE_RESIZE_PIXELS:
        first_pass = max(resized[0] * height, width * resized[1])
        pixels = first_pass + resized[0] * resized[1] + crop * crop
        if reducing_gap is not None and max(width / resized[0], height / resized[1]) >= 2 * reducing_gap:
            pixels += width * height // 2
    else:
        pixels = crop * max(width, height) + crop * crop
    return _STORED_BYTES.get(mode, 4) * pixels


def _jpeg_buffer_bytes(image: ImageFile.ImageFile, scans: int) -> int:
    """A progressive or multi-scan JPEG decodes into a coefficient buffer for the whole image:
    64 two-byte coefficients per 8x8 block and component.
    Add libjpeg's row buffers: a few MCU rows of every component at full width."""
    width, height = image.size
    sampling: list[tuple[int, int]] = [(h, v) for _, h, v, _ in getattr(image, "layer", [])] or [(1, 1)] * 4
    h_max, v_max = max(h for h, _ in sampling), max(v for _, v in sampling)
    total: int = width * 16 * v_max * 4 * len(sampling)
    if scans > 1 or image.info.get("progressive"):
        for h, v in sampling:
            blocks_x = -(-width * h // (8 * h_max)) + h
            blocks_y = -(-height * v // (8 * v_max)) + v
            total += blocks_x * blocks_y * 128
    return total


def _avif_planes_bytes(data: bytes) -> int:
    """Bytes per pixel, doubled, of the YUV(A) planes libavif decodes to, from the av1C boxes
    (the colour item's and the alpha item's); 16 (16-bit 4:4:4 + alpha) if there is none."""
    doubled = 0
    for box in re.finditer(rb"av1C", data):
        flags = data[box.end() + 2 : box.end() + 3]
        if not flags:
            continue
        # seq_tier, high_bitdepth, twelve_bit, monochrome, chroma_subsampling_x, _y, position
        high_bitdepth, monochrome = flags[0] >> 6 & 1, flags[0] >> 4 & 1
        subsampling = (flags[0] >> 3 & 1) + (flags[0] >> 2 & 1)
        chroma = 0 if monochrome else 4 >> subsampling  # two planes, doubled
        doubled += (2 + chroma) << high_bitdepth  # beyond 8 bits a sample takes two bytes
    return min(doubled, 16) if doubled else 16


def _tiff_buffer_bytes(image: ImageFile.ImageFile) -> int:
    """libtiff decodes a strip (or tile) at a time: the decoded strip at the file's bit depth,
    and for YCbCr/JPEG the RGBA that TIFFReadRGBA* makes of it."""
    tags = getattr(image, "tag_v2", {})
    width, height = image.size
    tile_width, tile_height = tags.get(322), tags.get(323)
    if tile_width and tile_height:
        unit = int(tile_width) * int(tile_height)
    else:
        unit = width * min(int(tags.get(278, height) or height), height)
    bits = tags.get(258, (8,))
    bits_per_pixel = sum(bits) if isinstance(bits, tuple) else int(bits) * int(tags.get(277, 1))
    rgba = 4 if tags.get(262) == 6 or tags.get(259) in (6, 7) else 0  # YCbCr, JPEG
    return int(unit * (-(-bits_per_pixel // 8) + rgba))


def _may_be_oriented(image: ImageFile.ImageFile, data: bytes) -> bool:
    if image.format == "PNG":
        # Pillow reads a PNG's EXIF only by decoding it (eXIf may follow the pixels), so look
        # for anything that could carry an orientation: eXIf, a raw EXIF profile, XMP.
        return any(key in data for key in (b"eXIf", b"Raw profile type exif", b"XML:com.adobe.xmp"))
    return bool(image.getexif().get(ExifTags.Base.Orientation, 1) != 1)
