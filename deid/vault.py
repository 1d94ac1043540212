"""The re-identification vault: originals behind each pseudonym, encrypted at rest.

Rows live in the catalog (``deid_vault``); each holds a Fernet token of the originals as
JSON, and the Fernet key lives in the secrets folder, never in the database. Writes are
idempotent (one row per kind and pseudonym, the first writer wins), so they can happen
before the index transaction and be repeated by any node. Every read goes through
:meth:`Vault.reidentify` or :meth:`Vault.all_originals`, which write an :class:`AuditEvent`
first; the audit row names the pseudonym, never an original. The one exception,
:meth:`Vault.check_keys` at a node's start, compares a few rows with what the node's keys
make of them and returns nothing read.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Final

from cryptography.fernet import Fernet, InvalidToken
from pydantic import SecretBytes
from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from catalog.audit import AuditRecord, append_audit, record_audit
from catalog.db import Database
from catalog.models import VaultEntry, utcnow

KINDS: Final = ("patient", "study", "series", "accession")
_CACHE_LIMIT: Final = 200_000


class VaultError(RuntimeError):
    """The vault cannot decrypt a row (wrong key); the message quotes no value."""


@dataclass(frozen=True)
class VaultRecord:
    """Originals behind one pseudonym (``kind`` is one of :data:`KINDS`)."""

    kind: str
    pseudonym: str
    patient_pseudonym: str
    originals: dict[str, str]


class Vault:
    """Encrypted originals per pseudonym, with an audit row for every read."""

    def __init__(self, db: Database, key: SecretBytes) -> None:
        self.db = db
        self._fernet = Fernet(key.get_secret_value())
        self._known: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def remember(self, records: Sequence[VaultRecord]) -> None:
        """Store ``records`` unless already there (idempotent; one transaction at most)."""
        with self._lock:
            new = [r for r in records if (r.kind, r.pseudonym) not in self._known]
        if not new:
            return
        rows = [
            {
                "kind": r.kind,
                "pseudonym": r.pseudonym,
                "patient_pseudonym": r.patient_pseudonym,
                "token": self._fernet.encrypt(
                    json.dumps(r.originals, ensure_ascii=False, sort_keys=True).encode()
                ).decode("ascii"),
                "created_at": utcnow(),
            }
            for r in new
        ]
        with self.db.write() as session:
            connection = session.connection()
            dialect_insert = sqlite_insert if connection.dialect.name == "sqlite" else pg_insert
            connection.execute(
                dialect_insert(VaultEntry).on_conflict_do_nothing(
                    index_elements=["kind", "pseudonym"]
                ),
                rows,
            )
        with self._lock:
            if len(self._known) > _CACHE_LIMIT:
                self._known.clear()
            self._known.update((r.kind, r.pseudonym) for r in new)

    def reidentify(self, kind: str, pseudonym: str, *, actor: Accessor) -> dict[str, str] | None:
        """The originals behind ``pseudonym``, or None; the read is audited either way."""
        with self.db.write() as session:
            token = session.scalar(
                select(VaultEntry.token).where(
                    VaultEntry.kind == kind, VaultEntry.pseudonym == pseudonym
                )
            )
            _audit(session, actor, f"{kind}:{pseudonym}", token)
        return None if token is None else self._decrypt(token)

    def studies_of(self, patient_pseudonym: str, *, actor: Accessor) -> list[dict[str, str]]:
        """Originals of every study of a patient (for ``reidentify patient --studies``)."""
        with self.db.write() as session:
            tokens = session.scalars(
                select(VaultEntry.token)
                .where(
                    VaultEntry.kind == "study",
                    VaultEntry.patient_pseudonym == patient_pseudonym,
                )
                .order_by(VaultEntry.id)
            ).all()
            _audit(
                session,
                actor,
                f"studies of patient:{patient_pseudonym}",
                tokens[0] if tokens else None,
            )
        return [self._decrypt(token) for token in tokens]

    def all_originals(self, *, actor: str, action: str) -> Iterator[VaultRecord]:
        """Every row, decrypted (for ``pacsnode deid check``); audited once, as ``*``."""
        with self.db.write() as session:
            record_audit(session, actor, action, "*", "found")
        with self.db.read() as session:
            rows = session.execute(
                select(
                    VaultEntry.kind,
                    VaultEntry.pseudonym,
                    VaultEntry.patient_pseudonym,
                    VaultEntry.token,
                ).execution_options(yield_per=1000)
            )
            for kind, pseudonym, patient, token in rows:
                yield VaultRecord(kind, pseudonym, patient, self._decrypt(token))

    def audit(self, actor: str, action: str, target: str, outcome: str) -> None:
        """Record an action on the archive that is not a vault read (e.g. a release)."""
        with self.db.write() as session:
            record_audit(session, actor, action, target, outcome)

    def check_keys(self, pseudonym_of: Callable[[dict[str, str]], str | None]) -> None:
        """Raise :class:`VaultError` unless the oldest patient rows open with this vault's key
        and ``pseudonym_of`` (what the node's HMAC key makes of a row's originals; ``None``:
        nothing to compare) gives back their pseudonyms. An empty vault passes."""
        with self.db.read() as session:
            rows = session.execute(
                select(VaultEntry.pseudonym, VaultEntry.token)
                .where(VaultEntry.kind == "patient")
                .order_by(VaultEntry.id)
                .limit(8)
            ).all()
        for pseudonym, token in rows:
            made = pseudonym_of(self._decrypt(token))
            if made is not None and made != pseudonym:
                raise VaultError("the archive's pseudonyms were made with another HMAC key")
            if made is not None:
                return

    def _decrypt(self, token: str) -> dict[str, str]:
        try:
            data = json.loads(self._fernet.decrypt(token.encode("ascii")))
        except InvalidToken:
            raise VaultError("a vault row does not decrypt with this node's vault key") from None
        return {str(k): str(v) for k, v in data.items()}


@dataclass(frozen=True)
class Accessor:
    """Who reads the vault, from where, and why (every read is audited with it)."""

    name: str
    reason: str
    door: str = "cli"
    remote: str = ""


def _audit(session: Session, accessor: Accessor, target: str, token: str | None) -> None:
    event = AuditRecord(
        utcnow(),
        accessor.name,
        "reidentify",
        "found" if token is not None else "not_found",
        accessor.door,
        accessor.remote,
        target,
        detail={"reason": accessor.reason},
    )
    append_audit(session, [event])
