"""User-facing errors, typed by what went wrong. Each message is one line meant for the user.

The errors carry no exit codes: a process edge (anechat.cli.main, the Core ML probe's child process) picks
README's code from the error's type with exit_code(), the one table of them."""


class AnechatError(Exception):
    """An error whose message is meant for the user, one line."""


class UsageError(AnechatError):
    """A bad flag, value, command or input: the user can fix it by asking differently."""


class ModelNotFound(AnechatError):
    """No model by that name or at that path."""


class ModelLoadError(AnechatError):
    """A model directory or one of its files is unusable (missing part, corrupt weights, bad program)."""


class WrongOutput(ModelLoadError):
    """A runtime runs the model but answers otherwise than the portable runtime of the same files (a device defect)."""


class ConversionError(AnechatError):
    """A checkpoint cannot be converted (unknown architecture, unsupported quant type, corrupt file)."""


class CannotListen(AnechatError):
    """`anechat serve` cannot listen where asked (port in use, no permission)."""


# README's exit codes; an error of a type not listed (or of a subclass of none) exits with EXIT_ERROR.
EXIT_ERROR = 1
EXIT_CODES: dict[type[AnechatError], int] = {UsageError: 2, ModelNotFound: 3, ModelLoadError: 4, CannotListen: 5}
EXIT_INTERRUPTED = 130


def exit_code(error: AnechatError | type[AnechatError]) -> int:
    """The exit code of an error (or error type): that of the most specific type listed in EXIT_CODES."""
    kind = error if isinstance(error, type) else type(error)
    return next((EXIT_CODES[t] for t in kind.__mro__ if t in EXIT_CODES), EXIT_ERROR)
