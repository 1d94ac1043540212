"""``pacsnode verify``: missing, corrupt, orphan and temporary files are found; repair is safe."""

from __future__ import annotations

import os
import time
from pathlib import Path

from sqlalchemy import select
from typer.testing import CliRunner

from catalog.models import Instance
from ingest import Source, integrity
from ingest.integrity import ProblemKind
from node.app import Core
from node.cli import app
from tests.dicom_bytes import part10, sample

SOURCE = Source(door="folder", remote="test")


def _store_three(core: Core) -> dict[str, str]:
    for name in ("CT_small.dcm", "MR_small.dcm", "rtplan.dcm"):
        core.ingestor.accept(part10(sample(name)), SOURCE)
    with core.db.read() as session:
        return dict(session.execute(select(Instance.sop_instance_uid, Instance.blob_key)).all())


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_healthy_archive_has_no_problems(core: Core) -> None:
    _store_three(core)
    report = integrity.check(core.db, core.blobs)
    assert (report.instances, report.blobs, report.problems) == (3, 3, [])


def test_every_kind_of_damage_is_found_and_only_debris_is_repaired(core: Core) -> None:
    keys = _store_three(core)
    (missing_uid, missing_key), (corrupt_uid, corrupt_key), _ = sorted(keys.items())
    core.blobs.path_of(missing_key).unlink()
    corrupt = core.blobs.path_of(corrupt_key)
    data = bytearray(corrupt.read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    corrupt.write_bytes(bytes(data))
    orphan = core.blobs.put(b"written, never indexed")
    young_orphan = core.blobs.put(b"being indexed right now")
    temp = core.blobs.path_of(orphan.key).with_name(".tmp-" + "a" * 32)
    temp.write_bytes(b"half")
    _age(core.blobs.path_of(orphan.key), 3600)
    _age(temp, 3600)

    quick = integrity.check(core.db, core.blobs, verify_hashes=False)
    assert [p.ref for p in quick.of(ProblemKind.CORRUPT)] == []  # same size: only a hash sees it

    report = integrity.check(core.db, core.blobs)
    assert report.of(ProblemKind.MISSING) == [integrity.Problem(ProblemKind.MISSING, missing_uid)]
    assert report.of(ProblemKind.CORRUPT) == [integrity.Problem(ProblemKind.CORRUPT, corrupt_uid)]
    assert [p.ref for p in report.of(ProblemKind.ORPHAN)] == [orphan.key]
    assert len(report.of(ProblemKind.TEMPORARY)) == 1

    assert integrity.repair(report, core.blobs) == 2
    assert not core.blobs.exists(orphan.key)
    assert core.blobs.exists(young_orphan.key)  # a write in progress is left alone
    assert not temp.exists()
    assert core.blobs.exists(corrupt_key)  # evidence is never deleted


def test_cli_exits_1_while_damage_remains(core: Core) -> None:
    keys = _store_three(core)
    runner = CliRunner()
    args = [
        "verify",
        "--data-dir",
        str(core.settings.data_dir),
        "--database-url",
        core.settings.catalog_url,
    ]
    assert runner.invoke(app, args).exit_code == 0
    core.blobs.path_of(next(iter(keys.values()))).unlink()
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "missing:" in result.stdout
