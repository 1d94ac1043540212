"""Which projects an arriving study joins: the ``access.projects`` rules."""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable
from functools import cached_property

from config.access import AccessSettings, ProjectRule


class ProjectRules:
    """Evaluates the rules for one arriving instance.

    Every matching rule adds its project. A study that no rule puts in a project and that
    the instance creates joins the projects the door names (an uploader's own, for STOW-RS)
    or else ``default_project``; an existing study never joins those (an uploader must not
    gain another project's study by sending an instance into it). Header values are read
    from the instance as received, before de-identification, and are never stored: only the
    project names are.
    """

    def __init__(self, settings: AccessSettings) -> None:
        self.rules = settings.projects
        self.default = settings.default_project

    @property
    def default_only(self) -> tuple[str, ...]:
        """The projects of a study that nothing else puts anywhere."""
        return (self.default,)

    @cached_property
    def _patterns(self) -> list[re.Pattern[str] | None]:
        return [
            None if rule.value is None else re.compile(fnmatch.translate(rule.value))
            for rule in self.rules
        ]

    def projects_for(
        self,
        *,
        door: str,
        calling_aet: str | None,
        called_aet: str | None,
        attribute: Callable[[str], str],
        owners: Iterable[str] = (),
    ) -> tuple[tuple[str, ...], tuple[str, ...]]:
        """``(projects, new_study_projects)`` of an instance that arrived through ``door``
        from ``calling_aet`` (calling ``called_aet``), as :class:`catalog.InstanceRecord`
        takes them; ``attribute(keyword)`` reads its header as received."""
        joined = {
            rule.project
            for rule, pattern in zip(self.rules, self._patterns, strict=True)
            if _matches(rule, pattern, door, calling_aet, called_aet, attribute)
        }
        if joined:
            return tuple(sorted(joined)), ()
        return (), tuple(sorted(set(owners))) or (self.default,)


def _matches(
    rule: ProjectRule,
    pattern: re.Pattern[str] | None,
    door: str,
    calling_aet: str | None,
    called_aet: str | None,
    attribute: Callable[[str], str],
) -> bool:
    if rule.door is not None and rule.door != door:
        return False
    if rule.calling_aet is not None and rule.calling_aet != (calling_aet or "").strip():
        return False
    if rule.called_aet is not None and rule.called_aet != (called_aet or "").strip():
        return False
    if rule.attribute is not None and pattern is not None:
        return pattern.match(attribute(rule.attribute)) is not None
    return True
