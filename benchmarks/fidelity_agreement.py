"""Fidelity ``fast`` against ``exact``: agreement of the model's answers, and decode CPU saved.

Usage::

    python benchmarks/fidelity_agreement.py --model build/model/efficientnet-lite0 \\
        --samples build/samples --wheels build/wheels [--images 1000] [--seed 18] \\
        [--cache DIR] [--rule DRAFT:GAP ...] [--json FILE]

The photos are built offline, deterministically from ``--seed``: the sample photos and the
freely licensed photos scikit-image's wheel ships (PHOTOS below), each cropped, flipped,
colour-jittered and rescaled to 0.1-24 MP (log-uniform), upscales given sensor-like noise so
that a big picture has fine detail to lose, then encoded as baseline, progressive, grey,
CMYK or EXIF-rotated JPEGs (qualities 50-95, 4:2:0 or 4:4:4) or as PNG or WebP.

Every photo is decoded both ways on this thread (CPU time, alternating which goes first),
and both tensors go through the same engine (a fast tensor equal to the exact one bit for bit
gets the exact one's answer). The gate (fidelity.py): fast's top-1 equals exact's on >= 98%
of the photos, and their top-5 share >= 4 classes on >= 99%. ``--rule DRAFT:GAP`` adds a
candidate rule beside production's (draft to >= DRAFT x the resize target, 0 for none; reduce
down to GAP x, "none" for no reduce), to see what each saves and what it costs.
Exit status 1 if the production rule fails the gate.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import random
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageChops, ImageEnhance, ImageOps

from batchpredict import images
from batchpredict.bundle import resolve_bundle
from batchpredict.fidelity import (
    FAST_DRAFT_FACTOR,
    FAST_REDUCING_GAP,
    TOP1_GATE,
    TOP5_GATE,
    TOP5_MIN_SHARED,
    Fidelity,
)
from batchpredict.images import Preprocess, decode_image
from batchpredict.model import Engine, cpu_info, load_model

# Freely licensed photos inside the scikit-image wheel the sample photos come from (its
# skimage/data docstrings): camera, brick, gravel, grass, retina CC0; coins, ihc "no known
# copyright restrictions"; hubble_deep_field NASA, public domain; clock_motion public domain.
SKIMAGE = "scikit-image==0.26.0"
PHOTOS = {
    "camera.png": "b0793d2adda0fa6ae899c03989482bff9a42d3d5690fc7e3648f2795d730c23a",
    "coins.png": "f8d773fc9cfa6f4d8e5942dc34d0a0788fcaed2a4fefbbed0aef5398d7ef4cba",
    "brick.png": "7966caf324f6ba843118d98f7a07746d22f6a343430add0233eca5f6eaaa8fcf",
    "grass.png": "b6b6022426b38936c43a4ac09635cd78af074e90f42ffa8227ac8b7452d39f89",
    "gravel.png": "c48615b451bf1e606fbd72c0aa9f8cc0f068ab7111ef7d93bb9b0f2586440c12",
    "hubble_deep_field.jpg": "3a19c5dd8a927a9334bb1229a6d63711b1c0c767fb27e2286e7c84a3e2c2f5f4",
    "ihc.png": "f8dd1aa387ddd1f49d8ad13b50921b237df8e9b262606d258770687b0ef93cef",
    "retina.jpg": "38a07f36f27f095e818aea7b96d34202c05176d30253c66733f2e00379e9e0e6",
    "clock_motion.png": "f029226b28b642e80113d86622e9b215ee067a0966feaf5e60604a1e05733955",
}
SAMPLE_SUFFIXES = (".jpg", ".jpeg", ".png")
MIN_MP, MAX_MP = 0.1, 24.0
BATCH = 16

# What each photo is stored as, and how often (weights).
KINDS = {
    "jpeg": 50,
    "jpeg-progressive": 14,
    "jpeg-grey": 8,
    "jpeg-cmyk": 6,
    "jpeg-exif-rotated": 8,
    "png": 7,
    "webp": 7,
}
SIZE_BUCKETS = ((0.0, 1.0), (1.0, 4.0), (4.0, 12.0), (12.0, 1e9))


@dataclass(frozen=True)
class Rule:
    """How a fast decode shrinks: draft a JPEG to >= draft x the resize target (0: no draft),
    reduce by an integer factor down to gap x the target (None: no reduce)."""

    draft: int
    gap: float | None

    @property
    def name(self) -> str:
        draft = f"draft>={self.draft}x" if self.draft else "no draft"
        return f"{draft}, " + (f"reduce>={self.gap:g}x" if self.gap else "no reduce")

    @classmethod
    def parse(cls, text: str) -> Rule:
        draft, _, gap = text.partition(":")
        return cls(int(draft), None if gap in ("", "none") else float(gap))


PRODUCTION = Rule(FAST_DRAFT_FACTOR, FAST_REDUCING_GAP)


@dataclass(frozen=True)
class Photo:
    name: str
    kind: str
    megapixels: float
    data: bytes


# --------------------------------------------------------------------------------------------
# The photos


def source_photos(samples: Path, wheels: Path | None) -> list[tuple[str, Image.Image]]:
    """The sample photos, and the wheel's (when ``wheels`` holds it), as RGB pictures."""
    found = [
        (p.name, _rgb(p.read_bytes()))
        for p in sorted(samples.iterdir())
        if p.suffix.lower() in SAMPLE_SUFFIXES
    ]
    if wheels is not None:
        from bundlebuild.registry import WheelFile, read_pinned

        for name, sha in PHOTOS.items():
            found.append((name, _rgb(read_pinned(WheelFile(SKIMAGE, f"skimage/data/{name}", sha), wheels))))
    return found


def _rgb(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as image:
        return image.convert("RGB")


def build_photo(
    index: int,
    sources: Sequence[tuple[str, Image.Image]],
    seed: int,
    max_mp: float = MAX_MP,
    min_mp: float = MIN_MP,
) -> Photo:
    """Photo ``index`` of the set: the same bytes for the same seed and sources."""
    rng = random.Random(f"{seed}:{index}")
    name, source = sources[index % len(sources)]
    picture = _varied(source, rng)
    megapixels = math.exp(rng.uniform(math.log(min_mp), math.log(max_mp)))
    kind = rng.choices(list(KINDS), weights=list(KINDS.values()))[0]
    if kind == "webp":
        megapixels = min(megapixels, 16.0)  # WebP's 16383 px side
    picture = _rescaled(picture, megapixels, rng)
    data = _encoded(picture, kind, rng)
    return Photo(f"{index:05d}-{name.rsplit('.', 1)[0]}", kind, picture.width * picture.height / 1e6, data)


def _varied(source: Image.Image, rng: random.Random) -> Image.Image:
    """A crop (30-100% of the area, aspect 0.5-2x the source's), maybe mirrored, colour jittered."""
    width, height = source.size
    area = rng.uniform(0.3, 1.0) * width * height
    aspect = width / height * math.exp(rng.uniform(math.log(0.5), math.log(2.0)))
    w = min(width, max(16, round(math.sqrt(area * aspect))))
    h = min(height, max(16, round(math.sqrt(area / aspect))))
    left, top = rng.randint(0, width - w), rng.randint(0, height - h)
    picture = source.crop((left, top, left + w, top + h))
    if rng.random() < 0.5:
        picture = ImageOps.mirror(picture)
    for enhance in (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color):
        picture = enhance(picture).enhance(rng.uniform(0.8, 1.2))
    return picture


def _rescaled(picture: Image.Image, megapixels: float, rng: random.Random) -> Image.Image:
    scale = math.sqrt(megapixels * 1e6 / (picture.width * picture.height))
    size = (max(8, round(picture.width * scale)), max(8, round(picture.height * scale)))
    resampling = rng.choice([Image.Resampling.BICUBIC, Image.Resampling.LANCZOS, Image.Resampling.BILINEAR])
    picture = picture.resize(size, resampling)
    if scale > 1.5:
        # An upscale is smoother than a camera's photo of that size: give it a sensor's grain.
        sigma = rng.uniform(2.0, 6.0)
        noise = Image.merge("RGB", [Image.effect_noise(size, sigma) for _ in range(3)])
        picture = ImageChops.add(picture, noise, scale=1.0, offset=-128)
    return picture


def _encoded(picture: Image.Image, kind: str, rng: random.Random) -> bytes:
    out = io.BytesIO()
    quality = rng.randint(50, 95)
    if kind == "png":
        picture.save(out, "PNG", compress_level=1)
    elif kind == "webp":
        picture.save(out, "WEBP", quality=quality, method=0)
    else:
        options: dict[str, Any] = {"quality": quality, "subsampling": rng.choice([0, 2, 2, 2])}
        if kind == "jpeg-progressive":
            options["progressive"] = True
        elif kind == "jpeg-grey":
            picture = picture.convert("L")
        elif kind == "jpeg-cmyk":
            picture = picture.convert("CMYK")
        elif kind == "jpeg-exif-rotated":
            orientation = rng.choice([3, 6, 8])
            # Stored turned back, so that shown as EXIF says it is the picture itself.
            picture = picture.transpose(
                {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270}[
                    orientation
                ]
            )
            exif = Image.Exif()
            exif[0x0112] = orientation
            options["exif"] = exif.tobytes()
        picture.save(out, "JPEG", **options)
    return out.getvalue()


def photo_set(
    count: int,
    sources: Sequence[tuple[str, Image.Image]],
    seed: int,
    cache: Path | None = None,
    max_mp: float = MAX_MP,
    min_mp: float = MIN_MP,
) -> Iterator[Photo]:
    """The set, one photo at a time (built, or read from ``cache`` where an earlier run left it)."""
    for index in range(count):
        stored = None
        if cache is not None:
            meta = cache / f"{seed}-{index:05d}.json"
            if meta.exists():
                info = json.loads(meta.read_text())
                stored = Photo(
                    info["name"], info["kind"], info["megapixels"], (cache / info["file"]).read_bytes()
                )
        photo = stored or build_photo(index, sources, seed, max_mp, min_mp)
        if stored is None and cache is not None:
            cache.mkdir(parents=True, exist_ok=True)
            file = f"{seed}-{index:05d}.bin"
            (cache / file).write_bytes(photo.data)
            info = {"name": photo.name, "kind": photo.kind, "megapixels": photo.megapixels, "file": file}
            (cache / f"{seed}-{index:05d}.json").write_text(json.dumps(info))
        yield photo


# --------------------------------------------------------------------------------------------
# Decoding and agreement

Tensor = npt.NDArray[np.float32]


def fast_decoder(rule: Rule, preprocess: Preprocess) -> Callable[[bytes], Tensor]:
    """The production fast decode for PRODUCTION, else the same steps with ``rule``'s numbers."""
    if rule == PRODUCTION:
        return lambda data: decode_image(data, preprocess, fidelity=Fidelity.FAST).tensor

    def decode(data: bytes) -> Tensor:
        draft_to = rule.draft * preprocess.resize_shorter if rule.draft else None
        image, _, _ = images._load(data, images.DEFAULT_MAX_PIXELS, draft_to, None)
        return images._to_tensor(image, preprocess, rule.gap)

    return decode


def exact_decoder(preprocess: Preprocess) -> Callable[[bytes], Tensor]:
    return lambda data: decode_image(data, preprocess).tensor


def timed(decode: Callable[[bytes], Tensor], data: bytes) -> tuple[Tensor, float]:
    """The tensor and the CPU milliseconds this thread spent on it."""
    started = time.thread_time()
    tensor = decode(data)
    return tensor, (time.thread_time() - started) * 1000


@dataclass
class Tally:
    """Agreement of one rule with exact over a set of photos."""

    images: int = 0
    changed: int = 0  # fast's tensor differs from exact's
    top1_same: int = 0
    shared: Counter[int] = field(default_factory=Counter)  # top-5 classes in common -> photos
    exact_ms: float = 0.0
    fast_ms: float = 0.0
    top1_drift: list[float] = field(default_factory=list)  # |p fast - p exact| of exact's top-1

    def add(self, exact_top: Sequence[int], fast_top: Sequence[int], changed: bool, drift: float) -> None:
        self.images += 1
        self.changed += changed
        self.top1_same += int(exact_top[0] == fast_top[0])
        self.shared[len(set(exact_top[:5]) & set(fast_top[:5]))] += 1
        self.top1_drift.append(drift)

    @property
    def top1(self) -> float:
        return self.top1_same / self.images if self.images else 1.0

    @property
    def top5(self) -> float:
        return (
            sum(n for k, n in self.shared.items() if k >= TOP5_MIN_SHARED) / self.images
            if self.images
            else 1.0
        )

    @property
    def passes(self) -> bool:
        return self.top1 >= TOP1_GATE and self.top5 >= TOP5_GATE

    def as_dict(self) -> dict[str, Any]:
        return {
            "images": self.images,
            "changed": self.changed,
            "top1_agreement": round(self.top1, 4),
            "top5_shared_4_or_more": round(self.top5, 4),
            "top5_shared": {str(k): self.shared[k] for k in range(5, -1, -1)},
            "exact_decode_cpu_ms": round(self.exact_ms / max(self.images, 1), 2),
            "fast_decode_cpu_ms": round(self.fast_ms / max(self.images, 1), 2),
            "top1_probability_drift_p50": round(_quantile(self.top1_drift, 0.5), 4),
            "top1_probability_drift_p99": round(_quantile(self.top1_drift, 0.99), 4),
            "passes_gate": bool(self.passes),
        }


def _quantile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


@dataclass
class Pending:
    photo: Photo
    exact: Tensor
    fast: list[Tensor]
    exact_ms: float
    fast_ms: list[float]


def measure(
    engine: Engine, photos: Iterator[Photo], rules: Sequence[Rule], fast_engine: Engine | None = None
) -> dict[Rule, dict[str, Tally]]:
    """Decode every photo exactly and by each rule, infer, and tally: overall, by kind, by size.

    ``fast_engine``: the engine fast would use (fidelity.engine_for), e.g. an int8 one; its
    answers on the fast tensors are held against ``engine``'s on the exact ones, the same gate."""
    preprocess = engine.spec.preprocess
    exact = exact_decoder(preprocess)
    fast = [fast_decoder(rule, preprocess) for rule in rules]
    tallies: dict[Rule, dict[str, Tally]] = {rule: {} for rule in rules}
    pending: list[Pending] = []
    for number, photo in enumerate(photos):
        decodes = [exact, *fast]
        order = range(len(decodes)) if number % 2 == 0 else reversed(range(len(decodes)))
        out: dict[int, tuple[Tensor, float]] = {i: timed(decodes[i], photo.data) for i in order}
        pending.append(
            Pending(
                photo,
                out[0][0],
                [out[i + 1][0] for i in range(len(fast))],
                out[0][1],
                [out[i + 1][1] for i in range(len(fast))],
            )
        )
        if len(pending) == BATCH:
            _tally(engine, fast_engine, pending, rules, tallies)
            pending = []
    _tally(engine, fast_engine, pending, rules, tallies)
    return tallies


def _tally(
    engine: Engine,
    fast_engine: Engine | None,
    batch: list[Pending],
    rules: Sequence[Rule],
    tallies: dict[Rule, dict[str, Tally]],
) -> None:
    if not batch:
        return
    exact_p = engine.probabilities(np.stack([p.exact for p in batch]))
    for r, rule in enumerate(rules):
        changed = [not np.array_equal(p.exact, p.fast[r]) for p in batch]
        fast_p = exact_p.copy()
        # The same tensor through the same engine gives the same answer: infer only the others.
        rows = [i for i, c in enumerate(changed) if c or fast_engine is not None]
        if rows:
            fast_p[rows] = (fast_engine or engine).probabilities(np.stack([batch[i].fast[r] for i in rows]))
        for i, pending in enumerate(batch):
            exact_top = [int(c) for c in np.argsort(-exact_p[i])[:5]]
            fast_top = [int(c) for c in np.argsort(-fast_p[i])[:5]]
            drift = float(abs(fast_p[i][exact_top[0]] - exact_p[i][exact_top[0]]))
            photo = pending.photo
            for key in ("all", f"kind {photo.kind}", f"size {_bucket(photo.megapixels)}"):
                tally = tallies[rule].setdefault(key, Tally())
                tally.add(exact_top, fast_top, changed[i], drift)
                tally.exact_ms += pending.exact_ms
                tally.fast_ms += pending.fast_ms[r]


def _bucket(megapixels: float) -> str:
    for low, high in SIZE_BUCKETS:
        if low <= megapixels < high:
            return f"{low:g}-{high:g} MP" if high < 1e9 else f">={low:g} MP"
    return "?"


# --------------------------------------------------------------------------------------------
# Report


def machine() -> str:
    info = cpu_info()
    load = os.getloadavg()
    return (
        f"CPU: {info.get('model name', '?')} ({os.cpu_count()} CPUs); "
        f"load {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


def table(rule: Rule, tallies: dict[str, Tally]) -> str:
    lines = [
        f"fast rule: {rule.name}{' (production)' if rule == PRODUCTION else ''}",
        f"{'photos':<22}{'n':>6}{'changed':>9}{'top-1 %':>9}{'top-5 shared 5/4/3/2/1/0':>28}"
        f"{'>=4 %':>8}{'exact ms':>10}{'fast ms':>9}{'saved':>7}{'dp p99':>8}",
    ]
    for key in sorted(tallies, key=lambda k: (k != "all", k)):
        t = tallies[key]
        shared = "/".join(str(t.shared[k]) for k in range(5, -1, -1))
        exact_ms, fast_ms = t.exact_ms / t.images, t.fast_ms / t.images
        lines.append(
            f"{key:<22}{t.images:>6}{t.changed:>9}{100 * t.top1:>9.2f}{shared:>28}{100 * t.top5:>8.2f}"
            f"{exact_ms:>10.1f}{fast_ms:>9.1f}{1 - fast_ms / exact_ms if exact_ms else 0:>7.0%}"
            f"{_quantile(t.top1_drift, 0.99):>8.3f}"
        )
    overall = tallies.get("all", Tally())
    verdict = "PASS" if overall.passes else "FAIL"
    lines.append(
        f"gate (top-1 >= {TOP1_GATE:.0%}, top-5 sharing >= {TOP5_MIN_SHARED}"
        f" on >= {TOP5_GATE:.0%}): {verdict}"
    )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", type=Path, default=Path("build/model/efficientnet-lite0"))
    parser.add_argument("--samples", type=Path, default=Path("build/samples"))
    parser.add_argument("--wheels", type=Path, default=Path("build/wheels"), help="'' for the samples only")
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--cache", type=Path, help="Keep the built photos here for the next run.")
    parser.add_argument("--rule", action="append", default=[], metavar="DRAFT:GAP", help="A candidate rule.")
    parser.add_argument("--max-megapixels", type=float, default=MAX_MP, help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="Write the tallies as JSON here.")
    parser.add_argument(
        "--build-only", action="store_true", help="Only fill --cache (e.g. niced, outside a measurement)."
    )
    args = parser.parse_args(argv)
    rules = [PRODUCTION, *(r for r in map(Rule.parse, args.rule) if r != PRODUCTION)]
    wheels = args.wheels if str(args.wheels) not in ("", ".") else None
    sources = source_photos(args.samples, wheels)
    if args.build_only:
        built = sum(1 for _ in photo_set(args.images, sources, args.seed, args.cache, args.max_megapixels))
        print(f"{built} photos in {args.cache}")
        return 0
    engine = load_model(resolve_bundle(str(args.model)), max_batch=BATCH)
    print(machine())
    print(
        f"{args.images} photos (seed {args.seed}) from {len(sources)} sources:"
        f" {', '.join(n for n, _ in sources)}"
    )
    started = time.monotonic()
    tallies = measure(
        engine, photo_set(args.images, sources, args.seed, args.cache, args.max_megapixels), rules
    )
    print(f"measured in {time.monotonic() - started:.0f} s; decode ms: CPU of one thread, per photo\n")
    for rule in rules:
        print(table(rule, tallies[rule]) + "\n")
    print(machine())
    if args.json:
        doc = {rule.name: {k: t.as_dict() for k, t in tallies[rule].items()} for rule in rules}
        args.json.write_text(json.dumps(doc, indent=2))
    return 0 if tallies[PRODUCTION].get("all", Tally()).passes else 1


if __name__ == "__main__":
    sys.exit(main())
