"""``pacsnode import`` accepts what C-STORE accepts: pydicom's data sets saved without preamble
and file meta (implicit VR, explicit VR little and big endian) get the file meta a network
transfer gives them and go through the same validation; other files without a DICM prefix
stay "not a DICOM file"."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from config import ImportSettings, Settings
from ingest import Outcome, Source
from ingest.files import list_files, read_inputs
from ingest.headerless import NOT_DICOM, HeaderlessError, add_file_meta
from node.app import Core, build_core
from scp import DicomServer
from tests.peers import storescu

HEADERLESS = {
    "rtstruct.dcm": "1.2.840.10008.1.2",  # Implicit VR Little Endian
    "ExplVR_LitEndNoMeta.dcm": "1.2.840.10008.1.2.1",
    "ExplVR_BigEndNoMeta.dcm": "1.2.840.10008.1.2.2",
}
# Files of pydicom's test folder without a DICM prefix that are no data sets: text, JSON,
# dcmdump output, an ICC profile, a gzip file, and CT_small.dcm behind one stray byte.
NOT_DATA_SETS = (
    "README.txt",
    "test1.json",
    "test_PN.json",
    "rtplan.dump",
    "rtstruct.dump",
    "crayons.icc",
    "zipMR.gz",
    "no_meta.dcm",
)
SOURCE = Source(door="folder", remote="test")


def pydicom_file(name: str) -> Path:
    return Path(get_testdata_file(name))


@pytest.mark.parametrize(("name", "syntax"), HEADERLESS.items())
def test_a_headerless_data_set_gets_the_file_meta_of_its_detected_syntax(
    name: str, syntax: str
) -> None:
    data = pydicom_file(name).read_bytes()
    stream, found = add_file_meta(data)
    assert found == syntax
    assert stream.endswith(data)
    ds = dcmread(pydicom_file(name), force=True)
    meta = dcmread(BytesIO(stream)).file_meta
    assert meta.TransferSyntaxUID == syntax
    assert meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert meta.MediaStorageSOPClassUID == ds.SOPClassUID


@pytest.mark.parametrize("name", NOT_DATA_SETS)
def test_other_files_without_a_prefix_are_not_dicom(name: str) -> None:
    with pytest.raises(HeaderlessError) as refused:
        add_file_meta(pydicom_file(name).read_bytes())
    assert refused.value.reason == NOT_DICOM


def test_the_folder_imports_the_data_sets_and_refuses_the_rest(core: Core, tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in (*HEADERLESS, *NOT_DATA_SETS):
        shutil.copy(pydicom_file(name), folder)
    results = {}
    for candidate in read_inputs(list_files([folder]), ImportSettings()):
        name = Path(candidate.name).name
        if candidate.data is None:
            results[name] = candidate.refused
            continue
        assert "had no preamble or file meta" in candidate.note
        result = core.ingestor.accept(candidate.data, SOURCE)
        assert result.outcome.success, result.reason
        results[name] = "accepted"
    assert results == {
        **dict.fromkeys(HEADERLESS, "accepted"),
        **dict.fromkeys(NOT_DATA_SETS, NOT_DICOM),
    }


@pytest.fixture
def node(settings: Settings) -> Iterator[tuple[DicomServer, Core]]:
    core = build_core(settings.model_copy(update={"dicom_host": "127.0.0.1"}))
    server = DicomServer(core.settings, core.ingestor)
    server.start()
    yield server, core
    server.stop(grace=1)
    core.close()


@pytest.mark.slow
def test_storescu_then_import_of_a_headerless_file_is_one_instance(
    node: tuple[DicomServer, Core],
) -> None:
    """dcmtk's storescu reads rtstruct.dcm as a data set too and sends it in the syntax it
    detects; importing the file then finds that content already stored."""
    server, core = node
    rtstruct = pydicom_file("rtstruct.dcm")
    assert storescu([rtstruct], port=server.port, aet_called="PACSNODE").ok
    [candidate] = read_inputs([rtstruct], ImportSettings())
    assert candidate.data is not None
    assert core.ingestor.accept(candidate.data, SOURCE).outcome is Outcome.DUPLICATE
