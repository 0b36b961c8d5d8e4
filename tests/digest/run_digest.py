#!/usr/bin/env python3
"""`qcheck --digest[=ALG]`: the guest-content digest against a reference.

    run_digest.py QCHECK WORKDIR [--filter SUBSTR] [--keep]

The digest is defined on the guest content of the active image, the bytes
`qemu-img convert -O raw` writes, cut into blocks of 64 KiB (the last one
shorter when the size is not a multiple):

    digest = H( H(block_0) || ... || H(block_n-1) || le64(virtual size) )

with H = SHA-256 for `sha256` (the default) and XXH3-128 in canonical
(big-endian) byte order for `xxh128`. `reference_digest()` below computes it
from a raw file, with hashlib (and libxxhash through ctypes for xxh128); it
is itself checked against known answers computed outside Python
(`reference:known_answers`).

Every image is built in WORKDIR/digest with qemu-img/qemu-io from fixed
patterns, so each run hashes the same bytes. For each image of IMAGES:

digest:NAME   `qemu-img convert -O raw` gives RAW; then
              * `qcheck --digest IMAGE` exits 0 and prints exactly one line
                `sha256:<64 hex>`, after the check's summary lines, equal to
                the reference digest of RAW;
              * `qcheck --digest RAW` exits 0 with the same line;
              * `qcheck --digest --output=json IMAGE` exits 0 and its JSON
                has "digest": "sha256:<hex>", the same value;
              * `qcheck --digest=xxh128` on IMAGE and on RAW: exit 0, one line
                `xxh128:<32 hex>`, the same on both, equal to the reference
                when libxxhash can be loaded (a note says when it cannot);
              * no qcheck run changes a byte of IMAGE or RAW (sha256).
raw:NAME      A raw file made here (not by qemu-img), digested directly: an
              odd length (100 KiB + 3) and an empty file.
digest:qed_*  The same for QED images (qemu-img create -f qed, qemu-io -f
              qed): data and zero clusters (`write -z`), 4 KiB clusters with
              several L2 tables, a size that is not a whole cluster, empty.
qed:same_as_qcow2  A QED image (with zero-cluster and data entries) and its
              `qemu-img convert -O qcow2` copy: the same sha256 and xxh128
              digest, the reference one.

Refusals and damaged images (refuse:*, damaged:*):
refuse:backing    an overlay with a backing file: exit 1, no digest on
                  stdout (human and JSON), a message on stderr that says
                  "backing" and is not a usage error;
refuse:data_file  an image with an external data file: the same, the
                  message says "data file";
refuse:luks       a LUKS-encrypted image: the same, it says "encrypt...";
refuse:qed_backing  a QED image with a raw backing file, without --chain:
                  the same as refuse:backing (the digest through the chain
                  is tests/chain/run_chain.py's qed_top_raw_base);
damaged:*         an L2 entry pointing past the end of the file, a data
                  cluster whose refcount is 0: the exit status is that of
                  the plain check (2), and no digest is printed (human,
                  JSON);
damaged:qed_*     a QED L2 entry past the end of the file, or mapping the
                  data of another guest offset: exit 2, no digest (stderr
                  says the check found corruptions); a leaked QED cluster:
                  exit 3 and the reference digest;
damaged:leak      a leaked cluster (exit 3 as the plain check): the
                  contract says nothing of leaks, so only this is asserted:
                  the exit status is the check's, and a digest, if printed,
                  is the reference one.

Prints PASS/FAIL name per test and a summary; exit status 0 only if
nothing failed. Case directories are kept when something failed (or with
--keep).
"""

import argparse
import ctypes
import ctypes.util
import hashlib
import json
import os
import random
import re
import shutil
import struct
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
import qcow2lib as q  # noqa: E402
import qedlib  # noqa: E402

QEMU_IMG = "qemu-img"
QEMU_IO = "qemu-io"
TIMEOUT = 120
BLOCK = 65536
KiB, MiB = 1024, 1024 * 1024
LINE_RE = {"sha256": re.compile(r"sha256:[0-9a-f]{64}"),
           "xxh128": re.compile(r"xxh128:[0-9a-f]{32}")}
SUMMARY_PREFIXES = ("No errors were found on the image.", "Image end offset:")


# ---- the reference ---------------------------------------------------------------

class _XXH128(ctypes.Structure):
    _fields_ = [("low64", ctypes.c_uint64), ("high64", ctypes.c_uint64)]


def _load_xxh3_128():
    """XXH3_128bits from libxxhash, or None when the library is missing."""
    for name in ("libxxhash.so.0", ctypes.util.find_library("xxhash")):
        if not name:
            continue
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        fn = lib.XXH3_128bits
        fn.restype = _XXH128
        fn.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        return fn
    return None


XXH3_128 = _load_xxh3_128()


def block_hash(alg, data):
    """H(data): SHA-256 (32 bytes) or XXH3-128 canonical, high half first (16 bytes)."""
    if alg == "sha256":
        return hashlib.sha256(data).digest()
    h = XXH3_128(data, len(data))
    return struct.pack(">QQ", h.high64, h.low64)


def reference_digest(path, alg="sha256"):
    """`ALG:HEX` of a raw file: H over the H of each 64 KiB block in order
    (the last block as long as what is left), then the length as le64."""
    size = os.path.getsize(path)
    concatenated = bytearray()
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK)
            if not block:
                break
            concatenated += block_hash(alg, block)
    concatenated += struct.pack("<Q", size)
    return "%s:%s" % (alg, block_hash(alg, bytes(concatenated)).hex())


# The file of known_answer_bytes() (3 blocks, the last one of 3 bytes) and
# the empty file, digested once outside Python, with coreutils and xxd:
#   split -b 65536 -a 4 FILE parts/p
#   le=$(printf '%016x' $(stat -c %s FILE) | fold -w2 | tac | tr -d '\n')
#   { for p in $(ls parts); do sha256sum < parts/$p | cut -c1-64; done; echo $le; } |
#       tr -d '\n' | xxd -r -p | sha256sum
KNOWN_ANSWERS = {
    "three_blocks": "sha256:aa435587155e6e3735871400501d382b59f31592e28bbb0ef58fc9f0781a2384",
    "empty": "sha256:af5570f5a1810b7af78caf4bc70a660f0df51e42baf91d4de5b2328de0e83dfc",
}


def known_answer_bytes():
    """Two full blocks of different fill and a 3-byte tail."""
    return b"\x5a" * BLOCK + bytes(range(256)) * (BLOCK // 256) + b"end"


# ---- running things --------------------------------------------------------------

class Test:
    """Collects the failures (and notes) of one named test. The scripts
    that import it (run_chain.py, run_fleet.py) list known bugs in their
    EXPECTED_FAILURES, {(test name, tag): bug}: an assertion so tagged is
    an expected failure, and one that passes is reported as such."""

    def __init__(self, name, expected_failures=None):
        self.name, self.fails, self.xfails, self.xpasses, self.notes = name, [], [], [], []
        self.expected_failures = expected_failures or {}

    def expect(self, cond, what, tag=None):
        bug = self.expected_failures.get((self.name, tag)) if tag else None
        if bug and cond:
            self.xpasses.append("%s (listed as failing: %s)" % (what, bug))
        elif bug:
            self.xfails.append("%s [%s]" % (what, bug))
        elif not cond:
            self.fails.append(what)
        return cond


class SetupError(Exception):
    pass


def run(cmd, **kw):
    """A command that must succeed (image building)."""
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, **kw)
    if res.returncode != 0:
        raise SetupError("%s: exit %d: %s" % (" ".join(cmd), res.returncode,
                                              (res.stderr or res.stdout).strip()))
    return res


def create(path, size, opts="", backing=None, fmt="qcow2", backing_fmt="qcow2"):
    """qemu-img create, run in the image's directory: a relative data file
    name is created there (a backing name is relative to the image anyway)."""
    cmd = [QEMU_IMG, "create", "-q", "-f", fmt]
    if opts:
        cmd += ["-o", opts]
    if backing:
        cmd += ["-b", backing, "-F", backing_fmt]
    run(cmd + [os.path.abspath(path), str(size)], cwd=os.path.dirname(os.path.abspath(path)))


def qemu_io(path, *commands, fmt="qcow2"):
    """qemu-io commands on an image (qcow2 unless `fmt`), run in its
    directory (QEMU 7.2 opens a relative data file name from there); any
    failure message is a set-up error."""
    cmd = [QEMU_IO, "-f", fmt]
    for c in commands:
        cmd += ["-c", c]
    res = run(cmd + [os.path.abspath(path)], cwd=os.path.dirname(os.path.abspath(path)))
    if re.search(r"failed|error", res.stdout + res.stderr, re.IGNORECASE):
        raise SetupError("qemu-io %s: %s" % (path, (res.stdout + res.stderr).strip()))


def write_raw(path, chunks, size):
    """A raw file of `size` bytes: zeros but for (offset, bytes) chunks."""
    with open(path, "wb") as f:
        f.truncate(size)
        for off, data in chunks:
            f.seek(off)
            f.write(data)


def sha256_file(path):
    return q.file_sha256(path)


def sanitizer_report(text):
    return "Sanitizer" in text or "runtime error:" in text


# ---- the images ------------------------------------------------------------------
# Each builder makes NAME.qcow2 in a directory and returns its path. The data
# patterns are fixed (qemu-io's -P byte, or a seeded random.Random), so a
# run always hashes the same content.

def scattered_writes(seed, size, count, granularity, max_len):
    """`count` qemu-io writes at seeded offsets, multiples of `granularity`
    (lengths too), inside `size`; each with its own pattern byte."""
    rng = random.Random(seed)
    out = []
    for _ in range(count):
        length = rng.randrange(1, max_len // granularity + 1) * granularity
        off = rng.randrange(0, (size - length) // granularity + 1) * granularity
        out.append("write -P 0x%02x %d %d" % (rng.randrange(1, 256), off, length))
    return out


def build_plain_64k(d):
    img = os.path.join(d, "plain_64k.qcow2")
    create(img, 4 * MiB)
    # unaligned (byte granular) writes too: qcow2 has request alignment 1
    qemu_io(img, *scattered_writes(1, 4 * MiB, 12, 512, 96 * KiB),
            "write -P 0x77 70001 3333", "write -P 0x78 4190000 4304")
    return img


def cluster_size_builder(cluster, size, seed, count, max_len):
    def build(d):
        img = os.path.join(d, "cluster_%d.qcow2" % cluster)
        create(img, size, "cluster_size=%d" % cluster)
        qemu_io(img, *scattered_writes(seed, size, count, 512, max_len))
        if cluster > BLOCK:
            # QEMU writes every 2 MiB metadata cluster in full: give the
            # zeros back to the file system (the content stays the same)
            run(["fallocate", "--dig-holes", img])
        return img
    return build


def build_size_1m_512(d):
    img = os.path.join(d, "size_1m_512.qcow2")
    create(img, MiB + 512)
    qemu_io(img, "write -P 0x21 0 4096", "write -P 0x22 %d 512" % MiB,  # the last sector
            "write -P 0x23 %d 70000" % (MiB - 70000))
    return img


def build_size_100k_3(d):
    """qemu-img rounds 100 KiB + 3 up to the sector (102912 bytes)."""
    img = os.path.join(d, "size_100k_3.qcow2")
    create(img, 100 * KiB + 3)
    qemu_io(img, "write -P 0x31 1001 77", "write -P 0x32 102000 912")
    return img


def build_size_header_unaligned(d):
    """The header says 100 KiB + 3; QEMU reads 100 KiB of it (the size
    rounded down to the sector), and so does `qemu-img convert`."""
    img = os.path.join(d, "size_header_unaligned.qcow2")
    create(img, 100 * KiB + 512)
    qemu_io(img, "write -P 0x41 0 512", "write -P 0x42 101000 1912")
    with q.Image(img, writable=True) as im:
        im.set_header_field("size", 100 * KiB + 3)
    return img


def build_zero_clusters(d):
    img = os.path.join(d, "zero_clusters.qcow2")
    create(img, 4 * MiB)
    qemu_io(img, "write -P 0x51 0 1M", "write -P 0x52 2M 1M",
            "write -z 64K 128K",          # zero flag over allocated clusters
            "write -z 2M 4K",             # part of a cluster: zeros written
            "write -z 3M 512K",           # over unallocated clusters
            "write -z -u 512K 64K")       # zero flag, host cluster freed
    return img


def build_discarded(d):
    img = os.path.join(d, "discarded.qcow2")
    create(img, 4 * MiB)
    qemu_io(img, "write -P 0x61 0 2M", "write -P 0x62 3M 512K",
            "discard 128K 256K", "discard 1M 64K", "discard 3M 64K",
            "discard 1536K 4K")           # less than a cluster
    return img


def compressible_source(path, size, seed):
    """A raw file with pattern-filled, random (incompressible), half-zero
    and all-zero 64 KiB pieces, and a tail that is not a whole cluster."""
    rng = random.Random(seed)
    chunks = []
    for i, off in enumerate(range(0, size, BLOCK)):
        kind = i % 5
        if kind == 0:
            chunks.append((off, bytes([0x70 + i % 16]) * BLOCK))
        elif kind == 1:
            chunks.append((off, rng.randbytes(BLOCK)))
        elif kind == 2:
            chunks.append((off, bytes(range(256)) * (BLOCK // 512)))  # first half only
        elif kind == 3:
            chunks.append((off + 1000, rng.randbytes(3000)))
        # kind 4: all zero
    write_raw(path, [(o, c[:size - o]) for o, c in chunks], size)


def compressed_builder(compression_type):
    def build(d):
        src = os.path.join(d, "source_%s.raw" % compression_type)
        img = os.path.join(d, "compressed_%s.qcow2" % compression_type)
        compressible_source(src, 2 * MiB + 4 * KiB, 7)
        run([QEMU_IMG, "convert", "-c", "-f", "raw", "-O", "qcow2",
             "-o", "compression_type=%s" % compression_type, src, img])
        with q.Image(img) as im:
            if not im.compressed_refs():
                raise SetupError("%s: no compressed cluster" % img)
            if not im.data_refs():
                raise SetupError("%s: no uncompressed cluster (random data)" % img)
        # a guest write over compressed clusters, and a zeroed one
        qemu_io(img, "write -P 0x7e 4096 512", "write -z 128K 64K")
        return img
    return build


def build_extended_l2(d):
    """64 KiB clusters of 32 subclusters of 2 KiB."""
    img = os.path.join(d, "extended_l2.qcow2")
    create(img, 4 * MiB, "extended_l2=on,cluster_size=64k")
    qemu_io(img, "write -P 0x81 0 4K", "write -P 0x82 20K 4K", "write -P 0x83 60K 4K",
            "write -P 0x84 1M 64K", "write -P 0x85 2M 4K", "write -P 0x86 3M 1000",
            "write -z 22K 2K",            # zero subcluster inside allocated data
            "write -z 1M 6K",             # zero subclusters at a cluster start
            "write -z 1086K 2K",          # the last subcluster of that cluster
            "write -z 2560K 2K",          # in an unallocated cluster
            "discard 2M 64K")
    with q.Image(img, writable=True) as im:
        if not any(r.bitmap >> 32 for r in im.mappings()):
            raise SetupError("%s: no subcluster has its zero bit" % img)
        # Subcluster 10 of the cluster at 1 MiB holds 0x84 on the host;
        # with its allocation bit clear (and no backing file) it reads as
        # zeros. QEMU writes no such state itself, but reads it so.
        ref = next(r for r in im.mappings() if r.l2_index == 16)
        if not ref.bitmap & (1 << 10):
            raise SetupError("%s: subcluster 10 at 1 MiB is not allocated" % img)
        im.set_l2_entry(ref.l1_index, ref.l2_index, ref.entry, bitmap=ref.bitmap & ~(1 << 10))
    return img


def build_snapshots(d):
    """The active image differs from both snapshots."""
    img = os.path.join(d, "snapshots.qcow2")
    create(img, 4 * MiB)
    qemu_io(img, "write -P 0x91 0 1M", "write -P 0x92 2M 256K")
    run([QEMU_IMG, "snapshot", "-c", "first", img])
    qemu_io(img, "write -P 0x93 64K 128K", "write -z 2M 64K", "discard 512K 64K",
            "write -P 0x94 3M 4K")
    run([QEMU_IMG, "snapshot", "-c", "second", img])
    qemu_io(img, "write -P 0x95 0 4K", "write -P 0x96 3M 8K", "discard 2112K 64K")
    return img


def build_v2(d):
    img = os.path.join(d, "v2.qcow2")
    create(img, 4 * MiB, "compat=0.10")
    qemu_io(img, *scattered_writes(3, 4 * MiB, 8, 512, 128 * KiB),
            "write -z 1M 64K",            # v2 has no zero flag
            "discard 64K 64K")
    return img


def image_format(path):
    return "qed" if path.endswith(".qed") else "qcow2"


def qed_builder(name, size, opts, *commands):
    """A QED image (`opts` for qemu-img create -o) written by qemu-io."""
    def build(d):
        img = os.path.join(d, name + ".qed")
        create(img, size, opts, fmt="qed")
        if commands:
            qemu_io(img, *commands, fmt="qed")
        return img
    return build


QED_IMAGES = [
    # data, zero clusters over data and over nothing, a zero write of part
    # of a cluster (zeros written as data), sector-granular writes
    ("qed_plain", qed_builder("qed_plain", 4 * MiB, "",
                              *scattered_writes(21, 4 * MiB, 12, 512, 96 * KiB),
                              "write -P 0x61 0 256k", "write -z 64k 64k", "write -z 3M 128k",
                              "write -z 200k 4k", "write -P 0x62 4190208 4096")),
    # 4 KiB clusters, two-cluster tables: eight L2 tables over 16 MiB
    ("qed_cluster_4k", qed_builder("qed_cluster_4k", 16 * MiB, "cluster_size=4096,table_size=2",
                                   *scattered_writes(22, 16 * MiB, 30, 512, 24 * KiB),
                                   "write -z 5M 8k")),
    # a guest size that is not a whole cluster: the last block is short
    ("qed_size_1m_512", qed_builder("qed_size_1m_512", MiB + 512, "",
                                    "write -P 0x63 0 4096", "write -P 0x64 %d 512" % MiB)),
    ("qed_empty", qed_builder("qed_empty", 16 * MiB, "")),
]


def empty_builder(size):
    def build(d):
        img = os.path.join(d, "empty_%d.qcow2" % size)
        create(img, size)
        return img
    return build


IMAGES = [
    ("plain_64k", build_plain_64k),
    ("cluster_4k", cluster_size_builder(4096, 2 * MiB, 11, 20, 24 * KiB)),
    ("cluster_512", cluster_size_builder(512, MiB, 12, 20, 8 * KiB)),
    ("cluster_2m", cluster_size_builder(2 * MiB, 8 * MiB, 13, 3, 64 * KiB)),
    ("size_1m_512", build_size_1m_512),
    ("size_100k_3", build_size_100k_3),
    ("size_header_unaligned", build_size_header_unaligned),
    ("zero_clusters", build_zero_clusters),
    ("discarded", build_discarded),
    ("compressed_zlib", compressed_builder("zlib")),
    ("compressed_zstd", compressed_builder("zstd")),
    ("extended_l2", build_extended_l2),
    ("snapshots", build_snapshots),
    ("v2", build_v2),
    ("empty", empty_builder(16 * MiB)),
    ("empty_size_0", empty_builder(0)),
] + QED_IMAGES


# ---- qcheck ----------------------------------------------------------------------

class Runner:
    def __init__(self, qcheck, workdir):
        self.qcheck = qcheck
        self.workdir = os.path.join(os.path.abspath(workdir), "digest")

    def fresh_dir(self, name):
        d = os.path.join(self.workdir, name.replace(":", "_"))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def qcheck_run(self, t, args, *paths):
        """Run qcheck; fail the test if it changed any of `paths` or a
        sanitizer spoke. Returns (exit status, stdout, stderr)."""
        before = [sha256_file(p) for p in paths]
        res = subprocess.run([self.qcheck, *args], capture_output=True, text=True,
                             timeout=TIMEOUT)
        what = "qcheck " + " ".join(os.path.basename(a) for a in args)
        t.expect(not sanitizer_report(res.stderr), "%s: sanitizer report:\n%s" % (what, res.stderr))
        for p, h in zip(paths, before):
            t.expect(sha256_file(p) == h, "%s changed %s" % (what, os.path.basename(p)))
        return res.returncode, res.stdout, res.stderr

    def digest_lines(self, t, what, out, alg):
        """The `ALG:HEX` line of human output; fails unless there is exactly
        one line mentioning the algorithm and it has the form."""
        mentions = [line for line in out.splitlines() if (alg + ":") in line]
        if not t.expect(len(mentions) == 1, "%s: %d lines mention %s: (want 1), stdout:\n%s"
                        % (what, len(mentions), alg, out)):
            return None
        t.expect(LINE_RE[alg].fullmatch(mentions[0]) is not None,
                 "%s: %r is not a line of the form %s:<hex>" % (what, mentions[0], alg))
        return mentions[0]

    def human(self, t, path, alg, others, summary):
        """`qcheck --digest[=ALG] PATH`: exit 0 and its one digest line
        (after the summary lines when `summary`)."""
        opt = "--digest" if alg == "sha256" else "--digest=" + alg
        what = "%s %s" % (opt, os.path.basename(path))
        rc, out, err = self.qcheck_run(t, [opt, path], path, *others)
        t.expect(rc == 0, "%s: exit %d (want 0), stderr: %s" % (what, rc, err.strip()))
        line = self.digest_lines(t, what, out, alg)
        if line and summary:
            lines = out.splitlines()
            at = lines.index(line)
            summary_at = [i for i, x in enumerate(lines) if x.startswith(SUMMARY_PREFIXES)]
            t.expect(summary_at and max(summary_at) < at,
                     "%s: the digest line is not after the summary lines:\n%s" % (what, out))
        return line

    def json_digest(self, t, path, others):
        what = "--digest --output=json %s" % os.path.basename(path)
        rc, out, err = self.qcheck_run(t, ["--digest", "--output=json", path], path, *others)
        t.expect(rc == 0, "%s: exit %d (want 0), stderr: %s" % (what, rc, err.strip()))
        try:
            obj = json.loads(out)
        except ValueError as e:
            t.expect(False, "%s: stdout is not JSON (%s):\n%s" % (what, e, out))
            return None
        value = obj.get("digest")
        t.expect(isinstance(value, str) and LINE_RE["sha256"].fullmatch(value),
                 "%s: \"digest\" is %r" % (what, value))
        return value

    # ---- the tests -----------------------------------------------------------

    def digest_case(self, t, builder):
        d = self.fresh_dir(t.name)
        img = builder(d)
        raw = os.path.join(d, "guest.raw")
        run([QEMU_IMG, "convert", "-f", image_format(img), "-O", "raw", img, raw])
        ref = reference_digest(raw)
        got = self.human(t, img, "sha256", [raw], summary=True)
        t.expect(got == ref, "--digest IMAGE printed %s, the reference is %s" % (got, ref))
        got = self.human(t, raw, "sha256", [img], summary=False)
        t.expect(got == ref, "--digest RAW printed %s, the reference is %s" % (got, ref))
        got = self.json_digest(t, img, [raw])
        t.expect(got == ref, "JSON \"digest\" is %s, the reference is %s" % (got, ref))
        self.xxh128(t, img, raw)

    def xxh128(self, t, img, raw):
        on_img = self.human(t, img, "xxh128", [raw], summary=True)
        on_raw = self.human(t, raw, "xxh128", [img], summary=False)
        t.expect(on_img == on_raw, "--digest=xxh128: %s on the image, %s on the raw copy"
                 % (on_img, on_raw))
        if XXH3_128 is None:
            t.notes.append("libxxhash not loadable: xxh128 form and equality only")
            return
        ref = reference_digest(raw, "xxh128")
        t.expect(on_img == ref, "--digest=xxh128 printed %s, the reference is %s" % (on_img, ref))

    def raw_case(self, t, data):
        d = self.fresh_dir(t.name)
        raw = os.path.join(d, "file.raw")
        with open(raw, "wb") as f:
            f.write(data)
        ref = reference_digest(raw)
        got = self.human(t, raw, "sha256", [], summary=False)
        t.expect(got == ref, "--digest RAW printed %s, the reference is %s" % (got, ref))
        if XXH3_128 is not None:
            got = self.human(t, raw, "xxh128", [], summary=False)
            ref = reference_digest(raw, "xxh128")
            t.expect(got == ref, "--digest=xxh128 RAW printed %s, the reference is %s" % (got, ref))

    def no_digest(self, t, img, others, want_rc, allowed=None):
        """Human and JSON runs: exit `want_rc`; no digest printed (or, with
        `allowed`, only that one). Returns the human run's stderr."""
        for json_mode in (False, True):
            args = ["--digest"] + (["--output=json"] if json_mode else []) + [img]
            what = "qcheck " + " ".join(os.path.basename(a) for a in args)
            rc, out, err = self.qcheck_run(t, args, img, *others)
            t.expect(rc == want_rc, "%s: exit %d (want %d), stderr: %s"
                     % (what, rc, want_rc, err.strip()))
            if json_mode and out.strip():  # a refusal may print nothing at all
                try:
                    printed = json.loads(out).get("digest")
                except ValueError:
                    t.expect(False, "%s: stdout is not JSON:\n%s" % (what, out))
                    printed = "sha256:" if "sha256:" in out else None
            elif json_mode:
                printed = None
            else:
                found = LINE_RE["sha256"].search(out)
                printed = found.group(0) if found else ("sha256:" if "sha256:" in out else None)
            t.expect(printed is None or printed == allowed,
                     "%s: printed a digest (%s)" % (what, printed))
            if not json_mode:
                human_err = err
        return human_err

    def refused(self, t, img, others, reason):
        """Exit 1, no digest, and a message on stderr that names `reason`
        (a regular expression) and is not a usage error: a qcheck that does
        not know --digest exits 1 too."""
        err = self.no_digest(t, img, others, 1)
        t.expect(re.search(reason, err, re.IGNORECASE) and "--help" not in err,
                 "--digest %s: stderr does not say /%s/ (or is a usage error): %r"
                 % (os.path.basename(img), reason, err.strip()))

    def refuse_backing(self, t):
        d = self.fresh_dir(t.name)
        base, top = os.path.join(d, "base.qcow2"), os.path.join(d, "top.qcow2")
        create(base, 4 * MiB)
        qemu_io(base, "write -P 0xa1 0 1M")
        create(top, 4 * MiB, backing="base.qcow2")
        qemu_io(top, "write -P 0xa2 64K 4K")
        self.refused(t, top, [base], r"backing")

    def refuse_data_file(self, t):
        d = self.fresh_dir(t.name)
        img, data = os.path.join(d, "img.qcow2"), os.path.join(d, "img.data")
        create(img, 4 * MiB, "data_file=img.data")
        qemu_io(img, "write -P 0xb1 0 1M")
        self.refused(t, img, [data], r"data.file")

    def refuse_luks(self, t):
        d = self.fresh_dir(t.name)
        img = os.path.join(d, "luks.qcow2")
        secret = "secret,id=sec0,data=digest-test"
        run([QEMU_IMG, "create", "-q", "-f", "qcow2", "--object", secret, "-o",
             "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10", img, "4M"])
        run([QEMU_IO, "--object", secret, "--image-opts", "-c", "write -P 0xc1 0 64K",
             "driver=qcow2,file.filename=%s,encrypt.key-secret=sec0" % img])
        self.refused(t, img, [], r"encrypt")

    def damaged(self, t, patch, want_rc, leak=False):
        """A clean plain image, patched; the plain check's exit status must
        be `want_rc`, and --digest must keep it and print no digest (for a
        leak, no digest but the reference)."""
        d = self.fresh_dir(t.name)
        img = os.path.join(d, "img.qcow2")
        create(img, 4 * MiB)
        qemu_io(img, "write -P 0xd1 0 256K", "write -P 0xd2 1M 64K")
        allowed = None
        if leak:  # the guest content does not change: the reference is known
            raw = os.path.join(d, "guest.raw")
            run([QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", img, raw])
            allowed = reference_digest(raw)
        with q.Image(img, writable=True) as im:
            patch(im)
        rc, _, err = self.qcheck_run(t, [img], img)
        if not t.expect(rc == want_rc, "test set-up: the plain check exits %d (want %d): %s"
                        % (rc, want_rc, err.strip())):
            return
        self.no_digest(t, img, [], want_rc, allowed)
        if leak:
            _, out, _ = self.qcheck_run(t, ["--digest", img], img)
            t.notes.append("digest printed" if allowed in out else "no digest printed")

    def qed_same_as_qcow2(self, t):
        """A QED image and its `qemu-img convert -O qcow2` copy: the same
        digest (sha256 and xxh128), the reference one; the QED image has
        zero-cluster entries (1) and data entries (the set-up)."""
        d = self.fresh_dir(t.name)
        img = dict(QED_IMAGES)["qed_plain"](d)
        entries = [e for i, e1 in enumerate(qedlib.Image(img).l1()) if e1
                   for e in qedlib.Image(img).l2(i)]
        t.expect(qedlib.ZERO_CLUSTER in entries and
                 any(e > qedlib.ZERO_CLUSTER for e in entries),
                 "set-up: the QED image has no zero cluster or no data cluster")
        copy, raw = os.path.join(d, "copy.qcow2"), os.path.join(d, "guest.raw")
        run([QEMU_IMG, "convert", "-f", "qed", "-O", "qcow2", img, copy])
        run([QEMU_IMG, "convert", "-f", "qed", "-O", "raw", img, raw])
        for alg in ("sha256", "xxh128"):
            on_qed = self.human(t, img, alg, [copy], summary=True)
            on_qcow2 = self.human(t, copy, alg, [img], summary=True)
            t.expect(on_qed is not None and on_qed == on_qcow2,
                     "--digest=%s: %s on the QED image, %s on its qcow2 copy"
                     % (alg, on_qed, on_qcow2))
            if alg == "sha256" or XXH3_128 is not None:
                ref = reference_digest(raw, alg)
                t.expect(on_qed == ref, "--digest=%s of the QED image: %s, the reference %s"
                         % (alg, on_qed, ref))

    def refuse_qed_backing(self, t):
        """A QED image with a raw backing file, without --chain: refused as
        a qcow2 overlay is (exit 1, "backing")."""
        d = self.fresh_dir(t.name)
        base, top = os.path.join(d, "base.raw"), os.path.join(d, "top.qed")
        write_raw(base, [(0, b"\x5a" * 65536)], 4 * MiB)
        create(top, 4 * MiB, backing="base.raw", backing_fmt="raw", fmt="qed")
        qemu_io(top, "write -P 0xa2 64K 4K", fmt="qed")
        self.refused(t, top, [base], r"backing")

    def qed_damaged(self, t, patch, want_rc, leak=False):
        """damaged() for a QED image, patched with layout/qedlib.py."""
        d = self.fresh_dir(t.name)
        img = os.path.join(d, "img.qed")
        create(img, 4 * MiB, fmt="qed")
        qemu_io(img, "write -P 0xd1 0 256K", "write -P 0xd2 1M 64K", fmt="qed")
        allowed = None
        if leak:
            raw = os.path.join(d, "guest.raw")
            run([QEMU_IMG, "convert", "-f", "qed", "-O", "raw", img, raw])
            allowed = reference_digest(raw)
        patch(qedlib.Image(img))
        rc, _, err = self.qcheck_run(t, [img], img)
        if not t.expect(rc == want_rc, "test set-up: the plain check exits %d (want %d): %s"
                        % (rc, want_rc, err.strip())):
            return
        err = self.no_digest(t, img, [], want_rc, allowed)
        if leak:
            _, out, _ = self.qcheck_run(t, ["--digest", img], img)
            t.expect(allowed in out, "--digest of a leaky QED image printed no digest: %r" % out)
        else:
            t.expect("corruptions" in err, "no digest, but stderr does not say why: %r" % err)

    def deep_json(self, t, img, want_rc):
        """`qcheck --deep --output=json IMG`: its exit status and the
        compressedStreamInvalid findings."""
        rc, out, err = self.qcheck_run(t, ["--deep", "--output=json", img], img)
        t.expect(rc == want_rc, "--deep %s: exit %d (want %d), stderr: %s"
                 % (os.path.basename(img), rc, want_rc, err.strip()[-300:]))
        try:
            return [p for p in json.loads(out).get("problems", [])
                    if p.get("id") == "compressedStreamInvalid"]
        except ValueError:
            t.fails.append("--deep --output=json: not JSON: %r" % out[:200])
            return []

    def deep_case(self, t, compression_type):
        """--deep decompresses every compressed cluster: an intact image
        stays clean; one whose compressed stream is damaged is a corruption
        (compressedStreamInvalid, naming the host range) that the plain
        check, like qemu-img check, does not see, and gets no digest."""
        d = self.fresh_dir(t.name)
        img = compressed_builder(compression_type)(d)
        t.expect(self.deep_json(t, img, 0) == [], "--deep reports an intact image")
        with q.Image(img, writable=True) as im:
            ref = im.compressed_refs()[0]
            host, length = im.compressed_range(ref.entry)
            im.write(host, b"\xff" * 16)
        rc, _, _ = self.qcheck_run(t, [img], img)
        t.expect(rc == 0, "the plain check of the damaged image exits %d (want 0: it does not "
                 "decompress)" % rc)
        found = self.deep_json(t, img, 2)
        t.expect(len(found) == 1 and found[0].get("host_offset") == host
                 and found[0].get("severity") == "corruption",
                 "--deep: want one compressedStreamInvalid at host 0x%x, got %r" % (host, found))
        rc, out, err = self.qcheck_run(t, ["--digest", img], img)
        t.expect(rc == 1 and "sha256:" not in out and "decompress" in err,
                 "--digest of the damaged image: exit %d, stdout %r, stderr %r"
                 % (rc, out[-200:], err.strip()[-300:]))

    def run(self, flt):
        tests = [("reference:known_answers", self.known_answers)]
        tests += [("digest:" + name, lambda t, b=build: self.digest_case(t, b))
                  for name, build in IMAGES]
        tests += [
            ("raw:odd_length", lambda t: self.raw_case(
                t, bytes(random.Random(5).randbytes(100 * KiB + 3)))),
            ("raw:empty", lambda t: self.raw_case(t, b"")),
            ("refuse:backing", self.refuse_backing),
            ("refuse:data_file", self.refuse_data_file),
            ("refuse:luks", self.refuse_luks),
            ("damaged:l2_past_eof", lambda t: self.damaged(t, l2_past_eof, 2)),
            ("damaged:refcount_zero", lambda t: self.damaged(t, refcount_zero, 2)),
            ("damaged:leak", lambda t: self.damaged(t, leak_cluster, 3, leak=True)),
            ("qed:same_as_qcow2", self.qed_same_as_qcow2),
            ("refuse:qed_backing", self.refuse_qed_backing),
            ("damaged:qed_l2_past_eof", lambda t: self.qed_damaged(t, qed_l2_past_eof, 2)),
            ("damaged:qed_referenced_twice",
             lambda t: self.qed_damaged(t, qed_referenced_twice, 2)),
            ("damaged:qed_leak", lambda t: self.qed_damaged(t, qed_leak, 3, leak=True)),
            ("deep:zlib", lambda t: self.deep_case(t, "zlib")),
            ("deep:zstd", lambda t: self.deep_case(t, "zstd")),
        ]
        failed = passed = 0
        for name, fn in tests:
            if flt and flt not in name:
                continue
            t = Test(name)
            try:
                fn(t)
            except (SetupError, subprocess.TimeoutExpired, AssertionError, OSError) as e:
                t.fails.append("%s: %s" % (type(e).__name__, e))
            if t.fails:
                failed += 1
                print("FAIL %s: %s" % (name, "\n    ".join([""] + t.fails)), flush=True)
            else:
                passed += 1
                print("PASS %s%s" % (name, "  (%s)" % "; ".join(t.notes) if t.notes else ""),
                      flush=True)
        print("\n%d passed, %d failed" % (passed, failed))
        return failed

    def known_answers(self, t):
        d = self.fresh_dir(t.name)
        for name, data in (("three_blocks", known_answer_bytes()), ("empty", b"")):
            path = os.path.join(d, name)
            with open(path, "wb") as f:
                f.write(data)
            got = reference_digest(path)
            t.expect(got == KNOWN_ANSWERS[name], "reference_digest(%s) is %s, the known answer %s"
                     % (name, got, KNOWN_ANSWERS[name]))
        if XXH3_128 is not None:
            # XXH3-128 of no bytes, as published with xxHash (canonical form)
            t.expect(block_hash("xxh128", b"").hex() == "99aa06d3014798d86001c324468d497f",
                     "XXH3-128 of no bytes is %s" % block_hash("xxh128", b"").hex())


# ---- damage ----------------------------------------------------------------------

def l2_past_eof(im):
    """The first data cluster's L2 entry points 16 clusters past the end."""
    ref = im.data_refs()[0]
    past = q.align_up(im.file_size, im.cluster_size) + 16 * im.cluster_size
    im.set_l2_entry(ref.l1_index, ref.l2_index, q.OFLAG_COPIED | past)


def refcount_zero(im):
    """The first data cluster is in use, its refcount says free."""
    im.set_refcount(im.data_refs()[0].host_offset // im.cluster_size, 0)


def leak_cluster(im):
    """A cluster with refcount 1 that nothing points to."""
    im.append_clusters(count=1)


def qed_l2_past_eof(im):
    """The QED L2 entry of guest offset 64 KiB points 16 clusters past the end."""
    im.set_l2(64 * KiB, im.file_size() + 16 * im.cluster_size)


def qed_referenced_twice(im):
    """The QED L2 entry of guest offset 1 MiB points to the data of offset 0."""
    im.set_l2(MiB, im.l2_entry(0)[1])


def qed_leak(im):
    """A cluster appended to a QED image: nothing references it."""
    im.append_clusters(1)


def script_main(doc, make_runner):
    """The command line of this script and of tests/chain/run_chain.py:
    QCHECK WORKDIR [--filter TEXT] [--keep]. make_runner(args) gives the
    runner; its work directory is removed unless something failed or
    --keep was given."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("qcheck")
    ap.add_argument("workdir")
    ap.add_argument("--filter", default="")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    if not os.access(args.qcheck, os.X_OK):
        print("%s is not an executable" % args.qcheck)
        return 1
    runner = make_runner(args)
    failed = runner.run(args.filter)
    if not args.keep and not failed:
        shutil.rmtree(runner.workdir, ignore_errors=True)
    return 1 if failed else 0


def main():
    return script_main(__doc__, lambda args: Runner(args.qcheck, args.workdir))


if __name__ == "__main__":
    sys.exit(main())
