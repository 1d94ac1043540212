"""Composition root: build every part of a node from its settings, start and stop them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass
from datetime import timedelta

import hl7.containers
import hl7.util
import prometheus_client
import uvicorn
from fastapi import FastAPI
from pydicom import config as pydicom_config
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.encoders.base import get_encoder
from pydicom.uid import AllTransferSyntaxes
from pynetdicom import _config as pynetdicom_config

from access import ProjectRules
from access.credentials import Credentials
from access.oidc import OidcVerifier, client_secret
from api.admin import reidentify_router
from api.app import create_app
from api.audit import audit_router
from api.cohorts import cohort_router
from api.oidc import OidcBearer, OidcLogin, oidc_router, state_key
from api.reports import create_router
from api.security import Authenticator
from api.session import session_router
from api.stats import stats_router
from api.studies import studies_router
from api.system import NodeState, system_router
from audit import AuditRecord, AuditTrail
from audit.dicom_xml import audit_message
from audit.forward import AuditForwarder
from audit.stores import StoreAudit
from audit.syslog import SyslogSender
from catalog import CatalogWriter, Database, catalog_stats
from catalog.statistics import Statistics
from config import Settings
from dashboard import dashboard_router
from deid import Deidentifier, NodeSecrets, Pseudonymizer, Vault, build_deid
from dicomweb import DEFAULT_VIEWER_DIR, PREFIX, DicomwebContext, create_routers, viewer_home
from dicomweb.viewer import rewrite_index
from export import CatalogLabels, Cohorts, Exporter, LabelClass, LabelSource, LabelTask
from ingest import Ingestor, IngestResult, Outcome, ResultListener
from jobs import JobContext, NodeScheduler
from labeling import MllpServer, ReportIntake, TaskSet, load_tasks
from node import listeners
from node.alerts import Alerts, Webhook
from node.http_limits import HttpLimits, guarded_protocol
from node.https import ServerCertificate
from node.metrics import NodeMetrics
from node.monitor import SystemMonitor
from node.workers import WorkerPool, WorkerStartError
from scp.ae import DicomServer
from storage import BlobStore, FilesystemBlobStore

log = logging.getLogger(__name__)


def configure_libraries() -> None:
    """Set library knobs once, where the process is put together.

    - pydicom: no validation warnings or log lines; they quote attribute values, which can
      be patient data, and a receiver must store what it is given anyway.
    - pynetdicom: never log identifiers of requests and responses. (Its chunked receive
      of C-STORE data sets is set up by ``scp.receive``: encrypted, never in the clear.)
    - python-hl7: no warnings (they quote the field being unescaped).
    - pydicom never calls GDCM, its first pixel plugin once python-gdcm is installed: GDCM
      can corrupt its heap on a malformed stream, so it only runs in a child process
      (``dicomweb/gdcm_worker.py``).
    """
    pydicom_config.settings.reading_validation_mode = pydicom_config.IGNORE
    pydicom_config.settings.writing_validation_mode = pydicom_config.IGNORE
    warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    scheduler_log = logging.getLogger("apscheduler.scheduler")
    if not any(isinstance(f, _OverlappingRunFilter) for f in scheduler_log.filters):
        scheduler_log.addFilter(_OverlappingRunFilter())
    # urllib3's retry warnings quote request paths, which hold Orthanc's resource IDs
    # (hashes of the original identifiers); the sync logs its own retries without them.
    logging.getLogger("urllib3").setLevel(logging.ERROR)
    logging.getLogger("pydicom").setLevel(logging.CRITICAL)
    logging.getLogger("python_multipart").setLevel(logging.CRITICAL)  # may quote body bytes
    # python-hl7 logs field values (patient data), with tracebacks, when it meets an unknown
    # escape sequence; its loggers are named by their file paths, not "hl7".
    for module in (hl7.containers, hl7.util):
        logging.getLogger(module.__file__).setLevel(logging.CRITICAL)
    prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
    for syntax in AllTransferSyntaxes:
        for coder in (get_decoder, get_encoder):
            with contextlib.suppress(NotImplementedError, ValueError):  # none, or gone
                coder(syntax).remove_plugin("gdcm")


class _OverlappingRunFilter(logging.Filter):
    """Drop apscheduler's warning that a job's run was skipped because its previous run is
    still going: a sync longer than its interval is normal, and the job's own log says what
    it does."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "maximum number of running instances reached" not in str(record.msg)


@dataclass
class Core:
    """The parts every process of a node needs: catalog, blob store, ingest pipeline."""

    settings: Settings
    db: Database
    blobs: BlobStore
    deid: Deidentifier
    ingestor: Ingestor
    vault: Vault
    pseudonymizer: Pseudonymizer
    secrets: NodeSecrets
    report_intake: ReportIntake
    audit: AuditTrail

    def close(self) -> None:
        self.audit.close()
        self.db.dispose()


def build_blob_store(settings: Settings) -> BlobStore:
    """The blob store of ``[storage]``: the filesystem folder (default) or an S3 bucket.

    An S3 bucket must exist and answer: else :class:`storage.StorageError`, which stops the
    node's start. Credentials come from the environment (boto3 reads ``AWS_*`` itself).
    """
    storage = settings.storage
    if storage.backend == "filesystem" or storage.s3_bucket is None:
        return FilesystemBlobStore(settings.blob_root, fsync=settings.fsync)
    import boto3

    from storage.s3 import S3BlobStore

    client = boto3.client("s3", endpoint_url=storage.s3_endpoint_url, region_name=storage.s3_region)
    store = S3BlobStore(
        storage.s3_bucket,
        client,
        prefix=storage.s3_prefix,
        multipart_threshold=storage.s3_multipart_threshold,
    )
    store.check()
    return store


def build_core(
    settings: Settings, listeners: tuple[ResultListener, ...] = (), *, migrate: bool = True
) -> Core:
    """Open (and migrate, unless a process of the node did already) the catalog and the blob
    store, and wire the ingest pipeline."""
    configure_libraries()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    blobs = build_blob_store(settings)  # first: a missing bucket stops the start at once
    db = Database(settings.catalog_url, sqlite_synchronous=settings.sqlite_synchronous)
    if migrate:
        db.migrate()
    deid = build_deid(settings, db)
    audit = AuditTrail(db)
    report_intake = ReportIntake(
        db=db,
        pseudonyms=deid.pseudonymizer,
        tasks=load_tasks(settings.labeling.tasks_file),
        settings=settings.labeling,
        vault=deid.vault,
    )
    ingestor = Ingestor(
        deid=deid.deidentifier,
        blobs=blobs,
        catalog=CatalogWriter(db),
        listeners=(*listeners, StudyArrivals(report_intake), StoreAudit(audit)),
        projects=ProjectRules(settings.access),
    )
    return Core(
        settings=settings,
        db=db,
        blobs=blobs,
        deid=deid.deidentifier,
        ingestor=ingestor,
        vault=deid.vault,
        pseudonymizer=deid.pseudonymizer,
        secrets=deid.secrets,
        report_intake=report_intake,
        audit=audit,
    )


def build_label_source(tasks: TaskSet) -> LabelSource:
    """Cohorts read study labels from the catalog, with the classes of the task file."""
    return CatalogLabels(
        {
            name: LabelTask(
                name=name,
                classes=tuple(
                    LabelClass(str(v), meaning) for v, meaning in task.meanings().items()
                ),
                description=task.description,
            )
            for name, task in tasks.tasks.items()
        }
    )


def build_http_app(core: Core, metrics: NodeMetrics, system: NodeState) -> FastAPI:
    """The HTTP app of a node: health, metrics, DICOMweb, the viewer, reports, labels,
    cohorts, the login page, administration, the node's state and the dashboard, behind one
    authentication (:mod:`api.security`)."""
    settings = core.settings.dicomweb
    context = DicomwebContext(
        db=core.db,
        blobs=core.blobs,
        ingestor=core.ingestor,
        settings=settings,
        spool_dir=core.settings.spool_root,
        spool_threshold=core.settings.spool_threshold,
    )
    labels = build_label_source(core.report_intake.tasks)
    cohorts = Cohorts(core.db, core.settings.export, labels)
    exporter = Exporter(core.db, core.blobs, cohorts, core.settings.export)
    access = core.settings.access
    credentials = Credentials(core.db, access)
    verifier = OidcVerifier(access) if "oidc" in access.methods else None
    authenticator = Authenticator(
        access, credentials, oidc=None if verifier is None else OidcBearer(verifier)
    )
    https = core.settings.https
    login = (
        OidcLogin(
            verifier,
            credentials,
            state_key(core.secrets.hmac_key.get_secret_value()),
            client_secret(access.oidc),
            https=https.configured,
        )
        if verifier is not None and access.oidc.login
        else None
    )
    home = viewer_home(settings)
    viewer_index = (settings.viewer_dir or DEFAULT_VIEWER_DIR) / "index.html"
    app = create_app(
        db=core.db,
        blob_root=core.settings.blob_root,
        registry=metrics.registry,
        authenticator=authenticator,
        audit=core.audit,
        min_free_bytes=core.settings.health_min_free_bytes,
        storage_check=getattr(core.blobs, "check", None),  # an S3 bucket: HeadBucket
        routers=[
            *create_routers(context),
            ("/api", create_router(core.report_intake)),
            ("/api", studies_router(core.db, core.report_intake.tasks)),
            ("/api", cohort_router(cohorts, exporter)),
            ("/api/admin", reidentify_router(core.vault, https_only=https.configured)),
            ("/api", audit_router(core.db)),
            ("/api", system_router(system, core.db)),
            (
                "/api",
                stats_router(
                    Statistics(core.db, cohorts.matcher.classify),
                    core.report_intake.tasks,
                    cohorts,
                ),
            ),
            ("", session_router(credentials, authenticator, https=https.configured)),
            ("", oidc_router(login)),
            ("", dashboard_router()),
        ],
        # the viewer's page as its router serves it: its inline scripts are allowed by hash
        pages=[rewrite_index(viewer_index.read_text())] if home else [],
        hsts_max_age=https.hsts_max_age,
        csp_report_uri=https.csp_report_uri,
        cors=(PREFIX, settings.cors_origins),
    )
    return app


def build_audit_forwarder(settings: Settings, db: Database) -> AuditForwarder | None:
    """The sender of the audit trail to ``audit.syslog`` (``None``: not configured); its
    TLS files are read here, so a node with unusable ones does not start."""
    syslog = settings.audit.syslog
    if syslog.host is None:
        return None
    hostname = socket.gethostname()

    def render(event: AuditRecord) -> bytes:
        return audit_message(event, settings.audit, settings.ae_title, hostname)

    sender = SyslogSender(syslog, hostname)
    return AuditForwarder(
        db,
        sender,
        render,
        queue_size=syslog.queue_size,
        lease=timedelta(seconds=settings.scheduler.lease_seconds),
    )


class StudyArrivals:
    """Ingest listener: link waiting reports to a study when its instances arrive.

    Called after the commit; the first stored instance of a study is enough (the study row
    then has its accession number, patient and date), so a process remembers the studies it
    linked recently and skips their other instances. Linking is idempotent, so several
    processes (or a forgotten study) only cost a query. An exception here is logged by the
    ingestor and never changes the instance's result.
    """

    def __init__(self, intake: ReportIntake, remember: int = 4096) -> None:
        self.intake = intake
        self._remember = remember
        self._recent: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, result: IngestResult) -> None:
        uid = result.study_instance_uid
        if uid is None or result.quarantined:
            return  # a held instance is not in the index (its release is another result)
        if result.outcome not in (Outcome.STORED, Outcome.REPLACED):
            return
        with self._lock:
            if uid in self._recent:
                self._recent.move_to_end(uid)
                return
        self.intake.study_arrived(uid)
        with self._lock:
            self._recent[uid] = None
            while len(self._recent) > self._remember:
                self._recent.popitem(last=False)


class Node:
    """A running node: DICOM AE, HTTP server and job scheduler sharing one :class:`Core`; with
    ``workers`` > 1 the DICOM AE runs in worker processes of its own (:mod:`node.workers`)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        # first: unusable certificate files stop the start before anything is opened
        self.certificate = ServerCertificate(settings.https) if settings.https.serves_tls else None
        self.metrics = NodeMetrics()
        self.core = build_core(settings, listeners=(self.metrics.observe,))
        self.metrics.watch_catalog(lambda: catalog_stats(self.core.db))
        workers = settings.dicom_workers
        self.dicom: DicomServer | WorkerPool = (
            DicomServer(settings, self.core.ingestor, self.core.audit)
            if workers == 1
            else WorkerPool(settings, workers, self.metrics.record)
        )
        self.metrics.active_associations.set_function(
            lambda: float(self.dicom.active_associations())
        )
        self.webhook = Webhook(settings.alerts) if settings.alerts.webhook_url else None
        self.monitor = SystemMonitor(
            settings,
            self.core.db,
            self.metrics,
            Alerts(self.metrics, self.webhook, f"{settings.ae_title}@{socket.gethostname()}"),
            self.dicom.active_associations,
        )
        app = build_http_app(self.core, self.metrics, self.monitor)
        self.mllp = (
            MllpServer(
                self.core.report_intake,
                settings.labeling.mllp_host,
                settings.labeling.mllp_port,
                allowed_sources=settings.labeling.mllp_allowed_sources,
                max_message_bytes=settings.labeling.mllp_max_message_bytes,
            )
            if settings.labeling.mllp_enabled
            else None
        )
        http_config = uvicorn.Config(
            app,
            host=settings.http_host,
            port=settings.http_port,
            log_config=None,
            access_log=False,
            lifespan="off",
            http=guarded_protocol(
                HttpLimits(
                    header_timeout=settings.http_header_timeout,
                    body_timeout=settings.http_body_timeout,
                    max_header_bytes=settings.http_max_header_bytes,
                )
            ),
            timeout_keep_alive=settings.http_keep_alive_timeout,
            # X-Forwarded-Proto/-For only from the trusted proxies: the scheme decides HSTS,
            # Secure cookies and re-identification; the address is the caller's
            proxy_headers=settings.dicomweb.trust_forwarded_headers,
            forwarded_allow_ips=settings.https.trusted_proxies,
        )
        if self.certificate is not None:
            # serve with the node's own context, the one reload_certificate() reloads
            http_config.load()
            http_config.ssl = self.certificate.context
        self._http = uvicorn.Server(http_config)
        self._http_thread: threading.Thread | None = None  # made by start() with its socket
        self.audit_forwarder = build_audit_forwarder(settings, self.core.db)
        self.scheduler = (
            NodeScheduler(JobContext(settings, self.core.db, self.core.ingestor, threading.Event()))
            if settings.scheduler.enabled
            else None
        )

    @property
    def http_port(self) -> int:
        servers = getattr(self._http, "servers", [])
        return int(servers[0].sockets[0].getsockname()[1]) if servers else self.settings.http_port

    def start(self, timeout: float = 30.0) -> None:
        """Start listening on every port; return once all accept connections.

        Raises :class:`~node.listeners.ListenerError` naming the listener (DICOM, HTTP,
        MLLP) that cannot have its address; nothing is left listening then.
        """
        if self.settings.http_host not in ("127.0.0.1", "localhost", "::1"):
            log.warning(
                "HTTP server listens on %s without authentication: anyone who reaches it can "
                "read the archive",
                self.settings.http_host,
            )
        http_address = listeners.HTTP.address(self.settings)
        try:
            http_socket = listeners.bind_tcp(*http_address)
        except OSError as exc:
            raise listeners.ListenerError(listeners.HTTP, *http_address, exc) from None
        try:
            self.dicom.start()
        except OSError as exc:
            http_socket.close()
            dicom_address = listeners.DICOM.address(self.settings)
            raise listeners.ListenerError(listeners.DICOM, *dicom_address, exc) from None
        try:
            self.dicom.start_tls()
        except OSError as exc:
            self.dicom.stop(grace=0)
            http_socket.close()
            tls_address = listeners.DICOM_TLS.address(self.settings)
            raise listeners.ListenerError(listeners.DICOM_TLS, *tls_address, exc) from None
        except WorkerStartError:
            http_socket.close()
            raise
        if self.mllp is not None:
            try:
                self.mllp.start()
            except OSError as exc:
                self.mllp.stop()
                self.dicom.stop(grace=0)
                http_socket.close()
                mllp_address = listeners.MLLP.address(self.settings)
                raise listeners.ListenerError(listeners.MLLP, *mllp_address, exc) from None
        self._http_thread = threading.Thread(
            target=self._http.run, kwargs={"sockets": [http_socket]}, name="http", daemon=True
        )
        self._http_thread.start()
        deadline = time.monotonic() + timeout
        while not self._http.started:
            if not self._http_thread.is_alive() or time.monotonic() > deadline:
                self.dicom.stop(grace=0)
                if self.mllp is not None:
                    self.mllp.stop()
                raise RuntimeError(
                    f"HTTP server did not start on {self.settings.http_host}:"
                    f"{self.settings.http_port}"
                )
            time.sleep(0.02)
        log.info(
            "HTTP listening on %s://%s:%s (catalog %s, data %s)",
            "http" if self.certificate is None else "https",
            self.settings.http_host,
            self.http_port,
            self.core.db.describe(),
            self.settings.data_dir,
        )
        if self.certificate is not None:
            log.info("HTTPS certificate: %s", self.certificate.info)
        if self.scheduler is not None:
            self.scheduler.start()
        self.monitor.start()
        if self.audit_forwarder is not None:
            self.audit_forwarder.start()

    def reload_certificate(self, timeout: float = 30.0) -> bool:
        """Load the HTTPS certificate and key files again (SIGHUP); False when the node has
        no HTTPS or the new files cannot be used (the old certificate stays, the log says
        why). The context is changed on the HTTP server's own thread, between handshakes."""
        if self.certificate is None:
            log.info("no HTTPS certificate to reload (https.certfile is not set)")
            return False
        servers = getattr(self._http, "servers", [])
        if not servers:
            return self.certificate.reload()  # not serving yet: nothing runs beside us
        certificate = self.certificate

        async def reload() -> bool:
            return certificate.reload()

        done = asyncio.run_coroutine_threadsafe(reload(), servers[0].get_loop())
        try:
            return done.result(timeout)
        except TimeoutError:
            log.error("HTTPS certificate not reloaded: the HTTP server did not answer in time")
            return False

    def stop(self) -> None:
        """Graceful stop: no new associations, running ones finish (up to the grace time)."""
        log.info("shutting down")
        self.monitor.stop()
        if self.webhook is not None:
            self.webhook.close()
        if self.scheduler is not None:
            self.scheduler.stop()  # running jobs stop between two instances
        self.dicom.stop(grace=self.settings.shutdown_grace)
        if self.mllp is not None:
            self.mllp.stop()
        self._http.should_exit = True
        if self._http_thread is not None and self._http_thread.is_alive():
            self._http_thread.join(timeout=self.settings.shutdown_grace + 5)
        self.core.audit.flush()
        if self.audit_forwarder is not None:
            self.audit_forwarder.close()
        self.core.close()
        log.info("stopped")
