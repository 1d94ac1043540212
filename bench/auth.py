"""What authentication costs: QIDO-RS and WADO-RS medians with each method against none, in
one run, on the same node and data. See bench/README.md.

    python -m bench.auth [--studies 2000] [--requests 300]

One node runs with ``access.methods = ["token", "password", "oidc"]`` (the OpenID Connect
provider is the tests' own, on loopback), a second one without authentication, both on the
same archive. For each way of calling (none; an API token; the session cookie of a password
login; a provider's access token) one keep-alive client sends the same requests: QIDO-RS
``/studies?PatientID=...`` and WADO-RS study ``/metadata``. Reported per
way: median latency of each, the node's CPU time per request (user + system of the process,
from ``/proc``), and the overhead against none. The target (issue 12): a token's check costs
at most 10 % of a QIDO answer's time.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

import requests
from rich.console import Console
from rich.table import Table

from bench.dicomweb import small_studies
from tests.oidc_issuer import TestIssuer
from tests.peers import NodeProcess, free_port, pacsnode_process

SEED: Final = 1212
PASSWORD: Final = "bench-password-1234"
console = Console()


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` (its threads included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def pacsnode(data_dir: Path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "node", *args, "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PW": PASSWORD},
    )
    if done.returncode not in (0, 1):
        raise RuntimeError(f"pacsnode {' '.join(args)}: {done.stderr[-2000:]}")
    return done.stdout.strip()


@contextmanager
def node(
    data_dir: Path, methods: list[str], issuer: TestIssuer | None = None
) -> Iterator[NodeProcess]:
    env = {"PACSNODE_ACCESS__METHODS": json.dumps(methods)}
    if issuer is not None:
        env["PACSNODE_ACCESS__OIDC__ISSUER"] = issuer.url
        env["PACSNODE_ACCESS__OIDC__AUDIENCE"] = issuer.audience
        # as the token and the user: every project (a scoped caller's queries carry the
        # project condition, a cost of scoping, not of authentication)
        env["PACSNODE_ACCESS__OIDC__PROJECT_MAP"] = json.dumps({"pacs-everyone": "*"})
    with pacsnode_process(data_dir, dicom_port=free_port(), http_port=free_port(), env=env) as n:
        yield n


def measure(
    running: NodeProcess, session: requests.Session, urls: list[str]
) -> tuple[float, float]:
    """Median milliseconds of ``urls`` and the node's CPU milliseconds per request."""
    for url in urls[:10]:  # warm-up (caches, connections)
        session.get(url, timeout=60).raise_for_status()
    timings = []
    cpu_before = cpu_seconds(running.pid)
    for url in urls:
        started = time.perf_counter()
        answer = session.get(url, timeout=60)
        timings.append((time.perf_counter() - started) * 1000)
        answer.raise_for_status()
    cpu = (cpu_seconds(running.pid) - cpu_before) * 1000 / len(urls)
    return statistics.median(timings), cpu


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--studies", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args(argv)
    studies = small_studies(args.studies)
    rng = random.Random(SEED)
    files = sorted(studies.glob("*.dcm"))
    rows: list[tuple[str, float, float, float, float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        open_data, guarded_data = Path(tmp) / "open", Path(tmp) / "guarded"
        pacsnode(open_data, "import", "--create", str(studies))
        shutil.copytree(open_data, guarded_data)  # the same archive: the same pseudonyms
        with (
            TestIssuer() as issuer,
            node(open_data, []) as open_node,
            node(guarded_data, ["token", "password", "oidc"], issuer) as guarded,
        ):
            jwt = issuer.token(
                roles=["viewer"], groups=["pacs-everyone"], exp=int(time.time()) + 3600
            )
            token = pacsnode(guarded_data, "tokens", "create", "bench", "--role", "viewer")
            pacsnode(
                guarded_data, "users", "add", "bench", "--role", "viewer", "--password-env", "PW"
            )
            # the stored (pseudonymised) ids and UIDs, as clients see them
            probe = requests.get(f"{open_node.url}/dicom-web/studies?limit=1000", timeout=60)
            answer = probe.json()
            pseudo_ids = sorted({row["00100020"]["Value"][0] for row in answer})
            study_uids = [row["0020000D"]["Value"][0] for row in answer]
            qido_paths = [
                f"/dicom-web/studies?PatientID={rng.choice(pseudo_ids)}"
                for _ in range(args.requests)
            ]
            wado_paths = [
                f"/dicom-web/studies/{rng.choice(study_uids)}/metadata"
                for _ in range(args.requests)
            ]
            ways: list[tuple[str, NodeProcess, Callable[[requests.Session], None]]] = [
                ("none", open_node, lambda s: None),
                (
                    "token",
                    guarded,
                    lambda s: s.headers.update({"Authorization": f"Bearer {token}"}),
                ),
                ("session", guarded, lambda s: _login(guarded, s)),
                (
                    "oidc",
                    guarded,
                    lambda s: s.headers.update({"Authorization": f"Bearer {jwt}"}),
                ),
            ]
            for name, running, prepare in ways:
                session = requests.Session()
                session.trust_env = False
                prepare(session)
                qido, qido_cpu = measure(running, session, [running.url + p for p in qido_paths])
                wado, wado_cpu = measure(running, session, [running.url + p for p in wado_paths])
                rows.append((name, qido, qido_cpu, wado, wado_cpu))
    _report(rows, len(files), args.requests)
    return 0


def _login(running: NodeProcess, session: requests.Session) -> None:
    answer = session.post(
        f"{running.url}/login",
        data={"username": "bench", "password": PASSWORD, "next": "/"},
        allow_redirects=False,
        timeout=60,
    )
    if answer.status_code != 303:
        raise RuntimeError(f"login failed: HTTP {answer.status_code}")


def _report(rows: list[tuple[str, float, float, float, float]], studies: int, count: int) -> None:
    table = Table(title=f"authentication cost ({studies} studies, {count} requests each)")
    for column in ("caller", "QIDO ms", "CPU ms", "vs none", "metadata ms", "CPU ms", "vs none"):
        table.add_column(column, justify="left" if column == "caller" else "right")
    base_qido, base_wado = rows[0][1], rows[0][3]
    for name, qido, qido_cpu, wado, wado_cpu in rows:
        table.add_row(
            name,
            f"{qido:.2f}",
            f"{qido_cpu:.2f}",
            f"{(qido / base_qido - 1) * 100:+.1f} %",
            f"{wado:.2f}",
            f"{wado_cpu:.2f}",
            f"{(wado / base_wado - 1) * 100:+.1f} %",
        )
    console.print(table)
    console.print(
        "ms: median latency; CPU ms: the node's CPU per request. caller: none (no "
        "authentication), token (API token), session (password login cookie), oidc.\n"
        "target: checking a token costs at most 10 % of a QIDO answer's time"
    )


if __name__ == "__main__":
    sys.exit(main())
