"""Build the de-identification stage, the pseudonymizer and the vault from the settings."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from catalog.db import Database
from config import Settings
from deid.base import Deidentifier, PassThroughDeidentifier
from deid.deidentifier import ProfileDeidentifier, patient_key
from deid.pseudonym import Pseudonymizer
from deid.secrets import NodeSecrets, SecretsError, load_secrets
from deid.vault import Vault, VaultError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DeidParts:
    """What the composition root wires: the ingest stage, the vault, the node's secrets."""

    deidentifier: Deidentifier
    pseudonymizer: Pseudonymizer
    vault: Vault
    secrets: NodeSecrets


def load_pseudonymizer(settings: Settings, *, create: bool = True) -> Pseudonymizer:
    """The node's :class:`Pseudonymizer` (its HMAC key from the secrets folder).

    Other parts (report linking) use this to meet images on the same pseudonyms.
    """
    secrets = load_secrets(settings.secrets_root, create=create)
    return _pseudonymizer(settings, secrets)


def build_deid(settings: Settings, db: Database, *, create: bool = True) -> DeidParts:
    """The de-identification stage as configured (pass-through when ``deid.enabled`` is off)."""
    secrets = load_secrets(settings.secrets_root, create=create)
    pseudonymizer = _pseudonymizer(settings, secrets)
    vault = Vault(db, secrets.vault_key)
    try:
        vault.check_keys(lambda originals: _patient_pseudonym(pseudonymizer, originals))
    except VaultError as exc:
        raise SecretsError(
            f"the secrets in {settings.secrets_root} are not this archive's ({exc}): give "
            "every node sharing the catalog the archive's secrets (deid.secrets_dir)"
        ) from None
    deidentifier: Deidentifier
    if settings.deid.enabled:
        deidentifier = ProfileDeidentifier(settings.deid, pseudonymizer, vault)
    else:
        log.warning(
            "de-identification is DISABLED (deid.enabled = false): instances are stored "
            "as received, with any patient data they carry"
        )
        deidentifier = PassThroughDeidentifier()
    return DeidParts(deidentifier, pseudonymizer, vault, secrets)


def _patient_pseudonym(pseudonymizer: Pseudonymizer, originals: dict[str, str]) -> str | None:
    """The pseudo Patient ID of a vault patient row's originals (``None``: keyed by study)."""
    key = patient_key(
        originals.get("patient_id", ""),
        originals.get("patient_name", ""),
        originals.get("patient_birth_date", ""),
    )
    if key is None:
        return None
    return pseudonymizer.patient_id(key, originals.get("issuer_of_patient_id", ""))


def _pseudonymizer(settings: Settings, secrets: NodeSecrets) -> Pseudonymizer:
    return Pseudonymizer(
        secrets.hmac_key, (settings.deid.date_shift_min_days, settings.deid.date_shift_max_days)
    )
