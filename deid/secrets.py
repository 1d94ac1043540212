"""The node's secrets: HMAC key and vault key, one file each (mode 0600).

Each is generated on first start if absent. Files are published atomically (written to a
temporary file, then hard-linked into place), so nodes sharing one secrets folder and
starting at the same moment all end up with the same key. Values are held as pydantic
secrets so they never appear in a ``repr``, a log line or an error message.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from cryptography.fernet import Fernet
from pydantic import SecretBytes

log = logging.getLogger(__name__)

HMAC_KEY_FILE: Final = "hmac.key"
VAULT_KEY_FILE: Final = "vault.key"


class SecretsError(RuntimeError):
    """A secret file is unreadable, unsafe or malformed (the message names the file only)."""


@dataclass(frozen=True)
class NodeSecrets:
    hmac_key: SecretBytes
    vault_key: SecretBytes


def load_secrets(folder: Path, *, create: bool = True) -> NodeSecrets:
    """Read the node's secrets from ``folder``, generating missing ones when ``create``."""
    if create:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    hmac_text = _read_or_create(
        folder / HMAC_KEY_FILE, lambda: base64.b64encode(secrets.token_bytes(32)).decode(), create
    )
    try:
        hmac_key = base64.b64decode(hmac_text, validate=True)
    except ValueError:
        raise SecretsError(f"{folder / HMAC_KEY_FILE} is not base64") from None
    if len(hmac_key) < 32:
        raise SecretsError(f"{folder / HMAC_KEY_FILE} holds fewer than 32 bytes")
    vault_text = _read_or_create(
        folder / VAULT_KEY_FILE, lambda: Fernet.generate_key().decode(), create
    )
    try:
        Fernet(vault_text.encode())
    except ValueError:
        raise SecretsError(f"{folder / VAULT_KEY_FILE} is not a Fernet key") from None
    return NodeSecrets(SecretBytes(hmac_key), SecretBytes(vault_text.encode()))


def _read_or_create(path: Path, make: Callable[[], str], create: bool) -> str:
    if not path.exists():
        if not create:
            raise SecretsError(f"{path} does not exist (has the node been started?)")
        _publish(path, make())
        log.info("generated %s", path)
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SecretsError(f"cannot read {path} ({type(exc).__name__})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretsError(f"{path} is readable by others: chmod 600 it")
    if not text:
        raise SecretsError(f"{path} is empty")
    return text


def _publish(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` (0600) unless another process published it first."""
    temporary = path.with_name(f".tmp-{secrets.token_hex(8)}-{path.name}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(descriptor, "w", encoding="ascii") as handle:
            handle.write(text + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another node won the race: use its key
            os.link(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
