"""The model answers on the production decode exactly what it answers on the reference one.

The reference preprocessing is written here with plain Pillow and numpy, independently of
images.py: open, EXIF transpose, RGB (transparency over white), resize the whole picture so that
its shorter side is resize_shorter (bicubic; ImageOps.cover, so Pillow's rounding of the longer
side), crop the centre, (x - mean) / std in float32. On the sample photos, and on JPEGs
re-encoded from them at many sizes and qualities (baseline, progressive, grey, EXIF-oriented),
``decode_image`` must give the very same tensor, and the engine the same top-5 classes in the same
order with the same probabilities.

There is no tolerance for "near ties": a JPEG draft (libjpeg's 1/2, 1/4, 1/8 scaled IDCT) moved
probabilities by ~0.01 even at 8x the resize target and swapped chelsea's top two at 3100 px
(0.380 / 0.371), and resizing only the crop's box (Pillow takes a box in float32) left pixels
1-2 levels off on about half of these inputs; either fails this test.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from PIL import ExifTags, Image, ImageOps

from batchpredict.bundle import resolve_bundle
from batchpredict.images import Preprocess, decode_image
from batchpredict.model import Engine, load_model

# (shorter side, JPEG quality, progressive). With a resize target of 256, 300-1024 px is what the
# web serves; 2000 and 3100 px (6 and 14 MP at 3:2) are phone photos, the ones a draft shrinks.
VARIANTS = [
    (300, 75, False),
    (512, 90, True),
    (700, 85, False),
    (1024, 95, True),
    (2000, 80, True),
    (3100, 75, False),
]
GREY = (1024, 90, False)
# Stored as re-encoded, tagged with EXIF orientation 6 (shown turned 90 degrees clockwise) or 8.
ORIENTED = {6: (700, 85, False), 8: (3100, 90, True)}
PROBABILITY_ATOL = 1e-6  # float32


@pytest.fixture(scope="module")
def engine(bundle_dir: Path) -> Engine:
    return load_model(resolve_bundle(str(bundle_dir)), max_batch=16)


def reencoded(
    photo: bytes,
    variant: tuple[int, int, bool],
    mode: str = "RGB",
    orientation: int | None = None,
) -> bytes:
    shorter, quality, progressive = variant
    with Image.open(io.BytesIO(photo)) as image:
        picture = image.convert(mode)
    scale = shorter / min(picture.size)
    size = (round(picture.width * scale), round(picture.height * scale))
    exif = Image.Exif()
    if orientation is not None:
        exif[ExifTags.Base.Orientation] = orientation
    buffer = io.BytesIO()
    picture.resize(size, Image.Resampling.BILINEAR).save(
        buffer, "JPEG", quality=quality, progressive=progressive, exif=exif
    )
    return buffer.getvalue()


@pytest.fixture(scope="module")
def payloads(samples_dir: Path) -> dict[str, bytes]:
    photos = sorted(samples_dir.glob("*.jpg")) + sorted(samples_dir.glob("*.png"))
    assert len(photos) >= 5
    cases = {}
    for path in photos:
        photo = path.read_bytes()
        cases[path.name] = photo
        for variant in VARIANTS:
            shorter, quality, progressive = variant
            kind = "progressive" if progressive else "baseline"
            cases[f"{path.stem}-{shorter}px-q{quality}-{kind}"] = reencoded(photo, variant)
        cases[f"{path.stem}-{GREY[0]}px-grey"] = reencoded(photo, GREY, mode="L")
        for orientation, variant in ORIENTED.items():
            cases[f"{path.stem}-{variant[0]}px-exif-{orientation}"] = reencoded(
                photo, variant, orientation=orientation
            )
    return cases


def reference_tensor(data: bytes, preprocess: Preprocess) -> npt.NDArray[np.float32]:
    assert preprocess.interpolation == "bicubic"
    with Image.open(io.BytesIO(data)) as opened:
        image = ImageOps.exif_transpose(opened)
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        rgb = Image.new("RGB", image.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.getchannel("A"))
    else:
        rgb = image.convert("RGB")
    target, crop = preprocess.resize_shorter, preprocess.crop
    resized = ImageOps.cover(rgb, (target, target), Image.Resampling.BICUBIC)
    assert min(resized.size) == target
    left, top = (resized.width - crop) // 2, (resized.height - crop) // 2
    pixels = np.asarray(resized.crop((left, top, left + crop, top + crop)), dtype=np.float32)
    if preprocess.color == "BGR":
        pixels = pixels[:, :, ::-1]
    mean = np.asarray(preprocess.mean, dtype=np.float32)
    std = np.asarray(preprocess.std, dtype=np.float32)
    return np.ascontiguousarray(((pixels - mean) / std).transpose(2, 0, 1))


def test_the_production_decode_gives_the_reference_answer(engine: Engine, payloads: dict[str, bytes]) -> None:
    preprocess = engine.spec.preprocess
    names = list(payloads)
    production = np.stack([decode_image(payloads[name], preprocess).tensor for name in names])
    reference = np.stack([reference_tensor(payloads[name], preprocess) for name in names])

    # The same batch layout for both, so that the forward passes are the same too.
    production_p = engine.probabilities(production)
    reference_p = engine.probabilities(reference)
    production_top5 = engine.top_k(production_p, 5)
    reference_top5 = engine.top_k(reference_p, 5)

    differing = {}
    for i, name in enumerate(names):
        classes = [p.class_index for p in production_top5[i]]
        expected = [p.class_index for p in reference_top5[i]]
        shift = float(np.abs(production_p[i] - reference_p[i]).max())
        levels = float(np.abs(production[i] - reference[i]).max() * max(preprocess.std))
        if classes != expected or shift > PROBABILITY_ATOL or levels:
            differing[name] = {
                "top5": classes,
                "reference_top5": expected,
                "reference_p": [round(p.probability, 4) for p in reference_top5[i]],
                "max_probability_shift": shift,
                "max_pixel_levels": levels,
            }
    assert not differing
    assert len(names) >= 5 * (1 + len(VARIANTS) + 1 + len(ORIENTED))


def test_the_inputs_cover_what_they_claim(payloads: dict[str, bytes]) -> None:
    def opened(name: str) -> tuple[str, tuple[int, int], bool, int]:
        with Image.open(io.BytesIO(payloads[name])) as image:
            return image.mode, image.size, bool(image.info.get("progressive")), image.getexif().get(274, 1)

    assert opened("china-3100px-q75-baseline")[1:3] == ((4646, 3100), False)
    assert opened("china-2000px-q80-progressive")[2] is True
    assert opened("china-1024px-grey")[0] == "L"
    assert opened("china-700px-exif-6")[3] == 6
    assert opened("china-3100px-exif-8")[1:] == ((4646, 3100), True, 8)
    assert decode_image(payloads["china-700px-exif-6"], Preprocess()).width == 700  # turned
