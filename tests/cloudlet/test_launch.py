"""vmsynthd's launch=true path with a real guest: the tiny Debian test guest
(tests/guest/build-guest.sh) under TCG, captured as a base VM and as a launch
VM whose "app" runs; its overlay is POSTed with curl, the daemon synthesizes
and resumes it confined, and the guest's serial console shows it continuing
from the launch state. Also: vm.json fields that try to change the machine or
inject QEMU options are refused whole, and nothing is left behind.

Environment (set by ctest): VMSYNTHD, VMSYNTH_CLI, VMSYNTH_SOURCE_DIR.
One guest build + two captures per module (~1 min under TCG).
"""

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

VMSYNTHD = os.environ.get("VMSYNTHD", "")
CLI = os.environ.get("VMSYNTH_CLI", "")
SOURCE = os.environ.get("VMSYNTH_SOURCE_DIR", "")
APP_AT = 12  # guest counter value at which the "app" starts (as tests/vm/vm_e2e_test.cc)

pytestmark = pytest.mark.skipif(
    not shutil.which("qemu-system-x86_64") or not VMSYNTHD or not CLI,
    reason="needs qemu-system-x86_64 and VMSYNTHD/VMSYNTH_CLI (run through ctest -L cloudlet)",
)


def cli(*args, timeout=300):
    r = subprocess.run([CLI, *map(str, args)], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"vmsynth {' '.join(map(str, args))}: exit {r.returncode}\n{r.stdout}{r.stderr}"
    return r.stdout


def counters(serial):
    try:
        text = Path(serial).read_text(errors="replace")
    except FileNotFoundError:
        return []
    return [int(m) for m in re.findall(r"^COUNTER (\d+)\r?$", text, re.M)]


def wait_for(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.1)
    pytest.fail(f"timed out after {timeout} s waiting for {what}")


def stop_vm(d):
    subprocess.run([CLI, "vm", "stop", str(d)], capture_output=True, timeout=30)


class Guest:
    """Base VM, launch VM and their overlay, made once per module."""

    def __init__(self, root):
        self.root = root
        guest = root / "guest"
        r = subprocess.run(["sh", f"{SOURCE}/tests/guest/build-guest.sh", str(guest)], capture_output=True,
                           text=True, timeout=900)
        assert r.returncode == 0, f"building the test guest failed:\n{r.stdout}{r.stderr}"
        append = (guest / "append.txt").read_text().splitlines()[0] + f" vmsynth.app_at={APP_AT}"
        vmd, self.base, work, self.launch = root / "vm", root / "bases" / "tiny", root / "w", root / "launch"
        self.base.parent.mkdir()
        cli("vm", "create", "--out", vmd, "--disk", guest / "disk.img", "--memory-mib", 128, "--kernel",
            guest / "vmlinuz", "--initrd", guest / "initrd.img", "--append", append, "--accel", "tcg")
        try:
            cli("vm", "start", vmd)
            wait_for(lambda: len(counters(vmd / "serial.log")) >= 3, 180, "the base guest to count to 3")
            cli("vm", "capture", vmd, "--out", self.base)
        finally:
            stop_vm(vmd)
        try:
            cli("vm", "resume", self.base, "--work", work)
            wait_for(lambda: "app=running marker=present" in (work / "serial.log").read_text(errors="replace"),
                     120, "the app to start in the resumed base")
            cli("vm", "capture", work, "--out", self.launch)
        finally:
            stop_vm(work)
        self.launch_counter = counters(work / "serial.log")[-1]
        self.overlay = root / "app.vmo"
        cli("overlay", "create", "--base", self.base, "--launch", self.launch, "-o", self.overlay, "-q")
        self.vm_json = json.loads((self.launch / "vm.json").read_text())

    def overlay_with_vm_json(self, name, doc):
        """An overlay of the launch VM whose vm.json is `doc` (images hard-linked)."""
        d = self.root / f"launch-{name}"
        d.mkdir()
        for f in self.launch.iterdir():
            if f.name != "vm.json":
                os.link(f, d / f.name)
        (d / "vm.json").write_text(json.dumps(doc))
        out = self.root / f"{name}.vmo"
        cli("overlay", "create", "--base", self.base, "--launch", d, "-o", out, "-q")
        return out


@pytest.fixture(scope="module")
def guest():
    # Not under pytest's 0700 temp root: QEMU runs as an unprivileged user
    # and must reach the base's boot files and its own VM directory.
    root = Path(tempfile.mkdtemp(prefix="vmsd-launch-", dir="/tmp"))
    os.chmod(root, 0o755)
    try:
        yield Guest(root)
    finally:
        shutil.rmtree(root, ignore_errors=True)


class Daemon:
    def __init__(self, guest):
        self.state = Path(tempfile.mkdtemp(prefix="state-", dir=guest.root))
        os.chmod(self.state, 0o755)
        args = [VMSYNTHD, "--listen", "127.0.0.1:0", "--bases", str(guest.base.parent), "--state", str(self.state),
                "--no-mdns"]
        if os.geteuid() == 0:
            args += ["--qemu-user", "nobody"]
        self.log = open(self.state.parent / f"{self.state.name}.log", "w+")
        self.proc = subprocess.Popen(args, stderr=self.log, stdout=self.log)
        deadline = time.monotonic() + 60
        self.url = None
        while self.url is None and time.monotonic() < deadline:
            self.log.seek(0)
            m = re.search(r"listening on (http://\S+)", self.log.read())
            if m:
                self.url = m.group(1)
            elif self.proc.poll() is not None:
                break
            time.sleep(0.05)
        assert self.url, f"vmsynthd did not start:\n{self.output()}"

    def output(self):
        self.log.seek(0)
        return self.log.read()

    def curl(self, *args):
        r = subprocess.run(["curl", "-sS", "-w", "\n%{http_code}", *args], capture_output=True, text=True, timeout=300)
        body, _, code = r.stdout.rpartition("\n")
        return int(code or 0), (json.loads(body) if body.strip() else None)

    def post(self, overlay, query="launch=true"):
        return self.curl("-X", "POST", "-T", str(overlay), f"{self.url}/v1/vms?{query}")

    def vm_dirs(self):
        return sorted(p.name for p in (self.state / "vms").iterdir())

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for d in (self.state / "vms").glob("*"):
            if d.is_dir():
                stop_vm(d)


@pytest.fixture
def daemon(guest):
    d = Daemon(guest)
    try:
        yield d
    finally:
        d.stop()


def valid_id(name):
    return re.fullmatch(r"[0-9a-f]{32}(\.json)?", name) is not None


def proc_status(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return line.split(":", 1)[1].split()
    return []


def test_launch_true_runs_the_launch_vm_confined_and_delete_stops_it(guest, daemon):
    status, vm = daemon.post(guest.overlay)
    assert status == 201, (vm, daemon.output())
    assert vm["state"] == "running", vm
    t = vm["timings"]
    assert t["first_byte_to_running_s"] >= t["first_byte_to_synthesized_s"] > 0
    serial = Path(vm["dir"]) / "serial.log"
    # The guest prints a STATUS line (app and disk marker) every few counts.
    wait_for(lambda: "STATUS" in serial.read_text(errors="replace") if serial.exists() else False, 90,
             "the synthesized guest to print its status")
    c = counters(serial)
    assert c[0] == guest.launch_counter + 1, f"must continue the launch VM's counter: {c[:5]}"
    text = serial.read_text(errors="replace")
    assert "VMSYNTH-GUEST BOOT" not in text, "resumed, not booted"
    assert "app=running marker=present" in text, "the app and the file it wrote on disk must be there"

    pid = vm["launch"]["pid"]
    assert proc_status(pid, "Seccomp") == ["2"], "QEMU must run under its seccomp sandbox"
    if os.geteuid() == 0:
        assert proc_status(pid, "Uid")[0] == "65534", "QEMU must run as --qemu-user (nobody)"
    code, live = daemon.curl(f"{daemon.url}/v1/vms/{vm['id']}")
    assert code == 200 and live["qemu"]["running"] is True and live["qemu"]["pid"] == pid, live

    code, _ = daemon.curl("-X", "DELETE", f"{daemon.url}/v1/vms/{vm['id']}")
    assert code == 204
    wait_for(lambda: not Path(f"/proc/{pid}").exists() or proc_status(pid, "State")[0] == "Z", 30,
             "QEMU to exit after DELETE")
    assert vm["id"] not in daemon.vm_dirs()


def mutated(doc, path, value):
    d = copy.deepcopy(doc)
    node = d
    for k in path[:-1]:
        node = node[k]
    node[path[-1]] = value(node[path[-1]]) if callable(value) else value
    return d


# (name, path in vm.json, new value or a function of the old one)
ATTEMPTS = [
    ("machine-type-comma", ("machine", "type"), lambda v: v + ",usb=on"),
    ("machine-type-other", ("machine", "type"), "q35"),
    ("cpu-model-comma", ("machine", "cpu_model"), lambda v: v + ",+vmx"),
    ("cpu-model-newline", ("machine", "cpu_model"), lambda v: v + "\n-device"),
    ("cpu-model-host", ("machine", "cpu_model"), "host"),
    ("memory", ("machine", "memory_mib"), lambda v: v * 2),
    ("cpus", ("machine", "cpus"), 8),
    ("accelerator", ("machine", "accelerator"), "kvm,kernel-irqchip=off"),
    ("append-extra", ("boot", "append"), lambda v: v + " init=/bin/sh"),
    ("append-newline", ("boot", "append"), lambda v: v + "\n-monitor stdio"),
    ("kernel-hash", ("boot", "kernel", "sha256"), "0" * 64),
    ("kernel-file", ("boot", "kernel", "file"), "../../../etc/passwd"),
    ("disk-file", ("run", "disk_file"), "../../../../etc/shadow"),
    ("disk-format", ("run", "disk_format"), "qcow2"),
    ("memory-file", ("run", "memory_file"), "/dev/mem"),
    ("memory-file-equals", ("run", "memory_file"), "memory.img,share=off"),
]


@pytest.mark.parametrize("name,path,value", ATTEMPTS, ids=[a[0] for a in ATTEMPTS])
def test_vm_json_that_changes_the_machine_or_injects_options_is_refused(guest, daemon, name, path, value):
    overlay = guest.overlay_with_vm_json(name, mutated(guest.vm_json, path, value))
    status, body = daemon.post(overlay)
    assert status == 400, (status, body)
    assert body["error"]["code"] == "refused", body
    assert path[-1] in body["error"]["message"], f"the message must name the field: {body}"
    # Removed VM directories are renamed aside at once and freed in the background.
    assert not any(valid_id(n) for n in daemon.vm_dirs()), daemon.vm_dirs()
    wait_for(lambda: daemon.vm_dirs() == [], 30, "a refused VM to leave nothing in the state directory")
    code, vms = daemon.curl(f"{daemon.url}/v1/vms")
    assert code == 200 and vms == []


def test_the_origin_of_a_boot_file_is_never_used(guest, daemon):
    """An origin path in vm.json names a host file; the daemon must take the
    base's boot file (by hash) and never open the path."""
    overlay = guest.overlay_with_vm_json("origin", mutated(guest.vm_json, ("boot", "kernel", "origin"), "/etc/shadow"))
    status, vm = daemon.post(overlay)
    assert status == 201 and vm["state"] == "running", (vm, daemon.output())
    cmdline = Path(f"/proc/{vm['launch']['pid']}/cmdline").read_bytes().split(b"\0")
    assert b"/etc/shadow" not in cmdline
    assert any(a.startswith(str(guest.base).encode()) or a.endswith(b"/kernel") for a in cmdline), cmdline
    code, _ = daemon.curl("-X", "DELETE", f"{daemon.url}/v1/vms/{vm['id']}")
    assert code == 204
