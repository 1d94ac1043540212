"""The node's Application Entity: C-ECHO, C-STORE for every storage SOP class,
Query/Retrieve (C-FIND, C-MOVE, C-GET) in the Patient Root and Study Root models, and
Storage Commitment (Push Model), on the DICOM port and, when configured, a DICOM TLS port."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any, cast

from pydicom.uid import ExplicitVRLittleEndian
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.association import Association
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer
from pynetdicom.utils import make_target

from audit import AuditTrail
from config import Settings
from ingest import Ingestor
from scp import find, handlers, receive, retrieve, tls
from scp.audit import DimseAudit
from scp.commitment import StorageCommitmentSCP
from scp.peers import Peers
from scp.slots import SharedSlots

log = logging.getLogger(__name__)

EventHandler = (
    tuple[evt.EventType, Callable[..., Any]] | tuple[evt.EventType, Callable[..., Any], list[Any]]
)


_NO_PYNETDICOM_LIMIT = 1 << 20
"""pynetdicom counts every connection against its association limit, also one that never
sent an A-ASSOCIATE-RQ; the node applies ``max_associations`` itself
(:meth:`scp.peers.Peers.admit`) and sets pynetdicom's out of reach."""


class DicomServer:
    """The DIMSE side of a node: an AE listening on the DICOM port and, with
    ``dicom_tls.enabled``, on the DICOM TLS port (one AE: ``max_associations`` and the
    per-AE limits count both; with ``shared``, the node's other DICOM worker processes too).

    A connection must complete association negotiation within ``acse_timeout`` seconds, and
    an aborted association (e.g. after ``network_timeout``) must be gone ``acse_timeout``
    seconds later, or the connection is closed. pynetdicom cannot do either itself: its
    reader blocks on the socket waiting for the rest of a PDU (a peer that sent two bytes and
    stopped), and the thread that timed out waits for that reader to stop, forever; each such
    connection would keep two threads until the peer closes it.
    """

    def __init__(
        self,
        settings: Settings,
        ingestor: Ingestor,
        audit: AuditTrail | None = None,
        *,
        reuse_port: bool = False,
        shared: SharedSlots | None = None,
    ) -> None:
        # Retrieves read from the catalog and the blob store the ingest pipeline writes to.
        db, blobs = ingestor.catalog.db, ingestor.blobs
        self.settings = settings
        self.ae = build_ae(settings)
        self._server_class = ReusePortServer if reuse_port else ThreadedAssociationServer
        receive.install(self.ae, settings.spool_root, settings.spool_threshold)
        self.peers = Peers(settings, shared)
        self.audit = DimseAudit(audit)
        self.commitment = StorageCommitmentSCP(ingestor, settings, self.peers)
        self._tls_context = (
            tls.server_context(settings.dicom_tls, handshake_timeout=settings.acse_timeout)
            if settings.dicom_tls.enabled
            else None
        )
        self._handlers: list[EventHandler] = [
            (evt.EVT_C_ECHO, handlers.handle_echo),
            (evt.EVT_C_STORE, handlers.handle_store, [ingestor, self.peers]),
            (evt.EVT_C_FIND, find.handle_find, [db, settings, self.peers, self.audit]),
            (
                evt.EVT_C_MOVE,
                retrieve.handle_move,
                [db, blobs, settings.qr, self.peers, self.audit],
            ),
            (evt.EVT_C_GET, retrieve.handle_get, [db, blobs, self.peers, self.audit]),
            (evt.EVT_N_ACTION, self.commitment.handle_n_action),
            (evt.EVT_CONN_OPEN, self._opened),
            (evt.EVT_ESTABLISHED, self._established),
            (evt.EVT_REQUESTED, self.peers.handle_requested, [self.audit]),
            (evt.EVT_ACCEPTED, handlers.handle_accepted, [self.audit]),
            (evt.EVT_REJECTED, handlers.handle_rejected, [self.audit]),
            (evt.EVT_RELEASED, handlers.handle_released),
            (evt.EVT_ABORTED, handlers.handle_aborted),
            (evt.EVT_ABORTED, self._aborted),
            (evt.EVT_ABORTED, handlers.handle_closed),
            (evt.EVT_CONN_CLOSE, handlers.handle_closed),
        ]
        if shared is not None:  # the other workers see a slot free at once
            self._handlers.append((evt.EVT_CONN_CLOSE, self.peers.refresh))
        self._server: ThreadedAssociationServer | None = None
        self._tls_server: ThreadedAssociationServer | None = None
        self._deadlines: weakref.WeakKeyDictionary[Association, tuple[float, str]] = (
            weakref.WeakKeyDictionary()
        )
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._reaper = threading.Thread(target=self._reap, name="dicom-acse-timeout", daemon=True)

    @property
    def port(self) -> int:
        """The bound port (useful when the configured port is 0)."""
        if self._server is None:
            raise RuntimeError("DICOM server not started")
        return int(self._server.server_address[1])

    @property
    def tls_port(self) -> int:
        """The bound DICOM TLS port."""
        if self._tls_server is None:
            raise RuntimeError("DICOM TLS server not started")
        return int(self._tls_server.server_address[1])

    def start(self) -> None:
        """Listen on the DICOM port (``OSError`` when its address cannot be had)."""
        address = (self.settings.dicom_host, self.settings.dicom_port)
        self._server = self._listen(address, None, self._handlers)
        self._reaper.start()
        log.info("DICOM AE %s listening on %s:%s", self.settings.ae_title, address[0], self.port)
        self._warn_unbound(self.settings.dicom_host, tls_authenticates=False)

    def start_tls(self) -> None:
        """Listen on the DICOM TLS port, when configured (after :meth:`start`; ``OSError``
        when its address cannot be had).

        The handshake runs in each connection's thread (:func:`scp.tls.handshake`), after
        the connection's ``acse_timeout`` deadline is set (:meth:`_opened`).
        """
        if self._tls_context is None:
            return
        config = self.settings.dicom_tls
        self._tls_server = self._listen(
            (config.host, config.port),
            self._tls_context,
            [*self._handlers, (evt.EVT_CONN_OPEN, tls.handshake)],
        )
        log.info(
            "DICOM AE %s listening for TLS on %s:%s (client certificates %s)",
            self.settings.ae_title,
            config.host,
            self.tls_port,
            "required" if config.require_client_certificate else "not required",
        )
        self._warn_unbound(config.host, tls_authenticates=config.require_client_certificate)

    def _listen(
        self, address: tuple[str, int], context: ssl.SSLContext | None, handlers: list[Any]
    ) -> ThreadedAssociationServer:
        """What ``AE.start_server(block=False)`` does, with the server class of this node
        (``start_server`` has no ``server_class`` argument)."""
        server = self.ae.make_server(
            address, ssl_context=context, evt_handlers=handlers, server_class=self._server_class
        )
        thread = threading.Thread(
            target=make_target(server.serve_forever), name="dicom-acceptor", daemon=True
        )
        thread.start()
        self.ae._servers.append(server)  # as start_server does: server.shutdown() takes it out
        return server

    def _warn_unbound(self, host: str, *, tls_authenticates: bool) -> None:
        warning = self.peers.unbound_warning(host, certificates=tls_authenticates)
        if warning:
            log.warning(warning)

    def active_associations(self) -> int:
        return sum(len(s.active_associations) for s in self._servers())

    def _servers(self) -> list[ThreadedAssociationServer]:
        return [s for s in (self._server, self._tls_server) if s is not None]

    def stop(self, grace: float) -> None:
        """Stop listening, let running associations finish for ``grace`` s, abort the rest.

        An aborted association gets no further responses: an instance whose C-STORE response
        was not sent is one the peer knows it must send again.
        """
        servers = self._servers()
        self._server = self._tls_server = None
        if not servers:
            return
        for server in servers:
            server.shutdown()
        deadline = time.monotonic() + grace
        while any(s.active_associations for s in servers) and time.monotonic() < deadline:
            time.sleep(0.05)
        remaining = [assoc for s in servers for assoc in s.active_associations]
        for assoc in remaining:  # closed by the reaper if the peer holds them open
            self._watch(assoc, "not gone %g s after the abort at shutdown (acse_timeout)")
        for assoc in remaining:
            log.warning("aborting association with %s at shutdown", assoc.requestor.address)
            assoc.abort()
        self._stopping.set()
        log.info("DICOM AE stopped")

    def _opened(self, event: Event) -> None:
        self._watch(event.assoc, "no association within %g s (acse_timeout)")

    def _established(self, event: Event) -> None:
        with self._lock:
            self._deadlines.pop(event.assoc, None)

    def _aborted(self, event: Event) -> None:
        self._watch(event.assoc, "still open %g s after it was aborted (acse_timeout)")

    def _watch(self, assoc: Association, why: str) -> None:
        with self._lock:
            self._deadlines[assoc] = (time.monotonic() + self.settings.acse_timeout, why)

    def _reap(self) -> None:
        """Close the connections whose deadline passed.

        Shutting the socket down makes pynetdicom's blocked read return, so its threads see
        a closed connection and end (closing the file from here could hand a reused
        descriptor to them).
        """
        timeout = self.settings.acse_timeout
        while not self._stopping.wait(min(1.0, timeout / 4)):
            now = time.monotonic()
            with self._lock:
                late = [(a, why) for a, (t, why) in self._deadlines.items() if now > t]
                for assoc, _ in late:
                    del self._deadlines[assoc]
            for assoc, why in late:
                transport = assoc.dul.socket
                if transport is None or transport.socket is None or not assoc.is_alive():
                    continue
                try:
                    transport.socket.shutdown(socket.SHUT_RDWR)
                except OSError:
                    continue  # already closed
                log.warning(
                    "DICOM connection from %s:%s closed: " + why,
                    assoc.requestor.address,
                    assoc.requestor.port,
                    timeout,
                )


class ReusePortServer(ThreadedAssociationServer):
    """An association server whose socket is bound with ``SO_REUSEPORT``: the DICOM worker
    processes (:mod:`node.workers`) each listen on the same port, and the kernel spreads
    new connections over them."""

    def server_bind(self) -> None:
        # pynetdicom's server_bind sets its socket options and binds; this one must come first
        cast(socket.socket, self.socket).setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().server_bind()


_PREFERRED_SYNTAXES = [
    ExplicitVRLittleEndian,
    *(syntax for syntax in ALL_TRANSFER_SYNTAXES if syntax != ExplicitVRLittleEndian),
]

QUERY_RETRIEVE_MODELS = (
    PatientRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
)


def build_ae(settings: Settings) -> AE:
    """An AE that accepts Verification, every storage SOP class in every transfer syntax, the
    Query/Retrieve models and Storage Commitment.

    Storage contexts accept the SCP/SCU role selection a C-GET requestor proposes (it acts as
    the storage SCP for the instances sent back on its association). Of the transfer syntaxes
    a requestor proposes in one context, explicit VR little endian is taken first: it keeps
    the VRs of received data sets, and C-GET can then send most stored files byte for byte.
    """
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_pdu_size = settings.max_pdu_size
    ae.dimse_timeout = settings.dimse_timeout
    ae.network_timeout = settings.network_timeout
    ae.acse_timeout = settings.acse_timeout
    ae.maximum_associations = _NO_PYNETDICOM_LIMIT
    ae.require_called_aet = settings.require_called_aet  # calling AE: scp.peers
    ae.add_supported_context(Verification)
    for model in QUERY_RETRIEVE_MODELS:
        ae.add_supported_context(model)
    ae.add_supported_context(StorageCommitmentPushModel)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax is not None:
            ae.add_supported_context(
                context.abstract_syntax, _PREFERRED_SYNTAXES, scu_role=True, scp_role=True
            )
    return ae
