"""DICOMweb against a running node: dicomweb-client (a real client, not ours) and plain HTTP
for what OHIF asks and for every bad input of the issue."""

from __future__ import annotations

import gzip
import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import pytest
import requests
from dicomweb_client.api import DICOMwebClient
from PIL import Image
from pydicom import dcmread
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.uid import JPEGBaseline8Bit, JPEGLSLossless, RLELossless

from catalog import catalog_stats
from catalog.query import REQUIRED_KEYS, QueryLevel
from config import load_settings
from ingest import Source
from node.app import Node
from tests.dicom_bytes import part10
from tests.query_data import SPEC, archive, odd, synthetic
from tests.synthetic import SyntheticSpec, generate_transfer_syntax_variants, make_instance

MAX_RESULTS = 8  # below the 9 studies of the archive, so paging and the cap show
OHIF_FRAMES = "multipart/related; type=application/octet-stream; transfer-syntax=*"
OTHER_ORIGIN = "http://viewer.example.org"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    folder = tmp_path_factory.mktemp("dicomweb")
    settings = load_settings(
        data_dir=folder / "data",
        fsync=False,
        dicom_port=0,
        http_port=0,
        deid={"enabled": False},
        dicomweb={"max_results": MAX_RESULTS, "cors_origins": [OTHER_ORIGIN]},
    )
    running = Node(settings)
    running.start()
    for raw in archive():
        assert running.core.ingestor.accept(raw, Source(door="folder", remote="t")).outcome.success
    for path in generate_transfer_syntax_variants(folder / "variants", seed=SPEC.seed).values():
        running.core.ingestor.accept(path.read_bytes(), Source(door="folder", remote="t"))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="module")
def url(node: Node) -> str:
    return f"http://127.0.0.1:{node.http_port}/dicom-web"


@pytest.fixture(scope="module")
def client(url: str) -> DICOMwebClient:
    return DICOMwebClient(url)


def get(url: str, **headers: str) -> requests.Response:
    return requests.get(url, headers=headers, timeout=30)


def value(item: dict[str, Any], keyword: str) -> Any:
    return item[f"{tag_for_keyword(keyword):08X}"].get("Value", [None])[0]


def assert_required(rows: list[dict[str, Any]], *levels: QueryLevel) -> None:
    assert rows
    for row in rows:
        for level in levels:
            for keyword in REQUIRED_KEYS[level]:
                tag = tag_for_keyword(keyword)
                assert row[f"{tag:08X}"]["vr"] == dictionary_VR(tag), keyword
        assert row["00081190"]["vr"] == "UR"


def stored_count(node: Node) -> int:
    return catalog_stats(node.core.db).instances


def a_study(client: DICOMwebClient, modality: str = "MR") -> str:
    studies = client.search_for_studies(search_filters={"ModalitiesInStudy": modality})
    return str(value(studies[0], "StudyInstanceUID"))


# ------------------------------------------------------------------------------ QIDO-RS


def test_search_at_every_level_returns_required_attributes(client: DICOMwebClient) -> None:
    studies = client.search_for_studies(get_remaining=True)
    assert len(studies) == 9
    assert_required(studies, QueryLevel.STUDY)
    study = a_study(client)
    assert_required(client.search_for_series(study), QueryLevel.SERIES)
    assert_required(client.search_for_series(), QueryLevel.SERIES, QueryLevel.STUDY)
    assert_required(client.search_for_instances(study), QueryLevel.IMAGE, QueryLevel.SERIES)
    everything = client.search_for_instances(get_remaining=True)
    assert_required(everything, QueryLevel.IMAGE, QueryLevel.SERIES, QueryLevel.STUDY)


def test_what_ohif_asks_for_the_study_list(url: str) -> None:
    query = "limit=101&offset=0&fuzzymatching=true&includefield=00081030,00080060"
    response = get(f"{url}/studies?{query}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/dicom+json"
    assert "additional results" in response.headers["warning"]  # 9 studies, cap 8
    rows = response.json()
    assert len(rows) == MAX_RESULTS
    assert all("00081030" in row for row in rows)
    named = get(f"{url}/studies?{query}&PatientName=*ngstr*").json()
    assert {value(r, "PatientName")["Alphabetic"] for r in named} == {"Ångström^Åsa"}
    by_id = get(f"{url}/studies?{query}&00100020={value(named[0], 'PatientID')}").json()
    assert len(by_id) == 2
    uids = ",".join(value(r, "StudyInstanceUID") for r in by_id)
    assert len(get(f"{url}/studies?{query}&StudyInstanceUID={uids}").json()) == 2
    assert len(get(f"{url}/studies?{query}&StudyDate=20200101-20201231").json()) == 4
    accession = value(by_id[0], "AccessionNumber")
    assert len(get(f"{url}/studies?{query}&AccessionNumber={accession}").json()) == 1
    assert len(get(f"{url}/studies?{query}&ModalitiesInStudy=MR").json()) == 4
    wildcard = get(f"{url}/studies?{query}&PatientName=%2Angstr%2A").json()  # * sent as %2A
    assert wildcard == named


def test_what_ohif_asks_for_a_study(url: str, client: DICOMwebClient) -> None:
    study = a_study(client)
    fields = "00080021,00080031,0008103E,00200011"
    series = get(f"{url}/studies/{study}/series?includefield={fields}").json()
    assert [value(s, "SeriesNumber") for s in series] == [1, 2]
    series_uid = value(series[0], "SeriesInstanceUID")
    metadata = get(f"{url}/studies/{study}/series/{series_uid}/metadata").json()
    sop = value(metadata[0], "SOPInstanceUID")
    frames = get(
        f"{url}/studies/{study}/series/{series_uid}/instances/{sop}/frames/1", Accept=OHIF_FRAMES
    )
    assert frames.status_code == 200
    assert frames.headers["content-type"].startswith("multipart/related")
    assert len(frames.content) > 16 * 16 * 2


def test_paging_through_more_results_than_the_cap(url: str) -> None:
    first = get(f"{url}/studies?limit=100000")
    assert "exceeds the maximum" in first.headers["warning"]
    rest = get(f"{url}/studies?offset={MAX_RESULTS}")
    assert "warning" not in rest.headers
    uids = [value(r, "StudyInstanceUID") for r in first.json() + rest.json()]
    assert len(set(uids)) == 9


def test_no_match_is_200_with_an_empty_array(url: str) -> None:
    response = get(f"{url}/studies?PatientID=nobody")
    assert response.status_code == 200  # CP-2473; PS3.18 said 204 before
    assert response.json() == []


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("StudyDate=2020-13", "StudyDate"),
        ("limit=many", "limit"),
        ("offset=-1", "offset"),
        ("fuzzymatching=maybe", "fuzzymatching"),
        ("NoSuchAttribute=1", "NoSuchAttribute"),
        ("StudyInstanceUID=1.2.*", "StudyInstanceUID"),
        ("includefield=NotAKeyword", "NotAKeyword"),
    ],
)
def test_malformed_query_is_400_naming_the_parameter(url: str, query: str, named: str) -> None:
    response = get(f"{url}/studies?{query}")
    assert response.status_code == 400
    assert named in response.json()["detail"]


def test_unsupported_matching_key_is_ignored_with_a_warning(url: str) -> None:
    response = get(f"{url}/studies?PatientAddress=x")
    assert response.status_code == 200
    assert "PatientAddress" in response.headers["warning"]


# ------------------------------------------------------------------------------ WADO-RS


def test_retrieve_study_series_and_instance(client: DICOMwebClient, node: Node) -> None:
    study = a_study(client, "CT")
    instances = client.retrieve_study(study)
    stored = {i.sop_instance_uid: i for i in _located(node, study)}
    assert {str(ds.SOPInstanceUID) for ds in instances} == set(stored)
    series = str(instances[0].SeriesInstanceUID)
    assert len(client.retrieve_series(study, series)) == len(
        [i for i in stored.values() if i.series_instance_uid == series]
    )
    one = client.retrieve_instance(study, series, str(instances[0].SOPInstanceUID))
    assert one.PixelData == instances[0].PixelData


def _located(node: Node, study: str) -> list[Any]:
    from catalog.locate import locate

    return locate(node.core.db, study)


def test_stored_bytes_come_back_unchanged_with_any_transfer_syntax(url: str, node: Node) -> None:
    study = a_study_uid(url)
    (first, *_) = _located(node, study)
    response = get(
        f"{url}/studies/{study}/series/{first.series_instance_uid}/instances/{first.sop_instance_uid}",
        Accept="application/dicom; transfer-syntax=*",
    )
    assert response.status_code == 200
    assert hashlib.sha256(response.content).hexdigest() == first.sha256


@pytest.mark.parametrize("batch", [1, 4 << 20])
def test_stored_study_streams_every_file_unchanged_with_its_length(
    url: str, node: Node, monkeypatch: pytest.MonkeyPatch, batch: int
) -> None:
    """As-stored retrieval: batches of one part or of all parts, exact Content-Length."""
    monkeypatch.setattr("dicomweb.wado.BATCH", batch)
    study = a_study_uid(url)
    response = get(
        f"{url}/studies/{study}",
        Accept='multipart/related; type="application/dicom"; transfer-syntax=*',
    )
    assert response.status_code == 200
    assert int(response.headers["content-length"]) == len(response.content)
    boundary = response.headers["content-type"].split("boundary=")[1].encode()
    assert response.content.endswith(b"--" + boundary + b"--\r\n")
    bodies = [
        part.split(b"\r\n\r\n", 1)[1][:-2]
        for part in response.content.split(b"--" + boundary)[1:-1]
    ]
    assert sorted(hashlib.sha256(b).hexdigest() for b in bodies) == sorted(
        i.sha256 for i in _located(node, study)
    )


def a_study_uid(url: str) -> str:
    return str(value(get(f"{url}/studies?ModalitiesInStudy=CT").json()[0], "StudyInstanceUID"))


@pytest.mark.parametrize("syntax", [RLELossless, JPEGLSLossless])
def test_transcoding_to_a_lossless_syntax(client: DICOMwebClient, url: str, syntax: str) -> None:
    study = a_study(client, "CT")
    response = get(
        f"{url}/studies/{study}",
        Accept=f'multipart/related; type="application/dicom"; transfer-syntax={syntax}',
    )
    assert response.status_code == 200
    assert f"transfer-syntax={syntax}" in response.content.decode("latin-1")
    original = client.retrieve_study(study)
    boundary = response.headers["content-type"].split("boundary=")[1]
    parts = [p for p in response.content.split(f"--{boundary}".encode()) if b"DICM" in p]
    decoded = dcmread(io.BytesIO(parts[0].split(b"\r\n\r\n", 1)[1][:-2]))
    assert decoded.file_meta.TransferSyntaxUID == syntax
    match = next(o for o in original if o.SOPInstanceUID == decoded.SOPInstanceUID)
    assert np.array_equal(decoded.pixel_array, match.pixel_array)


def test_accept_the_node_cannot_produce_is_406(url: str, client: DICOMwebClient) -> None:
    study = a_study(client, "CT")
    lossy = f'multipart/related; type="application/dicom"; transfer-syntax={JPEGBaseline8Bit}'
    assert get(f"{url}/studies/{study}", Accept=lossy).status_code == 406
    assert get(f"{url}/studies/{study}", Accept="text/html").status_code == 406
    assert get(f"{url}/studies", Accept="application/dicom+xml").status_code == 406
    assert get(f"{url}/studies/{study}/rendered", Accept="image/gif").status_code == 406


def test_unknown_uids_are_404(url: str) -> None:
    unknown = "1.2.3.4.5"
    for path in (
        f"/studies/{unknown}",
        f"/studies/{unknown}/metadata",
        f"/studies/{unknown}/series",
        f"/studies/{unknown}/series/{unknown}/instances/{unknown}/frames/1",
        f"/studies/{unknown}/thumbnail",
    ):
        assert get(url + path).status_code == 404, path
    assert get(f"{url}/studies/not-a-uid").status_code == 400


def test_metadata_has_absolute_bulkdata_uris_and_an_etag(
    url: str, client: DICOMwebClient, node: Node
) -> None:
    big = make_instance(SyntheticSpec(patients=1, rows=64, columns=64, seed=21))
    assert node.core.ingestor.accept(part10(big), Source(door="folder", remote="t")).outcome.success
    study = str(big.StudyInstanceUID)
    metadata = client.retrieve_study_metadata(study)
    uri = metadata[0]["7FE00010"]["BulkDataURI"]
    # dicomweb-client sends a Host header without the port; the URI follows what it sent
    assert urlsplit(uri).path.startswith(f"/dicom-web/studies/{study}/series/")
    uri = url + urlsplit(uri).path.removeprefix("/dicom-web")
    pixels = get(uri, Accept="application/octet-stream")
    assert pixels.content == big.PixelData
    first = get(f"{url}/studies/{study}/metadata")
    again = get(f"{url}/studies/{study}/metadata", **{"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304


def test_urls_behind_a_reverse_proxy_never_name_the_internal_host(url: str, node: Node) -> None:
    proxy = {
        "X-Forwarded-Proto": "https",
        "X-Forwarded-Host": "pacs.example.org",
        "X-Forwarded-Prefix": "/archive",
    }
    study = a_study_uid(url)
    rows = get(f"{url}/studies?StudyInstanceUID={study}", **proxy).json()
    assert value(rows[0], "RetrieveURL") == (
        f"https://pacs.example.org/archive/dicom-web/studies/{study}"
    )
    text = get(f"{url}/studies/{study}/metadata", Forwarded="proto=https;host=pacs.example.org")
    assert f":{node.http_port}" not in text.text
    assert (
        "https://pacs.example.org/dicom-web/studies/" in text.text or "BulkDataURI" not in text.text
    )


def test_json_is_gzip_compressed_when_accepted(url: str) -> None:
    response = requests.get(
        f"{url}/series", headers={"Accept-Encoding": "gzip"}, timeout=30, stream=True
    )
    assert response.headers["content-encoding"] == "gzip"
    assert gzip.decompress(response.raw.read())[:1] == b"["


def test_cors_for_a_configured_origin_only(url: str) -> None:
    allowed = get(f"{url}/studies", Origin=OTHER_ORIGIN)
    assert allowed.headers["access-control-allow-origin"] == OTHER_ORIGIN
    assert (
        "access-control-allow-origin"
        not in get(f"{url}/studies", Origin="http://evil.test").headers
    )


def test_frames_of_a_compressed_instance(url: str, client: DICOMwebClient) -> None:
    instances = client.search_for_instances(search_filters={"SeriesNumber": "99"})
    jpeg = next(i for i in instances if value(i, "AvailableTransferSyntaxUID") == JPEGBaseline8Bit)
    path = (
        f"{url}/studies/{value(jpeg, 'StudyInstanceUID')}/series/"
        f"{value(jpeg, 'SeriesInstanceUID')}/instances/{value(jpeg, 'SOPInstanceUID')}/frames/1"
    )
    stored = get(path, Accept=OHIF_FRAMES)
    assert f"transfer-syntax={JPEGBaseline8Bit}" in stored.content.decode("latin-1")
    assert b"\xff\xd8\xff" in stored.content  # the JPEG stream as stored
    native = get(path, Accept='multipart/related; type="application/octet-stream"')
    assert native.status_code == 200
    assert b"\xff\xd8\xff" not in native.content
    assert get(path.replace("frames/1", "frames/2"), Accept=OHIF_FRAMES).status_code == 404
    assert get(path.replace("frames/1", "frames/x"), Accept=OHIF_FRAMES).status_code == 400


def test_rendered_and_thumbnail_windowing_and_size(url: str, client: DICOMwebClient) -> None:
    study = a_study(client, "MR")
    soft = Image.open(io.BytesIO(get(f"{url}/studies/{study}/rendered?window=900,1800").content))
    lung = Image.open(io.BytesIO(get(f"{url}/studies/{study}/rendered?window=200,300").content))
    assert soft.size == (16, 16)
    assert np.asarray(soft).mean() != np.asarray(lung).mean()
    png = get(f"{url}/studies/{study}/thumbnail?viewport=8,8", Accept="image/png")
    assert png.headers["content-type"] == "image/png"
    assert Image.open(io.BytesIO(png.content)).size == (8, 8)
    assert get(f"{url}/studies/{study}/rendered?quality=0").status_code == 400
    assert get(f"{url}/studies/{study}/rendered?window=40").status_code == 400


def test_wado_uri(url: str, client: DICOMwebClient) -> None:
    study = a_study(client, "CT")
    instance = client.search_for_instances(study)[0]
    query = (
        f"requestType=WADO&studyUID={study}&seriesUID={value(instance, 'SeriesInstanceUID')}"
        f"&objectUID={value(instance, 'SOPInstanceUID')}"
    )
    dicom = get(f"{url}/wado?{query}&contentType=application/dicom")
    assert dcmread(io.BytesIO(dicom.content)).SOPInstanceUID == value(instance, "SOPInstanceUID")
    jpeg = get(f"{url}/wado?{query}")
    assert jpeg.headers["content-type"] == "image/jpeg"
    assert get(f"{url}/wado?requestType=WADO&studyUID={study}").status_code == 400


# ------------------------------------------------------------------------------ STOW-RS


def test_store_with_dicomweb_client_then_find_it(client: DICOMwebClient, node: Node) -> None:
    ds = dcmread(io.BytesIO(part10(make_instance(SyntheticSpec(patients=1, seed=31)))))
    answer = client.store_instances([ds])
    referenced = answer.ReferencedSOPSequence
    assert [str(item.ReferencedSOPInstanceUID) for item in referenced] == [str(ds.SOPInstanceUID)]
    assert "FailedSOPSequence" not in answer
    found = client.search_for_studies(search_filters={"StudyInstanceUID": ds.StudyInstanceUID})
    assert len(found) == 1


def _post(url: str, parts: list[bytes], boundary: str = "b0undary") -> requests.Response:
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n"
        for part in parts
    )
    body += f"--{boundary}--\r\n".encode()
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    return requests.post(url, data=body, headers={"Content-Type": content_type}, timeout=60)


def test_stow_partial_success_is_202_with_reasons(url: str, node: Node) -> None:
    good = part10(make_instance(SyntheticSpec(patients=1, seed=41)))
    response = _post(f"{url}/studies", [good, b"garbage"])
    assert response.status_code == 202
    answer = response.json()
    assert len(answer["00081199"]["Value"]) == 1
    (failed,) = answer["00081198"]["Value"]
    assert failed["00081197"]["Value"] == [0xC000]
    assert "part 2: not a DICOM file" in response.headers["warning"]


def test_stow_garbage_parts_are_409_and_nothing_is_stored(url: str, node: Node) -> None:
    before = stored_count(node)
    truncated = part10(make_instance(SyntheticSpec(patients=1, seed=51)))[:-100]
    response = _post(f"{url}/studies", [b"not dicom", truncated])
    assert response.status_code == 409
    reasons = [item["00081197"]["Value"][0] for item in response.json()["00081198"]["Value"]]
    assert reasons == [0xC000, 0xC000]
    assert stored_count(node) == before


def test_stow_truncated_or_malformed_body_is_400_and_nothing_is_stored(
    url: str, node: Node
) -> None:
    before = stored_count(node)
    good = part10(make_instance(SyntheticSpec(patients=1, seed=61)))
    whole = b"--b\r\nContent-Type: application/dicom\r\n\r\n" + good + b"\r\n--b--\r\n"
    headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=b'}
    cut = requests.post(f"{url}/studies", data=whole[:-200], headers=headers, timeout=60)
    assert cut.status_code == 400
    assert "truncated" in cut.json()["detail"]
    no_boundary = requests.post(
        f"{url}/studies", data=whole, headers={"Content-Type": "multipart/related"}, timeout=60
    )
    assert no_boundary.status_code == 400
    wrong_type = requests.post(
        f"{url}/studies", data=good, headers={"Content-Type": "application/dicom+json"}, timeout=60
    )
    assert wrong_type.status_code == 415
    assert stored_count(node) == before


def test_stow_to_another_study_is_refused(url: str, node: Node) -> None:
    before = stored_count(node)
    instance = part10(make_instance(SyntheticSpec(patients=1, seed=71)))
    response = _post(f"{url}/studies/1.2.3.4", [instance])
    assert response.status_code == 409
    assert response.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert stored_count(node) == before


def test_health_and_metrics_still_answer(node: Node) -> None:
    base = f"http://127.0.0.1:{node.http_port}"
    assert get(f"{base}/healthz").json()["status"] == "ok"
    assert 'door="stow"' in get(f"{base}/metrics").text


def test_settings_can_come_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PACSNODE_DICOMWEB__PUBLIC_URL", "https://pacs.example.org/dicom-web/")
    assert load_settings(data_dir=tmp_path).dicomweb.public_url == (
        "https://pacs.example.org/dicom-web"
    )


def test_answers_with_deidentification_on_carry_no_original_identifiers(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path / "data", fsync=False, dicom_port=0, http_port=0)
    assert settings.deid.enabled
    running = Node(settings)
    running.start()
    try:
        for raw in archive():
            result = running.core.ingestor.accept(raw, Source(door="folder", remote="t"))
            assert result.outcome.success, result.reason
        base = f"http://127.0.0.1:{running.http_port}/dicom-web"
        studies = get(f"{base}/studies").json()
        assert len(studies) == 9
        assert_required(studies, QueryLevel.STUDY)
        assert_required(get(f"{base}/series").json(), QueryLevel.SERIES, QueryLevel.STUDY)
        instances = get(f"{base}/instances").json()
        assert_required(instances, QueryLevel.IMAGE, QueryLevel.SERIES, QueryLevel.STUDY)
        answers = get(f"{base}/studies?includefield=all").text + get(f"{base}/instances").text
        for study in studies:
            answers += get(f"{base}/studies/{value(study, 'StudyInstanceUID')}/metadata").text
        originals = [*synthetic(), *odd()]
        for ds in originals:
            for keyword in ("PatientID", "AccessionNumber", "StudyInstanceUID", "SOPInstanceUID"):
                original = str(ds.get(keyword, "") or "")
                assert not original or original not in answers, keyword
            name = str(ds.get("PatientName", "") or "").strip("^")
            assert not name or name not in answers
    finally:
        running.stop()
