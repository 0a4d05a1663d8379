"""python/examples/tcp_server.py (the docs' Python example): receive one overlay over TCP and
synthesize it while it arrives."""

import importlib.util
import json
import os
import socket
import threading

from test_vmsynth import assert_nothing_at, assert_same_vm

EXAMPLE = os.path.join(os.environ.get("VMSYNTH_SOURCE_DIR", os.path.join(os.path.dirname(__file__), "..", "..")),
                       "python", "examples", "tcp_server.py")


def load_example():
    spec = importlib.util.spec_from_file_location("tcp_server", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def send(port, blob, piece=10000):
    """Sends blob in pieces, closes the sending side, returns the server's JSON reply."""
    with socket.create_connection(("127.0.0.1", port)) as c:
        for i in range(0, len(blob), piece):
            c.sendall(blob[i:i + piece])
        c.shutdown(socket.SHUT_WR)
        reply = b""
        while chunk := c.recv(4096):
            reply += chunk
    return json.loads(reply)


def serve_in_thread(example, base, out):
    listener = socket.create_server(("127.0.0.1", 0))
    result = {}

    def run():
        with listener:
            result["reply"] = example.serve_one(listener, base, out)

    t = threading.Thread(target=run)
    t.start()
    return listener.getsockname()[1], t, result


def test_tcp_server_synthesizes_the_overlay_as_it_arrives(data, tmp_path):
    example = load_example()
    out = tmp_path / "out"
    port, t, result = serve_in_thread(example, data.base, out)
    reply = send(port, data.overlay_bytes())
    t.join(60)
    assert not t.is_alive()
    assert reply["ok"] is True
    assert reply["overlay_bytes"] == data.overlay.stat().st_size
    assert result["reply"] == reply
    assert_same_vm(out, data.launch)


def test_tcp_server_reports_a_truncated_overlay_and_leaves_nothing(data, tmp_path):
    example = load_example()
    out = tmp_path / "out"
    port, t, _ = serve_in_thread(example, data.base, out)
    reply = send(port, data.overlay_bytes()[:-5000])
    t.join(60)
    assert reply["ok"] is False
    assert reply["error"]["code"] == "corrupt" and reply["error"]["status"] == 3
    assert reply["error"]["message"]
    assert_nothing_at(out)
