"""Who may associate: the calling AE title, the address it calls from, its TLS certificate,
the association limits (overall and per calling AE title), and the projects it sees.

The check runs on ``evt.EVT_REQUESTED``, when the A-ASSOCIATE-RQ has arrived. The
requestor's AE title is not set there yet (pynetdicom sets it while negotiating), so it is
read from the request primitive. A rejection sent from this event must be followed by
``assoc.kill()``, or the socket closes before the A-ASSOCIATE-RJ leaves and the peer sees an
abort.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass

from pynetdicom.association import Association
from pynetdicom.events import Event

from config import Settings
from config.dicom_access import CallingAE
from config.settings import LOOPBACK_HOSTS
from scp.audit import DimseAudit
from scp.slots import SharedSlots
from scp.tls import certificate_names, is_tls

log = logging.getLogger(__name__)

# A-ASSOCIATE-RJ fields (PS3.8 9.3.4, Table 9-21)
PERMANENT, TRANSIENT = 0x01, 0x02
SERVICE_USER, SERVICE_PROVIDER_PRESENTATION = 0x01, 0x03
CALLING_AE_NOT_RECOGNIZED = 0x03  # with SERVICE_USER
LOCAL_LIMIT_EXCEEDED = 0x02  # with SERVICE_PROVIDER_PRESENTATION


@dataclass(frozen=True)
class Refusal:
    """An A-ASSOCIATE-RJ and its true reason (for the log; the peer sees only the codes)."""

    result: int
    source: int
    diagnostic: int
    reason: str


def _not_recognized(reason: str) -> Refusal:
    return Refusal(PERMANENT, SERVICE_USER, CALLING_AE_NOT_RECOGNIZED, reason)


def _limit(reason: str) -> Refusal:
    return Refusal(TRANSIENT, SERVICE_PROVIDER_PRESENTATION, LOCAL_LIMIT_EXCEEDED, reason)


class Peers:
    """The ``allowed_calling_aets`` entries and the association slots they hold.

    Admission is decided under one lock, so two associations arriving together cannot both
    take the last slot. An admitted association holds its slot until it is released,
    aborted, rejected later in negotiation (e.g. for the called AE title) or its thread ends.
    """

    def __init__(self, settings: Settings, shared: SharedSlots | None = None) -> None:
        self.entries = {entry.ae_title: entry for entry in settings.allowed_calling_aets}
        self.shared = shared
        """The slots of the node's other DICOM worker processes (None: one process)."""
        self.max_associations = settings.max_associations
        self.match_certificate = settings.dicom_tls.match_calling_aet
        self._admitted: weakref.WeakKeyDictionary[Association, str] = weakref.WeakKeyDictionary()
        self._lock = threading.Lock()

    def entry(self, calling_aet: str) -> CallingAE | None:
        return self.entries.get(calling_aet.strip())

    def projects(self, calling_aet: str) -> frozenset[str] | None:
        """The projects whose studies ``calling_aet`` sees (``None``: every project).

        Without an allow-list every AE sees every project; an AE title not on a list (which
        the association check lets through only by mistake) sees none.
        """
        if not self.entries:
            return None
        entry = self.entry(calling_aet)
        if entry is None:
            return frozenset()
        return frozenset(entry.projects) if entry.projects else None

    def owned_projects(self, calling_aet: str) -> tuple[str, ...]:
        """The projects a new study sent by ``calling_aet`` joins when no rule places it."""
        entry = self.entry(calling_aet)
        return tuple(entry.projects) if entry is not None else ()

    def unbound_warning(self, host: str, *, certificates: bool) -> str | None:
        """What to warn about a listener on ``host``: entries without hosts trust an AE
        title anyone can send, unless the listener is on loopback or checks client
        certificates (``certificates``)."""
        unbound = [title for title, entry in self.entries.items() if not entry.hosts]
        if host in LOOPBACK_HOSTS or certificates or not unbound:
            return None
        return (
            f"allowed_calling_aets: {', '.join(unbound)} may associate from any address on "
            f"{host} (no hosts): anyone who knows the AE title can; give each its hosts"
        )

    def admit(self, assoc: Association) -> Refusal | None:
        """Take a slot for ``assoc``, or say why it is refused."""
        request = assoc.requestor.primitive
        title = str(request.calling_ae_title if request is not None else "").strip()
        address = assoc.requestor.address
        entry = self.entry(title)
        tls = is_tls(assoc)
        if self.entries:
            if entry is None:
                return _not_recognized("calling AE title not allowed (not in allowed_calling_aets)")
            if not entry.calls_from(address):
                return _not_recognized(
                    f"calling AE title not allowed from this address (its hosts: {_hosts(entry)})"
                )
            if entry.require_tls and not tls:
                return _not_recognized(
                    "calling AE title not allowed over plain TCP (require_tls: the TLS port only)"
                )
        if tls and self.match_certificate:
            names = certificate_names(assoc)
            if title not in names:
                shown = ", ".join(repr(n) for n in names) or "no name"
                return _not_recognized(
                    f"client certificate names {shown}, not the calling AE title "
                    "(dicom_tls.match_calling_aet)"
                )
        with self._lock, self._shared_lock() as shared:
            busy = self._busy()
            elsewhere, by_title = self.shared.others() if shared and self.shared else (0, {})
            if len(busy) + elsewhere >= self.max_associations:
                return _limit(
                    f"no free association slot (max_associations {self.max_associations})"
                )
            if entry is not None and entry.max_associations is not None:
                own = busy.count(title) + by_title.get(title, 0)
                if own >= entry.max_associations:
                    return _limit(
                        f"calling AE title already has {own} associations open (its "
                        "max_associations in allowed_calling_aets)"
                    )
            self._admitted[assoc] = title
            if shared and self.shared:
                self.shared.publish([*busy, title])
        return None

    def refresh(self, _event: Event | None = None) -> None:
        """Publish this process's open associations to the other workers (when one ends:
        ``evt.EVT_CONN_CLOSE``, and now and then)."""
        if self.shared is None:
            return
        with self._lock, self.shared.locked() as shared:
            if shared:
                self.shared.publish(self._busy())

    def _busy(self) -> list[str]:
        """The calling AE titles of this process's associations that hold a slot."""
        return [title for other, title in self._admitted.items() if _holds_slot(other)]

    @contextlib.contextmanager
    def _shared_lock(self) -> Iterator[bool]:
        if self.shared is None:
            yield False
            return
        with self.shared.locked() as shared:
            yield shared

    def handle_requested(self, event: Event, audit: DimseAudit) -> None:
        """``evt.EVT_REQUESTED``: reject an association :meth:`admit` refuses."""
        assoc = event.assoc
        refusal = self.admit(assoc)
        if refusal is None:
            return
        assoc.acse.send_reject(refusal.result, refusal.source, refusal.diagnostic)
        log_rejection(assoc, refusal.reason, transient=refusal.result == TRANSIENT)
        audit.association(assoc, refused=refusal.reason)
        assoc.kill()  # without it the A-ASSOCIATE-RJ is lost (pynetdicom does the same)


def _holds_slot(assoc: Association) -> bool:
    return assoc.is_alive() and not (assoc.is_rejected or assoc.is_aborted or assoc.is_released)


def _hosts(entry: CallingAE) -> str:
    return ", ".join(str(net) for net in entry.hosts)


def log_rejection(assoc: Association, reason: str, *, transient: bool = False) -> None:
    """One line: who was refused (the AE titles it used, its address, plain or TLS) and the
    true reason. AE titles and addresses name devices, never patients."""
    request = assoc.requestor.primitive
    log.warning(
        "association rejected from %r (%s:%s%s) to %r: %s%s",
        str(request.calling_ae_title).strip() if request is not None else assoc.requestor.ae_title,
        assoc.requestor.address,
        assoc.requestor.port,
        ", TLS" if is_tls(assoc) else "",
        str(request.called_ae_title).strip() if request is not None else "?",
        reason,
        ", transient" if transient else "",
    )
