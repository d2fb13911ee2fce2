"""User-facing errors of the session store (one line each; the CLI prints them as `anechat: ...`)."""

from anechat.errors import AnechatError, UsageError


class StoreUnavailable(AnechatError):
    """The database cannot be opened or written (read-only dir, locked for too long, I/O error)."""


class NewerSchemaError(StoreUnavailable):
    """The file was written by a newer anechat; it is refused and left untouched."""


class SessionNotFound(AnechatError):
    pass


class BadSearchQuery(UsageError):
    pass


class BadSessionId(SessionNotFound, UsageError):
    """Not a session number at all (text, or too large for any session): a usage error."""
