"""The vmsynth Python module (python/vmsynth) against the built libvmsynth.so.0.

Outcomes are checked on the files: a synthesized launch VM must be
byte-identical to the one the overlay was made from, a failed or aborted
synthesis must leave nothing at the output and no staging directory beside it.
"""

import filecmp
import gc
import os
import re
import threading
import time

import pytest

import vmsynth

IMAGES = ("memory.img", "disk.img")


def assert_same_vm(out, launch):
    for name in IMAGES:
        assert filecmp.cmp(out / name, launch / name, shallow=False), f"{name} differs from the launch VM's"


def assert_nothing_at(out):
    """Nothing at out, and no staging directory (.<name>.partial-...) left beside it."""
    assert not os.path.lexists(out), f"{out} exists"
    left = [n for n in os.listdir(out.parent) if n.startswith(f".{out.name}.")]
    assert left == [], f"staging left beside {out}: {left}"


def uneven_chunks(blob):
    """The overlay cut at uneven places: 1 byte, a few bytes, not a multiple of 4 KiB, large."""
    sizes = [1, 2, 7, 4093, 1, 65537, 13, 300001, 4096, 1 << 20]
    i = k = 0
    while i < len(blob):
        n = sizes[k % len(sizes)]
        yield blob[i:i + n]
        i += n
        k += 1


# ---- version ---------------------------------------------------------------

def test_version_is_the_librarys():
    assert re.fullmatch(r"\d+\.\d+\.\d+", vmsynth.__version__)
    assert vmsynth.version() == vmsynth.__version__
    major, minor, patch = map(int, vmsynth.__version__.split("."))
    assert vmsynth.version_number() == major * 10000 + minor * 100 + patch
    assert vmsynth.library_path == os.environ["VMSYNTH_LIBRARY"]


def test_status_names():
    assert [vmsynth.status_name(c) for c in (0, 2, 3, 4, 5, 6, 7, 8, 9, 70)] == [
        "ok", "usage", "corrupt", "wrong-base", "wrong-key", "io", "unsupported", "exists", "interrupted",
        "internal"]
    assert vmsynth.status_name(1234) == "unknown"


# ---- synthesis: one call and streaming --------------------------------------

def test_synthesize_one_call_rebuilds_the_launch_vm(data, tmp_path):
    out = tmp_path / "out"
    result = vmsynth.synthesize(data.base, data.overlay, out)
    assert result["ok"] is True
    assert result["overlay_bytes"] == data.overlay.stat().st_size
    assert_same_vm(out, data.launch)


def test_streaming_feed_in_uneven_chunks_rebuilds_the_launch_vm(data, tmp_path):
    blob = data.overlay_bytes()
    out = tmp_path / "out"
    s = vmsynth.Synthesizer(data.base, out, engine="parallel", threads=2)
    kinds = (bytes, bytearray, memoryview, lambda c: memoryview(bytearray(c)))
    for k, chunk in enumerate(uneven_chunks(blob)):
        s.feed(kinds[k % len(kinds)](chunk))
        assert not os.path.lexists(out)  # nothing appears before finish
    s.feed(b"")  # len 0 is a no-op
    stats = s.finish()
    s.close()
    assert stats["ok"] is True
    assert stats["overlay_bytes"] == len(blob)
    assert stats == s.stats
    assert_same_vm(out, data.launch)


def test_serial_engine_one_byte_at_a_time_at_the_start(data, tmp_path):
    blob = data.overlay_bytes()
    out = tmp_path / "out"
    with vmsynth.Synthesizer(data.base, out, engine="serial", threads=1) as s:
        for i in range(4096):  # the header and the first op tables, byte by byte
            s.feed(blob[i:i + 1])
        s.feed(memoryview(blob)[4096:])  # a read-only view that is not bytes
    assert s.stats["engine"] == "serial"
    assert_same_vm(out, data.launch)


def test_progress_reports_overlay_bytes(data, tmp_path):
    calls = []
    size = data.overlay.stat().st_size
    vmsynth.synthesize(data.base, data.overlay, tmp_path / "out", progress=lambda d, t: calls.append((d, t)))
    # done counts the overlay's bytes out of its size, never going back, and the last call has
    # every byte; the phases that count nothing (checking the base, syncing) make no calls.
    assert calls, "progress was never reported"
    assert all(t == size for _, t in calls), calls
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert calls[-1] == (size, size)


def test_phase_progress_names_the_phases(data, tmp_path):
    calls = []
    size = data.overlay.stat().st_size
    vmsynth.synthesize(data.base, data.overlay, tmp_path / "out",
                       phase_progress=lambda p, d, t: calls.append((p, d, t)))
    phases = [p for p, _, _ in calls]
    assert "applying" in phases and phases[-2:] == ["syncing", "finished"], phases
    assert calls[-1] == ("finished", size, size)
    assert all(isinstance(p, str) and p == p.lower() for p in phases)
    assert max(d for p, d, t in calls if p == "applying") <= size
    with pytest.raises(vmsynth.UsageError):
        vmsynth.synthesize(data.base, data.overlay, tmp_path / "out2", progress=print, phase_progress=print)


def test_progress_callback_exception_cancels_and_is_raised(data, tmp_path):
    out = tmp_path / "out"

    class Stop(Exception):
        pass

    def progress(done, total):
        raise Stop("from the callback")

    with pytest.raises(Stop) as e:
        with vmsynth.Synthesizer(data.base, out, progress=progress) as s:
            for chunk in uneven_chunks(data.overlay_bytes()):
                s.feed(chunk)
    # The callback runs on the engine's thread: the feed that raises it may come before the engine
    # has seen the cancel (no cause) or after (caused by Cancelled).
    assert e.value.__cause__ is None or isinstance(e.value.__cause__, vmsynth.Cancelled)
    assert_nothing_at(out)


def test_one_call_progress_exception_is_raised_caused_by_cancelled(data, tmp_path):
    out = tmp_path / "out"

    def progress(done, total):
        if done > 0:
            raise KeyError("from the callback")

    with pytest.raises(KeyError) as e:
        vmsynth.synthesize(data.base, data.overlay, out, progress=progress)
    assert isinstance(e.value.__cause__, vmsynth.Cancelled)  # the call returns only after the engine stopped
    assert_nothing_at(out)


def test_finish_from_a_file(data, tmp_path):
    out = tmp_path / "out"
    with vmsynth.Synthesizer(data.base, out) as s:
        stats = s.finish_from(data.overlay)
    assert stats["ok"] is True
    assert_same_vm(out, data.launch)


# ---- errors: one subclass per status, .code equal to it ---------------------

def expect(exc_type, code, call):
    with pytest.raises(exc_type) as e:
        call()
    assert isinstance(e.value, vmsynth.Error)
    assert e.value.code == code == exc_type.code
    assert str(e.value), "the library's message is empty"
    return e.value


def feed_all(base, out, blob, **params):
    with vmsynth.Synthesizer(base, out, **params) as s:
        for chunk in uneven_chunks(blob):
            s.feed(chunk)
        return s.finish()


def test_corrupt_bytes_raise_corrupt_overlay(data, tmp_path):
    blob = bytearray(data.overlay_bytes())
    for i in range(len(blob) // 2, len(blob) // 2 + 64):
        blob[i] ^= 0x5A
    out = tmp_path / "out"
    expect(vmsynth.CorruptOverlay, 3, lambda: feed_all(data.base, out, bytes(blob)))
    assert_nothing_at(out)


def test_truncated_overlay_raises_corrupt_overlay_at_finish(data, tmp_path):
    out = tmp_path / "out"
    blob = data.overlay_bytes()
    s = vmsynth.Synthesizer(data.base, out)
    s.feed(blob[:len(blob) - 100])
    e = expect(vmsynth.CorruptOverlay, 3, s.finish)
    # Once failed, every later call raises the same status and message.
    e2 = expect(vmsynth.CorruptOverlay, 3, lambda: s.feed(b"x"))
    assert str(e2) == str(e)
    s.close()
    assert_nothing_at(out)


def test_corrupt_overlay_one_call_has_the_json_error(data, tmp_path):
    bad = tmp_path / "bad.vmo"
    bad.write_bytes(b"this is not an overlay" * 100)
    out = tmp_path / "out"
    e = expect(vmsynth.CorruptOverlay, 3, lambda: vmsynth.synthesize(data.base, bad, out))
    assert e.name == "corrupt"
    assert_nothing_at(out)


def test_another_base_raises_wrong_base(data, tmp_path):
    out = tmp_path / "out"
    expect(vmsynth.WrongBase, 4, lambda: feed_all(data.other_base, out, data.overlay_bytes()))
    assert_nothing_at(out)
    e = expect(vmsynth.WrongBase, 4, lambda: vmsynth.synthesize(data.other_base, data.overlay, out))
    assert e.name == "wrong-base"
    assert_nothing_at(out)


def test_encrypted_overlay_with_its_key_synthesizes(data, tmp_path):
    out = tmp_path / "out"
    feed_all(data.base, out, data.encrypted.read_bytes(), key_file=data.key)
    assert_same_vm(out, data.launch)


def test_missing_or_wrong_key_raises_wrong_key(data, tmp_path):
    out = tmp_path / "out"
    blob = data.encrypted.read_bytes()
    expect(vmsynth.WrongKey, 5, lambda: feed_all(data.base, out, blob))
    assert_nothing_at(out)
    expect(vmsynth.WrongKey, 5, lambda: feed_all(data.base, out, blob, key_file=data.wrong_key))
    assert_nothing_at(out)
    e = expect(vmsynth.WrongKey, 5, lambda: vmsynth.synthesize(data.base, data.encrypted, out,
                                                               key_file=data.wrong_key))
    assert e.name == "wrong-key"
    # A key for a clear overlay is "unexpected": also wrong-key.
    expect(vmsynth.WrongKey, 5, lambda: feed_all(data.base, out, data.overlay_bytes(), key_file=data.key))
    assert_nothing_at(out)


def test_existing_output_raises_exists_unless_force(data, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("mine")
    expect(vmsynth.Exists, 8, lambda: vmsynth.Synthesizer(data.base, out))
    e = expect(vmsynth.Exists, 8, lambda: vmsynth.synthesize(data.base, data.overlay, out))
    assert e.name == "exists"
    assert (out / "keep").read_text() == "mine"
    feed_all(data.base, out, data.overlay_bytes(), force=True)
    assert_same_vm(out, data.launch)
    assert not (out / "keep").exists()


@pytest.mark.parametrize("params", [
    {"threads": 257},
    {"engine": "quantum"},
    {"engine": "serial", "threads": 2},
    {"queue_depth": 0},
    {"memory_budget": "1K"},
    {"no_such_parameter": 1},
])
def test_bad_parameter_raises_usage_error(data, tmp_path, params):
    out = tmp_path / "out"
    e = expect(vmsynth.UsageError, 2, lambda: vmsynth.Synthesizer(data.base, out, **params))
    assert any(name in str(e) for name in params), f"the message does not name the parameter: {e}"
    expect(vmsynth.UsageError, 2, lambda: vmsynth.synthesize(data.base, data.overlay, out, **params))
    assert_nothing_at(out)


def test_missing_overlay_file_raises_io_error(data, tmp_path):
    expect(vmsynth.VmsynthIOError, 6, lambda: vmsynth.overlay_info(tmp_path / "absent.vmo"))
    assert vmsynth.VmsynthIOError is not IOError


def test_every_status_has_its_subclass():
    expected = {2: vmsynth.UsageError, 3: vmsynth.CorruptOverlay, 4: vmsynth.WrongBase, 5: vmsynth.WrongKey,
                6: vmsynth.VmsynthIOError, 7: vmsynth.Unsupported, 8: vmsynth.Exists, 9: vmsynth.Cancelled,
                70: vmsynth.InternalError}
    for code, cls in expected.items():
        assert issubclass(cls, vmsynth.Error) and cls.code == code
        e = vmsynth._errors.error_for(code, "m")
        assert type(e) is cls and e.code == code and str(e) == "m"
    e = vmsynth._errors.error_for(99, "future")
    assert type(e) is vmsynth.Error and e.code == 99


def test_closed_synthesizer_raises_usage_error(data, tmp_path):
    out = tmp_path / "out"
    s = vmsynth.Synthesizer(data.base, out)
    s.feed(data.overlay_bytes()[:1000])
    s.close()
    assert_nothing_at(out)
    expect(vmsynth.UsageError, 2, lambda: s.feed(b"x"))
    expect(vmsynth.UsageError, 2, s.finish)
    s.cancel()  # a no-op once closed
    s.close()   # idempotent


# ---- cancel -----------------------------------------------------------------

def test_cancel_from_another_thread_while_a_feeder_is_blocked(data, tmp_path):
    """The engine is held inside its first progress callback, so it consumes nothing more; the
    feeder thread fills the in-flight budget and blocks in feed; cancel() from the main thread must
    make that feed raise Cancelled, and nothing may be left at out."""
    out = tmp_path / "out"
    # The overlay, then far more than the in-flight budget (16 MiB): the engine, held, never reads
    # that far, so the feeder must block in feed.
    blob = data.overlay_bytes() + bytes(64 << 20)
    engine_held = threading.Event()
    release = threading.Event()
    fed = [0]
    raised = []

    def progress(done, total):
        engine_held.set()
        release.wait(60)

    s = vmsynth.Synthesizer(data.base, out, memory_budget="16M", progress=progress)

    def feeder():
        try:
            for chunk in uneven_chunks(blob):
                s.feed(chunk)
                fed[0] += len(chunk)
            s.finish()
        except BaseException as e:
            raised.append(e)

    t = threading.Thread(target=feeder)
    t.start()
    assert engine_held.wait(60), "the engine never reported progress"
    # Cancel once the feeder has stopped advancing: blocked in feed (the engine consumes nothing).
    last, still = -1, 0
    while still < 5 and t.is_alive():
        time.sleep(0.05)
        still = still + 1 if fed[0] == last else 0
        last = fed[0]
    s.cancel()
    release.set()
    t.join(60)
    assert not t.is_alive(), "feed did not return after cancel"
    assert len(raised) == 1 and isinstance(raised[0], vmsynth.Cancelled), raised
    assert raised[0].code == 9
    assert fed[0] < len(blob), "the feeder was never blocked: everything was fed before the cancel"
    expect(vmsynth.Cancelled, 9, s.finish)  # sticky
    s.close()
    assert_nothing_at(out)


def test_cancel_from_another_thread_while_finish_waits(data, tmp_path):
    out = tmp_path / "out"
    engine_held = threading.Event()
    release = threading.Event()

    def progress(done, total):
        if done > 0 and not engine_held.is_set():  # the engine is applying: hold it there
            engine_held.set()
            release.wait(60)

    s = vmsynth.Synthesizer(data.base, out, progress=progress)
    s.feed(data.overlay_bytes())
    outcome = []

    def finisher():
        try:
            outcome.append(s.finish())
        except BaseException as e:
            outcome.append(e)

    t = threading.Thread(target=finisher)
    t.start()
    assert engine_held.wait(60), "the engine never reported progress"
    s.cancel()
    release.set()
    t.join(60)
    assert not t.is_alive()
    assert len(outcome) == 1 and isinstance(outcome[0], vmsynth.Cancelled), outcome
    s.close()
    assert_nothing_at(out)


def test_a_token_finalized_before_its_synthesizer_stays_until_the_synthesizer_is_closed(data, tmp_path):
    # Cyclic garbage is finalized in no set order (PEP 442): the token's __del__ may run while a
    # Synthesizer given it still has a handle, whose close() reaches the token in the library.
    token = vmsynth.CancelToken()
    s = vmsynth.Synthesizer(data.base, tmp_path / "out", cancel=token)
    s.feed(data.overlay_bytes()[:1000])
    token.__del__()  # as the garbage collector may, first
    assert token._ptr is not None, "freed while a Synthesizer still uses it"
    s.close()  # cancels through the token: must not touch freed memory
    assert token._ptr is None
    assert_nothing_at(tmp_path / "out")
    # Abandoned in a reference cycle, collected together.
    cycle = [vmsynth.CancelToken()]
    cycle.append(vmsynth.Synthesizer(data.base, tmp_path / "out2", cancel=cycle[0]))
    cycle[1].feed(data.overlay_bytes())
    cycle.append(cycle)
    del cycle
    gc.collect()
    assert_nothing_at(tmp_path / "out2")


def test_cancel_token_stops_a_one_call_synthesis(data, tmp_path):
    token = vmsynth.CancelToken()
    assert not token.requested
    token.request()
    assert token.requested
    out = tmp_path / "out"
    e = expect(vmsynth.Cancelled, 9, lambda: vmsynth.synthesize(data.base, data.overlay, out, cancel=token))
    assert e.name == "interrupted"
    assert_nothing_at(out)


def test_cancel_token_stops_a_synthesizer(data, tmp_path):
    token = vmsynth.CancelToken()
    out = tmp_path / "out"
    s = vmsynth.Synthesizer(data.base, out, cancel=token)
    s.feed(data.overlay_bytes()[:5000])
    token.request()
    with pytest.raises(vmsynth.Cancelled):
        s.feed(data.overlay_bytes()[5000:])
        s.finish()
    s.close()
    assert_nothing_at(out)


def test_cancelling_one_handle_leaves_others_on_the_same_token(data, tmp_path):
    # vmsynth.h: a token given through the params stops every operation given it; a handle "still
    # has its own", which vmsynth_synth_cancel requests ("Stops the synthesis").
    token = vmsynth.CancelToken()
    blob = data.overlay_bytes()
    a = vmsynth.Synthesizer(data.base, tmp_path / "a", cancel=token)
    b = vmsynth.Synthesizer(data.base, tmp_path / "b", cancel=token)
    a.feed(blob[:1000])
    b.feed(blob[:1000])
    try:
        a.cancel()
        b.feed(blob[1000:])
        assert b.finish()["ok"] is True
    finally:
        a.close()
        b.close()
    assert not token.requested
    assert_nothing_at(tmp_path / "a")
    assert_same_vm(tmp_path / "b", data.launch)


def test_requesting_a_shared_token_stops_every_synthesizer_given_it(data, tmp_path):
    token = vmsynth.CancelToken()
    blob = data.overlay_bytes()
    handles = [vmsynth.Synthesizer(data.base, tmp_path / name, cancel=token) for name in ("a", "b")]
    for s in handles:
        s.feed(blob[:1000])
    token.request()
    for s in handles:
        with pytest.raises(vmsynth.Cancelled):
            s.feed(blob[1000:])
            s.finish()
        s.close()
    assert_nothing_at(tmp_path / "a")
    assert_nothing_at(tmp_path / "b")


# ---- the context manager ----------------------------------------------------

def test_context_manager_aborts_on_an_exception(data, tmp_path):
    out = tmp_path / "out"
    blob = data.overlay_bytes()
    with pytest.raises(KeyError):
        with vmsynth.Synthesizer(data.base, out) as s:
            s.feed(blob)  # all of it: finish would succeed
            raise KeyError("the application failed")
    assert_nothing_at(out)
    expect(vmsynth.UsageError, 2, s.finish)  # freed


def test_context_manager_finishes_on_a_normal_exit(data, tmp_path):
    out = tmp_path / "out"
    with vmsynth.Synthesizer(data.base, out) as s:
        s.feed(data.overlay_bytes())
    assert s.stats["ok"] is True
    assert_same_vm(out, data.launch)


def test_context_manager_raises_a_failed_finish(data, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(vmsynth.CorruptOverlay):
        with vmsynth.Synthesizer(data.base, out) as s:
            s.feed(data.overlay_bytes()[:-1])
    assert_nothing_at(out)


def test_dropping_an_unfinished_synthesizer_leaves_nothing(data, tmp_path):
    out = tmp_path / "out"
    s = vmsynth.Synthesizer(data.base, out)
    s.feed(data.overlay_bytes())
    del s  # __del__ frees without finishing
    assert_nothing_at(out)


# ---- the GIL ----------------------------------------------------------------

def test_gil_is_released_while_the_library_works(data, tmp_path):
    """While one thread is inside feed/finish (held there by the progress callback), a pure Python
    thread keeps counting. With the GIL held across the foreign call neither the callback nor the
    counter could run."""
    out = tmp_path / "out"
    count = [0]
    stop = threading.Event()
    inside = threading.Event()
    release = threading.Event()
    returned = threading.Event()
    errors = []

    def counter():
        while not stop.is_set():
            count[0] += 1

    def progress(done, total):
        if not inside.is_set():
            inside.set()
            release.wait(60)

    def worker():
        try:
            with vmsynth.Synthesizer(data.base, out, progress=progress) as s:
                s.feed(data.overlay_bytes())  # the worker is in feed or finish from here on
                s.finish()
        except BaseException as e:
            errors.append(e)
        returned.set()

    c = threading.Thread(target=counter)
    w = threading.Thread(target=worker)
    c.start()
    w.start()
    try:
        assert inside.wait(60), "the library never called progress"
        first = count[0]
        while count[0] < first + 100000 and not returned.is_set():
            pass  # this thread runs Python too, while the worker is in the library
        assert not returned.is_set(), "feed/finish returned while the callback was held"
        assert count[0] >= first + 100000
    finally:
        release.set()
        w.join(60)
        stop.set()
        c.join(60)
    assert errors == []
    assert_same_vm(out, data.launch)


# ---- overlays: create, info, base id -----------------------------------------

def test_create_overlay_then_info_and_base_id(data, tmp_path):
    overlay = tmp_path / "made.vmo"
    calls = []
    created = vmsynth.create_overlay(data.base, data.launch, overlay, level=3, threads=2,
                                     progress=lambda d, t: calls.append((d, t)))
    assert created["ok"] is True
    assert created["overlay_bytes"] == overlay.stat().st_size
    assert created["level"] == 3
    assert calls
    info = vmsynth.overlay_info(overlay)
    assert info["payloads_checked"] is False
    assert vmsynth.base_id(data.base)["base_id"] == created["base_id"]
    out = tmp_path / "out"
    vmsynth.synthesize(data.base, overlay, out)
    assert_same_vm(out, data.launch)
    e = expect(vmsynth.Exists, 8, lambda: vmsynth.create_overlay(data.base, data.launch, overlay))
    assert e.name == "exists"


def test_create_encrypted_overlay_and_info_with_the_key(data, tmp_path):
    overlay = tmp_path / "sealed.vmo"
    created = vmsynth.create_overlay(data.base, data.launch, overlay, key_file=data.key)
    assert created["encrypted"] is True
    assert vmsynth.overlay_info(overlay, key_file=data.key)["ok"] is True
    expect(vmsynth.WrongKey, 5, lambda: vmsynth.overlay_info(overlay, key_file=data.wrong_key))
