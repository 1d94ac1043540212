"""``pacsnode import`` on hostile archives: zip bombs (flat and nested), zips nested 400
deep, members that are not what their name says, damaged archives. Every one ends in a
summary that lists the refused files with their reason, and the peak memory of the import
process stays far below what the archives expand to. The bombs are built here."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file

from config import ImportSettings
from ingest.files import count_inputs, read_inputs
from ingest.headerless import NOT_DICOM
from ingest.spool import EncryptedSpool
from tests.cli_summary import import_outcomes
from tests.dicom_bytes import part10, sample

MIB = 1 << 20
BOMB_BYTES = 512 * MIB
REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Run:
    code: int
    stdout: str
    stderr: str
    peak_mib: float
    """The import process's peak resident memory (its ru_maxrss)."""


def pacsnode_import(tmp_path: Path, *paths: Path, **env: str) -> Run:
    """``python -m node import --list-rejected`` in a child process, with its peak memory."""
    out, err = tmp_path / "stdout.txt", tmp_path / "stderr.txt"
    with out.open("wb") as stdout, err.open("wb") as stderr:
        child = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "node",
                "import",
                *map(str, paths),
                "--data-dir",
                str(tmp_path / "data"),
                "--list-rejected",
                "--create",
            ],
            stdout=stdout,
            stderr=stderr,
            cwd=REPO,
            env={**os.environ, "COLUMNS": "300", **env},
        )
        _, status, usage = os.wait4(child.pid, 0)
        child.returncode = os.waitstatus_to_exitcode(status)
    return Run(child.returncode, out.read_text(), err.read_text(), usage.ru_maxrss / 1024)


def write_member(archive: zipfile.ZipFile, name: str, head: bytes, size: int) -> None:
    """A member of ``size`` bytes: ``head``, then zeros (deflate shrinks them ~1000 times)."""
    zeros = bytes(16 * MIB)
    with archive.open(name, "w", force_zip64=True) as member:
        member.write(head)
        left = size - len(head)
        while left > 0:
            member.write(zeros[: min(left, len(zeros))])
            left -= len(zeros)


DICOM_HEAD = b"\0" * 128 + b"DICM"


@pytest.fixture(scope="module")
def bombs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A zip whose one member (DICM, then zeros) expands to 512 MiB, and a zip holding a zip
    whose member does; each a few hundred KiB."""
    folder = tmp_path_factory.mktemp("bombs")
    flat = folder / "bomb.zip"
    with zipfile.ZipFile(flat, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        archive.writestr("ok/ct.dcm", part10(sample()))
        write_member(archive, "huge.dcm", DICOM_HEAD, BOMB_BYTES)
    nested = folder / "nested.zip"
    with zipfile.ZipFile(nested, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.write(flat, "inner/bomb.zip")
    return {"flat": flat, "nested": nested}


@pytest.fixture(scope="module")
def baseline_mib(tmp_path_factory: pytest.TempPathFactory) -> float:
    """The peak memory of importing one small instance: what the process needs anyway."""
    folder = tmp_path_factory.mktemp("baseline")
    ct = folder / "ct.dcm"
    ct.write_bytes(part10(sample()))
    run = pacsnode_import(folder, ct)
    assert run.code == 0, run.stderr
    return run.peak_mib


def refused(run: Run) -> dict[str, str]:
    """File -> reason, from the ``--list-rejected`` lines of the summary."""
    lines = [line.rsplit(": ", 1) for line in run.stdout.splitlines() if ".zip!" in line]
    return {name.strip(): reason for name, reason in lines}


@pytest.mark.slow
def test_a_member_larger_than_the_limit_is_refused_unread(
    bombs: dict[str, Path], baseline_mib: float, tmp_path: Path
) -> None:
    run = pacsnode_import(tmp_path, bombs["flat"], PACSNODE_IMPORTS__MAX_FILE_BYTES=str(64 * MIB))
    assert run.code == 1, run.stderr
    assert import_outcomes(run.stdout)["stored"] == 1
    assert refused(run) == {
        f"{bombs['flat']}!huge.dcm": f"larger than {64 * MIB:,} bytes (imports.max_file_bytes)"
    }
    assert run.peak_mib < baseline_mib + 64, (run.peak_mib, baseline_mib)


@pytest.mark.slow
def test_a_nested_bomb_is_read_from_an_encrypted_spool_not_from_memory(
    bombs: dict[str, Path], baseline_mib: float, tmp_path: Path
) -> None:
    run = pacsnode_import(tmp_path, bombs["nested"], PACSNODE_IMPORTS__MAX_FILE_BYTES=str(64 * MIB))
    assert run.code == 1, run.stderr
    member = f"{bombs['nested']}!inner/bomb.zip!huge.dcm"
    assert refused(run) == {member: f"larger than {64 * MIB:,} bytes (imports.max_file_bytes)"}
    assert import_outcomes(run.stdout)["stored"] == 1  # the CT beside it, through the spool
    assert run.peak_mib < baseline_mib + 64, (run.peak_mib, baseline_mib)


@pytest.mark.slow
def test_zips_nested_400_deep_stop_at_the_depth_limit(tmp_path: Path) -> None:
    data = part10(sample())
    name = "ct.dcm"
    for level in range(400):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w") as archive:
            archive.writestr(name, data)
        data, name = buffer.getvalue(), f"level{level}.zip"
    deep = tmp_path / "deep.zip"
    deep.write_bytes(data)
    run = pacsnode_import(tmp_path, deep)
    assert run.code == 1, run.stderr
    assert "RecursionError" not in run.stderr + run.stdout
    [(where, why)] = refused(run).items()
    assert where.count("!") == 4  # deep.zip!level398.zip!...!level395.zip: the fifth
    assert why == "zip archive nested more than 4 deep (imports.max_zip_depth)"


@pytest.fixture
def odd_archive(tmp_path: Path) -> Path:
    """Real instances beside a member named .zip that is not one, a text file, a member
    compressed with bzip2, a zip that is cut short, and a headerless instance."""
    broken = io.BytesIO()
    with zipfile.ZipFile(broken, "w") as archive:
        archive.writestr("a.dcm", part10(sample()))
    archive_path = tmp_path / "odd.zip"
    with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("mr.dcm", part10(sample("MR_small.dcm")))
        archive.writestr("export.zip", b"this was meant to be an archive")
        archive.writestr("readme.txt", b"exported by the PACS")
        archive.writestr("rt.dcm", part10(sample("rtplan.dcm")), zipfile.ZIP_BZIP2)
        archive.writestr("cut.zip", broken.getvalue()[:-30])
        archive.writestr("rtstruct.dcm", Path(get_testdata_file("rtstruct.dcm")).read_bytes())
    return archive_path


def test_bad_members_are_refused_files_with_a_reason(odd_archive: Path, tmp_path: Path) -> None:
    run = pacsnode_import(tmp_path, odd_archive)
    assert run.code == 1
    assert "Traceback" not in run.stderr
    assert refused(run) == {
        f"{odd_archive}!export.zip": "named .zip but not a zip archive",
        f"{odd_archive}!readme.txt": NOT_DICOM,
        f"{odd_archive}!rt.dcm": (
            "zip member compressed with method 12 (import reads stored and deflated members)"
        ),
        f"{odd_archive}!cut.zip": "damaged zip member (BadZipFile)",
    }
    assert import_outcomes(run.stdout)["stored"] == 2  # mr.dcm and rtstruct.dcm
    assert "1 file(s) had no preamble or file meta: read as Implicit VR Little Endian" in run.stdout


def test_the_archive_limit_refuses_the_members_beyond_it(tmp_path: Path) -> None:
    names = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm", "rtdose.dcm", "test-SR.dcm")
    archive_path = tmp_path / "five.zip"
    with zipfile.ZipFile(archive_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name in names:
            archive.write(get_testdata_file(name), name)
    sizes = [Path(get_testdata_file(name)).stat().st_size for name in names]
    limits = ImportSettings(max_archive_bytes=sum(sizes[:2]))
    candidates = list(read_inputs([archive_path], limits))
    assert [c.data is not None for c in candidates] == [True, True, False, False, False]
    assert {c.refused for c in candidates[2:]} == {
        f"the archive expands to more than {sum(sizes[:2]):,} bytes (imports.max_archive_bytes)"
    }
    assert count_inputs([archive_path]) == len(names) == sum(c.share for c in candidates)


def test_a_damaged_or_empty_top_level_archive_is_a_refused_file(tmp_path: Path) -> None:
    cut = tmp_path / "cut.zip"
    with zipfile.ZipFile(cut, "w") as archive:
        archive.writestr("a.dcm", part10(sample()))
    cut.write_bytes(cut.read_bytes()[:-30])
    renamed = tmp_path / "image.zip"
    shutil.copy(get_testdata_file("CT_small.dcm"), renamed)
    candidates = list(read_inputs([cut, renamed], ImportSettings()))
    assert [(c.name, c.refused) for c in candidates] == [
        (str(cut), "damaged zip archive (BadZipFile)"),
        (str(renamed), "named .zip but not a zip archive"),
    ]


def test_the_spool_keeps_no_plaintext_on_disk_and_reads_back_anywhere() -> None:
    data = part10(sample())
    assert b"CompressedSamples" in data  # the patient name of CT_small.dcm
    with EncryptedSpool() as spool:
        for start in range(0, len(data), 1000):
            spool.write(data[start : start + 1000])
        spool._file.flush()
        spool._file.seek(0)
        on_disk = spool._file.read()
        assert len(on_disk) == len(data) and b"CompressedSamples" not in on_disk
        reader = spool.reader()
        for start, length in ((0, 132), (5, 17), (len(data) - 40, 100), (4095, 4098)):
            reader.seek(start)
            assert reader.read(length) == data[start : start + length]
