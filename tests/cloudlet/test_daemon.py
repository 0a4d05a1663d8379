"""vmsynthd over HTTP, with Debian's curl as the client (Python's sockets only
for half-sent bodies and stalls): round trips, progress, concurrency, bad
input, disconnects, tokens, TLS, drain on SIGTERM, recovery after SIGKILL,
metrics. See conftest.py for the fixtures."""

import os
import re
import signal
import subprocess
import time

import pytest

from conftest import (Data, curl, parse_metrics, raw_post, read_response, same_file, staging_entries, state_problems,
                      wait_for)

ID = re.compile(r"^[0-9a-f]{32}$")


def assert_good_upload(d, data):
    """The daemon still serves: health, then a good upload (of the small pair; deleted again)."""
    assert d.healthy(), d.log()
    r = d.post_file(data.small.overlay)
    assert r.status == 201, r
    vm = r.json()
    assert data.small.matches_launch(vm["dir"])
    assert d.delete("/v1/vms/" + vm["id"]).status == 204


def check_created(r, d, data, overlay):
    assert r.status == 201, r
    vm = r.json()
    assert ID.match(vm["id"]), vm
    bases = {b["name"]: b["id"] for b in d.get("/v1/bases").json()}
    assert vm["base_id"] == bases["a"], (vm, bases)
    assert vm["base_name"] == "a"
    assert os.path.isabs(vm["dir"]) and os.path.isdir(vm["dir"]), vm
    assert os.path.realpath(vm["dir"]) == os.path.realpath(os.path.join(d.state, "vms", vm["id"]))
    assert vm["state"] == "synthesized"
    assert vm["overlay_bytes"] == os.path.getsize(overlay)
    assert vm["timings"]["first_byte_to_synthesized_s"] > 0
    return vm


# ---- 1. round trips ---------------------------------------------------------------------


def test_round_trip_content_length_then_list_show_delete(daemon, data):
    r = daemon.post_file(data.a.overlay, "", "-v")
    assert re.search(r"^> Content-Length: %d\r?$" % os.path.getsize(data.a.overlay), r.stderr, re.M), r.stderr
    vm = check_created(r, daemon, data, data.a.overlay)
    assert data.a.matches_launch(vm["dir"])
    assert os.path.exists(os.path.join(daemon.state, "vms", vm["id"] + ".json"))

    listed = daemon.vms()
    assert [v["id"] for v in listed] == [vm["id"]]
    assert listed[0]["dir"] == vm["dir"] and listed[0]["state"] == "synthesized"
    shown = daemon.get("/v1/vms/" + vm["id"])
    assert shown.status == 200, shown
    assert shown.json()["id"] == vm["id"] and shown.json()["base_id"] == vm["base_id"]

    r = daemon.delete("/v1/vms/" + vm["id"])
    assert r.status == 204, r
    assert not os.path.exists(vm["dir"])
    assert not os.path.exists(os.path.join(daemon.state, "vms", vm["id"] + ".json"))
    assert daemon.vms() == []
    r = daemon.delete("/v1/vms/" + vm["id"])
    assert r.status == 404 and r.error_code() == "not_found", r
    assert daemon.get("/v1/vms/" + vm["id"]).status == 404


def test_round_trip_chunked_from_a_pipe(daemon, data):
    cat = subprocess.Popen(["cat", str(data.a.overlay)], stdout=subprocess.PIPE)
    try:
        r = curl(daemon.url + "/v1/vms", "-v", "-X", "POST", "-T", "-", stdin=cat.stdout)
    finally:
        cat.stdout.close()
        cat.wait(timeout=30)
    assert re.search(r"^> Transfer-Encoding: chunked\r?$", r.stderr, re.M | re.I), r.stderr
    assert not re.search(r"^> Content-Length:", r.stderr, re.M | re.I), r.stderr
    vm = check_created(r, daemon, data, data.a.overlay)
    assert data.a.matches_launch(vm["dir"])
    assert state_problems(daemon.state) == []


def test_disk_format_qcow2(daemon, data, tmp_path):
    r = daemon.post_file(data.a.overlay, "?disk_format=qcow2")
    vm = check_created(r, daemon, data, data.a.overlay)
    assert vm["disk_format"] == "qcow2"
    qcow = os.path.join(vm["dir"], "disk.qcow2")
    assert os.path.exists(qcow) and not os.path.exists(os.path.join(vm["dir"], "disk.img"))
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", qcow, str(raw)], check=True, timeout=60)
    assert same_file(raw, data.a.launch / "disk.img")
    assert same_file(os.path.join(vm["dir"], "memory.img"), data.a.launch / "memory.img")


# ---- 2. progress before the last byte ----------------------------------------------------


def test_progress_is_visible_before_the_last_byte(daemon_factory, data):
    big = data.big.overlay
    daemon_factory.add_base("big", data.big.base)
    daemon = daemon_factory()
    size = os.path.getsize(big)
    assert size > 8_000_000, f"the slow overlay is only {size} bytes"
    up = daemon.post_popen(big, "", "--limit-rate", "3M")
    seen = []
    early = None
    try:
        deadline = time.monotonic() + 60
        while up.proc.poll() is None and time.monotonic() < deadline:
            for s in daemon.sessions():
                seen.append(s)
                if s["content_length"] == size and s["bytes_received"] < size and (
                        s["phase"] == "applying" or s["done"] > 0):
                    early = s
            if early:
                break
            time.sleep(0.05)
    finally:
        r = up.finish()
    assert early is not None, f"no poll showed synthesis before the last byte; polls: {seen[-5:]}"
    assert early["state"] == "synthesizing", early
    assert r.status == 201, r
    assert data.big.matches_launch(r.json()["dir"])


# ---- 3. concurrency ------------------------------------------------------------------------


def test_sixteen_concurrent_uploads(daemon_factory, data):
    d = daemon_factory("--max-sessions", "16")
    # 12 of the small pair and 4 of the larger one at once.
    pairs = [data.small] * 12 + [data.a] * 4
    uploads = [d.post_popen(p.overlay) for p in pairs]
    results = [u.finish(timeout=170) for u in uploads]
    for r in results:
        assert r.status == 201, r
    ids = {r.json()["id"] for r in results}
    assert len(ids) == 16
    for p, r in zip(pairs, results):
        assert p.matches_launch(r.json()["dir"]), r.json()["id"]
    assert sorted(v["id"] for v in d.vms()) == sorted(ids)
    assert state_problems(d.state) == []
    assert d.metrics()['vmsynthd_syntheses_total{result="ok"}'] == 16


# ---- 4. bad input -----------------------------------------------------------------------------


def flipped(src, dst, at):
    b = bytearray(src.read_bytes())
    b[at] ^= 0x40
    dst.write_bytes(bytes(b))
    return dst


def written(path, content):
    path.write_bytes(content)
    return path


BAD_BODIES = {
    # name: (make the file, status, code)
    "truncated": (lambda d, t: written(t / "t.vmo", d.a.overlay.read_bytes()[: os.path.getsize(d.a.overlay) // 2]),
                  400, "corrupt"),
    "flipped payload byte": (lambda d, t: flipped(d.a.overlay, t / "f.vmo", os.path.getsize(d.a.overlay) // 2),
                             400, "corrupt"),
    "shorter than the header": (lambda d, t: written(t / "s.vmo", d.a.overlay.read_bytes()[:200]), 400, "corrupt"),
    "not an overlay": (lambda d, t: written(t / "n.vmo", b"hello " * 1000), 400, "corrupt"),
    "another base": (lambda d, t: d.other.overlay, 409, "wrong_base"),
}


@pytest.mark.parametrize("name", list(BAD_BODIES))
def test_bad_overlay_is_refused_and_leaves_nothing(daemon, data, tmp_path, name):
    make, status, code = BAD_BODIES[name]
    path = make(data, tmp_path)
    r = daemon.post_file(path)
    assert r.status == status and r.error_code() == code, r
    assert r.json()["error"]["message"], r
    wait_for(daemon.idle, 10, "the session to end")
    assert state_problems(daemon.state) == []
    assert daemon.vms() == []
    assert_good_upload(daemon, data)


def test_encrypted_overlay_with_its_key_wrong_key_and_no_key(daemon, data):
    r = daemon.post_file(data.encrypted, "", "-H", "X-Vmsynth-Key: " + Data.WRONG_KEY)
    assert r.status == 400 and r.error_code() == "wrong_key", r
    assert state_problems(daemon.state) == []
    r = daemon.post_file(data.encrypted)
    assert r.status == 400 and r.error_code() == "wrong_key", r
    # The answer says how to give the key over HTTP, not the command's flags
    # (regression: it said "give its key with --key-file or --passphrase-file").
    assert "X-Vmsynth-Key" in r.json()["error"]["message"], r
    assert "--key-file" not in r.json()["error"]["message"], r
    assert state_problems(daemon.state) == []
    r = daemon.post_file(data.encrypted, "", "-H", "X-Vmsynth-Key: nothex")
    assert r.status == 400 and r.error_code() == "usage", r
    assert state_problems(daemon.state) == []
    r = daemon.post_file(data.encrypted, "", "-H", "X-Vmsynth-Key: " + Data.KEY)
    assert r.status == 201, r
    assert data.a.matches_launch(r.json()["dir"])
    wait_for(daemon.idle, 10, "the sessions to end")
    assert state_problems(daemon.state) == []
    assert_good_upload(daemon, data)


def test_refusal_mid_body_reaches_a_client_that_does_not_wait_for_100_continue(daemon, data, tmp_path):
    # curl -H 'Expect:' sends the whole body at once, as clients without
    # 100-continue do. The daemon refuses these overlays after a few KB; it
    # must still read (and drop) the rest, or its close resets the
    # connection under the client's feet and the answer is lost
    # (regression: curl said "Send failure: Broken pipe", status 000).
    header_damaged = flipped(data.a.overlay, tmp_path / "h.vmo", 300)
    cases = [(data.big.overlay, [], 409, "wrong_base"),
             (header_damaged, [], 400, "corrupt"),
             (data.encrypted, ["-H", "X-Vmsynth-Key: " + Data.WRONG_KEY], 400, "wrong_key")]
    for path, headers, status, code in cases:
        for _ in range(4):
            r = daemon.post_file(path, "", "-H", "Expect:", *headers)
            assert r.rc == 0 and r.status == status and r.error_code() == code, r
    # The same with a client that writes its whole body before it reads
    # (a socket: sendall of 16 MB, then the answer): before the fix, sendall
    # failed with a reset once the daemon had closed without reading.
    body = data.big.overlay.read_bytes()
    for _ in range(2):
        s = raw_post(daemon.port, body, len(body))
        try:
            answer = read_response(s)
        finally:
            s.close()
        assert answer.startswith(b"HTTP/1.1 409"), answer[:300]
        assert b'"wrong_base"' in answer, answer[:600]
    wait_for(daemon.idle, 10, "the sessions to end")
    assert state_problems(daemon.state) == [] and daemon.vms() == []
    assert_good_upload(daemon, data)


def test_content_length_over_the_limit_is_refused_before_the_body(daemon_factory, data, tmp_path):
    limit = 100_000
    size = os.path.getsize(data.a.overlay)
    assert size > 10 * limit
    d = daemon_factory("--max-overlay-bytes", str(limit))
    before = d.metrics()["vmsynthd_received_bytes_total"]
    r = d.post_file(data.a.overlay)
    assert r.status == 413 and r.error_code() == "too_large", r
    assert r.elapsed < 5, r.elapsed
    # The body was not read: hardly any overlay byte reached the daemon.
    assert d.metrics()["vmsynthd_received_bytes_total"] - before < limit
    assert state_problems(d.state) == []
    # Under the limit, the body is read (and found too short for an overlay).
    small = d.post_file(written(tmp_path / "small.vmo", data.a.overlay.read_bytes()[:200]))
    assert small.status == 400 and small.error_code() == "corrupt", small
    assert d.healthy()


def test_chunked_body_over_the_limit_is_413(daemon_factory, data):
    limit = 1_000_000
    d = daemon_factory("--max-overlay-bytes", str(limit))
    cat = subprocess.Popen(["cat", str(data.a.overlay)], stdout=subprocess.PIPE)
    try:
        r = curl(d.url + "/v1/vms", "-X", "POST", "-T", "-", stdin=cat.stdout)
    finally:
        cat.stdout.close()
        cat.wait(timeout=30)
    assert r.status == 413 and r.error_code() == "too_large", r
    wait_for(d.idle, 10, "the session to end")
    assert state_problems(d.state) == []
    assert d.metrics().get('vmsynthd_syntheses_total{result="too_large"}') == 1


def test_busy_when_max_sessions_are_in_flight(daemon_factory, data):
    d = daemon_factory("--max-sessions", "1")
    overlay = data.a.overlay.read_bytes()
    slow = raw_post(d.port, overlay, 1000)
    try:
        wait_for(lambda: len(d.sessions()) == 1, 10, "the slow upload's session")
        r = d.post_file(data.a.overlay)
        assert r.status == 503 and r.error_code() == "busy", r
        assert state_problems(d.state) == [] or all(n.startswith(".") for n in staging_entries(d.state))
    finally:
        slow.close()
    wait_for(d.idle, 10, "the slow upload's session to end")
    assert state_problems(d.state) == []
    assert_good_upload(d, data)


def test_state_limit_gives_507(daemon_factory, data):
    d = daemon_factory("--max-state-bytes", "1000000")
    r = d.post_file(data.a.overlay)
    assert r.status == 507 and r.error_code() == "no_space", r
    wait_for(d.idle, 10, "the session to end")
    assert state_problems(d.state) == [] and d.vms() == []
    assert d.healthy()


@pytest.mark.parametrize("query", ["?launch=maybe", "?disk_format=vmdk", "?colour=blue"])
def test_bad_query_parameters_are_usage_errors(daemon, data, query):
    r = daemon.post_file(data.a.overlay, query)
    assert r.status == 400 and r.error_code() == "usage", r
    assert state_problems(daemon.state) == [] and daemon.vms() == []
    assert_good_upload(daemon, data)


@pytest.mark.parametrize("path", ["/v1/vms/" + "0" * 32, "/v1/vms/not-hex", "/v1/vms/" + "A" * 32])
def test_unknown_and_malformed_vm_ids_are_404(daemon, path):
    for r in (daemon.get(path), daemon.delete(path)):
        assert r.status == 404 and r.error_code() == "not_found", r
    assert daemon.healthy()


def test_unknown_endpoint_is_a_json_404(daemon, data):
    for r in (daemon.get("/v1/nothing"), daemon.get("/", "-X", "POST", "-d", "x")):
        assert r.status == 404 and r.error_code() == "not_found", r
        assert r.json()["error"]["message"], r
    assert_good_upload(daemon, data)


# ---- 5. disconnects and stalls ---------------------------------------------------------------


def test_client_disconnect_mid_body_removes_the_staging(daemon, data):
    overlay = data.a.overlay.read_bytes()
    before = daemon.metrics().get('vmsynthd_syntheses_total{result="disconnected"}', 0)
    s = raw_post(daemon.port, overlay, len(overlay) // 2)
    wait_for(lambda: any(x["bytes_received"] > 0 for x in daemon.sessions()), 10, "the session")
    s.close()
    wait_for(daemon.idle, 15, "the session to end and its staging to go")
    assert state_problems(daemon.state) == [] and daemon.vms() == []
    assert daemon.metrics()['vmsynthd_syntheses_total{result="disconnected"}'] == before + 1
    assert_good_upload(daemon, data)


def test_stalled_client_is_dropped_after_the_idle_timeout(daemon_factory, data):
    d = daemon_factory("--idle-timeout", "2")
    overlay = data.a.overlay.read_bytes()
    s = raw_post(d.port, overlay, len(overlay) // 2)
    try:
        wait_for(lambda: any(x["bytes_received"] > 0 for x in d.sessions()), 10, "the session")
        start = time.monotonic()
        wait_for(d.idle, 15, "the stalled session to be dropped")
        assert time.monotonic() - start < 12
        assert state_problems(d.state) == []
        assert d.metrics()['vmsynthd_syntheses_total{result="disconnected"}'] == 1
    finally:
        s.close()
    assert_good_upload(d, data)


# ---- 6. tokens ----------------------------------------------------------------------------------

TOKEN = "alice-token-0123456789abcdef"
TOKEN2 = "bob-token-fedcba9876543210"


def token_file(tmp_path):
    import hashlib
    p = tmp_path / "tokens"
    p.write_text(f"# the cloudlet's clients\nalice {TOKEN}\n\nbob sha256:{hashlib.sha256(TOKEN2.encode()).hexdigest()}\n")
    return p


def test_tokens(daemon_factory, data, tmp_path):
    d = daemon_factory("--token-file", token_file(tmp_path))
    r = d.get("/v1/vms", token=None)
    assert r.status == 401 and r.error_code() == "unauthorized", r
    r = d.post_file(data.a.overlay, token=None)
    assert r.status == 401 and r.error_code() == "unauthorized", r
    for wrong in ("not-a-token-of-this-cloudlet", TOKEN + "x", "sha256:" + "0" * 64):
        r = d.get("/v1/vms", token=wrong)
        assert r.status == 403 and r.error_code() == "forbidden", r
    r = d.post_file(data.a.overlay, token="wrong-wrong-wrong-wrong")
    assert r.status == 403 and r.error_code() == "forbidden", r
    for path in ("/v1/bases", "/v1/sessions", "/metrics", "/v1/vms/" + "0" * 32):
        assert d.get(path, token=None).status == 401, path
    assert d.get("/v1/health", token=None).status == 200
    for tok in (TOKEN, TOKEN2):
        r = d.post_file(data.a.overlay, token=tok)
        assert r.status == 201, r
        assert data.a.matches_launch(r.json()["dir"])
        assert "client" not in r.json()
        assert d.get("/v1/vms/" + r.json()["id"], token=tok).status == 200
    assert len(d.get("/v1/vms", token=TOKEN2).json()) == 2
    assert state_problems(d.state) == []


def test_non_loopback_listen_needs_a_token_file(daemon_factory):
    d = daemon_factory(start=False, listen="0.0.0.0:0")
    r = subprocess.run(d.command(), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "without --token-file" in r.stderr and "0.0.0.0" in r.stderr, r.stderr


@pytest.mark.parametrize("text,line", [
    ("alice abcdefghijklmnopqrstuvwxyz\nbob\n", 2),
    ("# c\nalice abcdefghijklmnopqrstuvwxyz\nbob sha256:abc\n", 3),
    ("alice short\n", 1),
    ("alice abcdefghijklmnopqrstuvwxyz\nalice ABCDEFGHIJKLMNOPQRSTUVWXYZ\n", 2),
])
def test_malformed_token_file_is_refused_at_start_naming_the_line(daemon_factory, tmp_path, text, line):
    p = tmp_path / "bad-tokens"
    p.write_text(text)
    d = daemon_factory("--token-file", p, start=False)
    r = subprocess.run(d.command(), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert f"line {line}" in r.stderr and str(p) in r.stderr, r.stderr
    assert "listening" not in r.stderr


# ---- 7. TLS --------------------------------------------------------------------------------------


def make_cert(tmp_path, name):
    cert, key = tmp_path / f"{name}.crt", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-addext",
                    "subjectAltName=IP:127.0.0.1", "-days", "2", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def test_tls_round_trip(daemon_factory, data, tmp_path):
    cert, key = make_cert(tmp_path, "c")
    d = daemon_factory("--tls-cert", cert, "--tls-key", key, cacert=cert)
    assert d.url.startswith("https://")
    r = d.post_file(data.a.overlay, "", "-H", "X-Vmsynth-Key: " + Data.KEY)  # a key that the overlay does not need
    assert r.status == 400, r  # synthesis of a plain overlay with a key is refused; the request got through TLS
    r = d.post_file(data.a.overlay)
    assert r.status == 201, r
    assert data.a.matches_launch(r.json()["dir"])
    r = d.post_file(data.encrypted, "", "-H", "X-Vmsynth-Key: " + Data.KEY)
    assert r.status == 201, r
    assert data.a.matches_launch(r.json()["dir"])
    plain = curl(d.url + "/v1/health")  # no --cacert: the self-signed certificate is not trusted
    assert plain.rc == 60 and plain.status == 0, plain
    http = curl(f"http://127.0.0.1:{d.port}/v1/health")
    assert http.status != 200, http
    assert d.healthy()


def test_mismatched_tls_cert_and_key_are_refused_at_start(daemon_factory, tmp_path):
    cert, _ = make_cert(tmp_path, "one")
    _, other_key = make_cert(tmp_path, "two")
    d = daemon_factory("--tls-cert", cert, "--tls-key", other_key, start=False)
    r = subprocess.run(d.command(), capture_output=True, text=True, timeout=30)
    assert r.returncode != 0
    assert "--tls-cert" in r.stderr and "listening" not in r.stderr, r.stderr


# ---- 8. SIGTERM drain -----------------------------------------------------------------------------


def test_sigterm_drains_the_upload_in_flight(daemon_factory, data):
    d = daemon_factory("--drain-timeout", "30")
    size = os.path.getsize(data.a.overlay)
    up = d.post_popen(data.a.overlay, "", "--limit-rate", str(max(size // 3, 100_000)))
    try:
        wait_for(lambda: any(s["bytes_received"] > 0 for s in d.sessions()), 15, "the upload to start")
        d.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: "got Terminated" in d.log(), 10, "the daemon to take the signal")
        refused = curl(d.url + "/v1/health", timeout=5)
        assert refused.rc == 7 and refused.status == 0, refused  # connection refused
        r = up.finish(timeout=60)
        assert r.status == 201, r
        assert data.a.matches_launch(r.json()["dir"])
    finally:
        up.kill() if up.proc.poll() is None else None
    assert d.proc.wait(timeout=30) == 0, d.log()
    assert state_problems(d.state) == []


def test_sigterm_with_a_stalled_upload_cancels_it_after_the_drain_timeout(daemon_factory, data):
    d = daemon_factory("--drain-timeout", "1")
    overlay = data.a.overlay.read_bytes()
    s = raw_post(d.port, overlay, len(overlay) // 2)
    try:
        wait_for(lambda: staging_entries(d.state) and d.sessions(), 15, "the upload's staging")
        start = time.monotonic()
        d.proc.send_signal(signal.SIGTERM)
        rc = d.proc.wait(timeout=15)
        took = time.monotonic() - start
        assert rc == 0, d.log()
        assert took < 8, took
        assert staging_entries(d.state) == [], d.log()
        assert state_problems(d.state) == []
    finally:
        s.close()


# ---- 9. SIGKILL and restart ------------------------------------------------------------------------


def test_restart_after_sigkill_recovers_the_state(daemon_factory, data):
    d = daemon_factory()
    r = d.post_file(data.a.overlay)
    assert r.status == 201, r
    kept = r.json()["id"]
    overlay = data.a.overlay.read_bytes()
    s = raw_post(d.port, overlay, len(overlay) // 2)
    try:
        wait_for(lambda: staging_entries(d.state), 15, "the upload's staging")
        d.kill9()
    finally:
        s.close()
    assert any(".partial" in n for n in staging_entries(d.state)), os.listdir(os.path.join(d.state, "vms"))
    orphan = os.path.join(d.state, "vms", "0123456789abcdef0123456789abcdef")
    os.makedirs(orphan)
    with open(os.path.join(orphan, "memory.img"), "wb") as f:
        f.write(b"\0" * 4096)
    d.start()
    assert staging_entries(d.state) == []
    assert not os.path.exists(orphan)
    assert state_problems(d.state) == []
    listed = d.vms()
    assert [v["id"] for v in listed] == [kept]
    assert data.a.matches_launch(listed[0]["dir"])
    r = d.post_file(data.a.overlay)
    assert r.status == 201, r
    assert sorted(v["id"] for v in d.vms()) == sorted([kept, r.json()["id"]])


# ---- 10. metrics --------------------------------------------------------------------------------------


def test_metrics_parse_and_count(daemon, data, tmp_path):
    m0 = daemon.metrics()
    for name in ("vmsynthd_received_bytes_total", "vmsynthd_sessions_in_flight", "vmsynthd_running_vms",
                 "vmsynthd_synthesis_seconds_count", "vmsynthd_synthesis_seconds_sum"):
        assert name in m0, m0
    assert m0['vmsynthd_syntheses_total{result="ok"}'] == 0
    size = os.path.getsize(data.a.overlay)
    for _ in range(2):
        assert daemon.post_file(data.a.overlay).status == 201
    bad = tmp_path / "bad.vmo"
    bad.write_bytes(b"x" * 100)
    assert daemon.post_file(bad).status == 400
    m = daemon.metrics()
    assert m['vmsynthd_syntheses_total{result="ok"}'] == 2
    assert m['vmsynthd_syntheses_total{result="corrupt"}'] == 1
    assert m["vmsynthd_received_bytes_total"] - m0["vmsynthd_received_bytes_total"] == 2 * size + 100
    assert m["vmsynthd_synthesis_seconds_count"] == 2
    assert m['vmsynthd_synthesis_seconds_bucket{le="+Inf"}'] == 2
    assert m["vmsynthd_synthesis_seconds_sum"] > 0
    assert m["vmsynthd_sessions_in_flight"] == 0
    assert m['vmsynthd_requests_total{code="201"}'] - m0.get('vmsynthd_requests_total{code="201"}', 0) == 2
    buckets = [(k, v) for k, v in m.items() if k.startswith("vmsynthd_synthesis_seconds_bucket")]
    values = [v for _, v in buckets]
    assert values == sorted(values), buckets  # cumulative


def test_parse_metrics_rejects_what_is_not_prometheus_text():
    with pytest.raises(AssertionError):
        parse_metrics("a_total{x=1} 3\n")
    with pytest.raises(AssertionError):
        parse_metrics("a b c\n")
    assert parse_metrics('# HELP a A.\n# TYPE a counter\na{x="1"} 3\nb 1.5e3\n') == {'a{x="1"}': 3, "b": 1500}
