"""The headers every answer of the HTTP door carries, and CORS for DICOMweb.

Security headers (:class:`SecurityHeaders`, one ASGI middleware around the whole app):

- ``Content-Security-Policy``. HTML and every other answer get the document policy: scripts
  only from the node itself plus the inline scripts of its own pages, allowed one by one by
  their sha256 (the OHIF viewer's ``index.html`` and the Swagger UI page, hashed as served
  when the app is built), inline styles (OHIF and Swagger UI inject ``<style>`` elements),
  ``data:`` images, no plugins, no framing, forms only to the node. JavaScript answers get
  the worker policy instead: a dedicated worker takes its CSP from its own script's answer,
  and OHIF's image decoders (JPEG 2000, JPEG-LS: WebAssembly built with embind) need
  ``'unsafe-eval'`` and ``'wasm-unsafe-eval'`` there, never in the pages.
- ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` (viewer URLs carry
  Study Instance UIDs: no other site learns them from a link), ``X-Frame-Options: DENY`` and
  ``Cross-Origin-Opener-Policy: same-origin``.
- ``Strict-Transport-Security`` on answers over HTTPS only (the request's scheme, which a
  trusted proxy's ``X-Forwarded-Proto`` sets: see ``https.trusted_proxies``).

A route that sets one of these headers itself keeps its own value.

CORS (:class:`DicomwebCors`) applies to DICOMweb only, from the origins of
``dicomweb.cors_origins``, and never with credentials: a page of another origin (a separately
hosted viewer) calls DICOMweb with a bearer token; the session cookie is ``SameSite=Strict``
and CORS does not let other origins' scripts use it. The rest of the HTTP door (reports,
cohorts, administration, the login) serves the node's own pages and non-browser clients, so
no other origin's script may call it.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from html.parser import HTMLParser

from starlette.datastructures import MutableHeaders
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

DOCUMENT_POLICY = (
    "default-src 'self'; script-src 'self'{scripts}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'self'; frame-ancestors 'none'; "
    "form-action 'self'"
)
WORKER_POLICY = (
    "default-src 'self'; script-src 'self' 'unsafe-eval' 'wasm-unsafe-eval'; "
    "object-src 'none'; base-uri 'self'; frame-ancestors 'none'"
)
_FIXED = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
}


class _InlineScripts(HTMLParser):
    """The text of each ``<script>`` element without ``src`` of an HTML page."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=False)
        self.scripts: list[str] = []
        self._current: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "script" and not any(name == "src" for name, _ in attrs):
            self._current = []

    def handle_data(self, data: str) -> None:
        if self._current is not None:
            self._current.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script" and self._current is not None:
            self.scripts.append("".join(self._current))
            self._current = None


def script_hashes(html: str) -> list[str]:
    """CSP sources (``'sha256-...'``) allowing the inline scripts of ``html`` as served."""
    parser = _InlineScripts()
    parser.feed(html)
    parser.close()
    return [
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in parser.scripts
    ]


class SecurityHeaders:
    """ASGI middleware: the security headers of every HTTP answer (see the module)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        inline_scripts: Sequence[str] = (),
        hsts_max_age: int = 0,
        report_uri: str | None = None,
    ) -> None:
        self.app = app
        report = f"; report-uri {report_uri}" if report_uri else ""
        scripts = "".join(f" {source}" for source in dict.fromkeys(inline_scripts))
        document = DOCUMENT_POLICY.format(scripts=scripts) + report
        self.document = [*_FIXED.items(), ("Content-Security-Policy", document)]
        self.worker = [*_FIXED.items(), ("Content-Security-Policy", WORKER_POLICY + report)]
        self.hsts = f"max-age={hsts_max_age}" if hsts_max_age else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        over_https = scope.get("scheme") == "https"

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                script = "javascript" in headers.get("content-type", "")
                for name, value in self.worker if script else self.document:
                    headers.setdefault(name, value)
                if over_https and self.hsts:
                    headers.setdefault("Strict-Transport-Security", self.hsts)
            await send(message)

        await self.app(scope, receive, send_with_headers)


class DicomwebCors:
    """ASGI middleware: Starlette's CORS for paths under ``prefix``, from ``origins`` only,
    without credentials; other paths pass untouched (no CORS answer: a browser refuses
    them to other origins)."""

    def __init__(self, app: ASGIApp, *, prefix: str, origins: Sequence[str]) -> None:
        self.app = app
        self.prefix = prefix.rstrip("/")
        self.cors = CORSMiddleware(
            app,
            allow_origins=list(origins),
            allow_methods=["GET", "HEAD", "POST", "OPTIONS"],
            allow_headers=["*"],
            allow_credentials=False,
            expose_headers=["Warning", "ETag", "Content-Type", "Content-Encoding"],
            max_age=600,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if path == self.prefix or path.startswith(self.prefix + "/"):
            await self.cors(scope, receive, send)
        else:
            await self.app(scope, receive, send)
