#!/usr/bin/env python3
"""Run the corruption catalogue against qcheck and qemu-img check.

    run_cases.py QCHECK WORKDIR [--filter SUBSTR] [--list] [--jobs N]
                 [--qemu-only] [--keep]

Builds the base images once into WORKDIR/bases, then for every case (in a
thread pool): copies the base into WORKDIR/cases/NAME, applies the patch,
hashes the file, runs `QCHECK --output=json` and `QCHECK` (human) with no
backing/data file next to the image (qcheck must never need them), checks the
file is byte-for-byte unchanged, then copies the companion files and runs
`qemu-img check` (JSON, and human for the cases compared in full) and
compares the two as the case says (cases.Qemu). It also opens each qcow2
case read-only as a VM would (`qemu-io -r`): an image QEMU cannot open must
not get exit 0 or 3 from qcheck, unless the refusal is about a file or an
option outside the image (cases.needs_outside).

Prints `PASS name` / `FAIL name: reasons` per case, a summary of agreements
and deliberate differences with qemu-img, and finally `N passed, M failed`.
Exit status 0 only if every case passed.

--qemu-only skips qcheck (QCHECK may then be anything) and checks only what
the catalogue says about qemu-img, printing qemu-img's verdict per case:
that is how the catalogue's qemu expectations were recorded.
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
import build_images  # noqa: E402
import cases as catalogue  # noqa: E402
import qcow2lib  # noqa: E402

QEMU_IMG = build_images.QEMU_IMG
QEMU_IO = build_images.QEMU_IO
TIMEOUT = 120  # seconds per command; a hang is a failure, not a stuck run
STAT_KEYS = ("image-end-offset", "total-clusters", "allocated-clusters",
             "fragmented-clusters", "compressed-clusters")
COUNT_KEYS = ("check-errors", "corruptions", "leaks")
OPTIONAL_KEYS = ("image-end-offset", "corruptions", "leaks", "total-clusters",
                 "allocated-clusters", "fragmented-clusters", "compressed-clusters")
BAD_SEVERITIES = ("corruption", "leak", "error")


def run(argv, cwd=None):
    try:
        p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True,
                           errors="replace", timeout=TIMEOUT)
        return p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired:
        return None, "", "timed out after %d s" % TIMEOUT


def parse_json(text):
    try:
        return json.loads(text)
    except ValueError:
        return None


def summary_lines(result):
    """The stdout summary qemu-img prints for an ImageCheck (qemu-img.c,
    dump_human_image_check()), from a
    JSON result (missing keys are zero)."""
    g = lambda k: result.get(k, 0)  # noqa: E731
    lines = []
    if not (g("corruptions") or g("leaks") or g("check-errors")):
        lines.append("No errors were found on the image.")
    if g("corruptions"):
        lines += ["%d errors were found on the image." % g("corruptions"),
                  "Data may be corrupted, or further writes to the image may corrupt it."]
    if g("leaks"):
        lines += ["%d leaked clusters were found on the image." % g("leaks"),
                  "This means waste of disk space, but no harm to data."]
    if g("check-errors"):
        lines.append("%d internal errors have occurred during the check." % g("check-errors"))
    total, alloc = g("total-clusters"), g("allocated-clusters")
    if total and alloc:
        lines.append("%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters" % (
            alloc, total, alloc * 100.0 / total, g("fragmented-clusters") * 100.0 / alloc,
            g("compressed-clusters") * 100.0 / alloc))
    if g("image-end-offset"):
        lines.append("Image end offset: %d" % g("image-end-offset"))
    return lines


def missing_in_order(wanted, text):
    """The first of `wanted` lines not found, in order, among text's lines."""
    have = iter(line.rstrip("\n") for line in text.splitlines())
    for w in wanted:
        if not any(h == w for h in have):
            return w
    return None


def expected_exit(result):
    if result.get("check-errors"):
        return 1
    if result.get("corruptions"):
        return 2
    if result.get("leaks"):
        return 3
    return 0


class Runner:
    def __init__(self, qcheck, workdir, qemu_only):
        self.qcheck = os.path.abspath(qcheck)
        self.workdir = os.path.abspath(workdir)
        self.bases_dir = os.path.join(self.workdir, "bases")
        self.qemu_only = qemu_only
        self.problems = catalogue.load_problem_table()

    # -- one case ---------------------------------------------------------

    def prepare(self, case):
        base = build_images.BASES[case.base]
        cdir = os.path.join(self.workdir, "cases", case.name)
        shutil.rmtree(cdir, ignore_errors=True)
        os.makedirs(cdir)
        path = os.path.join(cdir, base.filename)
        shutil.copyfile(os.path.join(self.bases_dir, base.filename), path)
        if case.patch:
            with qcow2lib.Image(path, writable=True) as image:
                case.patch(image)
        return base, cdir, path

    def run_case(self, case):
        """Returns (case, failures, notes)."""
        try:
            return (case,) + self._run_case(case)
        except Exception as e:  # a broken patch is a failed case, not a crash
            return case, ["%s: %s" % (type(e).__name__, e)], ""

    def _run_case(self, case):
        base, cdir, path = self.prepare(case)
        name = os.path.basename(path)
        fails = []
        qc = None
        if not self.qemu_only:
            qc = self.check_qcheck(case, cdir, name, fails)
        for f in base.companion_files() if case.companions else ():
            shutil.copyfile(os.path.join(self.bases_dir, f), os.path.join(cdir, f))
        qm = self.check_qemu(case, base, cdir, name, qc, fails)
        return fails, qm

    def check_qcheck(self, case, cdir, name, fails):
        before = qcow2lib.file_sha256(os.path.join(cdir, name))
        argv = [self.qcheck, *case.qcheck_args]
        rc, out, err = run(argv + ["--output=json", name], cwd=cdir)
        hrc, hout, herr = run(argv + [name], cwd=cdir)
        if qcow2lib.file_sha256(os.path.join(cdir, name)) != before:
            fails.append("qcheck modified the image")
        if set(os.listdir(cdir)) != {name}:
            fails.append("qcheck created files: %s" % sorted(set(os.listdir(cdir)) - {name}))
        if rc is None or hrc is None:
            fails.append("qcheck timed out")
            return None
        if rc < 0 or hrc < 0:
            fails.append("qcheck died with signal %d: %s" % (-min(rc, hrc), (err or herr)[-300:]))
            return None
        if hrc != rc:
            fails.append("human mode exit %d != JSON mode exit %d" % (hrc, rc))
        if case.format is not None or case.exit == 63:
            self.check_not_qcow2(case, rc, out, err, hout, fails)
            return None
        res = parse_json(out)
        if not isinstance(res, dict):
            fails.append("qcheck --output=json printed no JSON object (exit %d): %r"
                         % (rc, (out + err)[:300]))
            return None
        if rc != case.exit:
            fails.append("exit %d, expected %d" % (rc, case.exit))
        problems = res.get("problems", [])
        ids = {p.get("id") for p in problems}
        missing = sorted(case.expect - ids)
        if missing:
            fails.append("missing %s (got %s)" % (", ".join(missing), ", ".join(sorted(ids)) or "none"))
        unwanted = sorted(case.absent & ids)
        if unwanted:
            fails.append("reports %s, which it must not here" % ", ".join(unwanted))
        if "exit-code" in res and res["exit-code"] != rc:
            fails.append("JSON exit-code %r but exited %d" % (res["exit-code"], rc))
        for key in ("filename", "format", "check-errors"):
            if key not in res:
                fails.append("JSON lacks %r" % key)
        zero = [k for k in OPTIONAL_KEYS if k in res and res[k] == 0]
        if zero:
            fails.append("JSON has zero-valued optional keys %s (qemu-img omits them)" % zero)
        if "error" in res:
            fails.append("check did not run: %s" % res["error"])
            return res
        self.check_consistency(case, res, problems, rc, fails)
        wanted = summary_lines(res)
        gap = missing_in_order(wanted, hout)
        if gap:
            fails.append("human stdout lacks %r" % gap)
        for k, v in case.header.items():
            if res.get("header", {}).get(k) != v:
                fails.append("header[%r] = %r, expected %r" % (k, res.get("header", {}).get(k), v))
        return res

    def check_not_qcow2(self, case, rc, out, err, hout, fails):
        """Nothing is checked: as qemu-img, nothing on stdout (JSON mode
        too), its sentence after the program name on stderr, and qcheck's
        explanation naming what the file looks like."""
        if rc != case.exit:
            fails.append("exit %d, expected %d" % (rc, case.exit))
        if out.strip() or hout.strip():
            fails.append("stdout is not empty for a file that is not qcow2: %r" % (out + hout)[:200])
        sentence = "qcheck: This image format does not support checks"
        if sentence not in err.splitlines():
            fails.append("stderr lacks %r: %r" % (sentence, err[:300]))
        if case.format and not re.search(r"(looks like|is an?) %s\b" % re.escape(case.format), err):
            fails.append("stderr does not say the file looks like %s: %r" % (case.format, err[:300]))

    def check_consistency(self, case, res, problems, rc, fails):
        """What must hold for every case: counts and exit code follow from
        the severities of what was found, and problems match qcheck_problems.def."""
        by_sev = {}
        for p in problems:
            by_sev.setdefault(p.get("severity"), []).append(p.get("id"))
            known = self.problems.get(p.get("id"))
            if known is None:
                fails.append("unknown problem id %r" % p.get("id"))
            elif (p.get("code"), p.get("severity")) != known:
                fails.append("%s reported as %s/%s, qcheck_problems.def says %s/%s" % (
                    p.get("id"), p.get("code"), p.get("severity"), *known))
        for sev, key in (("corruption", "corruptions"), ("leak", "leaks"), ("error", "check-errors")):
            if bool(by_sev.get(sev)) != bool(res.get(key)):
                fails.append("%s=%s but %s problems: %s" % (key, res.get(key, 0), sev, by_sev.get(sev)))
        if expected_exit(res) != rc:
            fails.append("exit %d does not follow from the counts (%d)" % (rc, expected_exit(res)))
        if case.exit == 0:
            bad = sorted({p.get("id") for p in problems if p.get("severity") in BAD_SEVERITIES})
            if bad:
                fails.append("clean case reports %s" % ", ".join(bad))

    def check_qemu(self, case, base, cdir, name, qc, fails):
        target = (case.qemu_target or base.qemu_target)(name)
        rc, out, err = run([QEMU_IMG, "check", "--output=json"] + target, cwd=cdir)
        qm = parse_json(out) or {}
        want_rc = case.qemu.exit if case.qemu.exit is not None else case.exit
        note = "qemu-img exit %s, corruptions %s, leaks %s, check-errors %s" % (
            rc, qm.get("corruptions", 0), qm.get("leaks", 0), qm.get("check-errors", 0))
        if rc != want_rc:
            fails.append("qemu-img check exited %s, the catalogue says %d (%s)" % (
                rc, want_rc, (err.strip().splitlines() or [""])[-1][:200]))
        opened = "Could not open" not in err
        if opened != case.qemu.opens:
            fails.append("qemu-img %s open the image, the catalogue says it %s" % (
                "could" if opened else "could not", "can" if case.qemu.opens else "cannot"))
        if base.qcow2 and case.format is None:
            note += self.check_normal_open(case, target, cdir, qc, fails)
        if qc is None or not case.qemu.agrees:
            return note
        if case.qemu.relation in (catalogue.FULL, catalogue.COUNTS):
            for k in ("corruptions", "leaks"):
                if qc.get(k, 0) != qm.get(k, 0):
                    fails.append("%s: qcheck %d, qemu-img %d" % (k, qc.get(k, 0), qm.get(k, 0)))
        if case.qemu.relation == catalogue.FULL:
            for k in STAT_KEYS:
                if qc.get(k, 0) != qm.get(k, 0):
                    fails.append("%s: qcheck %d, qemu-img %d" % (k, qc.get(k, 0), qm.get(k, 0)))
            hrc, hout, _ = run([QEMU_IMG, "check"] + target, cwd=cdir)
            _, qcout, _ = run([self.qcheck, *case.qcheck_args, name], cwd=cdir)
            gap = missing_in_order([l for l in hout.splitlines() if l.strip()], qcout)
            if gap:
                fails.append("qcheck's human stdout lacks qemu-img's line %r" % gap)
            if summary_lines(qm) != [l for l in hout.splitlines() if l.strip()]:
                fails.append("runner's summary model disagrees with qemu-img's stdout")
        return note

    def check_normal_open(self, case, target, cdir, qc, fails):
        """`qemu-io -r`, a normal read-only open: whether it works is as the
        catalogue says, and an image it refuses is not called clean by
        qcheck (exit 0 or 3) unless the refusal is about something outside
        the image."""
        rc, _, err = run([QEMU_IO, "-r", *target, "-c", "quit"], cwd=cdir)
        opened = rc == 0
        refusal = (err.strip().splitlines() or [""])[-1][:200]
        if opened != case.qemu.opens_normally:
            fails.append("a normal open %s, the catalogue says it %s%s" % (
                "works" if opened else "fails", "works" if case.qemu.opens_normally else "fails",
                "" if opened else " (%s)" % refusal))
        qc_exit = qc.get("exit-code") if qc else None
        if not opened and not case.qemu.outside and qc_exit in (0, 3):
            fails.append("QEMU cannot open the image (%s) but qcheck exits %d" % (refusal, qc_exit))
        return "" if opened else ", normal open fails"

    # -- the whole run --------------------------------------------------------

    def run(self, selected, jobs):
        needed = sorted({c.base for c in selected})
        t0 = time.time()
        build_images.build_all(self.bases_dir, needed, jobs)
        print("built %d base images in %.1f s" % (len(needed), time.time() - t0), flush=True)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(self.run_case, selected))
        failed = 0
        for case, fails, note in results:
            if fails:
                failed += 1
                print("FAIL %s: %s" % (case.name, "; ".join(fails)))
            else:
                print("PASS %s%s" % (case.name, "  [%s]" % note if self.qemu_only else ""))
        agree = [c for c in selected if c.qemu.agrees]
        diff = [c for c in selected if not c.qemu.agrees]
        print()
        print("%d cases (%d s); qemu-img agrees on %d (%d in full, %d on counts, %d on the exit code "
              "only), %d deliberate differences:" % (
                  len(selected), time.time() - t0, len(agree),
                  sum(c.qemu.relation == catalogue.FULL for c in agree),
                  sum(c.qemu.relation == catalogue.COUNTS for c in agree),
                  sum(c.qemu.relation == catalogue.EXIT for c in agree), len(diff)))
        for c in diff:
            print("  %-40s qemu-img exits %d: %s" % (c.name, c.qemu.exit, c.qemu.why))
        print("%d passed, %d failed" % (len(selected) - failed, failed))
        return failed


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qcheck")
    ap.add_argument("workdir")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--qemu-only", action="store_true",
                    help="check only the catalogue's qemu-img expectations")
    ap.add_argument("--keep", action="store_true", help="keep WORKDIR/cases afterwards")
    args = ap.parse_args()

    runner = Runner(args.qcheck, args.workdir, args.qemu_only)
    catalogue.validate(runner.problems, build_images.BASES)
    selected = [c for c in catalogue.CASES if args.filter in c.name]
    if args.list:
        for c in selected:
            print("%-40s %-14s exit %-2d qemu %-7s %s" % (
                c.name, c.base, c.exit, c.qemu.relation, " ".join(sorted(c.expect))))
        print("%d cases; problem ids no case expects: %s" % (
            len(selected), ", ".join(catalogue.uncovered(runner.problems)) or "none"))
        return 0
    if not selected:
        print("no case matches %r" % args.filter)
        return 1
    if not args.qemu_only and not os.access(args.qcheck, os.X_OK):
        print("%s is not an executable" % args.qcheck)
        return 1
    failed = runner.run(selected, args.jobs)
    if not args.keep and not failed:
        shutil.rmtree(os.path.join(runner.workdir, "cases"), ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
