"""The documentation tells the truth: every setting in the example config and the README.

Top-level settings are plain keys; a feature's settings are a nested model shown as a
``[section]`` of the example file and as ``section.key`` (``PACSNODE_SECTION__KEY``) in the
README's configuration reference.
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path

from pydantic import BaseModel

from config import Settings, load_settings

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "pacsnode.example.toml"


def setting_names(model: type[BaseModel] = Settings, prefix: str = "") -> Iterator[str]:
    """``key`` and ``section.key`` for every setting, nested models expanded."""
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from setting_names(annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}"


def documented_keys(text: str) -> set[str]:
    """``key`` / ``section.key`` set or shown commented-out (``# key = ...``) in TOML text."""
    keys: set[str] = set()
    section = ""
    for line in text.splitlines():
        if header := re.match(r"^#?\s*\[([a-z_.]+)\]\s*$", line):
            section = header.group(1) + "."
        elif key := re.match(r"^#?\s*([a-z][a-z0-9_]*)\s*=", line):
            keys.add(section + key.group(1))
    return keys


def flatten(values: dict[str, object], prefix: str = "") -> Iterator[tuple[str, object]]:
    for key, value in values.items():
        if isinstance(value, dict):
            yield from flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def test_example_config_lists_every_setting_with_its_default() -> None:
    text = EXAMPLE.read_text()
    assert documented_keys(text) == set(setting_names())
    defaults = dict(flatten(load_settings().model_dump()))
    from_file = dict(flatten(load_settings(EXAMPLE).model_dump()))
    for key, _ in flatten(tomllib.loads(text)):
        assert from_file[key] == defaults[key], key


def test_readme_config_reference_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name in setting_names():
        assert f"`{name}`" in readme, f"README does not document {name}"
        env = "PACSNODE_" + name.upper().replace(".", "__")
        assert f"`{env}`" in readme, f"README does not name {env}"
