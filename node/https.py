"""The HTTPS certificate of the HTTP port: an ``SSLContext`` made from ``https.certfile`` and
``https.keyfile``, reloaded in place on SIGHUP.

uvicorn serves with the very ``SSLContext`` object it is given, so loading a new chain into
it changes what every new handshake presents; connections already open keep theirs. The new
files are checked first (parsed, key matching certificate, loaded into a scratch context):
a bad file leaves the old certificate in place, and the log says why. The key's password is
never logged.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization

from config.https import HttpsSettings

log = logging.getLogger(__name__)


class CertificateError(RuntimeError):
    """The configured certificate or key cannot be used; the message says which and why."""


@dataclass(frozen=True)
class CertificateInfo:
    """What the log says of a certificate (all of it public)."""

    sha256: str
    subject: str
    not_after: datetime

    def __str__(self) -> str:
        return f"{self.subject}, sha256 {self.sha256}, valid until {self.not_after:%Y-%m-%d}"


class ServerCertificate:
    """The node's HTTPS ``SSLContext`` (TLS 1.2 or later) and what it currently serves."""

    def __init__(self, settings: HttpsSettings) -> None:
        if settings.certfile is None or settings.keyfile is None:
            raise ValueError("HTTPS is not configured (https.certfile, https.keyfile)")
        self.settings = settings
        self.context = self._new_context()
        self.info = self._check()
        self._load(self.context)

    def reload(self) -> bool:
        """Load the files again into the live context; False (and the old certificate kept)
        when they cannot be used. Call it on the thread that serves the handshakes."""
        try:
            info = self._check()
            self._load(self._new_context())  # the scratch run: OpenSSL's own checks
            self._load(self.context)
        except CertificateError as exc:
            log.error("HTTPS certificate not reloaded, still serving %s: %s", self.info, exc)
            return False
        self.info = info
        log.info("HTTPS certificate reloaded: %s", info)
        return True

    @staticmethod
    def _new_context() -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def _password(self) -> bytes | None:
        try:
            password = self.settings.key_password()
        except OSError as exc:
            raise CertificateError(
                f"cannot read https.keyfile_password_file: {exc.strerror or exc}"
            ) from None
        return password.encode() if password is not None else None

    def _check(self) -> CertificateInfo:
        """Parse both files and check that they belong together (clearer errors than
        OpenSSL's)."""
        certfile, keyfile = self.settings.certfile, self.settings.keyfile
        assert certfile is not None and keyfile is not None
        try:
            chain = x509.load_pem_x509_certificates(certfile.read_bytes())
        except OSError as exc:
            raise CertificateError(f"cannot read {certfile}: {exc.strerror or exc}") from None
        except ValueError:
            raise CertificateError(f"{certfile} holds no PEM certificate") from None
        try:
            key_bytes = keyfile.read_bytes()
        except OSError as exc:
            raise CertificateError(f"cannot read {keyfile}: {exc.strerror or exc}") from None
        try:
            key = serialization.load_pem_private_key(key_bytes, self._password())
        except TypeError:  # encrypted without a password, or a password for a plain key
            raise CertificateError(
                f"{keyfile} is encrypted and no password is configured "
                "(https.keyfile_password_file or PACSNODE_HTTPS__KEYFILE_PASSWORD)"
                if b"ENCRYPTED" in key_bytes
                else f"{keyfile} is not encrypted, but a password is configured"
            ) from None
        except ValueError:
            raise CertificateError(
                f"{keyfile} holds no PEM private key, or its password is wrong"
            ) from None
        except UnsupportedAlgorithm:
            raise CertificateError(f"{keyfile}: a kind of key this node cannot use") from None
        leaf = chain[0]
        if leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ) != key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        ):
            raise CertificateError(f"the key in {keyfile} does not match the certificate")
        return CertificateInfo(
            sha256=leaf.fingerprint(hashes.SHA256()).hex(":"),
            subject=leaf.subject.rfc4514_string(),
            not_after=leaf.not_valid_after_utc,
        )

    def _load(self, context: ssl.SSLContext) -> None:
        password = self._password()
        try:
            context.load_cert_chain(
                str(self.settings.certfile), str(self.settings.keyfile), password
            )
        except (OSError, ssl.SSLError) as exc:
            raise CertificateError(f"OpenSSL refused the certificate or key: {exc}") from None
