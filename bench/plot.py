#!/usr/bin/python3
"""Renders PNG plots from a bench/run result (perf-data/e2e-<date>.json).

  e2e-<date>-overlay-size.png     overlay size, vmsynth vs peers, per pair
  e2e-<date>-synthesis-time.png   synthesis time (median), vmsynth vs peers, per pair
  e2e-<date>-threads.png          vmsynth parallel speedup over serial vs threads
  e2e-<date>-stages.png           per-stage time of vmsynth create and synthesize (--json)
  e2e-<date>-time-to-vm.png       time until the launch VM is ready vs link speed (full-VM pairs:
                                  dashed = until it runs, i.e. + the measured resume)
  --markdown                      the tables of docs/performance.md; full-VM pairs also get a
                                  "time to a running launch VM" table (resume phase)

Usage: bench/plot.py perf-data/e2e-DATE.json [--out-dir perf-data]
Bars of a contender that refused or timed out are absent and labelled.
Every contender has one colour in every plot (CONTENDER_COLORS below).
"""
import argparse
import hashlib
import json
import math
import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

PEERS = ["vmsynth-default", "vmsynth-max", "elijah", "zstd", "casync"]

# One colour per contender, the same in every plot of every result file (issue #12),
# keyed by the names bench/run writes. Distinct contenders never share a colour.
CONTENDER_COLORS = {
    "vmsynth-default": "#1f77b4",     # blue         overlay create, default level
    "vmsynth-max": "#6baed6",         # light blue   overlay create --level max
    "vmsynth": "#08306b",             # navy         streamed synthesize (time to VM)
    "vmsynth-serial": "#17becf",      # cyan         synthesize --engine serial
    "vmsynth-parallel-1": "#ffbb78",  # light orange synthesize, parallel engine, 1 thread
    "vmsynth-parallel-2": "#ff7f0e",  # orange       synthesize, parallel engine, 2 threads
    "elijah": "#d62728",              # red          xdelta3 + xz
    "zstd": "#2ca02c",                # green        zstd --patch-from
    "casync": "#9467bd",              # purple       casync
    "floor": "#7f7f7f",               # grey         cp of the launch images (the floor)
}
# A contender the table does not know (vmsynth-parallel-4 on a bigger machine, a new
# peer) gets one of these, chosen by a stable hash of its name: the same colour in every
# plot and every run, never one of the table's. Two unknown names may collide: give
# them entries in the table.
FALLBACK_COLORS = ["#8c564b", "#e377c2", "#bcbd22", "#7b4173", "#e7ba52", "#637939", "#c49c94", "#5254a3"]
assert not set(FALLBACK_COLORS) & set(CONTENDER_COLORS.values())
assert len(set(CONTENDER_COLORS.values())) == len(CONTENDER_COLORS)


def contender_color(name):
    if name in CONTENDER_COLORS:
        return CONTENDER_COLORS[name]
    h = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big")
    return FALLBACK_COLORS[h % len(FALLBACK_COLORS)]


# The stage bars (vmsynth --json "seconds") get colours of their own, the same stage in
# the same colour in both panels and every file, none of them a contender's.
STAGE_COLORS = {"base_id": "#8da0cb", "index": "#e78ac3", "classify": "#fc8d62", "encode": "#66c2a5",
                "clone": "#ffd92f", "apply": "#a6d854", "sync": "#e5c494", "total": "#4d4d4d"}
STAGE_FALLBACK_COLORS = ["#8dd3c7", "#bebada", "#fb8072", "#80b1d3", "#fdb462", "#fccde5"]
assert not set(STAGE_COLORS.values()) & (set(CONTENDER_COLORS.values()) | set(FALLBACK_COLORS))
assert not set(STAGE_FALLBACK_COLORS) & (set(CONTENDER_COLORS.values()) | set(FALLBACK_COLORS))


def stage_color(stage):
    if stage in STAGE_COLORS:
        return STAGE_COLORS[stage]
    h = int.from_bytes(hashlib.sha256(stage.encode()).digest()[:8], "big")
    return STAGE_FALLBACK_COLORS[h % len(STAGE_FALLBACK_COLORS)]


def legend(ax, **kw):
    """A legend with one entry per label (bars and points are drawn one by one, each labelled)."""
    handles, labels = ax.get_legend_handles_labels()
    seen = dict(zip(labels, handles))
    ax.legend(seen.values(), seen.keys(), **kw)


def grouped_bars(ax, pairs, names, value, label_missing):
    width = 0.8 / len(names)
    for j, n in enumerate(names):
        for i, p in enumerate(pairs):
            v = value(p, n)
            x = i + (j - (len(names) - 1) / 2) * width
            if v is None or (isinstance(v, float) and math.isnan(v)):
                ax.text(x, 0, label_missing(p, n), rotation=90, ha="center", va="bottom", fontsize=7)
                continue
            ax.bar(x, v, width, color=contender_color(n), label=n)
            ax.text(x, v, f"{v:.3g}" if v < 1000 else f"{v:.0f}", ha="center", va="bottom", fontsize=6)
    ax.set_xticks(range(len(pairs)))
    ax.set_xticklabels(pairs, fontsize=8)
    legend(ax, fontsize=7)


def missing(section):
    def f(p, n):
        c = section(p).get(n, {})
        if c.get("timed_out"):
            return "timed out"
        if c.get("refused"):
            return "refused"
        return "n/a"
    return f


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("result")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--markdown", action="store_true", help="print the tables of docs/performance.md instead")
    ap.add_argument("--merge", nargs="*", default=[],
                    help="supplementary bench/run results (e.g. peers re-run without --timeout): their peer "
                         "entries replace the main file's for the same pair, marked supplementary")
    a = ap.parse_args()
    r = json.load(open(a.result))
    for f in a.merge:
        m = json.load(open(f))
        for name, mp in m["pairs"].items():
            p = r["pairs"].get(name)
            if not p or "create" not in p or "create" not in mp:
                continue
            for sec in ("create", "synthesize"):
                for n, c in mp[sec].items():
                    if not n.startswith("vmsynth") and n != "floor":
                        p[sec][n] = dict(c, supplementary=os.path.basename(f))
            for link, l in mp["stream"]["links"].items():
                for n, c in l.items():
                    if n != "vmsynth":
                        p["stream"]["links"][link][n] = dict(c, supplementary=os.path.basename(f))
    if a.markdown:
        return markdown(r)
    out = a.out_dir or os.path.dirname(os.path.abspath(a.result))
    stem = os.path.splitext(os.path.basename(a.result))[0]
    P = {k: v for k, v in r["pairs"].items() if "create" in v}
    pairs = list(P)

    def save(fig, name):
        fig.tight_layout()
        path = os.path.join(out, f"{stem}-{name}.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        print(path)

    # Overlay size.
    fig, ax = plt.subplots(figsize=(9, 4.5))
    grouped_bars(ax, pairs, PEERS,
                 lambda p, n: (P[p]["create"].get(n, {}).get("size_bytes") or float("nan")) / 1e6,
                 missing(lambda p: P[p]["create"]))
    ax.set_ylabel("overlay / what must travel (MB)")
    ax.set_title("Overlay size (smaller is better)")
    save(fig, "overlay-size")

    # Synthesis time.
    names = sorted({n for p in pairs for n in P[p]["synthesize"]},
                   key=lambda n: (0 if n.startswith("vmsynth") else 2 if n == "floor" else 1, n))
    fig, ax = plt.subplots(figsize=(10, 4.5))
    grouped_bars(ax, pairs, names,
                 lambda p, n: P[p]["synthesize"].get(n, {}).get("median_seconds", float("nan")),
                 missing(lambda p: P[p]["create"]))
    ax.set_yscale("log")
    ax.set_ylabel("seconds (median, log scale)")
    ax.set_title("Synthesis time: base + overlay -> launch images, synced (lower is better)")
    save(fig, "synthesis-time")

    # Threads: speedup over the serial engine, for pairs where both ran.
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = 0
    for p in pairs:
        s = P[p]["synthesize"]
        serial = s.get("vmsynth-serial", {}).get("median_seconds")
        ts = sorted(int(n.rsplit("-", 1)[1]) for n in s if n.startswith("vmsynth-parallel-"))
        if not serial or not ts:
            continue
        ax.plot(ts, [serial / s[f"vmsynth-parallel-{t}"]["median_seconds"] for t in ts], marker="o", label=p)
        plotted += 1
    if plotted == 0:
        ax.text(0.5, 0.5, "not measured (needs vmsynth-serial and vmsynth-parallel-N)",
                ha="center", va="center", transform=ax.transAxes, fontsize=8)
    else:
        ax.axhline(1, color="grey", lw=0.5, label="1 = as fast as serial")
    ax.set_xlabel("threads")
    ax.set_ylabel("speedup over --engine serial")
    ax.set_title(f"vmsynth parallel synthesis ({r['machine']['cores']} cores)")
    if plotted:
        ax.legend(fontsize=7)
    save(fig, "threads")

    # Stages, from the --json of the run whose total is the median. Side by side,
    # not stacked: the parallel engine clones the base while it applies, so its
    # stages overlap and their sum exceeds the wall time ("total").
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, (phase, contender) in zip(axes, (("create", "vmsynth-default"), ("synthesize", "vmsynth-parallel-%d" % r["config"]["threads"]))):
        stages = []
        for p in pairs:
            runs = sorted((x["vmsynth_json"]["seconds"] for x in P[p][phase].get(contender, {}).get("runs", [])
                           if "vmsynth_json" in x), key=lambda secs: secs.get("total", 0.0))
            stages.append(runs[len(runs) // 2] if runs else {})
        keys = sorted({k for s in stages for k in s if k != "total"}) + ["total"]
        width = 0.8 / len(keys)
        for i, k in enumerate(keys):
            xs = [j + (i - (len(keys) - 1) / 2) * width for j in range(len(pairs))]
            ax.bar(xs, [s.get(k, 0.0) for s in stages], width, label=k if k != "total" else "total (wall)",
                   color=stage_color(k))
        ax.set_xticks(range(len(pairs)))
        ax.set_xticklabels(pairs, fontsize=7)
        ax.set_ylabel("seconds (run with the median total)")
        ax.set_title(f"{contender} stages ({phase}); stages may overlap", fontsize=10)
        ax.legend(fontsize=7)
    save(fig, "stages")

    # Time to running VM.
    fig, axes = plt.subplots(1, len(pairs), figsize=(4.5 * len(pairs), 4), squeeze=False)
    for ax, p in zip(axes[0], pairs):
        links = P[p]["stream"]["links"]
        speeds = sorted(int(m) for m in links)
        measured = []
        for n in sorted({n for l in links.values() for n in l}, key=lambda n: (n != "vmsynth", n)):
            pts = [(m, links[str(m)][n]) for m in speeds if n in links[str(m)]]
            ys = [x.get("median_seconds", x.get("seconds")) for _, x in pts]
            ax.plot([m for m, _ in pts], ys, marker="o", color=contender_color(n), label=n)
            run_ys = [x.get("running_seconds") for _, x in pts]
            if all(y is not None for y in run_ys):
                ax.plot([m for m, _ in pts], run_ys, ls="--", marker=".", color=contender_color(n),
                        label=f"{n}, running")
            measured += [(m, y) for (m, x), y in zip(pts, ys) if x.get("how", "").startswith("measured")]
        if measured:
            ax.plot(*zip(*measured), ls="none", marker="o", mfc="none", mec="black", ms=10, label="measured (circled)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(speeds)
        ax.set_xticklabels([str(m) for m in speeds])
        ax.set_xlabel("link (Mbit/s)")
        ax.set_ylabel("seconds until images ready" + (" / VM running (dashed)" if "resume" in P[p] else ""))
        ax.set_title(p, fontsize=9)
        legend(ax, fontsize=7, handlelength=3)
    save(fig, "time-to-vm")


def fmt_s(c):
    if c is None:
        return "-"
    if c.get("timed_out"):
        return f"timed out (>{c['median_seconds']:.0f} s)"
    if c.get("refused"):
        return "refused"
    reps = c.get("repetitions", len(c.get("seconds", [])))
    cpu = c.get("median_cpu_seconds")
    return (f"{c['median_seconds']:.2f}" + (f" ({cpu:.1f} cpu)" if cpu is not None else "") +
            ("" if reps >= 3 else f" [n={reps}]") + (" †" if c.get("supplementary") else ""))


def markdown(r):
    for name, p in r["pairs"].items():
        if "create" not in p:
            print(f"### {name}: failed: {p.get('error')}\n")
            continue
        img = p["images"]
        lb = sum(v["launch_bytes"] for v in img.values())
        print(f"### {name} (launch images {lb / 2**20:.0f} MiB)\n")
        print("| contender | overlay / what travels (MB) | create s, median (cpu s) | create peak RSS (MiB) |")
        print("|---|---|---|---|")
        for n, c in p["create"].items():
            size = c.get("size_bytes")
            note = "; ".join(c.get("refused", [])) if c.get("refused") else ""
            print(f"| {n} | {size / 1e6:.1f}{' †' if c.get('supplementary') else ''} |" if size else f"| {n} | - ({note[:90]}) |", end="")
            print(f" {fmt_s(c)} | {c['max_rss_kib'] / 1024:.0f} |")
        print()
        print("| synthesis | seconds, median (cpu s) | peak RSS (MiB) | output = launch |")
        print("|---|---|---|---|")
        for n, c in p["synthesize"].items():
            print(f"| {n} | {fmt_s(c)} | {c['max_rss_kib'] / 1024:.0f} | {c.get('verified')} |")
        print()
        links = p["stream"]["links"]
        names = sorted({n for l in links.values() for n in l}, key=lambda n: (n != "vmsynth", n))
        print("| link | " + " | ".join(names) + " |")
        print("|---|" + "---|" * len(names))
        for m in sorted(links, key=int):
            cells = []
            for n in names:
                x = links[m].get(n)
                if not x:
                    cells.append("-")
                    continue
                v = x.get("median_seconds", x.get("seconds"))
                tag = "measured" if x["how"].startswith("measured") else "model"
                extra = f", pipelined bound {x['pipelined_bound_seconds']:.1f}" if "pipelined_bound_seconds" in x else ""
                run = f"; running {x['running_seconds']:.1f}" if "running_seconds" in x else ""
                cells.append(f"{v:.1f} ({tag}{extra}{run})" + (" †" if x.get("supplementary") else ""))
            print(f"| {m} Mbit/s | " + " | ".join(cells) + " |")
        print()
        if "resume" in p and "error" in p["resume"]:
            print(f"Resume phase failed: {p['resume']['error'][:200]}\n")
        elif "resume" in p:
            rs = p["resume"]
            v = rs["vmsynth"]
            reps = v.get("repetitions", len(v.get("seconds", [])))
            print("| time to a running launch VM (local overlay) | seconds, median | how |")
            print("|---|---|---|")
            print(f"| vmsynth synthesize --launch | {v['median_first_byte_to_running_seconds']:.2f}"
                  f"{'' if reps >= 3 else f' [n={reps}]'} | measured, first overlay byte -> guest running; "
                  f"resume alone {v['median_resume_seconds'] * 1e3:.0f} ms; running={v.get('all_running')}, "
                  f"guest printed={v.get('all_guests_printed')} |")
            for n, c in rs.items():
                if n == "vmsynth" or not isinstance(c, dict):
                    continue
                print(f"| {n} | {c['seconds']:.2f}{' †' if c.get('supplementary') else ''} | model: synthesis "
                      f"{c['synthesis_seconds']:.2f} + vmsynth resume {c['resume_seconds'] * 1e3:.0f} ms |")
            print()


if __name__ == "__main__":
    main()
