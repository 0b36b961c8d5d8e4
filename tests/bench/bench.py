#!/usr/bin/env python3
"""Benchmark: qcheck against `qemu-img check` on the same large images.

    bench.py [--qcheck PATH] [--work DIR] [--runs N] [--only NAME[,NAME...]]
             [--markdown] [--smoke] [--launcher PATH|none]

Builds the images of RECIPES below with qemu-img / qemu-io (and
huge_image.py) in the work folder, once: later runs reuse them (an image is
rebuilt when it is missing or its recipe changed: the file name carries a
hash of the recipe). Then, per image, one untimed warm-up run of each tool
(warm page cache; its output is kept), and --runs timed runs of each,
alternating `qemu-img check -f qcow2 IMG` and `qcheck -f qcow2 IMG` (human
output, stdout and stderr to /dev/null). Wall time is measured with
time.perf_counter around Popen + os.wait4. Peak RSS is wait4's ru_maxrss of
the warm-up run, taken by bounded_run (tests/hostile/bounded_run.c, in the
build tree next to qcheck): from Python it could not be below Python's own
peak RSS (see run_once).

Prints a table: medians, speed-up (qemu-img time / qcheck time) against the
recipe's target, peak RSS of both, exit codes (a difference from the
expected ones prints both tools' first output), then the metadata qcheck
has to read per image (L1, L2 tables, refcount table and blocks, snapshot
L1 tables) and qcheck's throughput over it.

Exit status: 0 when the measurement ran, whatever the figures; 1 when an
image could not be built or a tool was killed by a signal (or could not be
run). It is a measurement, not a test, except with --smoke: tiny versions of
every recipe in a temporary folder (deleted after), one timed run, no
warm-up; exit 1 unless both tools ran and both exit codes are the expected
ones on every image (qemu-img: 0, 0, 0, 0, 3, 1; qcheck: 0, 0, 0, 0, 3, 0).
--smoke takes a few seconds and is meant for CTest.
"""

import argparse
import hashlib
import inspect
import json
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.abspath(os.path.join(HERE, "..", ".."))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(REPO, "layout"))
import huge_image  # noqa: E402
import qcow2lib as q  # noqa: E402

KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40

# --------------------------------------------------------------------------
# The recipes. `params` is what the builder gets; `smoke` replaces it for
# --smoke. `target` is the speed-up qcheck must reach (qemu-img's median
# time / qcheck's), None for no target. `expect` is the exit codes
# (qemu-img, qcheck). Build times and disk use are those measured on the
# 2-core reference machine (Debian 12, ext4, qemu-img 7.2), see README.md.
# `version` is part of the recipe hash: bump it when a builder changes.
# --------------------------------------------------------------------------
RECIPES = [
    dict(name="tib64k",
         what="1 TiB, 64 KiB clusters, preallocation=metadata (16 M mapped clusters)",
         short="1 TiB prealloc 64K",
         builder="prealloc", version=1, target=5, expect=(0, 0),
         params=dict(size=TiB, cluster_size=64 * KiB),
         smoke=dict(size=GiB, cluster_size=64 * KiB), smoke_short="1 GiB prealloc 64K"),
    dict(name="g16c512",
         what="16 GiB, 512-byte clusters, preallocation=metadata (32 M mapped clusters)",
         short="16 GiB prealloc 512B",
         builder="prealloc", version=1, target=10, expect=(0, 0),
         params=dict(size=16 * GiB, cluster_size=512),
         smoke=dict(size=16 * MiB, cluster_size=512), smoke_short="16 MiB prealloc 512B"),
    dict(name="snap100",
         what="64 GiB, 64 KiB clusters, preallocation=metadata, then 100 internal "
              "snapshots sharing every L2 table",
         short="64 GiB prealloc + 100 snapshots",
         builder="snapshots", version=1, target=20, expect=(0, 0),
         params=dict(size=64 * GiB, cluster_size=64 * KiB, snapshots=100),
         smoke=dict(size=GiB, cluster_size=64 * KiB, snapshots=3),
         smoke_short="1 GiB prealloc + 3 snapshots"),
    dict(name="fragxl2",
         what="4 TiB, extended L2, 64 KiB clusters, zstd: 64 GiB written compressed "
              "(1 M compressed clusters), then 20000 random 2 KiB (subcluster) writes into "
              "them and 10000 anywhere on the disk",
         short="4 TiB ext. L2, 1 M compressed, 30k random writes",
         builder="fragmented", version=2, target=5, expect=(0, 0),
         params=dict(size=4 * TiB, cluster_size=64 * KiB, compressed=64 * GiB,
                     chunk=64 * MiB, writes_compressed=20000, writes_anywhere=10000, seed=1),
         smoke=dict(size=64 * GiB, cluster_size=64 * KiB, compressed=256 * MiB,
                    chunk=64 * MiB, writes_compressed=300, writes_anywhere=200, seed=1),
         smoke_short="ext. L2, 4096 compressed, 500 random writes"),
    dict(name="leaks",
         what="1 TiB, 64 KiB clusters, preallocation=metadata, 50 active L1 entries "
              "zeroed: 409650 leaked clusters (50 x 8192 data + 50 L2 tables)",
         short="1 TiB prealloc, 410k leaks",
         builder="leaks", version=1, target=5, expect=(3, 3),
         params=dict(size=TiB, cluster_size=64 * KiB, zeroed=50),
         smoke=dict(size=4 * GiB, cluster_size=64 * KiB, zeroed=2),
         smoke_short="4 GiB prealloc, 16k leaks"),
    dict(name="huge",
         what="huge_image.py: 2^31 + 26 host clusters of 512 bytes (1 TiB file), "
              "1-bit refcounts, data past 1 TiB",
         short=">2^31 host clusters (huge_image.py)",
         builder="huge", version=1, target=None, expect=(1, 0),
         params=dict(), smoke=dict(smoke=True), smoke_short=">2^31 host clusters (same image)"),
]
RECIPE_NAMES = [r["name"] for r in RECIPES]

NOTES = {
    "huge": "qemu-img refuses files of more than 2^31 host clusters "
            "(qcow2_check_refcounts: nb_clusters > INT_MAX -> EFBIG, "
            "\"Check failed: File too large\", exit 1): its time is the time to "
            "refuse, so there is no speed-up; qcheck must check it and find nothing.",
    "leaks": "both tools must exit 3; qemu-img prints one line per leaked cluster "
             "(to /dev/null here), qcheck merges them into ranges.",
}


# --------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------
class BuildError(Exception):
    pass


def run_tool(argv, stdin_data=None):
    """Run a build step; raise BuildError with its output if it fails."""
    r = subprocess.run(argv, input=stdin_data, capture_output=True)
    if r.returncode != 0:
        raise BuildError("%s: exit %d\n%s%s" % (" ".join(argv), r.returncode,
                                                r.stdout.decode(errors="replace")[-2000:],
                                                r.stderr.decode(errors="replace")[-2000:]))
    return r


def qemu_img_create(path, size, opts):
    run_tool(["qemu-img", "create", "-q", "-f", "qcow2", "-o", opts, path, str(size)])


def build_prealloc(path, size, cluster_size):
    qemu_img_create(path, size, "preallocation=metadata,cluster_size=%d" % cluster_size)


def build_snapshots(path, size, cluster_size, snapshots):
    qemu_img_create(path, size, "preallocation=metadata,cluster_size=%d" % cluster_size)
    for i in range(snapshots):
        run_tool(["qemu-img", "snapshot", "-c", "snap%03d" % (i + 1), path])


def qemu_io(path, commands):
    """Feed qemu-io a list of commands on stdin (one process for all of
    them); `write -q` prints nothing, so any failure shows in the exit
    status (qemu-io exits 1 when a command failed)."""
    script = ("\n".join(commands) + "\nquit\n").encode()
    run_tool(["qemu-io", "-t", "unsafe", "-f", "qcow2", path], stdin_data=script)


def build_fragmented(path, size, cluster_size, compressed, chunk, writes_compressed,
                     writes_anywhere, seed):
    qemu_img_create(path, size, "extended_l2=on,cluster_size=%d,compression_type=zstd"
                    % cluster_size)
    # Compressed clusters: compressible non-zero data, one byte pattern per
    # chunk. (qemu-io's write -c compresses in memory: no raw source file.
    # Compressing costs ~70 us per cluster whatever the codec and cluster
    # size, in QEMU's thread pool hand-offs; zstd keeps the codec's share
    # small, zlib would take 5x longer.)
    qemu_io(path, ["write -q -c -P 0x%02x %d %d" % (0x41 + i % 58, off, chunk)
                   for i, off in enumerate(range(0, compressed, chunk))])
    # Subcluster-sized, non-compressed writes at random subcluster offsets:
    # into the compressed part (each one reallocates a compressed cluster as
    # a normal one at the end of the file, out of guest order), then
    # anywhere on the disk (fresh clusters with one subcluster allocated,
    # and an L2 table for most of them: the disk is 16384 L2 tables wide).
    sub = cluster_size // 32
    rng = random.Random(seed)
    cmds = []
    for count, span in ((writes_compressed, compressed), (writes_anywhere, size)):
        cmds += ["write -q -P 0x%02x %d %d" % (rng.randrange(1, 256),
                                               rng.randrange(span // sub) * sub, sub)
                 for _ in range(count)]
    qemu_io(path, cmds)


def build_leaks(path, size, cluster_size, zeroed):
    qemu_img_create(path, size, "preallocation=metadata,cluster_size=%d" % cluster_size)
    with q.Image(path, writable=True) as im:
        l1 = im.l1()
        step = max(1, len(l1) // zeroed)
        indexes = [i * step for i in range(zeroed)]
        if len(indexes) != zeroed or indexes[-1] >= len(l1):
            raise BuildError("leaks: the L1 table has %d entries, cannot zero %d"
                             % (len(l1), zeroed))
        for i in indexes:
            if not l1[i] & q.OFFSET_MASK:
                raise BuildError("leaks: L1 entry %d maps no L2 table" % i)
            im.set_l1_entry(i, 0)


def build_huge(path, smoke=False):
    huge_image.build(path, smoke=smoke)


BUILDERS = {"prealloc": build_prealloc, "snapshots": build_snapshots,
            "fragmented": build_fragmented, "leaks": build_leaks, "huge": build_huge}


def recipe_tag(recipe, params, builders=None):
    """A hash of everything the image depends on: builder source (and that
    of the functions in the recipe's optional `sources`), params, version,
    and for `huge` the generator script itself."""
    h = hashlib.sha256()
    h.update(json.dumps([recipe["builder"], recipe["version"], params], sort_keys=True).encode())
    for fn in [(builders or BUILDERS)[recipe["builder"]]] + recipe.get("sources", []):
        h.update(inspect.getsource(fn).encode())
    if recipe["builder"] == "huge":
        with open(huge_image.__file__, "rb") as f:
            h.update(f.read())
    return h.hexdigest()[:10]


def disk_usage(path):
    st = os.stat(path)
    return st.st_size, st.st_blocks * 512


def ensure_image(work, recipe, smoke, builders=None):
    """Path and build info of the recipe's image, building it if needed
    (with `builders`, default BUILDERS: name -> function). Files of the same
    recipe with another hash (stale images, their stamps and anything a
    builder put beside its image under the image's name) are removed."""
    builders = builders or BUILDERS
    params = recipe["smoke"] if smoke else recipe["params"]
    tag = recipe_tag(recipe, params, builders)
    base = "%s-%s.qcow2" % (recipe["name"], tag)
    path = os.path.join(work, base)
    stamp = path + ".stamp"
    for f in os.listdir(work):
        if f.startswith(recipe["name"] + "-") and not f.startswith(base):
            os.unlink(os.path.join(work, f))
    if os.path.exists(path) and os.path.exists(stamp):
        with open(stamp) as f:
            info = json.load(f)
        info["reused"] = True
        return path, info
    for f in (path, stamp):
        if os.path.exists(f):
            os.unlink(f)
    tmp = path + ".tmp"
    if os.path.exists(tmp):
        os.unlink(tmp)
    if not smoke:
        print("building %s (%s) ..." % (recipe["name"], recipe["what"]), flush=True)
    t0 = time.perf_counter()
    try:
        builders[recipe["builder"]](tmp, **params)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    build_s = time.perf_counter() - t0
    os.replace(tmp, path)
    apparent, allocated = disk_usage(path)
    info = {"recipe": recipe["name"], "params": params, "build_seconds": round(build_s, 2),
            "qemu_img": qemu_version(), "apparent": apparent, "allocated": allocated,
            "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(stamp, "w") as f:
        json.dump(info, f, indent=1)
    if not smoke:
        print("  built in %.1f s: %s apparent, %s on disk"
              % (build_s, human_bytes(apparent), human_bytes(allocated)), flush=True)
    info["reused"] = False
    return path, info


_QEMU_VERSION = None


def qemu_version():
    global _QEMU_VERSION
    if _QEMU_VERSION is None:
        r = subprocess.run(["qemu-img", "--version"], capture_output=True, text=True)
        _QEMU_VERSION = r.stdout.splitlines()[0] if r.stdout else "?"
    return _QEMU_VERSION


# --------------------------------------------------------------------------
# Metadata qcheck must read
# --------------------------------------------------------------------------
def metadata_bytes(path):
    """Bytes of L1 tables (active and snapshots'), distinct L2 tables,
    refcount table and refcount blocks. Reads only the header, the snapshot
    table, the L1 tables and the refcount table (not the L2 tables or
    refcount blocks), so it is quick on big images."""
    with q.Image(path) as im:
        h = im.header
        cs = im.cluster_size
        l1s = [(h.l1_table_offset, h.l1_size)]
        l1s += [(s.l1_table_offset, s.l1_size) for s in im.snapshots()]
        l2 = set()
        for off, n in l1s:
            l2.update(e & q.OFFSET_MASK for e in im.read_table(off, n) if e & q.OFFSET_MASK)
        rt = im.reftable()
        blocks = sum(1 for e in rt if e & q.REFT_OFFSET_MASK)
        parts = {"l1": h.l1_size * 8,
                 "snapshot_l1": sum(n * 8 for _, n in l1s[1:]),
                 "l2": len(l2) * cs,
                 "reftable": h.refcount_table_clusters * cs,
                 "refblocks": blocks * cs}
        parts["total"] = sum(parts.values())
        return parts


# --------------------------------------------------------------------------
# Running
# --------------------------------------------------------------------------
OUTPUT_KEPT = 64 * KiB  # of a probe run's output


class Run:
    __slots__ = ("seconds", "rss_kib", "status", "signal", "output", "output_more")

    def __init__(self):
        self.output, self.output_more, self.rss_kib = None, 0, None


def run_once(argv):
    """One timed run: wall seconds (perf_counter around the child) and its
    exit status or signal (os.wait4). stdout and stderr go to /dev/null.

    The ru_maxrss that wait4 returns here is not used: a child started
    from Python (vfork, or fork) inherits the high-water mark of the mm it
    replaces at exec (the kernel's exec_mmap keeps the larger of the two),
    so it is never below the Python interpreter's own peak RSS (15-30 MiB
    here). Peak RSS comes from probe_run() instead."""
    r = Run()
    t0 = time.perf_counter()
    try:
        p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    except OSError as e:
        r.seconds, r.status, r.signal = 0.0, None, None
        r.output = "cannot run %s: %s" % (argv[0], e)
        return r
    _, status, _ = os.wait4(p.pid, 0)
    r.seconds = time.perf_counter() - t0
    p.returncode = 0  # reaped by wait4; keep Popen from waiting again
    _set_status(r, status)
    return r


def _set_status(r, status):
    if os.WIFSIGNALED(status):
        r.status, r.signal = None, os.WTERMSIG(status)
    else:
        r.status, r.signal = os.WEXITSTATUS(status), None


def probe_run(argv, launcher):
    """One run with stdout and stderr kept (in a temporary file, so that a
    flood of lines cannot block the child) and its peak RSS.

    With `launcher` (tests/hostile/bounded_run of the build tree: a small C
    program that forks the command and reports wait4's ru_maxrss of it) the
    RSS is the command's own; without, it is wait4's figure from here,
    which is at least this Python's peak RSS (see run_once)."""
    r = Run()
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as rep:
        env, pass_fds, cmd = None, (), argv
        if launcher:
            env = dict(os.environ, BOUNDED_RUN_FD=str(rep.fileno()))
            pass_fds = (rep.fileno(),)
            cmd = [launcher, str(2 ** 64 - 1), "86400", "--"] + argv  # no limits
        t0 = time.perf_counter()
        try:
            p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                 env=env, pass_fds=pass_fds)
        except OSError as e:
            r.seconds, r.rss_kib, r.status, r.signal = 0.0, None, None, None
            r.output = "cannot run %s: %s" % (cmd[0], e)
            return r
        _, status, ru = os.wait4(p.pid, 0)
        r.seconds = time.perf_counter() - t0
        p.returncode = 0
        size = out.seek(0, os.SEEK_END)
        out.seek(0)
        r.output = out.read(OUTPUT_KEPT).decode(errors="replace")
        r.output_more = max(0, size - OUTPUT_KEPT)  # only the start is ever shown
        if not launcher:
            _set_status(r, status)
            r.rss_kib = ru.ru_maxrss
            return r
        rep.seek(0)
        line = rep.read().decode(errors="replace").strip()
        fields = dict(f.split("=", 1) for f in line.split()[1:] if "=" in f) \
            if line.startswith("bounded_run:") else {}
        if not fields or os.WIFSIGNALED(status) or os.WEXITSTATUS(status) != 0:
            r.status, r.signal, r.rss_kib = None, None, None
            r.output += "\n(launcher %s: exit status %d, report %r)" % (launcher, status, line)
            return r
        sig = int(fields["signal"])
        r.status, r.signal = (None, sig) if sig else (int(fields["status"]), None)
        if r.status == 127 and not sig:  # bounded_run could not exec the command
            r.status = None
        r.rss_kib = int(fields["maxrss_kib"])
    return r


def describe_status(r):
    if r.signal is not None:
        return "killed by %s" % signal.Signals(r.signal).name
    if r.status is None:
        return "did not run"
    return str(r.status)


def measure(path, qcheck, runs, smoke, launcher):
    """Per tool: one probe run (output, exit status, peak RSS; the warm-up,
    untimed), then `runs` timed runs alternating qemu-img and qcheck. With
    `smoke` the probe run is the only run, and it is the timed one."""
    cmds = {"qemu": ["qemu-img", "check", "-f", "qcow2", path],
            "qcheck": [qcheck, "-f", "qcow2", path]}
    res = {"qemu": [], "qcheck": []}
    probe = {}
    for tool in ("qemu", "qcheck"):
        probe[tool] = probe_run(cmds[tool], launcher)
        if smoke:
            res[tool].append(probe[tool])
    for _ in range(0 if smoke else runs):
        for tool in ("qemu", "qcheck"):
            res[tool].append(run_once(cmds[tool]))
    return res, probe


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------
def human_bytes(n):
    for unit, size in (("TiB", TiB), ("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= size:
            return "%.1f %s" % (n / size, unit)
    return "%d B" % n


def fmt_s(s):
    return "%.3f" % s if s < 10 else "%.2f" % s


def print_table(headers, rows, markdown, align=None):
    align = align or ["l"] * len(headers)
    if markdown:
        print("| " + " | ".join(headers) + " |")
        print("|" + "|".join("---:" if a == "r" else "---" for a in align) + "|")
        for row in rows:
            print("| " + " | ".join(str(c) for c in row) + " |")
        return
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *rows)]

    def line(cells):
        return "  ".join(str(c).rjust(w) if a == "r" else str(c).ljust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()
    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def show_output(name, tool, r, limit=25):
    text = r.output if r.output is not None else "(output not captured)"
    lines = text.splitlines()
    print("---- %s: %s, exit %s, output of its first run ----"
          % (name, "qemu-img check" if tool == "qemu" else "qcheck", describe_status(r)))
    for ln in lines[:limit]:
        print("    " + ln)
    if len(lines) > limit or r.output_more:
        print("    [... %d more lines%s]" % (max(0, len(lines) - limit),
                                          " and %d more bytes" % r.output_more
                                          if r.output_more else ""))


def default_launcher(qcheck):
    """bounded_run of the build tree qcheck comes from, if it was built."""
    path = os.path.join(os.path.dirname(qcheck), "tests", "bounded_run")
    return path if os.access(path, os.X_OK) else None


def add_binary_and_work(ap):
    """--qcheck and --work, as every benchmark script takes them."""
    ap.add_argument("--qcheck", default=os.path.join(REPO, "build", "qcheck"),
                    help="the qcheck binary (default: %(default)s)")
    ap.add_argument("--work", default=os.environ.get("QC_BENCH_WORK", "/var/tmp/qcheck-bench"),
                    help="where images are built and kept (default: $QC_BENCH_WORK or "
                         "/var/tmp/qcheck-bench)")


def rows_main(script, doc, rows, sets_of_row, tools, make_bench):
    """The command line of the row benchmarks (validate.py, fleet.py): parse
    the options, check the binary and the tools, then build the image sets
    of the chosen rows (--build-only) or run the rows and print the table.
    make_bench(args, qcheck, work) returns the script's Bench, which has
    image(name) (build or find an image set), report_disk(), report(seconds),
    failed and close()."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="rows: " + ", ".join(rows))
    add_binary_and_work(ap)
    ap.add_argument("--runs", type=int, default=3, help="timed rounds per row (default 3)")
    ap.add_argument("--repeat-budget", type=float, default=300,
                    help="run a side again only while its runs so far took less than this "
                         "many seconds (default 300)")
    ap.add_argument("--only", help="comma-separated rows: " + ", ".join(rows))
    ap.add_argument("--markdown", action="store_true", help="print the table in Markdown")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny images in a temporary folder, one run, checks only")
    ap.add_argument("--build-only", action="store_true",
                    help="build (or find) the images of the rows, measure nothing")
    args = ap.parse_args()
    chosen = list(rows)
    if args.only:
        chosen = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in chosen if n not in rows]
        if unknown:
            ap.error("unknown row(s) %s; known: %s" % (", ".join(unknown), ", ".join(rows)))
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    qcheck = os.path.abspath(args.qcheck)
    if not os.access(qcheck, os.X_OK):
        print("%s: qcheck binary %s not found (build it: cmake -S . -B build "
              "-DCMAKE_BUILD_TYPE=Release && cmake --build build)" % (script, qcheck),
              file=sys.stderr)
        return 1
    for tool in tools:
        if not shutil.which(tool):
            print("%s: %s not found" % (script, tool), file=sys.stderr)
            return 1
    t0 = time.perf_counter()
    work = tempfile.mkdtemp(prefix="qcheck-%s-smoke-" % script.split(".")[0]) \
        if args.smoke else args.work
    os.makedirs(work, exist_ok=True)
    b = None
    try:
        b = make_bench(args, qcheck, work)
        if args.build_only:
            for name in dict.fromkeys(s for r in chosen for s in sets_of_row[r]):
                try:
                    b.image(name)
                except (BuildError, OSError, subprocess.SubprocessError) as e:
                    print("%s: cannot build %s: %s" % (script, name, e), file=sys.stderr)
                    return 1
            b.report_disk()
            return 0
        for name in chosen:
            try:
                rows[name](b)
            except (BuildError, OSError, subprocess.SubprocessError) as e:
                b.failed.append("%s: %s" % (name, e))
        b.report(time.perf_counter() - t0)
        return 1 if b.failed else 0
    finally:
        if b is not None:
            b.close()
        if args.smoke:
            shutil.rmtree(work, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="images: " + ", ".join(RECIPE_NAMES))
    add_binary_and_work(ap)
    ap.add_argument("--runs", type=int, default=5, help="timed runs per tool and image")
    ap.add_argument("--only", help="comma-separated image names")
    ap.add_argument("--markdown", action="store_true", help="print the tables in Markdown")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny images in a temporary folder, one run, check exit codes")
    ap.add_argument("--launcher",
                    help="bounded_run binary used to measure peak RSS (default: "
                         "tests/bounded_run next to the qcheck binary; 'none' to measure "
                         "from Python, which cannot report less than Python's own RSS)")
    args = ap.parse_args()

    recipes = RECIPES
    if args.only:
        names = [n.strip() for n in args.only.split(",") if n.strip()]
        unknown = [n for n in names if n not in RECIPE_NAMES]
        if unknown:
            ap.error("unknown image(s) %s; known: %s" % (", ".join(unknown),
                                                        ", ".join(RECIPE_NAMES)))
        recipes = [r for r in RECIPES if r["name"] in names]
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    qcheck = os.path.abspath(args.qcheck)
    if not os.access(qcheck, os.X_OK):
        print("bench.py: qcheck binary %s not found (build it: cmake -S . -B build "
              "-DCMAKE_BUILD_TYPE=Release && cmake --build build)" % qcheck, file=sys.stderr)
        return 1
    for tool in ("qemu-img", "qemu-io"):
        if not shutil.which(tool):
            print("bench.py: %s not found (Debian: apt-get install qemu-utils)" % tool,
                  file=sys.stderr)
            return 1
    if args.launcher == "none":
        launcher = None
    elif args.launcher:
        launcher = os.path.abspath(args.launcher)
        if not os.access(launcher, os.X_OK):
            ap.error("--launcher %s is not an executable" % launcher)
    else:
        launcher = default_launcher(qcheck)

    t_start = time.perf_counter()
    if args.smoke:
        work = tempfile.mkdtemp(prefix="qcheck-bench-smoke-")
    else:
        work = args.work
        os.makedirs(work, exist_ok=True)
    try:
        return bench(args, recipes, qcheck, work, launcher, t_start)
    finally:
        if args.smoke:
            shutil.rmtree(work, ignore_errors=True)


def bench(args, recipes, qcheck, work, launcher, t_start):
    smoke = args.smoke
    runs = 1 if smoke else args.runs
    failed = []      # build failures, tools killed or not run: exit 1
    smoke_bad = []   # --smoke: exit codes not the expected ones: exit 1
    results = []
    for recipe in recipes:
        name = recipe["name"]
        try:
            path, info = ensure_image(work, recipe, smoke)
        except (BuildError, OSError, subprocess.SubprocessError) as e:
            print("bench.py: cannot build %s: %s" % (name, e), file=sys.stderr)
            failed.append("%s: build failed" % name)
            continue
        meta = metadata_bytes(path)
        if not smoke:
            print("measuring %s: 1 warm-up + %d timed runs of each tool ..." % (name, runs),
                  flush=True)
        res, probe = measure(path, qcheck, runs, smoke, launcher)
        results.append((recipe, path, info, meta, res, probe))
        for tool in ("qemu", "qcheck"):
            for r in res[tool] + [probe[tool]]:
                if r.signal is not None or r.status is None:
                    failed.append("%s: %s %s" % (name, "qemu-img" if tool == "qemu"
                                                 else "qcheck", describe_status(r)))
                    break

    floor_mib = None
    if not launcher:
        floor_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def rss(r):
        if r.rss_kib is None:
            return "?"
        v = r.rss_kib / 1024
        return "%.1f%s" % (v, "*" if floor_mib and v <= floor_mib + 0.5 else "")

    # ---- the main table
    headers = ["image", "what", "size (apparent / on disk)", "qemu-img s", "qcheck s",
               "speed-up", "target", "met", "RSS qemu-img MiB", "RSS qcheck MiB",
               "RSS met", "exit qemu-img/qcheck"]
    align = ["l", "l", "l", "r", "r", "r", "r", "l", "r", "r", "l", "l"]
    rows, details, mismatches = [], [], []
    for recipe, path, info, meta, res, probe in results:
        name = recipe["name"]
        apparent, allocated = disk_usage(path)
        tq = statistics.median(r.seconds for r in res["qemu"])
        tc = statistics.median(r.seconds for r in res["qcheck"])
        codes_q = sorted({describe_status(r) for r in res["qemu"] + [probe["qemu"]]})
        codes_c = sorted({describe_status(r) for r in res["qcheck"] + [probe["qcheck"]]})
        exp_q, exp_c = recipe["expect"]
        ok_q = codes_q == [str(exp_q)]
        ok_c = codes_c == [str(exp_c)]
        exits = "%s/%s" % (",".join(codes_q), ",".join(codes_c))
        if not (ok_q and ok_c):
            exits += " (expected %d/%d!)" % (exp_q, exp_c)
        elif exp_q != exp_c:
            exits += " (expected)"
        if codes_q != codes_c or not (ok_q and ok_c):
            mismatches.append((name, probe, ok_q and ok_c))
        if smoke and not (ok_q and ok_c):
            smoke_bad.append("%s: exit codes qemu-img %s, qcheck %s; expected %d, %d"
                             % (name, ",".join(codes_q), ",".join(codes_c), exp_q, exp_c))
        comparable = exp_q == exp_c and ok_q and ok_c
        speedup = tq / tc if tc > 0 else float("inf")
        target = recipe["target"]
        rq, rc = probe["qemu"].rss_kib, probe["qcheck"].rss_kib
        rss_met = "-"
        if comparable and rq is not None and rc is not None:
            rss_met = "yes" if rc <= rq else "NO"
            if "*" in rss(probe["qemu"]) + rss(probe["qcheck"]):
                rss_met = "?"
        rows.append([name, recipe["smoke_short"] if smoke else recipe["short"],
                     "%s / %s" % (human_bytes(apparent), human_bytes(allocated)),
                     fmt_s(tq), fmt_s(tc),
                     "%.1fx" % speedup if comparable else "n/a",
                     ">=%gx" % target if target else "none",
                     ("yes" if speedup >= target else "NO")
                     if target and comparable and not smoke else "-",
                     rss(probe["qemu"]), rss(probe["qcheck"]), rss_met, exits])
        mib_s = meta["total"] / MiB / tc if tc > 0 else float("inf")
        details.append([name, human_bytes(meta["total"]),
                        " / ".join(human_bytes(meta[k]) for k in
                                   ("l1", "snapshot_l1", "l2", "reftable", "refblocks")),
                        "%.0f" % mib_s,
                        "%s - %s" % (fmt_s(min(r.seconds for r in res["qemu"])),
                                     fmt_s(max(r.seconds for r in res["qemu"]))),
                        "%s - %s" % (fmt_s(min(r.seconds for r in res["qcheck"])),
                                     fmt_s(max(r.seconds for r in res["qcheck"]))),
                        "%.1f%s" % (info["build_seconds"],
                                    " (reused)" if info.get("reused") else "")])

    print()
    print("qcheck %s vs %s" % (qcheck, qemu_version()))
    print("%s; work folder %s" % ("1 run per tool, no warm-up (--smoke)" if smoke else
                                  "1 warm-up + %d timed runs per tool, alternating" % runs,
                                  "(temporary)" if smoke else work))
    print()
    if rows:
        print_table(headers, rows, args.markdown, align)
        print()
        print_table(["image", "metadata qcheck reads",
                     "L1 / snapshot L1s / L2 / reftable / refblocks", "qcheck MiB/s",
                     "qemu-img min - max s", "qcheck min - max s", "build s"],
                    details, args.markdown, ["l", "r", "l", "r", "r", "r", "r"])
        print()
        notes = ["speed-up = qemu-img median / qcheck median wall time; met = speed-up >= "
                 "target.",
                 "RSS = peak resident set of the tool in its %s run (wait4's ru_maxrss%s); "
                 "RSS met = qcheck's <= qemu-img's."
                 % ("only" if smoke else "warm-up",
                    ", measured by %s" % launcher if launcher else "")]
        if smoke:
            notes.append("--smoke: tiny images and a single run; the times are not a "
                         "measurement, only the exit codes are checked.")
        if floor_mib:
            notes.append("no bounded_run launcher: RSS was measured from Python and cannot be "
                         "below this Python's own peak RSS, %.1f MiB; figures marked * are at "
                         "that floor and mean nothing (build the tests, or pass --launcher)"
                         % floor_mib)
        for recipe, *_ in results:
            if recipe["name"] in NOTES:
                notes.append("%s: %s" % (recipe["name"], NOTES[recipe["name"]]))
        for n in notes:
            print(("* " if args.markdown else "note: ") + n)
        print()
    for name, probe, expected in mismatches:
        print("exit codes differ on %s (%s):" % (name, "as expected" if expected
                                                 else "NOT as expected"))
        for tool in ("qemu", "qcheck"):
            show_output(name, tool, probe[tool])
        print()
    elapsed = time.perf_counter() - t_start
    for f in failed + smoke_bad:
        print("FAILED: " + f, file=sys.stderr)
    if smoke:
        print("smoke: %d image(s), %s in %.1f s"
              % (len(results), "all exit codes as expected" if not (failed or smoke_bad)
                 else "FAILED", elapsed))
    else:
        print("total %.1f s" % elapsed)
    return 1 if failed or smoke_bad else 0


if __name__ == "__main__":
    sys.exit(main())
