"""DICOMweb benchmark: pacsnode and Orthanc 1.10 + its DICOMweb plugin on the same data, side
by side in one run. See bench/README.md.

    python -m bench.dicomweb [--studies 10000] [--series-slices 500] [--queries 200]

Measured with one HTTP client (requests, one keep-alive session) for both servers:

- QIDO-RS ``/studies?PatientID=...`` and ``/studies?StudyDate=a-b`` on a catalog of
  ``--studies`` single-instance studies (median latency over ``--queries`` queries);
- study ``/metadata`` of one CT study of ``--series-slices`` instances (median of 10);
- WADO-RS retrieval of that series, ``transfer-syntax=*`` (MB/s, median of 5).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import http.client
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date, timedelta
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import requests
from pydicom import dcmread
from rich.console import Console
from rich.table import Table

from tests.peers import HOST, free_port, orthanc, pacsnode_process, storescu
from tests.synthetic import SyntheticSpec, derive_uid, generate, make_instance

CACHE: Final = Path(__file__).resolve().parent / ".cache"
SYNTHETIC_SOURCE: Final = Path(__file__).resolve().parents[1] / "tests" / "synthetic.py"
SEED: Final = 4242
console = Console()


def small_studies(count: int) -> Path:
    """``count`` one-instance studies (8x8 CT), 4 per patient, dates over ten years; written
    once into bench/.cache/ and reused. A template data set is copied and re-identified, so
    10,000 files take seconds."""
    folder = CACHE / f"dicomweb-studies-{count}-{_generator_hash()}"
    done = folder.with_name(folder.name + ".done")
    if done.exists():
        return folder
    folder.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    template = make_instance(SyntheticSpec(patients=1, ct_slices=1, mr_slices=1, rows=8, columns=8))
    start = date(2015, 1, 1)
    for index in range(count):
        ds = copy.deepcopy(template)
        ds.PatientID = f"BENCH{index // 4:06d}"
        ds.PatientName = f"BENCH^PATIENT{index // 4:06d}"
        ds.StudyInstanceUID = derive_uid(SEED, "study", index)
        ds.SeriesInstanceUID = derive_uid(SEED, "series", index)
        ds.SOPInstanceUID = derive_uid(SEED, "sop", index)
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.AccessionNumber = f"BA{index:08d}"
        ds.StudyDate = (start + timedelta(days=index * 3653 // count)).strftime("%Y%m%d")
        ds.save_as(folder / f"{index:06d}.dcm", enforce_file_format=True)
    done.write_text("")
    return folder


def ct_series(slices: int) -> Path:
    """One CT study with one series of ``slices`` 256x256 instances (cached)."""
    folder = CACHE / f"dicomweb-ct-{slices}-{_generator_hash()}"
    if not (folder / "done").exists():
        generate(
            folder,
            SyntheticSpec(
                patients=1, ct_slices=slices, mr_slices=1, rows=256, columns=256, seed=SEED
            ),
        )
        (folder / "done").write_text("")
    return folder / "0" / "0" / "0"


def _generator_hash() -> str:
    return hashlib.sha256(SYNTHETIC_SOURCE.read_bytes()).hexdigest()[:10]


def median_ms(session: requests.Session, urls: list[str]) -> float:
    timings = []
    for url in urls:
        started = time.perf_counter()
        response = session.get(url, headers={"Accept": "application/dicom+json"}, timeout=120)
        timings.append((time.perf_counter() - started) * 1000)
        if response.status_code not in (200, 204):
            raise RuntimeError(f"{url}: HTTP {response.status_code}")
    return statistics.median(timings)


def retrieve_mb_per_s(url: str, rounds: int = 5) -> float:
    """Median MB/s of WADO-RS retrieval of ``url``, read into one reused buffer.

    ``http.client`` with ``readinto``: the client should cost little CPU, since it shares
    this machine's cores with the server (``requests`` chunk by chunk reached only ~60 % of
    the rate a C client measured for the same server).
    """
    target = urlsplit(url)
    accept = 'multipart/related; type="application/dicom"; transfer-syntax=*'
    buffer = memoryview(bytearray(1 << 20))
    connection = http.client.HTTPConnection(target.hostname or HOST, target.port, timeout=600)
    rates = []
    try:
        for _ in range(rounds):
            started = time.perf_counter()
            connection.request("GET", target.path, headers={"Accept": accept})
            response = connection.getresponse()
            if response.status != 200:
                raise RuntimeError(f"{url}: HTTP {response.status}")
            size = 0
            while read := response.readinto(buffer):
                size += read
            rates.append(size / 1e6 / (time.perf_counter() - started))
    finally:
        connection.close()
    return statistics.median(rates)


def measure(base: str, study_files: Path, ct: Path, queries: int) -> dict[str, float]:
    """The four figures against one server's DICOMweb root ``base``."""
    rng = random.Random(SEED)
    patient_ids = sorted(
        {f"BENCH{i // 4:06d}" for i in range(len(list(study_files.glob("*.dcm"))))}
    )
    first = dcmread(next(ct.glob("*.dcm")), stop_before_pixels=True)
    study, series = first.StudyInstanceUID, first.SeriesInstanceUID
    session = requests.Session()
    session.trust_env = False
    by_id = [f"{base}/studies?PatientID={rng.choice(patient_ids)}" for _ in range(queries)]
    by_date = []
    for _ in range(queries):
        day = date(2015, 1, 1) + timedelta(days=rng.randrange(3600))
        end = day + timedelta(days=30)
        by_date.append(f"{base}/studies?StudyDate={day:%Y%m%d}-{end:%Y%m%d}")
    median_ms(session, by_id[:10] + by_date[:10])  # warm-up
    figures = {
        "qido_patient_id_ms": median_ms(session, by_id),
        "qido_date_range_ms": median_ms(session, by_date),
    }
    metadata = f"{base}/studies/{study}/metadata"
    median_ms(session, [metadata])
    figures["study_metadata_ms"] = median_ms(session, [metadata] * 10)
    figures["series_retrieve_mb_s"] = retrieve_mb_per_s(f"{base}/studies/{study}/series/{series}")
    return figures


def load(push: Callable[[Path], None], what: str, folder: Path) -> float:
    started = time.perf_counter()
    push(folder)
    elapsed = time.perf_counter() - started
    console.print(f"  loaded {what} in {elapsed:.0f} s")
    # The load's writeback must not land in the measurements (pacsnode imports without
    # fsync; measured with it pending, WADO-RS ran at half speed).
    os.sync()
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.dicomweb", description=__doc__)
    parser.add_argument("--studies", type=int, default=10_000)
    parser.add_argument("--series-slices", type=int, default=500)
    parser.add_argument("--queries", type=int, default=200)
    args = parser.parse_args()

    console.print("preparing data (cached in bench/.cache/) ...")
    studies = small_studies(args.studies)
    ct = ct_series(args.series_slices)
    results: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-dicomweb-") as tmp:
        work = Path(tmp)
        console.print("pacsnode: import (pacsnode import, the ingest pipeline), then serve")
        data = work / "pacsnode-data"
        # De-identification off: both archives then hold the same UIDs and values, so the
        # same requests go to both (its cost is measured by bench/ingest.py).
        env = {
            "PACSNODE_FSYNC": "false",
            "PACSNODE_SQLITE_SYNCHRONOUS": "NORMAL",
            "PACSNODE_DEID__ENABLED": "false",
        }

        def import_files(folder: Path) -> None:
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "node",
                    "import",
                    "--create",
                    "--data-dir",
                    str(data),
                    str(folder),
                ],
                check=True,
                env={**os.environ, **env},
                cwd=Path(__file__).resolve().parents[1],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )

        load(import_files, f"{args.studies} studies", studies)
        load(import_files, f"{args.series_slices}-instance CT", ct)
        with pacsnode_process(data, dicom_port=free_port(), http_port=free_port(), env=env) as node:
            results["pacsnode"] = measure(f"{node.url}/dicom-web", studies, ct, args.queries)
        console.print("orthanc: storescu (4 associations), then the same requests")
        with orthanc(
            work / "orthanc", http_port=free_port(), dicom_port=free_port(), dicomweb=True
        ) as peer:

            def push(folder: Path) -> None:
                result = storescu(folder, port=peer.dicom_port, aet_called=peer.aet, associations=4)
                if not result.ok:
                    raise RuntimeError(result.output[-2000:])

            load(push, f"{args.studies} studies", studies)
            load(push, f"{args.series_slices}-instance CT", ct)
            results["orthanc"] = measure(f"{peer.url}/dicom-web", studies, ct, args.queries)

    table = Table(
        title=f"DICOMweb: {args.studies:,} studies, {args.series_slices}-instance CT series"
    )
    table.add_column("measure")
    table.add_column("pacsnode", justify="right")
    table.add_column("orthanc", justify="right")
    table.add_column("pacsnode advantage", justify="right")
    for key, label in (
        ("qido_patient_id_ms", "QIDO /studies?PatientID= median ms"),
        ("qido_date_range_ms", "QIDO /studies?StudyDate=a-b median ms"),
        ("study_metadata_ms", "study /metadata median ms"),
        ("series_retrieve_mb_s", "WADO-RS series MB/s"),
    ):
        ours, theirs = results["pacsnode"][key], results["orthanc"][key]
        ratio = ours / theirs if key.endswith("mb_s") else theirs / ours
        table.add_row(label, f"{ours:.1f}", f"{theirs:.1f}", f"{ratio:.1f}x")
    console.print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
