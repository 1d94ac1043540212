"""The peers of :mod:`tests.peers` start, receive what storescu pushes, leave nothing running."""

from __future__ import annotations

import json
import os
import shutil
import socket
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread
from pydicom.data import get_testdata_file

from storage import FilesystemBlobStore
from tests.peers import (
    HOST,
    PeerError,
    bare_receiver,
    dcmtk,
    free_port,
    orthanc,
    pacsnode_process,
    storescp,
    storescu,
)

TEST_FILES = ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm")  # three studies, three SOP classes
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    folder = tmp_path / "send"
    folder.mkdir()
    paths = []
    for name in TEST_FILES:
        source = get_testdata_file(name)
        assert source is not None, name
        paths.append(Path(shutil.copy(source, folder)))
    return paths


def sop_instance_uids(paths: list[Path]) -> set[str]:
    return {str(dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in paths}


def get_json(url: str) -> Any:
    with _http.open(url, timeout=10) as response:
        assert response.status == 200, url
        return json.loads(response.read() or b"null")


def assert_gone(pid: int) -> None:
    """Neither the process nor anything left in its process group still runs."""
    assert not Path(f"/proc/{pid}").exists()
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)


def test_free_port_can_be_bound() -> None:
    with socket.socket() as sock:
        sock.bind((HOST, free_port()))


def test_dcmtk_resolves_to_usr_bin_and_names_missing_tools() -> None:
    assert dcmtk("storescu") == "/usr/bin/storescu"
    with pytest.raises(PeerError, match="no-such-tool"):
        dcmtk("no-such-tool")


@pytest.mark.slow
def test_orthanc_with_dicomweb_receives_from_storescu(tmp_path: Path, files: list[Path]) -> None:
    with orthanc(tmp_path, http_port=free_port(), dicom_port=free_port(), dicomweb=True) as peer:
        assert get_json(f"{peer.url}/system")["DicomAet"] == peer.aet
        assert get_json(f"{peer.url}/dicom-web/studies") in (None, [])

        result = storescu(files, port=peer.dicom_port, aet_called=peer.aet)

        assert result.ok, result.output
        assert (result.files, result.bytes) == (3, sum(f.stat().st_size for f in files))
        assert get_json(f"{peer.url}/statistics")["CountInstances"] == 3
        assert len(get_json(f"{peer.url}/dicom-web/studies")) == 3
    assert_gone(peer.pid)
    assert list(tmp_path.glob("orthanc-storage-*")) == []
    assert peer.log_path.exists()


@pytest.mark.slow
@pytest.mark.parametrize("associations", [1, 2])
def test_storescp_receives_everything(tmp_path: Path, files: list[Path], associations: int) -> None:
    with storescp(tmp_path / "received", port=free_port()) as peer:
        result = storescu(files, port=peer.port, aet_called=peer.aet, associations=associations)
        assert result.ok, result.output
        assert len(result.returncodes) == associations
        assert sop_instance_uids(list(peer.out_dir.iterdir())) == sop_instance_uids(files)
    assert_gone(peer.pid)


@pytest.mark.slow
def test_bare_receiver_writes_what_it_gets(tmp_path: Path, files: list[Path]) -> None:
    with bare_receiver(tmp_path / "received", port=free_port()) as peer:
        result = storescu(files[0].parent, port=peer.port, aet_called=peer.aet, associations=3)
        assert result.ok, result.output
        assert sop_instance_uids(list(peer.out_dir.iterdir())) == sop_instance_uids(files)
    assert_gone(peer.pid)


@pytest.mark.slow
def test_durable_bare_receiver_stores_through_the_blob_store(
    tmp_path: Path, files: list[Path]
) -> None:
    with bare_receiver(tmp_path / "received", port=free_port(), durable=True) as peer:
        result = storescu(files[0].parent, port=peer.port, aet_called=peer.aet)
        assert result.ok, result.output
        store = FilesystemBlobStore(peer.out_dir)
        stored = [store.path_of(key) for key in store.keys(prefix="")]
        assert sop_instance_uids(stored) == sop_instance_uids(files)
        assert not list(store.stale_temporaries(older_than=-1))
    assert_gone(peer.pid)


@pytest.mark.slow
def test_pacsnode_process_answers_and_stops(tmp_path: Path) -> None:
    with pacsnode_process(tmp_path / "data", dicom_port=free_port(), http_port=free_port()) as node:
        assert get_json(f"{node.url}/healthz") is not None
        assert node.terminate() == 0
    assert_gone(node.pid)
    assert node.log_path == tmp_path / "node.log"


@pytest.mark.slow
def test_a_peer_that_cannot_start_reports_its_log(tmp_path: Path) -> None:
    not_a_folder = tmp_path / "index-is-a-file"
    not_a_folder.write_text("")
    broken = {"IndexDirectory": str(not_a_folder)}
    with (
        pytest.raises(PeerError, match=r"(?s)Orthanc exited.*index-is-a-file"),
        orthanc(tmp_path, http_port=free_port(), dicom_port=free_port(), extra_config=broken),
    ):
        pass
    assert list(tmp_path.glob("orthanc-storage-*")) == []
