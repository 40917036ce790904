"""A job's fidelity: how faithfully each image is brought to the model (x-amz-meta-fidelity).

* ``exact`` (the default): the reference preprocessing, bit for bit: the whole picture decoded
  at full resolution, resized, centre-cropped (images.decode_image).
* ``fast``: a JPEG may decode at 1/2, 1/4 or 1/8 scale in the DCT domain (libjpeg's scaled
  IDCT) as long as its shorter side stays at least FAST_DRAFT_FACTOR times the resize target,
  and a large picture is first shrunk by an integer factor (box filter) down to at least
  FAST_REDUCING_GAP times the target before the model's own resampling. Its agreement with
  ``exact`` is measured by benchmarks/fidelity_agreement.py against the gate below (README,
  "Fidelity: exact or fast").

``engine_for`` is the one place where a fidelity picks its engine: a cheaper engine (int8)
may serve ``fast`` only once its agreement with ``exact`` passes the same gate.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TypeVar


class Fidelity(StrEnum):
    EXACT = "exact"
    FAST = "fast"


DEFAULT_FIDELITY = Fidelity.EXACT

# The draft keeps the shorter side >= 3x the resize target (768 px for 256), the reduce >= 4x
# (1024 px): the model's own bicubic still does the last, larger step. On the benchmark's 1,000
# photos, of the images a rule changed, a draft to 2x flipped the top-1 of 2.3% (98.9% overall:
# a thin margin on a set of big photos), to 3x of 1.7% (99.4%), for 53% and 46% of the decode
# CPU saved; a draft to 1x (1/8 scale on phone photos) saved 61% and failed the gate (94.5%).
# A reduce to 3x flipped 2 of the 26 PNGs it changed, to 4x none, for 3 points less saved on
# them (a drafted JPEG is under 6x the target, so the reduce never touches one).
FAST_DRAFT_FACTOR = 3
FAST_REDUCING_GAP = 4.0

# The gate ``fast`` (and any engine it would use) must pass against ``exact``, on at least
# GATE_MIN_IMAGES varied photos: the same top-1 on TOP1_GATE of them, and top-5 lists sharing
# at least TOP5_MIN_SHARED classes on TOP5_GATE of them.
GATE_MIN_IMAGES = 1000
TOP1_GATE = 0.98
TOP5_MIN_SHARED = 4
TOP5_GATE = 0.99

E = TypeVar("E")


def engine_for(fidelity: Fidelity, exact: E, fast: E | None = None) -> E:
    """The engine that serves ``fidelity``: ``fast``'s own only if one was given (one that
    passed the gate), else the exact engine."""
    return fast if fidelity is Fidelity.FAST and fast is not None else exact
