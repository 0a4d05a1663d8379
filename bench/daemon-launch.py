#!/usr/bin/python3
"""First overlay byte -> running guest: the daemon (vmsynthd, POST /v1/vms?launch=true)
against `vmsynth synthesize --launch` (issue #14).

bench/daemon-e2e.py stops at "synthesized" (gen-pair VMs cannot be launched).
This script makes a launchable pair from the tiny test guest
(tests/guest/build-guest.sh) the way tests/cloudlet/test_launch.py does:
`vm create --accel tcg`, boot, capture at COUNTER 3 -> base; resume the base,
wait for "app=running marker=present", capture -> launch; `overlay create`.
Cached in --data (reused when complete).

Then, interleaved (N repetitions each, the order alternating per repetition,
one untimed warm-up of each path first):
  daemon  vmsynthd --listen 127.0.0.1:0 --no-mdns --qemu-user nobody;
          curl -X POST -T app.vmo URL/v1/vms?launch=true -> the response's
          timings.first_byte_to_running_s, first_byte_to_synthesized_s,
          launch.resume_ms; then DELETE /v1/vms/ID (untimed)
  cli     vmsynth synthesize --base B --overlay tcp://127.0.0.1:PORT --launch
          --json -q (we listen, it connects, we send the overlay and close) ->
          seconds.since_first_byte, launch.first_byte_to_running_ms,
          launch.resume_ms; then `vmsynth vm stop DIR`, rm -rf DIR (untimed)
After every launch (untimed) the guest's serial console must show it
counting on from the launch VM's counter. Unshaped loopback: the overlay is
small. The daemon's QEMU is confined (seccomp sandbox, user nobody, cgroup),
the CLI's is not: the difference is confinement + HTTP together.

Root only (QEMU as nobody). Every VM and the daemon are stopped in finally
blocks (`vm stop`, SIGTERM, SIGKILL as a last resort).

Usage: bench/daemon-launch.py [--build build] [--data DIR] [--out FILE] [--reps N]
"""
import argparse
import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
APP_AT = 12  # guest counter at which the "app" starts (as tests/cloudlet/test_launch.py)


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def run(*cmd, timeout=300):
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))}: exit {r.returncode}\n{r.stdout}{r.stderr}")
    return r.stdout


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def counters(serial):
    return [int(m) for m in re.findall(r"^COUNTER (\d+)\r?$", read(serial), re.M)]


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.1)


def loadavg():
    return [float(x) for x in read("/proc/loadavg").split()[:3]]


def median(v):
    return statistics.median(v) if v else None


class Bench:
    def __init__(self, a):
        self.a = a
        self.cli = os.path.join(a.build, "cli", "vmsynth")
        self.vmsynthd = os.path.join(a.build, "cloudlet", "vmsynthd")
        self.running = set()  # VM directories that may have a QEMU
        self.daemon = None
        self.left = []

    def stop_vm(self, d):
        subprocess.run([self.cli, "vm", "stop", str(d)], capture_output=True, timeout=60)
        self.running.discard(d)

    # -------------------------------------------------------------- the pair --
    def make_pair(self):
        """base (bases/tiny), launch and app.vmo in --data, as test_launch.py's Guest."""
        d = self.a.data
        info_path = os.path.join(d, "pair.json")
        if os.path.exists(info_path):
            log(f"reusing the pair in {d}")
            return json.load(open(info_path))
        t0 = time.monotonic()
        for sub in ("vm", "bases", "w", "launch", "app.vmo"):
            p = os.path.join(d, sub)
            shutil.rmtree(p, ignore_errors=True) if os.path.isdir(p) else (os.path.exists(p) and os.unlink(p))
        os.makedirs(os.path.join(d, "bases"))
        guest, vmd, base = os.path.join(d, "guest"), os.path.join(d, "vm"), os.path.join(d, "bases", "tiny")
        work, launch, overlay = os.path.join(d, "w"), os.path.join(d, "launch"), os.path.join(d, "app.vmo")
        log("building the test guest (tests/guest/build-guest.sh)")
        run("sh", os.path.join(here, "tests", "guest", "build-guest.sh"), guest, timeout=900)
        append = read(os.path.join(guest, "append.txt")).splitlines()[0] + f" vmsynth.app_at={APP_AT}"
        run(self.cli, "vm", "create", "--out", vmd, "--disk", os.path.join(guest, "disk.img"), "--memory-mib", 128,
            "--kernel", os.path.join(guest, "vmlinuz"), "--initrd", os.path.join(guest, "initrd.img"),
            "--append", append, "--accel", "tcg")
        log("booting the base (TCG) until COUNTER 3, capturing it")
        try:
            self.running.add(vmd)
            run(self.cli, "vm", "start", vmd)
            wait_for(lambda: len(counters(os.path.join(vmd, "serial.log"))) >= 3, 180, "the base to count to 3")
            run(self.cli, "vm", "capture", vmd, "--out", base)
        finally:
            self.stop_vm(vmd)
        log("resuming the base until the app runs, capturing the launch VM")
        try:
            self.running.add(work)
            run(self.cli, "vm", "resume", base, "--work", work)
            wait_for(lambda: "app=running marker=present" in read(os.path.join(work, "serial.log")), 120,
                     "the app to start in the resumed base")
            run(self.cli, "vm", "capture", work, "--out", launch)
        finally:
            self.stop_vm(work)
        run(self.cli, "overlay", "create", "--base", base, "--launch", launch, "-o", overlay, "-q")
        info = {"base": base, "bases_dir": os.path.dirname(base), "launch": launch, "overlay": overlay,
                "overlay_bytes": os.path.getsize(overlay), "launch_counter": counters(os.path.join(work, "serial.log"))[-1],
                "memory_mib": 128, "accel": "tcg", "app_at": APP_AT, "made_in_s": round(time.monotonic() - t0, 1)}
        json.dump(info, open(info_path, "w"), indent=1)
        return info

    # -------------------------------------------------------------- the paths --
    def start_daemon(self):
        state = os.path.join(self.a.data, "state")
        shutil.rmtree(state, ignore_errors=True)
        os.makedirs(state)
        self.daemon_log = os.path.join(self.a.data, "vmsynthd.log")
        logf = open(self.daemon_log, "w")
        self.daemon = subprocess.Popen([self.vmsynthd, "--listen", "127.0.0.1:0", "--bases", self.pair["bases_dir"],
                                        "--state", state, "--no-mdns", "--qemu-user", "nobody"],
                                       stdout=logf, stderr=subprocess.STDOUT)
        self.state = state
        deadline = time.monotonic() + 60
        while True:
            m = re.search(r"listening on (http://\S+)", read(self.daemon_log))
            if m:
                self.url = m.group(1)
                return
            if self.daemon.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vmsynthd did not start:\n{read(self.daemon_log)}")
            time.sleep(0.05)

    def stop_daemon(self):
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()
        vms = os.path.join(self.state, "vms")
        for e in os.listdir(vms) if os.path.isdir(vms) else []:
            if os.path.isdir(os.path.join(vms, e)):
                self.stop_vm(os.path.join(vms, e))

    def curl(self, *args):
        r = subprocess.run(["curl", "-sS", "-w", "\n%{http_code} %{time_total}", *args], capture_output=True,
                           text=True, timeout=300)
        body, _, tail = r.stdout.rpartition("\n")
        code, total = (tail.split() + ["0", "0"])[:2]
        return int(code), float(total), (json.loads(body) if body.strip() else None), r.stderr

    def run_daemon(self):
        code, total, vm, err = self.curl("-X", "POST", "-T", self.pair["overlay"], f"{self.url}/v1/vms?launch=true")
        if code != 201 or not vm or vm.get("state") != "running":
            raise RuntimeError(f"POST /v1/vms?launch=true: {code} {vm} {err}\n{read(self.daemon_log)[-2000:]}")
        self.running.add(vm["dir"])
        try:
            # Right after the response: did the cgroup's CPU limit throttle QEMU while it resumed?
            m = re.search(r"(/sys/fs/cgroup/cpu\S*/vm-[0-9a-f]+)", vm["launch"].get("limits", ""))
            cpu_stat = dict(l.split() for l in read(m.group(1) + "/cpu.stat").splitlines()) if m else {}
            alive = self.check_alive(vm["dir"])
        finally:
            code, _, _, err = self.curl("-X", "DELETE", f"{self.url}/v1/vms/{vm['id']}")
            if code != 204:
                raise RuntimeError(f"DELETE /v1/vms/{vm['id']}: {code} {err}")
            self.running.discard(vm["dir"])
            # The daemon frees a deleted VM in the background: let it finish before the next run.
            vms = os.path.join(self.state, "vms")
            wait_for(lambda: not os.listdir(vms), 60, f"{vms} to be empty after DELETE")
        t, ln = vm["timings"], vm["launch"]
        return {"first_byte_to_running_ms": t["first_byte_to_running_s"] * 1000,
                "first_byte_to_synthesized_ms": t["first_byte_to_synthesized_s"] * 1000,
                "resume_ms": ln["resume_ms"], "sender_ms": total * 1000, "timings": t,
                "launch": {k: ln.get(k) for k in ("accelerator", "sandboxed", "uid", "limits")},
                "cgroup_cpu_stat_at_response": cpu_stat, **alive}

    def run_cli(self):
        out = os.path.join(self.a.data, "out-cli")
        shutil.rmtree(out, ignore_errors=True)
        lsock = socket.socket()
        lsock.bind(("127.0.0.1", 0))
        lsock.listen(1)
        port = lsock.getsockname()[1]
        stdout_path = out + ".json"
        self.running.add(out)
        # stdout to a file, not a pipe: nothing the detached QEMU might hold can keep us waiting.
        with open(stdout_path, "w") as so:
            p = subprocess.Popen([self.cli, "synthesize", "--base", self.pair["base"], "--overlay",
                                  f"tcp://127.0.0.1:{port}", "--out", out, "--launch", "--json", "-q"],
                                 stdout=so, stderr=subprocess.PIPE, text=True)
        try:
            lsock.settimeout(60)
            conn, _ = lsock.accept()
            lsock.close()
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            t0 = time.perf_counter()
            with open(self.pair["overlay"], "rb") as f:
                conn.sendfile(f)
            conn.close()
            _, stderr = p.communicate(timeout=300)
            t1 = time.perf_counter()
            if p.returncode != 0:
                raise RuntimeError(f"vmsynth synthesize --launch: exit {p.returncode}\n{stderr}")
            j = json.load(open(stdout_path))
            ln = j.get("launch", {})
            if "first_byte_to_running_ms" not in ln:
                raise RuntimeError(f"not launched: {ln} {stderr}")
            alive = self.check_alive(out)
            uid = next((int(l.split()[1]) for l in read(f"/proc/{ln['pid']}/status").splitlines()
                        if l.startswith("Uid:")), None)
            return {"first_byte_to_running_ms": ln["first_byte_to_running_ms"],
                    "first_byte_to_synthesized_ms": j["seconds"]["since_first_byte"] * 1000,
                    "resume_ms": ln["resume_ms"], "sender_ms": (t1 - t0) * 1000, "seconds": j["seconds"],
                    "launch": {"accelerator": ln.get("accelerator"), "uid": uid}, **alive}
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
            self.stop_vm(out)
            shutil.rmtree(out, ignore_errors=True)

    def check_alive(self, d):
        """Untimed: the guest must count on from the launch VM's counter (resumed, not booted)."""
        serial = os.path.join(d, "serial.log")
        wait_for(lambda: counters(serial), 30, f"a COUNTER line in {serial}")
        c = counters(serial)[0]
        if c != self.pair["launch_counter"] + 1 or "VMSYNTH-GUEST BOOT" in read(serial):
            raise RuntimeError(f"{serial}: first COUNTER {c}, launch counter {self.pair['launch_counter']}")
        return {"first_counter": c}

    # ------------------------------------------------------------- the run --
    def measure(self, res):
        paths = {"daemon": self.run_daemon, "cli": self.run_cli}
        log("warm-up: one untimed run of each path")
        for f in paths.values():
            f()
        for rep in range(self.a.reps):
            order = ["daemon", "cli"] if rep % 2 == 0 else ["cli", "daemon"]
            for name in order:
                subprocess.run(["sync"])
                la = loadavg()
                r = paths[name]()
                r["rep"], r["loadavg"] = rep, la
                res["samples"][name].append(r)
                log(f"rep {rep + 1}/{self.a.reps} {name:6}: first byte -> running {r['first_byte_to_running_ms']:7.1f}"
                    f" ms (synthesized {r['first_byte_to_synthesized_ms']:6.1f}, resume {r['resume_ms']:6.1f}; "
                    f"load {la[0]:.1f})")

    def cleanup(self):
        try:
            self.stop_daemon()
        finally:
            for d in list(self.running):
                self.stop_vm(d)
            self.left = our_qemus(self.a.data)  # what `vm stop` left: the last resort
            for pid in self.left:
                os.kill(pid, signal.SIGKILL)
                log(f"SIGKILLed QEMU {pid}")


def our_qemus(data):
    """Live QEMU processes whose command line names a file under `data`."""
    pids = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            cmd, stat = read(f"/proc/{e}/cmdline"), read(f"/proc/{e}/stat").rpartition(")")[2].split()[:1]
            if "qemu-system" in cmd and data + "/" in cmd and stat not in ([], ["Z"], ["X"]):
                pids.append(int(e))
    return pids


def machine():
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "?")
    mem = next(int(l.split()[1]) for l in open("/proc/meminfo") if l.startswith("MemTotal:"))
    return {"cpu": cpu, "cores": os.cpu_count(), "memory_gib": round(mem / 2**20, 1), "kernel": platform.release(),
            "qemu": run("qemu-system-x86_64", "--version").splitlines()[0], "python": platform.python_version()}


def summarize(s):
    out = {}
    for key in ("first_byte_to_running_ms", "first_byte_to_synthesized_ms", "resume_ms", "sender_ms"):
        d, c = [x[key] for x in s["daemon"]], [x[key] for x in s["cli"]]
        if not d or not c:
            continue
        paired = [x - y for x, y in zip(d, c)]
        out[key] = {"daemon_median": median(d), "cli_median": median(c), "daemon_minus_cli": median(d) - median(c),
                    "daemon_over_cli": median(d) / median(c), "median_paired_daemon_minus_cli": median(paired),
                    "daemon_range": [min(d), max(d)], "cli_range": [min(c), max(c)], "n": min(len(d), len(c))}
    # Launch (after synthesized) = running - synthesized: what the launch itself adds on each path.
    for name in ("daemon", "cli"):
        v = [x["first_byte_to_running_ms"] - x["first_byte_to_synthesized_ms"] for x in s[name]]
        out[f"{name}_synthesized_to_running_median_ms"] = median(v)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default=os.path.join(here, "build"))
    ap.add_argument("--data", default="/work/bench-data/daemon-launch")
    ap.add_argument("--out", default=None, help="default perf-data/daemon-launch-<date>.json")
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    a.build, a.data = os.path.abspath(a.build), os.path.abspath(a.data)
    a.out = os.path.abspath(a.out or os.path.join(here, "perf-data", f"daemon-launch-{datetime.date.today()}.json"))
    if os.geteuid() != 0:
        sys.exit("needs root (vmsynthd --qemu-user nobody)")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # unwind through the finally blocks
    os.umask(0o022)
    # QEMU runs as nobody: every directory down to the files must be searchable.
    os.makedirs(a.data, exist_ok=True)
    os.chmod(a.data, 0o755)
    p = os.path.dirname(a.data)
    while p != "/":
        if os.stat(p).st_mode & 0o005 != 0o005:
            sys.exit(f"{p} is not readable and searchable by others: QEMU (as nobody) could not reach --data")
        p = os.path.dirname(p)
    b = Bench(a)
    commit = run("git", "-C", here, "rev-parse", "HEAD").strip()
    dirty = run("git", "-C", here, "status", "--porcelain", "--untracked-files=no").strip() != ""
    t0 = time.monotonic()
    res = {"benchmark": "bench/daemon-launch.py", "issue": 14, "commit": commit, "git_dirty": dirty,
           "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "loadavg_start": loadavg(), "reps": a.reps, "link": "unshaped loopback",
           "samples": {"daemon": [], "cli": []}}
    failed = None
    try:
        b.pair = b.make_pair()
        res["pair"] = b.pair
        log(f"overlay {b.pair['overlay_bytes']} bytes; starting vmsynthd")
        b.start_daemon()
        b.measure(res)
    except Exception as e:  # noqa: BLE001 - the samples so far are still written
        failed = res["error"] = f"{type(e).__name__}: {e}"[:4000]
    finally:
        b.cleanup()
    res["loadavg_end"] = loadavg()
    res["qemu_left_after_vm_stop"] = b.left
    res["seconds"] = round(time.monotonic() - t0, 1)
    res["summary"] = summarize(res["samples"])
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1)
        f.write("\n")
    for k, v in res["summary"].items():
        if isinstance(v, dict):
            log(f"{k}: daemon {v['daemon_median']:.1f}, cli {v['cli_median']:.1f}, daemon - cli "
                f"{v['daemon_minus_cli']:+.1f} ms (x{v['daemon_over_cli']:.2f}; paired {v['median_paired_daemon_minus_cli']:+.1f})")
    log(f"wrote {a.out}")
    if failed:
        sys.exit(f"failed: {failed}")


if __name__ == "__main__":
    main()
