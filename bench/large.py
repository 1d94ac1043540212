"""One large instance (default 1 GiB of native pixel data) through a real node, by C-STORE
(dcmtk storescu) and by STOW-RS: the node's peak resident memory, the time and the CPU of
each push, and whether the stored pixel data is byte for byte the sent one.

    python -m bench.large                 # 1 GiB
    python -m bench.large --mib 256

Run it from the repository root (it imports ``tests.peers`` and ``tests.large_instance``).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests
from pydicom.dataset import Dataset

from tests.large_instance import (
    blob_header_and_pixel_sha256,
    file_chunks,
    peak_rss,
    stored_blob,
    write_large_instance,
)
from tests.peers import free_ports, pacsnode_process, storescu

MIB = 1 << 20


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its reaped children so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / os.sysconf("SC_CLK_TCK")


def _multipart(path: Path) -> Iterator[bytes]:
    yield b"--b0undary\r\nContent-Type: application/dicom\r\n\r\n"
    yield from file_chunks(path)
    yield b"\r\n--b0undary--\r\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=1024, help="MiB of pixel data")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-large-") as tmp:
        root = Path(tmp)
        dicom_port, http_port = free_ports(2)
        with pacsnode_process(root / "data", dicom_port=dicom_port, http_port=http_port) as node:
            print(f"node baseline peak RSS {peak_rss(node.pid) / MIB:.0f} MiB (load {_load()})")
            for door in ("C-STORE", "STOW-RS"):
                large = write_large_instance(root / "large.dcm", args.mib)
                cpu, start = _cpu_seconds(node.pid), time.perf_counter()
                if door == "C-STORE":
                    result = storescu([large.path], port=node.dicom_port, aet_called="PACSNODE")
                    assert result.ok, result.output
                else:
                    response = requests.post(
                        f"{node.url}/dicom-web/studies",
                        data=_multipart(large.path),
                        headers={
                            "Content-Type": "multipart/related; type=application/dicom; "
                            "boundary=b0undary",
                            "Accept": "application/dicom+json",
                        },
                        timeout=3600,
                    )
                    assert response.status_code == 200, response.text
                seconds = time.perf_counter() - start
                cpu = _cpu_seconds(node.pid) - cpu
                blob = stored_blob(root / "data" / "blobs", large.size)
                stored, pixels = blob_header_and_pixel_sha256(blob)
                print(
                    f"{door} of {large.size / MIB:,.0f} MiB: {seconds:.1f} s "
                    f"({large.size / MIB / seconds:.0f} MiB/s), node CPU {cpu:.1f} s, "
                    f"node peak RSS {peak_rss(node.pid) / MIB:.0f} MiB, pixel data "
                    f"{'identical' if pixels == large.pixel_sha256 else 'DIFFERENT'}, "
                    f"spool files left {len(list((root / 'data' / 'spool').glob('*')))} "
                    f"(load {_load()})"
                )
                large.path.unlink()
            _retrieve(node.url, stored, node.pid)


def _retrieve(url: str, stored: Dataset, pid: int) -> None:
    """WADO-RS of the last stored instance, as one application/dicom body."""
    path = (
        f"{url}/dicom-web/studies/{stored.StudyInstanceUID}/series/"
        f"{stored.SeriesInstanceUID}/instances/{stored.SOPInstanceUID}"
    )
    start, size = time.perf_counter(), 0
    accept = "application/dicom; transfer-syntax=*"  # as stored: no transcoding
    with requests.get(path, headers={"Accept": accept}, stream=True) as answer:
        answer.raise_for_status()
        for chunk in answer.iter_content(MIB):
            size += len(chunk)
    seconds = time.perf_counter() - start
    print(
        f"WADO-RS of {size / MIB:,.0f} MiB: {seconds:.1f} s, node peak RSS "
        f"{peak_rss(pid) / MIB:.0f} MiB (load {_load()})"
    )


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


if __name__ == "__main__":
    main()
