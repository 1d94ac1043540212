"""STOW-RS against a running node, with the bodies real clients send (dicomweb-client, curl,
requests; single part as Google's Cloud Healthcare API takes it) and hostile ones: empty,
absurd boundaries, thousands of empty parts, a 200 MB part. The body is spooled to disk
encrypted, so no received (not yet de-identified) byte is readable there."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset

from dicomweb.media import BadMultipartError, body_reader
from dicomweb.stow import summarize
from ingest.spool import EncryptedSpool
from tests.dicom_bytes import part10
from tests.liveness import stays_responsive
from tests.peers import NodeProcess, free_ports, pacsnode_process

pytestmark = pytest.mark.slow

DICOM = "application/dicom"
PHI_NAME = "SPOOLTEST^PATIENT^PHI"


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("stow")


@pytest.fixture(scope="module")
def node(root: Path) -> Iterator[NodeProcess]:
    dicom_port, http_port = free_ports(2)
    with pacsnode_process(
        root / "data", dicom_port=dicom_port, http_port=http_port, env={"PACSNODE_FSYNC": "0"}
    ) as running:
        yield running


@pytest.fixture(scope="module")
def url(node: NodeProcess) -> str:
    return f"{node.url}/dicom-web"


def pydicom_file(name: str = "CT_small.dcm") -> bytes:
    return Path(get_testdata_file(name)).read_bytes()


def instance_of(name: str, **changes: Any) -> Dataset:
    """A pydicom test file with new UIDs (so each test stores something new) and changes."""
    from pydicom.uid import generate_uid

    ds = dcmread(get_testdata_file(name))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    return ds


def multipart(parts: list[bytes], boundary: str = "b0undary", part_type: str = DICOM) -> bytes:
    head = f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() if part_type else b""
    if not part_type:
        head = f"--{boundary}\r\n\r\n".encode()
    body = b"".join(head + part + b"\r\n" for part in parts)
    return body + f"--{boundary}--\r\n".encode()


def post(url: str, body: bytes | Iterator[bytes], content_type: str) -> requests.Response:
    return requests.post(
        f"{url}/studies",
        data=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
        timeout=120,
    )


def referenced(response: requests.Response) -> list[str]:
    answer = response.json()
    return [item["00081155"]["Value"][0] for item in answer.get("00081199", {}).get("Value", [])]


def stored(url: str, response: requests.Response) -> list[dict[str, Any]]:
    """The QIDO rows of the instances a STOW answer names."""
    rows = []
    for sop in referenced(response):
        found = requests.get(f"{url}/instances?SOPInstanceUID={sop}", timeout=30)
        assert found.status_code == 200
        rows.extend(found.json())
    return rows


# ------------------------------------------------------------- the reader and the spool alone


def _spool_files_of(pid: str, folder: Path) -> list[Path]:
    """The open files of process ``pid`` that live (or lived, unnamed) in ``folder``."""
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith(f"{folder}/"):
            found.append(Path(f"/proc/{pid}/fd/{fd}"))
    return found


def _fds_under(folder: Path) -> list[Path]:
    return _spool_files_of("self", folder)


def test_spool_gives_back_any_range_and_holds_only_ciphertext(tmp_path: Path) -> None:
    data = (PHI_NAME.encode() + os.urandom(1000)) * 3000
    with EncryptedSpool(tmp_path / "spool") as spool:
        for start in range(0, len(data), 65_537):
            spool.write(memoryview(data)[start : start + 65_537])
        assert spool.size == len(data)
        for offset, length in [(0, 0), (0, len(data)), (1, 15), (17, 100_003), (len(data) - 5, 5)]:
            assert spool.read(offset, length) == data[offset : offset + length]
        (on_disk,) = _fds_under(tmp_path / "spool")
        content = on_disk.read_bytes()
        assert len(content) == len(data)
        assert PHI_NAME.encode() not in content
        (named,) = (tmp_path / "spool").iterdir()  # named after its process (pacsnode verify)
        assert f"_{os.getpid()}_" in named.name and named.read_bytes() == content
        with pytest.raises(ValueError, match="outside"):
            spool.read(len(data) - 1, 2)
    assert not _fds_under(tmp_path / "spool")
    assert not any((tmp_path / "spool").iterdir())


@pytest.mark.parametrize("chunk", [1, 7, 70, 4096, 1 << 20])
def test_multipart_reader_finds_the_same_parts_however_the_body_is_cut(chunk: int) -> None:
    parts = [b"", b"\r\n--b0undar", b"--b0undary", b"x" * 10_000, b"\r\n--b0undary-"]
    body = b"a preamble\r\n" + multipart(parts) + b"an epilogue"
    spool = EncryptedSpool()
    reader = body_reader("multipart/related; boundary=b0undary", spool.write)
    for start in range(0, len(body), chunk):
        reader.write(body[start : start + chunk])
    found = reader.finish()
    assert [spool.read(p.offset, p.length) for p in found] == parts
    assert {p.content_type for p in found} == {DICOM}
    spool.close()


def test_multipart_reader_refuses_a_cut_body() -> None:
    reader = body_reader("multipart/related; boundary=b0undary", lambda data: None)
    reader.write(multipart([b"abc"])[:-5])
    with pytest.raises(BadMultipartError, match="truncated"):
        reader.finish()


def test_summary_counts_each_reason_and_names_the_first_parts() -> None:
    failures = [(n, "empty") for n in range(1, 10_001)] + [(10_001, "odd")]
    failures += [(10_001 + n, f"reason {n}") for n in range(1, 8)]
    lines = summarize(failures)
    assert lines[0] == "10000 parts (1, 2, 3 and 9997 more): empty"
    assert lines[1] == "part 10001: odd"
    assert len(lines) == 6
    assert lines[-1].startswith("4 parts for 4 other reasons")
    assert summarize([(2, "x"), (5, "x")]) == ["2 parts (2, 5): x"]


# ------------------------------------------------------------------------- accepted bodies


def test_single_part_application_dicom_as_google_healthcare_takes_it(url: str) -> None:
    body = part10(instance_of("CT_small.dcm"))
    response = post(url, body, DICOM)
    assert response.status_code == 200, response.text
    assert len(referenced(response)) == 1
    assert len(stored(url, response)) == 1


def test_single_part_with_curl(url: str, tmp_path: Path) -> None:
    path = tmp_path / "mr.dcm"
    path.write_bytes(part10(instance_of("MR_small.dcm")))
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/dicom",
            "-H",
            "Accept: application/dicom+json",
            "--data-binary",
            f"@{path}",
            "-o",
            str(tmp_path / "answer.json"),
            "-w",
            "%{http_code}",
            f"{url}/studies",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert result.stdout == "200"
    assert "00081199" in (tmp_path / "answer.json").read_text()


def test_multipart_without_the_type_parameter(url: str) -> None:
    body = multipart([part10(instance_of("CT_small.dcm")), part10(instance_of("MR_small.dcm"))])
    response = post(url, body, "multipart/related; boundary=b0undary")
    assert response.status_code == 200, response.text
    assert len(stored(url, response)) == 2


def test_multipart_with_quoted_boundary_and_parameters_in_any_case(url: str) -> None:
    body = multipart([part10(instance_of("CT_small.dcm"))], boundary="a:b=c")
    content_type = 'Multipart/Related; Boundary="a:b=c"; TYPE="application/dicom"'
    response = post(url, body, content_type)
    assert response.status_code == 200, response.text


def test_parts_without_a_content_type_are_read_as_dicom(url: str) -> None:
    body = multipart([part10(instance_of("CT_small.dcm"))], part_type="")
    response = post(url, body, "multipart/related; boundary=b0undary")
    assert response.status_code == 200, response.text


def test_dicomweb_client_store_instances_of_pydicom_files(url: str) -> None:
    client = DICOMwebClient(url)
    datasets = [instance_of(name) for name in ("CT_small.dcm", "MR_small_RLE.dcm", "rtplan.dcm")]
    answer = client.store_instances(datasets)
    assert len(answer.ReferencedSOPSequence) == 3
    assert "FailedSOPSequence" not in answer


def test_a_boundary_longer_than_rfc_2046_allows_is_still_read(url: str) -> None:
    boundary = "x" * 200  # RFC 2046: at most 70; some clients send more
    body = multipart([part10(instance_of("CT_small.dcm"))], boundary=boundary)
    response = post(url, body, f"multipart/related; type={DICOM}; boundary={boundary}")
    assert response.status_code == 200, response.text


# ------------------------------------------------------------------------- refused bodies


@pytest.mark.parametrize(
    "content_type", [DICOM, f'multipart/related; type="{DICOM}"; boundary=b0undary']
)
def test_empty_body_is_400_with_a_reason(url: str, content_type: str) -> None:
    response = post(url, b"", content_type)
    assert response.status_code == 400
    assert "empty" in response.json()["detail"]


def test_multipart_without_parts_is_400(url: str) -> None:
    response = post(url, b"--b0undary--\r\n", "multipart/related; boundary=b0undary")
    assert response.status_code == 400
    assert "no instances" in response.json()["detail"]


def test_absurd_boundary_is_400_with_a_reason(node: NodeProcess, url: str) -> None:
    boundary = "x" * 5000
    body = multipart([part10(instance_of("CT_small.dcm"))], boundary=boundary)
    with stays_responsive(node):
        response = post(url, body, f"multipart/related; type={DICOM}; boundary={boundary}")
    assert response.status_code == 400
    assert "boundary" in response.json()["detail"]
    assert "x" * 100 not in response.text


@pytest.mark.parametrize(
    "content_type",
    ["application/dicom+json", "text/plain", "", f'multipart/related; type="{DICOM}+json"'],
)
def test_other_content_types_are_415_naming_what_is_accepted(url: str, content_type: str) -> None:
    response = post(url, part10(instance_of("CT_small.dcm")), content_type)
    assert response.status_code == 415
    assert DICOM in response.json()["detail"]


def test_huge_content_type_header_answers_fast(node: NodeProcess, url: str) -> None:
    with stays_responsive(node):
        started = time.monotonic()
        response = post(url, b"x", "multipart/related;" + "a;" * 200_000)
        assert time.monotonic() - started < 2
    assert response.status_code in (400, 415, 431)


# ------------------------------------------------------------- many failures: one summary


def test_ten_thousand_empty_parts_get_a_short_warning_and_the_full_list_in_the_body(
    node: NodeProcess, url: str
) -> None:
    log_before = node.log_path.read_text(errors="replace").count("\n")
    body = multipart([b""] * 10_000)
    with stays_responsive(node):
        response = post(url, body, f'multipart/related; type="{DICOM}"; boundary=b0undary')
    assert response.status_code == 409
    warning = response.headers["warning"]
    assert len(warning) < 1000
    assert "10000" in warning
    assert "(1, 2, 3 and 9997 more)" in warning
    failed = response.json()["00081198"]["Value"]
    assert len(failed) == 10_000
    assert {item["00081197"]["Value"][0] for item in failed} == {0xC000}
    time.sleep(0.5)  # let the log be flushed
    log_lines = node.log_path.read_text(errors="replace").splitlines()[log_before:]
    assert len(log_lines) < 20, log_lines[:5]
    assert any("10000" in line for line in log_lines)


def test_curl_reads_the_warning_of_many_failures(url: str, tmp_path: Path) -> None:
    body = tmp_path / "body"
    body.write_bytes(multipart([b"", b"not dicom"] * 2_000))
    result = subprocess.run(
        [
            "curl",
            "-sS",
            "-D",
            "-",
            "-o",
            os.devnull,
            "-X",
            "POST",
            "-H",
            "Content-Type: multipart/related; boundary=b0undary",
            "--data-binary",
            f"@{body}",
            f"{url}/studies",
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    assert result.stdout.startswith("HTTP/1.1 409")
    (warning,) = [line for line in result.stdout.splitlines() if line.lower().startswith("warning")]
    assert "4000" in warning


def test_partial_success_names_the_failed_part(url: str) -> None:
    good = part10(instance_of("CT_small.dcm"))
    response = post(url, multipart([good, b"garbage"]), "multipart/related; boundary=b0undary")
    assert response.status_code == 202
    assert "part 2: not a DICOM file" in response.headers["warning"]


# ---------------------------------------------------------------------- the spool on disk


def _spool_files(node: NodeProcess, spool: Path) -> list[Path]:
    return _spool_files_of(str(node.pid), spool)


def test_the_spool_holds_only_ciphertext_and_is_gone_afterwards(
    node: NodeProcess, url: str, root: Path
) -> None:
    ds = instance_of("CT_small.dcm", PatientName=PHI_NAME)
    ds.PixelData = (b"PIXELPHI" * 512) * 1024  # 4 MiB of recognisable pixels
    ds.Rows, ds.Columns = 2048, 1024
    body = multipart([part10(ds)])
    spool = root / "data" / "spool"
    seen: list[bytes] = []

    def slowly() -> Iterator[bytes]:
        half = len(body) // 2
        yield body[:half]
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not seen:
            for path in _spool_files(node, spool):
                content = path.read_bytes()
                if len(content) > 1 << 20:
                    seen.append(content)
            time.sleep(0.05)
        yield body[half:]

    response = post(url, slowly(), f"multipart/related; type={DICOM}; boundary=b0undary")
    assert response.status_code == 200, response.text
    assert seen, "no spool file of the upload was found under <data_dir>/spool"
    assert PHI_NAME.encode() not in seen[0]
    assert b"PIXELPHI" not in seen[0]
    assert b"DICM" not in seen[0]
    assert not _spool_files(node, spool)
    assert not any(spool.iterdir())


def test_a_client_leaving_mid_body_stores_nothing_and_logs_no_traceback(
    node: NodeProcess, url: str, root: Path
) -> None:
    log_before = len(node.log_path.read_text(errors="replace"))
    instances_before = len(requests.get(f"{url}/instances", timeout=30).json())
    for content_type in (DICOM, "multipart/related; boundary=b0undary"):
        with socket.create_connection(("127.0.0.1", node.http_port)) as connection:
            connection.sendall(
                f"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}"
                "\r\nContent-Length: 1000000\r\n\r\n".encode()
                + multipart([part10(instance_of("CT_small.dcm"))])[:-100]
            )
            time.sleep(0.3)
    deadline = time.monotonic() + 5
    while _spool_files(node, root / "data" / "spool") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _spool_files(node, root / "data" / "spool")
    log = node.log_path.read_text(errors="replace")[log_before:]
    assert "Traceback" not in log
    assert log.count("the client left before the end of its body") == 2
    assert len(requests.get(f"{url}/instances", timeout=30).json()) == instances_before


# ------------------------------------------------------------------------ a 200 MB part


def _vm_hwm(pid: int) -> int:
    """The peak resident set size of ``pid`` so far, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmHWM")


def test_200_mb_parts_are_stored_with_memory_bounded_by_neither_body_nor_part(
    tmp_path: Path,
) -> None:
    """Two 200 MiB instances in one body: the node's peak memory grows by a few chunks, not
    by the body nor by a part (each part is ingested from the spool: ``ingest.spooled``).
    Before the spool it held the body four times over; before parts were ingested from the
    spool, three parts."""
    pixels = np.arange(512 * 512 * 400, dtype=np.uint16).tobytes()  # 200 MiB
    parts = []
    for _ in range(2):
        ds = instance_of("CT_small.dcm", Rows=512, Columns=512, NumberOfFrames=400)
        ds.PixelData = pixels
        parts.append(part10(ds))
    del ds, pixels
    part = len(parts[0])
    body = multipart(parts)
    del parts
    dicom_port, http_port = free_ports(2)
    with pacsnode_process(
        tmp_path / "data",
        dicom_port=dicom_port,
        http_port=http_port,
        env={"PACSNODE_FSYNC": "0"},
    ) as running:
        before = _vm_hwm(running.pid)
        response = post(
            f"{running.url}/dicom-web", body, f"multipart/related; type={DICOM}; boundary=b0undary"
        )
        assert response.status_code == 200, response.text
        assert len(referenced(response)) == 2
        peak = _vm_hwm(running.pid)
    growth = peak - before
    print(
        f"STOW of 2 x {part / 2**20:.0f} MiB: VmHWM {before / 2**20:.0f} -> "
        f"{peak / 2**20:.0f} MiB (+{growth / part:.2f} x one part, "
        f"+{growth / len(body):.2f} x the body)"
    )
    assert growth < 64 * 2**20
