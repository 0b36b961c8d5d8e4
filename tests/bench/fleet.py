#!/usr/bin/env python3
"""Benchmark of batch mode (issue 14, fleet use): many images in one run.

    fleet.py [--qcheck PATH] [--work DIR] [--runs N] [--repeat-budget S]
             [--only ROW[,ROW...]] [--markdown] [--smoke] [--build-only]

Rows (--only names):

  batch1000    1,000 small qcow2 images (64 MiB to 1 GiB virtual: empty ones,
               ones with a few writes, ones with 200 writes, and 2% with 3
               leaked clusters), `qcheck -j2 --files-from=LIST` against the
               shell loop `while read f; do qemu-img check "$f"; done <LIST`
               run by bash. Target >= 20x.
  batch100x1t  100 images of 1 TiB, 64 KiB clusters, preallocation=metadata
               (about 160 MiB of metadata each), `qcheck -j2` against
               `qcheck -j1` on the same list: wall time and CPU time (user +
               sys of qcheck and its workers, from wait4). Target: -j1 / -j2
               >= 1.8x, and -j2's CPU / wall near 2 (both cores busy).
  mapreport    the first 1 TiB image of batch100x1t: `qcheck IMG` against
               `qcheck --map=X.svg IMG` and `qcheck --report=X.html IMG`.
               Target: under 10% overhead. A binary that does not know the
               option prints "n/a" in the row (not a failure).

Images are built once in the work folder (default $QC_BENCH_WORK or
/var/tmp/qcheck-bench), one folder per image set named by a hash of its
recipe (builder source, parameters, version), with a .stamp file holding the
build time; a changed recipe rebuilds, an older set is deleted. batch1000 is
made from a few template images (qemu-img create, qemu-io writes, one leak
patched with layout/qcow2lib.py) copied 1,000 times; batch100x1t is one
`qemu-img create -o preallocation=metadata` image copied 99 times with
`cp --sparse=always` (16 GiB of disk for the 100). The time each build took
is printed.

Per row: one untimed warm-up run of each side (warm page cache; its exit
status is checked: the batches exit 3 when the set has leaky images, 0
otherwise, the single image 0), then --runs rounds alternating the sides; a
side is repeated only while the time it has taken so far is under
--repeat-budget seconds. Medians of wall time are shown, and CPU time.

Exit status: 0 when every row ran with the expected exit codes, whatever
the figures; 1 otherwise. --smoke: 20 tiny images for batch1000 and 4 of
1 GiB for batch100x1t, in a temporary folder (deleted after), one run per
side, and the JSON Lines of one batch checked (one object per image in the
list's order, the leaky ones `leaks`, the summary's counts); a few seconds,
CTest entry bench_fleet_smoke.
"""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench as B  # noqa: E402
import qcow2lib as q  # noqa: E402  (bench.py put layout/ on sys.path)
import validate as V  # noqa: E402

KiB, MiB, GiB, TiB = B.KiB, B.MiB, B.GiB, B.TiB


# --------------------------------------------------------------------------
# Image sets: a folder of images and LIST (their names, one per line)
# --------------------------------------------------------------------------
def qemu_img_create(path, size, opts=None):
    cmd = ["qemu-img", "create", "-q", "-f", "qcow2"] + (["-o", opts] if opts else [])
    subprocess.run(cmd + [path, str(size)], check=True, capture_output=True)


def qemu_io_writes(path, writes):
    cmd = ["qemu-io", "-f", "qcow2"]
    for off, length, pattern in writes:
        cmd += ["-c", "write -P 0x%02x %d %d" % (pattern, off, length)]
    r = subprocess.run(cmd + [path], capture_output=True, text=True)
    if r.returncode != 0 or "failed" in r.stdout + r.stderr:
        raise B.BuildError("qemu-io %s: %s" % (path, (r.stdout + r.stderr).strip()[-300:]))


def build_small_set(folder, count, leaky_every):
    """`count` images copied from five templates: empty 64 MiB; 64 MiB with
    4 writes; 1 GiB with 200 scattered 64 KiB writes; 256 MiB with 20
    writes; and (every `leaky_every`-th image) the 4-write image with 3
    leaked clusters."""
    tpl = os.path.join(folder, "templates")
    os.makedirs(tpl)
    t = {k: os.path.join(tpl, k + ".qcow2") for k in ("empty", "few", "many", "mid", "leaky")}
    qemu_img_create(t["empty"], 64 * MiB)
    qemu_img_create(t["few"], 64 * MiB)
    qemu_io_writes(t["few"], [(i * 4 * MiB, 64 * KiB, 0x10 + i) for i in range(4)])
    qemu_img_create(t["many"], GiB)
    qemu_io_writes(t["many"], [((i * 7919) % 16384 * 64 * KiB, 64 * KiB, 1 + i % 250)
                               for i in range(200)])
    qemu_img_create(t["mid"], 256 * MiB)
    qemu_io_writes(t["mid"], [(i * 12 * MiB, 128 * KiB, 0x40 + i) for i in range(20)])
    shutil.copyfile(t["few"], t["leaky"])
    with q.Image(t["leaky"], writable=True) as im:
        im.append_clusters(count=3)
    kinds = ["empty", "few", "many", "mid", "few", "mid", "few", "empty", "mid", "few"]
    names = []
    for i in range(count):
        kind = "leaky" if i % leaky_every == leaky_every // 2 else kinds[i % len(kinds)]
        name = "img%04d-%s.qcow2" % (i, kind)
        shutil.copyfile(t[kind], os.path.join(folder, name))
        names.append(name)
    shutil.rmtree(tpl)
    return names


def build_prealloc_set(folder, count, size):
    """One `preallocation=metadata` image of `size`, copied count - 1 times
    with `cp --sparse=always` (the same bytes; qemu-img would take as long
    for each)."""
    first = os.path.join(folder, "tib000.qcow2")
    qemu_img_create(first, size, "preallocation=metadata,cluster_size=65536")
    names = [os.path.basename(first)]
    for i in range(1, count):
        name = "tib%03d.qcow2" % i
        subprocess.run(["cp", "--sparse=always", first, os.path.join(folder, name)], check=True)
        names.append(name)
    return names


BUILDERS = {"small": build_small_set, "prealloc": build_prealloc_set}

SETS = {
    "small1000": dict(name="small1000", builder="small", version=1,
                      what="1,000 small images (empty, few or 200 writes, 2% leaky)",
                      params=dict(count=1000, leaky_every=50),
                      smoke=dict(count=20, leaky_every=10)),
    "prealloc100": dict(name="prealloc100", builder="prealloc", version=1,
                        what="100 x 1 TiB, 64 KiB clusters, preallocation=metadata",
                        params=dict(count=100, size=TiB),
                        smoke=dict(count=4, size=GiB)),
}


def ensure_set(work, recipe, smoke):
    """(folder, list file, names, info) of an image set, built if needed."""
    params = recipe["smoke"] if smoke else recipe["params"]
    tag = B.recipe_tag(recipe, params, BUILDERS)
    base = "%s-%s" % (recipe["name"], tag)
    folder = os.path.join(work, base)
    stamp = folder + ".stamp"
    for f in os.listdir(work):
        if f.startswith(recipe["name"] + "-") and not f.startswith(base):
            p = os.path.join(work, f)
            shutil.rmtree(p) if os.path.isdir(p) else os.unlink(p)
    listfile = os.path.join(folder, "LIST")
    if os.path.isdir(folder) and os.path.exists(stamp) and os.path.exists(listfile):
        with open(stamp) as f:
            info = json.load(f)
        with open(listfile) as f:
            names = [ln for ln in f.read().split("\n") if ln]
        info["reused"] = True
        return folder, listfile, names, info
    tmp = folder + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(tmp)
    if not smoke:
        print("building %s (%s) ..." % (recipe["name"], recipe["what"]), flush=True)
    t0 = time.perf_counter()
    try:
        names = BUILDERS[recipe["builder"]](tmp, **params)
        with open(os.path.join(tmp, "LIST"), "w") as f:
            f.write("".join(os.path.join(folder, n) + "\n" for n in names))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    build_s = time.perf_counter() - t0
    os.rename(tmp, folder)
    names = [os.path.join(folder, n) for n in names]
    allocated = sum(B.disk_usage(n)[1] for n in names)
    apparent = sum(B.disk_usage(n)[0] for n in names)
    info = {"recipe": recipe["name"], "params": params, "build_seconds": round(build_s, 2),
            "qemu_img": B.qemu_version(), "apparent": apparent, "allocated": allocated,
            "images": len(names), "built": time.strftime("%Y-%m-%d %H:%M:%S")}
    with open(stamp, "w") as f:
        json.dump(info, f, indent=1)
    if not smoke:
        print("  built in %.1f s: %d images, %s apparent, %s on disk"
              % (build_s, len(names), B.human_bytes(apparent), B.human_bytes(allocated)),
              flush=True)
    info["reused"] = False
    return folder, listfile, names, info


# --------------------------------------------------------------------------
# The benchmark
# --------------------------------------------------------------------------
def rejected_option(step):
    """The run failed because qcheck does not know an option (yet)."""
    return step.status == 1 and ("unrecognized option" in step.output or
                                 "unknown option" in step.output or
                                 "invalid option" in step.output)


class Bench:
    def __init__(self, args, qcheck, work):
        self.args, self.qcheck, self.work = args, qcheck, work
        self.smoke = args.smoke
        self.runs = 1 if self.smoke else args.runs
        self.rows, self.failed, self.notes = [], [], []
        self.sets = {}
        self.scratch = tempfile.mkdtemp(prefix="qcheck-fleet-out-")

    def close(self):
        shutil.rmtree(self.scratch, ignore_errors=True)

    def log(self, msg):
        if not self.smoke:
            print(msg, flush=True)

    def image(self, name):
        if name not in self.sets:
            self.sets[name] = ensure_set(self.work, SETS[name], self.smoke)
        return self.sets[name]

    def expect_ok(self, what, step, expect):
        if not step.ok(expect):
            self.failed.append("%s: %s" % (what, step.describe()))
            return False
        return True

    def rounds(self, sides, fns):
        for i in range(self.runs):
            for side, fn in zip(sides, fns):
                if i == 0 or side.spent() < self.args.repeat_budget:
                    side.add(fn())

    def row(self, name, what, q, peer, peer_label, target, checks):
        """target: ("ratio", X): peer / qcheck >= X; ("overhead", X): qcheck /
        peer - 1 < X."""
        qs, ps = q.seconds(), peer.seconds()
        kind, value = target
        if kind == "ratio":
            ratio = ps / qs if qs > 0 else None
            shown = "%.1fx" % ratio if ratio is not None else "-"
            met, tgt = ratio is not None and ratio >= value, ">= %gx" % value
        else:
            over = qs / ps - 1 if ps > 0 else None
            shown = "%+.1f%%" % (100 * over) if over is not None else "-"
            met, tgt = over is not None and over < value, "< %g%% overhead" % (100 * value)
        r = dict(name=name, what=what, qs=B.fmt_s(qs), qcpu=B.fmt_s(q.cpu()), peer=peer_label,
                 ps=B.fmt_s(ps), pcpu=B.fmt_s(peer.cpu()), ratio=shown, target=tgt,
                 met="-" if self.smoke else ("yes" if met else "NO"),
                 runs="%d/%d" % (len(q.runs), len(peer.runs)), checks=checks)
        self.rows.append(r)
        self.log("  %s: qcheck %s s (CPU %s s), %s %s s (CPU %s s), %s, target %s, met %s, "
                 "runs %s, %s" % (name, r["qs"], r["qcpu"], peer_label, r["ps"], r["pcpu"],
                                  r["ratio"], r["target"], r["met"], r["runs"], checks))

    def na_row(self, name, what, peer_label, why):
        self.rows.append(dict(name=name, what=what, qs="n/a", qcpu="n/a", peer=peer_label,
                              ps="-", pcpu="-", ratio="n/a", target="< 10% overhead", met="n/a",
                              runs="-", checks=why))
        self.log("  %s: n/a (%s)" % (name, why))

    def batch_argv(self, jobs, listfile, *extra):
        return [self.qcheck, "-j%d" % jobs, *extra, "--files-from=" + listfile]

    def check_jsonl(self, what, listfile, names):
        """One JSON Lines batch (--smoke): an object per image in order,
        the leaky ones `leaks`, the summary's figures."""
        argv = self.batch_argv(2, listfile, "--output=json")
        r = subprocess.run(argv, capture_output=True, text=True)
        try:
            objs = [json.loads(ln) for ln in r.stdout.splitlines()]
            images, summary = objs[:-1], objs[-1]["summary"]
        except (ValueError, IndexError, KeyError, TypeError) as e:
            self.failed.append("%s: %s: no JSON Lines with a summary (%s): exit %d, %s"
                               % (what, " ".join(argv), e, r.returncode,
                                  (r.stdout + r.stderr)[:500]))
            return "JSON FAILED"
        want = ["leaks" if "leaky" in os.path.basename(n) else "clean" for n in names]
        got = [o.get("verdict") for o in images]
        if [o.get("filename") for o in images] != names or got != want:
            self.failed.append("%s: verdicts %s, expected %s" % (what, got, want))
            return "JSON FAILED"
        if summary.get("images") != len(names) or summary.get("leaks") != want.count("leaks"):
            self.failed.append("%s: summary %s" % (what, summary))
            return "JSON FAILED"
        return "JSON ok"

    # ---- rows ---------------------------------------------------------------
    def run_batch1000(self):
        _, listfile, names, _ = self.image("small1000")
        leaky = sum("leaky" in os.path.basename(n) for n in names)
        want = 3 if leaky else 0
        loop = ["bash", "-c", 'while IFS= read -r f; do qemu-img check "$f"; done < "$1"',
                "qemu-img-loop", listfile]
        q, peer = V.Side("qcheck"), V.Side("loop")
        warm = V.Step(self.batch_argv(2, listfile))
        ok = self.expect_ok("batch1000 warm-up", warm, want)
        V.Step(loop)
        self.rounds([peer, q], [lambda: [V.Step(loop)],
                                lambda: [V.Step(self.batch_argv(2, listfile))]])
        ok = all(self.expect_ok("batch1000", r[0], want) for r in q.runs) and ok
        checks = "exit %d (%d leaky)" % (want, leaky) if ok else "FAILED"
        if self.smoke:
            checks += ", " + self.check_jsonl("batch1000", listfile, names)
        self.row("batch1000", "%d small images, qcheck -j2 --files-from" % len(names), q, peer,
                 "qemu-img check loop", ("ratio", 20), checks)

    def run_batch100x1t(self):
        _, listfile, names, _ = self.image("prealloc100")
        j2, j1 = V.Side("-j2"), V.Side("-j1")
        for jobs in (2, 1):
            self.expect_ok("batch100x1t warm-up -j%d" % jobs, V.Step(self.batch_argv(jobs, listfile)), 0)
        self.rounds([j1, j2], [lambda: [V.Step(self.batch_argv(1, listfile))],
                               lambda: [V.Step(self.batch_argv(2, listfile))]])
        ok = all(self.expect_ok("batch100x1t", r[0], 0) for s in (j1, j2) for r in s.runs)
        busy = j2.cpu() / j2.seconds() if j2.seconds() > 0 else 0
        checks = ("exit 0, -j2 CPU/wall %.2f (2 = both cores busy)" % busy) if ok else "FAILED"
        if self.smoke:
            checks += ", " + self.check_jsonl("batch100x1t", listfile, names)
        self.row("batch100x1t", "%d x %s preallocated, qcheck -j2" % (
            len(names), "1 TiB" if not self.smoke else "1 GiB"), j2, j1, "qcheck -j1",
            ("ratio", 1.8), checks)

    def run_mapreport(self):
        _, _, names, _ = self.image("prealloc100")
        img = names[0]
        plain = [self.qcheck, img]
        outputs = {"map": "--map=" + os.path.join(self.scratch, "map.svg"),
                   "report": "--report=" + os.path.join(self.scratch, "report.html")}
        self.expect_ok("mapreport warm-up", V.Step(plain), 0)
        for kind, opt in outputs.items():
            name = "mapreport:" + kind
            what = "1 %s preallocated, qcheck %s" % ("TiB" if not self.smoke else "GiB",
                                                   opt.split("=")[0] + "=X")
            argv = [self.qcheck, opt, img]
            warm = V.Step(argv)
            if rejected_option(warm):
                self.na_row(name, what, "qcheck", "%s not known to this qcheck"
                            % opt.split("=")[0])
                continue
            if not self.expect_ok(name + " warm-up", warm, 0):
                self.na_row(name, what, "qcheck", "FAILED")
                continue
            path = opt.split("=", 1)[1]
            made = os.path.exists(path) and os.path.getsize(path) > 0
            if not made:
                self.failed.append("%s: %s wrote no %s" % (name, " ".join(argv), path))
            with_opt, without = V.Side(kind), V.Side("plain")
            self.rounds([without, with_opt], [lambda: [V.Step(plain)], lambda: [V.Step(argv)]])
            ok = all(self.expect_ok(name, r[0], 0) for s in (with_opt, without) for r in s.runs)
            self.row(name, what, with_opt, without, "qcheck IMG", ("overhead", 0.10),
                     ("exit 0, %s written (%s)" % (kind, B.human_bytes(os.path.getsize(path))))
                     if ok and made else "FAILED")

    # ---- output -------------------------------------------------------------
    def report(self, elapsed):
        V.report_rows(self, elapsed, "1 untimed warm-up per side",
                      "times are medians of wall seconds; ratio = peer / qcheck (overhead = "
                      "qcheck / peer - 1); CPU = user + sys from wait4, which includes the "
                      "workers qcheck waited for (CPU / wall near 2 means both cores worked).")

    def report_disk(self):
        md = self.args.markdown
        for name, (_, _, names, info) in self.sets.items():
            print("%simage set %s: %d images, %s on disk, built in %.1f s%s"
                  % ("* " if md else "", name, len(names), B.human_bytes(info["allocated"]),
                     info["build_seconds"], " (reused)" if info.get("reused") else ""))


ROW_SETS = {"batch1000": ["small1000"], "batch100x1t": ["prealloc100"],
            "mapreport": ["prealloc100"]}
ROWS = {"batch1000": Bench.run_batch1000, "batch100x1t": Bench.run_batch100x1t,
        "mapreport": Bench.run_mapreport}


def main():
    return B.rows_main("fleet.py", __doc__, ROWS, ROW_SETS, ("qemu-img", "qemu-io", "bash", "cp"), Bench)


if __name__ == "__main__":
    sys.exit(main())
