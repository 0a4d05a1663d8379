#!/usr/bin/python3
"""Regression tests for bench/plot.py.

  render   it renders every plot and the markdown tables from a committed
           bench/run result, also when the run left out some contenders
           (bench/run --contenders without vmsynth-serial, or without the
           parallel engine), which once raised KeyError.
  colours  one colour per contender (issue #12): a contender is drawn in the
           same colour in every plot of every result file, whatever the other
           contenders and their order; no two contenders share a colour; every
           bar and line drawn has a legend entry of its own label and colour;
           a contender missing from the table gets a colour from a stable hash
           of its name, outside the table; each stage of the stages plot keeps
           one colour, none a contender's. The figures are inspected as
           matplotlib objects (captured at savefig), not as pixels.

Usage: tests/bench/plot_test.py SOURCE_DIR [render|colours]...   (default: both)
"""
import copy
import glob
import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
import tempfile

PLOTS = ["overlay-size", "synthesis-time", "threads", "stages", "time-to-vm"]


def render(plot, result, work, tag):
    path = os.path.join(work, f"e2e-{tag}.json")
    with open(path, "w") as f:
        json.dump(result, f)
    out = os.path.join(work, tag)
    os.makedirs(out)
    for args in ([], ["--markdown"]):
        p = subprocess.run([sys.executable, plot, path, "--out-dir", out] + args, capture_output=True, text=True)
        if p.returncode != 0:
            sys.exit(f"FAIL {tag} {args}: exit {p.returncode}\n{p.stderr}")
        if args and "|" not in p.stdout:
            sys.exit(f"FAIL {tag}: --markdown printed no table")
    for name in PLOTS:
        png = os.path.join(out, f"e2e-{tag}-{name}.png")
        if not os.path.exists(png) or os.path.getsize(png) < 1000:
            sys.exit(f"FAIL {tag}: {png} missing or empty")


def test_render(src):
    plot = os.path.join(src, "bench", "plot.py")
    full = json.load(open(os.path.join(src, "perf-data", "e2e-2026-11-27.json")))
    no_serial = copy.deepcopy(full)
    no_parallel = copy.deepcopy(full)
    for pair in no_serial["pairs"].values():
        pair["synthesize"].pop("vmsynth-serial", None)
    for pair in no_parallel["pairs"].values():
        for name in [n for n in pair["synthesize"] if n.startswith("vmsynth-")]:
            del pair["synthesize"][name]
    with tempfile.TemporaryDirectory(prefix="vmsynth-plot-test") as work:
        for tag, result in (("2026-01-01", full), ("2026-01-02", no_serial), ("2026-01-03", no_parallel)):
            render(plot, result, work, tag)
    print("ok: plots and tables rendered for full and partial results")


# --- colours ---------------------------------------------------------------

def load_plot(src):
    loader = importlib.machinery.SourceFileLoader("bench_plot", os.path.join(src, "bench", "plot.py"))
    spec = importlib.util.spec_from_loader("bench_plot", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def figures(plot, result_path, work, merge=()):
    """Runs plot.py's CLI in this process on result_path and returns {plot name: Figure},
    captured when plot.py saves them (nothing is written)."""
    import matplotlib.figure
    stem = os.path.splitext(os.path.basename(result_path))[0]
    saved = {}
    orig = matplotlib.figure.Figure.savefig

    def capture(fig, fname, *a, **kw):
        saved[os.path.splitext(os.path.basename(str(fname)))[0][len(stem) + 1:]] = fig

    matplotlib.figure.Figure.savefig = capture
    argv, stdout = sys.argv, sys.stdout
    try:
        sys.argv = ["plot.py", result_path, "--out-dir", work] + (["--merge", *merge] if merge else [])
        sys.stdout = open(os.devnull, "w")
        plot.main()
    finally:
        sys.stdout.close()
        sys.argv, sys.stdout = argv, stdout
        matplotlib.figure.Figure.savefig = orig
    return saved


def write(result, work, name):
    path = os.path.join(work, name)
    with open(path, "w") as f:
        json.dump(result, f)
    return path


def hexc(c):
    import matplotlib.colors
    return matplotlib.colors.to_hex(c)


def line_colour(line):
    """The colour a Line2D shows: its line's, or, without a line (no line style, or a
    single point), its markers'."""
    if str(line.get_linestyle()).lower() not in ("none", "", " ") and len(line.get_xdata()) > 1:
        return hexc(line.get_color())
    face = line.get_markerfacecolor()
    return hexc(line.get_markeredgecolor() if str(face).lower() == "none" else face)


def drawn(ax):
    """(kind, label, colour) of every bar and line drawn on ax."""
    from matplotlib.container import BarContainer
    out, in_containers = [], set()
    for c in ax.containers:
        if isinstance(c, BarContainer):
            for p in c.patches:
                in_containers.add(id(p))
                out.append(("bar", c.get_label(), hexc(p.get_facecolor())))
    for p in ax.patches:
        if id(p) not in in_containers:
            out.append(("patch", p.get_label(), hexc(p.get_facecolor())))
    for line in ax.lines:
        if len(line.get_xdata()):
            out.append(("line", line.get_label(), line_colour(line)))
    return out


def legend_entries(ax):
    """[(label, colour)] of ax's legend."""
    from matplotlib.lines import Line2D
    leg = ax.get_legend()
    if leg is None:
        return []
    handles = getattr(leg, "legend_handles", None) or leg.legendHandles
    return [(t.get_text(), line_colour(h) if isinstance(h, Line2D) else hexc(h.get_facecolor()))
            for t, h in zip(leg.get_texts(), handles)]


def check_legends(tag, figs, errors):
    """Every bar and line drawn has a legend entry with its label and colour."""
    for plot_name, fig in figs.items():
        for ax in fig.axes:
            entries = legend_entries(ax)
            where = f"{tag} {plot_name} [{ax.get_title()[:40]}]"
            for kind, label, colour in sorted(set(drawn(ax))):
                mine = [c for t, c in entries if t == label]
                if label is None or label.startswith("_") or not mine:
                    same = [t for t, c in entries if c == colour]
                    errors.append(f"{where}: a {kind} in {colour} has no legend entry (label {label!r})" +
                                  (f"; its colour is the legend's {same}" if same else "; no legend entry has its colour"))
                elif colour not in mine:
                    errors.append(f"{where}: {kind} {label!r} is drawn in {colour}, its legend entry is {mine}")


def contenders_of(result):
    names = set()
    for p in result["pairs"].values():
        if "create" not in p:
            continue
        names |= set(p["create"]) | set(p["synthesize"])
        for link in p["stream"]["links"].values():
            names |= set(link)
        names |= {n for n, c in p.get("resume", {}).items() if isinstance(c, dict)}
    return names


def legend_colours(figs, names, seen, tag):
    """Adds to seen[name] the (colour, where) of every legend entry of a contender in names
    ("vmsynth, running" counts as vmsynth)."""
    for plot_name, fig in figs.items():
        for ax in fig.axes:
            for label, colour in legend_entries(ax):
                n = label.split(",")[0]
                if n in names:
                    seen.setdefault(n, set()).add((colour, f"{tag} {plot_name}"))


def check_one_colour_each(seen, errors, plot):
    """Each contender in one colour everywhere; distinct contenders in distinct colours;
    and the colour is the table's (plot.contender_color)."""
    by_colour = {}
    for n, cs in sorted(seen.items()):
        colours = sorted({c for c, _ in cs})
        if len(colours) > 1:
            errors.append(f"{n} is drawn in {len(colours)} colours: " +
                          "; ".join(f"{c} in {sorted(w for cc, w in cs if cc == c)[:3]}" for c in colours))
        for c in colours:
            by_colour.setdefault(c, set()).add(n)
        want = getattr(plot, "contender_color", None)
        if want is None:
            errors.append("bench/plot.py has no contender_color(name)")
        elif colours and hexc(want(n)) not in colours:
            errors.append(f"{n}: legend colour {colours} is not contender_color's {hexc(want(n))}")
    for c, ns in sorted(by_colour.items()):
        if len(ns) > 1:
            errors.append(f"{sorted(ns)} share the colour {c}")


def reorder(d):
    """The same dict, keys in reverse order."""
    return dict(reversed(list(d.items())))


def test_colours(src):
    plot = load_plot(src)
    perf = os.path.join(src, "perf-data")
    errors = []
    with tempfile.TemporaryDirectory(prefix="vmsynth-plot-colours") as work:
        # 1. Two result files with different contender subsets and orders: every
        # contender keeps its colour. A: one pair, zstd synthesizes, order as run.
        # B: three pairs in reverse order, every section in reverse order, no
        # vmsynth-serial, no vmsynth-max, and vmsynth-parallel-2 absent from the
        # first pair drawn (its legend entry must come from a later pair).
        a = json.load(open(os.path.join(perf, "e2e-2026-11-27-decode-heavy-small.json")))
        b = json.load(open(os.path.join(perf, "e2e-2026-11-26.json")))
        b["pairs"] = reorder(b["pairs"])
        for i, p in enumerate(b["pairs"].values()):
            p["create"].pop("vmsynth-max", None)
            p["synthesize"].pop("vmsynth-serial", None)
            if i == 0:
                p["synthesize"].pop("vmsynth-parallel-2", None)
            p["create"], p["synthesize"] = reorder(p["create"]), reorder(p["synthesize"])
            p["stream"]["links"] = {m: reorder(link) for m, link in p["stream"]["links"].items()}
        seen = {}
        for tag, r in (("A", a), ("B", b)):
            figs = figures(plot, write(r, work, f"e2e-{tag}.json"), work)
            check_legends(tag, figs, errors)
            legend_colours(figs, contenders_of(r), seen, tag)
        check_one_colour_each(seen, errors, plot)
        subsets_ok = not errors

        # 2. Every committed result: legends complete, one colour per contender across
        # all of them, no two contenders alike, every contender in the table. The
        # stages plot's stages: one colour per stage in both panels and every file,
        # no two stages alike, none a contender's colour.
        seen, committed, stages = {}, set(), {}
        for path in sorted(glob.glob(os.path.join(perf, "e2e-*.json"))):
            r = json.load(open(path))
            committed |= contenders_of(r)
            figs = figures(plot, path, work)
            check_legends(os.path.basename(path), figs, errors)
            legend_colours(figs, contenders_of(r), seen, os.path.basename(path))
            for ax in figs["stages"].axes:
                for label, colour in legend_entries(ax):
                    stages.setdefault(label, set()).add(colour)
        check_one_colour_each(seen, errors, plot)
        contender_colours = {c for cs in seen.values() for c, _ in cs}
        for label, cs in sorted(stages.items()):
            if len(cs) > 1:
                errors.append(f"stage {label} is drawn in {sorted(cs)}")
            if cs & contender_colours:
                errors.append(f"stage {label} is drawn in a contender's colour {sorted(cs & contender_colours)}")
        for c in {c for cs in stages.values() for c in cs}:
            if len([label for label, cs in stages.items() if c in cs]) > 1:
                errors.append(f"stages {sorted(label for label, cs in stages.items() if c in cs)} share {c}")
        table = getattr(plot, "CONTENDER_COLORS", {})
        for n in sorted(committed - set(table)):
            errors.append(f"committed contender {n} is not in plot.py's CONTENDER_COLORS")
        values = [hexc(c) for c in table.values()]
        if len(set(values)) != len(values):
            errors.append(f"CONTENDER_COLORS has a colour twice: {table}")
        committed_ok = not errors

        # 3. A contender not in the table: a colour from a stable hash of its name
        # (the same in another process, whatever PYTHONHASHSEED), outside the table,
        # and drawn in it with a legend entry.
        unknown = ["vmsynth-parallel-4", "vmsynth-parallel-16", "rsync", "bsdiff"]
        if hasattr(plot, "contender_color"):
            mine = {n: hexc(plot.contender_color(n)) for n in unknown}
            for seed in ("1", "2"):
                code = (f"import json, runpy; c = runpy.run_path({os.path.join(src, 'bench', 'plot.py')!r})"
                        f"['contender_color']; print(json.dumps({{n: c(n) for n in {unknown!r}}}))")
                out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                     env=dict(os.environ, PYTHONHASHSEED=seed))
                theirs = {n: hexc(c) for n, c in json.loads(out.stdout or "{}").items()}
                if theirs != mine:
                    errors.append(f"contender_color differs between processes (PYTHONHASHSEED={seed}): "
                                  f"{mine} vs {theirs} {out.stderr[-300:]}")
            for n, c in mine.items():
                if c in values:
                    errors.append(f"unknown contender {n} got {c}, a colour of the table")
            r = json.load(open(os.path.join(perf, "e2e-2026-11-27-decode-heavy-small.json")))
            rename = {"vmsynth-parallel-2": "vmsynth-parallel-4", "zstd": "rsync"}
            for p in r["pairs"].values():
                for sec in [p["create"], p["synthesize"]] + list(p["stream"]["links"].values()):
                    for old, new in rename.items():
                        if old in sec:
                            sec[new] = sec.pop(old)
            figs = figures(plot, write(r, work, "e2e-unknown.json"), work)
            check_legends("unknown", figs, errors)
            seen = {}
            legend_colours(figs, set(rename.values()), seen, "unknown")
            for n in rename.values():
                if {c for c, _ in seen.get(n, ())} != {mine.get(n) or hexc(plot.contender_color(n))}:
                    errors.append(f"unknown contender {n}: legend colours {seen.get(n)}, "
                                  f"want contender_color's {hexc(plot.contender_color(n))}")
        else:
            errors.append("bench/plot.py has no contender_color(name) for contenders outside the table")

    if errors:
        for e in errors:
            print("FAIL", e)
        sys.exit(f"FAIL: {len(errors)} colour/legend problems (subsets and orders "
                 f"{'ok' if subsets_ok else 'failed'}, committed results {'ok' if committed_ok else 'failed'})")
    print("ok: one colour per contender across files and plots, every bar and line in the legend")


def main():
    src = sys.argv[1]
    tests = {"render": test_render, "colours": test_colours}
    for name in sys.argv[2:] or list(tests):
        tests[name](src)


if __name__ == "__main__":
    main()
