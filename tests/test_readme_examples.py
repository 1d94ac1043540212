"""The README's examples run as written against a running, de-identifying node: the QIDO
query finds studies although names are pseudonyms, the storescu lines send compressed files
as they are, and no path points outside the repository."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.uid import JPEG2000, RLELossless
from sqlalchemy import select

from catalog.models import Instance
from config import load_settings
from ingest import Source
from node.app import Node
from tests.dicom_bytes import part10, sample
from tests.peers import HOST, REPO_ROOT, dcmtk

README = (REPO_ROOT / "README.md").read_text()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    settings = load_settings(
        data_dir=tmp_path_factory.mktemp("readme") / "data",
        fsync=False,
        dicom_host=HOST,
        dicom_port=0,
        http_port=0,
    )
    running = Node(settings)
    running.start()
    try:
        yield running
    finally:
        running.stop()


def test_no_path_points_outside_the_repository() -> None:
    for doc in [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]:
        text = doc.read_text()
        assert "../" not in text, f"{doc.name} names a file outside the repository"
        for target in re.findall(r"\]\(([^)#\s]+)", text):
            if not re.match(r"[a-z]+:", target):
                path = (doc.parent / target).resolve()
                assert path.is_relative_to(REPO_ROOT) and path.exists(), (doc.name, target)


def test_the_qido_example_finds_studies_in_a_de_identified_archive(node: Node) -> None:
    """``PatientName=*doe*`` could never match: stored names are pseudonyms."""
    for name in ("CT_small.dcm", "MR_small.dcm"):
        result = node.core.ingestor.accept(part10(sample(name)), Source("folder", "t"))
        assert result.outcome.success, result.reason
    [example] = re.findall(r"curl '(http://127\.0\.0\.1:8042/dicom-web/studies\?[^']*)'", README)
    url = example.replace(":8042", f":{node.http_port}")
    answer = requests.get(url, timeout=30)
    assert answer.status_code == 200, answer.text
    studies = answer.json()
    assert studies and all("CT" in study["00080061"]["Value"] for study in studies)


def test_the_storescu_examples_send_compressed_files_as_they_are(
    node: Node, tmp_path: Path
) -> None:
    """dcmtk's storescu proposes uncompressed syntaxes only: the README's single
    ``storescu ... file.dcm`` failed on an RLE file ("unable to convert dataset")."""
    study = tmp_path / "study"
    (study / "series").mkdir(parents=True)
    for name in ("CT_small.dcm", "MR_small_RLE.dcm", "693_J2KI.dcm"):
        shutil.copy(get_testdata_file(name), study / "series" / name)
    commands = re.findall(r"^(storescu -aec PACSNODE .*?study/)", README, re.MULTILINE)
    assert len(commands) >= 2, "the README shows how to send a folder of compressed files"
    for command in commands:
        args = shlex.split(command.replace("<host> 11112", f"{HOST} {node.dicom.port}"))
        args = [dcmtk("storescu"), *args[1:-1], str(study)]
        subprocess.run(args, capture_output=True, timeout=120, check=False)
    with node.core.db.read() as session:
        keys = session.scalars(select(Instance.blob_key)).all()
    syntaxes = {
        dcmread(node.core.blobs.path_of(key), stop_before_pixels=True).file_meta.TransferSyntaxUID
        for key in keys
    }
    assert {RLELossless, JPEG2000} <= syntaxes  # stored as sent, not decompressed
