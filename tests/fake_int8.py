"""A bundle with an int8 variant that is the fp32 graph under the int8 names: the engine,
the benchmark and the gate read it like a quantized one, without the minute a real build takes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from batchpredict.bundle import sha256_file
from batchpredict.model import INT8, INT8_PARAMS_ROLE, INT8_SYMBOL_ROLE, Agreement


def add_fake_int8_variant(bundle: Path, agreement: Agreement) -> None:
    doc = json.loads((bundle / "model.json").read_text())
    for kind, role in (("symbol", INT8_SYMBOL_ROLE), ("params", INT8_PARAMS_ROLE)):
        source = bundle / doc["files"][kind]["path"]
        target = bundle / f"int8-{source.name}"
        shutil.copyfile(source, target)
        doc["files"][role] = {
            "path": target.name,
            "sha256": sha256_file(target),
            "bytes": target.stat().st_size,
        }
    doc.setdefault("variants", {})[INT8] = {
        "agreement": agreement.as_json(),
        "measured_on": "Some CPU, VNNI yes",
    }
    (bundle / "model.json").write_text(json.dumps(doc))


def bundle_file_count(bundle: Path) -> int:
    """The files a bundle folder ships: those model.json lists, and model.json (``make model``
    adds the int8 variant's, so a count must come from the bundle, not be fixed)."""
    return len(json.loads((bundle / "model.json").read_text())["files"]) + 1


def remove_int8_variant(bundle: Path) -> None:
    """The bundle as it was before int8 variants (what an older bundle looks like)."""
    doc = json.loads((bundle / "model.json").read_text())
    for role in (INT8_SYMBOL_ROLE, INT8_PARAMS_ROLE):
        entry = doc["files"].pop(role, None)
        if entry is not None:
            (bundle / entry["path"]).unlink()
    doc.get("variants", {}).pop(INT8, None)
    (bundle / "model.json").write_text(json.dumps(doc))
