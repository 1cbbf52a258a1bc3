"""The one exception hierarchy of slimtune: every error a user can cause derives from it."""

from __future__ import annotations

from searchspace._secrets import mask_secrets

# The longest value, field name or rule a message shows whole; longer ones are cut (the start
# and the length), so that a 50 MB value in a config never becomes a 50 MB message.
MAX_SHOWN_CHARS = 200


def shorten(text: str, limit: int = MAX_SHOWN_CHARS) -> str:
    """``text`` whole when it is at most ``limit`` characters, else its start and its length."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text):,} characters in all)"


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
        where = self.source or ("command line" if self.field.startswith("--") else "config")
        if self.line is not None:
            where = f"{where}, line {self.line}"
        text = (
            f"{where}: field '{shorten(self.field)}' is invalid: {shorten(self.rule, 1000)}; "
            f"got {_shown(self.value)}. Fix: {self.fix}"
        )
        if self._more:
            text += f" ({self._more} more problem{'s' if self._more > 1 else ''} in this file.)"
        return mask_secrets(text)


def _shown(value: object) -> str:
    """``repr(value)``, cut when long: a long string shows its start and its length, a big
    container only its size."""
    if isinstance(value, str) and len(value) > MAX_SHOWN_CHARS:
        return f"{value[:MAX_SHOWN_CHARS]!r}... ({len(value):,} characters in all)"
    if isinstance(value, list | tuple | set | dict) and len(value) > 50:
        return f"a {type(value).__name__} of {len(value):,} items"
    return shorten(repr(value))
