"""Writing an export folder: atomic files, a journal of finished series, resume, disk full.

Every file is written as ``.tmp-<name>`` and renamed, so a file under its final name is
whole. After all files of a series are in place, one line goes into the journal
(``.pacsnode-export.jsonl``) with each file's SHA-256 and size. A resumed export re-checks
the files of every journaled series (size, then hash) and writes again only what is missing
or wrong.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, BinaryIO

from export.errors import DestinationError, DiskFullError, ExportError
from export.writers.base import BlobCopy, OutputFile, SeriesResult
from storage import BlobNotFoundError, BlobStore

JOURNAL = ".pacsnode-export.jsonl"
TEMP_PREFIX = ".tmp-"
_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
_COPY_CHUNK = 1 << 20
_SENDFILE_CHUNK = 1 << 30
COPY_SHARES = 4
"""Tasks a part's files are split into when a thread pool writes them."""


class Journal:
    """The record of finished series in an export folder."""

    def __init__(self, folder: Path, header: Mapping[str, Any]) -> None:
        self.folder = folder
        self.path = folder / JOURNAL
        self.header = dict(header)
        self.done: dict[str, SeriesResult] = {}
        self._stream: Any = None

    def open(self) -> None:
        """Read a previous run's journal (refusing one of another export) and keep it."""
        entries = self._read()
        if entries is None and any(p.name != JOURNAL for p in self.folder.iterdir()):
            raise DestinationError(
                f"{self.folder} is not empty and holds no pacsnode export: choose an empty "
                "or new folder"
            )
        self.done = entries or {}
        # rewrite without a torn last line, atomically, then append from there
        lines = [json.dumps(self.header, sort_keys=True)]
        lines += [_entry_json(uid, result) for uid, result in self.done.items()]
        write_atomic(self.path, ("\n".join(lines) + "\n").encode())
        self._stream = self.path.open("a", encoding="utf-8")

    def _read(self) -> dict[str, SeriesResult] | None:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        lines = text.splitlines()
        try:
            header = json.loads(lines[0]) if lines else None
        except json.JSONDecodeError:
            header = None
        if header != self.header:
            what = (
                f"cohort {header.get('cohort')} as {header.get('format')}"
                if isinstance(header, dict)
                else "another export"
            )
            raise DestinationError(
                f"{self.folder} holds an export of {what}: choose another folder "
                "(or the same cohort and format to resume it)"
            )
        entries: dict[str, SeriesResult] = {}
        for line in lines[1:]:
            try:
                uid, result = _parse_entry(json.loads(line))
            except (json.JSONDecodeError, KeyError, TypeError):
                continue  # a line torn by a crash or a full disk: that series is redone
            entries[uid] = result
        return entries

    def verified(self, series_uid: str, planned: list[str]) -> SeriesResult | None:
        """The journaled result of a series if its files are all there and intact."""
        result = self.done.get(series_uid)
        if result is None:
            return None
        complete = not (result.skipped or result.problems)
        if complete and sorted(f.path for f in result.files) != sorted(planned):
            return None
        for file in result.files:
            if not _intact(self.folder / file.path, file.sha256, file.size):
                return None
        return result

    def add(self, series_uid: str, result: SeriesResult) -> None:
        try:
            self._stream.write(_entry_json(series_uid, result) + "\n")
            self._stream.flush()
        except OSError as exc:
            raise_if_full(exc, self.folder)
            raise
        self.done[series_uid] = result

    def close(self) -> None:
        if self._stream is not None:
            with contextlib.suppress(OSError):
                self._stream.close()
            self._stream = None


def write_files(
    folder: Path, files: Sequence[OutputFile], blobs: BlobStore, pool: Executor | None = None
) -> None:
    """Write export files atomically (temp name, then rename); blobs are copied in the kernel.

    With ``pool``, files are written by its threads at once: copies wait on the disk and the
    kernel's memory copies, not on the GIL, so a few in flight use the machine better.
    """
    base = str(folder)
    for parent in sorted({f.path.rpartition("/")[0] for f in files}):
        try:
            os.makedirs(f"{base}/{parent}", exist_ok=True)  # noqa: PTH103 - str paths, hot path
        except OSError as exc:
            raise_if_full(exc, folder)
            raise

    def write(file: OutputFile) -> None:
        target = f"{base}/{file.path}"
        content = file.content
        if isinstance(content, BlobCopy):
            with open_blob(blobs, content.key, file.path) as source:
                _atomic(target, lambda fd: copy_to_fd(source, fd))
        else:
            _atomic(target, lambda fd: _write_all(fd, content))

    def write_all(share: Sequence[OutputFile]) -> None:
        for file in share:
            write(file)

    if pool is None or len(files) < 2:
        write_all(files)
    else:  # one task per thread's share: a task per file costs more than a small copy
        shares = [files[start::COPY_SHARES] for start in range(COPY_SHARES)]
        for _ in pool.map(write_all, shares):  # re-raises the first failure
            pass


def write_atomic(target: Path, data: bytes) -> None:
    _atomic(str(target), lambda fd: _write_all(fd, data))


def _atomic(target: str, fill: Callable[[int], None]) -> None:
    head, _, name = target.rpartition("/")
    temp = f"{head}/{TEMP_PREFIX}{name}"
    try:
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            fill(fd)
        finally:
            os.close(fd)
        os.replace(temp, target)  # noqa: PTH105 - str paths: pathlib costs too much per file
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)  # noqa: PTH108
        raise_if_full(exc, Path(head))
        raise


def open_blob(blobs: BlobStore, key: str, what: str) -> BinaryIO:
    """Open a blob the catalog points to; a missing one is an :class:`ExportError`."""
    try:
        return blobs.open(key)
    except BlobNotFoundError:
        raise ExportError(
            f"the stored file for {what} is missing from the blob store "
            "(pacsnode verify lists such instances); the export stopped"
        ) from None


def copy_to_fd(source: BinaryIO, fd: int) -> None:
    """Copy a blob into ``fd``: in the kernel (sendfile) when it is a file, else by chunks."""
    try:
        in_fd = source.fileno()
    except (AttributeError, OSError):
        while chunk := source.read(_COPY_CHUNK):
            _write_all(fd, chunk)
        return
    offset = 0
    while sent := os.sendfile(fd, in_fd, offset, _SENDFILE_CHUNK):
        offset += sent


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def raise_if_full(exc: OSError, where: Path) -> None:
    """Turn 'no space left' into :class:`DiskFullError`."""
    if exc.errno in _FULL:
        raise DiskFullError(
            f"the disk holding {where} is full; free some space and run the same export "
            "again: it resumes where it stopped"
        ) from None


def iter_temp_files(folder: Path) -> Iterator[Path]:
    return (p for p in folder.rglob(f"{TEMP_PREFIX}*") if p.is_file())


def _intact(path: Path, sha256: str, size: int) -> bool:
    try:
        if path.stat().st_size != size:
            return False
        digest = hashlib.sha256()
        with path.open("rb") as stream:
            while chunk := stream.read(_COPY_CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == sha256


def _entry_json(series_uid: str, result: SeriesResult) -> str:
    return json.dumps(
        {
            "series": series_uid,
            "skipped": result.skipped,
            "problems": list(result.problems),
            "meta": dict(result.meta),
            "files": [
                {"path": f.path, "sha256": f.sha256, "size": f.size, "meta": dict(f.meta)}
                for f in result.files
            ],
        },
        sort_keys=True,
    )


def _parse_entry(entry: Mapping[str, Any]) -> tuple[str, SeriesResult]:
    files = tuple(
        OutputFile(f["path"], b"", f["sha256"], int(f["size"]), f["meta"]) for f in entry["files"]
    )
    return entry["series"], SeriesResult(
        files=files,
        skipped=entry["skipped"],
        problems=tuple(entry["problems"]),
        meta=entry["meta"],
    )
