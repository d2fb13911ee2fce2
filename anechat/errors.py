"""User-facing errors, typed by what went wrong. Each message is one line meant for the user; the CLI
prints it as `anechat: <message>` and picks the exit code from the type (anechat.cli.EXIT_CODES)."""


class AnechatError(Exception):
    """An error whose message is meant for the user, one line."""


class UsageError(AnechatError):
    """A bad flag, value, command or input: the user can fix it by asking differently."""


class ModelNotFound(AnechatError):
    """No model by that name or at that path."""


class ModelLoadError(AnechatError):
    """A model directory or one of its files is unusable (missing part, corrupt weights, bad program)."""


class ConversionError(AnechatError):
    """A checkpoint cannot be converted (unknown architecture, unsupported quant type, corrupt file)."""
