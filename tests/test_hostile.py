"""Hostile input against a running node: one request must never stall it.

Each attack is sent to a real node (``python -m node serve``) while a second client checks
that ``/healthz`` and a C-ECHO keep answering within a second (:func:`stays_responsive`),
and each test then checks what the node did with the attack: answered it once, closed it
in time, logged the true reason in one line.
"""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, suppress
from pathlib import Path

import httpx
import pytest
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from tests.liveness import stays_responsive
from tests.peers import HOST, NodeProcess, dcmtk, free_port, pacsnode_process

pytestmark = pytest.mark.slow

ACSE_TIMEOUT = 3
NETWORK_TIMEOUT = 3
HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2
START, END = b"\x0b", b"\x1c\r"


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NodeProcess, int]]:
    """A node with short timeouts, and its MLLP port."""
    data_dir = tmp_path_factory.mktemp("hostile-node") / "data"
    mllp_port = free_port()
    env = {
        "PACSNODE_LABELING__MLLP_PORT": str(mllp_port),
        "PACSNODE_ACSE_TIMEOUT": str(ACSE_TIMEOUT),
        "PACSNODE_NETWORK_TIMEOUT": str(NETWORK_TIMEOUT),
        "PACSNODE_HTTP_HEADER_TIMEOUT": str(HEADER_TIMEOUT),
        "PACSNODE_HTTP_BODY_TIMEOUT": str(BODY_TIMEOUT),
    }
    with pacsnode_process(
        data_dir, dicom_port=free_port(), http_port=free_port(), env=env
    ) as running:
        yield running, mllp_port


class LogTail:
    """What the node logged since this object was made."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = path.stat().st_size

    def text(self) -> str:
        with self.path.open("rb") as log:
            log.seek(self.offset)
            return log.read().decode("utf-8", "replace")

    def wait_for(self, pattern: str, count: int = 1, timeout: float = 15.0) -> str:
        deadline = time.monotonic() + timeout
        while len(re.findall(pattern, text := self.text())) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"{count} x {pattern!r} not logged:\n{text[-3000:]}")
            time.sleep(0.1)
        return text


# ------------------------------------------------------------------------- report text

HOSTILE_PIECES = ("a", "1", "肝癌、", "mass, ", "Dr. ", "x@")
"""Runs that made the old patterns and the label extractor quadratic: a long word without
an ``@`` (e-mail pattern), a long number (size pattern), a clause of thousands of phrases."""


def hostile_text(length: int) -> str:
    share = length // len(HOSTILE_PIECES)
    text = "".join((piece * share)[:share] for piece in HOSTILE_PIECES)
    return (text + "a" * length)[:length]


def oru(control: str, text: str, patient: str = "PAT-1") -> bytes:
    return "\r".join(
        [
            f"MSH|^~\\&|RIS|HOSP|PACSNODE|LAB|20240305120000||ORU^R01|{control}|P|2.5",
            f"PID|1||{patient}^^^HOSP^MR||Doe^Jane||19700101|F",
            f"OBR|1||ACC-{control}^RIS|CT^CT|||20240305101500",
            f"OBX|1|TX|IMP^Impression||{text}||||||F",
        ]
    ).encode()


def mllp_exchange(
    port: int, payloads: list[bytes], *, wait: float, quiet: float = 2.0
) -> list[list[str]]:
    """Send each payload (already framed or not) on one connection; every answer received
    until ``quiet`` seconds pass without one (at most ``wait``), as MSA fields."""
    answers: list[list[str]] = []
    with socket.create_connection((HOST, port), timeout=wait) as sock:
        for payload in payloads:
            sock.sendall(payload if payload.startswith(START) else START + payload + END)
        buffer = b""
        deadline = time.monotonic() + wait
        sock.settimeout(quiet)
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                if answers:
                    break
                continue
            if not chunk:
                break
            buffer += chunk
            while END in buffer:
                frame, buffer = buffer.split(END, 1)
                segments = frame.lstrip(START).decode("utf-8", "replace").split("\r")
                separator = segments[0][3]  # MSH-1, as the message being answered had it
                msa = next(s for s in segments if s.startswith("MSA" + separator))
                answers.append(msa.split(separator))
    return answers


def test_a_500000_character_hl7_report_is_stored_while_the_node_keeps_answering(
    node: tuple[NodeProcess, int],
) -> None:
    running, mllp_port = node
    with stays_responsive(running):
        answers = mllp_exchange(mllp_port, [oru("BIG1", hostile_text(500_000))], wait=120)
    assert [a[1] for a in answers] == ["AA"], answers


def test_an_80000_character_report_posted_is_stored_while_the_node_keeps_answering(
    node: tuple[NodeProcess, int],
) -> None:
    running, _ = node
    body = {
        "report_type": "radiology",
        "patient_id": "PAT-2",
        "accession_number": "ACC-REST-1",
        "findings": hostile_text(80_000),
    }
    with stays_responsive(running):
        answer = httpx.post(f"{running.url}/api/reports", json=body, timeout=120)
    assert answer.status_code == 201, answer.text


def test_a_report_over_the_length_limit_is_refused_with_the_setting_named(
    node: tuple[NodeProcess, int],
) -> None:
    running, mllp_port = node
    with stays_responsive(running):
        answers = mllp_exchange(mllp_port, [oru("HUGE", "a" * 600_000)], wait=60)
    assert [a[1] for a in answers] == ["AE"]
    assert "labeling.max_report_chars" in answers[0][3]


# ------------------------------------------------------------------------------- MLLP


def test_a_message_over_the_size_limit_gets_one_ar_and_the_connection_goes_on(
    node: tuple[NodeProcess, int],
) -> None:
    running, mllp_port = node
    log = LogTail(running.log_path)
    too_large = oru("TEN-MB", "a" * (10 * 1024 * 1024))
    with stays_responsive(running):
        answers = mllp_exchange(mllp_port, [too_large, oru("AFTER", "No focal lesion.")], wait=60)
    assert [a[1] for a in answers] == ["AR", "AA"], answers
    assert "labeling.mllp_max_message_bytes" in answers[0][3]
    assert answers[1][2] == "AFTER"
    assert len(re.findall("larger than", log.text())) == 1


@pytest.mark.parametrize(
    "message",
    [
        b"MSH|^~\\&|RIS",
        b"MSH|",
        b"MSHX^~\\&|RIS|HOSP",
        b"MSH|^~\\&|RIS|HOSP|PACSNODE|LAB|20240305120000||ORU|C7|P|2.5\rPID|1||P7",
    ],
)
def test_an_unreadable_message_is_refused_with_a_reason_a_person_understands(
    node: tuple[NodeProcess, int], message: bytes
) -> None:
    _, mllp_port = node
    answers = mllp_exchange(mllp_port, [message], wait=30)
    assert len(answers) == 1 and answers[0][1] == "AR", answers
    reason = answers[0][3]
    assert "MSH" in reason
    assert not re.search(r"[A-Z][a-z]+(Error|Exception)\b", reason), reason


def test_an_unknown_escape_sequence_leaves_no_value_in_the_log(
    node: tuple[NodeProcess, int],
) -> None:
    running, mllp_port = node
    log = LogTail(running.log_path)
    answers = mllp_exchange(mllp_port, [oru("ESC", "Seen by \\ZSECRETNAME42\\ today.")], wait=30)
    assert [a[1] for a in answers] == ["AA"]
    log.wait_for("HL7 ESC")
    assert "SECRETNAME42" not in log.text()


# ------------------------------------------------------------------------------ DICOM


def echo(port: int, calling: str = "MODALITY", called: str = "PACSNODE") -> bool:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.network_timeout = 5
    ae.add_requested_context(Verification)
    assoc = ae.associate(HOST, port, ae_title=called)
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status and status.Status == 0)
    finally:
        assoc.release()


def test_70_connections_that_send_two_bytes_neither_lock_modalities_out_nor_stay(
    node: tuple[NodeProcess, int],
) -> None:
    running, _ = node
    log = LogTail(running.log_path)
    with ExitStack() as stack, stays_responsive(running):
        stalled = []
        for _ in range(70):
            sock = stack.enter_context(socket.create_connection((HOST, running.dicom_port)))
            sock.sendall(b"\x01\x00")  # the start of an A-ASSOCIATE-RQ, and nothing more
            stalled.append(sock)
        # a real modality (dcmtk) gets through while all 70 are open
        echoscu = subprocess.run(
            [dcmtk("echoscu"), "-aec", running.ae_title, HOST, str(running.dicom_port)],
            capture_output=True,
            timeout=30,
            check=False,
        )
        assert echoscu.returncode == 0, echoscu.stderr
        assert echo(running.dicom_port)
        # ... and the node closes all 70 once acse_timeout has passed
        deadline = time.monotonic() + ACSE_TIMEOUT + 10
        for sock in stalled:
            assert closed_by_the_node(sock, max(deadline - time.monotonic(), 0.1))
    log.wait_for(rf"no association within {ACSE_TIMEOUT} s \(acse_timeout\)", count=70)


def closed_by_the_node(sock: socket.socket, timeout: float) -> bool:
    """Whether the node closes ``sock`` within ``timeout`` seconds (what it sends first, an
    A-ABORT for instance, is read and dropped)."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            sock.settimeout(max(deadline - time.monotonic(), 0.1))
            if not sock.recv(65536):
                return True
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False
    return False


def test_an_association_that_stops_in_the_middle_of_a_pdu_is_closed(
    node: tuple[NodeProcess, int],
) -> None:
    """pynetdicom aborts it after network_timeout but cannot close it: its reader waits for
    the rest of the PDU, and two threads stay until the peer hangs up."""
    running, _ = node
    log = LogTail(running.log_path)
    ae = AE(ae_title="STALLING")
    ae.add_requested_context(Verification)
    held: list[tuple[Association, socket.socket]] = []
    try:
        with stays_responsive(running):
            for _ in range(3):
                assoc = ae.associate(HOST, running.dicom_port, ae_title=running.ae_title)
                assert assoc.is_established and assoc.dul.socket and assoc.dul.socket.socket
                sock = assoc.dul.socket.socket
                assoc.dul.kill_dul()  # this side stops reading: only the raw socket is left
                time.sleep(0.1)
                sock.sendall(b"\x04\x00")  # the start of a P-DATA-TF, and nothing more
                held.append((assoc, sock))
            for _, sock in held:
                assert closed_by_the_node(sock, NETWORK_TIMEOUT + ACSE_TIMEOUT + 10)
    finally:
        for assoc, _ in held:
            assoc.kill()
    log.wait_for(rf"still open {ACSE_TIMEOUT} s after it was aborted", count=3)


@pytest.fixture(scope="module")
def strict_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """A node that allows two calling AE titles and two associations."""
    data_dir = tmp_path_factory.mktemp("strict-node") / "data"
    env = {"PACSNODE_ALLOWED_CALLING_AETS": '["GOOD"]', "PACSNODE_MAX_ASSOCIATIONS": "2"}
    with pacsnode_process(
        data_dir, dicom_port=free_port(), http_port=free_port(), env=env
    ) as running:
        yield running


def test_a_rejection_is_logged_with_the_titles_asked_for_and_the_true_reason(
    strict_node: NodeProcess,
) -> None:
    log = LogTail(strict_node.log_path)
    assert not echo(strict_node.dicom_port, calling="INTRUDER")
    assert not echo(strict_node.dicom_port, calling="GOOD", called="ELSEWHERE")
    ae = AE(ae_title="GOOD")
    ae.add_requested_context(Verification)
    held = [ae.associate(HOST, strict_node.dicom_port, ae_title="PACSNODE") for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        assert not echo(strict_node.dicom_port, calling="GOOD")
    finally:
        for assoc in held:
            assoc.release()
    assert echo(strict_node.dicom_port, calling="GOOD")
    text = log.wait_for("association rejected", count=3)
    lines = [line for line in text.splitlines() if "association rejected" in line]
    assert "from 'INTRUDER'" in lines[0] and "calling AE title not allowed" in lines[0]
    assert "to 'ELSEWHERE'" in lines[1] and "called AE title is not this node's" in lines[1]
    assert "no free association slot" in lines[2] and "to 'PACSNODE'" in lines[2]
    assert "not allowed" not in lines[1] + lines[2]


# ------------------------------------------------------------------------------- HTTP


def test_half_open_and_slow_http_clients_are_closed_and_do_not_hold_the_server(
    node: tuple[NodeProcess, int],
) -> None:
    running, _ = node
    port = int(running.url.rsplit(":", 1)[1])
    log = LogTail(running.log_path)
    with ExitStack() as stack, stays_responsive(running):
        idle = [stack.enter_context(socket.create_connection((HOST, port))) for _ in range(300)]
        slow_head = stack.enter_context(socket.create_connection((HOST, port)))
        slow_body = stack.enter_context(socket.create_connection((HOST, port)))
        slow_body.sendall(
            b"POST /api/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n"
        )
        slow_head.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        started = time.monotonic()
        answers = {"head": b"", "body": b""}
        open_ = {"head": slow_head, "body": slow_body}
        while open_ and time.monotonic() - started < HEADER_TIMEOUT + BODY_TIMEOUT * 2 + 10:
            for name, sock in list(open_.items()):
                try:
                    sock.sendall(b"x")  # one byte a second
                    sock.settimeout(0.01)
                    chunk = sock.recv(4096)
                    answers[name] += chunk
                    if not chunk:
                        del open_[name]
                except TimeoutError:
                    pass
                except OSError:
                    del open_[name]
            time.sleep(1)
        assert not open_, f"still open after {time.monotonic() - started:.0f} s: {list(open_)}"
        for sock in idle:
            sock.settimeout(5)
            assert sock.recv(1024) == b""  # closed: nothing was ever sent on them
    assert answers["head"].startswith(b"HTTP/1.1 408"), answers["head"][:200]
    text = log.wait_for("request body too slow")
    assert "request headers not received in time" in text
    assert "Traceback" not in text


def test_too_large_headers_get_431(node: tuple[NodeProcess, int]) -> None:
    running, _ = node
    with stays_responsive(running):
        answer = httpx.get(f"{running.url}/healthz", headers={"Accept": "a;" * 200_000}, timeout=30)
    assert answer.status_code == 431


def test_a_body_shorter_than_its_content_length_is_one_log_line(
    node: tuple[NodeProcess, int],
) -> None:
    running, _ = node
    port = int(running.url.rsplit(":", 1)[1])
    log = LogTail(running.log_path)
    with socket.create_connection((HOST, port)) as sock:
        sock.sendall(
            b"POST /dicom-web/studies HTTP/1.1\r\nHost: x\r\n"
            b'Content-Type: multipart/related; type="application/dicom"; boundary=b1\r\n'
            b"Content-Length: 100000\r\n\r\n--b1\r\n"
        )
        time.sleep(0.5)
    log.wait_for("the client left before the end of its body")
    time.sleep(1)
    text = log.text()
    assert "Traceback" not in text
    assert "ERROR" not in text
    assert len(text.strip().splitlines()) == 1, text


# ---------------------------------------------------------------------------- healthz


def test_healthz_says_degraded_when_the_blob_disk_is_nearly_full(
    tmp_path: Path, tiny_filesystem: Path
) -> None:
    env = {
        "PACSNODE_BLOB_DIR": str(tiny_filesystem),
        "PACSNODE_HEALTH_MIN_FREE_BYTES": str(128 * 1024),
    }
    with pacsnode_process(
        tmp_path / "data", dicom_port=free_port(), http_port=free_port(), env=env
    ) as running:
        assert httpx.get(f"{running.url}/healthz").json()["status"] == "ok"
        filler = tiny_filesystem / "filler"
        with filler.open("wb") as out, suppress(OSError):  # the disk fills up: the point
            out.write(b"\0" * (256 * 1024))
        answer = httpx.get(f"{running.url}/healthz")
        assert answer.status_code == 503
        body = answer.json()
        assert body["status"] == "degraded"
        assert "health_min_free_bytes" in body["storage"]
        assert body["catalog"] == "ok"
        filler.unlink()
        assert httpx.get(f"{running.url}/healthz").json() == {
            "status": "ok",
            "catalog": "ok",
            "storage": "ok",
        }
