"""Read instances from files, folders (recursively) and zip archives, for imports."""

from __future__ import annotations

import zipfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO


def list_files(paths: Iterable[Path]) -> list[Path]:
    """Every file below ``paths`` (folders walked recursively), in a stable order.

    Raises ``FileNotFoundError`` naming the first path that does not exist.
    """
    files: list[Path] = []
    for path in paths:
        if not path.exists():
            raise FileNotFoundError(f"no such file or folder: {path}")
        files.extend(sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path])
    return files


def count_inputs(files: Iterable[Path]) -> int:
    """How many candidate instances ``read_inputs`` will yield (zip members counted)."""
    return sum(_count(file) for file in files)


def read_inputs(files: Iterable[Path]) -> Iterator[tuple[str, bytes]]:
    """``(name, bytes)`` for each file, and for each member of zip archives (also nested)."""
    for file in files:
        if zipfile.is_zipfile(file):
            with zipfile.ZipFile(file) as archive:
                yield from _members(str(file), archive)
        else:
            yield str(file), file.read_bytes()


def _count(file: Path | IO[bytes]) -> int:
    if not zipfile.is_zipfile(file):
        return 1
    with zipfile.ZipFile(file) as archive:
        total = 0
        for info in archive.infolist():
            if info.is_dir():
                continue
            with archive.open(info) as member:
                total += _count(member) if _is_zip_name(info.filename) else 1
        return total


def _members(name: str, archive: zipfile.ZipFile) -> Iterator[tuple[str, bytes]]:
    for info in archive.infolist():
        if info.is_dir():
            continue
        member_name = f"{name}!{info.filename}"
        if _is_zip_name(info.filename):
            with archive.open(info) as member, zipfile.ZipFile(member) as inner:
                yield from _members(member_name, inner)
        else:
            yield member_name, archive.read(info)


def _is_zip_name(name: str) -> bool:
    return name.lower().endswith(".zip")
