"""Shared helpers of the differential oracle: running tools, hashing files,
reading JSON, and where the repository's other test tooling lives.

Python standard library only. qemu-img and qemu-io 7.2 are the reference;
qcheck is the program under test.
"""

import json
import os
import resource
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
IMAGES_DIR = os.path.join(REPO, "tests", "images")
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, os.path.join(REPO, "layout"))

import qcow2lib  # noqa: E402  (re-exported for the other modules)

QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")
QEMU_IO = os.environ.get("QEMU_IO", "qemu-io")
TIMEOUT = 60  # seconds per command: a hang is a finding, not a stuck run

# qemu-io's `abort` must not leave core files; set once, inherited by every
# child (a preexec_fn would make every launch a full fork of Python).
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


class Result:
    """What one command did: exit status (negative for a signal, None for a
    time-out), stdout, stderr."""

    def __init__(self, argv, rc, out, err):
        self.argv, self.rc, self.out, self.err = argv, rc, out, err

    def json(self):
        try:
            value = json.loads(self.out)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def __repr__(self):
        return "Result(%r, rc=%r)" % (self.argv[:3], self.rc)


def run(argv, cwd=None, timeout=TIMEOUT):
    """Run a command; never raises for the command's own failure."""
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace",
                           timeout=timeout, stdin=subprocess.DEVNULL)
        return Result(argv, p.returncode, p.stdout, p.stderr)
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode("latin-1") if isinstance(e.stdout, bytes) else (e.stdout or "")
        return Result(argv, None, out, "timed out after %d s" % timeout)


class SafeImage(qcow2lib.Image):
    """qcow2lib.Image for files whose fields may be hostile. qcow2lib is
    written for well-formed images: it computes 1 << cluster_bits and
    zero-pads reads past the end of the file to the length asked for, so a
    mutated cluster_bits of 2^32-1 or an extra_data_size of 4 GiB would hang
    it or exhaust memory. Here those fields are checked first and no read
    may exceed MAX_READ bytes (ValueError instead)."""

    MAX_READ = 64 << 20

    def __init__(self, path, writable=False):
        with open(path, "rb") as f:
            head = f.read(104)
        if len(head) < 72:
            raise ValueError("too short for a qcow2 header")
        h = qcow2lib.decode_header(head)
        if not 9 <= h["cluster_bits"] <= 30:
            raise ValueError("cluster_bits %d" % h["cluster_bits"])
        if h["refcount_order"] > 6:
            raise ValueError("refcount_order")
        super().__init__(path, writable)

    def read(self, offset, length):
        if not 0 <= length <= self.MAX_READ or offset < 0:
            raise ValueError("a read of %d bytes at %d" % (length, offset))
        return super().read(offset, length)


def open_image(path, writable=False):
    return SafeImage(path, writable)


# The oracle's processes use only the safe reader, also where the image
# tests' own helpers (run_repairs' guest reader) open images.
qcow2lib.Image = SafeImage


def copy_sparse(src, dst):
    """Copy a file keeping its holes: images and data files of a workload
    are mostly holes (a 2 GiB data file may hold 200 KiB), and the oracle
    copies each several times per subject."""
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)


file_sha256 = qcow2lib.file_sha256


def dump_json(path, value):
    with open(path, "w") as f:
        json.dump(value, f, indent=1, sort_keys=True)
        f.write("\n")
