"""The one family of user errors: a mistake the user can fix, printed by `cli.main` as one line, exit 2.

Every module's own error (ConfigError, ModelLoadError, AdapterError, ReportError, TrackerError,
FastGenError) derives from `UserError`, so the CLI catches them all in one place and a new module only
needs `class MyError(UserError)`. Imports nothing of the package (every module may import it).

Owns the UserError family; must never import torch or another module of the package (every layer imports it).
"""

from __future__ import annotations


class UserError(Exception):
    """A mistake in the user's input or environment; the message says what is wrong and how to fix it."""

    def one_line(self) -> str:
        """The message on one line (a multi-line cause is joined; the CLI prints only this)."""
        return " ".join(str(self).split()) or type(self).__name__
