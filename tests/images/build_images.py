#!/usr/bin/env python3
"""Build the base images the corruption catalogue starts from.

    build_images.py CACHE_DIR [--jobs N] [--only NAME ...]

Every base is made with qemu-img / qemu-io 7.2 from scratch (no binary
images in the tree), small (a few MiB virtual, a handful of clusters) and
self-contained: a base is one main file plus optional companion files
(backing file, external data file) whose names start with the base name, so
a case directory only needs copies of them. Commands run with the cache
directory as working directory so that every file name stored in an image
is relative and survives the copy.

After building, each qcow2 base is verified with qcow2lib: the features it
is meant to exercise are really present, and the refcounts qcow2lib derives
from the metadata equal the ones QEMU wrote (which validates qcow2lib itself
for every refcount width, compression, snapshots, bitmaps and LUKS).
"""

import argparse
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

sys.dont_write_bytecode = True  # keep the source tree clean
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "layout"))
import qcow2lib as q  # noqa: E402

QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")
QEMU_IO = os.environ.get("QEMU_IO", "qemu-io")

LUKS_SECRET = "secret,id=sec0,data=qcheck-test"


def _luks_target(path):
    return ["--object", LUKS_SECRET, "--image-opts",
            "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % path]


def _qcow2_target(path):
    return ["-f", "qcow2", path]


def _probe_target(path):
    # Non-qcow2 files: let qemu-img probe like a pipeline would, so that it
    # reaches "This image format does not support checks" (exit 63) instead
    # of "Image is not in qcow2 format" (exit 1), which -f qcow2 gives.
    return [path]


@dataclass
class Base:
    """A recipe: how to build one base image and how to address it."""
    name: str
    steps: list            # callables step(ctx) run in order
    verify: object = None  # callable(Image) raising AssertionError
    companions: tuple = ()  # suffixes of companion files: name + suffix
    qemu_target: object = _qcow2_target  # path -> qemu-img check arguments
    qcow2: bool = True
    consistent: bool = True  # on-disk refcounts must match the metadata

    @property
    def filename(self):
        return self.name + (".qcow2" if self.qcow2 else ".img")

    def companion_files(self):
        return [self.name + s for s in self.companions]


class _Ctx:
    def __init__(self, base, cache_dir):
        self.base, self.dir = base, cache_dir
        self.file = base.filename

    def run(self, *argv, expect_rc=0, attempts=1):
        for _ in range(attempts):
            p = subprocess.run(argv, cwd=self.dir, capture_output=True, text=True)
            if p.returncode == expect_rc:
                break
        else:
            raise RuntimeError("%s: %s exited %d (wanted %d): %s%s" % (
                self.base.name, " ".join(argv), p.returncode, expect_rc, p.stdout, p.stderr))
        return p


# ---- step builders: each returns a callable(ctx) -------------------------

def create(size="4M", opts="", fmt="qcow2", extra=(), attempts=1):
    def step(ctx):
        argv = [QEMU_IMG, "create", "-q", "-f", fmt]
        if opts:
            argv += ["-o", opts.format(name=ctx.base.name)]
        ctx.run(*argv, *extra, ctx.file, size, attempts=attempts)
    return step


def io(*cmds, expect_rc=0):
    """qemu-io commands against the current file, addressed the way the
    base needs (encrypted images need the key)."""
    def step(ctx):
        argv = [QEMU_IO]
        for c in cmds:
            argv += ["-c", c]
        if ctx.base.qemu_target is _luks_target:
            argv += _luks_target(ctx.file)
        else:
            argv += ["-f", "qcow2", ctx.file]
        ctx.run(*argv, expect_rc=expect_rc)
    return step


def snapshot(name):
    return lambda ctx: ctx.run(QEMU_IMG, "snapshot", "-c", name, ctx.file)


def bitmap_add(name, *opts):
    return lambda ctx: ctx.run(QEMU_IMG, "bitmap", "--add", *opts, ctx.file, name)


def companion(suffix, *steps):
    """Run steps with the companion file as the current file."""
    def step(ctx):
        saved, ctx.file = ctx.file, ctx.base.name + suffix
        for s in steps:
            s(ctx)
        ctx.file = saved
    return step


def patch(fn):
    """Post-process the image with qcow2lib (for states qemu-img refuses to
    create)."""
    def step(ctx):
        with q.Image(os.path.join(ctx.dir, ctx.file), writable=True) as image:
            fn(image)
    return step


def raw_bytes(data, size):
    def step(ctx):
        with open(os.path.join(ctx.dir, ctx.file), "wb") as f:
            f.write(data)
            f.truncate(size)
    return step


def workload(cs):
    """The standard write pattern in units of the cluster size `cs`:
    out-of-order guest clusters (so some are fragmented), one cluster in a
    second L2 table when the geometry has one, and a zero write."""
    return io("write -P 0x11 0 %d" % cs,
              "write -P 0x22 %d %d" % (cs, cs),
              "write -P 0x55 %d %d" % (5 * cs, cs),
              "write -P 0x33 %d %d" % (3 * cs, cs),
              "write -P 0x77 2M %d" % cs,
              "write -z %d %d" % (7 * cs, cs))


# ---- verifiers ------------------------------------------------------------

def need(cond, what):
    if not cond:
        raise AssertionError(what)


def has_data(n=1):
    return lambda im: need(len(im.data_refs()) >= n, "wanted >= %d data clusters" % n)


def has_compressed(ctype):
    def v(im):
        need(len(im.compressed_refs()) >= 2, "no compressed clusters")
        need(im.header.compression_type == ctype, "compression type")
        # several compressed clusters share one host cluster (qcow2 spec,
        # "Cluster mapping": compressed clusters)
        hosts = [im.compressed_range(r.entry)[0] // im.cluster_size for r in im.compressed_refs()]
        need(len(set(hosts)) < len(hosts), "compressed clusters not packed")
    return v


def all_of(*vs):
    def v(im):
        for f in vs:
            f(im)
    return v


def v_extl2(im):
    need(im.extended_l2, "extended L2 bit")
    bitmaps = [r.bitmap for r in im.mappings()]
    need(any(b & 0xFFFFFFFF and b & 0xFFFFFFFF != 0xFFFFFFFF for b in bitmaps), "no partial cluster")
    need(any(b >> 32 for b in bitmaps), "no zero subclusters")
    need(im.compressed_refs(), "no compressed cluster")


def v_snapshots(im):
    snaps = im.snapshots()
    need(len(snaps) == 2, "snapshots")
    l2s = [{e & q.OFFSET_MASK for e in im.read_table(s.l1_table_offset, s.l1_size) if e}
           for s in snaps]
    need(not (l2s[0] & l2s[1]), "snapshot L2 tables should have been COW'd apart")
    shared = [r for r in im.data_refs() if im.refcount(r.host_offset // im.cluster_size) > 1]
    need(shared, "no data cluster shared with a snapshot")
    need(any(not r.entry & q.OFLAG_COPIED for r in shared), "shared cluster with COPIED")


def v_bitmaps(im):
    need(im.header.autoclear_features & q.AUTOCLEAR_BITMAPS, "autoclear bit 0")
    bms = im.bitmaps()
    need(len(bms) == 3, "bitmaps")
    need(any(e & q.OFFSET_MASK for b in bms for e in im.bitmap_table(b)), "no bitmap data cluster")


def v_dirty(im):
    need(im.header.incompatible_features & q.INCOMPAT_DIRTY, "dirty bit not set")
    need(im.refcount_mismatches(), "lazy refcounts left nothing stale")


def v_backing(fmt):
    def v(im):
        need(im.backing_name, "no backing name")
        need(bool(im.extension(q.EXT_BACKING_FORMAT)) == fmt, "backing format extension")
    return v


def v_data_file(im):
    need(im.has_data_file and im.extension(q.EXT_DATA_FILE), "data file")
    need(any(r.host_offset == 0 and r.entry & q.OFLAG_COPIED for r in im.mappings()),
         "guest cluster 0 should be an allocated entry with host offset 0")


def v_luks(im):
    need(im.header.crypt_method == 2 and im.extension(q.EXT_FDE), "LUKS")


def drop_backing_format(im):
    """qemu-img 7.2 refuses -b without -F, so remove the extension."""
    im.replace_extensions([e for e in im.extensions if e.magic != q.EXT_BACKING_FORMAT])


# ---- the recipes ----------------------------------------------------------

REFCOUNT_WIDTHS = (1, 2, 4, 8, 16, 32, 64)
CLUSTER_SIZES = {"512": 512, "4k": 4096, "64k": 65536, "2m": 2 << 20}


def _recipes():
    r = []
    add = r.append
    for label, cs in CLUSTER_SIZES.items():
        size = "16M" if cs == 2 << 20 else "4M"
        steps = [create(size, "cluster_size=%d" % cs)]
        # 2 MiB clusters: two data clusters keep the file near 14 MiB
        steps.append(io("write -P 0x11 0 4k", "write -P 0x22 8M 4k") if cs == 2 << 20
                     else workload(cs))
        add(Base("v3_%s" % label, steps, verify=has_data(2)))
    add(Base("v2_64k", [create(opts="compat=0.10"), workload(65536)], verify=has_data(4)))
    add(Base("v2_512", [create(opts="compat=0.10,cluster_size=512"), workload(512)],
             verify=has_data(4)))
    for bits in REFCOUNT_WIDTHS:
        add(Base("rc%d" % bits, [create(opts="refcount_bits=%d" % bits), workload(65536)],
                 verify=has_data(4)))
    # 64-bit refcounts in 512-byte clusters: 64 entries per refcount block,
    # so even this small file needs several refcount blocks.
    add(Base("rc64_512", [create(opts="refcount_bits=64,cluster_size=512"), workload(512),
                          io("write -P 0x66 1M 64k")],
             verify=lambda im: need(len(im.refblocks()) >= 3, "wanted >= 3 refcount blocks")))
    compressed = io("write -c -P 0x41 0 64k", "write -c -P 0x42 64k 64k",
                    "write -c -P 0x43 192k 64k", "write -P 0x44 1M 64k")
    add(Base("zlib", [create(), compressed], verify=has_compressed(0)))
    add(Base("zstd", [create(opts="compression_type=zstd"), compressed], verify=has_compressed(1)))
    add(Base("zlib_4k", [create(opts="cluster_size=4k"),
                         io("write -c -P 0x41 0 4k", "write -c -P 0x42 4k 4k",
                            "write -P 0x44 64k 4k")],
             verify=has_compressed(0)))
    add(Base("extl2", [create(opts="extended_l2=on,cluster_size=64k"),
                       io("write -P 0x11 0 4k",          # subclusters 0-1 of cluster 0
                          "write -z 8k 8k",              # zero bits in an allocated cluster
                          "write -P 0x22 64k 64k",       # full cluster
                          "write -z 256k 4k",            # zero bits, unallocated cluster
                          "write -c -P 0x33 512k 64k",   # compressed
                          "write -c -P 0x34 576k 64k")],
             verify=v_extl2))
    add(Base("extl2_16k", [create(opts="extended_l2=on,cluster_size=16k"),
                           io("write -P 0x11 0 1k", "write -P 0x22 64k 16k")],
             verify=has_data(2)))
    add(Base("data_file", [create(opts="data_file={name}.data"),
                           io("write -P 0x11 0 64k", "write -P 0x22 1M 64k",
                              "write -P 0x33 192k 64k")],
             verify=v_data_file, companions=(".data",)))
    add(Base("data_file_raw", [create(opts="data_file={name}.data,data_file_raw=on"),
                               io("write -P 0x11 0 64k", "write -P 0x22 1M 64k")],
             verify=lambda im: need(im.header.autoclear_features & q.AUTOCLEAR_DATA_FILE_RAW,
                                    "raw bit"),
             companions=(".data",)))
    # Written, then killed before the lazy refcounts are flushed.
    add(Base("lazy_dirty", [create(opts="lazy_refcounts=on"),
                            io("write -P 0x11 0 64k", "write -P 0x22 1M 64k",
                               "sigraise 9", expect_rc=-9)],
             verify=v_dirty, consistent=False))
    # Same but closed cleanly: consistent refcounts (patched dirty by cases).
    add(Base("lazy_clean", [create(opts="lazy_refcounts=on"),
                            io("write -P 0x11 0 64k", "write -P 0x22 1M 64k")],
             verify=has_data(2)))
    add(Base("snapshots", [create(), io("write -P 0x11 0 64k", "write -P 0x12 64k 64k",
                                        "write -P 0x13 2M 64k"),
                           snapshot("s1"),
                           io("write -P 0x21 64k 64k", "write -P 0x22 1M 64k"),
                           snapshot("s2"),
                           io("write -P 0x31 0 64k", "write -P 0x32 3M 64k")],
             verify=v_snapshots))
    # b0, b1 enabled while data is written (so they own data clusters), b2
    # added afterwards and disabled (empty table entries).
    add(Base("bitmaps", [create(), bitmap_add("b0"), bitmap_add("b1", "-g", "512k"),
                         io("write -P 0x11 0 64k", "write -P 0x22 1M 128k"),
                         bitmap_add("b2", "--disable")],
             verify=v_bitmaps))
    add(Base("backing", [companion(".base.qcow2", create(), io("write -P 0x11 0 128k")),
                         create(extra=("-b", "backing.base.qcow2", "-F", "qcow2")),
                         io("write -P 0x22 64k 64k")],
             verify=all_of(has_data(1), v_backing(True)), companions=(".base.qcow2",)))
    add(Base("backing_nofmt", [companion(".base.qcow2", create(), io("write -P 0x11 0 128k")),
                               create(extra=("-b", "backing_nofmt.base.qcow2", "-F", "qcow2")),
                               io("write -P 0x22 64k 64k"), patch(drop_backing_format)],
             verify=all_of(has_data(1), v_backing(False)), companions=(".base.qcow2",)))
    # LUKS key setup calibrates PBKDF2 against CPU time (about 2 s whatever
    # iter-time says) and occasionally fails under load with "Unable to get
    # accurate CPU usage", hence the retries.
    add(Base("luks", [create(opts="encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
                             extra=("--object", LUKS_SECRET), attempts=10),
                      io("write -P 0x11 0 64k", "write -P 0x22 1M 64k")],
             verify=all_of(has_data(2), v_luks), qemu_target=_luks_target))
    # Files that are not qcow2 at all: qcheck must exit 63 on each.
    add(Base("raw", [raw_bytes(b"\xeb\x63\x90" + bytes(509), 1 << 20)],
             qcow2=False, qemu_target=_probe_target))
    add(Base("empty", [raw_bytes(b"", 0)], qcow2=False, qemu_target=_probe_target))
    for fmt in ("qed", "qcow", "vmdk"):
        add(Base(fmt, [create(fmt=fmt)], qcow2=False, qemu_target=_probe_target))
    return {b.name: b for b in r}


BASES = _recipes()


def build_one(base, cache_dir):
    ctx = _Ctx(base, cache_dir)
    for f in [base.filename] + base.companion_files():
        if os.path.exists(os.path.join(cache_dir, f)):
            os.unlink(os.path.join(cache_dir, f))
    for step in base.steps:
        step(ctx)
    if base.qcow2:
        with q.Image(os.path.join(cache_dir, base.filename)) as image:
            try:
                if base.verify:
                    base.verify(image)
                if base.consistent:
                    bad = image.refcount_mismatches()
                    need(not bad, "qcow2lib disagrees with QEMU's refcounts: %r" % bad)
            except AssertionError as e:
                raise AssertionError("base %s: %s" % (base.name, e)) from None
    return base


def build_all(cache_dir, names=None, jobs=4):
    """Build the named bases (default: all) into cache_dir; returns
    {name: Base}. Raises on the first failure."""
    os.makedirs(cache_dir, exist_ok=True)
    todo = [BASES[n] for n in (names or BASES)]
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        return {b.name: b for b in pool.map(lambda b: build_one(b, cache_dir), todo)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("cache_dir")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    built = build_all(args.cache_dir, args.only, args.jobs)
    for b in built.values():
        size = os.path.getsize(os.path.join(args.cache_dir, b.filename))
        print("%-16s %9d bytes  %s" % (b.name, size, " ".join(b.companion_files())))


if __name__ == "__main__":
    main()
