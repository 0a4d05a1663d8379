#!/usr/bin/env python3
"""The shared library exports exactly the public C API.

    exported_symbols_test.py LIBVMSYNTH_SO VMSYNTH_H

The functions declared with VMSYNTH_API in the header (parsed here, so the
list is never copied by hand) must be exactly the symbols that
`nm -D --defined-only` lists for the library: names of symbol versions (the
version script's nodes, absolute symbols) are not API and are left out, and
a version suffix (name@@NODE) is dropped. Prints the extra and the missing
symbols and exits 1 if there are any.
"""
import re
import subprocess
import sys


def declared(header_path):
    text = open(header_path, encoding="utf-8").read()
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)  # comments hold example calls
    text = re.sub(r"//[^\n]*", " ", text)
    names = set()
    # "VMSYNTH_API <return type> <name>(": the name is the last identifier before "(".
    for m in re.finditer(r"(?m)^\s*VMSYNTH_API\b([^;(]*)\(", text):
        ident = re.findall(r"[A-Za-z_][A-Za-z0-9_]*", m.group(1))
        if ident:
            names.add(ident[-1])
    return names


def exported(lib_path):
    out = subprocess.run(["nm", "-D", "--defined-only", lib_path], check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 2:
            continue
        kind, name = fields[-2], fields[-1]
        if kind == "A":  # a version node's name, not a symbol of the API
            continue
        names.add(name.split("@")[0])
    return names


def main():
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    lib, header = sys.argv[1], sys.argv[2]
    api = declared(header)
    if len(api) < 10:
        print(f"parsed only {len(api)} VMSYNTH_API functions from {header}: {sorted(api)}", file=sys.stderr)
        return 1
    syms = exported(lib)
    extra, missing = sorted(syms - api), sorted(api - syms)
    for name in extra:
        print(f"extra: {lib} exports {name}, which {header} does not declare")
    for name in missing:
        print(f"missing: {header} declares {name}, which {lib} does not export")
    if extra or missing:
        print(f"FAIL: {len(extra)} extra, {len(missing)} missing of {len(api)} API functions")
        return 1
    print(f"ok: {lib} exports exactly the {len(api)} functions of {header}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
