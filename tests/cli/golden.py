#!/usr/bin/env python3
"""Golden transcripts of qcheck's human output.

    golden.py QCHECK            compare every case with its transcript
    golden.py QCHECK --update   rewrite the transcripts from this qcheck

Each case runs the built qcheck once on fresh copies of images from
corpus/ (the README's demo and fuzz seeds, so no qemu-img is needed) or on a
file written here, and its transcript in tests/cli/golden/NAME.txt holds the
command line, stdout, stderr and the exit status. The comparison is byte for
byte after the case's temporary folder is replaced by <WORK>, so a change of
wording, order or exit status is a visible diff. See golden/README.md.
"""
import difflib
import os
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(REPO, "corpus")
GOLDEN = os.path.join(HERE, "golden")
PLACEHOLDER = "<WORK>"

# name: (files copied into the case's folder {name in the folder: path in
# corpus/}, qcheck's arguments; "{work}" stands for the folder)
CASES = {
    "check_clean": ({"clean.qcow2": "seeds/v3.qcow2"}, ["{work}/clean.qcow2"]),
    "check_leaks": ({"demo.qcow2": "demo.qcow2"}, ["{work}/demo.qcow2"]),
    "check_corrupt": ({"corrupt.qcow2": "seeds/l2-into-l1.qcow2"}, ["{work}/corrupt.qcow2"]),
    "dry_run_all": ({"corrupt.qcow2": "seeds/l2-into-l1.qcow2"},
                    ["-r", "all", "--dry-run", "{work}/corrupt.qcow2"]),
    "repair_all": ({"corrupt.qcow2": "seeds/l2-into-l1.qcow2"},
                   ["-r", "all", "{work}/corrupt.qcow2"]),
    "repair_leaks": ({"demo.qcow2": "demo.qcow2"}, ["-r", "leaks", "{work}/demo.qcow2"]),
    "error_missing_file": ({}, ["{work}/missing.qcow2"]),
    "error_not_qcow2": ({}, ["-f", "qcow2", "{work}/plain.raw"]),
    "error_bad_option": ({"clean.qcow2": "seeds/v3.qcow2"}, ["--bogus", "{work}/clean.qcow2"]),
}

# Files written by this script rather than copied: a raw disk, 64 KiB of text.
MADE = {"plain.raw": b"not a disk image, just text\n" * 2340 + bytes(16)}


def transcript(qcheck, name):
    """What qcheck printed and returned for a case, as the stored text."""
    files, args = CASES[name]
    with tempfile.TemporaryDirectory(prefix="qcheck-golden-") as work:
        for dest, src in files.items():
            shutil.copyfile(os.path.join(CORPUS, src), os.path.join(work, dest))
        for dest, data in MADE.items():
            if "{work}/" + dest in args:
                with open(os.path.join(work, dest), "wb") as f:
                    f.write(data)
        argv = [a.replace("{work}", work) for a in args]
        env = dict(os.environ, LC_ALL="C")
        p = subprocess.run([qcheck, *argv], capture_output=True, timeout=60, env=env,
                           stdin=subprocess.DEVNULL)
        text = "$ qcheck %s\n--- stdout\n%s--- stderr\n%s--- exit %d\n" % (
            " ".join(args), p.stdout.decode("utf-8", "backslashreplace"),
            p.stderr.decode("utf-8", "backslashreplace"), p.returncode)
        return text.replace(work, PLACEHOLDER).replace("{work}", PLACEHOLDER)


def main():
    if len(sys.argv) not in (2, 3) or (len(sys.argv) == 3 and sys.argv[2] != "--update"):
        sys.exit(__doc__)
    qcheck, update = sys.argv[1], len(sys.argv) == 3
    failed = []
    for name in CASES:
        got = transcript(qcheck, name)
        path = os.path.join(GOLDEN, name + ".txt")
        if update:
            with open(path, "w") as f:
                f.write(got)
            continue
        try:
            with open(path) as f:
                want = f.read()
        except FileNotFoundError:
            want = ""
        if got != want:
            failed.append(name)
            sys.stdout.writelines(difflib.unified_diff(
                want.splitlines(True), got.splitlines(True), path, "qcheck now"))
    stale = set(f[:-4] for f in os.listdir(GOLDEN) if f.endswith(".txt")) - set(CASES)
    if stale and not update:
        failed += ["%s (a transcript without a case)" % s for s in sorted(stale)]
    if failed:
        print("\ngolden transcripts that differ: %s" % ", ".join(failed))
        print("if the change is intended: %s %s --update" % (sys.argv[0], qcheck))
        return 1
    print("%d golden transcripts %s" % (len(CASES), "written" if update else "match"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
