"""`vmsynth push` against a real vmsynthd over real sockets (no mocks).

ctest (test cloudlet.push) sets VMSYNTHD and VMSYNTH_CLI to the built
executables and VMSYNTH_CACHE_DIR to the build tree's test cache. Every
fixture lives in this file on purpose: tests/cloudlet/conftest.py belongs to
the daemon's own suite.
"""

import filecmp
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import urllib.request

import pytest

TOKEN = "push-test-token-0123456789abcdef"


def _env(name):
    path = os.environ.get(name)
    if not path:
        pytest.exit(f"{name} is not set: run these tests through ctest (ctest -R cloudlet.push)", returncode=2)
    return path


def cli(*args, stdin=None, timeout=120):
    return subprocess.run([_env("VMSYNTH_CLI"), *map(str, args)], capture_output=True, text=True, stdin=stdin,
                          timeout=timeout)


def cli_ok(*args):
    r = cli(*args)
    assert r.returncode == 0, f"vmsynth {' '.join(map(str, args))} exited {r.returncode}: {r.stderr}"
    return r.stdout


class Data:
    """The session's VM pairs and overlays."""

    def __init__(self, root):
        self.root = root
        cli_ok("gen-pair", "--out", root / "pair", "--memory-mib", 32, "--disk-mib", 32, "-q")
        self.base = root / "pair" / "base"
        self.launch = root / "pair" / "launch"
        self.overlay = root / "app.vmo"
        cli_ok("overlay", "create", "--base", self.base, "--launch", self.launch, "-o", self.overlay, "-q")
        # The daemon holds only `base`; this pair's overlay is for another base.
        cli_ok("gen-pair", "--out", root / "other", "--memory-mib", 32, "--disk-mib", 32, "--seed", 7, "-q")
        self.other_overlay = root / "other.vmo"
        cli_ok("overlay", "create", "--base", root / "other" / "base", "--launch", root / "other" / "launch",
               "-o", self.other_overlay, "-q")
        self.key = root / "key.hex"
        self.key.write_text("00112233445566778899aabbccddeeff" * 2 + "\n")
        self.wrong_key = root / "wrong.hex"
        self.wrong_key.write_text("ffeeddccbbaa99887766554433221100" * 2 + "\n")
        self.encrypted = root / "app-encrypted.vmo"
        cli_ok("overlay", "create", "--base", self.base, "--launch", self.launch, "-o", self.encrypted,
               "--key-file", self.key, "-q")
        self.passphrase = root / "passphrase"
        self.passphrase.write_text("correct horse battery staple\n")
        self.sealed = root / "app-passphrase.vmo"
        cli_ok("overlay", "create", "--base", self.base, "--launch", self.launch, "-o", self.sealed,
               "--passphrase-file", self.passphrase, "-q")
        # Damaged after its header: the daemon finds it while synthesizing.
        self.corrupt = root / "corrupt.vmo"
        raw = bytearray(self.overlay.read_bytes())
        for i in range(len(raw) // 2, len(raw) // 2 + 64):
            raw[i] ^= 0x5A
        self.corrupt.write_bytes(bytes(raw))
        self.bases = root / "bases"
        self.bases.mkdir()
        (self.bases / "app-base").symlink_to(self.base)
        self.server_tokens = root / "server-tokens"
        self.server_tokens.write_text(f"# the test client\ntester {TOKEN}\n")
        self.client_token = root / "client-token"
        self.client_token.write_text(f"tester {TOKEN}\n")
        self.bad_token = root / "bad-token"
        self.bad_token.write_text("tester not-the-token-of-this-cloudlet\n")
        self.cert = root / "cert.pem"
        self.cert_key = root / "cert-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
                        "/CN=vmsynth push test", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout",
                        self.cert_key, "-out", self.cert], check=True, capture_output=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return Data(tmp_path_factory.mktemp("vmsynth-push"))


class Daemon:
    """A vmsynthd on a free loopback port, stopped with SIGTERM at the end."""

    def __init__(self, data, state, *extra):
        self.proc = subprocess.Popen(
            [_env("VMSYNTHD"), "--listen", "127.0.0.1:0", "--bases", data.bases, "--state", state, "--no-mdns",
             "--threads", "2", *map(str, extra)],
            stderr=subprocess.PIPE, text=True)
        self.log = []
        found = threading.Event()
        self.url = None

        def read():
            for line in self.proc.stderr:
                self.log.append(line)
                m = re.search(r"listening on (\S+)", line)
                if m and not found.is_set():
                    self.url = m.group(1)
                    found.set()
            found.set()

        self.reader = threading.Thread(target=read, daemon=True)
        self.reader.start()
        if not found.wait(120) or self.url is None:
            self.stop()
            pytest.fail("vmsynthd did not start:\n" + "".join(self.log))

    def get(self, path, token=None):
        req = urllib.request.Request(self.url + path)
        if token:
            req.add_header("Authorization", "Bearer " + token)
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(10)


@pytest.fixture
def start_daemon(data, tmp_path):
    started = []

    def start(*extra):
        d = Daemon(data, tmp_path / f"state{len(started)}", *extra)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


@pytest.fixture
def daemon(start_daemon):
    return start_daemon()


def assert_launch_vm(data, out_dir):
    """The cloudlet's VM is bit-identical to the pair's launch VM."""
    for name in ("memory.img", "disk.img"):
        assert filecmp.cmp(data.launch / name, os.path.join(out_dir, name), shallow=False), name


SYNTHESIZED = re.compile(r"^synthesized VM (\S+) on (\S+) in [0-9.]+ s \((.+)\)$")


def test_push_file_with_content_length(data, daemon):
    r = cli("push", "--to", daemon.url, data.overlay)
    assert r.returncode == 0, r.stderr
    m = SYNTHESIZED.match(r.stdout.strip())
    assert m, r.stdout
    assert m.group(2) == daemon.url
    assert_launch_vm(data, m.group(3))
    assert r.stderr == ""  # not a terminal: no progress line


def test_push_stdin_chunked_json(data, daemon):
    with open(data.overlay, "rb") as f:
        r = cli("push", "--to", daemon.url + "/", "--json", "-q", "-", stdin=f)
    assert r.returncode == 0, r.stderr
    j = json.loads(r.stdout)
    assert j["ok"] is True
    assert j["url"] == daemon.url
    assert j["state"] == "synthesized"
    assert j["overlay_bytes"] == data.overlay.stat().st_size
    assert j["disk_format"] == "raw"
    assert "first_byte_to_synthesized_s" in j["timings"]
    assert j["id"] in [v["id"] for v in daemon.get("/v1/vms")]
    assert_launch_vm(data, j["dir"])


def test_file_declares_its_length(data, start_daemon):
    # The daemon refuses a declared Content-Length over its limit before
    # reading the body, naming the declared size.
    d = start_daemon("--max-overlay-bytes", 4096)
    r = cli("push", "--to", d.url, "--json", data.overlay)
    assert r.returncode == 2, r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["http_status"] == 413 and err["api_code"] == "too_large"
    assert f"the overlay is {data.overlay.stat().st_size} bytes" in err["message"]
    assert "(HTTP 413 too_large)" in r.stderr


def test_stdin_is_chunked_and_ctrl_c_stops_it(data, daemon):
    overlay = data.overlay.read_bytes()
    p = subprocess.Popen([_env("VMSYNTH_CLI"), "push", "--to", daemon.url, "-"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=False)
    p.stdin.write(overlay[:len(overlay) // 2])
    p.stdin.flush()
    sessions = []
    for _ in range(200):
        sessions = daemon.get("/v1/sessions")
        if sessions and sessions[0]["bytes_received"] > 0:
            break
        time.sleep(0.05)
    assert sessions, "no session appeared on the daemon"
    assert sessions[0]["content_length"] == 0  # chunked: no length declared
    p.send_signal(signal.SIGINT)
    p.wait(30)  # stdin stays open: communicate() would close it, an EOF racing the signal
    err = p.stderr.read()
    p.stdin.close()
    p.stdout.close()
    p.stderr.close()
    assert p.returncode == 9, err
    assert b"interrupted by SIGINT" in err
    for _ in range(100):
        if not daemon.get("/v1/sessions"):
            break
        time.sleep(0.05)
    assert daemon.get("/v1/sessions") == []
    assert daemon.get("/v1/vms") == []


def test_wrong_base(data, daemon):
    r = cli("push", "--to", daemon.url, "--json", data.other_overlay)
    assert r.returncode == 4, r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "wrong-base"
    assert "base VM" in err["message"]
    assert daemon.get("/v1/vms") == []


def test_corrupt(data, daemon):
    r = cli("push", "--to", daemon.url, data.corrupt)
    assert r.returncode == 3, r.stderr
    assert "(HTTP 400 corrupt)" in r.stderr
    assert r.stderr.startswith("vmsynth: push: ")
    assert daemon.get("/v1/vms") == []


def test_encrypted_right_and_wrong_key(data, daemon):
    r = cli("push", "--to", daemon.url, "--key-file", data.key, "--json", data.encrypted)
    assert r.returncode == 0, r.stderr
    assert_launch_vm(data, json.loads(r.stdout)["dir"])
    r = cli("push", "--to", daemon.url, "--key-file", data.wrong_key, "--json", data.encrypted)
    assert r.returncode == 5, r.stderr
    err = json.loads(r.stdout)["error"]
    assert err["code"] == "wrong-key" and err["http_status"] == 400 and err["api_code"] == "wrong_key"
    assert "(HTTP 400 wrong_key)" in r.stderr


def test_passphrase(data, daemon):
    r = cli("push", "--to", daemon.url, "--passphrase-file", data.passphrase, "--json", data.sealed)
    assert r.returncode == 0, r.stderr
    assert_launch_vm(data, json.loads(r.stdout)["dir"])
    r = cli("push", "--to", daemon.url, "--json", data.sealed)  # no passphrase
    assert r.returncode == 5, r.stderr


def test_key_is_not_sent_in_clear_to_another_host(data):
    for flag, secret in (("--key-file", data.key), ("--passphrase-file", data.passphrase)):
        r = cli("push", "--to", "http://192.0.2.1:8470", flag, secret, data.encrypted)
        assert r.returncode == 2
        assert "plain http" in r.stderr and "https://" in r.stderr


def test_token_required(data, start_daemon):
    d = start_daemon("--token-file", data.server_tokens)
    r = cli("push", "--to", d.url, data.overlay)
    assert r.returncode == 2
    assert "bearer token" in r.stderr and "(HTTP 401 unauthorized)" in r.stderr
    r = cli("push", "--to", d.url, "--token-file", data.bad_token, data.overlay)
    assert r.returncode == 2
    assert "(HTTP 403 forbidden)" in r.stderr
    r = cli("push", "--to", d.url, "--token-file", data.client_token, data.overlay)
    assert r.returncode == 0, r.stderr
    assert_launch_vm(data, SYNTHESIZED.match(r.stdout.strip()).group(3))


def test_tls_verifies_the_certificate(data, start_daemon):
    d = start_daemon("--tls-cert", data.cert, "--tls-key", data.cert_key)
    assert d.url.startswith("https://127.0.0.1:")
    r = cli("push", "--to", d.url, "--cacert", data.cert, "--key-file", data.key, "--json", data.encrypted)
    assert r.returncode == 0, r.stderr
    assert_launch_vm(data, json.loads(r.stdout)["dir"])
    r = cli("push", "--to", d.url, data.overlay)
    assert r.returncode == 6
    assert "verification" in r.stderr and d.url in r.stderr
    # Plain http to a TLS port is not a working cloudlet either.
    r = cli("push", "--to", d.url.replace("https://", "http://"), data.overlay)
    assert r.returncode == 6, r.stderr


def test_daemon_not_running(data):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    r = cli("push", "--to", url, "--json", data.overlay)
    assert r.returncode == 6
    assert url in r.stderr and "cannot connect" in r.stderr
    assert json.loads(r.stdout)["error"]["http_status"] is None


@pytest.mark.parametrize("url", ["ftp://127.0.0.1:8470", "127.0.0.1:8470", "http://", "http://127.0.0.1:99999"])
def test_bad_url(data, url):
    r = cli("push", "--to", url, data.overlay)
    assert r.returncode == 2, r.stderr
    assert "--to" in r.stderr


def test_help_names_the_flags():
    r = cli("push", "--help")
    assert r.returncode == 0
    for flag in ("--to", "--token-file", "--cacert", "--launch", "--disk-format", "--key-file",
                 "--passphrase-file", "--json", "--quiet"):
        assert flag in r.stdout
