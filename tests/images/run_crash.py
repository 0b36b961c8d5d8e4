#!/usr/bin/env python3
"""Crash injection, undo/rollback and refusals of qcheck's repair.

    run_crash.py QCHECK WORKDIR [--filter SUBSTR] [--jobs N] [--keep]

Three groups of tests, on damaged images made by the catalogue's patches
(cases.py) from the bases of build_images.py:

crash    For each image and its repair mode (MODE: all, or leaks where
         the image says so): the plan of `qcheck -r MODE -n --output=json`; for
         every write count N in 0..W-1 and both crash modes (plain, and
         QCHECK_TEST_CRASH_DROP_UNFLUSHED=1), a copy is repaired with
         QCHECK_TEST_CRASH_AFTER_WRITES=N, which must exit 1 saying the
         repair stopped. Right after the crash a version 3 image must carry
         the corrupt bit (unless no write reached it, or the last header
         write did: that is the fence), a drop-unflushed crash must leave
         exactly what a plain crash at the last flush leaves, and a plain
         check must complete. Then one more `qcheck -r MODE` must end
         where an uninterrupted repair of a fresh copy ends (what a
         pointer the repair dropped could own is freed by the
         uninterrupted run in the same run, by the follow-up as a leak):
         same exit code, corruptions, leaks, bad problem ids, header bits
         and number of snapshots, the same guest data (sha256 per guest
         cluster, read with `qemu-img convert`), and `qemu-img check` must
         agree when that result is clean.
undo     `-r all --undo=LOG` then `--rollback=LOG` restores the file byte for
         byte (size and sha256), also after an interrupted repair; damaged
         logs (header byte, saved bytes, truncation), a log of another
         image and an existing --undo file are refused (exit 1) without
         touching the image.
refuse   An unknown incompatible feature bit, and an image whose QEMU locks
         are held (by a qemu-io process, and by OFD locks like QEMU's):
         repair exits 1 and leaves the file unchanged with QEMU's lock
         sentence; a plain check of the locked image is refused as
         qemu-img refuses it (exit 1, nothing on stdout), and with -U it
         checks it and warns (imageInUse).

Prints `PASS name` / `FAIL name: reasons` per test, then a summary line of
figures; exit status 0 only if everything passed. --filter keeps the tests
whose name (e.g. `crash:leak_rc16`, `undo:rebuild`, `refuse:lock_ofd`)
contains SUBSTR.
"""

import argparse
import fcntl
import hashlib
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
import build_images  # noqa: E402
import cases as catalogue  # noqa: E402
import qcow2lib as q  # noqa: E402

QEMU_IMG = build_images.QEMU_IMG
QEMU_IO = build_images.QEMU_IO
TIMEOUT = 120
BAD_SEVERITIES = ("corruption", "leak", "error")
CRASH_ENV = ("QCHECK_TEST_CRASH_AFTER_WRITES", "QCHECK_TEST_CRASH_DROP_UNFLUSHED")


# ---- the images ------------------------------------------------------------------

@dataclass(frozen=True)
class Image:
    """A damaged image: a base and a patch (from the catalogue or here),
    and the repair mode crash-tested on it."""
    name: str
    base: str
    patch: object
    why: str
    mode: str = "all"


def _from_catalogue(name, why, mode="all"):
    c = next(c for c in catalogue.CASES if c.name == name)
    return Image(c.name if mode == "all" else "%s_%s" % (c.name, mode), c.base, c.patch, why, mode)


def mode_arg(ctx):
    return ["-r", ctx["image"].mode]


# Crash-tested images, covering every kind of repair write.
CRASH_IMAGES = [
    _from_catalogue("leak_rc16", "a leak (refcount lowered in place)"),
    _from_catalogue("too_low_rc16", "refcount too low: raised in place, then COPIED"),
    _from_catalogue("zero_in_use_rc4", "refcount zero in use, packed 4-bit refcounts"),
    _from_catalogue("reftable_entry_past_eof", "damaged reftable entry: full rebuild at EOF"),
    _from_catalogue("reftable_entry_past_eof_second", "rebuild with several refcount blocks"),
    _from_catalogue("l2_copied_cleared", "wrong COPIED flag in an L2 entry"),
    _from_catalogue("l1_copied_cleared", "wrong COPIED flag in an L1 entry"),
    _from_catalogue("snap_table_truncated", "snapshot table rewritten, leak and COPIED"),
    _from_catalogue("snap_extra_too_large", "snapshot table rewritten"),
    _from_catalogue("bitmap_broken_and_leak", "broken bitmap: autoclear bit dropped, clusters freed"),
    _from_catalogue("lazy_refcounts_crashed", "dirty lazy-refcounts image"),
    _from_catalogue("l2_past_eof", "L2 entry past EOF: mapping dropped"),
    _from_catalogue("zero_in_use_v2_512", "version 2: refcount zero in use (no fence)"),
    Image("v2_too_low", "v2_64k", catalogue.crosslink(),
          "version 2: refcount too low and COPIED, several writes without a fence"),
    Image("v2_rebuild", "v2_64k", lambda im: im.set_reftable_entry(0, catalogue.past_eof()(im)),
          "version 2: damaged reftable entry, full rebuild"),
    _from_catalogue("l1_past_eof", "L1 entry dropped, what only it could own freed in the same run"),
    _from_catalogue("hdr_snapshots_past_eof", "snapshot table past EOF discarded, its clusters freed"),
    _from_catalogue("l2_unaligned", "unaligned L2 entry re-pointed"),
    _from_catalogue("l1_unaligned", "unaligned L1 entry re-pointed after a check of the view"),
    _from_catalogue("l1_unaligned_into_garbage", "re-pointing tried, taken back, the entry dropped"),
    _from_catalogue("l2_unaligned_shared_table", "re-pointed entry in a table a snapshot shares"),
    _from_catalogue("snap_extra_past_eof", "entry past EOF cut in place, then the table rewritten"),
    _from_catalogue("snap_entry_past_eof_and_dropped", "entry cut, the next dropped, its clusters freed"),
    _from_catalogue("snap_unknown_extra_rewritten", "table rewritten with unknown extra data"),
    _from_catalogue("snap_create_failed", "leak with COPIED clear: refcounts, then COPIED", "leaks"),
    _from_catalogue("snap_delete_interrupted", "leak with COPIED clear in data clusters", "leaks"),
]

# Undo/rollback: name -> image. "rebuild" grows the file.
UNDO_IMAGES = {
    "leak": _from_catalogue("leak_rc16", ""),
    "too_low": _from_catalogue("too_low_rc16", ""),
    "rebuild": _from_catalogue("reftable_entry_past_eof", ""),
    "snapshot": _from_catalogue("snap_table_truncated", ""),
    "bitmaps": _from_catalogue("bitmap_broken_and_leak", ""),
    "lazy": _from_catalogue("lazy_refcounts_crashed", ""),
    "v2": Image("v2_too_low", "v2_64k", catalogue.crosslink(), ""),
}


# ---- helpers -------------------------------------------------------------------

def durable_writes(steps):
    """For each write of a plan's steps (JSON), how many writes are on disk
    after a drop-unflushed crash at it: those before the last flush that
    precedes it."""
    durable, seen, last_flush = [], 0, 0
    for step in steps:
        if step.get("flush"):
            last_flush = seen
        else:
            durable.append(last_flush)
            seen += 1
    return durable


def sha256(path):
    return q.file_sha256(path)


def fingerprint(path):
    return os.path.getsize(path), sha256(path)


def sanitizer_env():
    """The environment for qcheck: no crash hook unless a test sets it."""
    return {k: v for k, v in os.environ.items() if k not in CRASH_ENV}


def sanitizer_report(text):
    return "Sanitizer" in text or "runtime error:" in text


class Failed(Exception):
    pass


class Test:
    """Collects the failures of one named test."""

    def __init__(self, name):
        self.name, self.fails, self.notes = name, [], []

    def expect(self, cond, what):
        if not cond:
            self.fails.append(what)
        return cond

    def fatal(self, cond, what):
        if not cond:
            self.fails.append(what)
            raise Failed()


class Runner:
    def __init__(self, qcheck, workdir, jobs):
        self.qcheck = os.path.abspath(qcheck)
        self.workdir = os.path.abspath(workdir)
        self.bases_dir = os.path.join(self.workdir, "bases")
        self.cases_dir = os.path.join(self.workdir, "crash")
        self.jobs = jobs
        self.lock = threading.Lock()
        self.figures = dict(crash_points=0, converged=0, undo_cases=0,
                            rollbacks=0, refused_logs=0, refusals=0)

    def count(self, key, n=1):
        with self.lock:
            self.figures[key] += n

    # -- processes ---------------------------------------------------------------

    def qc(self, t, args, path, env=None, what="qcheck"):
        """Run qcheck on `path` (from its directory); returns (rc, out, err).
        Sanitizer reports, signals and hangs are failures of the test."""
        e = sanitizer_env()
        e.update(env or {})
        argv = [self.qcheck, *args, os.path.basename(path)]
        try:
            p = subprocess.run(argv, cwd=os.path.dirname(path), capture_output=True, text=True,
                               errors="replace", timeout=TIMEOUT, env=e)
        except subprocess.TimeoutExpired:
            t.fatal(False, "%s timed out: %s" % (what, " ".join(argv[1:])))
        if sanitizer_report(p.stderr):
            t.fatal(False, "%s: sanitizer report (%s): %s" % (
                what, " ".join("%s=%s" % kv for kv in (env or {}).items()) + " " + " ".join(argv[1:]),
                p.stderr.strip()[-600:]))
        t.fatal(p.returncode >= 0, "%s died with signal %d: %s" % (what, -p.returncode, p.stderr[-300:]))
        return p.returncode, p.stdout, p.stderr

    def qc_json(self, t, args, path, env=None, what="qcheck"):
        rc, out, err = self.qc(t, list(args) + ["--output=json"], path, env, what)
        try:
            res = json.loads(out)
        except ValueError:
            res = None
        t.fatal(isinstance(res, dict), "%s printed no JSON (exit %d): %r" % (what, rc, (out + err)[:300]))
        return rc, res

    @staticmethod
    def tool(argv, cwd=None, timeout=TIMEOUT):
        try:
            p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace",
                               timeout=timeout)
            return p.returncode, p.stdout, p.stderr
        except subprocess.TimeoutExpired:
            return None, "", "timed out"

    def guest_clusters(self, t, path, cluster_size, what):
        """sha256 of every guest cluster, as QEMU reads the image."""
        with tempfile.TemporaryDirectory(dir=self.workdir) as tmp:
            raw = os.path.join(tmp, "guest.raw")
            rc, _, err = self.tool([QEMU_IMG, "convert", "-U", "-f", "qcow2", "-O", "raw", path, raw])
            t.fatal(rc == 0, "qemu-img convert of %s failed: %s" % (what, err.strip()[-300:]))
            out = []
            with open(raw, "rb") as f:
                for chunk in iter(lambda: f.read(cluster_size), b""):
                    out.append(hashlib.sha256(chunk).hexdigest())
            return out

    # -- images ------------------------------------------------------------------

    def make(self, image, dest_dir, name=None):
        """A patched copy of `image` in dest_dir; returns its path."""
        base = build_images.BASES[image.base]
        os.makedirs(dest_dir, exist_ok=True)
        path = os.path.join(dest_dir, name or base.filename)
        shutil.copyfile(os.path.join(self.bases_dir, base.filename), path)
        if image.patch:
            with q.Image(path, writable=True) as im:
                image.patch(im)
        return path

    @staticmethod
    def copy(src, dest):
        shutil.copyfile(src, dest)
        return dest

    # -- crash injection -------------------------------------------------------------

    def plan(self, t, path, mode="all"):
        rc, res = self.qc_json(t, ["-r", mode, "-n"], path, what="dry run")
        steps = res.get("repair", {}).get("steps")
        t.fatal(isinstance(steps, list), "dry run has no repair.steps (exit %d)" % rc)
        return steps

    def verdict(self, t, path, what):
        """What a plain check says: the figures a repair must converge to."""
        rc, res = self.qc_json(t, [], path, what=what)
        hdr = res.get("header", {})
        bad = sorted({p.get("id") for p in res.get("problems", [])
                      if p.get("severity") in BAD_SEVERITIES})
        return dict(exit=rc, corruptions=res.get("corruptions", 0), leaks=res.get("leaks", 0),
                    check_errors=res.get("check-errors", 0), bad=bad,
                    dirty=hdr.get("dirty"), corrupt=hdr.get("corrupt"),
                    snapshots=hdr.get("snapshots"))

    def crash_image(self, image):
        """Set-up of one crash-tested image: the damaged original, the plan,
        the uninterrupted reference. Returns (Test, context or None)."""
        t = Test("crash:" + image.name)
        try:
            d = os.path.join(self.cases_dir, image.name)
            shutil.rmtree(d, ignore_errors=True)
            orig = self.make(image, d, "orig.qcow2")
            with q.Image(orig) as im:
                version, cs = im.header.version, im.cluster_size
                incompat = im.header.incompatible_features
            steps = self.plan(t, orig, image.mode)
            writes = [s for s in steps if not s.get("flush")]
            t.fatal(writes, "the plan writes nothing (%d steps)" % len(steps))
            durable = durable_writes(steps)
            header_writes = [i for i, s in enumerate(writes)
                             if s["offset"] < 80 and s["offset"] + s["length"] > 72]
            ref = self.copy(orig, os.path.join(d, "ref.qcow2"))
            rc, res = self.qc_json(t, ["-r", image.mode], ref, what="uninterrupted repair")
            t.fatal(rc != 1, "uninterrupted repair exited 1: %s" % res.get("error", ""))
            ref_v = self.verdict(t, ref, "check of the uninterrupted result")
            t.expect(ref_v["exit"] == rc, "uninterrupted repair exited %d, its result checks %d"
                     % (rc, ref_v["exit"]))
            ref_guest = self.guest_clusters(t, ref, cs, "the uninterrupted result")
            ctx = dict(image=image, dir=d, orig=orig, steps=steps, writes=writes,
                       durable=durable, header_writes=header_writes, version=version,
                       corrupt_before=bool(incompat & q.INCOMPAT_CORRUPT), cluster_size=cs,
                       ref_rc=rc, ref=ref_v, ref_guest=ref_guest, plain_sha={})
            return t, ctx
        except Failed:
            return t, None
        except Exception as e:  # a broken patch or helper is a failure, not a crash
            t.fails.append("%s: %s" % (type(e).__name__, e))
            return t, None

    def crash_point(self, ctx, n, drop):
        """One crash at write count n; returns a list of failure strings."""
        mode = "drop" if drop else "plain"
        t = Test("%s N=%d %s" % (ctx["image"].name, n, mode))
        try:
            self._crash_point(t, ctx, n, drop)
        except Failed:
            pass
        except Exception as e:
            t.fails.append("%s: %s" % (type(e).__name__, e))
        self.count("crash_points")
        return t

    def _crash_point(self, t, ctx, n, drop):
        mode = "drop" if drop else "plain"
        img = self.copy(ctx["orig"], os.path.join(ctx["dir"], "n%d_%s.qcow2" % (n, mode)))
        env = {"QCHECK_TEST_CRASH_AFTER_WRITES": str(n)}
        if drop:
            env["QCHECK_TEST_CRASH_DROP_UNFLUSHED"] = "1"
        repro = "QCHECK_TEST_CRASH_AFTER_WRITES=%d%s qcheck %s" % (
            n, " QCHECK_TEST_CRASH_DROP_UNFLUSHED=1" if drop else "", " ".join(mode_arg(ctx)))
        rc, out, err = self.qc(t, mode_arg(ctx), img, env, what=repro)
        t.expect(rc == 1, "%s exited %d, wanted 1" % (repro, rc))
        t.expect("stopped" in err, "%s did not say the repair stopped: %r" % (repro, err.strip()[-200:]))
        crashed_sha = sha256(img)
        if not drop:
            ctx["plain_sha"][n] = crashed_sha  # read by drop-mode points (see run_crash)
        else:
            d = ctx["durable"][n]
            want = ctx["plain_sha"].get(d)
            t.expect(want is None or want == crashed_sha,
                     "the image after a drop-unflushed crash at %d is not the image after a plain "
                     "crash at %d (the writes before the last flush)" % (n, d))
        if ctx["version"] >= 3:
            with q.Image(img) as im:
                corrupt = bool(im.header.incompatible_features & q.INCOMPAT_CORRUPT)
            hw = ctx["header_writes"]
            fenced = n >= 1 and (not hw or n <= hw[-1])
            if ctx["corrupt_before"] or fenced:
                t.expect(corrupt, "corrupt bit not set right after %s (writes 1..%d of %d reached "
                         "the image; the last header write is write %d)" % (
                             repro, n, len(ctx["writes"]), hw[-1] + 1 if hw else 0))
            elif n == 0:
                t.expect(not corrupt, "corrupt bit set although no write reached the image")
        crc, _ = self.qc_json(t, [], img, what="check after the crash")
        t.expect(crc in (0, 2, 3), "plain check after %s exited %d" % (repro, crc))
        # Converge: one follow-up repair must end where the uninterrupted
        # one did (what a pointer it dropped could own is freed by the
        # follow-up as a leak, by the uninterrupted run in the same run).
        ref = ctx["ref"]
        frc, fres = self.qc_json(t, mode_arg(ctx), img, what="follow-up repair")
        got = self.verdict(t, img, "check after the follow-up repair")
        t.fatal(frc == ctx["ref_rc"] and got == ref,
                "after %s and `qcheck %s`: %s; the uninterrupted repair: exit %d, %s" % (
                    repro, " ".join(mode_arg(ctx)), dict(got, repair_exit=frc), ctx["ref_rc"], ref))
        self.count("converged")
        guest = self.guest_clusters(t, img, ctx["cluster_size"], "the converged image")
        if guest != ctx["ref_guest"]:
            diff = [i for i, (a, b) in enumerate(zip(guest, ctx["ref_guest"])) if a != b]
            t.expect(False, "after %s and the follow-up repair, guest data differs from the "
                     "uninterrupted result in %d guest clusters (first: %s)%s" % (
                         repro, len(diff), diff[:8],
                         "" if len(guest) == len(ctx["ref_guest"]) else
                         "; guest sizes %d/%d clusters" % (len(guest), len(ctx["ref_guest"]))))
        if got["exit"] == 0:
            qrc, qout, qerr = self.tool([QEMU_IMG, "check", "-f", "qcow2", os.path.basename(img)],
                                        cwd=ctx["dir"])
            t.expect(qrc == 0, "qemu-img check exits %s on the image converged after %s: %s" % (
                qrc, repro, (qout + qerr).strip()[-300:]))
        if not t.fails:
            os.unlink(img)

    def run_crash(self, images, pool):
        setups = list(pool.map(self.crash_image, images))
        tests = []
        for t, ctx in setups:
            if ctx is None:
                tests.append(t)
                continue
            w = len(ctx["writes"])
            # plain crashes first: drop-mode points compare with them
            plain = list(pool.map(lambda n: self.crash_point(ctx, n, False), range(w)))
            drop = list(pool.map(lambda n: self.crash_point(ctx, n, True), range(w)))
            for sub in plain + drop:
                t.fails += ["[%s] %s" % (sub.name, f) for f in sub.fails]
            t.notes.append("%d writes, %d crash points" % (w, 2 * w))
            tests.append(t)
        return tests

    # -- undo and rollback ------------------------------------------------------------

    def undo_case(self, key, image):
        t = Test("undo:" + key)
        try:
            self._undo_case(t, key, image)
        except Failed:
            pass
        except Exception as e:
            t.fails.append("%s: %s" % (type(e).__name__, e))
        return t

    def _undo_case(self, t, key, image):
        d = os.path.join(self.workdir, "undo", key)
        shutil.rmtree(d, ignore_errors=True)
        orig = self.make(image, d, "orig.qcow2")
        before = fingerprint(orig)
        img = self.copy(orig, os.path.join(d, "img.qcow2"))
        log = os.path.join(d, "img.undo")
        rc, out, err = self.qc(t, ["-r", "all", "--undo=" + log], img, what="repair with --undo")
        t.fatal(rc in (0, 2, 3), "qcheck -r all --undo=LOG exited %d: %s" % (rc, err.strip()[-300:]))
        t.fatal(os.path.exists(log), "no undo log written")
        repaired = fingerprint(img)
        t.fatal(repaired != before, "the repair changed nothing")
        if key == "rebuild":
            t.expect(repaired[0] > before[0], "the rebuild did not grow the file (%d -> %d)"
                     % (before[0], repaired[0]))
        self.count("undo_cases")

        # Damaged logs are refused and leave the repaired image alone.
        with open(log, "rb") as f:
            good = f.read()
        damaged = {
            "header byte flipped": lambda b: b[:20] + bytes([b[20] ^ 0x40]) + b[21:],
            "saved bytes flipped": lambda b: b[:48 + 24] + bytes([b[48 + 24] ^ 1]) + b[48 + 25:],
            "truncated by one byte": lambda b: b[:-1],
            "truncated to half": lambda b: b[:len(b) // 2],
            "magic only": lambda b: b[:8],
        }
        for what, fn in damaged.items():
            bad = os.path.join(d, "bad.undo")
            with open(bad, "wb") as f:
                f.write(fn(good))
            rc, out, err = self.qc(t, ["--rollback=" + bad], img, what="rollback (%s)" % what)
            t.expect(rc == 1, "rollback with an undo log %s exited %d, wanted 1" % (what, rc))
            t.expect(fingerprint(img) == repaired, "rollback with an undo log %s changed the image"
                     % what)
            self.count("refused_logs")

        # --undo refuses an existing file (and leaves both alone).
        again = self.copy(orig, os.path.join(d, "again.qcow2"))
        rc, out, err = self.qc(t, ["-r", "all", "--undo=" + log], again, what="--undo onto an existing file")
        t.expect(rc == 1, "-r all --undo=EXISTING exited %d, wanted 1" % rc)
        t.expect(fingerprint(again) == before, "-r all --undo=EXISTING changed the image")
        with open(log, "rb") as f:
            t.expect(f.read() == good, "-r all --undo=EXISTING changed the existing file")
        os.unlink(again)

        # The real rollback restores the original byte for byte.
        rc, out, err = self.qc(t, ["--rollback=" + log], img, what="rollback")
        t.expect(rc == 0, "rollback exited %d: %s" % (rc, err.strip()[-300:]))
        got = fingerprint(img)
        t.expect(got == before, "rollback left %d bytes (sha256 %s), the original had %d (%s)"
                 % (got[0], got[1][:16], before[0], before[1][:16]))
        self.count("rollbacks")
        # A second rollback is harmless: every region holds the old bytes.
        rc, out, err = self.qc(t, ["--rollback=" + log], img, what="second rollback")
        t.expect(fingerprint(img) == before, "a second rollback changed the image (exit %d)" % rc)

        # Rollback after an interrupted repair, at every crash point.
        steps = self.plan(t, orig)
        nwrites = sum(1 for s in steps if not s.get("flush"))
        for n in range(nwrites):
            for drop in (False, True):
                c = self.copy(orig, os.path.join(d, "crash.qcow2"))
                clog = os.path.join(d, "crash.undo")
                if os.path.exists(clog):
                    os.unlink(clog)
                env = {"QCHECK_TEST_CRASH_AFTER_WRITES": str(n)}
                if drop:
                    env["QCHECK_TEST_CRASH_DROP_UNFLUSHED"] = "1"
                repro = "QCHECK_TEST_CRASH_AFTER_WRITES=%d%s qcheck -r all --undo=LOG" % (
                    n, " QCHECK_TEST_CRASH_DROP_UNFLUSHED=1" if drop else "")
                rc, out, err = self.qc(t, ["-r", "all", "--undo=" + clog], c, env, what=repro)
                t.expect(rc == 1, "%s exited %d, wanted 1" % (repro, rc))
                rc, out, err = self.qc(t, ["--rollback=" + clog], c, what="rollback after a crash")
                t.expect(rc == 0, "rollback after %s exited %d: %s" % (repro, rc, err.strip()[-200:]))
                t.expect(fingerprint(c) == before, "rollback after %s did not restore the original"
                         % repro)
                self.count("rollbacks")
        t.notes.append("%d writes" % nwrites)
        return log

    @staticmethod
    def undo_records(log):
        """(size before, [(offset, old bytes)]) of an undo log (apply.c)."""
        with open(log, "rb") as f:
            b = f.read()
        size_before, count = struct.unpack(">QQ", b[16:32])
        pos, recs = 48, []
        for _ in range(count):
            off, length = struct.unpack(">QQ", b[pos:pos + 16])
            recs.append((off, b[pos + 24:pos + 24 + length]))
            pos += 32 + length
        return size_before, recs

    def foreign_log(self):
        """A log made for another image is refused and changes nothing.
        The log of the refcount rebuild (A) is applied to images it cannot
        describe: a bigger one where some region the log covers (and no
        other record does) holds neither what A's repair wrote there nor
        what it saved, damaged and repaired, and a smaller one than A was
        before its repair."""
        t = Test("undo:foreign_log")
        try:
            d = os.path.join(self.workdir, "undo", "foreign")
            shutil.rmtree(d, ignore_errors=True)
            a = self.make(UNDO_IMAGES["rebuild"], d, "a.qcow2")
            log = os.path.join(d, "a.undo")
            rc, _, err = self.qc(t, ["-r", "all", "--undo=" + log], a, what="repair of A")
            t.fatal(rc in (0, 2, 3), "repair of A exited %d: %s" % (rc, err[-200:]))
            size_before, recs = self.undo_records(log)
            with open(a, "rb") as f:
                a_now = f.read()

            def distinct(path):
                with open(path, "rb") as f:
                    b = f.read()
                for i, (off, old) in enumerate(recs):
                    end = off + len(old)
                    if any(o < end and off < o + len(x) for j, (o, x) in enumerate(recs) if j != i):
                        continue
                    here = b[off:end].ljust(len(old), b"\0")
                    if here != old and here != a_now[off:end].ljust(len(old), b"\0"):
                        return True
                return False

            others = [(UNDO_IMAGES["snapshot"], "damaged"), (UNDO_IMAGES["snapshot"], "repaired"),
                      (_from_catalogue("zero_in_use_v2_512", ""), "damaged")]
            for k, (image, state) in enumerate(others):
                b = self.make(image, d, "b%d.qcow2" % k)
                if state == "repaired":
                    self.qc(t, ["-r", "all"], b, what="repair of B")
                what = "%s %s with the log of %s" % (state, image.name, UNDO_IMAGES["rebuild"].name)
                smaller = os.path.getsize(b) < size_before
                t.fatal(smaller or distinct(b), "test set-up: the log could describe the %s" % what)
                fp = fingerprint(b)
                rc, out, err = self.qc(t, ["--rollback=" + log], b, what="rollback with A's log")
                t.expect(rc == 1, "rollback of %s exited %d, wanted 1" % (what, rc))
                t.expect(fingerprint(b) == fp, "rollback of %s changed it" % what)
                self.count("refused_logs")
        except Failed:
            pass
        except Exception as e:
            t.fails.append("%s: %s" % (type(e).__name__, e))
        return t

    # -- refusals ---------------------------------------------------------------------

    def refuse_unknown_incompat(self):
        t = Test("refuse:unknown_incompat")
        try:
            d = os.path.join(self.workdir, "refuse")
            os.makedirs(d, exist_ok=True)
            img = self.make(_from_catalogue("leak_rc16", ""), d, "incompat.qcow2")
            with q.Image(img, writable=True) as im:
                im.set_header_bits("incompatible_features", set_mask=1 << 20)
            fp = fingerprint(img)
            for args in (["-r", "all"], ["-r", "leaks"], ["-r", "all", "--output=json"]):
                rc, out, err = self.qc(t, args, img, what="repair with unknown bit 20")
                t.expect(rc == 1, "qcheck %s on an image with incompatible bit 20 exited %d, wanted 1"
                         % (" ".join(args), rc))
                t.expect(fingerprint(img) == fp, "qcheck %s changed an image with incompatible bit 20"
                         % " ".join(args))
            self.count("refusals")
        except Failed:
            pass
        except Exception as e:
            t.fails.append("%s: %s" % (type(e).__name__, e))
        return t

    def _locked_checks(self, t, img, how):
        fp = fingerprint(img)
        for args in (["-r", "all"], ["-r", "leaks"]):
            rc, out, err = self.qc(t, args, img, what="repair of a locked image")
            t.expect(rc == 1, "qcheck %s while %s holds the locks exited %d, wanted 1"
                     % (" ".join(args), how, rc))
            t.expect('lock\nIs another process using the image [' in err,
                     "qcheck %s while %s holds the locks does not give QEMU's lock sentence: %r"
                     % (" ".join(args), how, err[-300:]))
            t.expect(fingerprint(img) == fp, "qcheck %s changed the image %s holds locked"
                     % (" ".join(args), how))
        log = img + ".undo"
        rc, _, _ = self.qc(t, ["--rollback=" + log], img, what="rollback of a locked image")
        t.expect(rc == 1, "rollback while %s holds the locks exited %d, wanted 1" % (how, rc))
        t.expect(fingerprint(img) == fp, "rollback changed the image %s holds locked" % how)
        # A check is refused as qemu-img refuses it: the holder may be
        # writing. -U checks anyway and says the results may be inconsistent.
        rc, out, err = self.qc(t, ["--output=json"], img, what="plain check of a locked image")
        t.expect(rc == 1 and not out.strip() and 'Failed to get shared "write" lock' in err,
                 "plain check while %s holds the locks: exit %d, stdout %r, stderr %r (wanted "
                 "exit 1, nothing on stdout, QEMU's lock sentence)" % (how, rc, out[:100], err[-300:]))
        rc, res = self.qc_json(t, ["-U"], img, what="check -U of a locked image")
        ids = {p.get("id") for p in res.get("problems", [])}
        t.expect(rc == 3 and res.get("leaks") == 1 and "imageInUse" in ids,
                 "check -U while %s holds the locks: exit %d, leaks %s, problems %s (wanted 3, 1 "
                 "and imageInUse)" % (how, rc, res.get("leaks"), sorted(ids)))
        t.expect(fingerprint(img) == fp, "a check changed the image %s holds locked" % how)
        self.count("refusals")

    def refuse_lock_qemu_io(self):
        t = Test("refuse:lock_qemu_io")
        proc = None
        try:
            d = os.path.join(self.workdir, "refuse")
            os.makedirs(d, exist_ok=True)
            img = self.make(_from_catalogue("leak_rc16", ""), d, "locked_qemu.qcow2")
            # The undo log the rollback attempt names: from a repair of a copy.
            spare = self.copy(img, img + ".copy")
            rc, _, _ = self.qc(t, ["-r", "all", "--undo=" + img + ".undo"], spare, what="spare repair")
            os.unlink(spare)
            # qemu-io runs its commands from the pipe; once it has answered
            # one it has the image open with its locks (probing the locks
            # with qemu-img before that would race with qemu-io's open).
            proc = subprocess.Popen([QEMU_IO, "-f", "qcow2", img], stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            proc.stdin.write(b"read 0 512\n")
            proc.stdin.flush()
            answer = proc.stdout.readline().decode(errors="replace")
            t.fatal("512/512 bytes" in answer, "qemu-io did not open the image: %r (exit %s)"
                    % (answer.strip(), proc.poll()))
            rc, _, err = self.tool([QEMU_IMG, "info", "-f", "qcow2", img])
            t.fatal(rc != 0 and "lock" in err,
                    "qemu-img info opens the image qemu-io has open: qemu-io holds no lock")
            self._locked_checks(t, img, "qemu-io (pid %d)" % proc.pid)
        except Failed:
            pass
        except Exception as e:
            t.fails.append("%s: %s" % (type(e).__name__, e))
        finally:
            if proc is not None:
                try:
                    proc.communicate(b"quit\n", timeout=10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self._unlocked_repair(t, img if proc is not None else None, "qemu-io quit")
        return t

    def _unlocked_repair(self, t, img, how):
        """The refusal was the locks': once they are gone the repair runs."""
        if img is None or t.fails:
            return
        try:
            rc, _, err = self.qc(t, ["-r", "all"], img, what="repair after the locks are gone")
            t.expect(rc == 0, "qcheck -r all after %s exited %d: %s" % (how, rc, err.strip()[-200:]))
        except Failed:
            pass

    def refuse_lock_ofd(self):
        """QEMU's locks without QEMU: OFD read locks on bytes 101 (it uses
        write) and 201 (it does not share write)."""
        t = Test("refuse:lock_ofd")
        try:
            d = os.path.join(self.workdir, "refuse")
            os.makedirs(d, exist_ok=True)
            img = self.make(_from_catalogue("leak_rc16", ""), d, "locked_ofd.qcow2")
            spare = self.copy(img, img + ".copy")
            self.qc(t, ["-r", "all", "--undo=" + img + ".undo"], spare, what="spare repair")
            os.unlink(spare)
            F_OFD_SETLK = 37
            fd = os.open(img, os.O_RDONLY)
            try:
                for byte in (101, 201):
                    # struct flock: short l_type, l_whence; off_t l_start,
                    # l_len; pid_t l_pid (0 for OFD locks); 32 bytes
                    fl = struct.pack("hhqqi4x", fcntl.F_RDLCK, os.SEEK_SET, byte, 1, 0)
                    fcntl.fcntl(fd, F_OFD_SETLK, fl)
                rc, _, err = self.tool([QEMU_IMG, "info", "-f", "qcow2", img])
                t.expect(rc != 0, "qemu-img info opens the image despite the OFD locks")
                self._locked_checks(t, img, "an OFD lock holder")
            finally:
                os.close(fd)
            self._unlocked_repair(t, img, "the OFD locks were released")
        except Failed:
            pass
        except Exception as e:
            t.fails.append("%s: %s" % (type(e).__name__, e))
        return t

    # -- everything -------------------------------------------------------------------

    def run(self, flt):
        crash = [i for i in CRASH_IMAGES if flt in "crash:" + i.name]
        undo = {k: v for k, v in UNDO_IMAGES.items() if flt in "undo:" + k}
        extra = [f for n, f in (("undo:foreign_log", self.foreign_log),
                                ("refuse:unknown_incompat", self.refuse_unknown_incompat),
                                ("refuse:lock_qemu_io", self.refuse_lock_qemu_io),
                                ("refuse:lock_ofd", self.refuse_lock_ofd)) if flt in n]
        if not (crash or undo or extra):
            print("no test matches %r" % flt)
            return 1
        t0 = time.time()
        bases = {i.base for i in crash} | {i.base for i in undo.values()}
        if extra:
            bases |= {"v3_64k", "rc16", "snapshots", "v2_512"}
        build_images.build_all(self.bases_dir, sorted(bases), self.jobs)
        print("built %d base images in %.1f s" % (len(bases), time.time() - t0), flush=True)
        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            tests = self.run_crash(crash, pool)
            tests += list(pool.map(lambda kv: self.undo_case(*kv), undo.items()))
            tests += list(pool.map(lambda f: f(), extra))
        failed = 0
        for t in tests:
            if t.fails:
                failed += 1
                print("FAIL %s: %s" % (t.name, "\n    ".join([""] + t.fails)))
            else:
                print("PASS %s%s" % (t.name, "  (%s)" % "; ".join(t.notes) if t.notes else ""))
        f = self.figures
        print()
        print("%d crash points tried, %d converged with one follow-up run; "
              "%d undo cases, %d exact rollbacks, %d bad logs refused; %d refusal checks; "
              "%d s" % (f["crash_points"], f["converged"], f["undo_cases"],
                        f["rollbacks"], f["refused_logs"], f["refusals"], time.time() - t0))
        print("%d passed, %d failed" % (len(tests) - failed, failed))
        return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qcheck")
    ap.add_argument("workdir")
    ap.add_argument("--filter", default="", help="only tests whose name contains this")
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 2))
    ap.add_argument("--keep", action="store_true", help="keep the work files afterwards")
    args = ap.parse_args()
    if not os.access(args.qcheck, os.X_OK):
        print("%s is not an executable" % args.qcheck)
        return 1
    runner = Runner(args.qcheck, args.workdir, args.jobs)
    failed = runner.run(args.filter)
    if not args.keep and not failed:
        for sub in ("crash", "undo", "refuse"):
            shutil.rmtree(os.path.join(runner.workdir, sub), ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
