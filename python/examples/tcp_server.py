#!/usr/bin/env python3
"""A cloudlet's receiving end: accept one TCP connection, synthesize the overlay while it arrives.

    tcp_server.py --base BASE_DIR --out OUT_DIR [--host 127.0.0.1] [--port 8700]

Every recv goes straight to Synthesizer.feed (no copy: recv_into a bytearray,
fed through a memoryview), so synthesis runs while the overlay is still on the
wire and the launch VM is ready moments after its last byte. The sender closes
its side when the overlay is complete (e.g. `nc -N HOST PORT < app.vmo`) and
gets one JSON line back: the result, or {"ok": false, "error": ...}. A broken
connection or a bad overlay leaves nothing at OUT_DIR (the `with` block aborts).
"""

import argparse
import json
import socket
import sys

import vmsynth

RECV_BYTES = 1 << 20  # one recv's buffer; feed takes chunks of any size


def receive_and_synthesize(conn, base, out, **params):
    """Feeds everything `conn` sends to a Synthesizer for `out`; returns the result dict."""
    buf = bytearray(RECV_BYTES)
    view = memoryview(buf)
    with vmsynth.Synthesizer(base, out, **params) as s:
        while True:
            n = conn.recv_into(buf)
            if n == 0:
                break
            s.feed(view[:n])
        return s.finish()


def serve_one(listener, base, out, **params):
    """Accepts one connection on `listener`, synthesizes what it sends, replies with one JSON line."""
    conn, _peer = listener.accept()
    with conn:
        try:
            reply = receive_and_synthesize(conn, base, out, **params)
        except vmsynth.Error as e:
            reply = {"ok": False, "error": {"code": vmsynth.status_name(e.code), "status": e.code, "message": str(e)}}
        conn.sendall(json.dumps(reply).encode() + b"\n")
    return reply


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    ap.add_argument("--base", required=True, help="base VM directory (only read)")
    ap.add_argument("--out", required=True, help="launch VM directory to create")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8700, help="0: any free port (printed)")
    args = ap.parse_args(argv)
    with socket.create_server((args.host, args.port)) as listener:
        print(f"listening on {listener.getsockname()[0]}:{listener.getsockname()[1]}", flush=True)
        reply = serve_one(listener, args.base, args.out)
    print(json.dumps(reply, indent=2))
    return 0 if reply["ok"] else reply["error"]["status"]  # the vmsynth command's exit statuses


if __name__ == "__main__":
    sys.exit(main())
