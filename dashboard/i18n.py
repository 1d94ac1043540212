"""The dashboard's two languages: every UI string in ``locales/<lang>.json``, one file per
language with the same keys (a test checks that), read once.

The language is the ``lang`` query parameter (remembered in a cookie), else the cookie, else
the browser's ``Accept-Language``; English when none says Chinese.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Final

from fastapi import Request

LANGUAGES: Final = ("en", "zh")
LANGUAGE_COOKIE: Final = "pacsnode_lang"
_LOCALES = Path(__file__).parent / "locales"


@cache
def strings(language: str) -> dict[str, str]:
    """Every UI string of ``language`` by key."""
    loaded: dict[str, str] = json.loads((_LOCALES / f"{language}.json").read_text("utf-8"))
    return loaded


def language_of(request: Request) -> str:
    """The language a request asks for."""
    for asked in (request.query_params.get("lang"), request.cookies.get(LANGUAGE_COOKIE)):
        if asked in LANGUAGES:
            return str(asked)
    accepted = request.headers.get("accept-language", "").lower()
    return "zh" if accepted.startswith("zh") or ",zh" in accepted.replace(" ", "") else "en"
