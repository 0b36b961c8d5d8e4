#!/usr/bin/env python3
"""qcheck on QED images, against `qemu-img check` of the same files.

    run_qed.py QCHECK WORKDIR [--filter SUBSTR] [--keep]

Every case is a QED image built with `qemu-img create -f qed` and `qemu-io`,
then damaged byte by byte with layout/qedlib.py (a Python reading of QEMU's
qed_spec.txt, independent of qcheck's C code). For each case:

* QEMU's verdict: `qemu-img check --output=json` (status, counts, stderr) and
  the human `qemu-img check` (stdout), asserted against the expectation
  written in CASES, so that a change in QEMU, or in our reading of it, shows;
* qcheck's verdict, by the case's rule:
  - SAME: qemu-img opens the image; qcheck's exit status, `leaks`,
    `corruptions`, `check-errors`, `total-clusters`, `allocated-clusters` and
    `fragmented-clusters` (absent = 0) equal qemu-img's, and so does the
    human output on stdout (the summary lines);
  - REFUSED: QEMU cannot open the image (qemu-img prints "Could not open"
    and exits 1): an image QEMU cannot open is corrupt
    (docs/qemu-img-differences.md §2.4), so qcheck exits 2 with at least one
    corruption, and its human summary starts with "N errors were found";
  - UNSUPPORTED: QEMU refuses a feature it does not know: qcheck exits 1 with
    a check error, as it does for a qcow2 image with an unknown incompatible
    feature bit (and as qemu-img does);
  - NOT_QED: the magic is not QED's: qemu-img probes the file as raw and
    exits 63, and so does qcheck;
* in JSON, `"format": "qed"` and `exit-code` equal to the status; `problems`
  non-empty exactly when there is something to report (a count above, a
  refusal, or the case's warning), every problem code in the QED range
  1001-1099 or a common 8xx one, every leak and corruption with an `offset`,
  and the offsets the case names (a leaked cluster, a bad entry's target)
  among them;
* check mode never writes: the image's sha256 is the same after every qcheck
  run (and after qemu-img's check, which opens read-only).

Repairs of QED images (-r leaks, -r all) are tested by run_qed_repair.py,
with these builders.

Prints PASS/FAIL per case and a summary; exit 0 only if nothing failed,
77 when qemu-img or qemu-io is missing.
"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
sys.path.insert(0, os.path.join(HERE, "..", "digest"))
import qedlib  # noqa: E402
from run_digest import SetupError, Test, run, script_main  # noqa: E402

QEMU_IMG, QEMU_IO = "qemu-img", "qemu-io"
TIMEOUT = 60
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

SAME, REFUSED, UNSUPPORTED, NOT_QED = "same", "refused", "unsupported", "not-qed"
COUNT_KEYS = ("leaks", "corruptions", "check-errors", "total-clusters",
              "allocated-clusters", "fragmented-clusters")
QED_CODES = range(1001, 1100)
COMMON_CODES = range(800, 900)
FINDING_SEVERITIES = ("leak", "corruption")


# ---- building ----------------------------------------------------------------------

def create(path, size, opts="", backing=None, backing_fmt=None):
    cmd = [QEMU_IMG, "create", "-q", "-f", "qed"]
    o = [opts] if opts else []
    if backing:
        o.append("backing_file=%s" % backing)
        if backing_fmt:
            o.append("backing_fmt=%s" % backing_fmt)
    if o:
        cmd += ["-o", ",".join(o)]
    run(cmd + [path, str(size)], cwd=os.path.dirname(path))
    return qedlib.Image(path)


def qemu_io(path, *cmds):
    argv = [QEMU_IO, "-f", "qed"]
    for c in cmds:
        argv += ["-c", c]
    run(argv + [path])


def small(path, cluster_size=4 * KiB):
    """The image most damage is done to: 64 MiB with 4 KiB clusters and
    4-cluster tables (2048 entries, 8 MiB per L2 table), so that three L1
    entries are in use: two data clusters at guest 0 and 4 KiB, one at
    8 MiB, one at 16 MiB and a zero cluster at 64 KiB."""
    create(path, 64 * MiB, "cluster_size=%d" % cluster_size)
    qemu_io(path, "write -P 0x11 0 8k", "write -P 0x22 8M 4k", "write -P 0x33 16M 4k",
            "write -z 64k 4k")
    return qedlib.Image(path)


def data_cluster(img, guest):
    return img.l2_entry(guest)[1]


# Each builder makes the image at `path` and returns a dict of what it
# knows: "offsets" the problems must name.

def b_empty(path):
    create(path, 1 * GiB)
    return {}


def b_data_64k(path):
    create(path, 1 * GiB)
    # Out of order, so that the clusters are fragmented in the L2 table.
    qemu_io(path, "write 1M 64k", "write 0 128k", "write 512M 64k", "write 256k 192k")
    return {}


def b_zero_clusters(path):
    create(path, 1 * GiB)
    qemu_io(path, "write -z 0 128k", "write 1M 64k", "write -z 1M 64k", "write -z 2M 4k")
    return {}


def b_data_4k(path):
    small(path)
    return {}


def b_table16_4k(path):
    create(path, 1 * GiB, "cluster_size=4k,table_size=16")
    qemu_io(path, "write 0 12k", "write 900M 4k")
    return {}


def b_backing_qcow2(path):
    d = os.path.dirname(path)
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", os.path.join(d, "base.qcow2"), "1G"])
    create(path, 1 * GiB, backing="base.qcow2", backing_fmt="qcow2")
    qemu_io(path, "write 64k 4k")  # a copy-on-write of one cluster
    return {}


def b_backing_raw_missing(path):
    """Backing file raw (the no-probe feature bit), removed after qemu-img's
    check: qcheck never opens it, so its verdict is the same."""
    d = os.path.dirname(path)
    run([QEMU_IMG, "create", "-q", "-f", "raw", os.path.join(d, "base.raw"), "1G"])
    create(path, 1 * GiB, backing="base.raw", backing_fmt="raw")
    qemu_io(path, "write 0 4k")
    return {"after_qemu": lambda: os.unlink(os.path.join(d, "base.raw"))}


def b_sparse_4t(path):
    create(path, 4 * TiB)
    qemu_io(path, "write 0 64k", "write 3T 64k", "write 4095G 64k")
    return {}


def b_sparse_64t_max(path):
    """The largest image 64 KiB clusters and 4-cluster tables can address."""
    create(path, 64 * TiB)
    qemu_io(path, "write 0 64k", "write 63T 64k")
    return {}


def b_table_size_1(path):
    create(path, 64 * MiB, "cluster_size=4k,table_size=1")
    return {}


def b_odd_file_tail(path):
    """The file ends 100 bytes into a cluster: QEMU rounds its size down."""
    small(path)
    with open(path, "ab") as f:
        f.write(b"\x5a" * 100)
    return {}


def b_header_size_5(path):
    """header_size 5 clusters, the L1 table moved after them: a valid
    layout qemu-img never writes (the old L1 clusters are header now)."""
    img = small(path)
    new_l1 = img.copy_clusters(img.header.l1_table_offset, img.header.table_size)
    img.set_field("l1_table_offset", new_l1)
    img.set_field("header_size", 5)
    return {}


def b_need_check(path):
    small(path)
    img = qedlib.Image(path)
    img.set_field("features", img.header.features | qedlib.F_NEED_CHECK)
    return {}


def b_killed_writer(path):
    """A qemu-io killed with SIGKILL after an allocating write: QEMU sets
    need_check before the write and clears it only on close or 5 s of
    (virtual) quiet, which qemu-io's sleep never gives it."""
    create(path, 1 * GiB)
    proc = subprocess.Popen([QEMU_IO, "-f", "qed", "-c", "write 0 128k", "-c", "sleep 30000",
                             path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if qedlib.Image(path).header.features & qedlib.F_NEED_CHECK:
                time.sleep(0.2)  # let the data and table writes land
                break
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    if not qedlib.Image(path).header.features & qedlib.F_NEED_CHECK:
        raise SetupError("need_check was not set by the killed writer")
    return {}


def b_leak_appended(path):
    img = small(path)
    return {"offsets": [img.append_clusters(1)]}


def b_leak_appended_3(path):
    img = small(path)
    return {"offsets": [img.append_clusters(3)]}


def b_leak_l2_cleared(path):
    img = small(path)
    lost = data_cluster(img, 8 * MiB)
    img.set_l2(8 * MiB, qedlib.UNALLOCATED)
    return {"offsets": [lost]}


def b_leak_l1_cleared(path):
    """L1 entry 1 cleared: its L2 table (4 clusters) and its data cluster leak."""
    img = small(path)
    table = img.l1()[1]
    lost = data_cluster(img, 8 * MiB)
    img.set_l1(1, qedlib.UNALLOCATED)
    return {"offsets": [table, lost]}


def b_l2_past_eof(path):
    img = small(path)
    lost = data_cluster(img, 16 * MiB)
    bad = img.append_clusters(0) + 64 * img.cluster_size
    img.set_l2(16 * MiB, bad)
    return {"offsets": [lost]}


def b_l2_unaligned(path):
    img = small(path)
    lost = data_cluster(img, 16 * MiB)
    img.set_l2(16 * MiB, lost + 512)
    return {}


def b_l2_into_header(path):
    """After the header_size 5 layout, an L2 entry pointing at cluster 2
    (old L1 space, header now)."""
    b_header_size_5(path)
    img = qedlib.Image(path)
    lost = data_cluster(img, 16 * MiB)
    img.set_l2(16 * MiB, 2 * img.cluster_size)
    return {"offsets": [lost]}


def b_l2_to_l1_table(path):
    img = small(path)
    lost = data_cluster(img, 16 * MiB)
    img.set_l2(16 * MiB, img.header.l1_table_offset)
    return {"offsets": [lost]}


def b_l2_to_own_table(path):
    img = small(path)
    lost = data_cluster(img, 16 * MiB)
    img.set_l2(16 * MiB, img.l1()[2])
    return {"offsets": [lost]}


def b_l2_duplicate(path):
    """Guest 4 KiB points to guest 0's cluster: a second reference, and
    its own cluster leaks."""
    img = small(path)
    first, lost = data_cluster(img, 0), data_cluster(img, 4 * KiB)
    img.set_l2(4 * KiB, first)
    return {"offsets": [lost]}


def b_l1_to_data(path):
    """L1 entry 2 points to the data cluster of guest 0 (already counted):
    the check skips it; its own L2 table and data cluster leak."""
    img = small(path)
    table, lost = img.l1()[2], data_cluster(img, 16 * MiB)
    img.set_l1(2, data_cluster(img, 0))
    return {"offsets": [table, lost]}


def b_l1_past_eof(path):
    img = small(path)
    table, lost = img.l1()[2], data_cluster(img, 16 * MiB)
    img.set_l1(2, img.append_clusters(0) + 1 * MiB)
    return {"offsets": [table, lost]}


def b_l1_unaligned(path):
    img = small(path)
    table = img.l1()[2]
    img.set_l1(2, table + 8)
    return {}


def b_l1_table_overlaps_eof(path):
    """An L1 entry whose 4-cluster table starts at the last cluster of the file."""
    img = small(path)
    table, lost = img.l1()[2], data_cluster(img, 16 * MiB)
    img.set_l1(2, img.append_clusters(1))
    return {"offsets": [table, lost]}


def header_patch(**fields_):
    def build(path):
        img = small(path)
        for name, value in fields_.items():
            if callable(value):
                value = value(img.header)
            img.set_field(name, value)
        return {}
    return build


def b_backing_name_4096(path):
    """A backing file name of 4096 bytes, inside the 64 KiB header: one more
    than QEMU reads (its buffer is PATH_MAX with the NUL)."""
    img = small(path, 64 * KiB)
    img.set_field("features", qedlib.F_BACKING_FILE)
    img.set_field("backing_filename_offset", 64)
    img.set_field("backing_filename_size", 4096)
    return {}


def b_header_size_4g(path):
    """header_size 2^20 clusters of 4 KiB (4 GiB, past what QEMU's 32-bit
    header arithmetic holds), the L1 table moved to 4 GiB in a sparse file
    so that the table offset check before it passes."""
    img = small(path)
    l1 = img.read_table(img.header.l1_table_offset)
    with open(path, "r+b") as f:
        f.truncate(4 * GiB + img.header.table_bytes)
    img.write_at(4 * GiB, b"".join(v.to_bytes(8, "little") for v in l1))
    img.set_field("l1_table_offset", 4 * GiB)
    img.set_field("header_size", 1 << 20)
    return {}


def b_bad_magic(path):
    small(path)
    qedlib.Image(path).set_field("magic", 0x00444552)  # "RED\0"
    return {}


# ---- the cases ---------------------------------------------------------------------

def refused(message):
    """QEMU's verdict when it cannot open the image."""
    return {"exit": 1, "stderr": "Could not open '{path}': " + message}


def qemu(exit=0, total=0, allocated=0, fragmented=0, leaks=0, corruptions=0, errors=0):
    return {"exit": exit, "counts": {"total-clusters": total, "allocated-clusters": allocated,
                                     "fragmented-clusters": fragmented, "leaks": leaks,
                                     "corruptions": corruptions, "check-errors": errors}}


T64 = 64 * MiB // (4 * KiB)  # total clusters of small()

# (name, builder, rule, QEMU's verdict, extras). Extras: "warning": qcheck
# must report a warning (and nothing worse); "quiet_optional": qcheck may or
# may not report something of severity info/warning (an unknown bit QEMU
# ignores); "qemu_after": what qemu-img says once after_qemu ran.
CASES = [
    ("clean_empty_64k", b_empty, SAME, qemu(total=16384), {}),
    ("clean_data_64k", b_data_64k, SAME, qemu(total=16384, allocated=7, fragmented=3), {}),
    ("clean_zero_clusters", b_zero_clusters, SAME, qemu(total=16384, allocated=2), {}),
    ("clean_data_4k", b_data_4k, SAME, qemu(total=T64, allocated=4), {}),
    ("clean_table16_4k", b_table16_4k, SAME, qemu(total=262144, allocated=4, fragmented=0), {}),
    ("clean_backing_qcow2", b_backing_qcow2, SAME, qemu(total=16384, allocated=1), {}),
    ("clean_backing_raw_removed", b_backing_raw_missing, SAME, qemu(total=16384, allocated=1),
     {"qemu_after": refused("Could not open backing file: Could not open 'base.raw': "
                            "No such file or directory")}),
    ("clean_sparse_4t", b_sparse_4t, SAME, qemu(total=4 * TiB // 65536, allocated=3), {}),
    ("clean_sparse_64t_max", b_sparse_64t_max, SAME, qemu(total=64 * TiB // 65536, allocated=2),
     {}),
    ("clean_odd_file_tail", b_odd_file_tail, SAME, qemu(total=T64, allocated=4), {}),
    ("clean_header_size_5", b_header_size_5, SAME, qemu(total=T64, allocated=4), {}),
    ("table_size_1", b_table_size_1, REFUSED, refused("QED table offset is invalid"), {}),
    ("need_check_set", b_need_check, SAME, qemu(total=T64, allocated=4), {"warning": True}),
    ("need_check_killed_writer", b_killed_writer, SAME, qemu(total=16384, allocated=2),
     {"warning": True}),
    ("leak_appended_cluster", b_leak_appended, SAME, qemu(3, T64, 4, leaks=1), {}),
    ("leak_appended_3_clusters", b_leak_appended_3, SAME, qemu(3, T64, 4, leaks=3), {}),
    ("leak_l2_entry_cleared", b_leak_l2_cleared, SAME, qemu(3, T64, 3, leaks=1), {}),
    ("leak_l1_entry_cleared", b_leak_l1_cleared, SAME, qemu(3, T64, 3, leaks=5), {}),
    ("corrupt_l2_past_eof", b_l2_past_eof, SAME, qemu(2, T64, 4, leaks=1, corruptions=1), {}),
    ("corrupt_l2_unaligned", b_l2_unaligned, SAME, qemu(2, T64, 4, leaks=1, corruptions=1), {}),
    ("corrupt_l2_into_header", b_l2_into_header, SAME, qemu(2, T64, 4, leaks=1, corruptions=1),
     {}),
    ("corrupt_l2_to_l1_table", b_l2_to_l1_table, SAME, qemu(2, T64, 4, leaks=1, corruptions=1),
     {}),
    ("corrupt_l2_to_own_table", b_l2_to_own_table, SAME,
     qemu(2, T64, 4, leaks=1, corruptions=1), {}),
    ("corrupt_l2_duplicate", b_l2_duplicate, SAME,
     qemu(2, T64, 4, fragmented=1, leaks=1, corruptions=1), {}),
    ("corrupt_l1_to_data_cluster", b_l1_to_data, SAME, qemu(2, T64, 3, leaks=5, corruptions=4),
     {}),
    ("corrupt_l1_past_eof", b_l1_past_eof, SAME, qemu(2, T64, 3, leaks=5, corruptions=1), {}),
    ("corrupt_l1_unaligned", b_l1_unaligned, SAME, qemu(2, T64, 3, leaks=5, corruptions=1), {}),
    ("corrupt_l1_table_overlaps_eof", b_l1_table_overlaps_eof, SAME,
     qemu(2, T64, 3, leaks=6, corruptions=1), {}),
    ("header_bad_magic", b_bad_magic, NOT_QED,
     {"exit": 63, "stderr": "This image format does not support checks"}, {}),
    ("header_cluster_size_not_pow2", header_patch(cluster_size=12 * KiB), REFUSED,
     refused("QED cluster size is invalid"), {}),
    ("header_cluster_size_2k", header_patch(cluster_size=2 * KiB), REFUSED,
     refused("QED cluster size is invalid"), {}),
    ("header_cluster_size_128m", header_patch(cluster_size=128 * MiB), REFUSED,
     refused("QED cluster size is invalid"), {}),
    ("header_table_size_0", header_patch(table_size=0), REFUSED,
     refused("QED table size is invalid"), {}),
    ("header_table_size_3", header_patch(table_size=3), REFUSED,
     refused("QED table size is invalid"), {}),
    ("header_table_size_32", header_patch(table_size=32), REFUSED,
     refused("QED table size is invalid"), {}),
    ("header_image_size_too_large", header_patch(image_size=16 * GiB + 512), REFUSED,
     refused("QED image size is invalid"), {}),
    ("header_image_size_not_512", header_patch(image_size=64 * MiB - 100), REFUSED,
     refused("QED image size is invalid"), {}),
    ("header_l1_offset_unaligned", header_patch(l1_table_offset=lambda h: h.l1_table_offset + 8),
     REFUSED, refused("QED table offset is invalid"), {}),
    ("header_l1_offset_past_eof", header_patch(l1_table_offset=1 * GiB), REFUSED,
     refused("QED table offset is invalid"), {}),
    ("header_l1_offset_in_header", header_patch(header_size=2), REFUSED,
     refused("QED table offset is invalid"), {}),
    ("header_size_too_large", b_header_size_4g, REFUSED,
     refused("QED header size is too large"), {}),
    ("header_unknown_feature_bit3", header_patch(features=0x08), UNSUPPORTED,
     refused("Unsupported QED features: 8"), {}),
    ("header_unknown_compat_bit", header_patch(compat_features=0x01), SAME,
     qemu(total=T64, allocated=4), {"quiet_optional": True}),
    ("header_unknown_autoclear_bit", header_patch(autoclear_features=0x01), SAME,
     qemu(total=T64, allocated=4), {"quiet_optional": True}),
    ("header_backing_name_past_header",
     header_patch(features=qedlib.F_BACKING_FILE, backing_filename_offset=4000,
                  backing_filename_size=200), REFUSED,
     refused("QED backing filename offset is invalid"), {}),
    ("header_backing_name_4096", b_backing_name_4096, REFUSED,
     refused("Failed to read backing filename"), {}),
]

# ---- running -----------------------------------------------------------------------

def tool(argv, cwd):
    return subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)


def parse_json(res):
    try:
        return json.loads(res.stdout)
    except ValueError:
        return None


def counts(obj):
    return {k: obj.get(k, 0) for k in COUNT_KEYS}


class Runner:
    def __init__(self, qcheck, workdir):
        self.qcheck, self.workdir = os.path.abspath(qcheck), os.path.abspath(workdir)

    def fresh(self, name):
        d = os.path.join(self.workdir, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d, os.path.join(d, "image.qed")

    # QEMU's side: its verdict is asserted against CASES.
    def check_qemu(self, t, path, want):
        d, base = os.path.dirname(path), os.path.basename(path)
        before = qedlib.file_sha256(path)
        js = tool([QEMU_IMG, "check", "--output=json", base], d)
        human = tool([QEMU_IMG, "check", base], d)
        t.expect(qedlib.file_sha256(path) == before, "qemu-img check wrote to the image")
        t.expect(js.returncode == want["exit"],
                 "qemu-img status %d, expected %d (%s)" % (js.returncode, want["exit"],
                                                           js.stderr.strip()))
        t.expect(human.returncode == js.returncode, "qemu-img human status %d, JSON %d"
                 % (human.returncode, js.returncode))
        obj = parse_json(js) if js.stdout.strip() else None
        if "counts" in want:
            got = counts(obj) if obj else None
            t.expect(got == want["counts"], "qemu-img counts %s, expected %s"
                     % (got, want["counts"]))
            t.expect(obj is not None and obj.get("format") == "qed",
                     "qemu-img format %r" % (obj or {}).get("format"))
        if "stderr" in want:
            msg = want["stderr"].format(path=base)
            t.expect(msg in js.stderr, "qemu-img stderr %r lacks %r" % (js.stderr.strip(), msg))
        return js, obj, human

    def check_qcheck(self, t, path, rule, qjs, qobj, qhuman, extras, offsets):
        d, base = os.path.dirname(path), os.path.basename(path)
        before = qedlib.file_sha256(path)
        js = tool([self.qcheck, "--output=json", base], d)
        human = tool([self.qcheck, base], d)
        t.expect(qedlib.file_sha256(path) == before, "qcheck check mode wrote to the image")
        for res, how in ((js, "json"), (human, "human")):
            t.expect("Sanitizer" not in res.stderr and "runtime error" not in res.stderr,
                     "%s run: sanitizer report" % how)

        if rule == NOT_QED:
            t.expect(js.returncode == qjs.returncode and human.returncode == qjs.returncode,
                     "qcheck status %d/%d, qemu-img %d" % (js.returncode, human.returncode,
                                                           qjs.returncode))
            return

        want_exit = {SAME: qjs.returncode, REFUSED: 2, UNSUPPORTED: 1}[rule]
        t.expect(js.returncode == want_exit, "qcheck JSON status %d, expected %d (%s rule)"
                 % (js.returncode, want_exit, rule), tag="status")
        t.expect(human.returncode == want_exit, "qcheck human status %d, expected %d"
                 % (human.returncode, want_exit), tag="status")
        obj = parse_json(js)
        if not t.expect(obj is not None, "qcheck JSON does not parse: %r" % js.stdout[:200]):
            return
        t.expect(obj.get("format") == "qed", "qcheck format %r" % obj.get("format"))
        t.expect(obj.get("exit-code") == js.returncode, "exit-code %r, status %d"
                 % (obj.get("exit-code"), js.returncode))
        mine = counts(obj)
        if rule == SAME:
            theirs = counts(qobj) if qobj else None
            t.expect(mine == theirs, "qcheck counts %s, qemu-img %s" % (mine, theirs),
                     tag="counts")
            t.expect(human.stdout == qhuman.stdout, "human summary %r, qemu-img %r"
                     % (human.stdout, qhuman.stdout), tag="summary")
        elif rule == REFUSED:
            t.expect(mine["corruptions"] >= 1, "no corruption counted for a refused header")
            # qemu-img's summary starts with a blank line, as qcheck's
            t.expect(re.match(r"\n\d+ errors? (was|were) found on the image\.", human.stdout),
                     "human summary %r does not start with the errors line" % human.stdout)
        else:
            t.expect(mine["check-errors"] >= 1, "no check error for an unsupported feature")

        problems = obj.get("problems")
        if not t.expect(isinstance(problems, list), "no problems list"):
            return
        something = (rule != SAME or any(qobj and qobj.get(k) for k in
                                         ("leaks", "corruptions", "check-errors"))
                     or extras.get("warning"))
        if extras.get("quiet_optional"):
            t.expect(all(p.get("severity") in ("info", "warning") for p in problems),
                     "problems beyond info/warning: %s" % problems)
        else:
            t.expect(bool(problems) == bool(something), "problems %s, expected %s"
                     % ("listed" if problems else "none", "some" if something else "none"))
        for p in problems:
            code = p.get("code")
            t.expect(code in QED_CODES or code in COMMON_CODES,
                     "problem code %r (%s) outside 1001-1099 and 8xx" % (code, p.get("id")))
            if p.get("severity") in FINDING_SEVERITIES and rule == SAME:
                t.expect(isinstance(p.get("offset"), int), "problem %s has no offset" % p.get("id"))
        if extras.get("warning"):
            t.expect(any(p.get("severity") == "warning" for p in problems), "no warning listed")
            t.expect(extras["warning"] and qjs.returncode == 0 and js.returncode == 0,
                     "a warning changed the status")
        cluster_size = qedlib.Image(path).cluster_size if offsets else 0
        # A finding names a cluster by its offset, or covers it: a run of
        # leaked clusters is one finding from its first cluster ("count").
        def covered(off):
            return any(isinstance(p.get("offset"), int) and
                       p["offset"] <= off < p["offset"] + max(p.get("count", 1), 1) *
                       cluster_size for p in problems)
        for off in offsets:
            t.expect(covered(off), "no problem names offset %d" % off)

    def run_case(self, name, builder, rule, want, extras):
        t = Test(name)
        d, path = self.fresh(name)
        try:
            info = builder(path)
        except (SetupError, subprocess.SubprocessError, OSError) as e:
            t.fails.append("setup: %s" % e)
            return t
        qjs, qobj, qhuman = self.check_qemu(t, path, want)
        if "after_qemu" in info:
            info["after_qemu"]()
            after = extras["qemu_after"]
            res = tool([QEMU_IMG, "check", "--output=json", "image.qed"], d)
            t.expect(res.returncode == after["exit"] and
                     after["stderr"].format(path="image.qed") in res.stderr,
                     "qemu-img afterwards: %d %r" % (res.returncode, res.stderr.strip()))
        self.check_qcheck(t, path, rule, qjs, qobj, qhuman, extras, info.get("offsets", []))
        return t

    def run(self, filt):
        os.makedirs(self.workdir, exist_ok=True)
        failed = 0
        started = time.monotonic()
        tests = [lambda c=c: self.run_case(*c) for c in CASES if filt in c[0]]
        for make in tests:
            t = make()
            if t.fails:
                failed += 1
                print("FAIL %s" % t.name)
                for f in t.fails:
                    print("    - %s" % f)
            else:
                print("PASS %s" % t.name)
        print("%d of %d cases failed (%.1f s)" % (failed, len(tests), time.monotonic() - started))
        return failed


def main():
    if not shutil.which(QEMU_IMG) or not shutil.which(QEMU_IO):
        print("SKIP: qemu-img or qemu-io not found")
        return 77
    return script_main(__doc__, lambda args: Runner(args.qcheck, args.workdir))


if __name__ == "__main__":
    sys.exit(main())
