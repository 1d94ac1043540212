"""OpenID Connect: the hospital's identity provider (Keycloak, Entra ID) vouches for a caller.

An access token is a JSON Web Token signed by the provider. :class:`OidcVerifier` checks it
with PyJWT against the keys the provider publishes (its JWKS, found through its discovery
document): the algorithm against ``access.oidc.algorithms`` before any key is looked up (no
``none``, no HMAC: a token signed with the provider's public key as an HMAC secret is
refused), then the signature, ``iss``, ``aud``, ``exp``, ``nbf`` and ``iat`` (30 s of clock
skew allowed). Its roles and projects come from configurable claims. A token that passed is
remembered until it expires (at most a minute), so checking it again costs microseconds.

When the provider cannot be reached, the keys fetched before stay in use; with none known
yet, :class:`ProviderUnavailableError` says so (the HTTP door answers 503: the caller's token may
well be good, so 401 would be a lie that makes clients log in again for nothing).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import quote

import httpx
import jwt
from jwt import PyJWK, PyJWKClient, PyJWKClientConnectionError, PyJWKClientError
from jwt.exceptions import PyJWKSetError

from access.principal import Principal, permissions_of
from config.access import PROJECT_NAME, AccessSettings, OidcSettings, secure_url

log = logging.getLogger(__name__)

LEEWAY_SECONDS = 30
"""Clock skew allowed between the provider and the node (``exp``, ``nbf``, ``iat``)."""
REQUIRED_CLAIMS = ["exp", "iat", "iss", "aud", "sub"]
ALL_PROJECTS = "*"
_CACHE_SECONDS = 60.0
_CACHE_SIZE = 10_000
_TIMEOUT = 5.0
_METADATA_SECONDS = 3600.0
_RETRY_SECONDS = 10.0
"""After a failed discovery, callers are told the provider is unavailable without asking it
again for this long (each try could block a worker for the whole timeout)."""
_MAX_TOKEN = 16_384
_PROJECT = re.compile(PROJECT_NAME)


class ProviderUnavailableError(RuntimeError):
    """The provider's discovery document or keys cannot be had, and none are known yet."""


class TokenRefusedError(ValueError):
    """A token that does not pass; the message names the check (never the token)."""


@dataclass(frozen=True)
class ProviderMetadata:
    """What the node uses of the provider's discovery document."""

    issuer: str
    jwks_uri: str
    authorization_endpoint: str
    token_endpoint: str
    token_auth_methods: tuple[str, ...]


class _KeySet(PyJWKClient):
    """PyJWT's JWKS client (it caches the key set and re-fetches it, at most every 30 s, for
    an unknown ``kid``: a rotated key), keeping the last key set while the provider is down."""

    _last: Any = None

    def fetch_data(self) -> Any:
        try:
            data = super().fetch_data()
        except PyJWKClientConnectionError as exc:
            if self._last is None:
                raise
            log.warning(
                "the OpenID Connect keys at %s cannot be fetched (%s): using the keys fetched "
                "before",
                self.uri,
                _reason(exc),
            )
            return self._last
        self._last = data
        return data


class Provider:
    """The provider's discovery document and keys, fetched when first needed and cached."""

    def __init__(
        self,
        issuer: str,
        *,
        timeout: float = _TIMEOUT,
        keys_lifespan: float = 300.0,
        keys_cooldown: float = 30.0,
    ) -> None:
        self.issuer = issuer
        self.timeout = timeout
        self._keys_lifespan = keys_lifespan
        self._keys_cooldown = keys_cooldown
        self._metadata: ProviderMetadata | None = None
        self._fetched_at = 0.0
        self._failed_until = 0.0
        self._failure = ""
        self._keys: _KeySet | None = None
        self._keys_failed_until = 0.0
        self._keys_failure = ""
        self._lock = threading.Lock()

    @property
    def discovery_url(self) -> str:
        return self.issuer.rstrip("/") + "/.well-known/openid-configuration"

    def metadata(self) -> ProviderMetadata:
        """The discovery document (re-read hourly; the last one stays while it cannot be)."""
        now = time.monotonic()
        known = self._metadata
        if known is not None and now - self._fetched_at < _METADATA_SECONDS:
            return known
        with self._lock:
            if self._metadata is not None and now - self._fetched_at < _METADATA_SECONDS:
                return self._metadata
            if now < self._failed_until:
                if self._metadata is not None:
                    return self._metadata
                raise ProviderUnavailableError(self._failure)
            try:
                metadata = self._discover()
            except ProviderUnavailableError as exc:
                self._failed_until = now + _RETRY_SECONDS
                self._failure = str(exc)
                if self._metadata is None:
                    log.error("%s", exc)
                    raise
                log.warning("%s: using the document read before", exc)
                return self._metadata
            if self._metadata is None or self._metadata.jwks_uri != metadata.jwks_uri:
                self._keys = _KeySet(
                    metadata.jwks_uri,
                    cache_jwk_set=True,
                    lifespan=self._keys_lifespan,
                    timeout=self.timeout,
                    cooldown_duration=self._keys_cooldown,
                )
            self._metadata, self._fetched_at = metadata, now
            return metadata

    def _discover(self) -> ProviderMetadata:
        where = f"the OpenID Connect provider {self.issuer}"
        try:
            answer = httpx.get(self.discovery_url, timeout=self.timeout, follow_redirects=False)
            answer.raise_for_status()
            document = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderUnavailableError(
                f"{where} cannot be reached: {self.discovery_url}: {_reason(exc)}"
            ) from None
        if not isinstance(document, dict):
            raise ProviderUnavailableError(f"{where}: its discovery document is not a JSON object")
        if document.get("issuer") != self.issuer:
            raise ProviderUnavailableError(
                f"{where}: its discovery document names another issuer "
                f"({str(document.get('issuer'))[:200]!r}); access.oidc.issuer must be exactly "
                "that value"
            )
        urls = {}
        for name in ("jwks_uri", "authorization_endpoint", "token_endpoint"):
            value = document.get(name)
            if not isinstance(value, str) or not secure_url(value):
                raise ProviderUnavailableError(f"{where}: its {name} is missing or not https")
            urls[name] = value
        methods = document.get("token_endpoint_auth_methods_supported", ["client_secret_basic"])
        return ProviderMetadata(
            issuer=self.issuer,
            token_auth_methods=tuple(m for m in methods if isinstance(m, str)),
            **urls,
        )

    def signing_key(self, kid: str) -> PyJWK:
        """The provider's key named ``kid`` (:class:`TokenRefusedError` when it has none)."""
        self.metadata()
        keys = self._keys
        assert keys is not None
        if time.monotonic() < self._keys_failed_until:  # no key yet, and asked just now
            raise ProviderUnavailableError(self._keys_failure)
        try:
            return keys.get_signing_key(kid)
        except PyJWKClientConnectionError as exc:
            message = f"the OpenID Connect keys at {keys.uri} cannot be fetched: {_reason(exc)}"
        except PyJWKSetError:
            message = f"the OpenID Connect key set at {keys.uri} has no usable key"
        except PyJWKClientError:
            raise TokenRefusedError("no key of the provider has its key ID (kid)") from None
        log.error("%s", message)
        self._keys_failed_until, self._keys_failure = time.monotonic() + _RETRY_SECONDS, message
        raise ProviderUnavailableError(message)

    def exchange(
        self,
        *,
        code: str,
        redirect_uri: str,
        code_verifier: str,
        client_id: str,
        client_secret: str | None,
    ) -> dict[str, Any]:
        """The tokens for a login's authorization code (the token endpoint's answer)."""
        metadata = self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
            "client_id": client_id,
        }
        auth: httpx.BasicAuth | None = None
        if client_secret is not None:  # in the form if the provider takes it there (no
            if "client_secret_post" in metadata.token_auth_methods:  # encoding questions)
                form["client_secret"] = client_secret
            else:  # RFC 6749 2.3.1: each part form-encoded, then Basic
                auth = httpx.BasicAuth(quote(client_id, safe=""), quote(client_secret, safe=""))
        try:
            answer = httpx.post(
                metadata.token_endpoint,
                data=form,
                auth=auth,
                timeout=self.timeout,
                headers={"Accept": "application/json"},
            )
            body = answer.json()
        except (httpx.HTTPError, ValueError) as exc:
            raise ProviderUnavailableError(
                f"the OpenID Connect token endpoint {metadata.token_endpoint} cannot be "
                f"reached: {_reason(exc)}"
            ) from None
        if answer.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            raise TokenRefusedError(f"the provider refused the login ({code_word(error)})")
        return body


class OidcVerifier:
    """Checks the provider's access tokens (``api.security.BearerVerifier``) and ID tokens."""

    def __init__(
        self,
        settings: AccessSettings,
        provider: Provider | None = None,
        *,
        cache_size: int = _CACHE_SIZE,
    ) -> None:
        self.settings: OidcSettings = settings.oidc
        self.roles = settings.roles
        self.provider = provider or Provider(settings.oidc.issuer)
        self.cache_size = cache_size
        self._valid: dict[bytes, tuple[float, Principal]] = {}
        self._lock = threading.Lock()

    def cached(self, token: str, remote: str = "") -> Principal | None:
        """The principal of a token checked lately and not expired yet, else None (then
        :meth:`verify` decides): cheap enough for the event loop."""
        known = self._valid.get(hashlib.sha256(token.encode()).digest())
        if known is not None and known[0] > time.time():
            return replace(known[1], remote=remote)
        return None

    def verify(self, token: str, remote: str = "") -> Principal | None:
        """The principal of a valid access token, or None (the reason is logged)."""
        if (principal := self.cached(token, remote)) is not None:
            return principal
        key = hashlib.sha256(token.encode()).digest()
        now = time.time()
        try:
            claims = self.decode(token, self.settings.audience)
        except TokenRefusedError as exc:
            log.info("refused an OpenID Connect token from %s: %s", remote or "?", exc)
            return None
        principal = self.principal(claims)
        self._remember(key, min(float(claims["exp"]), now + _CACHE_SECONDS), principal)
        return replace(principal, remote=remote)

    def decode(self, token: str, audience: str, *, nonce: str | None = None) -> dict[str, Any]:
        """The claims of a token of the provider for ``audience`` (:class:`TokenRefusedError`)."""
        if len(token) > _MAX_TOKEN:
            raise TokenRefusedError("too long")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise TokenRefusedError("not a JSON Web Token") from None
        if header.get("alg") not in self.settings.algorithms:
            raise TokenRefusedError(
                "its signature algorithm is not accepted (access.oidc.algorithms)"
            )
        kid = header.get("kid")
        if not isinstance(kid, str) or not kid:
            raise TokenRefusedError("it names no key (kid)")
        key = self.provider.signing_key(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=self.settings.algorithms,
                audience=audience,
                issuer=self.settings.issuer,
                leeway=LEEWAY_SECONDS,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.MissingRequiredClaimError as exc:
            raise TokenRefusedError(f"it has no {exc.claim!r} claim") from None
        except jwt.PyJWTError as exc:
            raise TokenRefusedError(_REFUSALS.get(type(exc), "it is not valid")) from None
        if nonce is not None and not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise TokenRefusedError("its nonce is not this login's")
        if not isinstance(claims["sub"], str) or not claims["sub"]:
            raise TokenRefusedError("its subject (sub) is empty")
        return claims

    def principal(self, claims: Mapping[str, Any]) -> Principal:
        """The caller the claims describe: roles mapped through ``access.roles``, projects
        from the projects claim (none: no project)."""
        roles = _strings(_claim(claims, self.settings.roles_claim))
        values = _strings(_claim(claims, self.settings.projects_claim))
        mapping = self.settings.project_map
        projects = {mapping.get(value, value) for value in values}
        return Principal(
            f"oidc:{claims['sub']}",
            permissions_of(roles, self.roles),
            None
            if ALL_PROJECTS in projects
            else frozenset(p for p in projects if _PROJECT.match(p)),
            "oidc",
        )

    def _remember(self, key: bytes, until: float, principal: Principal) -> None:
        with self._lock:
            if len(self._valid) >= self.cache_size:
                now = time.time()
                for old in [k for k, (end, _) in self._valid.items() if end <= now]:
                    del self._valid[old]
                while len(self._valid) >= self.cache_size:
                    del self._valid[next(iter(self._valid))]
            self._valid[key] = (until, principal)


_REFUSALS: dict[type[Exception], str] = {
    jwt.ExpiredSignatureError: "it has expired",
    jwt.ImmatureSignatureError: "it is not valid yet (nbf or iat in the future)",
    jwt.InvalidAudienceError: "it is meant for another audience (aud)",
    jwt.InvalidIssuerError: "another issuer made it (iss)",
    jwt.InvalidSignatureError: "its signature does not match the provider's key",
    jwt.InvalidAlgorithmError: "its algorithm is not the key's",
    jwt.DecodeError: "it cannot be decoded",
}


def _claim(claims: Mapping[str, Any], path: str) -> object:
    """The value at a dotted path (``realm_access.roles``), or None."""
    value: object = claims
    for part in path.split("."):
        if not isinstance(value, Mapping):
            return None
        value = value.get(part)
    return value


def _strings(value: object) -> list[str]:
    """A claim's values: a list of strings, or one string of space-separated values."""
    if isinstance(value, str):
        return value.split()
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []


def _reason(exc: Exception) -> str:
    """A short cause for a log line (the exception's own text is a URL's answer at most)."""
    text = str(exc).splitlines()[0][:200] if str(exc) else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def client_secret(settings: OidcSettings) -> str | None:
    """The login client's secret (read from ``client_secret_file`` when one is named)."""
    if settings.client_secret_file is not None:
        try:
            return settings.client_secret_file.read_text().strip() or None
        except OSError as exc:
            raise RuntimeError(
                f"cannot read access.oidc.client_secret_file {settings.client_secret_file} "
                f"({exc.strerror or type(exc).__name__})"
            ) from None
    return None if settings.client_secret is None else settings.client_secret.get_secret_value()


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a PKCE code verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def code_word(value: object) -> str:
    """An error code of the provider (``invalid_grant``) fit for a log line and a page: at
    most 64 letters, digits, ``_``, ``.``, ``-`` (anything else is someone's text)."""
    text = re.sub(r"[^A-Za-z0-9_.-]", "?", str(value or "unknown"))
    return text[:64]
