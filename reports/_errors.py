"""Errors of the reports package; all derive from :class:`searchspace.SlimtuneError`."""

from __future__ import annotations

from searchspace import SlimtuneError


class ReportError(SlimtuneError):
    """Results cannot be read or summarised as asked. The message says the rule, value and fix."""


class SearchNotFound(ReportError):
    """The experiment, or a search (parent) run in it, does not exist in the tracking store."""
