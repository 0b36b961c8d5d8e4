#!/usr/bin/env python3
"""Progress output of the qcheck command (-p/--progress).

Usage: progress.py QCHECK IMAGE

Checks, on an image with one finding (the README's demo, which leaks):
- with -p, stderr carries qemu-img-style "    (NN.NN/100%)" updates that only
  grow and reach 100.00, the finding line is printed on a line of its own
  (the progress line is taken off first), and the progress line is cleared
  before the summary; stdout and the exit status equal a run without -p;
- without -p, on a pipe (not a terminal), there is no progress at all;
- -q and --output=json never show progress, even with -p.
"""
import re
import subprocess
import sys

PROGRESS = re.compile(r"    \(\s*(\d+\.\d\d)/100%\)")


def run(qcheck, *args):
    # Bytes, not text: text mode would turn the carriage returns into newlines.
    p = subprocess.run([qcheck, *args], capture_output=True, timeout=60)
    return p.returncode, p.stdout.decode(), p.stderr.decode()


def main():
    qcheck, image = sys.argv[1], sys.argv[2]
    failures = []

    def expect(cond, what):
        if not cond:
            failures.append(what)

    plain = run(qcheck, image)
    expect(plain[0] == 3, "the demo image should exit 3 (leaks), got %d" % plain[0])
    expect(not PROGRESS.search(plain[2]), "progress shown on a pipe without -p")

    status, out, err = run(qcheck, "-p", image)
    expect((status, out) == plain[:2], "-p changed stdout or the exit status")
    values = [float(v) for v in PROGRESS.findall(err)]
    expect(values and values == sorted(set(values)), "progress not strictly growing: %s" % values)
    expect(values and values[-1] == 100.0, "progress does not reach 100%%: %s" % values[-1:])
    # Every finding line starts at the beginning of a line: the progress line
    # was cleared first, and it is cleared at the end too.
    segments = err.split("\r")
    findings = [s for s in segments if "refcountLeak" in s]
    expect(findings and all(s.startswith("leak: refcountLeak") for s in findings),
           "finding line mixed with progress: %r" % findings)
    expect(err.endswith("\r") and segments[-2].strip() == "",
           "progress line not cleared at the end: %r" % err[-40:])
    without_progress = "".join(s for s in segments if not PROGRESS.fullmatch(s) and s.strip())
    expect(without_progress == plain[2], "stderr differs from a run without -p apart from progress")

    for args in (("-p", "-q"), ("-p", "--output=json")):
        status, out, err = run(qcheck, *args, image)
        expect(status == 3, "%s: exit %d" % (" ".join(args), status))
        expect(not PROGRESS.search(err) and "\r" not in err,
               "%s: progress shown: %r" % (" ".join(args), err[:80]))

    for f in failures:
        print("FAIL:", f)
    print("progress: %d checks failed" % len(failures) if failures else "progress: all checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
