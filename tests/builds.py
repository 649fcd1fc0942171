"""Builds for tests: a folder of files, as a frontend's `dist/` would be."""

from __future__ import annotations

from pathlib import Path


def make_build(base: Path, files: dict[str, bytes]) -> Path:
    """Write files (relative path → bytes) under base; return base."""
    for relative, content in files.items():
        path = base / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    return base
