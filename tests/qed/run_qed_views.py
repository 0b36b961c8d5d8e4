#!/usr/bin/env python3
"""`qcheck --map=FILE.svg --report=FILE.html` on QED images.

    run_qed_views.py QCHECK WORKDIR

Images are built in WORKDIR with qemu-img / qemu-io (-f qed) and patched
with layout/qedlib.py (the digest and the chain of QED images are tested
by tests/digest/run_digest.py and tests/chain/run_chain.py):

* tables: 4 KiB clusters, two-cluster tables, data under three L1 entries
  (three L2 tables), a zero cluster, and one cluster appended that nothing
  references;
* damaged: tables, then an L2 entry pointing into the L1 table (a cluster
  claimed twice) and one pointing inside the header (an invalid entry);
* many: 4 KiB clusters, 40 MiB of data (more clusters than the map has
  cells, so a cell holds several), one data cluster in the middle whose
  L2 entry is cleared (leaked), one cluster appended (leaked).

For each: the exit status of the plain check; with --map and --report the
same status, and the same JSON output with and without them; the SVG
parses as XML (and with xmllint), refers to nothing outside itself, has a
legend entry per class shown, legend counts adding up to the file's
clusters and cells covering them all; the cells at the offsets the header
and tables give are of the class expected (header cluster 0, the L1 table's
first and last cluster at l1_table_offset, each L2 table's, each data
cluster, the leaked, overlapping and corrupt clusters), and the legend
counts of leaked clusters are the qedClusterLeaked count; the HTML report
has one findings row per finding and a map. The checks of the SVG and the
HTML are tests/visual/run_visual.py's.

Exit status 0 only if every assertion held.
"""

import json
import os
import shutil
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
sys.path.insert(0, os.path.join(HERE, "..", "visual"))
import qedlib  # noqa: E402
import run_visual as v  # noqa: E402  (check_svg, check_html, qcheck_visual, failures)

KiB, MiB = 1024, 1024 * 1024
check = v.check


def must(argv):
    r = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        sys.exit("set-up failed: %s: %s" % (" ".join(argv), r.stderr))


def build_tables(path):
    must(["qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4096,table_size=2",
          path, "16M"])
    # one L2 table maps 1024 clusters of 4 KiB: 4 MiB
    must(["qemu-io", "-f", "qed", "-c", "write -P 0x11 0 64k", "-c", "write -P 0x12 5M 8k",
          "-c", "write -P 0x13 9M 4k", "-c", "write -z 128k 4k", path])
    im = qedlib.Image(path)
    leaked = im.append_clusters(1)
    return im, leaked


def structure_offsets(im):
    """(offset, class, what) of what the header and tables place: the
    header, the L1 table, every L2 table and every data cluster."""
    h = im.header
    last = (h.table_size - 1) * im.cluster_size
    out = [(0, "header", "the header"),
           (h.l1_table_offset, "l1", "the L1 table"),
           (h.l1_table_offset + last, "l1", "the L1 table's last cluster")]
    for i, l2 in enumerate(im.l1()):
        if not l2:
            continue
        out += [(l2, "l2", "the L2 table of L1 entry %d" % i),
                (l2 + last, "l2", "the last cluster of L2 table %d" % i)]
        for j, e in enumerate(im.l2(i)):
            if e > qedlib.ZERO_CLUSTER:
                out.append((e, "data", "the data of L1 entry %d, L2 entry %d" % (i, j)))
    return out


def leaks_counted(image, qcheck):
    r = subprocess.run([qcheck, "--output=json", image], capture_output=True, text=True)
    return sum(p.get("count", 0) for p in json.loads(r.stdout).get("problems", [])
               if p.get("id") == "qedClusterLeaked")


def views(qcheck, work, name, image, status, expect):
    r = subprocess.run([qcheck, image], capture_output=True, text=True)
    check(r.returncode == status, "%s: the plain check exits %d, expected %d: %s"
          % (name, r.returncode, status, r.stderr))
    svg, page, n = v.qcheck_visual(qcheck, work, name, image, status)
    m = v.check_svg(name, svg, expect)
    v.check_html(name, page, n)
    if m:
        leaked = leaks_counted(image, qcheck)
        check(m.legend.get("leaked", 0) == leaked,
              "%s: the legend counts %s leaked clusters, qedClusterLeaked %d"
              % (name, m.legend.get("leaked"), leaked))
    return m


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    qcheck, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)

    tables = os.path.join(work, "tables.qed")
    im, leaked = build_tables(tables)
    expect = structure_offsets(im)
    check(sum(1 for _, cls, _ in expect if cls == "l2") == 6 and
          sum(1 for _, cls, _ in expect if cls == "data") == 19 and
          im.l2_entry(128 * KiB)[1] == qedlib.ZERO_CLUSTER,
          "set-up: tables.qed has %s, the entry of 128 KiB is %d"
          % (expect, im.l2_entry(128 * KiB)[1]))
    m = views(qcheck, work, "tables", tables, 3,
              expect + [(leaked, "leaked", "the cluster appended")])
    if m:
        check(m.per_cell == 1 and m.cluster_size == 4096 and
              m.clusters == im.file_size() // 4096,
              "tables: %d clusters of %d bytes per cell, %d clusters (the file has %d)"
              % (m.per_cell, m.cluster_size, m.clusters, im.file_size() // 4096))
        check(m.legend.get("data") == 19 and m.legend.get("l2") == 6 and
              m.legend.get("l1") == 2 and m.legend.get("header") == 1,
              "tables: legend %s" % m.legend)

    damaged = os.path.join(work, "damaged.qed")
    im, leaked = build_tables(damaged)
    h = im.header
    im.set_l2(1 * MiB, h.l1_table_offset)  # claims the L1 table's first cluster again
    entry, _ = im.l2_entry(2 * MiB)
    im.set_l2(2 * MiB, 4096 // 2)           # unaligned, inside the header
    views(qcheck, work, "damaged", damaged, 2,
          [(0, "header", "the header"),
           (h.l1_table_offset, "overlap", "the L1 cluster an L2 entry claims too"),
           (h.l1_table_offset + im.cluster_size, "l1", "the L1 table's other cluster"),
           (entry // im.cluster_size * im.cluster_size, "corrupt",
            "the L2 table cluster holding the invalid entry"),
           (leaked, "leaked", "the cluster appended")])

    many = os.path.join(work, "many.qed")
    must(["qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4096", many, "64M"])
    must(["qemu-io", "-f", "qed", "-c", "write -P 0x21 0 40M", many])
    im = qedlib.Image(many)
    middle = 20 * MiB
    _, victim = im.l2_entry(middle)
    im.set_l2(middle, qedlib.UNALLOCATED)
    appended = im.append_clusters(1)
    m = views(qcheck, work, "many", many, 3,
              [(victim, "leaked", "the data cluster no entry maps any more"),
               (appended, "leaked", "the cluster appended")])
    if m:
        check(m.per_cell > 1, "many: one cluster per cell: the cell aggregation is not tested")
        check(m.legend.get("leaked") == 2, "many: legend %s" % m.legend)
        cell = m.per_cell * im.cluster_size
        for near in (victim - cell, victim + cell):
            check(m.class_at(near) == "data", "many: the cell next to the leaked one (0x%x) "
                  "is %s, not data" % (near, m.class_at(near)))

    print("\n%d failed" % len(v.failures))
    return 1 if v.failures else 0


if __name__ == "__main__":
    sys.exit(main())
