"""Test data for the Python binding's tests, made once per session with the vmsynth command.

ctest sets VMSYNTH_CLI (the built vmsynth executable), VMSYNTH_LIBRARY (the
built libvmsynth.so.0, which `import vmsynth` then loads), PYTHONPATH (python/)
and VMSYNTH_CACHE_DIR (the build tree's test cache).
"""

import os
import subprocess

import pytest


def _cli():
    path = os.environ.get("VMSYNTH_CLI")
    if not path:
        pytest.exit("VMSYNTH_CLI is not set: run the Python tests through ctest (ctest -L python)", returncode=2)
    return path


def run_cli(*args):
    r = subprocess.run([_cli(), *map(str, args)], capture_output=True, text=True)
    assert r.returncode == 0, f"vmsynth {' '.join(map(str, args))} exited {r.returncode}: {r.stderr}"
    return r.stdout


class Data:
    """The session's VMs and overlays (paths)."""

    def __init__(self, root):
        self.root = root
        run_cli("gen-pair", "--out", root / "pair", "--memory-mib", 4, "--disk-mib", 8, "--seed", 1, "-q")
        self.base = root / "pair" / "base"
        self.launch = root / "pair" / "launch"
        self.overlay = root / "small.vmo"
        run_cli("overlay", "create", "--base", self.base, "--launch", self.launch, "-o", self.overlay, "-q")
        # Another base VM of the same shape: the overlay was not made for it.
        run_cli("gen-pair", "--out", root / "other", "--memory-mib", 4, "--disk-mib", 8, "--seed", 2, "-q")
        self.other_base = root / "other" / "base"
        # An encrypted overlay of the same pair, and a key it was not sealed with.
        self.key = root / "key.hex"
        self.key.write_text("00112233445566778899aabbccddeeff" * 2 + "\n")
        self.wrong_key = root / "wrong.hex"
        self.wrong_key.write_text("ffeeddccbbaa99887766554433221100" * 2 + "\n")
        self.encrypted = root / "small-encrypted.vmo"
        run_cli("overlay", "create", "--base", self.base, "--launch", self.launch, "-o", self.encrypted,
                "--key-file", self.key, "-q")

    def overlay_bytes(self):
        return self.overlay.read_bytes()


@pytest.fixture(scope="session")
def data(tmp_path_factory):
    return Data(tmp_path_factory.mktemp("vmsynth-python"))
