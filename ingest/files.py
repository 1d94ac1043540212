"""Read instances for imports from files, folders (recursively) and zip archives (also
nested), one at a time and within limits.

Only the instance being ingested is ever held in memory. A zip member is checked before it
is read: its declared size (which bounds what :mod:`zipfile` returns) against
``imports.max_file_bytes`` and what is left of ``imports.max_archive_bytes``, and its first
bytes against what a DICOM file starts with. A zip inside a zip is copied to an
:class:`~ingest.spool.EncryptedSpool` (its members are not de-identified yet) and read from
there, at most ``imports.max_zip_depth`` archives deep. Whatever cannot be read is a refused
:class:`Candidate` with the reason, never an exception that ends the import.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final, cast

from config import ImportSettings
from ingest.headerless import NOT_DICOM, HeaderlessError, add_file_meta, is_part10, may_be_data_set
from ingest.spool import EncryptedSpool

_HEAD: Final = 132  # preamble and "DICM"
_ZIP_SIGNATURES: Final = (b"PK\x03\x04", b"PK\x05\x06")  # a member first; an empty archive
_READABLE: Final = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED)
_CHUNK: Final = 1 << 20
# What a damaged archive raises while it is read (zipfile does not wrap them all).
_DAMAGED: Final = (zipfile.BadZipFile, zlib.error, EOFError)


@dataclass(frozen=True)
class Candidate:
    """One file or archive member to import: its Part 10 bytes, or why it is refused."""

    name: str
    data: bytes | None
    """What to ingest (a Part 10 stream); ``None`` when refused."""
    refused: str = ""
    note: str = ""
    """How it was read when not as it is, for the import summary."""
    share: float = 1.0
    """The part of one of :func:`count_inputs`'s inputs it stands for (progress)."""


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
    """How many inputs ``read_inputs`` reads: files, and the members of zip archives (a zip
    inside a zip counts once; its candidates share its part)."""
    total = 0
    for file in files:
        try:
            with file.open("rb") as stream:
                if not _is_zip(stream.read(_HEAD)):
                    total += 1
                    continue
            with zipfile.ZipFile(file) as archive:
                total += sum(1 for info in archive.infolist() if not info.is_dir())
        except (OSError, *_DAMAGED):
            total += 1
    return total


def read_inputs(files: Iterable[Path], limits: ImportSettings) -> Iterator[Candidate]:
    """A :class:`Candidate` for each file, and for each member of zip archives (also nested)."""
    reader = _Reader(limits)
    for file in files:
        yield from reader.file(file)


class _Budget:
    """What one archive (with the archives inside it) may still expand to."""

    def __init__(self, limit: int) -> None:
        self.left = limit

    def charge(self, size: int) -> None:
        self.left -= size


class _Reader:
    def __init__(self, limits: ImportSettings) -> None:
        self.limits = limits

    def file(self, path: Path) -> Iterator[Candidate]:
        name = str(path)
        try:
            with path.open("rb") as stream:
                head = stream.read(_HEAD)
                if _is_zip(head):
                    with zipfile.ZipFile(stream) as archive:
                        budget = _Budget(self.limits.max_archive_bytes)
                        yield from self._archive(name, archive, 1, budget, None)
                    return
                refusal = self._refusal(name, head, path.stat().st_size)
                if refusal:
                    yield Candidate(name, None, refusal)
                    return
                stream.seek(0)
                data = stream.read()
        except _DAMAGED as exc:
            yield Candidate(name, None, f"damaged zip archive ({type(exc).__name__})")
            return
        except OSError as exc:
            yield Candidate(name, None, f"cannot be read ({exc.strerror or type(exc).__name__})")
            return
        yield _candidate(name, data)

    def _archive(
        self,
        name: str,
        archive: zipfile.ZipFile,
        depth: int,
        budget: _Budget,
        share: float | None,
    ) -> Iterator[Candidate]:
        """The archive's candidates; each member counts one input, or in a nested archive
        its part of the ``share`` its archive counted."""
        members = [info for info in archive.infolist() if not info.is_dir()]
        for info in members:
            member = f"{name}!{info.filename}"
            part = 1.0 if share is None else share / len(members)
            try:
                yield from self._member(member, archive, info, depth, budget, part)
            except _DAMAGED as exc:
                yield Candidate(
                    member, None, f"damaged zip member ({type(exc).__name__})", "", part
                )

    def _member(
        self,
        name: str,
        archive: zipfile.ZipFile,
        info: zipfile.ZipInfo,
        depth: int,
        budget: _Budget,
        share: float,
    ) -> Iterator[Candidate]:
        if info.flag_bits & 0x1:
            yield Candidate(name, None, "encrypted zip member (password protected)", "", share)
            return
        if info.compress_type not in _READABLE:
            refusal = (
                f"zip member compressed with method {info.compress_type} "
                "(import reads stored and deflated members)"
            )
            yield Candidate(name, None, refusal, "", share)
            return
        if info.file_size > budget.left:
            refusal = (
                f"the archive expands to more than {self.limits.max_archive_bytes:,} bytes "
                "(imports.max_archive_bytes)"
            )
            yield Candidate(name, None, refusal, "", share)
            return
        with cast(zipfile.ZipExtFile, archive.open(info)) as stream:
            head = stream.peek(_HEAD)[:_HEAD]
            if _is_zip(head):
                yield from self._nested(name, stream, info, depth, budget, share)
                return
            refusal = self._refusal(name, head, info.file_size)
            if refusal:
                yield Candidate(name, None, refusal, "", share)
                return
            data = stream.read()  # at most info.file_size bytes: zipfile stops there
        budget.charge(len(data))
        yield _candidate(name, data, share)

    def _nested(
        self,
        name: str,
        stream: zipfile.ZipExtFile,
        info: zipfile.ZipInfo,
        depth: int,
        budget: _Budget,
        share: float,
    ) -> Iterator[Candidate]:
        if depth >= self.limits.max_zip_depth:
            refusal = (
                f"zip archive nested more than {self.limits.max_zip_depth} deep "
                "(imports.max_zip_depth)"
            )
            yield Candidate(name, None, refusal, "", share)
            return
        with EncryptedSpool() as spool:
            while chunk := stream.read(_CHUNK):
                spool.write(chunk)
            budget.charge(info.file_size)
            with spool.reader() as spooled, zipfile.ZipFile(spooled) as inner:
                yield from self._archive(name, inner, depth + 1, budget, share)

    def _refusal(self, name: str, head: bytes, size: int) -> str:
        """Why a file (or member) starting with ``head`` is not read, if it is not."""
        if name.lower().endswith(".zip"):
            return "named .zip but not a zip archive"
        if not (is_part10(head) or may_be_data_set(head)):
            return NOT_DICOM
        if size > self.limits.max_file_bytes:
            return f"larger than {self.limits.max_file_bytes:,} bytes (imports.max_file_bytes)"
        return ""


def _candidate(name: str, data: bytes, share: float = 1.0) -> Candidate:
    """``data`` as the pipeline takes it: as it is with a DICM prefix, else with the file
    meta a network transfer would have given it."""
    if is_part10(data[:_HEAD]):
        return Candidate(name, data, share=share)
    try:
        stream, syntax = add_file_meta(data)
    except HeaderlessError as exc:
        return Candidate(name, None, exc.reason, share=share)
    note = (
        f"had no preamble or file meta: read as {syntax.name} (detected), "
        "as a C-STORE would have sent it"
    )
    return Candidate(name, stream, note=note, share=share)


def _is_zip(head: bytes) -> bool:
    return head.startswith(_ZIP_SIGNATURES)
