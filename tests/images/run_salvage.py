#!/usr/bin/env python3
"""`qcheck --salvage=DIR`: refusals, dry run, and crash safety.

    run_salvage.py QCHECK WORKDIR [--filter SUBSTR] [--keep]

(What every catalogue repair saves is checked by run_repairs.py.) On an
image whose -r all drops a snapshot's L1 entry and frees what only it
owned (catalogue case snap_l1_entry_past_eof):

salvage:usage        --salvage without -r is a usage error (exit 1).
salvage:not_empty    DIR holds a file, or DIR is a file: exit 1, the image
                     unchanged (sha256), DIR as it was, and the undo log
                     that --undo created removed again.
salvage:no_room      DIR on a filesystem with less room than the salvage
                     needs (a tmpfs of 64 KiB, mounted for the test, in a
                     private mount namespace when a plain mount is not
                     allowed): exit 1, the message names DIR, the bytes
                     needed and the bytes available, the image unchanged,
                     DIR empty. Reported as SKIP when no tmpfs can be
                     mounted at all.
salvage:write_fails  the data file cannot be written in full (RLIMIT_FSIZE
                     below its size, SIGXFSZ ignored, so writes fail with
                     EFBIG although statvfs shows room): exit 1, the image
                     unchanged, DIR removed when qcheck created it and left
                     empty when it existed.
salvage:dry_run      -n --salvage creates nothing and reports the figures
                     the real run saves; with a non-empty DIR it says the
                     repair would stop, and exits with the check's status.
salvage:restore      after -r all --salvage=DIR --undo=LOG, with the saved
                     ranges overwritten in the image (as if QEMU had reused
                     them), --rollback and then the restore loop that
                     DIR/README.txt gives (run as it is written there) give
                     back the original image byte for byte.
salvage:compressed_tail
                     a compressed entry whose range starts in the last
                     cluster of the file and runs past its end: -r all
                     drops it and saves the cluster it pointed into.
salvage:crash        -r all --salvage=DIR --undo=LOG interrupted at every
                     write count, plain and dropping unflushed writes
                     (QCHECK_TEST_CRASH_AFTER_WRITES, ...DROP_UNFLUSHED):
                     DIR is complete (its files identical to those of an
                     uninterrupted run, every row's bytes and xxh64 those
                     of the original image); at 0 writes the first image
                     write failed, so the salvage was on disk before it;
                     the rollback restores the original byte for byte.

Prints PASS/FAIL/SKIP per test and a summary; exit status 0 only if
nothing failed.
"""

import argparse
import os
import re
import resource
import shutil
import signal
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, HERE)
import build_images  # noqa: E402
import run_crash  # noqa: E402
import salvage_check  # noqa: E402
from run_crash import Failed, Test, fingerprint  # noqa: E402

IMAGE = run_crash._from_catalogue("snap_l1_entry_past_eof", "")
COMPRESSED_BASE = "zlib"
TMPFS_SIZE = 64 * 1024
FILES = sorted([salvage_check.DATA, salvage_check.INDEX, salvage_check.README])


class Skipped(Exception):
    pass


class SalvageRunner(run_crash.Runner):
    def setup(self, t, name):
        """A fresh damaged image in WORKDIR/salvage/NAME; (dir, image, fingerprint)."""
        d = os.path.join(self.workdir, "salvage", name)
        shutil.rmtree(d, ignore_errors=True)
        img = self.make(IMAGE, d, "img.qcow2")
        return d, img, fingerprint(img)

    def reference(self, t):
        """The salvage of an uninterrupted -r all: (dir, JSON summary)."""
        d, img, _ = self.setup(t, "reference")
        sdir = os.path.join(d, "salvage")
        orig = self.copy(img, os.path.join(d, "orig.qcow2"))
        rc, res = self.qc_json(t, ["-r", "all", "--salvage=" + sdir], img, what="reference repair")
        t.fatal(rc in (0, 3), "reference repair exited %d: %s" % (rc, res.get("error")))
        summary = res["repair"].get("salvage") or {}
        fails, figures = salvage_check.verify(sdir, orig, img, summary,
                                              salvage_check.refcounts(orig, img))
        t.fatal(not fails, "reference salvage: %s" % "; ".join(fails))
        t.fatal(figures["ranges"] >= 2 and figures["bytes"] > TMPFS_SIZE,
                "test set-up: the salvage is too small (%s)" % figures)
        return sdir, summary

    def expect_refused(self, t, rc, out, err, img, fp, what, sdir=None, needs=True):
        t.expect(rc == 1, "%s exited %d, wanted 1" % (what, rc))
        t.expect(fingerprint(img) == fp, "%s changed the image" % what)
        text = out + err
        if sdir is not None:
            t.expect(sdir in text and "nothing was written" in text,
                     "%s: the message does not name %s and say nothing was written: %r"
                     % (what, sdir, text.strip()[-300:]))
        if needs:
            m = re.search(r"it needs (\d+) bytes, (\d+) bytes are available", text)
            t.expect(m is not None, "%s: the message gives no bytes needed and available: %r"
                     % (what, text.strip()[-300:]))
            return m

    # -- the tests ------------------------------------------------------------------

    def usage(self, t):
        d, img, fp = self.setup(t, "usage")
        for args in (["--salvage=" + os.path.join(d, "s")], ["-n", "--salvage=" + os.path.join(d, "s")]):
            rc, out, err = self.qc(t, args, img, what="qcheck " + " ".join(args))
            t.expect(rc == 1 and "with -r leaks or -r all" in err, "qcheck %s: exit %d, %r" % (" ".join(args), rc, err))
        t.expect(fingerprint(img) == fp and not os.path.exists(os.path.join(d, "s")),
                 "a usage error changed the image or created the directory")

    def not_empty(self, t):
        d, img, fp = self.setup(t, "not_empty")
        sdir = os.path.join(d, "earlier")
        os.makedirs(sdir)
        with open(os.path.join(sdir, "index.tsv"), "w") as f:
            f.write("an earlier salvage\n")
        log = os.path.join(d, "img.undo")
        rc, out, err = self.qc(t, ["-r", "all", "--salvage=" + sdir, "--undo=" + log], img,
                               what="--salvage onto a non-empty directory")
        self.expect_refused(t, rc, out, err, img, fp, "-r all --salvage=NONEMPTY", sdir)
        t.expect("not empty" in err, "the refusal does not say the directory is not empty: %r" % err)
        t.expect(os.listdir(sdir) == ["index.tsv"], "the non-empty directory changed: %s" % os.listdir(sdir))
        with open(os.path.join(sdir, "index.tsv")) as f:
            t.expect(f.read() == "an earlier salvage\n", "the earlier index was overwritten")
        t.expect(not os.path.exists(log), "the undo log created for the refused repair is left")
        afile = os.path.join(d, "a_file")
        with open(afile, "w") as f:
            f.write("x")
        rc, res = self.qc_json(t, ["-r", "all", "--salvage=" + afile], img, what="--salvage onto a file")
        self.expect_refused(t, rc, "", res.get("error") or "", img, fp, "-r all --salvage=FILE", afile)
        sal = (res.get("repair") or {}).get("salvage") or {}
        t.expect(sal.get("saved") is False and sal.get("refused"),
                 "JSON repair.salvage of a refusal: %s" % sal)

    def mount_tmpfs(self, mnt):
        """Mount a small tmpfs on mnt; returns True, or False when not allowed."""
        rc, _, _ = self.tool(["mount", "-t", "tmpfs", "-o", "size=%d" % TMPFS_SIZE, "tmpfs", mnt])
        return rc == 0

    def no_room(self, t):
        d, img, fp = self.setup(t, "no_room")
        mnt = os.path.join(d, "small")
        os.makedirs(mnt)
        args = [self.qcheck, "-r", "all", "--salvage=" + mnt, os.path.basename(img)]
        if self.mount_tmpfs(mnt):
            try:
                rc, out, err = self.qc(t, args[1:-1], img, what="--salvage onto a full tmpfs")
                left = os.listdir(mnt)
            finally:
                self.tool(["umount", mnt])
        else:
            # A private mount namespace (as an unprivileged user may get one).
            script = ('mount -t tmpfs -o size=%d tmpfs "$1" || exit 99; shift; "$@"; rc=$?; '
                      'echo "LEFT: $(ls -A "$0")" >&2; exit $rc') % TMPFS_SIZE
            argv = ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, mnt, mnt] + args
            rc, out, err = self.tool(argv, cwd=d)
            if rc == 99 or rc is None or (rc != 1 and "LEFT:" not in err):
                raise Skipped("no tmpfs can be mounted here (mount and unshare refused): %s"
                              % err.strip()[-200:])
            left = err.split("LEFT:")[-1].split()
        m = self.expect_refused(t, rc, out, err, img, fp, "-r all --salvage=SMALL_TMPFS", mnt)
        t.expect("not enough room" in err, "the refusal does not say there is not enough room: %r" % err)
        if m:
            t.expect(int(m.group(2)) <= TMPFS_SIZE < int(m.group(1)),
                     "needed %s / available %s bytes on a %d-byte tmpfs" % (m.group(1), m.group(2), TMPFS_SIZE))
        t.expect(left == [], "files left on the tmpfs: %s" % left)

    def write_fails(self, t):
        d, img, fp = self.setup(t, "write_fails")

        def limit():
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (TMPFS_SIZE, TMPFS_SIZE))
        for exists in (False, True):
            sdir = os.path.join(d, "existing" if exists else "new")
            if exists:
                os.makedirs(sdir)
            argv = [self.qcheck, "-r", "all", "--salvage=" + sdir, os.path.basename(img)]
            p = subprocess.run(argv, cwd=d, capture_output=True, text=True, errors="replace",
                               timeout=run_crash.TIMEOUT, preexec_fn=limit, env=run_crash.sanitizer_env())
            what = "-r all --salvage with RLIMIT_FSIZE %d (%s directory)" % (
                TMPFS_SIZE, "an empty" if exists else "a new")
            self.expect_refused(t, p.returncode, p.stdout, p.stderr, img, fp, what, sdir)
            t.expect("File too large" in p.stderr, "%s: the message does not give the write error: %r"
                     % (what, p.stderr.strip()[-300:]))
            if exists:
                t.expect(os.listdir(sdir) == [], "%s left %s" % (what, os.listdir(sdir)))
            else:
                t.expect(not os.path.exists(sdir), "%s left the directory it created" % what)

    def dry_run(self, t, ref_summary):
        d, img, fp = self.setup(t, "dry_run")
        sdir = os.path.join(d, "s")
        rc, res = self.qc_json(t, ["-r", "all", "-n", "--salvage=" + sdir], img, what="dry run")
        sal = (res.get("repair") or {}).get("salvage") or {}
        t.expect(rc == 2, "the dry run exited %d, the image checks 2" % rc)
        t.expect((sal.get("ranges"), sal.get("bytes"), sal.get("saved")) ==
                 (ref_summary.get("ranges"), ref_summary.get("bytes"), False),
                 "dry run: %s, the real run saved %s" % (sal, ref_summary))
        rc, out, err = self.qc(t, ["-r", "all", "-n", "--salvage=" + sdir], img, what="dry run")
        t.expect("%d ranges (%d bytes) would be saved to %s" % (
            ref_summary["ranges"], ref_summary["bytes"], sdir) in out,
            "the human dry run does not say what would be saved: %r" % out[:300])
        t.expect(not os.path.exists(sdir) and fingerprint(img) == fp and os.listdir(d) == ["img.qcow2"],
                 "the dry run created or changed something: %s" % os.listdir(d))
        os.makedirs(sdir)
        open(os.path.join(sdir, "x"), "w").close()
        rc, out, err = self.qc(t, ["-r", "all", "-n", "--salvage=" + sdir], img, what="dry run, non-empty DIR")
        t.expect(rc == 2 and "the repair would stop" in out and "not empty" in out,
                 "dry run onto a non-empty directory: exit %d, %r" % (rc, out[:300]))
        t.expect(os.listdir(sdir) == ["x"] and fingerprint(img) == fp, "that dry run changed something")

    def crash(self, t, ref_dir):
        d, orig, fp = self.setup(t, "crash")
        writes = [s for s in self.plan(t, orig) if not s.get("flush")]
        t.fatal(writes, "the plan writes nothing")
        ref_files = {}
        for name in FILES:
            with open(os.path.join(ref_dir, name), "rb") as f:
                ref_files[name] = f.read()
        for n in range(len(writes)):
            for drop in (False, True):
                img = self.copy(orig, os.path.join(d, "crash.qcow2"))
                sdir, log = os.path.join(d, "s%d%s" % (n, "d" if drop else "")), os.path.join(d, "crash.undo")
                if os.path.exists(log):
                    os.unlink(log)
                env = {"QCHECK_TEST_CRASH_AFTER_WRITES": str(n)}
                if drop:
                    env["QCHECK_TEST_CRASH_DROP_UNFLUSHED"] = "1"
                repro = "QCHECK_TEST_CRASH_AFTER_WRITES=%d%s qcheck -r all --salvage=DIR --undo=LOG" % (
                    n, " QCHECK_TEST_CRASH_DROP_UNFLUSHED=1" if drop else "")
                rc, out, err = self.qc(t, ["-r", "all", "--salvage=" + sdir, "--undo=" + log], img, env,
                                       what=repro)
                t.expect(rc == 1 and "stopped" in err, "%s: exit %d, %r" % (repro, rc, err.strip()[-200:]))
                t.expect(n > 0 or fingerprint(img) == fp, "%s: the image changed" % repro)
                fails, _, _ = salvage_check.check_rows(sdir, orig)
                t.expect(not fails, "%s: %s" % (repro, "; ".join(fails)))
                for name in FILES:
                    with open(os.path.join(sdir, name), "rb") as f:
                        t.expect(f.read() == ref_files[name], "%s: %s differs from the uninterrupted "
                                 "run's" % (repro, name))
                rc, _, err = self.qc(t, ["--rollback=" + log], img, what="rollback after " + repro)
                t.expect(rc == 0 and fingerprint(img) == fp,
                         "rollback after %s: exit %d, original restored: %s" % (
                             repro, rc, fingerprint(img) == fp))
                self.count("crash_points")
                shutil.rmtree(sdir, ignore_errors=True)
        t.notes.append("%d writes, %d crash points" % (len(writes), 2 * len(writes)))

    def restore(self, t):
        """The README's restore loop, after a rollback, puts back what the
        repair freed even when something overwrote it since: the image is
        the original byte for byte."""
        d, img, fp = self.setup(t, "restore")
        sdir, log = os.path.join(d, "s"), os.path.join(d, "img.undo")
        rc, out, err = self.qc(t, ["-r", "all", "--salvage=" + sdir, "--undo=" + log], img,
                               what="repair with --salvage and --undo")
        t.fatal(rc in (0, 3), "the repair exited %d: %s" % (rc, err.strip()[-200:]))
        rows, fails = salvage_check.read_salvage(sdir)
        t.fatal(rows and not fails, "the salvage index: %s" % fails)
        with open(img, "r+b") as f:  # as if QEMU had reused the freed clusters
            for r in rows:
                f.seek(r["host_offset"])
                f.write(b"\xee" * r["length"])
        rc, _, err = self.qc(t, ["--rollback=" + log], img, what="rollback")
        t.fatal(rc == 0, "rollback exited %d: %s" % (rc, err.strip()[-200:]))
        t.fatal(fingerprint(img) != fp, "test set-up: the overwritten ranges were not rolled back "
                "(the repair wrote them?)")
        with open(os.path.join(sdir, salvage_check.README)) as f:
            lines = f.read().split("\n")
        start = next(i for i, line in enumerate(lines) if line.startswith("  awk "))
        end = next(i for i in range(start, len(lines)) if lines[i].strip() == "done")
        script = "\n".join(lines[start:end + 1]).replace("IMAGE", img)
        rc, _, err = self.tool(["bash", "-e", "-o", "pipefail", "-c", script], cwd=sdir)
        t.expect(rc == 0, "the README's restore loop failed (exit %s): %s" % (rc, err.strip()[-200:]))
        t.expect(fingerprint(img) == fp, "after the rollback and the README's restore loop the image "
                 "is not the original")

    def compressed_tail(self, t):
        """A compressed L2 entry whose range starts in the last cluster of
        the file and runs past its end: -r all drops it, and the part of
        its range inside the file is saved (the cluster it pointed into)."""
        d = os.path.join(self.workdir, "salvage", "compressed_tail")
        shutil.rmtree(d, ignore_errors=True)

        def patch(im):
            r = im.compressed_refs()[1]
            off = (im.file_size - 1024) // 512 * 512 + 100
            im.set_l2_entry(r.l1_index, r.l2_index, im.compressed_entry(off, 2000))
        img = self.make(run_crash.Image("compressed_tail", COMPRESSED_BASE, patch, ""), d, "img.qcow2")
        orig = self.copy(img, os.path.join(d, "orig.qcow2"))
        sdir = os.path.join(d, "s")
        rc, res = self.qc_json(t, ["-r", "all", "--salvage=" + sdir], img, what="-r all --salvage")
        t.fatal(rc in (0, 3), "-r all exited %d: %s" % (rc, res.get("error")))
        t.fatal(salvage_check.dropped_targets(orig, img), "test set-up: no dropped target in the file")
        fails, figures = salvage_check.verify(sdir, orig, img, res["repair"].get("salvage") or {},
                                              salvage_check.refcounts(orig, img))
        t.expect(not fails, "; ".join(fails))
        rows, _ = salvage_check.read_salvage(sdir)
        t.expect(any(r["problem"] == "compressedRangeInvalid" and r["kind"] == "dropped" for r in rows),
                 "no row for the dropped compressed entry: %s" % rows)

    # -- everything ---------------------------------------------------------------------

    def run(self, flt):
        build_images.build_all(self.bases_dir, [IMAGE.base, COMPRESSED_BASE], 1)
        ref = Test("salvage:reference")
        tests, skipped = [ref], []
        try:
            ref_dir, ref_summary = self.reference(ref)
        except Failed:
            ref_dir = None
        if ref_dir:
            for name, fn in (("usage", self.usage), ("not_empty", self.not_empty),
                             ("no_room", self.no_room), ("write_fails", self.write_fails),
                             ("dry_run", lambda t: self.dry_run(t, ref_summary)),
                             ("crash", lambda t: self.crash(t, ref_dir)),
                             ("restore", self.restore),
                             ("compressed_tail", self.compressed_tail)):
                if flt not in "salvage:" + name:
                    continue
                t = Test("salvage:" + name)
                try:
                    fn(t)
                except Failed:
                    pass
                except Skipped as e:
                    skipped.append((t.name, str(e)))
                    continue
                except Exception as e:  # noqa: BLE001 - a broken helper is a failure
                    t.fails.append("%s: %s" % (type(e).__name__, e))
                tests.append(t)
        failed = 0
        for t in tests:
            if t.fails:
                failed += 1
                print("FAIL %s: %s" % (t.name, "\n    ".join([""] + t.fails)))
            else:
                print("PASS %s%s" % (t.name, "  (%s)" % "; ".join(t.notes) if t.notes else ""))
        for name, why in skipped:
            print("SKIP %s: %s" % (name, why))
        print("\n%d passed, %d failed, %d skipped; %d crash points" % (
            len(tests) - failed, failed, len(skipped), self.figures["crash_points"]))
        return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qcheck")
    ap.add_argument("workdir")
    ap.add_argument("--filter", default="", help="only tests whose name contains this")
    ap.add_argument("--keep", action="store_true", help="keep the work files afterwards")
    args = ap.parse_args()
    if not os.access(args.qcheck, os.X_OK):
        print("%s is not an executable" % args.qcheck)
        return 1
    runner = SalvageRunner(args.qcheck, args.workdir, 1)
    failed = runner.run(args.filter)
    if not args.keep and not failed:
        shutil.rmtree(os.path.join(runner.workdir, "salvage"), ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
