"""vmsynth: dynamic VM synthesis for cloudlets, from Python.

A thin binding over the C ABI of libvmsynth.so.0 (include/vmsynth/vmsynth.h,
docs/api.md), through ctypes:

    synthesize(base, overlay, out, **params) -> dict    one call, overlay from a source
    Synthesizer(base, out, **params)                    push the overlay's bytes as they arrive:
        .feed(bytes)  .finish() -> dict  .finish_from(source) -> dict  .cancel()  .close()
        .stats;  a context manager (an exception inside aborts: nothing at out)
    create_overlay(base, launch, overlay, **params) -> dict
    overlay_info(overlay, **params) -> dict
    base_id(base, **params) -> dict
    CancelToken()                                       stops the operations given it (cancel=)
    Error (.code, .name, .message, .context) and one subclass per status: UsageError,
    CorruptOverlay, WrongBase, WrongKey, VmsynthIOError, Unsupported, Exists,
    Cancelled, InternalError
    version(), version_number(), __version__, status_name(code), library_path

Keyword parameters are vmsynth_params_set's names: engine, threads,
disk_format, clone, write_backend, queue_depth, memory_budget, overlay_size,
level, key_file, passphrase_file, cache_dir, base_id_cache, force. Values are
converted with str() (paths with os.fspath; True/False become "1"/"0"; None
leaves the default); the library rejects an unknown name or a bad value with
UsageError. Three more keywords are Python's:
    progress=callable(done, total)  bytes done out of total (0 = unknown), called
        from a library thread (never two calls at once). If it raises, the
        operation is cancelled (a Synthesizer alone; a one-call operation given
        cancel= through that token, which stops its other operations too) and
        the exception is raised by the call that was running, or by a
        Synthesizer's next feed or finish, chained to the library's Cancelled
        when that call saw it (the callback runs on the engine's thread, so a
        feed may return before the engine noticed).
    phase_progress=callable(phase, done, total)  the same with the phase named
        ("checking base", "applying", "syncing" ...); not with progress=.
    cancel=CancelToken              the operation stops when the token is requested.

Threading: the GIL is released while the library works (ctypes.CDLL drops it
around every foreign call), so other Python threads keep running during feed,
finish and the one-call operations. Distinct Synthesizers are independent;
one Synthesizer's calls must not overlap (a second concurrent call raises
UsageError), except cancel(), which any thread may call at any time.
"""

import contextlib
import ctypes
import json
import os
import threading
import weakref

from . import _capi
from ._errors import (Cancelled, CorruptOverlay, Error, Exists, InternalError, Unsupported, UsageError,
                      VmsynthIOError, WrongBase, WrongKey, error_for)

__all__ = [
    "synthesize", "Synthesizer", "create_overlay", "overlay_info", "base_id", "CancelToken", "version",
    "version_number", "status_name", "library_path", "Error", "UsageError", "CorruptOverlay", "WrongBase",
    "WrongKey", "VmsynthIOError", "Unsupported", "Exists", "Cancelled", "InternalError",
]

VMSYNTH_OK = 0
library_path = _capi.library_path  # the file the binding loaded


def version():
    """The library's version at run time, "MAJOR.MINOR.PATCH"."""
    return _capi.version_string().decode()


def version_number():
    """The library's version at run time as MAJOR*10000 + MINOR*100 + PATCH."""
    return _capi.version_number()


def status_name(code):
    """"ok", "usage", "corrupt", "wrong-base", ... for a status code, "unknown" for others."""
    return _capi.status_name(code).decode()


__version__ = version()


class CancelToken:
    """A vmsynth_cancel: pass it as cancel= to any number of operations; request() stops them all.

    Requests are sticky. request() may be called from any thread. The C token
    is freed when the last reference goes and no operation given it is still
    running (a Synthesizer counts until it is closed)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._users = 0  # operations that were given the token and have not ended
        self._orphaned = False
        self._ptr = _capi.cancel_new()
        if not self._ptr:
            raise MemoryError("vmsynth_cancel_new: out of memory")

    def request(self):
        _capi.cancel_request(self._ptr)

    @property
    def requested(self):
        return bool(_capi.cancel_requested(self._ptr))

    def _acquire(self):
        with self._lock:
            self._users += 1

    def _release(self):
        with self._lock:
            self._users -= 1
            last = self._orphaned and self._users == 0
        if last:
            self._free()

    def _free(self):
        ptr, self._ptr = self._ptr, None
        if ptr:
            _capi.cancel_free(ptr)

    def __del__(self):
        # Normally nothing refers to the token any more, so no operation uses it. But the
        # finalizers of cyclic garbage run in no set order (PEP 442): a Synthesizer given this
        # token may be finalized after it, and its close() still reaches the token through the
        # library. The last operation to end frees it then.
        if getattr(self, "_ptr", None) is None:
            return
        with self._lock:
            self._orphaned = True
            last = self._users == 0
        if last:
            self._free()


def _param_value(value):
    if isinstance(value, bool):
        return b"1" if value else b"0"
    if isinstance(value, (bytes, os.PathLike)):
        return os.fsencode(value)
    return os.fsencode(str(value))


class _Params:
    """A vmsynth_params built from keyword arguments, and the Python objects
    the library borrows from it: the progress callback and the cancel token.

    The C params are copied by the call that takes them (free_params() right
    after it); the callback and the token must live as long as the operation,
    so the operation keeps this object until it has returned (one-call) or
    been freed (Synthesizer)."""

    def __init__(self, params, progress=None, phase_progress=None, cancel=None, on_callback_error=None):
        self.callback = None
        self.token = None
        self.callback_error = None
        self._on_callback_error = on_callback_error
        self.ptr = _capi.params_new()
        if not self.ptr:
            raise MemoryError("vmsynth_params_new: out of memory")
        try:
            for name, value in params.items():
                if value is None:
                    continue
                rc = _capi.params_set(self.ptr, name.encode(), _param_value(value))
                if rc != VMSYNTH_OK:
                    why = _capi.params_error(self.ptr).decode("utf-8", "replace")
                    raise error_for(rc, why or f"parameter {name}={value!r}: unknown name or bad value",
                                    name=status_name(rc))
            if progress is not None and phase_progress is not None:
                raise UsageError("progress= and phase_progress= are exclusive: the library keeps one callback")
            if progress is not None:
                if not callable(progress):
                    raise TypeError("progress= takes a callable(done, total)")
                self.callback = _capi.PROGRESS_FN(self._trampoline(lambda _ctx, d, t: progress(d, t)))
                self._check(_capi.params_set_progress(self.ptr, self.callback, None), "progress")
            if phase_progress is not None:
                if not callable(phase_progress):
                    raise TypeError("phase_progress= takes a callable(phase, done, total)")
                self.callback = _capi.PHASE_PROGRESS_FN(self._trampoline(
                    lambda _ctx, phase, d, t: phase_progress(phase.decode("utf-8", "replace"), d, t)))
                self._check(_capi.params_set_phase_progress(self.ptr, self.callback, None), "phase_progress")
            if cancel is not None:
                if not isinstance(cancel, CancelToken):
                    raise TypeError(f"cancel= takes a vmsynth.CancelToken, not {type(cancel).__name__}")
                self._check(_capi.params_set_cancel(self.ptr, cancel._ptr), "cancel")
                cancel._acquire()  # the library borrows it until release_token()
                self.token = cancel
        except BaseException:
            self.free_params()
            raise

    def _check(self, rc, what):
        if rc != VMSYNTH_OK:
            raise error_for(rc, f"vmsynth_params_set_{what} failed ({status_name(rc)})")

    def _trampoline(self, progress):
        def call(*args):
            try:
                progress(*args)
            except BaseException as e:  # must not unwind into C; raised by the running call instead
                if self.callback_error is None:
                    self.callback_error = e
                    if self._on_callback_error is not None:
                        self._on_callback_error()
        return call

    def release_token(self):
        """The operation has ended (returned, or its handle was freed): the library is done with the token."""
        token, self.token = self.token, None
        if token is not None:
            token._release()

    def free_params(self):
        ptr, self.ptr = self.ptr, None
        if ptr:
            _capi.params_free(ptr)

    def raise_callback_error(self, library_error=None):
        """Raises the progress callback's exception, if it raised one."""
        e = self.callback_error
        if e is not None:
            self.callback_error = None
            raise e from library_error


def _path(p):
    return os.fsencode(p)


def _one_call(fn, args, params):
    """Runs a one-call operation: returns its result JSON as a dict, or raises its error."""
    cancel = params.pop("cancel", None)
    progress = params.pop("progress", None)
    phase_progress = params.pop("phase_progress", None)
    if cancel is None and (progress is not None or phase_progress is not None):
        cancel = CancelToken()  # so that a raising progress callback can stop the operation
    p = _Params(params, progress, phase_progress, cancel, on_callback_error=lambda: cancel.request())
    result = ctypes.c_void_p()
    try:
        rc = fn(*args, p.ptr, ctypes.byref(result))
    finally:
        p.free_params()
        p.release_token()
    text = _capi.take_string(result)
    doc = json.loads(text) if text else None
    if rc == VMSYNTH_OK:
        p.raise_callback_error()
        return doc
    err = (doc or {}).get("error") or {}
    e = error_for(rc, err.get("message") or status_name(rc), name=err.get("code") or status_name(rc),
                  context=err.get("context") or None)
    p.raise_callback_error(e)
    raise e


def synthesize(base, overlay, out, **params):
    """Synthesizes the launch VM at `out` from the base VM directory `base` and an overlay source:
    a file path, "-" (standard input), "tcp://HOST:PORT" or "tcp-listen://HOST:PORT".

    Returns the result document (`vmsynth synthesize --json`); nothing is left
    at `out` on failure."""
    return _one_call(_capi.synthesize, (_path(base), _path(overlay), _path(out)), params)


def create_overlay(base, launch, overlay, **params):
    """Writes the overlay from base VM directory `base` to launch VM directory `launch` at path
    `overlay` (encrypted when key_file or passphrase_file is given).

    Returns the result document (`vmsynth overlay create --json`)."""
    return _one_call(_capi.overlay_create, (_path(base), _path(launch), _path(overlay)), params)


def overlay_info(overlay, **params):
    """The overlay's headers and op tables as a dict (`vmsynth overlay info --json`); payloads are
    not checked. `overlay` is a path or "-"; key_file/passphrase_file authenticate an encrypted one."""
    return _one_call(_capi.overlay_info, (_path(overlay),), params)


def base_id(base, **params):
    """{"ok": True, "base_dir": ..., "base_id": "<32 hex digits>"} for a VM directory, as overlays
    name it; uses and fills the base-id cache unless base_id_cache=False."""
    return _one_call(_capi.base_id, (_path(base),), params)


def _feed_buffer(data):
    """(pointer argument, length) for feed, without copying where ctypes allows:
    bytes are passed as they are, writable buffers through a c_char array over their memory;
    only a read-only buffer that is not bytes (a memoryview of bytes, say) is copied."""
    if isinstance(data, bytes):
        return data, len(data)
    view = memoryview(data)
    if not view.c_contiguous:
        return view.tobytes(), view.nbytes
    if view.format != "B" or view.ndim != 1:
        view = view.cast("B")
    if view.readonly:
        return bytes(view), view.nbytes
    return (ctypes.c_char * view.nbytes).from_buffer(view), view.nbytes


class Synthesizer:
    """One synthesis fed piece by piece: Synthesizer(base, out, **params), then feed(bytes) for the
    overlay's bytes in order, in chunks of any size, then finish().

    The output is built in a staging directory beside `out` and appears at
    `out` only when finish() succeeds; on a failure, cancel(), or close()
    before finish, nothing is left at `out`. As a context manager, leaving
    the block normally finishes (if finish() was not called), leaving it by
    an exception aborts (nothing at `out`); the handle is freed either way.

    feed and finish block while the library works, with the GIL released.
    cancel() may be called from any thread at any time, also while another
    thread is blocked in feed: the running and every later feed or finish
    raise Cancelled."""

    def __init__(self, base, out, *, progress=None, phase_progress=None, cancel=None, **params):
        self._handle = None
        self._stats = None
        self._handle_lock = threading.Lock()  # cancel() on other threads against close()
        self._call_lock = threading.Lock()    # vmsynth.h: one handle's calls must not run concurrently
        base, out = _path(base), _path(out)
        # A weak reference: the callback must not keep the Synthesizer alive (its __del__ aborts).
        this = weakref.ref(self)
        self._params = _Params(params, progress, phase_progress, cancel,
                               on_callback_error=lambda: this() is not None and this().cancel())
        h = ctypes.c_void_p()
        try:
            rc = _capi.synth_open(ctypes.byref(h), base, out, self._params.ptr)
        finally:
            self._params.free_params()
        if rc != VMSYNTH_OK:
            message = _capi.synth_error(h).decode("utf-8", "replace") if h.value else ""
            _capi.synth_free(h)
            self._params.release_token()
            raise error_for(rc, message or status_name(rc), name=status_name(rc))
        self._handle = h.value

    @contextlib.contextmanager
    def _call(self, what):
        if not self._call_lock.acquire(blocking=False):
            raise UsageError(f"Synthesizer.{what}: another call on this Synthesizer is running "
                             "(one handle's calls must not overlap; only cancel() may)")
        try:
            if self._handle is None:
                raise UsageError(f"Synthesizer.{what}: the Synthesizer is closed")
            yield self._handle
        finally:
            self._call_lock.release()

    def _check(self, h, rc):
        e = None
        if rc != VMSYNTH_OK:
            message = _capi.synth_error(h).decode("utf-8", "replace")
            e = error_for(rc, message or status_name(rc), name=status_name(rc))
        self._params.raise_callback_error(e)
        if e is not None:
            raise e

    def feed(self, data):
        """Pushes the overlay's next bytes (bytes, bytearray, memoryview or any buffer); blocks while
        the engine is behind. Raises the engine's failure as soon as it is known, which may be some
        bytes after the bad ones."""
        with self._call("feed") as h:
            ptr, n = _feed_buffer(data)
            rc = _capi.synth_feed(h, ptr, n)
            del ptr  # releases the export of a bytearray or memoryview at once
            self._check(h, rc)

    def finish(self):
        """Ends the overlay: waits for the engine to verify every block, sync and rename the output
        into place. Returns the result dict (`vmsynth synthesize --json`)."""
        with self._call("finish") as h:
            self._check(h, _capi.synth_finish(h))
            return self._take_stats(h)

    def finish_from(self, source):
        """Reads the whole overlay from `source` (a path, "-", "tcp://HOST:PORT", "tcp-listen://HOST:PORT")
        and finishes, in place of feed and finish; nothing may have been fed. Returns the result dict."""
        with self._call("finish_from") as h:
            self._check(h, _capi.synth_finish_from(h, _path(source)))
            return self._take_stats(h)

    def _take_stats(self, h):
        result = ctypes.c_void_p()
        self._check(h, _capi.synth_stats_json(h, ctypes.byref(result)))
        self._stats = json.loads(_capi.take_string(result))
        return self._stats

    @property
    def stats(self):
        """finish()'s result dict, None before a successful finish."""
        return self._stats

    def cancel(self):
        """Stops the synthesis: feed and finish raise Cancelled, the staged output is removed.
        Any thread, any time; idempotent; a no-op once closed."""
        with self._handle_lock:
            if self._handle is not None:
                _capi.synth_cancel(self._handle)

    def close(self):
        """Frees the handle. Unfinished, this aborts: the synthesis is cancelled, a feed running on
        another thread returns, everything staged is removed and nothing is at `out`."""
        if getattr(self, "_handle", None) is None:
            return
        if self._stats is None:
            self.cancel()  # so that a call blocked on another thread returns before the free
        with self._call_lock:
            with self._handle_lock:
                h, self._handle = self._handle, None
            if h is not None:
                _capi.synth_free(h)  # waits for the engine, whose progress callback may still run
                self._params.release_token()
        self._params = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None and self._stats is None and self._handle is not None:
                self.finish()
        finally:
            self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:  # at interpreter exit the modules may already be gone
            pass
