"""vmsynth.Error and one subclass per status code of vmsynth.h.

The codes are the vmsynth command's exit statuses; an Error's message is the
library's (vmsynth_synth_error for a handle, the "error" object of a one-call
operation's result JSON), which names what is wrong and where.
"""


class Error(Exception):
    """A vmsynth operation failed.

    code:    the status (VMSYNTH_E_*), equal to the vmsynth command's exit status
    name:    the status's name ("corrupt", "wrong-base", ...; vmsynth_status_name)
    message: the library's words for the failure
    context: what the one-call operations report beside the message (file,
             offset, frame ...), else None
    """

    code = None  # set on every subclass; an instance of Error itself carries its own

    def __init__(self, message, code=None, name=None, context=None):
        super().__init__(message)
        if code is not None:
            self.code = code
        self.name = name
        self.message = message
        self.context = context


class UsageError(Error):
    """Bad argument, parameter or call order (VMSYNTH_E_USAGE)."""

    code = 2


class CorruptOverlay(Error):
    """The overlay is damaged, truncated or inconsistent (VMSYNTH_E_CORRUPT)."""

    code = 3


class WrongBase(Error):
    """The overlay was made for another base VM (VMSYNTH_E_WRONG_BASE)."""

    code = 4


class WrongKey(Error):
    """Wrong, missing or unexpected decryption key (VMSYNTH_E_WRONG_KEY)."""

    code = 5


class VmsynthIOError(Error):
    """The operating system refused a read, write, open ... (VMSYNTH_E_IO).

    Not named IOError, which is the builtin OSError."""

    code = 6


class Unsupported(Error):
    """Valid, but not supported here: version, feature, kernel (VMSYNTH_E_UNSUPPORTED)."""

    code = 7


class Exists(Error):
    """The output exists and force was not set (VMSYNTH_E_EXISTS)."""

    code = 8


class Cancelled(Error):
    """Cancelled by Synthesizer.cancel() or a CancelToken (VMSYNTH_E_CANCELLED)."""

    code = 9


class InternalError(Error):
    """A bug in vmsynth, or memory exhausted (VMSYNTH_E_INTERNAL)."""

    code = 70


_BY_CODE = {c.code: c for c in (UsageError, CorruptOverlay, WrongBase, WrongKey, VmsynthIOError, Unsupported,
                                Exists, Cancelled, InternalError)}


def error_for(code, message, name=None, context=None):
    """The exception for a status: its subclass, or Error for a code this version does not know."""
    cls = _BY_CODE.get(code)
    if cls is None:
        return Error(message, code=code, name=name, context=context)
    return cls(message, name=name, context=context)
