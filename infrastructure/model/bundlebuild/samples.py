"""Extract the sample photos (real photos shipped inside scikit-image and scikit-learn wheels).

Usage: python -m bundlebuild.samples --out build/samples [--cache build/wheels]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bundlebuild.registry import WheelFile, read_pinned

SKIMAGE = "scikit-image==0.26.0"
SKLEARN = "scikit-learn==1.9.1"

SAMPLE_PHOTOS = {
    "coffee.png": WheelFile(
        SKIMAGE, "skimage/data/coffee.png", "cc02f8ca188b167c775a7101b5d767d1e71792cf762c33d6fa15a4599b5a8de7"
    ),
    "chelsea.png": WheelFile(
        SKIMAGE,
        "skimage/data/chelsea.png",
        "596aa1e7cb875eb79f437e310381d26b338a81c2da23439704a73c4651e8c4bb",
    ),
    "astronaut.png": WheelFile(
        SKIMAGE,
        "skimage/data/astronaut.png",
        "88431cd9653ccd539741b555fb0a46b61558b301d4110412b5bc28b5e3ea6cb5",
    ),
    "rocket.jpg": WheelFile(
        SKIMAGE, "skimage/data/rocket.jpg", "c2dd0de7c538df8d111e479619b129464d0269d0ae5fd18ca91d33a7fdfea95c"
    ),
    "china.jpg": WheelFile(
        SKLEARN,
        "sklearn/datasets/images/china.jpg",
        "8378025ad2519d649d02e32bd98990db4ab572357d9f09841c2fbfbb4fefad29",
    ),
    "flower.jpg": WheelFile(
        SKLEARN,
        "sklearn/datasets/images/flower.jpg",
        "a77f6ec41e353afdf8bdff2ea981b2955535d8d83294f8cfa49cf4e423dd5638",
    ),
}


# Served beside the photos so the demo can show how a non-image fails (not_an_image).
NOT_A_PHOTO = "not-a-photo.txt"


def extract_samples(out: Path, cache: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, spec in SAMPLE_PHOTOS.items():
        target = out / name
        target.write_bytes(read_pinned(spec, cache))
        written.append(target)
    (out / NOT_A_PHOTO).write_text("This is a text file, not a photo.\n")
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--cache", type=Path, default=Path("build/wheels"))
    args = parser.parse_args()
    for path in extract_samples(args.out, args.cache):
        print(path)


if __name__ == "__main__":
    main()
