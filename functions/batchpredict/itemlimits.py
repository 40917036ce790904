"""DynamoDB's item limits, checked before a write: a row DynamoDB would refuse must fail its
own line, not the whole chunk's write on every delivery (moto does not enforce these limits;
DynamoDB and DynamoDB Local do).

Sizes follow AWS's item-size rules ("DynamoDB item sizes and formats"): attribute names and
string values in UTF-8 bytes, a number 1 byte per two significant digits plus 1, null and
boolean 1 byte, a list or map 3 bytes plus 1 byte per element plus its elements.
"""

from __future__ import annotations

import math
from decimal import Decimal
from typing import Any

MAX_ITEM_BYTES = 400 * 1024
MAX_NESTING = 32  # levels of lists and maps inside an item


def item_problem(item: dict[str, Any]) -> str | None:
    """Why DynamoDB would refuse ``item`` (plain JSON-able values), or None.

    Iterative, so a value nested thousands of levels deep is measured, not a RecursionError.
    """
    size = 0
    pending: list[tuple[Any, int]] = []
    for name, value in item.items():
        size += len(name.encode())
        pending.append((value, 2))  # the item is the first level
    while pending:
        value, depth = pending.pop()
        if isinstance(value, dict | list | tuple):
            if depth > MAX_NESTING:
                return f"nested more than {MAX_NESTING} levels deep"
            size += 3 + len(value)
            if isinstance(value, dict):
                size += sum(len(str(key).encode()) for key in value)
                pending.extend((child, depth + 1) for child in value.values())
            else:
                pending.extend((child, depth + 1) for child in value)
        else:
            size += _scalar_size(value)
        if size > MAX_ITEM_BYTES:
            return f"larger than DynamoDB's {MAX_ITEM_BYTES // 1024} KB item limit"
    return None


def _scalar_size(value: Any) -> int:
    if value is None or isinstance(value, bool):
        return 1
    if isinstance(value, int | float | Decimal):
        digits = Decimal(repr(value) if isinstance(value, float) else value).as_tuple().digits
        significant = "".join(map(str, digits)).strip("0") or "0"
        return math.ceil(len(significant) / 2) + 1
    if isinstance(value, bytes):
        return len(value)
    return len(str(value).encode())
