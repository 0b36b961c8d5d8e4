#!/usr/bin/env python3
"""Benchmark of the pre-migration validation modes (issue 13): `qcheck
--digest`, `--deep` and `--chain` against what a pipeline does without them.

    validate.py [--qcheck PATH] [--work DIR] [--runs N] [--repeat-budget S]
                [--only ROW[,ROW...]] [--markdown] [--smoke]

Rows (--only names):

  digest  `qcheck --digest` (sha256, then xxh128) on a 1 TiB qcow2 image with
          10 GiB of mixed data spread over the disk, against
          `qemu-img convert -O raw IMG RAW` followed by `sha256sum RAW` (RAW is
          a sparse file in the work folder, deleted after each run; qemu-img
          cannot write raw to a pipe: "Could not resize file"). Target >= 10x.
          After the first run of the pipeline, `qcheck --digest RAW` (both
          algorithms) must equal qcheck's digest of the qcow2 image.
  empty   `qcheck --digest` (sha256, xxh128) on empty 1 TiB and 8 TiB images;
          target under 1 s (the published figure for blkhash on an empty
          8 TiB image is 3.7 s). The sha256 digest must equal one computed
          here from the definition (all blocks zero).
  deep    `qcheck --deep` on a 64 GiB image of 1 M zlib-compressed 64 KiB
          clusters (log-like text, some clusters partly zero), against
          `qemu-img convert -n IMG --target-image-opts driver=null-co,size=N`
          (decompresses every cluster, writes nowhere). Target: qcheck faster.
          CPU time (user + sys, from wait4) is shown for both.
  chain   `qcheck --chain TOP` on a chain of 10 qcow2 layers against the sum of
          10 runs of `qcheck LAYER`, one per layer. Target: chain <= sum.
          Skipped, with a message, when `qcheck --help` does not list --chain.

Images are built once in the work folder (default $QC_BENCH_WORK or
/var/tmp/qcheck-bench) and reused, named by a hash of their recipe, with
bench.py's ensure_image. Per row: one untimed warm-up run of each qcheck
command (its output is kept and checked), then --runs rounds alternating the
peer and qcheck; a side is repeated only while the time it has taken so far
is under --repeat-budget seconds (the digest pipeline hashes 1 TiB and takes
most of an hour: it runs once). Medians of wall time are shown.

Exit status: 0 when every row ran with the expected exit codes and the
digests agree, whatever the figures; 1 otherwise (a build failed, a tool
failed or was killed, digests differ). --smoke: tiny versions of every
image in a temporary folder (deleted after), one run, same checks, plus
qemu-img's raw copy of the compressed image digested by qcheck; it takes a
few seconds and runs in the test suite (CTest entry bench_validate_smoke).
"""

import hashlib
import os
import random
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from array import array

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "digest"))
import bench as B  # noqa: E402
import qcow2lib as q  # noqa: E402  (bench.py put layout/ on sys.path)
from run_digest import block_hash  # noqa: E402

KiB, MiB, GiB, TiB = B.KiB, B.MiB, B.GiB, B.TiB
CLUSTER = 64 * KiB
BLKHASH_EMPTY_8T_S = 3.7  # published: blkhash on an empty 8 TiB image


# --------------------------------------------------------------------------
# Data: text that compresses like logs, and mixed blocks
# --------------------------------------------------------------------------
LOG_USERS = ["root", "admin", "backup", "deploy", "www-data", "postgres", "alice", "bob"]
LOG_TEMPLATES = [
    "sshd[{pid}]: Accepted publickey for {user} from 10.0.{a}.{b} port {port} ssh2",
    "sshd[{pid}]: pam_unix(sshd:session): session opened for user {user}(uid={uid}) by (uid=0)",
    "sshd[{pid}]: Received disconnect from 10.0.{a}.{b} port {port}:11: disconnected by user",
    "CRON[{pid}]: (root) CMD (command -v debian-sa1 > /dev/null && debian-sa1 1 1)",
    "systemd[1]: Started Session {n} of User {user}.",
    "systemd[1]: session-{n}.scope: Deactivated successfully.",
    "kernel: [{ts}.{us}] EXT4-fs (vda1): mounted filesystem with ordered data mode.",
    "nginx: 10.0.{a}.{b} - - \"GET /api/v1/images/{n}/status HTTP/1.1\" 200 {size} \"-\" "
    "\"agent/1.{a}\"",
    "nginx: 10.0.{a}.{b} - - \"PUT /api/v1/images/{n}/blocks/{port} HTTP/1.1\" 204 0 \"-\" "
    "\"curl/7.88.1\"",
    "postgres[{pid}]: LOG:  checkpoint complete: wrote {a} buffers ({b}.{a}%); "
    "0 WAL file(s) added, 0 removed, {b} recycled",
    "libvirtd[{pid}]: migration of domain vm-{n} to host-{a}: {size} bytes transferred",
    "qemu-kvm[{pid}]: block job mirror-{n}: ready, offset {size} of {size}",
    "dockerd[{pid}]: level=info msg=\"Container {hex} health status changed to healthy\"",
    "kubelet[{pid}]: I0512 {ts} {pid} kubelet.go:{b}] \"SyncLoop UPDATE\" source=\"api\" "
    "pods=[\"default/web-{hex}\"]",
]


def log_text(rng, length):
    """`length` bytes of syslog-like lines (deflate shrinks them about 5x)."""
    t = 1_700_000_000 + rng.randrange(10 ** 7)
    host = "host-%02d" % rng.randrange(40)
    out, n = [], 0
    while n < length:
        t += rng.randrange(3)
        msg = rng.choice(LOG_TEMPLATES).format(
            pid=rng.randrange(300, 4000), user=rng.choice(LOG_USERS), a=rng.randrange(256),
            b=rng.randrange(256), port=rng.randrange(1024, 65536), uid=rng.randrange(1000, 1010),
            n=rng.randrange(1, 5000), ts=t % 100000, us=rng.randrange(10 ** 6),
            size=rng.randrange(10 ** 9), hex="%08x" % rng.getrandbits(32))
        line = "%s %s %s\n" % (time.strftime("%b %d %H:%M:%S", time.gmtime(t)), host, msg)
        out.append(line)
        n += len(line)
    return "".join(out).encode()[:length]


def cluster_payload(rng):
    """One guest cluster of the compressed image: a quarter are full of log
    text, the rest hold 2-32 KiB of it and then zeros (a file's tail)."""
    if rng.randrange(4) == 0:
        return log_text(rng, CLUSTER)
    return log_text(rng, rng.randrange(2 * KiB, 32 * KiB)).ljust(CLUSTER, b"\0")


def mixed_block(rng):
    """A 64 KiB block of the digest image: random bytes, log text, a short
    repeated pattern or zeros (written as data, so allocated)."""
    kind = rng.randrange(16)
    if kind < 6:
        return rng.randbytes(CLUSTER)
    if kind < 12:
        return log_text(rng, CLUSTER)
    if kind < 15:
        return (rng.randbytes(rng.randrange(1, 64)) * CLUSTER)[:CLUSTER]
    return bytes(CLUSTER)


# --------------------------------------------------------------------------
# Builders (each gets the path to write, then the recipe's params)
# --------------------------------------------------------------------------
def build_digest(path, size, allocated, chunk, sources, seed):
    """`allocated` bytes of mixed data in writes of `chunk` bytes, one at a
    random cluster-aligned place in each equal stripe of the disk, with
    qemu-io's `write -s FILE`, cycling over `sources` files of mixed blocks."""
    B.qemu_img_create(path, size, "cluster_size=%d" % CLUSTER)
    rng = random.Random(seed)
    files = []
    try:
        for i in range(sources):
            files.append("%s.src%d" % (path, i))
            with open(files[-1], "wb") as f:
                for _ in range(chunk // CLUSTER):
                    f.write(mixed_block(rng))
        count = allocated // chunk
        stripe = size // count
        B.qemu_io(path, ["write -q -s %s %d %d"
                         % (files[i % sources],
                            i * stripe + rng.randrange((stripe - chunk) // CLUSTER + 1) * CLUSTER,
                            chunk)
                         for i in range(count)])
    finally:
        for f in files:
            if os.path.exists(f):
                os.unlink(f)


def build_empty(path, size):
    B.qemu_img_create(path, size, "cluster_size=%d" % CLUSTER)


def build_compressed(path, clusters, payloads, seed):
    """A qcow2 v3 image written here: `clusters` guest clusters of 64 KiB,
    each one compressed (zlib, as QEMU writes it: raw deflate, 4 KiB window)
    and separately allocated, cycling over `payloads` distinct clusters
    compressed once. Layout: header, refcount table, L1 table, refcount
    blocks, L2 tables, then the compressed data packed byte by byte, as
    QEMU's qcow2_alloc_bytes packs it. (qemu-io `write -c` would take
    minutes: it compresses every cluster.)"""
    rng = random.Random(seed)
    streams = []
    for _ in range(payloads):
        c = zlib.compressobj(6, zlib.DEFLATED, -12, 9)
        streams.append(c.compress(cluster_payload(rng)) + c.flush())
    per_l2 = CLUSTER // 8
    l2_count = -(-clusters // per_l2)
    data_bytes = sum(len(streams[i % payloads]) for i in range(clusters))
    data_clusters = -(-data_bytes // CLUSTER)
    refblocks = 1
    while True:  # refcount blocks cover the whole file, themselves included
        total = 3 + refblocks + l2_count + data_clusters
        need = -(-total // (CLUSTER // 2))
        if need == refblocks:
            break
        refblocks = need
    if l2_count * 8 > CLUSTER or refblocks * 8 > CLUSTER:
        raise B.BuildError("compressed: %d clusters do not fit this simple layout" % clusters)
    l2_first = 3 + refblocks
    data_start = (l2_first + l2_count) * CLUSTER
    refcounts = array("H", [1]) * (l2_first + l2_count) + array("H", [0]) * data_clusters
    l2 = array("Q", bytes(8 * l2_count * per_l2))
    shift = 62 - (16 - 8)
    off = data_start
    for i in range(clusters):
        n = len(streams[i % payloads])
        l2[i] = q.OFLAG_COMPRESSED | (((off + n - 1) // 512 - off // 512) << shift) | off
        for c in range(off // CLUSTER, (off + n - 1) // CLUSTER + 1):
            refcounts[c] += 1
        off += n
    with open(path, "wb") as f:
        f.write(q.encode_header(size=clusters * CLUSTER, l1_size=l2_count,
                                l1_table_offset=2 * CLUSTER, refcount_table_offset=CLUSTER,
                                refcount_table_clusters=1))
        f.seek(CLUSTER)
        f.write(b"".join(q.be(8, (3 + i) * CLUSTER) for i in range(refblocks)))
        f.seek(2 * CLUSTER)
        f.write(b"".join(q.be(8, q.OFLAG_COPIED | (l2_first + i) * CLUSTER)
                         for i in range(l2_count)))
        refcounts.byteswap()
        f.seek(3 * CLUSTER)
        f.write(refcounts.tobytes())
        l2.byteswap()
        f.seek(l2_first * CLUSTER)
        f.write(l2.tobytes())
        f.seek(data_start)
        for i in range(clusters):
            f.write(streams[i % payloads])
        f.truncate(data_start + data_clusters * CLUSTER)
    B.run_tool(["qemu-img", "check", "-q", "-f", "qcow2", path])


def chain_layers(path, layers):
    """The files of a chain image, base first; the last one is `path`."""
    return ["%s.layer%02d" % (path, i) for i in range(1, layers)] + [path]


def build_chain(path, layers, size, writes, length, seed):
    """`layers` qcow2 images, each backed by the previous one (relative
    backing name, format qcow2), each with `writes` writes of `length` bytes
    at random cluster-aligned offsets. The layers below the top sit beside
    the image under its final name (path without .tmp)."""
    final = path[:-len(".tmp")] if path.endswith(".tmp") else path
    files = chain_layers(final, layers)[:-1] + [path]
    rng = random.Random(seed)
    for i, f in enumerate(files):
        if i == 0:
            B.qemu_img_create(f, size, "cluster_size=%d" % CLUSTER)
        else:
            B.run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-o",
                        "cluster_size=%d" % CLUSTER, "-b", os.path.basename(files[i - 1]),
                        "-F", "qcow2", f, str(size)])
        B.qemu_io(f, ["write -q -P 0x%02x %d %d" % (rng.randrange(1, 256),
                                                    rng.randrange(size // length) * length, length)
                      for _ in range(writes)])


BUILDERS = {"digest": build_digest, "empty": build_empty, "compressed": build_compressed,
            "chain": build_chain}

IMAGES = {
    "digest1t": dict(name="digest1t", builder="digest", version=1,
                     what="1 TiB, 64 KiB clusters, 10 GiB of mixed data in 2560 writes of 4 MiB",
                     sources=[mixed_block, log_text],
                     params=dict(size=TiB, allocated=10 * GiB, chunk=4 * MiB, sources=8, seed=1),
                     smoke=dict(size=256 * MiB, allocated=16 * MiB, chunk=1 * MiB, sources=2,
                                seed=1)),
    "empty1t": dict(name="empty1t", builder="empty", version=1, what="empty 1 TiB",
                    params=dict(size=TiB), smoke=dict(size=GiB)),
    "empty8t": dict(name="empty8t", builder="empty", version=1, what="empty 8 TiB",
                    params=dict(size=8 * TiB), smoke=dict(size=8 * GiB)),
    "deep1m": dict(name="deep1m", builder="compressed", version=1,
                   what="64 GiB, 1 M zlib-compressed 64 KiB clusters of log-like text",
                   sources=[cluster_payload, log_text],
                   params=dict(clusters=1 << 20, payloads=384, seed=1),
                   smoke=dict(clusters=2048, payloads=16, seed=1)),
    "chain10": dict(name="chain10", builder="chain", version=1,
                    what="10 layers of 64 GiB, 1000 writes of 64 KiB each",
                    params=dict(layers=10, size=64 * GiB, writes=1000, length=64 * KiB, seed=1),
                    smoke=dict(layers=3, size=GiB, writes=20, length=64 * KiB, seed=1)),
}


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------
class Step:
    """One command's run: wall and CPU seconds, exit status, output."""

    def __init__(self, argv):
        self.argv = argv
        t0 = time.perf_counter()
        with tempfile.TemporaryFile() as out:
            try:
                p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
            except OSError as e:
                self.seconds, self.cpu, self.status, self.signal = 0.0, 0.0, None, None
                self.output = "cannot run %s: %s" % (argv[0], e)
                return
            _, status, ru = os.wait4(p.pid, 0)
            self.seconds = time.perf_counter() - t0
            p.returncode = 0  # reaped by wait4
            self.cpu = ru.ru_utime + ru.ru_stime
            out.seek(0)
            self.output = out.read(B.OUTPUT_KEPT).decode(errors="replace")
        B._set_status(self, status)

    def ok(self, expect=0):
        return self.signal is None and self.status == expect

    def describe(self):
        return "%s: exit %s\n%s" % (" ".join(self.argv), B.describe_status(self),
                                     "\n".join("    " + ln for ln in self.output.splitlines()[:20]))


class Side:
    """The runs of one side of a row: each run is a list of Steps (a
    pipeline run step after step, or several commands summed)."""

    def __init__(self, label):
        self.label, self.runs = label, []

    def add(self, steps):
        self.runs.append(steps)

    def seconds(self):
        return statistics.median(sum(s.seconds for s in r) for r in self.runs)

    def cpu(self):
        return statistics.median(sum(s.cpu for s in r) for r in self.runs)

    def spent(self):
        return sum(s.seconds for r in self.runs for s in r)

    def step_medians(self):
        """Median of each step over the runs that got that far."""
        return [statistics.median(r[i].seconds for r in self.runs if len(r) > i)
                for i in range(max(len(r) for r in self.runs))]


DIGEST_LINE = re.compile(r"^(sha256:[0-9a-f]{64}|xxh128:[0-9a-f]{32})$", re.M)


def digest_of(step):
    m = DIGEST_LINE.findall(step.output)
    return m[0] if step.ok() and len(m) == 1 else None


def empty_reference(size):
    """sha256 digest, by its definition, of `size` zero bytes (a multiple of
    64 KiB): SHA-256 over the SHA-256 of each zero block, then le64 size."""
    h = hashlib.sha256()
    zero = block_hash("sha256", bytes(CLUSTER))
    batch = zero * (1 << 16)
    blocks = size // CLUSTER
    for _ in range(blocks >> 16):
        h.update(batch)
    h.update(zero * (blocks & 0xFFFF))
    h.update(struct.pack("<Q", size))
    return "sha256:" + h.hexdigest()


def qcheck_supports(qcheck, option):
    r = subprocess.run([qcheck, "--help"], capture_output=True, text=True)
    return option in r.stdout


def report_rows(b, elapsed, warmup, footnote):
    """The table of a row benchmark's Bench `b` (validate.py, fleet.py):
    what ran against what, the rows, the images on disk (b.report_disk()),
    the notes, the failures and the closing line. `warmup` says what was
    run untimed first; `footnote` how to read the figures."""
    md = b.args.markdown
    print()
    print("qcheck %s vs %s" % (b.qcheck, B.qemu_version()))
    print("%s; work folder %s" % (
        "1 run per side (--smoke)" if b.smoke else
        "%s, then up to %d timed rounds (a side is repeated while it has taken under %g s)"
        % (warmup, b.runs, b.args.repeat_budget),
        "(temporary)" if b.smoke else b.work))
    print()
    headers = ["row", "what", "qcheck s", "qcheck CPU s", "peer", "peer s", "peer CPU s",
               "ratio", "target", "met", "runs q/peer", "check"]
    keys = ["name", "what", "qs", "qcpu", "peer", "ps", "pcpu", "ratio", "target", "met",
            "runs", "checks"]
    align = ["l", "l", "r", "r", "l", "r", "r", "r", "l", "l", "r", "l"]
    if b.rows:
        B.print_table(headers, [[r[k] for k in keys] for r in b.rows], md, align)
        print()
    b.report_disk()
    for n in [footnote] + b.notes:
        print(("* " if md else "note: ") + n)
    print()
    for f in b.failed:
        print("FAILED: " + f, file=sys.stderr)
    print("%s: %d row(s), %s in %.1f s" % ("smoke" if b.smoke else "total", len(b.rows),
                                           "FAILED" if b.failed else "all checks passed",
                                           elapsed))


class Bench:
    def __init__(self, args, qcheck, work):
        self.args, self.qcheck, self.work = args, qcheck, work
        self.smoke = args.smoke
        self.runs = 1 if self.smoke else args.runs
        self.rows = []       # table rows (dicts)
        self.failed = []     # reasons for exit 1
        self.notes = []
        self.images = {}     # name -> (path, info)
        self.peak_extra = 0  # largest transient file (the raw copy)

    def log(self, msg):
        if not self.smoke:
            print(msg, flush=True)

    def image(self, name):
        if name not in self.images:
            self.images[name] = B.ensure_image(self.work, IMAGES[name], self.smoke, BUILDERS)
        return self.images[name][0]

    def expect_ok(self, what, step, expect=0):
        if not step.ok(expect):
            self.failed.append("%s: %s" % (what, step.describe()))
            return False
        return True

    def rounds(self, sides, run_fns):
        """--runs rounds; in each, every side whose time so far is under the
        repeat budget (and every side in the first round) runs once."""
        for i in range(self.runs):
            for side, fn in zip(sides, run_fns):
                if i == 0 or side.spent() < self.args.repeat_budget:
                    side.add(fn())

    def row(self, name, what, q, peer, peer_label, target, checks, peer_seconds=None):
        qs = q.seconds()
        ps = peer.seconds() if peer else peer_seconds
        ratio = ps / qs if ps is not None and qs > 0 else None
        kind, value = target
        if kind == "ratio":
            met = ratio is not None and ratio >= value
            tgt = ">= %gx" % value if value != 1 else ">= 1x (faster)"
        else:
            met = qs < value
            tgt = "< %g s" % value
        r = dict(
            name=name, what=what, qs=B.fmt_s(qs), qcpu=B.fmt_s(q.cpu()),
            peer=peer_label, ps=B.fmt_s(ps) if ps is not None else "-",
            pcpu=B.fmt_s(peer.cpu()) if peer else "-",
            ratio="%.1fx" % ratio if ratio is not None else "-", target=tgt,
            met="-" if self.smoke else ("yes" if met else "NO"),
            runs="%d/%s" % (len(q.runs), len(peer.runs) if peer else "-"),
            checks=checks)
        self.rows.append(r)
        # Each row as soon as it is measured, so that an interrupted run keeps it.
        self.log("  %s: qcheck %s s (CPU %s s), %s %s s (CPU %s s), ratio %s, target %s, "
                 "met %s, runs %s, %s" % (name, r["qs"], r["qcpu"], peer_label, r["ps"],
                                          r["pcpu"], r["ratio"], r["target"], r["met"],
                                          r["runs"], checks))

    # ---- rows ---------------------------------------------------------------
    def run_digest(self):
        img = self.image("digest1t")
        raw = os.path.join(self.work, "digest1t-copy.raw")
        qc = {alg: Side("qcheck --digest=" + alg) for alg in ("sha256", "xxh128")}
        peer = Side("qemu-img convert -O raw + sha256sum")
        self.log("measuring digest: %s" % IMAGES["digest1t"]["what"])
        digests = {}
        for alg in qc:  # warm-up, output checked
            s = Step([self.qcheck, "-f", "qcow2", "--digest=" + alg, img])
            digests[alg] = digest_of(s)
            if digests[alg] is None:
                self.failed.append("digest warm-up: no digest line\n" + s.describe())
        raw_digests = {}

        def pipeline():
            steps = [Step(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, raw])]
            if self.expect_ok("digest pipeline", steps[0]):
                self.peak_extra = max(self.peak_extra, B.disk_usage(raw)[1])
                steps.append(Step(["sha256sum", raw]))
                self.expect_ok("digest pipeline", steps[1])
                if not raw_digests:
                    for alg in qc:
                        s = Step([self.qcheck, "--digest=" + alg, raw])
                        raw_digests[alg] = digest_of(s)
                        if raw_digests[alg] is None:
                            self.failed.append("digest of the raw copy\n" + s.describe())
            if os.path.exists(raw):
                os.unlink(raw)
            return steps

        def qrun(alg):
            return lambda: [Step([self.qcheck, "-f", "qcow2", "--digest=" + alg, img])]
        self.rounds([peer, qc["sha256"], qc["xxh128"]], [pipeline, qrun("sha256"), qrun("xxh128")])
        for side in qc.values():
            for r in side.runs:
                self.expect_ok("qcheck --digest", r[0])
        conv, summ = (peer.step_medians() + [float("nan")])[:2]
        self.notes.append("digest: the pipeline is `qemu-img convert -f qcow2 -O raw IMG RAW` "
                          "(a sparse file; %s s) then `sha256sum RAW` (%s s), timed together; "
                          "qemu-img cannot write raw to a pipe. The raw copy takes %s of disk "
                          "while it exists." % (B.fmt_s(conv), B.fmt_s(summ),
                                                B.human_bytes(self.peak_extra)))
        for alg in qc:
            agree = digests[alg] is not None and digests[alg] == raw_digests.get(alg)
            if not agree and digests[alg] is not None and alg in raw_digests:
                self.failed.append("digest: %s of the qcow2 image %s != raw copy's %s"
                                   % (alg, digests[alg], raw_digests[alg]))
            self.row("digest-" + alg, "--digest=%s, %s" % (alg, self.short("digest1t")), qc[alg],
                     peer, peer.label, ("ratio", 10),
                     "= raw copy's" if agree else "DIFFERS from raw copy's")

    def run_empty(self):
        for name in ("empty1t", "empty8t"):
            img = self.image(name)
            size = IMAGES[name]["smoke" if self.smoke else "params"]["size"]
            self.log("measuring %s" % name)
            ref = empty_reference(size)
            for alg in ("sha256", "xxh128"):
                side = Side("qcheck")
                cmd = [self.qcheck, "-f", "qcow2", "--digest=" + alg, img]
                got = digest_of(Step(cmd))
                self.rounds([side], [lambda: [Step(cmd)]])
                for r in side.runs:
                    self.expect_ok("qcheck --digest " + name, r[0])
                if got is None:
                    check = "no digest!"
                    self.failed.append("%s: no %s digest" % (name, alg))
                elif alg == "sha256":
                    check = "= reference" if got == ref else "DIFFERS from reference"
                    if got != ref:
                        self.failed.append("%s: %s != reference %s" % (name, got, ref))
                else:
                    check = "exit 0"
                is8 = name == "empty8t"
                self.row("%s-%s" % (name, alg), "--digest=%s, %s" % (alg, self.short(name)),
                         side, None, "blkhash (published)" if is8 else "-",
                         ("seconds", 1.0), check,
                         peer_seconds=BLKHASH_EMPTY_8T_S if is8 and not self.smoke else None)
        self.notes.append("empty: no peer is run; the 8 TiB rows set qcheck against the "
                          "published blkhash figure (3.7 s), not a measurement here.")

    def run_deep(self):
        img = self.image("deep1m")
        with q.Image(img) as im:
            size = im.header.size
        self.log("measuring deep: %s" % IMAGES["deep1m"]["what"])
        qc, peer = Side("qcheck --deep"), Side("qemu-img convert to null-co")
        qcmd = [self.qcheck, "-f", "qcow2", "--deep", img]
        pcmd = ["qemu-img", "convert", "-n", "-f", "qcow2", img, "--target-image-opts",
                "driver=null-co,size=%d" % size]
        self.expect_ok("qcheck --deep warm-up", Step(qcmd))
        self.rounds([peer, qc], [lambda: [Step(pcmd)], lambda: [Step(qcmd)]])
        ok = all(self.expect_ok("deep", r[0]) for side in (qc, peer) for r in side.runs)
        check = "exit 0 both"
        if self.smoke:
            # qemu-img's own decompression of every cluster, digested by qcheck,
            # against qcheck's digest of the image: the builder writes what QEMU reads.
            raw = os.path.join(self.work, "deep-copy.raw")
            conv = Step(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", img, raw])
            if self.expect_ok("deep: raw copy", conv):
                a = digest_of(Step([self.qcheck, "-f", "qcow2", "--digest", img]))
                b = digest_of(Step([self.qcheck, "--digest", raw]))
                if a is None or a != b:
                    self.failed.append("deep: digest of the image %s != raw copy's %s" % (a, b))
                    ok = False
                else:
                    check += ", digest = raw copy's"
        self.row("deep", "--deep, " + self.short("deep1m"), qc, peer,
                 "qemu-img convert -n to null-co", ("ratio", 1), check if ok else "FAILED")
        self.notes.append("deep: the peer is `qemu-img convert -n -f qcow2 IMG "
                          "--target-image-opts driver=null-co,size=N`: it reads and "
                          "decompresses every cluster and writes to a null block driver; "
                          "CPU = user + sys (wait4) of the whole process, all threads.")

    def run_chain(self):
        if not qcheck_supports(self.qcheck, "--chain"):
            msg = "chain: SKIPPED: --chain not supported by this qcheck (%s --help does " \
                  "not list it)" % self.qcheck
            print(msg, flush=True)
            self.notes.append(msg)
            return
        top = self.image("chain10")
        params = IMAGES["chain10"]["smoke" if self.smoke else "params"]
        files = chain_layers(top, params["layers"])
        self.log("measuring chain: %s" % IMAGES["chain10"]["what"])
        qc, peer = Side("qcheck --chain"), Side("%d x qcheck LAYER" % len(files))
        qcmd = [self.qcheck, "-f", "qcow2", "--chain", top]
        self.expect_ok("qcheck --chain warm-up", Step(qcmd))
        self.rounds([peer, qc], [lambda: [Step([self.qcheck, "-f", "qcow2", f]) for f in files],
                                 lambda: [Step(qcmd)]])
        ok = all(self.expect_ok("chain", s) for side in (qc, peer) for r in side.runs for s in r)
        self.row("chain", "--chain, " + self.short("chain10"), qc, peer,
                 "sum of %d x qcheck LAYER" % len(files), ("ratio", 1),
                 "exit 0 all" if ok else "FAILED")

    def short(self, name):
        if not self.smoke:
            return IMAGES[name]["what"]
        p = IMAGES[name]["smoke"]
        return "smoke: " + ", ".join("%s=%s" % kv for kv in p.items() if kv[0] != "seed")

    # ---- output -------------------------------------------------------------
    def report(self, elapsed):
        report_rows(self, elapsed, "1 untimed warm-up of qcheck",
                    "times are medians of wall seconds; ratio = peer / qcheck; CPU = user + "
                    "sys from wait4 (qcheck CPU / qcheck s above 1 means both cores worked).")

    def close(self):
        pass  # the images are kept for the next run

    def report_disk(self):
        md = self.args.markdown
        used = 0
        for name, (path, info) in self.images.items():
            files = [path] + (chain_layers(path, IMAGES[name]["smoke" if self.smoke else
                                                               "params"]["layers"])[:-1]
                              if name == "chain10" else [])
            size = sum(B.disk_usage(f)[1] for f in files)
            used += size
            print("%simage %s: %s on disk, built in %.1f s%s"
                  % ("* " if md else "", name, B.human_bytes(size), info["build_seconds"],
                     " (reused)" if info.get("reused") else ""))
        print("%sdisk: images %s%s" % ("* " if md else "", B.human_bytes(used),
                                        ", peak %s with the digest row's raw copy"
                                        % B.human_bytes(used + self.peak_extra)
                                        if self.peak_extra else ""))


ROW_IMAGES = {"digest": ["digest1t"], "empty": ["empty1t", "empty8t"], "deep": ["deep1m"],
              "chain": ["chain10"]}
ROWS = {"digest": Bench.run_digest, "empty": Bench.run_empty, "deep": Bench.run_deep,
        "chain": Bench.run_chain}


def main():
    return B.rows_main("validate.py", __doc__, ROWS, ROW_IMAGES, ("qemu-img", "qemu-io", "sha256sum"), Bench)


if __name__ == "__main__":
    sys.exit(main())
