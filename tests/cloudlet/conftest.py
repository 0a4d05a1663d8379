"""Fixtures for vmsynthd's tests: VM pairs and overlays made with the real
vmsynth command, daemons started on 127.0.0.1:0 with temporary --bases and
--state, and curl (Debian's) as the HTTP client.

ctest sets VMSYNTHD (the built vmsynthd), VMSYNTH_CLI (the built vmsynth) and
VMSYNTH_CACHE_DIR (the build tree's test cache). Everything a test writes is
below pytest's temporary directories; every process a test starts is ended in
its teardown.
"""

import hashlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest


def _env_path(name):
    path = os.environ.get(name)
    if not path:
        pytest.exit(f"{name} is not set: run the daemon's tests through ctest (ctest -L cloudlet)", returncode=2)
    return path


CLI = _env_path("VMSYNTH_CLI")
VMSYNTHD = _env_path("VMSYNTHD")


def run_cli(*args):
    r = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"vmsynth {' '.join(map(str, args))} exited {r.returncode}: {r.stderr}"
    return r.stdout


def digest(path):
    h = hashlib.blake2b()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def same_file(a, b):
    return os.path.getsize(a) == os.path.getsize(b) and digest(a) == digest(b)


class Pair:
    """A base/launch pair made by `vmsynth gen-pair` and its overlays."""

    def __init__(self, root, name, seed, memory_mib=32, disk_mib=32, profile=None):
        self.root = root / name
        args = ["gen-pair", "--out", self.root, "--memory-mib", memory_mib, "--disk-mib", disk_mib, "--seed", seed, "-q"]
        if profile:
            args += ["--profile", profile]
        run_cli(*args)
        self.base = self.root / "base"
        self.launch = self.root / "launch"
        self.overlay = self.root / "overlay.vmo"
        run_cli("overlay", "create", "--base", self.base, "--launch", self.launch, "-o", self.overlay, "--level", 1, "-q")
        self._digests = {}

    def launch_digest(self, name):
        if name not in self._digests:
            self._digests[name] = digest(self.launch / name)
        return self._digests[name]

    def matches_launch(self, vm_dir):
        """True if vm_dir's memory.img and disk.img are the launch VM's, bit for bit."""
        for name in ("memory.img", "disk.img"):
            p = os.path.join(vm_dir, name)
            if not os.path.exists(p) or os.path.getsize(p) != os.path.getsize(self.launch / name):
                return False
            if digest(p) != self.launch_digest(name):
                return False
        return True


class Data:
    """The session's pairs and overlays (zstd level 1: quick to make on a shared machine)."""

    KEY = "00112233445566778899aabbccddeeff" * 2
    WRONG_KEY = "ffeeddccbbaa99887766554433221100" * 2

    def __init__(self, root):
        self.root = root
        self.a = Pair(root, "a", 1)
        self.small = Pair(root, "small", 4, memory_mib=8, disk_mib=8)  # every daemon holds it too: quick checks
        self.other = Pair(root, "other", 2, memory_mib=8, disk_mib=8)  # a base no daemon holds
        self.key_file = root / "key.hex"
        self.key_file.write_text(self.KEY + "\n")
        self.encrypted = root / "a-encrypted.vmo"
        run_cli("overlay", "create", "--base", self.a.base, "--launch", self.a.launch, "-o", self.encrypted,
                "--key-file", self.key_file, "--level", 1, "-q")
        self._big = None

    @property
    def big(self):
        """A pair whose overlay is ~20 MB (decode-heavy changes compress poorly), made on first use."""
        if self._big is None:
            self._big = Pair(self.root, "big", 3, memory_mib=64, disk_mib=64, profile="decode-heavy")
        return self._big


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("vmsynthd-data")
    yield Data(root)
    shutil.rmtree(root, ignore_errors=True)  # VM images: pytest keeps its last temporary directories


# ---- HTTP through curl --------------------------------------------------------------


class Response:
    def __init__(self, status, body, stderr="", rc=0, elapsed=0.0):
        self.status = status
        self.body = body
        self.stderr = stderr
        self.rc = rc
        self.elapsed = elapsed

    def json(self):
        return json.loads(self.body)

    def error_code(self):
        try:
            return self.json()["error"]["code"]
        except (ValueError, KeyError, TypeError):
            return None

    def __repr__(self):
        return f"Response(status={self.status}, rc={self.rc}, body={self.body[:600]!r}, stderr={self.stderr[-600:]!r})"


STATUS_MARK = "\n@@vmsynthd-test-status=%{http_code}\n"


def parse_curl(r, elapsed=0.0):
    out = r.stdout if isinstance(r.stdout, str) else r.stdout.decode("utf-8", "replace")
    err = r.stderr if isinstance(r.stderr, str) else r.stderr.decode("utf-8", "replace")
    m = re.search(r"\n@@vmsynthd-test-status=(\d+)\n$", out)
    status = int(m.group(1)) if m else 0
    body = out[: m.start()] if m else out
    return Response(status, body, err, r.returncode, elapsed)


def curl_args(url, *args, token=None, cacert=None, timeout=60):
    cmd = ["curl", "-sS", "--max-time", str(timeout), "-w", STATUS_MARK]
    if token is not None:
        cmd += ["-H", f"Authorization: Bearer {token}"]
    if cacert is not None:
        cmd += ["--cacert", str(cacert)]
    return cmd + list(args) + [url]


def curl(url, *args, token=None, cacert=None, timeout=60, stdin=None):
    start = time.monotonic()
    r = subprocess.run(curl_args(url, *args, token=token, cacert=cacert, timeout=timeout), capture_output=True,
                       text=True, timeout=timeout + 30, stdin=stdin)
    return parse_curl(r, time.monotonic() - start)


# ---- the daemon -------------------------------------------------------------------------


def state_problems(state):
    """What in state/vms is not a complete VM (a VM dir with its record, and a record with its dir)."""
    vms = os.path.join(state, "vms")
    names = os.listdir(vms) if os.path.isdir(vms) else []
    problems = []
    for n in names:
        if n.startswith("."):
            problems.append(f"staging entry {n}")
        elif n.endswith(".json"):
            if not os.path.isdir(os.path.join(vms, n[:-5])):
                problems.append(f"record {n} without its VM dir")
        elif not os.path.exists(os.path.join(vms, n + ".json")):
            problems.append(f"VM dir {n} without its record")
    return problems


def staging_entries(state):
    vms = os.path.join(state, "vms")
    return [n for n in os.listdir(vms) if n.startswith(".")] if os.path.isdir(vms) else []


def wait_for(predicate, timeout, what, interval=0.05):
    deadline = time.monotonic() + timeout
    while True:
        v = predicate()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


class Daemon:
    """One vmsynthd process on 127.0.0.1:0 (or the given --listen)."""

    def __init__(self, root, bases, state=None, args=(), token=None, listen="127.0.0.1:0", cacert=None):
        self.root = root
        self.bases = str(bases)
        self.state = str(state or root / "state")
        self.args = [str(a) for a in args]
        self.token = token
        self.listen = listen
        self.cacert = cacert
        self.proc = None
        self.port = None
        self.url = None
        self.log_path = None
        self.starts = 0

    def command(self):
        return [VMSYNTHD, "--listen", self.listen, "--bases", self.bases, "--state", self.state, "--no-mdns",
                "--threads", "2", *self.args]

    def start(self, timeout=30):
        self.starts += 1
        self.log_path = self.root / f"vmsynthd-{self.starts}.log"
        log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        log.close()
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(r"vmsynthd: listening on (https?)://127\.0\.0\.1:(\d+)", self.log())
            if m:
                self.port = int(m.group(2))
                self.url = f"{m.group(1)}://127.0.0.1:{self.port}"
                return self
            if self.proc.poll() is not None:
                raise AssertionError(f"vmsynthd exited {self.proc.returncode} at start:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"vmsynthd did not say where it listens within {timeout} s:\n{self.log()}")
            time.sleep(0.02)

    def log(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=15)
        self.proc = None

    def kill9(self):
        self.proc.kill()
        self.proc.wait(timeout=15)
        self.proc = None

    # -- requests --

    def get(self, path, *args, token="default", timeout=60):
        return curl(self.url + path, *args, token=self.token if token == "default" else token, cacert=self.cacert,
                    timeout=timeout)

    def delete(self, path, token="default"):
        return self.get(path, "-X", "DELETE", token=token)

    def post_file(self, path, query="", *args, token="default", timeout=120):
        return self.get("/v1/vms" + query, "-X", "POST", "-T", str(path), *args, token=token, timeout=timeout)

    def post_popen(self, path, query="", *args, token="default", timeout=120):
        """A POST by curl -T path running in the background; finish() gives its Response."""
        cmd = curl_args(self.url + "/v1/vms" + query, "-X", "POST", "-T", str(path), *args,
                        token=self.token if token == "default" else token, cacert=self.cacert, timeout=timeout)
        return Upload(cmd)

    def sessions(self):
        r = self.get("/v1/sessions")
        assert r.status == 200, r
        return r.json()

    def vms(self):
        r = self.get("/v1/vms")
        assert r.status == 200, r
        return r.json()

    def metrics(self):
        r = self.get("/metrics")
        assert r.status == 200, r
        return parse_metrics(r.body)

    def healthy(self):
        r = self.get("/v1/health", token=None)
        return r.status == 200 and r.json().get("status") == "ok"

    def idle(self):
        """True once no upload is in flight and no staging is left."""
        return not self.sessions() and not staging_entries(self.state)


class Upload:
    def __init__(self, cmd, stdin=None):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(cmd, stdin=stdin or subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)

    def finish(self, timeout=120):
        out, err = self.proc.communicate(timeout=timeout)
        return parse_curl(subprocess.CompletedProcess([], self.proc.returncode, out, err),
                          time.monotonic() - self.start)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate(timeout=15)


METRIC_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\]|\\.)*",?)*\})? '
                         r'(-?[0-9.eE+-]+|NaN|[+-]Inf)$')


def parse_metrics(text):
    """Prometheus text format -> {'name{labels}': value}; asserts every line parses."""
    values = {}
    assert text.endswith("\n"), repr(text[-100:])
    for line in text.splitlines():
        if not line or line.startswith("#"):
            if line.startswith("#"):
                assert re.match(r"^# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .+$", line), line
            continue
        m = METRIC_LINE.match(line)
        assert m, f"not a Prometheus sample line: {line!r}"
        key = m.group(1) + (m.group(2) or "")
        assert key not in values, f"sample {key} twice"
        values[key] = float(m.group(3))
    return values


@pytest.fixture
def daemon_factory(tmp_path, data):
    """Makes daemons over a --bases holding the bases of pairs a and small (hard links); ends them all."""
    made = []
    bases = tmp_path / "bases"

    def add_base(name, base_dir):
        (bases / name).mkdir(parents=True)
        for f in os.listdir(base_dir):  # memory.img, disk.img, vm.json, devstate.bin
            try:
                os.link(base_dir / f, bases / name / f)
            except OSError:
                shutil.copy2(base_dir / f, bases / name / f)

    add_base("a", data.a.base)
    add_base("small", data.small.base)

    def make(*args, start=True, name="d", **kw):
        root = tmp_path / f"daemon-{name}"
        root.mkdir(exist_ok=True)
        state = kw.pop("state", None) or tmp_path / f"state-{name}"
        d = Daemon(root, bases, state=state, args=args, **kw)
        made.append(d)
        if start:
            d.start()
        return d

    make.bases = bases
    make.add_base = add_base
    yield make
    for d in made:
        if d.proc is not None and d.proc.poll() is None:
            d.proc.kill()
            d.proc.wait(timeout=15)
    # The VMs go (pytest keeps its last temporary directories); the daemons' logs stay.
    for d in made:
        shutil.rmtree(d.state, ignore_errors=True)
    shutil.rmtree(bases, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory):
    return daemon_factory()


# ---- raw sockets, where curl cannot (half-sent bodies, stalls) ----------------------------


def raw_post(port, overlay_bytes, send_bytes, content_length=None, extra_headers=""):
    """Opens a connection, sends POST /v1/vms headers (Content-Length: content_length, default
    the overlay's size) and the first send_bytes of the body; returns the open socket."""
    s = socket.create_connection(("127.0.0.1", port), timeout=30)
    length = len(overlay_bytes) if content_length is None else content_length
    s.sendall((f"POST /v1/vms HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Length: {length}\r\n"
               f"Content-Type: application/octet-stream\r\n{extra_headers}\r\n").encode())
    s.sendall(overlay_bytes[:send_bytes])
    return s


def read_response(s, timeout=30):
    s.settimeout(timeout)
    chunks = []
    while True:
        try:
            c = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not c:
            break
        chunks.append(c)
    return b"".join(chunks)
