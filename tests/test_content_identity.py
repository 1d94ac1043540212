"""One instance through two doors is one instance: its identity is its data set, whatever file
meta (group 0002) a sender wrapped it in, and content the archive already had is a duplicate."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from pydicom.data import get_testdata_file
from sqlalchemy import select, update

from catalog.models import Change, ChangeType, Instance
from ingest import Outcome, Source
from node.app import Core
from tests.cli_summary import import_outcomes
from tests.dicom_bytes import part10, sample
from tests.peers import free_port, pacsnode_process, storescu

SOURCE = Source(door="folder", remote="test")


def other_sender(raw: bytes) -> bytes:
    """``raw`` as another implementation writes it: the same data set, other file meta."""
    ds = sample()
    ds.file_meta.ImplementationClassUID = "1.2.276.0.7230010.3.0.3.6.7"
    ds.file_meta.ImplementationVersionName = "OFFIS_DCMTK_367"
    ds.file_meta.SourceApplicationEntityTitle = "STORESCU"
    rewrapped = part10(ds)
    assert rewrapped != raw
    return rewrapped


def test_the_same_data_set_in_other_file_meta_is_a_duplicate(core: Core) -> None:
    raw = part10(sample())
    assert core.ingestor.accept(raw, SOURCE).outcome is Outcome.STORED
    again = core.ingestor.accept(other_sender(raw), SOURCE)
    assert again.outcome is Outcome.DUPLICATE
    with core.db.read() as session:
        assert session.scalars(select(Instance.version)).one() == 1


def test_the_same_data_set_with_other_sequence_lengths_is_a_duplicate(core: Core) -> None:
    """What dcmtk's storescu does to a file: sequences of undefined length get explicit ones
    (and the other way round)."""
    explicit = sample("rtplan.dcm")
    undefined = sample("rtplan.dcm")
    for element in undefined.iterall():
        if element.VR == "SQ":
            element.is_undefined_length = True
            for item in element.value:
                item.is_undefined_length_sequence_item = True
    assert part10(explicit) != part10(undefined)
    assert core.ingestor.accept(part10(explicit), SOURCE).outcome is Outcome.STORED
    assert core.ingestor.accept(part10(undefined), SOURCE).outcome is Outcome.DUPLICATE


@pytest.mark.parametrize("name", ["CT_small.dcm", "MR_small_implicit.dcm", "MR_small_RLE.dcm"])
def test_other_pixel_data_is_other_content(core: Core, name: str) -> None:
    """Pixel data is a BulkDataURI in the JSON: its bytes count on their own (native, implicit
    VR, encapsulated)."""
    original = sample(name)
    changed = sample(name)
    pixels = bytearray(changed.PixelData)
    pixels[len(pixels) // 2] ^= 0xFF
    changed.PixelData = bytes(pixels)
    assert core.ingestor.accept(part10(original), SOURCE).outcome is Outcome.STORED
    assert core.ingestor.accept(part10(changed), SOURCE).outcome is Outcome.REPLACED


def test_an_instance_indexed_before_content_hashes_is_compared_by_its_blob(core: Core) -> None:
    raw = part10(sample())
    core.ingestor.accept(raw, SOURCE)
    with core.db.write() as session:  # as a catalog migrated from revision 0004 holds it
        session.execute(update(Instance).values(content_sha256=None))
    assert core.ingestor.accept(other_sender(raw), SOURCE).outcome is Outcome.DUPLICATE
    changed = sample()
    changed.SeriesDescription = "corrected"
    assert core.ingestor.accept(part10(changed), SOURCE).outcome is Outcome.REPLACED


def test_content_an_instance_had_before_is_a_duplicate_not_a_new_version(core: Core) -> None:
    first = part10(sample())
    corrected = sample()
    corrected.SeriesDescription = "corrected"
    assert core.ingestor.accept(first, SOURCE).outcome is Outcome.STORED
    assert core.ingestor.accept(part10(corrected), SOURCE).outcome is Outcome.REPLACED
    assert core.ingestor.accept(first, SOURCE).outcome is Outcome.DUPLICATE
    assert core.ingestor.accept(part10(corrected), SOURCE).outcome is Outcome.DUPLICATE
    with core.db.read() as session:
        instance = session.scalars(select(Instance)).one()
        assert instance.version == 2
        assert "corrected" in instance.metadata_json
        replaced = session.scalars(
            select(Change).where(Change.change_type == ChangeType.INSTANCE_REPLACED)
        ).all()
        assert len(replaced) == 1


def pacsnode(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "node", *args], capture_output=True, text=True, timeout=600
    )


@pytest.mark.slow
def test_storescu_then_import_of_the_same_file_is_a_duplicate(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    ct = Path(get_testdata_file("CT_small.dcm"))
    with pacsnode_process(data_dir, dicom_port=free_port(), http_port=free_port()) as node:
        assert storescu([ct], port=node.dicom_port, aet_called="PACSNODE").ok
        imported = pacsnode("import", str(ct), "--data-dir", str(data_dir))
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert import_outcomes(imported.stdout) == {"duplicate": 1}
    catalog = sqlite3.connect(data_dir / "catalog.sqlite")
    try:
        assert catalog.execute("SELECT version, source_door FROM instance").fetchall() == [
            (1, "dimse")
        ]
    finally:
        catalog.close()


@pytest.mark.slow
def test_importing_a_tree_again_gives_only_duplicates(tmp_path: Path) -> None:
    """pydicom's test files hold one SOP Instance UID in up to nine encodings and variants:
    the first import keeps the last as the newest version, the second changes nothing."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for path in Path(get_testdata_file("CT_small.dcm")).parent.glob("*.dcm"):
        shutil.copy(path, tree)
    data_dir = str(tmp_path / "data")
    first = import_outcomes(
        pacsnode("import", str(tree), "--data-dir", data_dir, "--create").stdout
    )
    assert first["stored"] > 10 and first["replaced"] > 10
    second = import_outcomes(pacsnode("import", str(tree), "--data-dir", data_dir).stdout)
    accepted = first["stored"] + first["replaced"] + first["duplicate"]
    assert second["duplicate"] == accepted
    assert second["stored"] == second["replaced"] == 0
