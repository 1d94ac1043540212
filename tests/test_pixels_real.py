"""Pixel data on the read side, and its sanity at ingest, with pydicom's real test files.

One node (a separate process, so its memory is its own) receives every file of pydicom's
test data over STOW-RS; each one it accepts is asked for in every picture and pixel form
right after it is stored (several files share UIDs). Nothing may answer 500: a file whose
pixels can be read outside the node (pydicom's codecs here, or dcmtk's ``dcmj2pnm``) gives
an image, the others a 4xx with a reason.
"""

from __future__ import annotations

import io
import subprocess
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pydicom.data
import pytest
import requests
from PIL import Image
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid
from pynetdicom import AE, StoragePresentationContexts

from catalog import extract, to_dicom_json
from config import DicomwebSettings, load_settings
from ingest.pixeldata import pixel_data_problem
from node.app import build_core, configure_libraries
from tests.dicom_bytes import part10
from tests.liveness import stays_responsive
from tests.peers import NodeProcess, dcmtk, free_port, pacsnode_process

pytestmark = pytest.mark.slow

ROOT = Path(pydicom.data.__file__).parent
FILES = sorted(
    p for d in ("test_files", "charset_files") for p in (ROOT / d).rglob("*") if p.is_file()
)
NATIVE_FRAMES = 'multipart/related; type="application/octet-stream"'
STORED_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
EXPLICIT_LE = "application/dicom; transfer-syntax=1.2.840.10008.1.2.1"
MAX_FRAMES = DicomwebSettings().max_frames_per_request

configure_libraries()  # pydicom as the node uses it: GDCM never in this process


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    data_dir = tmp_path_factory.mktemp("pixels") / "data"
    with pacsnode_process(
        data_dir,
        dicom_port=free_port(),
        http_port=free_port(),
        # secondary captures, NM and US are pixel formats worth serving: keep them
        env={"PACSNODE_DEID__BURNED_IN_POLICY": "accept_flagged"},
    ) as running:
        yield running


def stow(node: NodeProcess, raw: bytes) -> requests.Response:
    boundary = "pixels-test-boundary"
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + raw
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return requests.post(
        f"{node.url}/dicom-web/studies",
        data=body,
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
        timeout=60,
    )


def stored_url(node: NodeProcess, raw: bytes) -> str:
    """Where ``raw`` is stored, under a SOP Instance UID of its own: pydicom ships several
    files under one UID, and content an instance already had stays a duplicate (the sweep
    stored them all), so a test storing one of them again would read another version."""
    ds = dcmread(io.BytesIO(raw))
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    answer = stow(node, buffer.getvalue())
    assert answer.status_code == 200, answer.headers.get("warning")
    return str(answer.json()["00081199"]["Value"][0]["00081190"]["Value"][0])


def wado_uri(node: NodeProcess, instance_url: str, query: str = "") -> str:
    study, rest = instance_url.split("/studies/")[1].split("/series/")
    series, sop = rest.split("/instances/")
    return (
        f"{node.url}/dicom-web/wado?requestType=WADO&studyUID={study}&seriesUID={series}"
        f"&objectUID={sop}{query}"
    )


def get(url: str, accept: str = "*/*") -> requests.Response:
    return requests.get(url, headers={"Accept": accept}, timeout=120)


def picture(answer: requests.Response) -> Image.Image:
    image = Image.open(io.BytesIO(answer.content))
    image.load()
    return image


def decodable(path: Path, tmp_path: Path) -> bool:
    """Whether the file's pixels can be read outside the node: by pydicom here, or, for a
    compressed stream pydicom's codecs reject, by dcmtk's codecs. (dcmtk also shows what
    pydicom refuses for contradictory attributes, such as Number of Frames "1A": the node
    refuses that too, with a reason.)"""
    ds = dcmread(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. excess padding, which pydicom removes
            ds.pixel_array  # noqa: B018
        return True
    except Exception:
        if not ds.file_meta.TransferSyntaxUID.is_compressed:
            return False
    out = tmp_path / "dcmtk.pgm"
    out.unlink(missing_ok=True)
    done = subprocess.run(
        [dcmtk("dcmj2pnm"), str(path), str(out)], capture_output=True, timeout=60, check=False
    )
    return done.returncode == 0 and out.exists()


def reason(answer: requests.Response) -> str:
    """The reason of a 4xx answer (FastAPI's ``detail``); fails on a bare status."""
    try:
        detail = answer.json()["detail"]
    except (ValueError, KeyError):
        pytest.fail(f"{answer.status_code} without a reason: {answer.text[:200]!r}")
    assert isinstance(detail, str) and detail
    return detail


# ------------------------------------------------------------------------- the sweep


def test_every_pydicom_file_the_node_accepts_is_served_without_a_500(
    node: NodeProcess, tmp_path: Path
) -> None:
    accepted, shown, refused_for_pixels = 0, [], []
    for path in FILES:
        name = str(path.relative_to(ROOT))
        answer = stow(node, path.read_bytes())
        if answer.status_code != 200:
            if "pixel data has" in answer.headers.get("warning", ""):
                refused_for_pixels.append(name)
            continue
        accepted += 1
        url = answer.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
        answers = {
            "rendered": get(f"{url}/rendered", "image/png"),
            "thumbnail": get(f"{url}/thumbnail"),
            "frame": get(f"{url}/frames/1", STORED_FRAMES),
            "native frame": get(f"{url}/frames/1", NATIVE_FRAMES),
            "bulk pixels": get(f"{url}/bulkdata/7FE00010", "application/octet-stream"),
            "explicit LE": get(url, EXPLICIT_LE),
            "wado-uri": get(wado_uri(node, url)),
        }
        for what, got in answers.items():
            assert got.status_code < 500, f"{name} {what}: {got.status_code} {got.text[:200]}"
            if got.status_code >= 400:
                reason(got)
        has_pixels = "PixelData" in dcmread(path)
        if has_pixels and decodable(path, tmp_path):
            for what in ("rendered", "thumbnail", "wado-uri"):
                assert answers[what].status_code == 200, f"{name} {what}: {reason(answers[what])}"
                assert min(picture(answers[what]).size) >= 1
            assert answers["native frame"].status_code == 200, name
            shown.append(name)
    assert accepted >= 150, accepted  # the whole corpus went through, not a few files
    assert len(shown) >= 90, shown
    assert "test_files/JPEG-lossy.dcm" in shown  # 12-bit JPEG Extended: GDCM decodes it
    assert refused_for_pixels == []  # nothing accepted before is refused for its pixels


def test_a_file_pydicom_reads_by_falling_back_to_implicit_vr_keeps_its_pixels(
    node: NodeProcess,
) -> None:
    # as sent: re-encoding it with pydicom (stored_url) would repair what this test is about
    answer = stow(node, Path(get_testdata_file("SC_rgb_jpeg.dcm")).read_bytes())
    url = answer.json()["00081199"]["Value"][0]["00081190"]["Value"][0]
    assert get(f"{url}/rendered").status_code == 200


def test_jpeg_extended_12_bit_renders_as_dcmtk_decodes_it(
    node: NodeProcess, tmp_path: Path
) -> None:
    path = Path(get_testdata_file("JPEG-lossy.dcm"))
    url = stored_url(node, path.read_bytes())
    rendered = picture(get(f"{url}/rendered", "image/png"))
    decompressed = tmp_path / "dcmtk.dcm"
    subprocess.run([dcmtk("dcmdjpeg"), str(path), str(decompressed)], check=True, timeout=60)
    reference = dcmread(decompressed).pixel_array.astype(np.float64)
    shown = np.asarray(rendered, dtype=np.float64)
    assert rendered.mode == "L" and shown.shape == reference.shape == (1024, 256)
    assert np.corrcoef(shown.ravel(), reference.ravel())[0, 1] > 0.99
    native = get(f"{url}/frames/1", NATIVE_FRAMES)
    assert native.status_code == 200
    frame = reference.astype(np.uint16).tobytes()
    assert frame in native.content  # the pixels themselves, as dcmtk decodes them


def test_pixel_data_no_decoder_reads_is_422_with_a_reason(node: NodeProcess) -> None:
    path = get_testdata_file("JPEG2000-embedded-sequence-delimiter.dcm")
    url = stored_url(node, Path(path).read_bytes())
    for answer in (
        get(f"{url}/rendered"),
        get(f"{url}/thumbnail", "image/png"),
        get(f"{url}/frames/1", NATIVE_FRAMES),
        get(f"{url}/bulkdata/7FE00010", "application/octet-stream"),
        get(url, EXPLICIT_LE),
        get(wado_uri(node, url)),
    ):
        assert answer.status_code == 422
        assert "cannot be decoded" in reason(answer)
    stored = get(f"{url}/frames/1", STORED_FRAMES)  # the stream itself is still served
    assert stored.status_code == 200 and b"\xff\x4f\xff\x51" in stored.content


# ------------------------------------------------------------------- hostile requests


def memory(pid: int, field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (peak resident) of process ``pid``, in bytes."""
    status = Path(f"/proc/{pid}/status").read_text().splitlines()
    return int(next(line for line in status if line.startswith(f"{field}:")).split()[1]) << 10


def test_frame_lists_are_bounded_and_streamed(node: NodeProcess) -> None:
    multiframe = stored_url(node, Path(get_testdata_file("rtdose.dcm")).read_bytes())
    url = stored_url(node, Path(get_testdata_file("examples_overlay.dcm")).read_bytes())
    frame_size = 300 * 484 * 2
    with stays_responsive(node):
        too_many = get(f"{multiframe}/frames/" + ",".join(["1"] * 20_000), NATIVE_FRAMES)
        assert too_many.status_code == 400
        assert f"at most {MAX_FRAMES} frame numbers" in reason(too_many)
        before = memory(node.pid, "VmRSS")
        Path(f"/proc/{node.pid}/clear_refs").write_text("5")  # peak := now
        answer = get(f"{url}/frames/" + ",".join(["1"] * MAX_FRAMES), NATIVE_FRAMES)
        peak = memory(node.pid, "VmHWM")
    assert answer.status_code == 200
    assert answer.content.count(b"Content-Type: application/octet-stream") == MAX_FRAMES
    assert len(answer.content) > MAX_FRAMES * frame_size
    # About 290 MB were sent, never held whole: the node grew by a few batches at most.
    assert peak - before < 100 << 20, (before >> 20, peak >> 20)
    every = get(f"{multiframe}/frames/" + ",".join(str(n) for n in range(15, 0, -1)), NATIVE_FRAMES)
    expected = dcmread(get_testdata_file("rtdose.dcm")).PixelData
    frames = [expected[n * 400 : (n + 1) * 400] for n in range(14, -1, -1)]
    assert all(frame in every.content for frame in frames)


HOSTILE_WADO_RS: list[tuple[str, int]] = [
    ("/frames/1,2/rendered", 400),
    ("/frames/1,2/thumbnail", 400),
    ("/rendered?quality=" + "9" * 5000, 400),
    ("/rendered?quality=%C2%B2", 400),  # a superscript two: str.isdigit() says yes
    ("/rendered?quality=0", 400),
    ("/rendered?quality=101", 400),
    ("/rendered?quality=+50", 400),
    ("/rendered?viewport=0,0", 400),
    ("/rendered?viewport=-5,10", 400),
    ("/rendered?viewport=" + "9" * 5000 + ",10", 400),
    ("/rendered?viewport=10", 400),
    ("/rendered?viewport=%D9%A3,%D9%A3", 400),  # Arabic-Indic digits
    ("/rendered?window=nan,nan", 400),
    ("/rendered?window=inf,100", 400),
    ("/rendered?window=1e999,100", 400),
    ("/rendered?window=40," + "9" * 5000, 400),
    ("/rendered?window=40,0", 400),
    ("/rendered?window=40,-80", 400),
    ("/rendered?window=40", 400),
    ("/rendered?window=40,80,cubic", 400),
    ("/rendered?window=40,80,linear,extra", 400),
    ("/rendered?window=40,80,sigmoid", 200),
    ("/rendered?window=40,80,LINEAR_EXACT", 200),
    ("/rendered?annotation=patient,technique", 200),
    ("/rendered?charset=ISO-8859-1", 200),
    ("/frames/0/rendered", 400),
    ("/frames/-1/rendered", 400),
    ("/frames/%D9%A1/rendered", 400),  # an Arabic-Indic one: int() accepts it
    ("/frames/1_0/rendered", 400),  # int() reads "1_0" as 10
    ("/frames/" + "9" * 5000 + "/rendered", 400),
    ("/frames/99999999999/rendered", 400),
    ("/frames/9999999999/rendered", 404),
    ("/frames/2/thumbnail", 404),
    ("/frames/1,,1", 400),
    ("/frames/1,0", 400),
    ("/frames/1,-1", 400),
    ("/frames/1,%D9%A1", 400),
    ("/frames/" + "9" * 5000, 400),
    ("/frames/1,99999999", 404),
]
HOSTILE_WADO_URI: list[tuple[str, int]] = [
    ("&rows=-5", 400),
    ("&rows=0&columns=0", 400),
    ("&rows=0", 400),
    ("&columns=-1", 400),
    ("&rows=" + "9" * 5000, 400),
    ("&rows=%C2%B2", 400),
    ("&columns=abc", 400),
    ("&rows=70000", 400),
    ("&rows=10", 200),
    ("&frameNumber=0", 404),
    ("&frameNumber=-1", 400),
    ("&frameNumber=" + "9" * 5000, 400),
    ("&frameNumber=2", 404),
    ("&imageQuality=" + "9" * 5000, 400),
    ("&imageQuality=0", 400),
    ("&windowCenter=nan&windowWidth=100", 400),
    ("&windowCenter=40&windowWidth=inf", 400),
    ("&windowCenter=40&windowWidth=0", 400),
    ("&windowCenter=40&windowWidth=80", 200),
    ("&contentType=image/png&charset=x", 200),
    ("&contentType=application/dicom&transferSyntax=1.2.3", 406),
    ("&contentType=application/dicom&transferSyntax=" + "1" * 5000, 406),
]


def test_hostile_picture_requests_are_4xx_with_a_reason_while_the_node_answers(
    node: NodeProcess,
) -> None:
    url = stored_url(node, Path(get_testdata_file("CT_small.dcm")).read_bytes())
    seen: list[tuple[str, int, int]] = []
    with stays_responsive(node):
        for suffix, status in HOSTILE_WADO_RS:
            seen.append((suffix[:60], status, get(url + suffix).status_code))
        for query, status in HOSTILE_WADO_URI:
            seen.append((query[:60], status, get(wado_uri(node, url, query)).status_code))
    wrong = [row for row in seen if row[1] != row[2]]
    assert not wrong, wrong
    for suffix, status in HOSTILE_WADO_RS[:3]:
        assert status == 400
        reason(get(url + suffix))


# ----------------------------------------------- pixel data shorter than its attributes


def too_short() -> Dataset:
    """CT_small claiming 65535 rows, with 128 bytes of pixels (as found in the field)."""
    ds = dcmread(get_testdata_file("CT_small.dcm"))
    ds.Rows = 65535
    ds.PixelData = ds.PixelData[:128]
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.911"
    return ds


def test_pixel_data_shorter_than_its_attributes_is_refused_over_c_store_and_stow(
    node: NodeProcess,
) -> None:
    ae = AE(ae_title="PYSCU")
    ae.requested_contexts = StoragePresentationContexts[:120]
    assoc = ae.associate("127.0.0.1", node.dicom_port, ae_title=node.ae_title)
    assert assoc.is_established
    response = assoc.send_c_store(too_short())
    assoc.release()
    assert int(response.Status) == 0xC000
    assert response.ErrorComment.startswith("pixel data has 128 bytes, the image attributes")
    answer = stow(node, part10(too_short()))
    assert answer.status_code == 409
    failed = answer.json()["00081198"]["Value"][0]
    assert failed["00081197"]["Value"] == [0xC000]
    assert (
        "pixel data has 128 bytes, the image attributes need 16776960" in answer.headers["warning"]
    )


def test_an_instance_stored_short_by_an_older_version_is_422_on_every_read(
    node: NodeProcess,
) -> None:
    """Written into the node's catalog and blob store as a version without the check did."""
    ds = too_short()
    settings = load_settings(data_dir=node.log_path.parent / "data", fsync=False)
    core = build_core(settings)
    try:
        blob = core.blobs.put(part10(ds))
        study, series, sop = ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID
        record = extract(ds, to_dicom_json(ds, study, series, sop))
        core.ingestor.catalog.index(record, blob, door="folder", aet=None)
    finally:
        core.close()
    url = f"{node.url}/dicom-web/studies/{study}/series/{series}/instances/{sop}"
    for answer in (
        get(f"{url}/rendered"),
        get(f"{url}/thumbnail"),
        get(f"{url}/frames/1", NATIVE_FRAMES),
        get(wado_uri(node, url)),
    ):
        assert answer.status_code == 422, answer.text[:200]
        assert "less than expected" in reason(answer)
    assert (
        dcmread(io.BytesIO(get(url, "application/dicom; transfer-syntax=*").content)).Rows == 65535
    )


# ----------------------------------------------------------------- the check itself


def with_pixels(name: str, change: Any = None) -> Dataset:
    ds = dcmread(get_testdata_file(name))
    if change:
        change(ds)
    return ds


def test_consistent_pixel_data_of_every_layout_passes() -> None:
    for name in (
        "CT_small.dcm",  # 16-bit
        "liver_1frame.dcm",  # 1-bit, bit-packed
        "SC_rgb_small_odd.dcm",  # odd length, with its pad byte
        "SC_ybr_full_422_uncompressed.dcm",  # subsampled: two thirds of RGB's length
        "rtdose.dcm",  # 32-bit, 15 frames
        "MR_small_bigendian.dcm",
        "image_dfl.dcm",  # deflated: checked once inflated
        "JPEG2000.dcm",  # encapsulated: never checked
    ):
        assert pixel_data_problem(with_pixels(name)) is None, name


def test_float_pixel_data_is_checked_like_pixel_data() -> None:
    def as_float(ds: Dataset, length: int) -> None:
        values = ds.pixel_array.astype(np.float32).tobytes()[:length]
        del ds.PixelData, ds.BitsStored, ds.HighBit, ds.PixelRepresentation
        ds.BitsAllocated = 32
        ds.FloatPixelData = values

    assert pixel_data_problem(with_pixels("CT_small.dcm", lambda d: as_float(d, 65536))) is None
    short = with_pixels("CT_small.dcm", lambda d: as_float(d, 65532))
    assert (
        pixel_data_problem(short) == "pixel data has 65532 bytes, the image attributes need 65536"
    )


@pytest.mark.parametrize(
    ("name", "change", "expected"),
    [
        ("liver_1frame.dcm", lambda d: setattr(d, "PixelData", d.PixelData[:-1]), 32768),
        ("SC_rgb_small_odd.dcm", lambda d: setattr(d, "PixelData", d.PixelData[:-2]), 27),
        (
            "SC_ybr_full_422_uncompressed.dcm",
            lambda d: setattr(d, "PhotometricInterpretation", "RGB"),
            30000,
        ),
        ("rtdose.dcm", lambda d: setattr(d, "NumberOfFrames", 16), 6400),
    ],
)
def test_short_pixel_data_of_every_layout_is_found(name: str, change: Any, expected: int) -> None:
    problem = pixel_data_problem(with_pixels(name, change))
    assert problem is not None and problem.endswith(f"need {expected}"), problem


def test_attributes_pydicom_cannot_use_are_left_to_the_readers() -> None:
    def no_rows(ds: Dataset) -> None:
        del ds.Rows

    assert pixel_data_problem(with_pixels("CT_small.dcm", no_rows)) is None
    assert pixel_data_problem(with_pixels("badVR.dcm")) is None  # Number of Frames "1A"
