"""Exporting an instance that carries no image (pydicom's RT Plan): PNG says "no pixel
data", as NIfTI does, not "cannot decode the pixel data (...: AttributeError)", and the
images of the same export are written."""

from __future__ import annotations

from pathlib import Path

from export import Cohorts, Exporter
from ingest import Source
from node.app import Core, build_label_source
from tests.dicom_bytes import part10, sample


def test_png_says_no_pixel_data(core: Core, tmp_path: Path) -> None:
    for name in ("rtplan.dcm", "CT_small.dcm"):
        result = core.ingestor.accept(part10(sample(name)), Source(door="folder", remote="t"))
        assert result.outcome.success, result.reason
    cohorts = Cohorts(core.db, core.settings.export, build_label_source(core.report_intake.tasks))
    exporter = Exporter(core.db, core.blobs, cohorts, core.settings.export)
    cohorts.define("both", {}, actor="t")
    frozen = cohorts.freeze("both", actor="t")
    assert frozen.series == 2

    png = exporter.to_folder("both", "png", tmp_path / "png", actor="t")
    assert png.files > 0  # the CT slice
    problems = [reason for _, reason in (*png.skipped, *png.partial)]
    assert len(problems) == 1
    assert problems[0].endswith("no pixel data (an image is needed for PNG)"), problems
    assert "AttributeError" not in problems[0] and "decode" not in problems[0]
