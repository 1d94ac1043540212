"""The DIMSE door on loopback: real pynetdicom SCUs against the node's AE, in process."""

from __future__ import annotations

import socket
import struct
from collections.abc import Callable, Iterator
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, StoragePresentationContexts
from pynetdicom import _config as pynetdicom_config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from catalog import CatalogWriter, Database, catalog_stats
from config import DeidSettings, Settings, load_settings
from deid import Deidentified, DeidRejectedError
from ingest import Ingestor, Outcome
from node.app import Core, build_core, configure_libraries
from scp import C_STORE_STATUS, DicomServer, StoreStatus
from storage import FilesystemBlobStore
from tests.dicom_bytes import sample
from tests.synthetic import generate_transfer_syntax_variants

pytestmark = pytest.mark.slow


@pytest.fixture
def scp_settings(tmp_path: Path) -> Settings:
    return load_settings(
        data_dir=tmp_path / "data", dicom_host="127.0.0.1", dicom_port=0, fsync=False
    )


def _serve(settings: Settings) -> Iterator[tuple[DicomServer, Core]]:
    core = build_core(settings)
    server = DicomServer(settings, core.ingestor)
    server.start()
    yield server, core
    server.stop(grace=1)
    core.close()


@pytest.fixture
def running(scp_settings: Settings) -> Iterator[tuple[DicomServer, Core]]:
    """The AE over a de-identifying core."""
    yield from _serve(scp_settings)


@pytest.fixture
def plain_running(scp_settings: Settings) -> Iterator[tuple[DicomServer, Core]]:
    """The AE over a core with de-identification off (stores what it receives)."""
    yield from _serve(scp_settings.model_copy(update={"deid": DeidSettings(enabled=False)}))


def scu(port: int, *, calling: str = "TESTSCU", called: str = "PACSNODE"):  # type: ignore[no-untyped-def]
    ae = AE(ae_title=calling)
    ae.requested_contexts = StoragePresentationContexts[:120]
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title=called)


def store(port: int, *items: Dataset | Path) -> list[int]:
    assoc = scu(port)
    assert assoc.is_established
    try:
        return [int(assoc.send_c_store(item).Status) for item in items]
    finally:
        assoc.release()


def dataset_bytes(raw: bytes) -> bytes:
    """The encoded data set without preamble and file meta (what crossed the wire)."""
    ds = dcmread(__import__("io").BytesIO(raw))
    return raw[len(raw) - _dataset_length(raw, ds) :]


def _dataset_length(raw: bytes, ds: Dataset) -> int:
    meta_group_length = int(ds.file_meta.FileMetaInformationGroupLength)
    return len(raw) - (128 + 4 + 12 + meta_group_length)


def test_echo(running: tuple[DicomServer, Core]) -> None:
    server, _ = running
    assoc = scu(server.port)
    assert int(assoc.send_c_echo().Status) == 0
    assoc.release()


def _push_variants(port: int, tmp_path: Path) -> dict[str, Path]:
    variants = generate_transfer_syntax_variants(tmp_path / "variants")
    assert len(variants) >= 6
    ae = AE(ae_title="TESTSCU")
    for syntax in variants:
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", [syntax])
    assoc = ae.associate("127.0.0.1", port, ae_title="PACSNODE")
    for path in variants.values():
        assert int(assoc.send_c_store(path).Status) == 0
    assoc.release()
    return variants


def test_every_transfer_syntax_is_stored_as_sent_when_deid_is_off(
    plain_running: tuple[DicomServer, Core], tmp_path: Path
) -> None:
    server, core = plain_running
    variants = _push_variants(server.port, tmp_path)
    stored = [p.read_bytes() for p in core.blobs.root.rglob("*.dcm")]
    assert len(stored) == len(variants)
    syntaxes = {str(dcmread(BytesIO(raw)).file_meta.TransferSyntaxUID) for raw in stored}
    assert syntaxes == set(variants)
    sent = {dataset_bytes(path.read_bytes()) for path in variants.values()}
    assert {dataset_bytes(raw) for raw in stored} == sent


def test_every_transfer_syntax_is_deidentified_keeping_syntax_and_pixel_bytes(
    running: tuple[DicomServer, Core], tmp_path: Path
) -> None:
    server, core = running
    variants = _push_variants(server.port, tmp_path)
    stored = {}
    for path in core.blobs.root.rglob("*.dcm"):
        ds = dcmread(path)
        stored[str(ds.SOPInstanceUID)] = ds
    assert len(stored) == len(variants)
    for syntax, path in variants.items():
        sent = dcmread(path)
        kept = stored[core.pseudonymizer.uid(sent.SOPInstanceUID)]
        assert kept.file_meta.TransferSyntaxUID == syntax
        assert kept.PixelData == sent.PixelData, syntax
        assert kept.PatientID == core.pseudonymizer.patient_id(
            sent.PatientID, sent.IssuerOfPatientID
        )
        assert kept.StudyInstanceUID == core.pseudonymizer.uid(sent.StudyInstanceUID)
        assert "PatientAddress" not in kept


def test_success_rows(running: tuple[DicomServer, Core]) -> None:
    server, core = running
    newer = sample()
    newer.SeriesDescription = "second version"
    statuses = store(server.port, sample(), sample(), newer)
    assert statuses == [StoreStatus.SUCCESS] * 3  # stored, duplicate, replaced
    assert catalog_stats(core.db).instances == 1


def test_invalid_data_set_is_cannot_understand(running: tuple[DicomServer, Core]) -> None:
    server, core = running
    bad = sample()
    bad.StudyInstanceUID = "not-a-uid"
    [status] = store(server.port, bad)
    assert status == StoreStatus.CANNOT_UNDERSTAND == 0xC000
    assert catalog_stats(core.db).instances == 0


def test_data_set_other_than_announced_is_mismatch(
    running: tuple[DicomServer, Core], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, core = running
    ds = sample()
    ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.5.6"  # the request announces this one
    path = tmp_path / "mismatch.dcm"
    ds.save_as(path, enforce_file_format=False)
    # Sending a file as it is, pynetdicom builds the request from its file meta.
    monkeypatch.setattr(pynetdicom_config, "STORE_SEND_CHUNKED_DATASET", True)
    ae = AE(ae_title="TESTSCU")
    ae.add_requested_context(ds.SOPClassUID, [ds.file_meta.TransferSyntaxUID])
    assoc = ae.associate("127.0.0.1", server.port, ae_title="PACSNODE")
    status = int(assoc.send_c_store(path).Status)
    assoc.release()
    assert status == StoreStatus.DATA_SET_MISMATCH == 0xA900
    assert catalog_stats(core.db).instances == 0


class _Refuses:
    def deidentify(self, dataset: Dataset) -> Deidentified:
        raise DeidRejectedError("burned-in annotation")


class _Breaks:
    def deidentify(self, dataset: Dataset) -> Deidentified:
        raise RuntimeError("a bug")


def _server_with(settings: Settings, blob_root: Path, db: Database, deid: object) -> DicomServer:
    configure_libraries()
    ingestor = Ingestor(
        deid=deid,  # type: ignore[arg-type]
        blobs=FilesystemBlobStore(blob_root, fsync=False),
        catalog=CatalogWriter(db),
    )
    server = DicomServer(settings, ingestor)
    server.start()
    return server


@pytest.mark.parametrize(
    ("deid", "status", "comment"),
    [
        (_Refuses(), StoreStatus.REFUSED_BY_POLICY, "burned-in annotation"),
        (_Breaks(), StoreStatus.PROCESSING_FAILURE, "internal error (RuntimeError)"),
    ],
)
def test_refusal_and_bug_rows(
    scp_settings: Settings, tmp_path: Path, deid: object, status: StoreStatus, comment: str
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'c.sqlite'}")
    db.migrate()
    server = _server_with(scp_settings, tmp_path / "blobs", db, deid)
    try:
        assoc = scu(server.port)
        response = assoc.send_c_store(sample())
        assoc.release()
    finally:
        server.stop(grace=1)
        db.dispose()
    assert int(response.Status) == status
    assert response.ErrorComment == comment


def test_full_disk_is_out_of_resources(
    scp_settings: Settings,
    tmp_path: Path,
    tiny_filesystem: Path,
) -> None:
    db = Database(f"sqlite:///{tmp_path / 'c.sqlite'}")
    db.migrate()
    from deid import PassThroughDeidentifier

    server = _server_with(scp_settings, tiny_filesystem, db, PassThroughDeidentifier())
    big = sample()
    big.Rows, big.Columns, big.PixelData = 512, 512, b"\0" * (512 * 512 * 2)
    try:
        statuses = store(server.port, big, sample("MR_small.dcm"))
    finally:
        server.stop(grace=1)
    assert statuses == [StoreStatus.OUT_OF_RESOURCES, StoreStatus.SUCCESS]
    assert catalog_stats(db).instances == 1
    db.dispose()


def test_status_table_covers_every_outcome() -> None:
    assert set(C_STORE_STATUS) == set(Outcome)
    assert all(C_STORE_STATUS[o] == StoreStatus.SUCCESS for o in Outcome if o.success)
    assert all(C_STORE_STATUS[o] != StoreStatus.SUCCESS for o in Outcome if not o.success)


def _rejected(assoc_factory: Callable[[], object]) -> bool:
    assoc = assoc_factory()
    return bool(getattr(assoc, "is_rejected", False))


def test_unknown_called_ae_is_rejected(running: tuple[DicomServer, Core]) -> None:
    server, _ = running
    assert _rejected(lambda: scu(server.port, called="SOMEONEELSE"))


def test_calling_ae_allow_list(tmp_path: Path) -> None:
    settings = load_settings(
        data_dir=tmp_path / "data",
        dicom_host="127.0.0.1",
        dicom_port=0,
        fsync=False,
        allowed_calling_aets=["CT_SCANNER"],
    )
    core = build_core(settings)
    server = DicomServer(settings, core.ingestor)
    server.start()
    try:
        assert _rejected(lambda: scu(server.port, calling="INTRUDER"))
        assoc = scu(server.port, calling="CT_SCANNER")
        assert assoc.is_established
        assert int(assoc.send_c_store(sample()).Status) == 0
        assoc.release()
    finally:
        server.stop(grace=1)
        core.close()


def test_truncated_pdu_does_not_hurt_the_node(running: tuple[DicomServer, Core]) -> None:
    server, core = running
    # An A-ASSOCIATE-RQ header announcing 500 bytes, followed by only 20 of them.
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(struct.pack(">BBI", 0x01, 0x00, 500) + b"\x00\x01" + b"\x00" * 18)
    # A P-DATA-TF out of the blue, cut short, inside a valid association's socket.
    assoc = scu(server.port)
    assoc.dul.socket.socket.sendall(struct.pack(">BBI", 0x04, 0x00, 1000) + b"\x00" * 10)  # type: ignore[union-attr]
    assoc.abort()
    assert store(server.port, sample()) == [0]
    assert catalog_stats(core.db).instances == 1
