"""Run a third-party DICOMweb conformance suite against pacsnode (and, for comparison, Orthanc)
and compare its failures with the list in docs/conformance.md ("Third-party conformance
suite": why this suite, what each failure means).

    python -m bench.conformance                        # fetch the suite, start a node, run
    python -m bench.conformance --suite PATH           # the suite from a clone or a snapshot
    python -m bench.conformance --url http://127.0.0.1:8042/dicom-web   # a node already running
    python -m bench.conformance --orthanc --out results.json

The suite is datadoc1/dicomweb-conformance-tests (MIT), pinned to one commit. Its code is never
copied into this repository: it is cloned (or extracted from a local git snapshot) into
bench/.cache/, which git ignores, and its test classes are imported from there.

Exit status 0 when every failing check is listed in docs/conformance.md and every listed check
still fails; 1 otherwise (a new failure to explain, or a fixed one to remove from the list).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Final

import pydicom.data
import requests
from rich.console import Console
from rich.table import Table

from tests.peers import HOST, free_port, orthanc, pacsnode_process
from tests.synthetic import SyntheticSpec, generate

SUITE_REPO: Final = "https://github.com/datadoc1/dicomweb-conformance-tests.git"
SUITE_COMMIT: Final = "2cd6761ac374b03fc846736799a3e675ad299c79"
SUITE_CLASSES: Final = (
    ("dicomweb_tests.qido_tests", "QIDOTest"),
    ("dicomweb_tests.wado_tests", "WADOTest"),
    ("dicomweb_tests.stow_tests", "STOWTest"),
)
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
CACHE: Final = REPO_ROOT / "bench" / ".cache"
DOC: Final = REPO_ROOT / "docs" / "conformance.md"
DOC_SECTION: Final = "## Third-party conformance suite"
# A documented failing check is a table row "| QIDO: <test name> | ...".
DOC_ROW: Final = re.compile(r"^\| (QIDO|WADO|STOW): (.+?) \|", re.M)
ROOTED: Final = "pacsnode, PS3.18 paths"
# The suite's WADO-RS requests outside PS3.18: /series/{uid}/... and /instances/{uid}/...
ROOT_LEVEL: Final = re.compile(r"^/?(series|instances)/([0-9.]+)(/.*)?$")
console = Console()


# ----------------------------------------------------------------------------- the suite


def suite_folder(source: Path | None) -> Path:
    """A folder holding the suite's ``dicomweb_tests`` package at the pinned commit.

    ``source`` may be such a folder (used as it is), or a git repository (bare, e.g. a mirror
    snapshot, or a clone) from which the pinned commit is extracted. Without it the suite is
    cloned from GitHub once into bench/.cache/.
    """
    if source is not None and (source / "dicomweb_tests").is_dir():
        return source
    target = CACHE / f"dicomweb-conformance-tests-{SUITE_COMMIT[:12]}"
    if (target / "dicomweb_tests").is_dir():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    (CACHE / ".gitignore").write_text("*\n")
    partial = target.with_name(target.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    if source is None:
        console.print(f"cloning {SUITE_REPO} into {target}")
        subprocess.run(["git", "clone", "--quiet", SUITE_REPO, str(partial)], check=True)
        subprocess.run(["git", "-C", str(partial), "checkout", "--quiet", SUITE_COMMIT], check=True)
    else:
        console.print(f"extracting {SUITE_COMMIT[:12]} from {source} into {target}")
        partial.mkdir(parents=True)
        archive = subprocess.run(
            ["git", "--git-dir", str(_git_dir(source)), "archive", SUITE_COMMIT, "dicomweb_tests"],
            check=True,
            capture_output=True,
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(partial)], input=archive, check=True)
    partial.rename(target)
    return target


def _git_dir(source: Path) -> Path:
    return source / ".git" if (source / ".git").exists() else source


@dataclasses.dataclass(frozen=True)
class Check:
    protocol: str
    name: str
    status: str
    message: str
    request: dict[str, Any]
    response: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.protocol}: {self.name}"


def study_rooted(suite_class: type[Any], url: str) -> type[Any]:
    """The suite's class with its ``/series/{uid}...`` and ``/instances/{uid}...`` requests
    (which PS3.18 does not define) sent to the PS3.18 resource of the same entity, found by its
    QIDO-RS RetrieveURL: what the checks would see if they used the standard paths."""
    root = url.rstrip("/")

    class StudyRooted(suite_class):  # type: ignore[misc]
        def _make_request(self, method: str, endpoint: str, **kwargs: Any) -> Any:
            match = ROOT_LEVEL.match(endpoint)
            if match:
                level, uid, rest = match.groups()
                key = "SeriesInstanceUID" if level == "series" else "SOPInstanceUID"
                found = requests.get(f"{root}/{level}", params={key: uid}, timeout=60)
                answer = found.json() if found.status_code == 200 else []
                if answer:
                    retrieve = answer[0]["00081190"]["Value"][0]
                    endpoint = retrieve.removeprefix(root) + (rest or "")
            return super()._make_request(method, endpoint, **kwargs)

    return StudyRooted


def run_suite(folder: Path, url: str, verbose: bool, rooted: bool = False) -> list[Check]:
    """Every check of the suite's QIDO-RS, WADO-RS and STOW-RS classes against ``url``; with
    ``rooted``, only the WADO-RS checks (the only ones that use such paths), through
    :func:`study_rooted`."""
    # The suite's classes call logging.basicConfig(INFO): configure the root logger first so
    # that call does nothing, and keep its per-check lines unless asked for.
    logging.basicConfig(level=logging.DEBUG if verbose else logging.CRITICAL)
    sys.path.insert(0, str(folder))
    checks: list[Check] = []
    try:
        for module_name, class_name in SUITE_CLASSES:
            suite_class = getattr(importlib.import_module(module_name), class_name)
            if rooted:
                if class_name != "WADOTest":
                    continue
                suite_class = study_rooted(suite_class, url)
            for result in suite_class(pacs_url=url, timeout=60, verbose=verbose).run_tests():
                checks.append(
                    Check(
                        result.protocol,
                        result.test_name,
                        result.status,
                        result.message,
                        result.request_details,
                        result.response_details,
                    )
                )
    finally:
        sys.path.remove(str(folder))
    return checks


def documented_failures() -> set[str]:
    """The checks docs/conformance.md lists as failing ("QIDO: Basic Patient Query", ...)."""
    text = DOC.read_text()
    start = text.find(DOC_SECTION)
    if start < 0:
        return set()
    end = text.find("\n## ", start + len(DOC_SECTION))
    section = text[start : end if end > 0 else len(text)]
    return {f"{protocol}: {name}" for protocol, name in DOC_ROW.findall(section)}


# ----------------------------------------------------------------------------- the data


def corpus(work: Path) -> list[list[Path]]:
    """What the archive is loaded with, in import batches: real public files (pydicom's test
    and character-set files) and a small synthetic CT/MR set.

    pydicom's RT Dose files share one SOP Instance UID (15 frames, and 1-frame variants): only
    the 15-frame one is loaded, first, so that its study is the first the archive lists and
    the suite's frame check, which looks at the first five instances, has a multi-frame one.
    """
    test_files = Path(pydicom.data.get_testdata_file("CT_small.dcm") or "").parent
    charset_files = Path(pydicom.data.get_charset_files()[0]).parent
    multiframe = test_files / "rtdose.dcm"
    rest = sorted(p for p in test_files.iterdir() if p.is_file() and p.name != "README.md")
    rest = [p for p in rest if not p.name.startswith("rtdose")]
    synthetic = work / "synthetic"
    generate(synthetic, SyntheticSpec(patients=2, ct_slices=3, mr_slices=2, rows=64, columns=64))
    return [[multiframe], [*rest, charset_files, synthetic]]


def import_into_pacsnode(data_dir: Path, batches: list[list[Path]], env: dict[str, str]) -> None:
    for batch in batches:
        # Exit status 1 means some files were refused (not DICOM, burned-in pixels, ...): the
        # summary it prints says which and why.
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "node",
                "import",
                "--create",
                "--data-dir",
                str(data_dir),
                *map(str, batch),
            ],
            env={**os.environ, **env},
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
        )
        if done.returncode not in (0, 1):
            raise RuntimeError(f"pacsnode import failed:\n{done.stdout[-3000:]}{done.stderr}")


def upload_to_orthanc(url: str, batches: list[list[Path]]) -> None:
    with requests.Session() as session:
        session.trust_env = False
        for batch in batches:
            for path in batch:
                files = sorted(path.rglob("*")) if path.is_dir() else [path]
                for file in files:
                    if file.is_file():
                        # Orthanc answers 400 for what it cannot read, as pacsnode refuses it.
                        session.post(f"{url}/instances", data=file.read_bytes(), timeout=60)


@contextmanager
def pacsnode_target(work: Path, batches: list[list[Path]]) -> Iterator[str]:
    data_dir = work / "pacsnode-data"
    env = {"PACSNODE_FSYNC": "false"}
    console.print("pacsnode: pacsnode import (the ingest pipeline: de-identified), then serve")
    import_into_pacsnode(data_dir, batches, env)
    with pacsnode_process(data_dir, dicom_port=free_port(), http_port=free_port(), env=env) as node:
        yield f"{node.url}/dicom-web"


@contextmanager
def orthanc_target(work: Path, batches: list[list[Path]]) -> Iterator[str]:
    console.print("orthanc: REST upload of the same files, DICOMweb plugin")
    with orthanc(
        work / "orthanc", http_port=free_port(), dicom_port=free_port(), dicomweb=True
    ) as peer:
        upload_to_orthanc(peer.url, batches)
        yield f"{peer.url}/dicom-web"


# ----------------------------------------------------------------------------- the report


def report(results: dict[str, list[Check]], documented: set[str]) -> int:
    targets = list(results)
    table = Table(
        title="third-party DICOMweb conformance suite (datadoc1, " + SUITE_COMMIT[:7] + ")"
    )
    table.add_column("check")
    for target in targets:
        table.add_column(target)
    if "pacsnode" in results:
        table.add_column("docs/conformance.md")
    order = [check.key for check in next(iter(results.values()))]
    by_target = {t: {c.key: c for c in checks} for t, checks in results.items()}
    for key in order:
        row = [key]
        for target in targets:
            check = by_target[target].get(key)
            row.append(_status(check.status if check else "-"))
        if "pacsnode" in results:
            row.append("listed" if key in documented else "")
        table.add_row(*row)
    console.print(table)

    pacsnode = by_target.get("pacsnode")
    if pacsnode is None:
        return 0
    failing = {key for key, check in pacsnode.items() if check.status == "FAIL"}
    for key in sorted(failing):
        check = pacsnode[key]
        console.print(f"[bold]{key}[/]: {check.message}")
        console.print(f"  request  {json.dumps(check.request, default=str)[:400]}")
        console.print(f"  response {json.dumps(check.response, default=str)[:400]}")
    new = sorted(failing - documented)
    fixed = sorted(documented - failing)
    for key in new:
        console.print(f"[red]fails and is not in docs/conformance.md:[/] {key}")
    for key in fixed:
        console.print(f"[yellow]listed in docs/conformance.md but no longer fails:[/] {key}")
    if not new and not fixed:
        console.print("every failing check is listed in docs/conformance.md, with its reason")
    return 1 if new or fixed else 0


def _status(status: str) -> str:
    colour = {"PASS": "green", "FAIL": "red", "SKIP": "yellow"}.get(status)
    return f"[{colour}]{status}[/]" if colour else status


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.conformance", description=__doc__)
    parser.add_argument(
        "--suite", type=Path, help="the suite: a folder with dicomweb_tests/, or a git repository"
    )
    parser.add_argument("--url", help="DICOMweb root of a node already running (nothing started)")
    parser.add_argument("--orthanc", action="store_true", help="also run it against Orthanc")
    parser.add_argument("--out", type=Path, help="write every check of every target as JSON")
    parser.add_argument("--verbose", action="store_true", help="the suite's own log lines")
    args = parser.parse_args()

    try:
        folder = suite_folder(args.suite)
    except (subprocess.CalledProcessError, OSError) as error:
        console.print(f"[red]Error:[/] cannot get the suite ({error}); pass --suite PATH")
        return 1
    # Loopback must not go through a proxy from the environment (the suite uses requests).
    os.environ["NO_PROXY"] = os.environ["no_proxy"] = f"{HOST},localhost"
    results: dict[str, list[Check]] = {}
    if args.url:
        results["pacsnode"] = run_suite(folder, args.url, args.verbose)
        results[ROOTED] = run_suite(folder, args.url, args.verbose, rooted=True)
    else:
        with tempfile.TemporaryDirectory(prefix="bench-conformance-") as tmp:
            work = Path(tmp)
            batches = corpus(work)
            with pacsnode_target(work, batches) as url:
                results["pacsnode"] = run_suite(folder, url, args.verbose)
                results[ROOTED] = run_suite(folder, url, args.verbose, rooted=True)
            if args.orthanc:
                with orthanc_target(work, batches) as url:
                    results["orthanc"] = run_suite(folder, url, args.verbose)
    if args.out:
        args.out.write_text(
            json.dumps(
                {t: [dataclasses.asdict(c) for c in checks] for t, checks in results.items()},
                indent=1,
                default=str,
            )
        )
    return report(results, documented_failures())


if __name__ == "__main__":
    raise SystemExit(main())
