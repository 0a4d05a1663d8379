#!/usr/bin/python3
"""The daemon (vmsynthd) against the command line tool, end to end.

Two questions (docs/performance.md, "The daemon"):
  1. What does receiving through the daemon's HTTP API cost against
     `vmsynth synthesize --overlay tcp://...`, on the same pairs, behind the
     same rate-limited link (38 / 100 / 1000 Mbit/s)? Target: the daemon adds
     <= 50 ms. Measured twice per run:
       receiver  the daemon's timings.first_byte_to_synthesized_s; the CLI's
                 seconds.since_first_byte (--json), both from the first overlay
                 byte the receiver reads to the synthesized, synced VM
       sender    wall clock from the sender's first byte (the HTTP request
                 line; the CLI's first overlay byte) to the daemon's complete
                 response / the CLI's exit
     Only "synthesized": gen-pair VMs have no machine description, so they
     cannot be launched (first byte -> running is not measured; no guests
     are built here).
  2. Concurrency on unshaped loopback: 1 / 2 / 4 / 8 uploads at once
     (aggregate overlay MB/s, per-session time, daemon peak RSS), a separate
     prober process timing GET /v1/health on a new connection every 10 ms;
     then 64 clients looping GET /v1/health (new connection per request, and
     keep-alive) while 8 uploads run: did every request succeed, latencies.

The link: a network namespace of its own (`ip netns add`, root) whose lo is
shaped by `tc qdisc ... tbf`; the daemon, the CLI and every sender run in it,
so both paths cross the same shaped link. Without root/ip/tc the fallback is a
sender-side token bucket (Python, 64 KiB burst) used identically by both paths;
the result file says which ("limiter"). The namespace (and with it the qdisc),
the daemon and every process started are removed on exit.

Repetitions are interleaved (for each rate: rep by rep, pair by pair, the
order of daemon/CLI alternating); untimed before each run: the previous
output is deleted (DELETE /v1/vms/ID, rm -rf) and `sync` runs. One untimed
warm-up of each path per pair first (page cache, base-id cache).
Results: every sample, medians and differences, with the commit and the
machine, in perf-data/daemon-e2e-<date>.json.

Usage: bench/daemon-e2e.py [--build build] [--data DIR] [--out FILE] [--quick]
         [--reps N] [--rates 38,100,1000] [--pairs 5:32:128,...] [--limiter auto|netns|sender]
"""
import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# In our own namespace the daemon's default port is free; on the host (the sender-side
# fallback) the outer process picks a free one and passes it down.
DAEMON_PORT = int(os.environ.get("VMSYNTH_BENCH_DAEMON_PORT", "0")) or 8470

# name:memory MiB:disk MiB (typical profile); the overlay sizes they give
# (about 5, 20 and 60 MB) are measured and recorded, not assumed.
DEFAULT_PAIRS = "5mb:28:112,20mb:104:416,60mb:320:1280"
QUICK_PAIRS = "5mb:28:112"


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(here, "build"))
    ap.add_argument("--data", default="/work/bench-data/daemon-e2e", help="pairs, overlays, outputs (kept: pairs)")
    ap.add_argument("--out", default=None, help="result JSON (default perf-data/daemon-e2e-<date>.json)")
    ap.add_argument("--quick", action="store_true", help="one rate, the small pair, 2 reps, 1/2 clients: <= 2 min")
    ap.add_argument("--reps", type=int, default=None, help="repetitions per (rate, pair, path); default 5 (quick 2)")
    ap.add_argument("--conc-reps", type=int, default=None, help="repetitions per concurrency level; default 3")
    ap.add_argument("--rates", default=None, help="Mbit/s, comma-separated; default 38,100,1000 (quick 100)")
    ap.add_argument("--pairs", default=None, help=f"name:memMiB:diskMiB,...; default {DEFAULT_PAIRS}")
    ap.add_argument("--conc-pair", default=None, help="pair for the concurrency runs (default: the 20mb one)")
    ap.add_argument("--concurrency", default=None, help="default 1,2,4,8 (quick 1,2)")
    ap.add_argument("--hammer-clients", type=int, default=64)
    ap.add_argument("--hammer-seconds", type=float, default=None, help="per mode; default 12 (quick 4)")
    ap.add_argument("--limiter", choices=["auto", "netns", "sender"], default="auto")
    ap.add_argument("--outputs-on", choices=["tmpfs", "disk"], default="tmpfs",
                    help="synthesized VMs (daemon state, CLI --out): a tmpfs mounted in the namespace's private "
                         "mount namespace (default with the netns limiter), or --data's file system")
    ap.add_argument("--daemon-arg", action="append", default=[], metavar="ARG",
                    help="one more vmsynthd argument (repeatable), e.g. --daemon-arg=--synthesis-nice=0")
    ap.add_argument("--no-syscalls", action="store_true", help="skip the perf syscall count of one upload per path")
    ap.add_argument("--markdown", default="", metavar="RESULT.json", help="print a result's tables (docs/performance.md)")
    # internal modes
    ap.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--netns", default="", help=argparse.SUPPRESS)
    ap.add_argument("--probe", default="", help=argparse.SUPPRESS)
    ap.add_argument("--hammer", default="", help=argparse.SUPPRESS)
    ap.add_argument("--probe-interval", type=float, default=0.01, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    a.reps = a.reps if a.reps is not None else (2 if a.quick else 5)
    a.conc_reps = a.conc_reps if a.conc_reps is not None else (1 if a.quick else 3)
    a.rates = [float(x) for x in (a.rates or ("100" if a.quick else "38,100,1000")).split(",")]
    a.pairs = [(p.split(":")[0], int(p.split(":")[1]), int(p.split(":")[2]))
               for p in (a.pairs or (QUICK_PAIRS if a.quick else DEFAULT_PAIRS)).split(",")]
    a.concurrency = [int(x) for x in (a.concurrency or ("1,2" if a.quick else "1,2,4,8")).split(",")]
    a.hammer_seconds = a.hammer_seconds if a.hammer_seconds is not None else (4.0 if a.quick else 12.0)
    if a.conc_pair is None:
        names = [p[0] for p in a.pairs]
        a.conc_pair = "20mb" if "20mb" in names else names[0]
    if a.out is None:
        a.out = os.path.join(here, "perf-data", f"daemon-e2e-{datetime.date.today()}.json")
    a.out = os.path.abspath(a.out)
    a.build = os.path.abspath(a.build)
    a.data = os.path.abspath(a.data)
    return a


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def median(v):
    return statistics.median(v) if v else None


def pct(v, p):
    """The p-th percentile (nearest rank) of v."""
    if not v:
        return None
    s = sorted(v)
    k = max(0, min(len(s) - 1, int(round(p / 100.0 * len(s) + 0.5)) - 1))
    return s[k]


def loadavg():
    return float(open("/proc/loadavg").read().split()[0])


# ---------------------------------------------------------------- senders --

class Pacer:
    """Sender-side token bucket (only with --limiter sender): rate bytes/s, 64 KiB burst."""

    def __init__(self, rate_bytes):
        self.rate = rate_bytes
        self.burst = 64 * 1024
        self.tokens = self.burst
        self.t = time.monotonic()

    def wait(self, n):
        while True:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.t) * self.rate)
            self.t = now
            if self.tokens >= n:
                self.tokens -= n
                return
            time.sleep((n - self.tokens) / self.rate)


def send_body(sock, path, pacer):
    """Sends the file; with a pacer in 64 KiB pieces at its rate, else sendfile."""
    with open(path, "rb") as f:
        if pacer is None:
            sock.sendfile(f)
            return
        while True:
            b = f.read(64 * 1024)
            if not b:
                return
            pacer.wait(len(b))
            sock.sendall(b)


def post_overlay(path, pacer=None, port=DAEMON_PORT):
    """POST /v1/vms with the file; returns the sender's timings and the response."""
    size = os.path.getsize(path)
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    head = (f"POST /v1/vms HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/octet-stream\r\n"
            f"Content-Length: {size}\r\nConnection: close\r\n\r\n").encode()
    t0 = time.perf_counter()
    s.sendall(head)
    send_body(s, path, pacer)
    t_sent = time.perf_counter()
    chunks = []
    while True:
        b = s.recv(65536)
        if not b:
            break
        chunks.append(b)
    t1 = time.perf_counter()
    s.close()
    raw = b"".join(chunks).decode(errors="replace")
    status_line, _, rest = raw.partition("\r\n")
    status = int(status_line.split()[1]) if status_line.startswith("HTTP/") else 0
    body = rest.partition("\r\n\r\n")[2]
    try:
        resp = json.loads(body)
    except ValueError:
        resp = {"unparsed": body[:500]}
    return {"status": status, "sender_s": t1 - t0, "sender_send_s": t_sent - t0, "t0": t0, "t1": t1,
            "response": resp}


def http_request(method, path, port=DAEMON_PORT, timeout=30):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    c.request(method, path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


# ------------------------------------------------------------- internal modes --

def probe_main(a):
    """A separate process: GET /v1/health on a new connection every interval until stdin closes or SIGTERM."""
    port = int(a.probe)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    out = []
    while not stop.is_set():
        t = time.perf_counter()
        wall = time.time()
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            c.request("GET", "/v1/health")
            r = c.getresponse()
            r.read()
            c.close()
            ok = r.status == 200
        except Exception:  # noqa: BLE001 - a failed probe is a result
            ok = False
        dt = time.perf_counter() - t
        out.append([round(wall, 4), round(dt * 1000, 3), ok])
        rest = a.probe_interval - dt
        if rest > 0:
            stop.wait(rest)
    json.dump(out, sys.stdout)


def hammer_main(a):
    """A separate process: `clients` threads looping GET /v1/health until SIGTERM.

    mode new: a new connection for every request; keepalive: one HTTP/1.1
    connection per client, reopened whenever the server closes it."""
    port, clients, mode = a.hammer.split(":")
    port, clients = int(port), int(clients)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    lat = [[] for _ in range(clients)]
    errors = [[] for _ in range(clients)]
    barrier = threading.Barrier(clients)

    def client(i):
        barrier.wait()
        conn = None
        while not stop.is_set():
            t = time.perf_counter()
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.request("GET", "/v1/health")
                r = conn.getresponse()
                r.read()
                if r.status != 200:
                    errors[i].append(f"status {r.status}")
                if mode == "new" or r.getheader("Connection", "").lower() == "close":
                    conn.close()
                    conn = None
                lat[i].append(round((time.perf_counter() - t) * 1000, 3))
            except Exception as e:  # noqa: BLE001 - a failed request is a result
                errors[i].append(f"{type(e).__name__}: {e}"[:200])
                if conn is not None:
                    conn.close()
                conn = None

    ts = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    json.dump({"latency_ms": lat, "errors": errors}, sys.stdout)


# ----------------------------------------------------------------- helpers --

class Daemon:
    def __init__(self, build, bases, state, logpath, extra=()):
        self.logf = open(logpath, "w")
        self.proc = subprocess.Popen(
            [os.path.join(build, "cloudlet", "vmsynthd"), "--listen", f"127.0.0.1:{DAEMON_PORT}", "--bases", bases,
             "--state", state, "--no-mdns", "--max-sessions", "16", *extra],
            stdout=self.logf, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while True:
            if self.proc.poll() is not None:
                raise SystemExit(f"vmsynthd exited with {self.proc.returncode}; see {logpath}")
            try:
                if http_request("GET", "/v1/health", timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise SystemExit(f"vmsynthd did not answer /v1/health within 120 s; see {logpath}")
            time.sleep(0.05)
        self.pid = self.proc.pid
        self.slow = []

    def status(self, key):
        for line in open(f"/proc/{self.pid}/status"):
            if line.startswith(key + ":"):
                v = line.split()[1]
                return int(v)
        return None

    def memory(self):
        """VmRSS split into anonymous, file-backed and shared memory (KiB), and the thread count."""
        return {k: self.status(k) for k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM", "Threads")}

    def reset_hwm(self):
        # Writing 5 to clear_refs resets VmHWM to the current RSS (proc(5)).
        try:
            with open(f"/proc/{self.pid}/clear_refs", "w") as f:
                f.write("5")
            return True
        except OSError:
            return False

    def stacks(self):
        """Where each daemon thread is blocked: /proc/PID/task/*/{comm,wchan,stack}."""
        out = {}
        for tid in os.listdir(f"/proc/{self.pid}/task"):
            t = f"/proc/{self.pid}/task/{tid}"
            try:
                out[tid] = {"comm": open(t + "/comm").read().strip(), "wchan": open(t + "/wchan").read().strip(),
                            "stack": open(t + "/stack").read().splitlines()[:12]}
            except OSError:
                pass
        return out

    def managed(self, method, path):
        """A management request (untimed); one slower than 5 s is recorded with the daemon's thread stacks."""
        box = {}

        def go():
            try:
                box["r"] = http_request(method, path, timeout=300)
            except Exception as e:  # noqa: BLE001
                box["e"] = e

        t0 = time.monotonic()
        th = threading.Thread(target=go)
        th.start()
        th.join(5.0)
        if th.is_alive():
            st = self.stacks()
            th.join()
            self.slow.append({"request": f"{method} {path}", "seconds": time.monotonic() - t0,
                              "at_unix": time.time(), "loadavg": open("/proc/loadavg").read().split()[:3],
                              "stacks_after_5s": {k: v for k, v in st.items() if v["wchan"] not in ("0",)}})
            log(f"slow daemon request: {method} {path} took {time.monotonic() - t0:.1f} s")
        if "e" in box:
            raise box["e"]
        return box["r"]

    def delete_all(self):
        st, body = self.managed("GET", "/v1/vms")
        for r in json.loads(body):
            self.managed("DELETE", "/v1/vms/" + r["id"])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()


class RssSampler(threading.Thread):
    def __init__(self, daemon, interval=0.02):
        super().__init__(daemon=True)
        self.d, self.interval, self.stop_ev = daemon, interval, threading.Event()
        self.max_rss_kib, self.max_threads = 0, 0

    def run(self):
        while not self.stop_ev.is_set():
            try:
                self.max_rss_kib = max(self.max_rss_kib, self.d.status("VmRSS") or 0)
                self.max_threads = max(self.max_threads, self.d.status("Threads") or 0)
            except OSError:
                pass
            self.stop_ev.wait(self.interval)

    def finish(self):
        self.stop_ev.set()
        self.join()


SYNC = [True]  # False when the outputs are on a tmpfs: nothing of ours to write back


def sync():
    if SYNC[0]:
        subprocess.run(["sync"], check=True)


def commit_of():
    r = subprocess.run(["git", "-C", here, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", here, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip() != ""
    return r.stdout.strip(), dirty


def machine(data):
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    fs = subprocess.run(["stat", "-f", "-c", "%T", data], capture_output=True, text=True).stdout.strip()
    mnt = subprocess.run(["findmnt", "-n", "-o", "FSTYPE,SOURCE,OPTIONS", "-T", data], capture_output=True,
                         text=True).stdout.strip()
    return {"cpus": os.cpu_count(), "cpu": cpu, "kernel": platform.release(),
            "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "data_dir": data, "filesystem": fs, "mount": mnt, "python": platform.python_version()}


def ensure_pairs(a, cli):
    """Generates the pairs (cached in --data) and their overlays; returns {name: info}."""
    pairs = {}
    bases = os.path.join(a.data, "bases")
    os.makedirs(bases, exist_ok=True)
    os.makedirs(os.path.join(a.data, "pairs"), exist_ok=True)
    for name, mem, disk in a.pairs:
        d = os.path.join(a.data, "pairs", f"{name}-{mem}m-{disk}m")
        overlay = d + ".vmo"
        if not os.path.exists(overlay):
            log(f"generating pair {name}: gen-pair --memory-mib {mem} --disk-mib {disk}, overlay create")
            subprocess.run([cli, "gen-pair", "--out", d, "--memory-mib", str(mem), "--disk-mib", str(disk), "--force",
                            "-q"], check=True, stdout=subprocess.DEVNULL)
            subprocess.run([cli, "overlay", "create", "--base", os.path.join(d, "base"), "--launch",
                            os.path.join(d, "launch"), "-o", overlay + ".tmp", "--force", "-q"], check=True,
                           stdout=subprocess.DEVNULL)
            os.rename(overlay + ".tmp", overlay)
        link = os.path.join(bases, name)
        if os.path.islink(link) and os.readlink(link) != os.path.join(d, "base"):
            os.unlink(link)
        if not os.path.lexists(link):
            os.symlink(os.path.join(d, "base"), link)
        sizes = lambda sub: {f: os.path.getsize(os.path.join(d, sub, f)) for f in ("memory.img", "disk.img")}
        pairs[name] = {"memory_mib": mem, "disk_mib": disk, "profile": "typical", "dir": d, "overlay": overlay,
                       "overlay_bytes": os.path.getsize(overlay), "base": os.path.join(d, "base"),
                       "launch_image_bytes": sizes("launch")}
    # Only this run's pairs are bases of the daemon.
    for e in os.listdir(bases):
        if e not in pairs:
            os.unlink(os.path.join(bases, e))
    return pairs


def run_cli(cli, base, overlay, out, env, pacer=None, perf_events=None):
    """One `vmsynth synthesize --overlay tcp://` run; we listen, it connects, we send."""
    shutil.rmtree(out, ignore_errors=True)
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    port = lsock.getsockname()[1]
    cmd = [cli, "synthesize", "--base", base, "--overlay", f"tcp://127.0.0.1:{port}", "--out", out, "--json", "-q"]
    perf_out = None
    if perf_events:
        perf_out = out + ".perf"
        cmd = ["perf", "stat", "-x,", "-o", perf_out, "-e", ",".join(perf_events), "--"] + cmd
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    lsock.settimeout(60)
    conn, _ = lsock.accept()
    lsock.close()
    conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = time.perf_counter()
    send_body(conn, overlay, pacer)
    t_sent = time.perf_counter()
    conn.close()  # the end of the overlay
    stdout, stderr = p.communicate(timeout=600)
    t1 = time.perf_counter()
    if p.returncode != 0:
        raise RuntimeError(f"vmsynth synthesize failed ({p.returncode}): {stderr.decode()[-2000:]}")
    j = json.loads(stdout)
    r = {"sender_s": t1 - t0, "sender_send_s": t_sent - t0, "receiver_s": j["seconds"]["since_first_byte"],
         "cli_seconds": j["seconds"], "overlay_bytes": j.get("overlay_bytes")}
    if perf_out:
        r["perf"] = parse_perf(open(perf_out).read())
    return r


def parse_perf(text):
    counts = {}
    for line in text.splitlines():
        f = line.split(",")
        if len(f) >= 3 and not line.startswith("#"):
            try:
                counts[f[2]] = int(f[0])
            except ValueError:
                counts[f[2]] = f[0]
    return counts


def run_daemon(d, overlay, pacer=None):
    r = post_overlay(overlay, pacer)
    if r["status"] != 201:
        raise RuntimeError(f"POST /v1/vms: {r['status']} {json.dumps(r['response'])[:1000]}")
    t = r["response"]["timings"]
    return {"sender_s": r["sender_s"], "sender_send_s": r["sender_send_s"],
            "receiver_s": t["first_byte_to_synthesized_s"], "daemon_timings": t,
            "overlay_bytes": r["response"].get("overlay_bytes"), "id": r["response"]["id"]}


# ------------------------------------------------------------------ shaping --

class Link:
    """Sets the rate of the shaped loopback in our own network namespace, or a sender pacer."""

    def __init__(self, kind, netns):
        self.kind, self.netns = kind, netns
        self.rate = None
        if kind == "netns":
            me = subprocess.run(["ip", "netns", "identify", str(os.getpid())], capture_output=True,
                                text=True).stdout.strip()
            if me != netns or not netns.startswith("vmsynth-bench-"):
                raise SystemExit(f"refusing to shape: this process is in network namespace '{me}', not {netns}")

    def set(self, mbit):
        self.rate = mbit
        if self.kind != "netns":
            return
        if mbit is None:
            subprocess.run(["tc", "qdisc", "del", "dev", "lo", "root"], stderr=subprocess.DEVNULL)
            return
        rate_bytes = mbit * 1e6 / 8
        burst = max(128 * 1024, int(rate_bytes * 0.002))  # >= 2 GSO packets of lo's 64 KiB MTU; 2 ms of data
        subprocess.run(["tc", "qdisc", "replace", "dev", "lo", "root", "tbf", "rate", f"{mbit:g}mbit", "burst",
                        str(burst), "latency", "50ms"], check=True)

    def describe(self):
        if self.kind == "netns":
            return subprocess.run(["tc", "qdisc", "show", "dev", "lo"], capture_output=True, text=True).stdout.strip()
        return f"sender token bucket {self.rate} Mbit/s, 64 KiB burst" if self.rate else "none"

    def pacer(self):
        if self.kind == "sender" and self.rate is not None:
            return Pacer(self.rate * 1e6 / 8)
        return None


def link_check(link, nbytes):
    """Raw TCP through the link: what rate does it really give?"""
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(1)
    got = [0, 0.0, 0.0]

    def sink():
        c, _ = lsock.accept()
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            if got[0] == 0:
                got[1] = time.perf_counter()
            got[0] += len(b)
        got[2] = time.perf_counter()
        c.close()

    t = threading.Thread(target=sink)
    t.start()
    s = socket.create_connection(lsock.getsockname())
    pacer = link.pacer()
    buf = os.urandom(64 * 1024)
    sent = 0
    t0 = time.perf_counter()
    while sent < nbytes:
        if pacer:
            pacer.wait(len(buf))
        s.sendall(buf)
        sent += len(buf)
    s.close()
    t.join()
    lsock.close()
    secs = got[2] - t0
    return {"bytes": got[0], "seconds": secs, "mbit_s": got[0] * 8 / secs / 1e6}


# ------------------------------------------------------------- experiments --

def warm_up(a, cli, env, d, pairs):
    outdir = os.path.join(a.outputs, "out-cli")
    log("warm-up: one untimed run of each path per pair")
    for name, p in pairs.items():
        run_cli(cli, p["base"], p["overlay"], outdir, env)
        shutil.rmtree(outdir, ignore_errors=True)
        run_daemon(d, p["overlay"])
        d.delete_all()


def part1(a, cli, env, d, link, pairs, res):
    """Daemon vs CLI per (rate, pair); repetition-major, so that a cut-short run has every rate."""
    outdir = os.path.join(a.outputs, "out-cli")
    samples = res["per_link"]
    for rep in range(a.reps):
        for rate in a.rates:
            link.set(rate)
            key = f"{rate:g}mbit"
            if key not in samples:
                chk = link_check(link, int(min(16 << 20, rate * 1e6 / 8 * 1.5)))
                samples[key] = {"rate_mbit": rate, "qdisc": link.describe(), "link_check": chk,
                                "pairs": {name: {"daemon": [], "cli": []} for name in pairs}}
                log(f"link {key}: {link.describe()}; raw TCP check {chk['mbit_s']:.1f} Mbit/s")
            for i, (name, p) in enumerate(pairs.items()):
                order = ["daemon", "cli"] if (rep + i) % 2 == 0 else ["cli", "daemon"]
                for path in order:
                    d.delete_all()
                    shutil.rmtree(outdir, ignore_errors=True)
                    sync()
                    la = loadavg()
                    if path == "daemon":
                        r = run_daemon(d, p["overlay"], link.pacer())
                    else:
                        r = run_cli(cli, p["base"], p["overlay"], outdir, env, link.pacer())
                    r["rep"], r["loadavg_1m"] = rep, la
                    samples[key]["pairs"][name][path].append(r)
                    log(f"{key} {name} rep {rep + 1}/{a.reps} {path:6}: receiver {r['receiver_s'] * 1000:8.1f} ms, "
                        f"sender {r['sender_s'] * 1000:8.1f} ms (load {la:.1f})")
                write_partial(a, res)
    d.delete_all()
    shutil.rmtree(outdir, ignore_errors=True)
    link.set(None)


def summarize_part1(res):
    out = {}
    for key, L in res["per_link"].items():
        out[key] = {}
        for name, s in L["pairs"].items():
            e = {}
            for view in ("receiver", "sender"):
                dv = [x[f"{view}_s"] for x in s["daemon"]]
                cv = [x[f"{view}_s"] for x in s["cli"]]
                if not dv or not cv:
                    continue
                paired = [x[f"{view}_s"] - y[f"{view}_s"] for x, y in zip(s["daemon"], s["cli"])]
                e[view] = {"daemon_median_ms": median(dv) * 1000, "cli_median_ms": median(cv) * 1000,
                           "daemon_minus_cli_ms": (median(dv) - median(cv)) * 1000,
                           "median_paired_daemon_minus_cli_ms": median(paired) * 1000,
                           "daemon_range_ms": [min(dv) * 1000, max(dv) * 1000],
                           "cli_range_ms": [min(cv) * 1000, max(cv) * 1000], "n": min(len(dv), len(cv))}
            tails = [x["daemon_timings"]["last_byte_to_synthesized_s"] for x in s["daemon"]]
            if tails:
                e["daemon_last_byte_to_synthesized_median_ms"] = median(tails) * 1000
            out[key][name] = e
    return out


def run_concurrent(d, overlay, n):
    barrier = threading.Barrier(n)

    def one(_):
        barrier.wait()
        r = post_overlay(overlay)
        return r

    with concurrent.futures.ThreadPoolExecutor(n) as ex:
        rs = list(ex.map(one, range(n)))
    return rs


def start_probe(a, port=DAEMON_PORT):
    return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--probe", str(port), "--probe-interval",
                             str(a.probe_interval)], stdout=subprocess.PIPE)


def stop_probe(p):
    p.send_signal(signal.SIGTERM)
    out, _ = p.communicate(timeout=60)
    return json.loads(out)


def probe_stats(samples, window):
    """The prober's samples that started inside window [w0, w1] (wall clock)."""
    v = [x for x in samples if window[0] <= x[0] <= window[1]]
    lat = [x[1] for x in v]
    return {"n": len(v), "failed": sum(1 for x in v if not x[2]), "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99),
            "max_ms": max(lat) if lat else None, "samples": v}


TCP_COUNTERS = ("ListenOverflows", "ListenDrops", "TCPSynRetrans", "TCPTimeouts")


def tcp_counters():
    """TcpExt counters of this network namespace (/proc/net/netstat)."""
    lines = [l.split() for l in open("/proc/net/netstat") if l.startswith("TcpExt:")]
    if len(lines) < 2:
        return {}
    vals = dict(zip(lines[0][1:], lines[1][1:]))
    return {k: int(vals[k]) for k in TCP_COUNTERS if k in vals}


def counters_delta(before, after):
    return {k: after[k] - before.get(k, 0) for k in after}


def listen_backlog():
    r = subprocess.run(["ss", "-Hltn", f"sport = :{DAEMON_PORT}"], capture_output=True, text=True)
    f = r.stdout.split()
    return {"ss": r.stdout.strip(), "backlog": int(f[2]) if len(f) >= 3 and f[2].isdigit() else None}


def part2(a, d, pairs, res):
    p = pairs[a.conc_pair]
    ob = p["overlay_bytes"]
    conc = res["concurrency"]
    conc["pair"] = a.conc_pair
    conc["overlay_bytes"] = ob
    # Idle baseline of the prober (which runs through parts 2 and 3).
    w0 = time.time()
    time.sleep(3.0 if not a.quick else 1.5)
    conc["health_idle_window"] = [w0, time.time()]
    conc["runs"] = {str(n): [] for n in a.concurrency}
    for rep in range(a.conc_reps):
        for n in (a.concurrency if rep % 2 == 0 else list(reversed(a.concurrency))):
            d.delete_all()
            sync()
            la = loadavg()
            hwm_ok = d.reset_hwm()
            rss0 = d.status("VmRSS")
            sampler = RssSampler(d)
            sampler.start()
            w0 = time.time()
            rs = run_concurrent(d, p["overlay"], n)
            w1 = time.time()
            sampler.finish()
            hwm = d.status("VmHWM")
            bad = [r for r in rs if r["status"] != 201]
            span = max(r["t1"] for r in rs) - min(r["t0"] for r in rs)
            run = {"rep": rep, "clients": n, "loadavg_1m": la, "failed": len(bad),
                   "errors": [r["response"] for r in bad][:4],
                   "wall_s": span, "aggregate_mb_s": n * ob / span / 1e6,
                   "session_sender_s": [r["sender_s"] for r in rs],
                   "session_receiver_s": [r["response"].get("timings", {}).get("first_byte_to_synthesized_s")
                                          for r in rs],
                   "rss_before_kib": rss0, "vm_hwm_kib": hwm if hwm_ok else None, "memory_after": d.memory(),
                   "sampled_max_rss_kib": sampler.max_rss_kib, "max_threads": sampler.max_threads,
                   "window": [w0, w1]}
            conc["runs"][str(n)].append(run)
            log(f"{n} clients rep {rep + 1}: {run['aggregate_mb_s']:.1f} MB/s aggregate, session median "
                f"{median(run['session_sender_s']):.2f} s max {max(run['session_sender_s']):.2f} s, HWM "
                f"{(hwm or 0) / 1024:.0f} MiB, failed {len(bad)}")
            write_partial(a, res)
    d.delete_all()


def summarize_part2(res):
    out = {}
    for n, runs in res["concurrency"].get("runs", {}).items():
        if not runs:
            continue
        sess = [x for r in runs for x in r["session_sender_s"]]
        hl = [x[1] for r in runs for x in r["health"]["samples"]]  # filled by attach_health
        out[n] = {"aggregate_mb_s_median": median([r["aggregate_mb_s"] for r in runs]),
                  "session_s_median": median(sess), "session_s_max": max(sess),
                  "vm_hwm_mib_max": max((r["vm_hwm_kib"] or 0) for r in runs) / 1024,
                  "sampled_rss_mib_max": max(r["sampled_max_rss_kib"] for r in runs) / 1024,
                  "failed": sum(r["failed"] for r in runs),
                  "health_p50_ms": pct(hl, 50), "health_p99_ms": pct(hl, 99), "health_max_ms": max(hl) if hl else None,
                  "health_probes": len(hl), "health_failed": sum(r["health"]["failed"] for r in runs)}
    return out


def part3(a, d, pairs, res):
    """64 clients looping GET /v1/health plus 8 uploads."""
    p = pairs[a.conc_pair]
    h = res["hammer"]
    h["clients"] = a.hammer_clients
    h["uploads"] = 8
    h["pair"] = a.conc_pair
    for mode in ("new", "keepalive"):
        d.delete_all()
        sync()
        d.reset_hwm()
        sampler = RssSampler(d)
        sampler.start()
        # 4 processes of clients/4 threads each: one Python process's GIL would be the bottleneck.
        nproc = 4 if a.hammer_clients >= 4 else 1
        per = [a.hammer_clients // nproc + (1 if i < a.hammer_clients % nproc else 0) for i in range(nproc)]
        c0 = tcp_counters()
        w0 = time.time()
        hams = [subprocess.Popen([sys.executable, os.path.abspath(__file__), "--hammer", f"{DAEMON_PORT}:{k}:{mode}"],
                                 stdout=subprocess.PIPE) for k in per]
        time.sleep(1.0)
        t_up = time.perf_counter()
        rs = run_concurrent(d, p["overlay"], 8)
        t_up = time.perf_counter() - t_up
        rest = a.hammer_seconds - 1.0 - t_up
        if rest > 0:
            time.sleep(rest)
        for hp in hams:
            hp.send_signal(signal.SIGTERM)
        lat, errs = [], []
        for hp in hams:
            out, _ = hp.communicate(timeout=120)
            v = json.loads(out)
            for l in v["latency_ms"]:
                lat.extend(l)
            for e in v["errors"]:
                errs.extend(e)
        w1 = time.time()
        tcp = counters_delta(c0, tcp_counters())
        sampler.finish()
        bad = [r for r in rs if r["status"] != 201]
        e = {"mode": mode, "requests_ok": len(lat), "requests_failed": len(errs),
             "error_kinds": sorted({x.split(":")[0] for x in errs}), "errors_sample": errs[:10],
             "latency_p50_ms": pct(lat, 50), "latency_p99_ms": pct(lat, 99), "latency_max_ms": max(lat) if lat else None,
             "over_1s": sum(1 for x in lat if x >= 1000), "over_3s": sum(1 for x in lat if x >= 3000),
             "tcp_counters_delta": tcp, "listen": listen_backlog(),
             "latency_ms_all": lat, "uploads_failed": len(bad), "upload_errors": [r["response"] for r in bad][:4],
             "upload_sender_s": [r["sender_s"] for r in rs], "uploads_wall_s": t_up,
             "upload_receiver_s": [r["response"].get("timings", {}).get("first_byte_to_synthesized_s") for r in rs],
             "vm_hwm_kib": d.status("VmHWM"), "max_threads": sampler.max_threads, "window": [w0, w1],
             "memory_after": d.memory()}
        h[mode] = e
        log(f"64 clients ({mode}): {len(lat)} ok, {len(errs)} failed {e['error_kinds']}, p50 {e['latency_p50_ms']} "
            f"p99 {e['latency_p99_ms']} max {e['latency_max_ms']} ms, >=1 s: {e['over_1s']}; uploads failed "
            f"{len(bad)}, median {median(e['upload_sender_s']):.2f} s; TCP {tcp}")
        write_partial(a, res)
    d.delete_all()


def syscalls(a, cli, env, d, pairs, res):
    """perf stat syscall counts of one upload per path (unshaped): how big are the receiver's reads?"""
    ev = ["syscalls:sys_enter_recvfrom", "syscalls:sys_enter_read", "context-switches", "task-clock"]
    if shutil.which("perf") is None or subprocess.run(["perf", "stat", "-e", ev[0], "true"],
                                                      capture_output=True).returncode != 0:
        res["syscalls"] = {"skipped": "perf with syscall tracepoints not available"}
        return
    name = a.conc_pair
    p = pairs[name]
    outdir = os.path.join(a.outputs, "out-cli")
    d.delete_all()
    sync()
    po = os.path.join(a.data, "daemon.perf")
    perf = subprocess.Popen(["perf", "stat", "-x,", "-o", po, "-e", ",".join(ev), "-p", str(d.pid)])
    time.sleep(0.5)
    r = run_daemon(d, p["overlay"])
    perf.send_signal(signal.SIGINT)
    perf.wait(30)
    dc = parse_perf(open(po).read())
    d.delete_all()
    sync()
    c = run_cli(cli, p["base"], p["overlay"], outdir, env, perf_events=ev)
    shutil.rmtree(outdir, ignore_errors=True)
    cc = c["perf"]
    ob = p["overlay_bytes"]

    def per_call(counts, k):
        n = counts.get(k)
        return ob / n if isinstance(n, int) and n > 0 else None

    res["syscalls"] = {
        "pair": name, "overlay_bytes": ob, "events": ev,
        "daemon": {"counts": dc, "overlay_bytes_per_recvfrom": per_call(dc, ev[0]), "receiver_s": r["receiver_s"],
                   "note": "whole daemon process during one upload (plus 0.5 s idle before)"},
        "cli": {"counts": cc, "overlay_bytes_per_read": per_call(cc, ev[1]), "receiver_s": c["receiver_s"],
                "note": "whole CLI process; its reads include the base images' and files', not only the socket's"}}
    log(f"syscalls: daemon {dc.get(ev[0])} recvfrom ({per_call(dc, ev[0]) or 0:.0f} overlay B/call), "
        f"{dc.get('context-switches')} cs; CLI {cc.get(ev[1])} read, {cc.get('context-switches')} cs")


def attach_health(res, samples):
    conc = res["concurrency"]
    if "health_idle_window" in conc:
        conc["health_idle"] = probe_stats(samples, conc["health_idle_window"])
    for runs in conc.get("runs", {}).values():
        for r in runs:
            r["health"] = probe_stats(samples, r["window"])
    for mode in ("new", "keepalive"):
        if mode in res["hammer"]:
            res["hammer"][mode]["prober"] = probe_stats(samples, res["hammer"][mode]["window"])
    res["health_prober_all"] = samples


def write_partial(a, res):
    tmp = a.out + ".partial"
    try:
        res["summary_so_far"] = {"per_link": summarize_part1(res)}
    except (KeyError, ValueError, TypeError):
        pass
    res["slow_management_requests"] = res.get("slow_management_requests", [])
    with open(tmp, "w") as f:
        json.dump(res, f, indent=1)


def inner_main(a):
    cli = os.path.join(a.build, "cli", "vmsynth")
    outputs = a.data
    if a.netns and a.outputs_on == "tmpfs":
        # `ip netns exec` runs us in a private mount namespace (slave of the host's): this tmpfs is
        # invisible outside and goes away with the last process in it.
        outputs = os.path.join(a.data, "tmpfs-outputs")
        os.makedirs(outputs, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16g,mode=0700", "vmsynth-bench", outputs], check=True)
    a.outputs = outputs
    SYNC[0] = outputs == a.data
    env = dict(os.environ, VMSYNTH_CACHE_DIR=os.path.join(a.data, "cli-cache"))
    pairs = ensure_pairs(a, cli)
    for n, p in pairs.items():
        log(f"pair {n}: {p['memory_mib']} MiB + {p['disk_mib']} MiB, overlay {p['overlay_bytes'] / 1e6:.1f} MB")
    link = Link("netns" if a.netns else "sender", a.netns)
    commit, dirty = commit_of()
    t_start = time.time()
    res = {"benchmark": "daemon-e2e", "date": str(datetime.date.today()), "commit": commit, "git_dirty": dirty,
           "machine": machine(a.data), "quick": a.quick,
           "outputs": {"where": a.outputs_on if a.outputs != a.data else "disk", "dir": a.outputs,
                       "filesystem": machine(a.outputs)["filesystem"], "mount": machine(a.outputs)["mount"],
                       "why": "the synthesized VMs; the bases and overlays stay in --data (page cache warm)"},
           "limiter": {"kind": link.kind, "netns": a.netns or None,
                       "how": ("tc tbf on lo of a private network namespace; daemon, CLI and senders all inside"
                               if link.kind == "netns" else
                               "sender-side token bucket (64 KiB burst), the same code for both paths")},
           "config": {"reps": a.reps, "conc_reps": a.conc_reps, "rates_mbit": a.rates,
                      "concurrency": a.concurrency, "hammer_clients": a.hammer_clients,
                      "hammer_seconds": a.hammer_seconds, "probe_interval_s": a.probe_interval,
                      "threads": "library default (0: one per core) on both paths",
                      "cli": "vmsynth synthesize --overlay tcp://127.0.0.1:PORT --json -q (we listen, it connects)",
                      "daemon": "vmsynthd --no-mdns --max-sessions 16 " + " ".join(a.daemon_arg) +
                                "; POST /v1/vms, Content-Length, raw socket"},
           "launch": "not measured: gen-pair VMs have no launchable machine description (first byte -> "
                     "synthesized only)",
           "pairs": pairs, "loadavg_start": open("/proc/loadavg").read().split()[:3],
           "per_link": {}, "concurrency": {}, "hammer": {}}
    state = os.path.join(a.outputs, "state")
    shutil.rmtree(state, ignore_errors=True)
    d = Daemon(a.build, os.path.join(a.data, "bases"), state, os.path.join(a.data, "vmsynthd.log"), a.daemon_arg)
    res["daemon_rss_idle_kib"] = d.status("VmRSS")
    res["daemon_memory_at_start"] = d.memory()
    try:
        link.set(None)
        warm_up(a, cli, env, d, pairs)
        # Concurrency first (unshaped, minutes), then the long shaped comparison.
        prober = start_probe(a)
        try:
            part2(a, d, pairs, res)
            part3(a, d, pairs, res)
        finally:
            samples = stop_probe(prober)
        attach_health(res, samples)
        if not a.no_syscalls:
            syscalls(a, cli, env, d, pairs, res)
        part1(a, cli, env, d, link, pairs, res)
        link.set(None)
        res["daemon_memory_at_end"] = d.memory()
    finally:
        link.set(None)
        d.stop()
        shutil.rmtree(os.path.join(a.outputs, "out-cli"), ignore_errors=True)
        shutil.rmtree(state, ignore_errors=True)
        if a.outputs != a.data:
            subprocess.run(["umount", a.outputs])
    res["slow_management_requests"] = d.slow
    res["daemon_log_tail"] = open(os.path.join(a.data, "vmsynthd.log")).read().splitlines()[-20:]
    res["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    res["elapsed_s"] = time.time() - t_start
    res["summary"] = {"per_link": summarize_part1(res), "concurrency": summarize_part2(res)}
    if "health_idle" in res["concurrency"]:
        hi = res["concurrency"]["health_idle"]
        res["summary"]["health_idle"] = {k: hi[k] for k in ("n", "failed", "p50_ms", "p99_ms", "max_ms")}
    for mode in ("new", "keepalive"):
        if mode in res["hammer"]:
            e = res["hammer"][mode]
            res["summary"].setdefault("hammer", {})[mode] = {
                k: e[k] for k in ("requests_ok", "requests_failed", "error_kinds", "latency_p50_ms", "latency_p99_ms",
                                  "latency_max_ms", "over_1s", "over_3s", "uploads_failed", "tcp_counters_delta")}
            res["summary"]["hammer"][mode]["prober_p50_ms"] = e["prober"]["p50_ms"]
            res["summary"]["hammer"][mode]["prober_p99_ms"] = e["prober"]["p99_ms"]
            res["summary"]["hammer"][mode]["upload_sender_s_median"] = median(e["upload_sender_s"])
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    try:
        os.unlink(a.out + ".partial")
    except OSError:
        pass
    print(json.dumps(res["summary"], indent=2))
    log(f"wrote {a.out} ({res['elapsed_s']:.0f} s)")


def netns_usable():
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"):
        return False
    return True


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run_child(cmd, host_port=False):
    """Runs the measuring process; on our SIGTERM/^C it gets SIGTERM and 30 s to clean up."""
    env = dict(os.environ, VMSYNTH_BENCH_DAEMON_PORT=str(free_port())) if host_port else None
    child = subprocess.Popen(cmd, env=env)
    try:
        return child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                pass


def outer_main(a):
    cli = os.path.join(a.build, "cli", "vmsynth")
    for f in (cli, os.path.join(a.build, "cloudlet", "vmsynthd")):
        if not os.access(f, os.X_OK):
            sys.exit(f"{f} is missing: build first (scripts/build)")
    os.makedirs(a.data, exist_ok=True)
    kind = a.limiter
    if kind == "auto":
        kind = "netns" if netns_usable() else "sender"
    argv = [sys.executable, os.path.abspath(__file__), "--inner"] + [x for x in sys.argv[1:] if x != "--inner"]
    if kind == "sender":
        log("limiter: sender-side token bucket (no root, ip or tc)")
        return run_child(argv, host_port=True)
    ns = f"vmsynth-bench-{os.getpid()}"
    try:
        subprocess.run(["ip", "netns", "add", ns], check=True)
        subprocess.run(["ip", "-n", ns, "link", "set", "lo", "up"], check=True)
        # The shaped link must really work here; else fall back rather than measure nothing.
        t = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "tbf", "rate",
                            "100mbit", "burst", "131072", "latency", "50ms"], capture_output=True, text=True)
        if t.returncode != 0:
            if a.limiter == "netns":
                sys.exit(f"tc in the namespace failed: {t.stderr}")
            log(f"tc failed ({t.stderr.strip()}); limiter: sender-side token bucket")
            subprocess.run(["ip", "netns", "del", ns])
            ns = None
            return run_child(argv, host_port=True)
        subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", "lo", "root"], check=True)
        log(f"limiter: tc tbf on lo in network namespace {ns}")
        return run_child(["ip", "netns", "exec", ns] + argv + ["--netns", ns])
    finally:
        if ns:
            # Whatever still runs in our namespace was started by us: end it, then remove the namespace.
            pids = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
            for pid in pids:
                try:
                    os.kill(int(pid), signal.SIGKILL)
                except (OSError, ValueError):
                    pass
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)


def markdown_main(path):
    r = json.load(open(path))
    sm = r["summary"]
    f = lambda x, d=0: "–" if x is None else f"{x:.{d}f}"
    print(f"Result: `{os.path.relpath(path, here)}` (commit {r['commit']}{', dirty tree' if r['git_dirty'] else ''}; "
          f"limiter: {r['limiter']['kind']}; {r['config']['reps']} reps; load average "
          f"{r['loadavg_start'][0]} at start, {r['loadavg_end'][0]} at end).\n")
    print("| link | pair (overlay) | receiver: daemon | CLI | daemon − CLI | paired median | sender: daemon | CLI "
          "| daemon − CLI | paired median |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for key, L in sm["per_link"].items():
        chk = r["per_link"][key]["link_check"]["mbit_s"]
        for name, e in L.items():
            ob = r["pairs"][name]["overlay_bytes"] / 1e6
            rc, sd = e["receiver"], e["sender"]
            print(f"| {key} ({chk:.0f}) | {name} ({ob:.1f} MB) | {f(rc['daemon_median_ms'])} | {f(rc['cli_median_ms'])} "
                  f"| **{f(rc['daemon_minus_cli_ms'])}** | {f(rc['median_paired_daemon_minus_cli_ms'])} "
                  f"| {f(sd['daemon_median_ms'])} | {f(sd['cli_median_ms'])} | **{f(sd['daemon_minus_cli_ms'])}** "
                  f"| {f(sd['median_paired_daemon_minus_cli_ms'])} |")
    print()
    c = sm["concurrency"]
    ob = r["concurrency"]["overlay_bytes"] / 1e6
    print(f"Concurrency (pair {r['concurrency']['pair']}, {ob:.1f} MB overlay, unshaped loopback):\n")
    print("| clients | aggregate MB/s | session median s | session max s | daemon peak RSS MiB (VmHWM) "
          "| /v1/health p50 ms | p99 ms | max ms | probes | failures |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    hi = sm.get("health_idle")
    if hi:
        print(f"| 0 (idle) | – | – | – | {r['daemon_rss_idle_kib'] / 1024:.0f} (VmRSS) | {f(hi['p50_ms'], 1)} "
              f"| {f(hi['p99_ms'], 1)} | {f(hi['max_ms'], 1)} | {hi['n']} | {hi['failed']} |")
    for n, e in c.items():
        print(f"| {n} | {f(e['aggregate_mb_s_median'], 1)} | {f(e['session_s_median'], 2)} | {f(e['session_s_max'], 2)} "
              f"| {f(e['vm_hwm_mib_max'])} | {f(e['health_p50_ms'], 1)} | {f(e['health_p99_ms'], 1)} "
              f"| {f(e['health_max_ms'], 1)} | {e['health_probes']} | {e['failed'] + e['health_failed']} |")
    print()
    h = sm.get("hammer", {})
    if h:
        print(f"{r['hammer']['clients']} clients looping GET /v1/health + 8 uploads ({r['hammer']['pair']}):\n")
        print("| mode | requests ok | failed | p50 ms | p99 ms | max ms | ≥ 1 s | ListenOverflows | SYN retransmits "
              "| prober p99 ms | uploads failed | upload median s |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|")
        for mode, e in h.items():
            t = e["tcp_counters_delta"]
            print(f"| {mode} | {e['requests_ok']} | {e['requests_failed']} | {f(e['latency_p50_ms'], 1)} "
                  f"| {f(e['latency_p99_ms'], 0)} | {f(e['latency_max_ms'], 0)} | {e['over_1s']} "
                  f"| {t.get('ListenOverflows')} | {t.get('TCPSynRetrans')} | {f(e['prober_p99_ms'], 0)} "
                  f"| {e['uploads_failed']} | {f(e['upload_sender_s_median'], 2)} |")


def main():
    a = parse_args()
    if a.markdown:
        return markdown_main(a.markdown)
    # SIGTERM unwinds like ^C: the finally blocks remove the namespace and end the daemon.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143)) if not (a.probe or a.hammer) else None
    if a.probe:
        return probe_main(a)
    if a.hammer:
        return hammer_main(a)
    if a.inner:
        return inner_main(a)
    return outer_main(a)


if __name__ == "__main__":
    sys.exit(main())
