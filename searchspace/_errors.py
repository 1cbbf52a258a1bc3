"""The one exception hierarchy of slimtune: every error a user can cause derives from it."""

from __future__ import annotations


class SlimtuneError(Exception):
    """Base class of all errors slimtune raises on purpose."""


class ConfigError(SlimtuneError):
    """A config file breaks a rule. The message names where, the value, the rule and the fix."""

    def __init__(
        self,
        *,
        field: str,
        value: object,
        rule: str,
        fix: str,
        source: str | None = None,
        line: int | None = None,
    ) -> None:
        self.field = field
        self.value = value
        self.rule = rule
        self.fix = fix
        self.source = source
        self.line = line
        self._more = 0
        super().__init__(self._format())

    @property
    def more(self) -> int:
        """How many further problems the same file has (fix this one first)."""
        return self._more

    @more.setter
    def more(self, n: int) -> None:
        self._more = n
        self.args = (self._format(),)

    def __str__(self) -> str:
        return self._format()

    def _format(self) -> str:
        where = self.source or "config"
        if self.line is not None:
            where = f"{where}, line {self.line}"
        text = (
            f"{where}: field '{self.field}' is invalid: {self.rule}; got {self.value!r}. "
            f"Fix: {self.fix}"
        )
        if self._more:
            text += f" ({self._more} more problem{'s' if self._more > 1 else ''} in this file.)"
        return text
