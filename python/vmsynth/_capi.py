"""The C ABI of libvmsynth.so.0 (include/vmsynth/vmsynth.h) through ctypes.

Every function the package calls is declared here with its exact argtypes
and restype, so a wrong argument is a TypeError in Python rather than a
crash in C. ctypes.CDLL (not PyDLL) releases the GIL around every foreign
call, and a CFUNCTYPE callback takes the GIL when the library calls it from
one of its threads.

Which file is loaded, first match wins:
  1. $VMSYNTH_LIBRARY, a path (the tests point it at the build tree's library);
  2. the absolute path `cmake --install` recorded in _config.py;
  3. "libvmsynth.so.0" through the dynamic loader (ld.so.cache, LD_LIBRARY_PATH).
"""

import ctypes
import os

from . import _config

SONAME = "libvmsynth.so.0"


def _library_path():
    env = os.environ.get("VMSYNTH_LIBRARY")
    if env:
        return env
    if _config.LIBRARY_PATH and os.path.exists(_config.LIBRARY_PATH):
        return _config.LIBRARY_PATH
    return SONAME


def _load():
    path = _library_path()
    try:
        return ctypes.CDLL(path)
    except OSError as e:
        raise ImportError(
            f"vmsynth: cannot load the C library {path!r} ({e}); set VMSYNTH_LIBRARY to the path of "
            f"{SONAME}, or install vmsynth with `cmake --install`"
        ) from e


lib = _load()
library_path = lib._name

# Opaque handles are void*: c_void_p keeps them as plain integers (None for NULL).
_handle = ctypes.c_void_p
_str = ctypes.c_char_p  # in: bytes (os.fsencode / str.encode); out: bytes or None
_status = ctypes.c_int

PROGRESS_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_uint64, ctypes.c_uint64)
PHASE_PROGRESS_FN = ctypes.CFUNCTYPE(None, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_uint64, ctypes.c_uint64)


def _declare(name, restype, *argtypes):
    f = getattr(lib, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


version_number = _declare("vmsynth_version_number", ctypes.c_uint)
version_string = _declare("vmsynth_version_string", _str)
status_name = _declare("vmsynth_status_name", _str, ctypes.c_int)
free = _declare("vmsynth_free", None, ctypes.c_void_p)

cancel_new = _declare("vmsynth_cancel_new", _handle)
cancel_request = _declare("vmsynth_cancel_request", None, _handle)
cancel_requested = _declare("vmsynth_cancel_requested", ctypes.c_int, _handle)
cancel_free = _declare("vmsynth_cancel_free", None, _handle)

params_new = _declare("vmsynth_params_new", _handle)
params_set = _declare("vmsynth_params_set", _status, _handle, _str, _str)
params_error = _declare("vmsynth_params_error", _str, _handle)
params_set_progress = _declare("vmsynth_params_set_progress", _status, _handle, PROGRESS_FN, ctypes.c_void_p)
params_set_phase_progress = _declare(
    "vmsynth_params_set_phase_progress", _status, _handle, PHASE_PROGRESS_FN, ctypes.c_void_p
)
params_set_cancel = _declare("vmsynth_params_set_cancel", _status, _handle, _handle)
params_free = _declare("vmsynth_params_free", None, _handle)

synth_open = _declare("vmsynth_synth_open", _status, ctypes.POINTER(_handle), _str, _str, _handle)
synth_feed = _declare("vmsynth_synth_feed", _status, _handle, ctypes.c_void_p, ctypes.c_size_t)
synth_finish = _declare("vmsynth_synth_finish", _status, _handle)
synth_finish_from = _declare("vmsynth_synth_finish_from", _status, _handle, _str)
synth_cancel = _declare("vmsynth_synth_cancel", None, _handle)
synth_error = _declare("vmsynth_synth_error", _str, _handle)
# char** out-parameters are void** here: the string must reach vmsynth_free
# unchanged, and c_char_p would convert it to bytes and lose the pointer.
synth_stats_json = _declare("vmsynth_synth_stats_json", _status, _handle, ctypes.POINTER(ctypes.c_void_p))
synth_free = _declare("vmsynth_synth_free", None, _handle)

synthesize = _declare("vmsynth_synthesize", _status, _str, _str, _str, _handle, ctypes.POINTER(ctypes.c_void_p))
overlay_create = _declare(
    "vmsynth_overlay_create", _status, _str, _str, _str, _handle, ctypes.POINTER(ctypes.c_void_p)
)
overlay_info = _declare("vmsynth_overlay_info", _status, _str, _handle, ctypes.POINTER(ctypes.c_void_p))
base_id = _declare("vmsynth_base_id", _status, _str, _handle, ctypes.POINTER(ctypes.c_void_p))


def take_string(ptr):
    """Copies a library-owned char* returned through char** and frees it."""
    if not ptr.value:
        return None
    try:
        return ctypes.string_at(ptr.value).decode("utf-8", "replace")
    finally:
        free(ptr)
        ptr.value = None
