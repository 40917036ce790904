"""Photos built offline for calibrating and checking an int8 model: the sample photos and other
real photos shipped inside the scikit-image wheel, each turned into many varied images (crops,
scales, flips, rotations, colour, blur, grey, JPEG qualities 50-95) by a seeded generator, so
the same seed gives the same bytes on every machine. Nothing is downloaded but the wheels.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterator, Sequence
from pathlib import Path

from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from bundlebuild.registry import WheelFile, read_pinned
from bundlebuild.samples import SAMPLE_PHOTOS, SKIMAGE

# Held out from calibration: the int8 model's agreement is measured on photos it was not calibrated on.
HELD_OUT_PHOTOS = {
    name: WheelFile(SKIMAGE, f"skimage/data/{name}", digest)
    for name, digest in {
        "brick.png": "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
        "camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
        "coins.png": "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
        "color.png": "7d2df993de2b4fa2a78e04e5df8050f49a9c511aa75e59ab3bd56ac9c98aef7e",
        "grass.png": "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
        "gravel.png": "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
        "horse.png": "c7fb60789fe394c485f842291ea3b21e50d140f39d6dcb5fb9917cc178225455",
        "hubble_deep_field.jpg": "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
        "ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
        "motorcycle_left.png": "db18e9c4157617403c3537a6ba355dfeafe9a7eabb6b9b94cb33f6525dd49179",
        "motorcycle_right.png": "5fc913ae870e42a4b662314bc904d1786bcad8e2f0b9b67dba5a229406357797",
        "retina.jpg": "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
        "moon.png": "78739619d11f7eb9c165bb5d2efd4772cee557812ec847532dbb1d92ef71f577",
        "clock_motion.png": "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955",
        "page.png": "341a6f0a61557662b02734a9b6e56ec33a915b2c41886b97509dedf2a43b47a3",
        "text.png": "bd84aa3a6e3c9887850d45d606c96b2e59433fbef50338570b63c319e668e6d1",
        "logo.png": "f2c57fe8af089f08b5ba523d95573c26e62904ac5967f4c8851b27d033690168",
        "cell.png": "8d23a7fb81f7cc877cd09f330357fc7f595651306e84e17252f6e0a1b3f61515",
    }.items()
}


def open_photos(pinned: dict[str, WheelFile], cache: Path) -> list[Image.Image]:
    return [Image.open(io.BytesIO(read_pinned(spec, cache))).convert("RGB") for spec in pinned.values()]


def variant(image: Image.Image, rng: random.Random) -> bytes:
    """One varied JPEG of ``image``: a crop of 35-100% of its sides, maybe mirrored, rotated,
    blurred or grey, with brightness, contrast and saturation moved, rescaled 0.4-2x."""
    width, height = image.size
    scale = rng.uniform(0.35, 1.0)
    cw = min(width, max(32, int(width * scale * rng.uniform(0.8, 1.2))))
    ch = min(height, max(32, int(height * scale * rng.uniform(0.8, 1.2))))
    x, y = rng.randint(0, width - cw), rng.randint(0, height - ch)
    img = image.crop((x, y, x + cw, y + ch))
    if rng.random() < 0.5:
        img = ImageOps.mirror(img)
    if rng.random() < 0.3:
        img = img.rotate(rng.uniform(-25, 25), resample=Image.Resampling.BICUBIC, expand=True)
    img = ImageEnhance.Brightness(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Contrast(img).enhance(rng.uniform(0.6, 1.4))
    img = ImageEnhance.Color(img).enhance(rng.uniform(0.0, 1.6))
    if rng.random() < 0.2:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.5, 2.5)))
    factor = rng.uniform(0.4, 2.0)
    img = img.resize((max(16, int(img.width * factor)), max(16, int(img.height * factor))))
    if rng.random() < 0.15:
        img = ImageOps.grayscale(img).convert("RGB")
    out = io.BytesIO()
    img.save(out, "JPEG", quality=rng.randint(50, 95))
    return out.getvalue()


def variants(photos: Sequence[Image.Image], count: int, seed: int) -> Iterator[bytes]:
    """``count`` varied JPEGs, cycling through ``photos``."""
    rng = random.Random(seed)
    for i in range(count):
        yield variant(photos[i % len(photos)], rng)


def calibration_photos(cache: Path) -> list[Image.Image]:
    return open_photos(SAMPLE_PHOTOS, cache)


def check_photos(cache: Path) -> list[Image.Image]:
    """The held-out photos and the sample photos (their variants drawn from another seed)."""
    return open_photos(HELD_OUT_PHOTOS, cache) + open_photos(SAMPLE_PHOTOS, cache)
