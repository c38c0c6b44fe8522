"""The photo index's own faults: the file on disk is at fault, not the request or the user's input
(a UserError all the same, so the CLI says it in one line; the server answers 5xx or 409)."""

from __future__ import annotations

from ..errors import UserError


class IndexFault(UserError):
    """The photo index on disk is at fault (damaged, or of another format): one line to the CLI, a
    5xx from the server, since a request did nothing wrong."""


class ModelChanged(IndexFault):
    """The index's model is not the one it was built with: its vectors no longer compare (409)."""
