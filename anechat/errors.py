"""User-facing errors. The CLI prints `anechat: <message>` and exits with `exit_code`; no traceback."""

EXIT_OK = 0
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_MODEL_NOT_FOUND = 3
EXIT_MODEL_LOAD = 4
EXIT_INTERRUPTED = 130


class AnechatError(Exception):
    """An error whose message is meant for the user, one line."""

    exit_code = EXIT_ERROR


class UsageError(AnechatError):
    exit_code = EXIT_USAGE


class ModelNotFound(AnechatError):
    exit_code = EXIT_MODEL_NOT_FOUND


class ModelLoadError(AnechatError):
    """A model directory or one of its files is unusable (missing part, corrupt weights, bad program)."""

    exit_code = EXIT_MODEL_LOAD


class ConversionError(AnechatError):
    """A checkpoint cannot be converted (unknown architecture, unsupported quant type, corrupt file)."""
