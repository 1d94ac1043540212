"""Peers for the integration tests and the benchmarks: Orthanc, dcmtk, a bare pynetdicom
receiver and pacsnode itself, each as a context manager on 127.0.0.1.

Every process is started in a session of its own and stopped on exit (also on an exception or
Ctrl-C) by signalling that session's process group, so children such as ``storescp --fork``'s
go with it.

dcmtk is always called from ``/usr/bin``: on PATH, ``storescu`` and friends may be pynetdicom's
Python console scripts of the same names.

``python -m tests.peers bare-receiver --out-dir D --port P`` runs the bare receiver in the
foreground (it is what :func:`bare_receiver` starts).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any, Final

from pynetdicom import (
    AE,
    ALL_TRANSFER_SYNTAXES,
    AllStoragePresentationContexts,
    VerificationPresentationContexts,
    evt,
)
from pynetdicom.events import Event

from storage import FilesystemBlobStore

HOST: Final = "127.0.0.1"
REPO_ROOT: Final = Path(__file__).resolve().parents[1]
DCMTK_DIR: Final = Path("/usr/bin")
ORTHANC_BIN: Final = Path("/usr/sbin/Orthanc")
HAPROXY_BIN: Final = Path("/usr/sbin/haproxy")
DICOMWEB_PLUGIN: Final = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
STARTUP_TIMEOUT: Final = 60.0
STOP_TIMEOUT: Final = 30.0

# Loopback must never go through an HTTP proxy set in the environment.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PeerError(RuntimeError):
    """A peer is missing, did not start, or did not answer in time."""


# ------------------------------------------------------------------------------------ helpers


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        port: int = sock.getsockname()[1]
        return port


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports that were free on 127.0.0.1 a moment ago (two calls of
    :func:`free_port` in a row may return the same one)."""
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            for _ in range(count)
        ]
        for sock in sockets:
            sock.bind((HOST, 0))
        return [int(sock.getsockname()[1]) for sock in sockets]


def dcmtk(tool: str) -> str:
    """Path of the dcmtk binary ``tool`` (e.g. ``"storescu"``) in /usr/bin."""
    path = DCMTK_DIR / tool
    if not (path.is_file() and os.access(path, os.X_OK)):
        raise PeerError(
            f"dcmtk's {tool} is not at {path}: install the Debian package 'dcmtk' "
            f"(a {tool} found on PATH may be pynetdicom's script, not dcmtk)"
        )
    return str(path)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(text.splitlines()[-lines:])


def _env(tcp_nodelay: bool, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The current environment with ``TCP_NODELAY=1`` (read by dcmtk) set or removed."""
    env = dict(os.environ)
    env.pop("TCP_NODELAY", None)
    if tcp_nodelay:
        env["TCP_NODELAY"] = "1"
    env.update(extra or {})
    return env


def _spawn(
    cmd: Sequence[str],
    log_path: Path,
    env: Mapping[str, str],
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("wb") as log:
        return subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env),
            cwd=cwd,
            start_new_session=True,
        )


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> bool:
    """Signal the process group ``proc`` leads; False when no member is left."""
    try:
        os.killpg(proc.pid, sig)
    except ProcessLookupError:
        return False
    return True


def _stop(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> int:
    """SIGTERM ``proc``'s process group, SIGKILL it after ``timeout``; the exit status."""
    if _signal_group(proc, signal.SIGTERM):
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            _signal_group(proc, signal.SIGKILL)
    code = proc.wait()
    # Children that ignored SIGTERM (e.g. a forked storescp still in an association); wait
    # until the group is really empty, so "stopped" means no member is left.
    deadline = time.monotonic() + timeout
    while _signal_group(proc, signal.SIGKILL) and time.monotonic() < deadline:
        time.sleep(0.02)
    return code


@contextmanager
def _running(proc: subprocess.Popen[bytes], timeout: float = STOP_TIMEOUT) -> Iterator[None]:
    try:
        yield
    finally:
        _stop(proc, timeout)


def _wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    what: str,
    log_path: Path,
    timeout: float = STARTUP_TIMEOUT,
) -> None:
    """Poll ``ready`` until true; fail with the log's tail if ``proc`` dies or time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise PeerError(
                f"{what} exited with status {proc.returncode} while starting; "
                f"{log_path}:\n{_tail(log_path)}"
            )
        if ready():
            return
        if time.monotonic() > deadline:
            raise PeerError(
                f"{what} did not answer within {timeout:.0f} s; {log_path}:\n{_tail(log_path)}"
            )
        time.sleep(0.1)


def _http_ok(url: str, tls: ssl.SSLContext | None = None) -> Callable[[], bool]:
    opener = (
        _http
        if tls is None
        else urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=tls)
        )
    )

    def check() -> bool:
        try:
            with opener.open(url, timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    return check


def _tcp_open(port: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            with socket.create_connection((HOST, port), timeout=1):
                return True
        except OSError:
            return False

    return check


# ------------------------------------------------------------------------------------ Orthanc


@dataclass(frozen=True)
class OrthancPeer:
    url: str
    http_port: int
    dicom_port: int
    aet: str
    pid: int
    log_path: Path


@contextmanager
def orthanc(
    work_dir: Path,
    *,
    http_port: int,
    dicom_port: int,
    aet: str = "ORTHANC",
    dicomweb: bool = False,
    modalities: Mapping[str, tuple[str, str, int]] | None = None,
    tcp_nodelay: bool = True,
    extra_config: Mapping[str, Any] | None = None,
) -> Iterator[OrthancPeer]:
    """Run Orthanc with a fresh storage and index in a temporary folder under ``work_dir``.

    ``modalities`` maps a name to ``(aet, host, port)``. The config and the log
    (``orthanc-<http_port>.json/.log``) stay in ``work_dir``; the storage folder is removed on
    exit. Orthanc 1.10 listens for DICOM on all addresses, whatever is configured.
    """
    if not ORTHANC_BIN.is_file():
        raise PeerError(f"Orthanc is not at {ORTHANC_BIN}: install the Debian package 'orthanc'")
    work_dir.mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix="orthanc-storage-", dir=work_dir))
    config: dict[str, Any] = {
        "Name": f"peer-{aet}",
        "StorageDirectory": str(storage / "storage"),
        "IndexDirectory": str(storage / "index"),
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "DicomCheckCalledAet": False,
        "DicomModalities": {name: list(peer) for name, peer in (modalities or {}).items()},
        "OverwriteInstances": True,
        "StableAge": 2,
        "SaveJobs": False,
        "Plugins": [],
    }
    if dicomweb:
        if not DICOMWEB_PLUGIN.exists():
            raise PeerError(f"no DICOMweb plugin at {DICOMWEB_PLUGIN}: install 'orthanc-dicomweb'")
        config["Plugins"] = [str(DICOMWEB_PLUGIN)]
        config["DicomWeb"] = {"Enable": True, "Root": "/dicom-web/"}
    config.update(extra_config or {})
    config_path = work_dir / f"orthanc-{http_port}.json"
    config_path.write_text(json.dumps(config, indent=2))
    log_path = work_dir / f"orthanc-{http_port}.log"
    try:
        proc = _spawn([str(ORTHANC_BIN), str(config_path)], log_path, _env(tcp_nodelay))
        with _running(proc):
            url = f"http://{HOST}:{http_port}"
            _wait_until(_http_ok(f"{url}/system"), proc, "Orthanc", log_path)
            yield OrthancPeer(url, http_port, dicom_port, aet, proc.pid, log_path)
    finally:
        shutil.rmtree(storage, ignore_errors=True)


# ------------------------------------------------------------------------------------ haproxy


@contextmanager
def haproxy(config: str, work_dir: Path, *, ready_port: int) -> Iterator[int]:
    """Run haproxy in the foreground with ``config`` (written to ``work_dir/haproxy.cfg``, its
    log beside it) until ``ready_port`` accepts connections; yields its pid."""
    if not HAPROXY_BIN.is_file():
        raise PeerError(f"haproxy is not at {HAPROXY_BIN}: install the Debian package 'haproxy'")
    work_dir.mkdir(parents=True, exist_ok=True)
    config_path = work_dir / "haproxy.cfg"
    config_path.write_text(config)
    log_path = work_dir / "haproxy.log"
    proc = _spawn([str(HAPROXY_BIN), "-db", "-f", str(config_path)], log_path, _env(False))
    with _running(proc):
        _wait_until(_tcp_open(ready_port), proc, "haproxy", log_path)
        yield proc.pid


# ------------------------------------------------------------------------------ DICOM receivers


@dataclass(frozen=True)
class ReceiverPeer:
    """A C-STORE receiver writing every instance it gets as one file in ``out_dir``."""

    port: int
    aet: str
    pid: int
    out_dir: Path
    log_path: Path


@contextmanager
def storescp(
    out_dir: Path,
    *,
    port: int,
    aet: str = "STORESCP",
    tcp_nodelay: bool = True,
    log_path: Path | None = None,
) -> Iterator[ReceiverPeer]:
    """dcmtk ``storescp`` accepting all storage SOP classes and transfer syntaxes.

    It forks one child per association, so several associations are served in parallel.
    The log defaults to ``<out_dir>.log`` beside ``out_dir``.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log_path or out_dir.with_name(out_dir.name + ".log")
    cmd = [dcmtk("storescp"), "--fork", "-aet", aet, "-od", str(out_dir), "+xa", "-pm", "-dhl"]
    proc = _spawn([*cmd, str(port)], log, _env(tcp_nodelay))
    with _running(proc):
        _wait_until(_tcp_open(port), proc, "storescp", log)
        yield ReceiverPeer(port, aet, proc.pid, out_dir, log)


@contextmanager
def bare_receiver(
    out_dir: Path,
    *,
    port: int,
    aet: str = "BARE",
    max_pdu: int = 1048576,
    durable: bool = False,
    log_path: Path | None = None,
) -> Iterator[ReceiverPeer]:
    """The cheapest pynetdicom C-STORE SCP, in its own process: writes what it gets, nothing
    more. It shows what pacsnode costs on top of pynetdicom itself.

    ``durable`` writes each instance through pacsnode's blob store instead (atomic, the file
    and its folder fsynced, sha256 taken) before answering: what durability alone costs.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    log = log_path or out_dir.with_name(out_dir.name + ".log")
    cmd = [
        sys.executable,
        "-m",
        "tests.peers",
        "bare-receiver",
        "--out-dir",
        str(out_dir.resolve()),
        "--port",
        str(port),
        "--aet",
        aet,
        "--max-pdu",
        str(max_pdu),
        *(["--durable"] if durable else []),
    ]
    proc = _spawn(cmd, log, _env(False), cwd=REPO_ROOT)
    with _running(proc):
        _wait_until(_tcp_open(port), proc, "bare receiver", log)
        yield ReceiverPeer(port, aet, proc.pid, out_dir, log)


def _serve_bare_receiver(
    out_dir: Path, port: int, aet: str, max_pdu: int, *, durable: bool
) -> None:
    ae = AE(ae_title=aet)
    ae.maximum_pdu_size = max_pdu
    for context in [*AllStoragePresentationContexts, *VerificationPresentationContexts]:
        assert context.abstract_syntax is not None
        ae.add_supported_context(context.abstract_syntax, ALL_TRANSFER_SYNTAXES)
    counter = itertools.count()  # next() on a count is atomic under the GIL
    blobs = FilesystemBlobStore(out_dir) if durable else None

    def on_store(event: Event) -> int:
        if blobs is not None:
            blobs.put(event.encoded_dataset())
        else:
            (out_dir / f"{next(counter):08d}.dcm").write_bytes(event.encoded_dataset())
        return 0x0000

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda _signum, _frame: stop.set())
    server = ae.start_server((HOST, port), block=False, evt_handlers=[(evt.EVT_C_STORE, on_store)])
    assert server is not None  # block=False returns the server
    print(f"bare receiver {aet} on {HOST}:{port} -> {out_dir}", flush=True)
    try:
        stop.wait()
    finally:
        server.shutdown()


# ------------------------------------------------------------------------------------ pacsnode


@dataclass(frozen=True)
class NodeProcess:
    proc: subprocess.Popen[bytes]
    dicom_port: int
    http_port: int
    ae_title: str
    url: str
    log_path: Path

    @property
    def pid(self) -> int:
        return self.proc.pid

    def terminate(self, timeout: float = STOP_TIMEOUT) -> int:
        """Graceful stop (SIGTERM, SIGKILL after ``timeout``); the exit status."""
        return _stop(self.proc, timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        _signal_group(self.proc, signal.SIGKILL)
        self.proc.wait()


@contextmanager
def pacsnode_process(
    data_dir: Path,
    *,
    dicom_port: int,
    http_port: int,
    ae_title: str = "PACSNODE",
    extra_args: Sequence[str] = (),
    env: Mapping[str, str] | None = None,
    log_path: Path | None = None,
    tls: ssl.SSLContext | None = None,
) -> Iterator[NodeProcess]:
    """``python -m node serve`` until ``/healthz`` answers 200; stopped on exit if still running.

    The DICOM port listens on 127.0.0.1 (``PACSNODE_DICOM_HOST``); ``env`` adds to or
    overrides the current environment. The log defaults to ``node.log`` beside ``data_dir``.
    ``tls``: the node serves HTTPS (``https.*`` in ``env``), checked with this client context.
    """
    log = log_path or data_dir.parent / "node.log"
    cmd = [
        sys.executable,
        "-m",
        "node",
        "serve",
        "--data-dir",
        str(data_dir),
        "--dicom-port",
        str(dicom_port),
        "--http-port",
        str(http_port),
        "--ae-title",
        ae_title,
        *extra_args,
    ]
    # The HL7 listener takes any free loopback port unless the caller names one: many nodes
    # run at once in a test session, and 2575 may be someone else's.
    defaults = {
        "PACSNODE_DICOM_HOST": HOST,
        "PACSNODE_LABELING__MLLP_HOST": HOST,
        "PACSNODE_LABELING__MLLP_PORT": "0",
    }
    node_env = _env(False, {**defaults, **(env or {})})
    proc = _spawn(cmd, log, node_env, cwd=REPO_ROOT)
    with _running(proc):
        url = f"{'http' if tls is None else 'https'}://{HOST}:{http_port}"
        _wait_until(_http_ok(f"{url}/healthz", tls), proc, "pacsnode", log)
        yield NodeProcess(proc, dicom_port, http_port, ae_title, url, log)


# ------------------------------------------------------------------------- faulty HTTP proxy


@dataclass
class _Fault:
    pattern: re.Pattern[str]
    status: int | None  # answer this instead of forwarding
    stall: float  # seconds to hold the request first
    after: int  # matching requests let through before the fault applies
    seen: int = 0


class FaultyProxy:
    """A reverse proxy on 127.0.0.1 in front of a real HTTP server (an Orthanc), which can
    answer chosen requests with an error status, hold them past a client's timeout, or slow
    every request down: what a client does when its server fails mid-work, with the real
    server behind it."""

    def __init__(self, target: str) -> None:
        self.target = target.rstrip("/")
        self.delay = 0.0
        self.paths: list[str] = []
        self._faults: list[_Fault] = []
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                proxy._handle(self)

            def do_POST(self) -> None:
                proxy._handle(self)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer((HOST, 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self._server.server_address[1]}"

    def fail(self, pattern: str, status: int = 500, *, after: int = 0) -> None:
        """Answer ``status`` to requests whose path matches ``pattern``, after ``after`` of
        them went through, until :meth:`heal`."""
        with self._lock:
            self._faults.append(_Fault(re.compile(pattern), status, 0.0, after))

    def stall(self, pattern: str, seconds: float, *, after: int = 0) -> None:
        """Hold matching requests for ``seconds`` before forwarding them (past a timeout)."""
        with self._lock:
            self._faults.append(_Fault(re.compile(pattern), None, seconds, after))

    def heal(self) -> None:
        with self._lock:
            self._faults.clear()

    def _fault_for(self, path: str) -> _Fault | None:
        with self._lock:
            self.paths.append(path)
            for fault in self._faults:
                if fault.pattern.search(path):
                    fault.seen += 1
                    if fault.seen > fault.after:
                        return fault
        return None

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        length = int(request.headers.get("Content-Length") or 0)
        body = request.rfile.read(length) if length else None
        fault = self._fault_for(request.path)
        time.sleep(self.delay + (fault.stall if fault else 0.0))
        if fault is not None and fault.status is not None:
            self._answer(
                request, fault.status, b'{"Message": "injected fault"}', "application/json"
            )
            return
        forwarded = urllib.request.Request(
            self.target + request.path, data=body, method=request.command
        )
        for header in ("Content-Type", "Authorization", "Accept"):
            if request.headers.get(header):
                forwarded.add_header(header, request.headers[header])
        try:
            with _http.open(forwarded, timeout=60) as answer:
                status, payload, kind = (
                    answer.status,
                    answer.read(),
                    answer.headers.get_content_type(),
                )
        except urllib.error.HTTPError as error:
            status, payload, kind = error.code, error.read(), "application/json"
        except OSError:  # the server behind went away (e.g. stopped at teardown)
            status, payload, kind = 502, b"", "text/plain"
        self._answer(request, status, payload, kind)

    @staticmethod
    def _answer(request: BaseHTTPRequestHandler, status: int, payload: bytes, kind: str) -> None:
        try:
            request.send_response(status)
            request.send_header("Content-Type", kind)
            request.send_header("Content-Length", str(len(payload)))
            request.end_headers()
            request.wfile.write(payload)
        except OSError:
            pass  # the client gave up (timed out) meanwhile

    def __enter__(self) -> FaultyProxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


# ------------------------------------------------------------------------------------ storescu


@dataclass(frozen=True)
class StorescuResult:
    elapsed: float
    files: int
    bytes: int
    returncodes: tuple[int, ...]
    output: str

    @property
    def ok(self) -> bool:
        return all(code == 0 for code in self.returncodes)

    @property
    def instances_per_s(self) -> float:
        return self.files / self.elapsed

    @property
    def mb_per_s(self) -> float:
        """Megabytes (10^6 bytes of files on disk) per second."""
        return self.bytes / 1e6 / self.elapsed


def _collect(files_or_dir: Path | Sequence[Path]) -> list[Path]:
    if isinstance(files_or_dir, Path):
        if files_or_dir.is_dir():
            return sorted(p for p in files_or_dir.rglob("*") if p.is_file())
        return [files_or_dir]
    return list(files_or_dir)


def _split(files: list[Path], parts: int) -> list[list[Path]]:
    """``parts`` contiguous groups of nearly equal size (fewer if there are fewer files)."""
    parts = min(parts, len(files))
    bounds = [i * len(files) // parts for i in range(parts + 1)]
    return [files[a:b] for a, b in itertools.pairwise(bounds)]


def _read_tail(log: IO[bytes], chars: int = 4000) -> str:
    log.seek(0)
    return log.read().decode(errors="replace")[-chars:]


def storescu(
    files_or_dir: Path | Sequence[Path],
    *,
    port: int,
    aet_called: str,
    aet_calling: str = "STORESCU",
    associations: int = 1,
    extra: Sequence[str] = (),
    timeout: float = 3600.0,
) -> StorescuResult:
    """Push with dcmtk ``storescu`` (``TCP_NODELAY=1``) over ``associations`` parallel ones.

    The files are split into contiguous groups, one storescu process each; every group is a
    folder of symbolic links passed with ``+sd``, so no file count exceeds the argv limits.
    ``elapsed`` runs from the first start to the last exit.
    """
    if associations < 1:
        raise ValueError("associations must be at least 1")
    files = _collect(files_or_dir)
    if not files:
        raise ValueError(f"nothing to send in {files_or_dir}")
    size = sum(f.stat().st_size for f in files)
    env = _env(True)
    with tempfile.TemporaryDirectory(prefix="storescu-") as tmp, contextlib.ExitStack() as stack:
        commands = []
        for lane, group in enumerate(_split(files, associations)):
            folder = Path(tmp, str(lane))
            folder.mkdir()
            for number, file in enumerate(group):
                (folder / f"{number:07d}.dcm").symlink_to(file.resolve())
            commands.append(
                [
                    dcmtk("storescu"),
                    "-aet",
                    aet_calling,
                    "-aec",
                    aet_called,
                    *extra,
                    "+sd",
                    HOST,
                    str(port),
                    str(folder),
                ]
            )
        logs = [stack.enter_context(tempfile.TemporaryFile()) for _ in commands]
        procs: list[subprocess.Popen[bytes]] = []
        deadline = time.monotonic() + timeout
        start = time.perf_counter()
        try:
            for command, log in zip(commands, logs, strict=True):
                procs.append(
                    subprocess.Popen(
                        command,
                        stdin=subprocess.DEVNULL,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        env=env,
                        start_new_session=True,
                    )
                )
            codes = tuple(p.wait(max(deadline - time.monotonic(), 0.1)) for p in procs)
            elapsed = time.perf_counter() - start
        finally:
            for proc in procs:
                _stop(proc, 5)
        output = "\n".join(_read_tail(log) for log in logs)
    return StorescuResult(elapsed, len(files), size, codes, output)


# ----------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.peers")
    commands = parser.add_subparsers(dest="command", required=True)
    bare = commands.add_parser("bare-receiver", help="run the bare pynetdicom C-STORE receiver")
    bare.add_argument("--out-dir", type=Path, required=True)
    bare.add_argument("--port", type=int, required=True)
    bare.add_argument("--aet", default="BARE")
    bare.add_argument("--max-pdu", type=int, default=1048576)
    bare.add_argument(
        "--durable", action="store_true", help="write through pacsnode's fsyncing blob store"
    )
    args = parser.parse_args(argv)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    _serve_bare_receiver(args.out_dir, args.port, args.aet, args.max_pdu, durable=args.durable)
    return 0


if __name__ == "__main__":
    sys.exit(main())
