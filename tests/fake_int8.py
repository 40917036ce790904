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
