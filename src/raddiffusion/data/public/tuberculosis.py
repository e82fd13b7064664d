"""The NLM tuberculosis sets (Shenzhen, Montgomery) as a CSV-manifest dataset.

Both name every radiograph ``<SET>_<NNNN>_<L>.png`` (``CHNCXR`` Shenzhen, ``MCUCXR`` Montgomery): NNNN numbers the
patient, L is 1 for tuberculosis and 0 for normal. The manifest lists each PNG with its patient
as ``subject`` and one label, ``Tuberculosis``; no split column, so the manifest reader splits by patient hash.
"""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from ...fileio import atomic_path
from ..tree import DataError

LABEL = "Tuberculosis"
FILE_NAME = re.compile(r"^(?P<set>CHNCXR|MCUCXR)_(?P<patient>\d+)_(?P<label>[01])\.png$", re.IGNORECASE)


def write_manifest(root: Path, manifest: Path) -> int:
    """Write ``manifest`` listing every tuberculosis-set PNG under ``root``; returns the number of images."""
    rows = []
    for path in sorted(root.rglob("*.png")):
        match = FILE_NAME.match(path.name)
        if match and not any(part.startswith(".") for part in path.relative_to(root).parts):
            rows.append({"path": path.relative_to(root).as_posix(), "subject": int(match["patient"]),
                         LABEL: int(match["label"])})
    if not rows:
        raise DataError(f"{root}: no CHNCXR_NNNN_L.png or MCUCXR_NNNN_L.png radiographs after unpacking")
    table = pd.DataFrame(rows)
    with atomic_path(manifest) as tmp:
        table.to_csv(tmp, index=False)
    return len(table)
