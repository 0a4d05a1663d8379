#!/usr/bin/env python3
"""Measures vmsynth's VM capture/resume/clone times under TCG with the tiny test guest.

usage: tests/guest/measure-vm-tcg.py VMSYNTH_BIN OUT_JSON [--reps N]

Builds the guest (tests/guest/build-guest.sh), creates a 128 MiB VM (TCG), boots it,
then measures (medians of N repetitions, default 5):
  capture            `vm capture --keep-running` of the running VM (stop -> all files written)
  resume_in_place    `vm resume VMDIR` (QEMU spawn -> `cont` returned)
  resume_work        `vm resume VMDIR --work W` (prepare = qcow2 overlay + 128 MiB RAM copy)
  resume_shared      `vm resume VMDIR --work W --shared-memory` (copy-on-write RAM)
  clones_1 / clones_3  wall time to launch 1 resp. 3 --shared-memory clones at once
  first_output       from invoking `vm resume` until the guest's next serial line
Writes OUT_JSON with the commit, date, CPU model and kernel.
"""
import json, os, platform, statistics, subprocess, sys, tempfile, time

def run(args, **kw):
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw)

def vm(binary, *args):
    out = run([binary, "vm", *args, "--json"]).stdout
    return json.loads(out)

def wait_line(path, needle, timeout=120, start_size=0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with open(path, "rb") as f:
                f.seek(start_size)
                if needle.encode() in f.read():
                    return time.monotonic()
        except FileNotFoundError:
            pass
        time.sleep(0.005)
    raise RuntimeError(f"{needle!r} not seen in {path}")

def med(xs):
    return round(statistics.median(xs), 1)

def main():
    binary, out_json = os.path.abspath(sys.argv[1]), sys.argv[2]
    reps = int(sys.argv[sys.argv.index("--reps") + 1]) if "--reps" in sys.argv else 5
    src = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    t = tempfile.mkdtemp(prefix="vmsynth-perf-", dir="/tmp")
    started = []
    try:
        g = os.path.join(t, "guest")
        run(["sh", os.path.join(src, "tests/guest/build-guest.sh"), g])
        append = open(os.path.join(g, "append.txt")).read().strip() + " vmsynth.app_at=1000000"
        vmd, base = os.path.join(t, "vm"), os.path.join(t, "base")
        vm(binary, "create", "--out", vmd, "--disk", os.path.join(g, "disk.img"), "--memory-mib", "128",
           "--kernel", os.path.join(g, "vmlinuz"), "--initrd", os.path.join(g, "initrd.img"),
           "--append", append, "--accel", "tcg")
        vm(binary, "start", vmd); started.append(vmd)
        wait_line(os.path.join(vmd, "serial.log"), "COUNTER 3")
        captures = []
        for i in range(reps):
            r = vm(binary, "capture", vmd, "--out", base, "--keep-running", "--force")
            captures.append(r)
            time.sleep(0.3)
        vm(binary, "stop", vmd)

        def resume(args, work):
            serial = os.path.join(work, "serial.log")
            size = os.path.getsize(serial) if os.path.exists(serial) else 0
            t0 = time.monotonic()
            r = vm(binary, "resume", *args)
            started.append(work)
            t_line = wait_line(serial, "COUNTER", start_size=size)
            r["first_output_ms"] = (t_line - t0) * 1000
            vm(binary, "stop", work)
            return r

        in_place, work, shared = [], [], []
        for i in range(reps):
            clone = os.path.join(t, "inplace")
            run(["rm", "-rf", clone]); run(["cp", "-a", "--sparse=always", base, clone])
            in_place.append(resume([clone], clone))
            work.append(resume([base, "--work", os.path.join(t, f"w{i}")], os.path.join(t, f"w{i}")))
            shared.append(resume([base, "--work", os.path.join(t, f"s{i}"), "--shared-memory"],
                                 os.path.join(t, f"s{i}")))

        def clones(n, rep):
            dirs = [os.path.join(t, f"c{rep}-{n}-{k}") for k in range(n)]
            t0 = time.monotonic()
            procs = [subprocess.Popen([binary, "vm", "resume", base, "--work", d, "--shared-memory", "--json"],
                                      stdout=subprocess.PIPE, text=True) for d in dirs]
            results = [json.loads(p.communicate()[0]) for p in procs]
            wall = (time.monotonic() - t0) * 1000
            started.extend(dirs)
            for d in dirs:
                wait_line(os.path.join(d, "serial.log"), "COUNTER")
            all_output = (time.monotonic() - t0) * 1000
            for d in dirs:
                vm(binary, "stop", d)
            return wall, all_output, [r["resume_ms"] for r in results]

        c1 = [clones(1, i) for i in range(reps)]
        c3 = [clones(3, i) for i in range(reps)]

        def col(rs, key):
            return med([r[key] for r in rs])

        commit = run(["git", "-C", src, "rev-parse", "HEAD"], ).stdout.strip() if subprocess.run(
            ["git", "-C", src, "rev-parse", "HEAD"], capture_output=True).returncode == 0 else "uncommitted"
        cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
        result = {
            "benchmark": "vm-tcg",
            "commit": commit,
            "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "machine": {"cpu_model": cpu, "cores": os.cpu_count(), "kernel": platform.release(),
                        "qemu": run(["qemu-system-x86_64", "--version"]).stdout.splitlines()[0]},
            "guest": {"memory_mib": 128, "disk_mib": 64, "cpus": 1, "accelerator": "tcg",
                      "kernel": "Debian linux-image-cloud-amd64 + busybox initramfs"},
            "repetitions": reps,
            "unit": "ms (medians)",
            "capture": {"capture_ms": col(captures, "capture_ms"), "migrate_ms": col(captures, "migrate_ms"),
                        "copy_memory_ms": col(captures, "copy_memory_ms"),
                        "copy_disk_ms": col(captures, "copy_disk_ms"),
                        "devstate_bytes": captures[0]["devstate_bytes"]},
            "resume_in_place": {"resume_ms": col(in_place, "resume_ms"), "total_ms": col(in_place, "total_ms"),
                                "first_output_ms": col(in_place, "first_output_ms")},
            "resume_work": {"prepare_ms": col(work, "prepare_ms"), "resume_ms": col(work, "resume_ms"),
                            "total_ms": col(work, "total_ms"), "first_output_ms": col(work, "first_output_ms")},
            "resume_shared_memory": {"prepare_ms": col(shared, "prepare_ms"), "resume_ms": col(shared, "resume_ms"),
                                     "total_ms": col(shared, "total_ms"),
                                     "first_output_ms": col(shared, "first_output_ms")},
            "clones_shared_memory": {
                "1": {"launch_wall_ms": med([c[0] for c in c1]), "all_printing_ms": med([c[1] for c in c1]),
                      "resume_ms_each": med([x for c in c1 for x in c[2]])},
                "3": {"launch_wall_ms": med([c[0] for c in c3]), "all_printing_ms": med([c[1] for c in c3]),
                      "resume_ms_each": med([x for c in c3 for x in c[2]])},
            },
        }
        os.makedirs(os.path.dirname(os.path.abspath(out_json)), exist_ok=True)
        with open(out_json, "w") as f:
            json.dump(result, f, indent=2)
            f.write("\n")
        print(json.dumps(result, indent=2))
    finally:
        for d in started:
            subprocess.run([binary, "vm", "stop", d], capture_output=True)
        if not os.environ.get("VMSYNTH_KEEP_TEST_DIR"):
            subprocess.run(["rm", "-rf", t])

if __name__ == "__main__":
    main()
