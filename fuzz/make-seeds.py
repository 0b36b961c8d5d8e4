#!/usr/bin/env python3
"""Build the fuzzing seed images in corpus/seeds/ with qemu-img and qemu-io.

    fuzz/make-seeds.py [OUT_DIR]     (default: corpus/seeds)

One small image per feature (AFL++ mutates small inputs best, so clusters
are 512 bytes wherever QEMU allows it): v2, v3, every refcount width,
zlib and zstd compression, extended L2, external data file, snapshots,
bitmaps, backing file, dirty, corrupt, QED, and a few damaged images (qcow2
and QED) so that the repair harness starts with something to repair. Companion files (backing
file, data file) are deleted: qcheck never opens them. The seeds are
committed; rerun this only to change them.
"""

import os
import shutil
import subprocess
import sys
import tempfile

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "layout"))
import qcow2lib as q  # noqa: E402
import qedlib  # noqa: E402

SMALL = "cluster_size=512"


def run(*argv, cwd, ok=(0,)):
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
    if p.returncode not in ok:
        sys.exit("%s failed (%d): %s" % (" ".join(argv), p.returncode, p.stderr.strip()))


def create(work, name, opts=SMALL, size="256k", extra=()):
    run("qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, *extra, name, size, cwd=work)


def io(work, name, *cmds, ok=(0,)):
    argv = ["qemu-io", "-f", "qcow2"]
    for c in cmds:
        argv += ["-c", c]
    run(*argv, name, cwd=work, ok=ok)


def writes(work, name, cs=512):
    """Out-of-order writes (fragmentation), a second L2 table, a zero write."""
    io(work, name, "write -P 0x11 0 %d" % cs, "write -P 0x22 %d %d" % (cs, cs),
       "write -P 0x33 %d %d" % (5 * cs, cs), "write -P 0x44 64k %d" % cs,
       "write -z %d %d" % (7 * cs, cs))


def patch(work, name, fn):
    with q.Image(os.path.join(work, name), writable=True) as im:
        fn(im)


def build(work):
    seeds = {}

    def seed(name, *steps):
        for step in steps:
            step(name)
        seeds[name] = os.path.join(work, name)

    seed("v2.qcow2", lambda n: create(work, n, "compat=0.10," + SMALL), lambda n: writes(work, n))
    seed("v3.qcow2", lambda n: create(work, n), lambda n: writes(work, n))
    for bits in (1, 2, 4, 8, 32, 64):
        seed("refcount%d.qcow2" % bits,
             lambda n, b=bits: create(work, n, "refcount_bits=%d,%s" % (b, SMALL)),
             lambda n: writes(work, n))
    for ctype in ("zlib", "zstd"):
        seed("compressed-%s.qcow2" % ctype,
             lambda n, c=ctype: create(work, n, "compression_type=%s,%s" % (c, SMALL)),
             lambda n: io(work, n, "write -c -P 0x41 0 512", "write -c -P 0x42 1k 512",
                          "write -P 0x43 2k 512"))
    # Extended L2 needs clusters of 16 KiB at least.
    seed("extended-l2.qcow2", lambda n: create(work, n, "extended_l2=on,cluster_size=16k", "1M"),
         lambda n: io(work, n, "write -P 0x11 0 1k", "write -z 4k 2k", "write -P 0x22 16k 16k",
                      "write -c -P 0x33 64k 16k"))
    seed("data-file.qcow2", lambda n: create(work, n, "data_file=data-file.data," + SMALL),
         lambda n: writes(work, n))
    seed("snapshots.qcow2", lambda n: create(work, n),
         lambda n: io(work, n, "write -P 0x11 0 1k"),
         lambda n: run("qemu-img", "snapshot", "-c", "s1", n, cwd=work),
         lambda n: io(work, n, "write -P 0x22 512 1k"),
         lambda n: run("qemu-img", "snapshot", "-c", "s2", n, cwd=work),
         lambda n: io(work, n, "write -P 0x33 0 512"))
    seed("bitmaps.qcow2", lambda n: create(work, n, size="1M"),
         lambda n: run("qemu-img", "bitmap", "--add", n, "b0", cwd=work),
         lambda n: run("qemu-img", "bitmap", "--add", "-g", "64k", n, "b1", cwd=work),
         lambda n: io(work, n, "write -P 0x11 0 4k", "write -P 0x22 512k 1k"),
         lambda n: run("qemu-img", "bitmap", "--add", "--disable", n, "b2", cwd=work))
    seed("backing.qcow2", lambda n: create(work, "backing.base", size="256k"),
         lambda n: create(work, n, extra=("-b", "backing.base", "-F", "qcow2")),
         lambda n: io(work, n, "write -P 0x22 1k 512"))
    seed("dirty.qcow2", lambda n: create(work, n, "lazy_refcounts=on," + SMALL),
         lambda n: io(work, n, "write -P 0x11 0 1k", "write -P 0x22 64k 512", "sigraise 9",
                      ok=(-9, 137)))
    seed("corrupt.qcow2", lambda n: create(work, n), lambda n: writes(work, n),
         lambda n: patch(work, n, lambda im: im.set_header_bits("incompatible_features",
                                                                 set_mask=2)))
    # Damaged: a leaked cluster, a refcount of zero on data, an L2 entry
    # pointing into the L1 table.
    seed("leak.qcow2", lambda n: create(work, n), lambda n: writes(work, n),
         lambda n: patch(work, n, lambda im: im.append_clusters()))
    seed("zero-refcount.qcow2", lambda n: create(work, n), lambda n: writes(work, n),
         lambda n: patch(work, n, lambda im: im.set_refcount(
             im.data_refs()[0].host_offset // im.cluster_size, 0)))
    seed("l2-into-l1.qcow2", lambda n: create(work, n), lambda n: writes(work, n),
         lambda n: patch(work, n, lambda im: im.set_l2_entry(
             0, 0, im.header.l1_table_offset | q.OFLAG_COPIED)))
    # QED: a small image with data and a zero cluster, and the same with a
    # cluster appended that nothing references (a leak).
    def qed(n):
        run("qemu-img", "create", "-q", "-f", "qed", "-o", "cluster_size=4k,table_size=2", n,
            "256k", cwd=work)
        run("qemu-io", "-f", "qed", "-c", "write -P 0x11 0 8k", "-c", "write -z 64k 4k",
            "-c", "write -P 0x22 128k 4k", n, cwd=work)
    seed("qed.qed", qed)
    seed("qed-leak.qed", qed, lambda n: os.truncate(os.path.join(work, n),
                                                    os.path.getsize(os.path.join(work, n)) + 4096))

    # QED for the repair: a data cluster two guest clusters map, an L2
    # table two L1 entries share, an unaligned data entry; and the
    # need-check bit with an unknown autoclear bit.
    def qed_shared(n):
        im = qedlib.Image(os.path.join(work, n))
        _, data = im.l2_entry(0)
        im.set_l2(192 * 1024, data)
        im.set_l2(4096, data + 100)
        im.set_l1(1, im.l1()[0])
    seed("qed-shared.qed", qed, qed_shared)

    def qed_flags(n):
        im = qedlib.Image(os.path.join(work, n))
        im.set_field("features", im.header.features | qedlib.F_NEED_CHECK)
        im.set_field("autoclear_features", 1 << 5)
    seed("qed-need-check.qed", qed, qed_flags)
    return seeds


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(HERE, "..", "corpus", "seeds")
    os.makedirs(out, exist_ok=True)
    with tempfile.TemporaryDirectory() as work:
        for name, path in sorted(build(work).items()):
            shutil.copyfile(path, os.path.join(out, name))
            print("%-24s %7d bytes" % (name, os.path.getsize(path)))


if __name__ == "__main__":
    main()
