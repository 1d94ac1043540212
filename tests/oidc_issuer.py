"""An OpenID Connect provider of the tests' own, on loopback.

A real discovery document and JWKS (RSA keys generated here), laid out as Keycloak lays
them out (``/realms/<realm>/protocol/openid-connect/...``); tokens minted on demand, well
made or broken in each way a verifier must catch; and, for the login of people, an
authorization endpoint that approves at once (as a provider with a live single sign-on
session does) or after a click on its sign-in page (``prompt``), and a token endpoint that
checks the client, the redirect URI, the one-time code and PKCE (S256) as a real one does.
Served by the standard library's HTTP server in a thread; stopped by the test that starts
it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote_plus, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm

Claims = dict[str, Any]


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


@dataclass
class Client:
    """A client registered at the provider (the node's login)."""

    client_id: str
    secret: str | None
    redirect_uris: set[str] = field(default_factory=set)


@dataclass
class Grant:
    """What an authorization code stands for, until the token endpoint takes it (once)."""

    client_id: str
    redirect_uri: str
    challenge: str
    nonce: str | None
    user: Claims


class TestIssuer:
    """The provider. ``user`` holds the claims of whoever /authorize logs in next."""

    __test__ = False  # not a test class, whatever its name

    def __init__(self, *, audience: str = "pacsnode", realm: str = "test") -> None:
        self.audience = audience
        self.keys: dict[str, rsa.RSAPrivateKey] = {"key-1": new_key()}
        self.kid = "key-1"
        self.user: Claims = {"sub": "user-1", "roles": ["viewer"], "groups": []}
        self.clients: dict[str, Client] = {}
        self.codes: dict[str, Grant] = {}
        self.deny: str | None = None
        self.prompt = False
        """Show a sign-in page first (as a provider without a session does): the way back to
        the client is then a navigation the provider's page starts (cross-site)."""
        self.auth_methods = ["client_secret_basic", "client_secret_post"]
        self.authorize_requests: list[dict[str, str]] = []
        self.token_requests: list[dict[str, str]] = []
        self.jwks_fetches = 0
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self.base = f"http://127.0.0.1:{self._server.server_address[1]}"
        self.path = f"/realms/{realm}"
        self.url = self.base + self.path
        self._thread = threading.Thread(target=self._server.serve_forever, name="oidc-issuer")

    # ------------------------------------------------------------------------- running

    def start(self) -> TestIssuer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def __enter__(self) -> TestIssuer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()

    @property
    def key(self) -> rsa.RSAPrivateKey:
        return self.keys[self.kid]

    def rotate(self) -> str:
        """A new signing key, published beside the old one; its kid."""
        kid = f"key-{len(self.keys) + 1}"
        self.keys[kid] = new_key()
        self.kid = kid
        return kid

    def register(self, client_id: str, redirect_uris: Iterable[str], secret: str | None) -> None:
        self.clients[client_id] = Client(client_id, secret, set(redirect_uris))

    # ------------------------------------------------------------------------- tokens

    def claims(self, **claims: Any) -> Claims:
        """An access token's claims for the node: now, five minutes, ``user``, overrides."""
        now = int(time.time())
        base: Claims = {"iss": self.url, "aud": self.audience, "iat": now, "exp": now + 300}
        return {**base, **self.user, **claims}

    def token(
        self,
        *,
        key: rsa.RSAPrivateKey | None = None,
        kid: str | None = None,
        without: Iterable[str] = (),
        **claims: Any,
    ) -> str:
        """A signed access token (RS256; ``without`` drops claims)."""
        payload = {k: v for k, v in self.claims(**claims).items() if k not in set(without)}
        return jwt.encode(
            payload, key or self.key, algorithm="RS256", headers={"kid": kid or self.kid}
        )

    def unsigned(self, **claims: Any) -> str:
        """``alg: none``: no signature at all."""
        header = {"alg": "none", "typ": "JWT", "kid": self.kid}
        return f"{_part(header)}.{_part(self.claims(**claims))}."

    def hs256_with_public_key(self, **claims: Any) -> str:
        """HS256 whose HMAC secret is the provider's public key (which everybody has): a
        verifier that lets the token pick the algorithm for a key would accept it."""
        pem = self.key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        header = {"alg": "HS256", "typ": "JWT", "kid": self.kid}
        signed = f"{_part(header)}.{_part(self.claims(**claims))}"
        return f"{signed}.{b64url(hmac.new(pem, signed.encode(), hashlib.sha256).digest())}"

    # ------------------------------------------------------------------------- documents

    def discovery(self) -> Claims:
        endpoints = self.url + "/protocol/openid-connect"
        return {
            "issuer": self.url,
            "authorization_endpoint": endpoints + "/auth",
            "token_endpoint": endpoints + "/token",
            "jwks_uri": endpoints + "/certs",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": self.auth_methods,
        }

    def jwks(self) -> Claims:
        with self._lock:
            self.jwks_fetches += 1
        keys = []
        for kid, key in self.keys.items():
            jwk = json.loads(RSAAlgorithm.to_jwk(key.public_key()))
            keys.append({**jwk, "kid": kid, "use": "sig", "alg": "RS256"})
        return {"keys": keys}

    # ------------------------------------------------------------------------- login

    def sign_in_page(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """A page whose button sends the authorization request on (``prompt``)."""
        fields = "".join(
            f'<input type="hidden" name="{html.escape(k)}" value="{html.escape(v)}">'
            for k, v in query.items()
        )
        page = (
            "<!doctype html><html><head><title>Test IdP</title>"
            '<link rel="icon" href="data:,"></head><body><h1>Test IdP</h1>'
            f'<form method="post" action="{self.path}/protocol/openid-connect/auth">{fields}'
            "<button>Sign in</button></form></body></html>"
        )
        return 200, {"Content-Type": "text/html; charset=utf-8"}, page.encode()

    def authorize(self, query: dict[str, str]) -> tuple[int, dict[str, str], bytes]:
        """Approve: back to the client with a code (or ``deny``'s error)."""
        self.authorize_requests.append(query)
        client = self.clients.get(query.get("client_id", ""))
        redirect_uri = query.get("redirect_uri", "")
        if client is None or redirect_uri not in client.redirect_uris:
            return 400, {"Content-Type": "text/plain"}, b"unknown client or redirect_uri"
        back: dict[str, str] = {"state": query.get("state", ""), "iss": self.url}
        if self.deny is not None:
            back["error"] = self.deny
        elif query.get("response_type") != "code" or query.get("code_challenge_method") != "S256":
            back["error"] = "invalid_request"
        else:
            code = secrets.token_urlsafe(24)
            self.codes[code] = Grant(
                client.client_id,
                redirect_uri,
                query.get("code_challenge", ""),
                query.get("nonce"),
                dict(self.user),
            )
            back["code"] = code
        return 302, {"Location": f"{redirect_uri}?{urlencode(back)}"}, b""

    def exchange(self, form: dict[str, str], authorization: str) -> tuple[int, Claims]:
        """The token endpoint: client, code (once), redirect URI and PKCE checked."""
        self.token_requests.append(form)
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "basic":
            encoded_id, _, encoded_secret = base64.b64decode(value).decode().partition(":")
            client_id, secret = unquote_plus(encoded_id), unquote_plus(encoded_secret)
        client = self.clients.get(client_id)
        if client is None or (client.secret is not None and secret != client.secret):
            return 401, {"error": "invalid_client"}
        grant = self.codes.pop(form.get("code", ""), None)
        verifier = form.get("code_verifier", "")
        if (
            form.get("grant_type") != "authorization_code"
            or grant is None
            or grant.client_id != client_id
            or grant.redirect_uri != form.get("redirect_uri")
            or b64url(hashlib.sha256(verifier.encode()).digest()) != grant.challenge
        ):
            return 400, {"error": "invalid_grant"}
        nonce = {} if grant.nonce is None else {"nonce": grant.nonce}
        id_claims = {**self.claims(**grant.user), "aud": client_id, "azp": client_id, **nonce}
        return 200, {
            "access_token": self.token(**grant.user),
            "id_token": jwt.encode(id_claims, self.key, "RS256", headers={"kid": self.kid}),
            "token_type": "Bearer",
            "expires_in": 300,
        }


def _part(value: Claims) -> str:
    return b64url(json.dumps(value).encode())


def _handler(issuer: TestIssuer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            parts = urlsplit(self.path)
            query = {k: v[0] for k, v in parse_qs(parts.query).items()}
            route = parts.path.removeprefix(issuer.path)
            if route == "/.well-known/openid-configuration":
                self._json(200, issuer.discovery())
            elif route == "/protocol/openid-connect/certs":
                self._json(200, issuer.jwks())
            elif route == "/protocol/openid-connect/auth":
                self._answer(*(issuer.sign_in_page if issuer.prompt else issuer.authorize)(query))
            else:
                self._json(404, {"error": "not found"})

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            route = urlsplit(self.path).path.removeprefix(issuer.path)
            if route == "/protocol/openid-connect/token":
                self._json(*issuer.exchange(form, self.headers.get("Authorization", "")))
            elif route == "/protocol/openid-connect/auth":  # the sign-in page's button
                self._answer(*issuer.authorize(form))
            else:
                self._json(404, {"error": "not found"})

        def _json(self, status: int, body: Claims) -> None:
            self._answer(status, {"Content-Type": "application/json"}, json.dumps(body).encode())

        def _answer(self, status: int, headers: dict[str, str], body: bytes) -> None:
            self.send_response(status)
            for name, value in {**headers, "Content-Length": str(len(body))}.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler
