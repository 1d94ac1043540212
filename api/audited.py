"""The HTTP door's audit: every answered request a route noted (``request.state.audit``,
:func:`dicomweb.context.note_audit`) and every refusal (401, 403) becomes an audit event.

A pure ASGI middleware: it records as the answer starts (its status is then known), so
the event is queued before the caller has the answer, and a streamed body is not held back.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from audit import Action, AuditNote, AuditTrail, Door


def note_audit(
    request: Request,
    action: Action,
    *,
    studies: Iterable[str] = (),
    target: str = "",
    detail: dict[str, object] | None = None,
    aggregate: bool = False,
    actor: str | None = None,
) -> None:
    """Say what this request did, for the audit trail (written once it is answered);
    ``actor``: who, when the request's credentials do not say (a login)."""
    request.state.audit = AuditNote(action, tuple(studies), target, detail or {}, aggregate, actor)


class AuditMiddleware:
    def __init__(self, app: ASGIApp, trail: AuditTrail) -> None:
        self.app = app
        self.trail = trail

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        recorded = False

        async def watch(message: Message) -> None:
            nonlocal recorded
            if message["type"] == "http.response.start" and not recorded:
                recorded = True  # before the answer leaves: a client that has it finds it
                self._record(scope, int(message["status"]))
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not recorded:
                self._record(scope, 500)

    def _record(self, scope: Scope, status: int) -> None:
        state: dict[str, Any] = scope.get("state") or {}
        note: AuditNote | None = state.get("audit")
        principal = state.get("principal")
        actor = str(principal.name) if principal is not None else "anonymous"
        if note is not None and note.actor is not None:
            actor = note.actor
        client = scope.get("client")
        remote = f"{client[0]}:{client[1]}" if client else ""
        if note is not None:
            if note.aggregate and client:
                remote = str(client[0])  # a browser spreads a viewer's requests over connections
            self.trail.record(
                note.action,
                actor=actor,
                outcome=_outcome(status),
                door=Door.HTTP,
                remote=remote,
                target=note.target,
                # a failed request's UIDs are what the caller typed, maybe an original one
                studies=note.studies if status < 400 else (),
                detail={**note.detail, "status": status} if not note.aggregate else note.detail,
                aggregate=note.aggregate,
            )
        elif status in (401, 403):
            self.trail.record(
                Action.ACCESS_DENIED,
                actor=actor,
                outcome="refused",
                door=Door.HTTP,
                remote=remote,
                target=f"{scope['method']} {_route(scope)}"[:128],
                detail={"status": status},
            )


def _outcome(status: int) -> str:
    if status < 400:
        return "ok"
    return "refused" if status in (401, 403, 404) else "failed"


def _route(scope: Scope) -> str:
    """The path with its parameters as names, e.g. ``/dicom-web/studies/{study}/metadata``
    (a raw path may hold what a caller typed, such as an original UID: the trail keeps
    the route's shape; a path no route matched is not kept)."""
    if "route" not in scope:
        return "(no route)"
    names = {str(value): name for name, value in (scope.get("path_params") or {}).items()}
    return "/".join(
        f"{{{names[part]}}}" if part in names else part for part in str(scope["path"]).split("/")
    )
