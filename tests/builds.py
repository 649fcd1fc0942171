"""Builds for tests and benchmarks: a folder of files, as a frontend's `dist/` would be.

make_build is the one writer; the builders elsewhere (tests/integration/conftest.py named_build,
tests/fleet/fab_builds.py salted_build, bench/fleet_bench.py sized_build) make the files dict it writes.
"""

from __future__ import annotations

import shutil
from pathlib import Path


def make_build(base: Path, files: dict[str, bytes], fresh: bool = False) -> Path:
    """Write files (relative path → bytes) under base; return base. fresh=True removes base first."""
    if fresh and base.exists():
        shutil.rmtree(base)
    for relative, content in files.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return base
