"""End to end: a synthetic dataset pushed over C-STORE (dcmtk storescu) to a running node,
then cohorts defined, previewed, frozen and exported with the ``pacsnode`` CLI and over HTTP.

One node per module. The zip download is read slowly while the node's resident memory is
sampled: it must stay flat although the archive is several times larger than the margin.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from sqlalchemy import create_engine, select

from catalog.models import AuditEvent, Series, Study
from tests.peers import REPO_ROOT, NodeProcess, free_port, pacsnode_process, storescu
from tests.synthetic import SyntheticDataset, SyntheticSpec, generate

pytestmark = pytest.mark.slow

SPEC = SyntheticSpec(patients=10, ct_slices=12, mr_slices=10, rows=320, columns=320, seed=11)
"""320 instances of 320x320 (about 66 MB): 10 patients, each a CT and an MR (two series)."""

_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("export-node")


@pytest.fixture(scope="module")
def data_dir(root: Path) -> Path:
    return root / "data"


@pytest.fixture(scope="module")
def synthetic(root: Path) -> SyntheticDataset:
    return generate(root / "synthetic", SPEC)


@pytest.fixture(scope="module")
def node(root: Path, data_dir: Path, synthetic: SyntheticDataset) -> Iterator[NodeProcess]:
    with pacsnode_process(data_dir, dicom_port=free_port(), http_port=free_port()) as running:
        pushed = storescu(root / "synthetic", port=running.dicom_port, aet_called="PACSNODE")
        assert pushed.ok and pushed.files == len(synthetic.files), pushed.output
        yield running


def cli(data_dir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "node", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def api(node: NodeProcess, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        f"{node.url}/api{path}",
        data=data,
        method=method,
        headers={"Content-Type": "application/json"},
    )
    try:
        with _http.open(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def read_csv(path: Path) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(path.read_text())))


def catalog_series(data_dir: Path) -> dict[str, tuple[str, int, str]]:
    """Series UID -> (modality, instance count, study UID), straight from the catalog."""
    engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with engine.connect() as connection:
        rows = connection.execute(
            select(
                Series.series_instance_uid,
                Series.modality,
                Series.number_of_instances,
                Study.study_instance_uid,
            ).join(Study)
        ).all()
    engine.dispose()
    return {uid: (modality, count, study) for uid, modality, count, study in rows}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


# ----------------------------------------------------------------------------------- CLI


def test_cli_defines_previews_freezes_and_exports_each_format(
    node: NodeProcess, data_dir: Path, synthetic: SyntheticDataset, tmp_path: Path
) -> None:
    cli(
        data_dir,
        "cohort",
        "define",
        "brain",
        "--modality",
        "MR",
        "--body-part",
        "head",
        "--balance",
        "sequence",
        "--split",
        "--split-fractions",
        "train=0.6,validation=0.2,test=0.2",
        "--seed",
        "5",
        "--description",
        "MR brain, balanced by sequence",
    )
    preview = json.loads(cli(data_dir, "cohort", "preview", "brain", "--json").stdout)
    assert preview["frozen"] is False and preview["modality"] == {"MR": preview["series"]}
    assert len(set(preview["sequence"].values())) == 1  # balanced: as many T1 as T2 and DWI
    human = cli(data_dir, "cohort", "preview", "brain").stdout
    assert "sequence" in human and "age histogram" in human

    frozen = json.loads(cli(data_dir, "cohort", "freeze", "brain", "--json").stdout)
    assert frozen["series"] == preview["series"] and frozen["instances"] == preview["instances"]

    catalog = catalog_series(data_dir)
    exports = {}
    for fmt in ("dicom", "nifti", "png"):
        out = tmp_path / fmt
        result = cli(data_dir, "export", "brain", "--format", fmt, "--out", str(out))
        assert f"exported cohort brain@1 as {fmt}" in result.stdout
        assert "brain@1 -> " + fmt in result.stderr  # the progress bar
        exports[fmt] = out
        series_rows = read_csv(out / "manifest_series.csv")
        assert len(series_rows) == frozen["series"]
        for row in series_rows:
            modality, count, study = catalog[row["series_uid"]]
            assert (row["modality"], int(row["instances"]), row["study_uid"]) == (
                modality,
                count,
                study,
            )
        dataset = json.loads((out / "dataset.json").read_text())
        assert dataset["freeze"]["manifest_sha256"] == frozen["manifest_sha256"]
        assert dataset["definition"]["balance"]["by"] == "sequence"

    # no original identifier anywhere in what was exported (files, manifests, dataset.json)
    originals = [
        value.encode()
        for phi in synthetic.patients
        for value in (phi.patient_id, phi.birth_date, *phi.accession_numbers, *phi.study_uids)
    ]
    for out in exports.values():
        for path in out.rglob("*"):
            if path.is_file():
                data = path.read_bytes()
                leaked = [value for value in originals if value in data]
                assert not leaked, f"{path} holds {leaked[:1]}"

    # patient-level split: no patient in two splits, every split used
    rows = read_csv(exports["dicom"] / "manifest_series.csv")
    splits: dict[str, set[str]] = {}
    for row in rows:
        splits.setdefault(row["case_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in splits.values())
    assert {row["split"] for row in rows} == {"train", "validation", "test"}

    # every file of the DICOM export is what the catalog holds
    files = read_csv(exports["dicom"] / "manifest_files.csv")
    assert len(files) == frozen["instances"]
    for row in files[:20]:
        assert (
            hashlib.sha256((exports["dicom"] / row["path"]).read_bytes()).hexdigest()
            == row["sha256"]
        )

    # the NIfTI affine puts each voxel where the exported DICOM slice says it is
    nifti_row = read_csv(exports["nifti"] / "manifest_series.csv")[0]
    image = nib.load(exports["nifti"] / nifti_row["path"])
    slices = sorted(
        (
            dcmread(exports["dicom"] / r["path"])
            for r in files
            if r["series_uid"] == nifti_row["series_uid"]
        ),
        key=lambda ds: float(ds.ImagePositionPatient[2]),
    )
    assert np.asarray(image.dataobj).shape == (320, 320, len(slices))
    for k, ds in enumerate(slices):
        i, j = 100, 37
        lps = np.array([float(v) for v in ds.ImagePositionPatient]) + np.array(
            [i * float(ds.PixelSpacing[1]), j * float(ds.PixelSpacing[0]), 0.0]
        )
        assert np.allclose((image.affine @ [i, j, k, 1])[:3], lps * [-1, -1, 1], atol=1e-3)
        assert np.asarray(image.dataobj)[i, j, k] == ds.pixel_array[j, i]

    # a second export of the frozen cohort has byte-identical manifests
    again = tmp_path / "dicom-again"
    cli(data_dir, "export", "brain", "--format", "dicom", "--out", str(again))
    for name in (
        "manifest_series.csv",
        "manifest_series.parquet",
        "manifest_files.csv",
        "manifest_files.parquet",
        "dataset.json",
    ):
        assert (again / name).read_bytes() == (exports["dicom"] / name).read_bytes(), name

    listed = json.loads(cli(data_dir, "cohort", "list", "--json").stdout)
    assert any(c["name"] == "brain" and c["manifest_sha256"] for c in listed)
    engine = create_engine(f"sqlite:///{data_dir / 'catalog.sqlite'}")
    with engine.connect() as connection:
        audit = connection.execute(
            select(AuditEvent.actor, AuditEvent.outcome).where(
                AuditEvent.action == "export", AuditEvent.target.endswith("cohort:brain@1")
            )
        ).all()
    engine.dispose()
    assert sum(outcome == "done" for _, outcome in audit) == 4
    assert all(actor.split()[0] == "cli" for actor, _ in audit)


def test_cli_errors_are_one_line(node: NodeProcess, data_dir: Path, tmp_path: Path) -> None:
    unknown = cli(data_dir, "cohort", "define", "x", "--label", "malignancy=1", check=False)
    assert unknown.returncode == 1
    archive, error = unknown.stderr.strip().splitlines()  # the archive used, then one line
    assert archive == f"archive: {data_dir.resolve()}"
    assert error.startswith("Error: unknown label task 'malignancy'")
    cli(data_dir, "cohort", "define", "nothing", "--modality", "XA")
    empty = cli(data_dir, "cohort", "freeze", "nothing", check=False)
    assert empty.returncode == 1 and "matches no series: nothing to freeze" in empty.stderr
    not_frozen = cli(data_dir, "export", "nothing", "--out", str(tmp_path / "o"), check=False)
    assert not_frozen.returncode == 1 and "is not frozen" in not_frozen.stderr
    bad_format = cli(data_dir, "export", "nothing", "--format", "jpeg", "--out", "o", check=False)
    assert bad_format.returncode == 1 and "unknown format 'jpeg'" in bad_format.stderr
    for command in (
        ["cohort", "define"],
        ["cohort", "preview"],
        ["cohort", "freeze"],
        ["cohort", "list"],
        ["export"],
    ):
        helped = subprocess.run(
            [sys.executable, "-m", "node", *command, "--help"],
            capture_output=True,
            text=True,
            cwd=REPO_ROOT,
            check=True,
        )
        assert len(helped.stdout.split()) > 30


# ---------------------------------------------------------------------------------- HTTP


def test_http_api_defines_previews_freezes_and_refuses_bad_input(node: NodeProcess) -> None:
    code, created = api(
        node,
        "POST",
        "/cohorts",
        {
            "name": "ct-http",
            "definition": {"filters": {"modalities": ["CT"]}, "split": {}},
        },
    )
    assert code == 201 and created["version"] == 1
    code, preview = api(node, "GET", "/cohorts/ct-http/preview")
    assert code == 200 and preview["series"] == 10 and preview["patients"] == 10
    code, unsaved = api(node, "POST", "/cohorts/preview", {"filters": {"sequences": ["DWI"]}})
    assert code == 200 and set(unsaved["sequence"]) == {"DWI"}

    code, error = api(
        node,
        "POST",
        "/cohorts",
        {
            "name": "bad",
            "definition": {"filters": {"labels": [{"task": "cancer", "classes": ["1"]}]}},
        },
    )
    assert code == 422 and "unknown label task 'cancer'" in error["detail"]
    code, error = api(node, "GET", "/cohorts/ct-http/export?format=dicom")
    assert code == 409 and "not frozen" in error["detail"]
    code, error = api(node, "GET", "/cohorts/nope/preview")
    assert code == 404

    api(node, "POST", "/cohorts", {"name": "empty", "definition": {"filters": {"sexes": ["O"]}}})
    code, error = api(node, "POST", "/cohorts/empty/freeze")
    assert code == 409 and "matches no series" in error["detail"]
    code, error = api(node, "GET", "/cohorts/empty/export")
    assert code == 409  # a clear message, never an empty zip

    code, frozen = api(node, "POST", "/cohorts/ct-http/freeze")
    assert code == 200 and frozen["series"] == 10
    with _http.open(f"{node.url}/api/cohorts/ct-http/export?format=nifti", timeout=120) as response:
        assert response.headers["Content-Type"] == "application/zip"
        assert response.headers["X-Manifest-SHA256"] == frozen["manifest_sha256"]
        archive = zipfile.ZipFile(io.BytesIO(response.read()))
    names = archive.namelist()
    assert sum(n.endswith(".nii.gz") for n in names) == 10
    dataset = json.loads(archive.read("ct-http-v1-nifti/dataset.json"))
    assert dataset["counts"]["series_exported"] == 10
    series_csv = archive.read("ct-http-v1-nifti/manifest_series.csv").decode()
    assert series_csv.startswith("case_id,sex,age,split,")


def test_zip_download_is_streamed_with_flat_memory(node: NodeProcess) -> None:
    api(node, "POST", "/cohorts", {"name": "everything", "definition": {}})
    code, frozen = api(node, "POST", "/cohorts/everything/freeze")
    assert code == 200 and frozen["instances"] == SPEC.instance_count
    url = f"{node.url}/api/cohorts/everything/export?format=dicom"
    with _http.open(url, timeout=120) as warm_up:  # imports and caches, once
        warm_up.read()
    baseline = rss_kib(node.pid)
    peak = baseline
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kib(node.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample)
    sampler.start()
    received = 0
    first_byte_at = None
    started = time.monotonic()
    try:
        with _http.open(url, timeout=120) as response:
            while chunk := response.read(256 * 1024):
                if first_byte_at is None:
                    first_byte_at = time.monotonic() - started
                received += len(chunk)
                time.sleep(0.002)  # a slower reader than the node: the node must wait, not buffer
    finally:
        stop.set()
        sampler.join()
    assert received > 60_000_000
    growth_mb = (peak - baseline) / 1024
    assert growth_mb < 20, (
        f"node memory grew by {growth_mb:.1f} MB during a {received / 1e6:.0f} MB download"
    )
    assert first_byte_at is not None and first_byte_at < 5.0


# -------------------------------------------------------------------------------- labels

NEGATIVE = "Impression: No pulmonary nodules. The lungs are clear."
MALIGNANT = (
    "Impression: Spiculated mass in the right upper lobe, consistent with primary lung cancer."
)


def test_imported_reports_label_a_balanced_split_cohort(
    node: NodeProcess, data_dir: Path, synthetic: SyntheticDataset, root: Path, tmp_path: Path
) -> None:
    reports = tmp_path / "ris-export.csv"
    with reports.open("w", newline="", encoding="utf-8") as stream:
        writer = csv.writer(stream)
        writer.writerow(
            [
                "patient_id",
                "patient_name",
                "accession",
                "exam_date",
                "modality",
                "report_type",
                "impression",
            ]
        )
        for index, phi in enumerate(synthetic.patients):
            ct = dcmread(root / "synthetic" / str(index) / "0" / "0" / "1.dcm")
            writer.writerow(
                [
                    phi.patient_id,
                    phi.patient_name,
                    phi.accession_numbers[0],
                    ct.StudyDate,
                    "CT",
                    "radiology",
                    MALIGNANT if index in (1, 4, 6) else NEGATIVE,
                ]
            )
    cli(data_dir, "reports", "import", str(reports))

    cli(
        data_dir,
        "cohort",
        "define",
        "lung",
        "--label",
        "lung_nodule=0,1",
        "--balance",
        "label:lung_nodule",
        "--split",
        "--split-fractions",
        "train=0.5,test=0.5",
        "--seed",
        "3",
    )
    preview = json.loads(cli(data_dir, "cohort", "preview", "lung", "--json").stdout)
    assert preview["classes"]["lung_nodule"] == {"0": 3, "1": 3}
    assert preview["modality"] == {"CT": 6}
    cli(data_dir, "cohort", "freeze", "lung")
    out = tmp_path / "lung"
    cli(data_dir, "export", "lung", "--format", "nifti", "--out", str(out))

    rows = read_csv(out / "manifest_series.csv")
    assert [list(rows[0])[i] for i in range(5)] == [
        "case_id",
        "sex",
        "age",
        "label",
        "label_meaning",
    ]
    assert sorted(r["label"] for r in rows) == ["0", "0", "0", "1", "1", "1"]
    for row in rows:
        assert row["label_meaning"].startswith(
            "malignant: lung cancer" if row["label"] == "1" else "the lungs are addressed"
        )
        assert ("lung cancer" if row["label"] == "1" else "lungs are clear") in row[
            "lung_nodule_evidence"
        ]
        assert row["status"] == "exported" and row["path"].endswith(".nii.gz")
    by_patient: dict[str, set[str]] = {}
    for row in rows:
        by_patient.setdefault(row["case_id"], set()).add(row["split"])
    assert all(len(s) == 1 for s in by_patient.values())
    originals = {phi.patient_id for phi in synthetic.patients}
    assert not originals & set(by_patient)  # pseudonymous case IDs only
    schema = json.loads((out / "dataset.json").read_text())["label_schema"]["lung_nodule"]
    assert schema["classes"]["1"].startswith("malignant")

    code, error = api(
        node,
        "POST",
        "/cohorts",
        {
            "name": "bad",
            "definition": {"filters": {"labels": [{"task": "lung_nodule", "classes": ["5"]}]}},
        },
    )
    assert code == 422 and "unknown class '5' for label task 'lung_nodule'" in error["detail"]
