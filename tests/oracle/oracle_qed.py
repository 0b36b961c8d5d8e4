#!/usr/bin/env python3
"""The differential oracle for QED images: qcheck against qemu-img 7.2 on
generated and mutated QED images. See docs/oracle.md §8.

    oracle_qed.py --qcheck BUILD/qcheck [--seeds 1-200] [--mutants 10]
                  [--work DIR] [--only ID] [--keep] [--fast]

Each seed builds one QED image with `qemu-img create -f qed` (a random
cluster size, table size and virtual size, sometimes over a raw backing
file) and a random history of `qemu-io` writes, zero writes and discards;
then --mutants mutants of it, each with one to three damages written with
layout/qedlib.py (an L1 or L2 entry sent somewhere: unaligned, past the end,
into the header, onto a table, onto another entry's data cluster; two L1
entries sharing an L2 table; clusters appended or the file cut; feature,
compat and autoclear bits; a flipped byte in the header or the tables).
For every subject (the image and each mutant):

  compare  `qemu-img check --output=json` and `qcheck --output=json`: when
           qemu-img opens the image, the exit status and leaks,
           corruptions, check-errors, total-, allocated- and
           fragmented-clusters are equal; when it cannot ("Could not
           open"), qcheck exits 2 with a corruption (qemu-img-differences
           §2.4), or 1 for unknown feature bits, as qemu-img;
  (1)      qcheck exits 0 or 3 => `qemu-img convert` reads the guest data;
  (2)      qemu-img check -r all reaches exit 0 => qcheck -r all reaches 0;
           qemu-img check -r leaks reaches 0 => qcheck -r leaks reaches 0,
           unless the first check found an invalid entry, which only
           qcheck -r all clears (qemu-img-differences §5.3), or qcheck
           refused the repair saying why (docs/repair.md §12);
  (3)      guest data after each of qcheck's repairs (with
           --truncate-leaks) equals the data before outside the guest
           ranges the repair lists as dropped, when qemu-img could read it
           before;
  (5)      qcheck's check never changes the file (sha256);
  after    qemu-img check of the image qcheck repaired gives the exit
           status and counts of a fresh qcheck check of it.

Prints one line per disagreement (the implication, the subject, what
differed, a command to reproduce it), then the counts per implication.
Exit status 0 only if nothing disagreed; 77 without qemu-img or qemu-io.
"""

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
import qedlib  # noqa: E402
from common import copy_sparse as copy, file_sha256 as sha256  # noqa: E402
from oracle import differing_range, parse_seeds  # noqa: E402

KiB, MiB = 1 << 10, 1 << 20
COUNTS = ("leaks", "corruptions", "check-errors", "total-clusters", "allocated-clusters",
          "fragmented-clusters")
FAST_SEEDS, FAST_MUTANTS = range(1, 4), 6
TIMEOUT = 120
MAX_COMPARED = 256 * MiB  # guest data compared up to this virtual size


def run(argv, cwd):
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT)


def run_json(argv, cwd):
    p = run(argv, cwd)
    try:
        obj = json.loads(p.stdout) if p.stdout.strip() else {}
    except ValueError:
        obj = {}
    return p, obj


# ---- subjects ------------------------------------------------------------------------------

def build_image(seed, d):
    """One QED image with a random geometry and history; returns its name."""
    rnd = random.Random(seed)
    cs = rnd.choice([4 * KiB, 16 * KiB, 64 * KiB])
    table = rnd.choice([2, 4, 16])
    size = rnd.choice([4, 16, 64]) * MiB
    opts = "cluster_size=%d,table_size=%d" % (cs, table)
    argv = ["qemu-img", "create", "-q", "-f", "qed", "-o", opts]
    if rnd.random() < 0.25:
        with open(os.path.join(d, "base.raw"), "wb") as f:
            f.write(bytes([0x5a]) * (size // 4))
        argv += ["-b", "base.raw", "-F", "raw"]
    p = run(argv + ["image.qed", str(size)], d)
    if p.returncode:
        raise RuntimeError("qemu-img create: " + p.stderr.strip())
    cmds = []
    for _ in range(rnd.randint(2, 10)):
        off = rnd.randrange(size // cs) * cs
        length = min(rnd.randint(1, 6) * cs, size - off)
        kind = rnd.random()
        if kind < 0.7:
            cmds.append("write -P 0x%02x %d %d" % (rnd.randrange(1, 256), off, length))
        elif kind < 0.85:
            cmds.append("write -z %d %d" % (off, length))
        else:
            cmds.append("discard %d %d" % (off, length))
    argv = ["qemu-io", "-f", "qed"]
    for c in cmds:
        argv += ["-c", c]
    p = run(argv + ["image.qed"], d)
    if p.returncode:
        raise RuntimeError("qemu-io: " + p.stderr.strip())
    return "image.qed"


def damage(im, rnd):
    """One random damage to the image; returns its name."""
    h = im.header
    cs = h.cluster_size
    l1 = im.l1()
    size = im.file_size()
    # Only tables inside the file: writing into one an earlier damage sent
    # far away would make a huge sparse file.
    tables = [(i, t) for i, t in enumerate(l1)
              if t and t % cs == 0 and t + h.table_bytes <= size]
    targets = {
        "unaligned": lambda: rnd.randrange(size) | 1,
        "past-eof": lambda: (size // cs + rnd.randint(0, 4)) * cs,
        "header": lambda: 0,
        "l1-table": lambda: h.l1_table_offset,
        "random": lambda: rnd.randrange(size // cs + 2) * cs,
    }
    kind = rnd.choice(["l1", "l2", "l2", "dup-data", "shared-l2", "leak", "cut", "bits", "flip"])
    if kind == "l1":
        name, target = rnd.choice(list(targets.items()))
        im.set_l1(rnd.randrange(min(h.table_entries, 64)), target())
        return "l1-" + name
    if kind in ("l2", "dup-data") and tables:
        i, t = rnd.choice(tables)
        entries = im.read_table(t)
        data = [e for e in entries if e > 1]
        slot = rnd.randrange(min(h.table_entries, 256))
        if kind == "dup-data" and data:
            im.write_u64(t + 8 * slot, rnd.choice(data))
            return kind
        name, target = rnd.choice(list(targets.items()) + [("l2-table", lambda: t)])
        im.write_u64(t + 8 * slot, target())
        return "l2-" + name
    if kind == "shared-l2" and tables:
        _, t = rnd.choice(tables)
        im.set_l1(rnd.randrange(min(h.table_entries, 64)), t)
        return kind
    if kind == "cut":
        with open(im.path, "r+b") as f:
            f.truncate(rnd.randrange(h.l1_table_offset + h.table_bytes, size + 1))
        return kind
    if kind == "bits":
        field = rnd.choice(["features", "compat_features", "autoclear_features"])
        bit = rnd.choice([qedlib.F_NEED_CHECK, 1 << 5, 1 << 40])
        im.set_field(field, getattr(h, field) | bit)
        return "bits-" + field
    if kind == "flip":
        limit = min(size, h.l1_table_offset + h.table_bytes + 2 * h.table_bytes)
        pos = rnd.randrange(limit)
        with open(im.path, "r+b") as f:
            f.seek(pos)
            b = f.read(1)
            f.seek(pos)
            f.write(bytes([b[0] ^ (1 << rnd.randrange(8))]) if b else b"\x01")
        return "flip"
    im.append_clusters(rnd.randint(1, 3))
    return "leak"


# ---- implications ----------------------------------------------------------------------------

class Oracle:
    def __init__(self, qcheck, work, keep):
        self.qcheck, self.work, self.keep = qcheck, work, keep
        self.counts = Counter()
        self.failures = []

    def fail(self, implication, subject, detail, d):
        self.failures.append((implication, subject))
        print("DISAGREE %-8s %-14s %s\n    reproduce: cd %s && %s" %
              (implication, subject, detail, d, "qcheck image.qed; qemu-img check image.qed"))

    def guest(self, d, name, out):
        """Convert the guest data to raw; None when the virtual size (a
        damaged header's) is too large to compare, else whether qemu-img
        could read it."""
        if qedlib.Image(os.path.join(d, name)).header.image_size > MAX_COMPARED:
            return None
        return run(["qemu-img", "convert", "-O", "raw", name, out], d).returncode == 0

    def subject(self, sid, d):
        img = os.path.join(d, "image.qed")
        q, qobj = run_json(["qemu-img", "check", "--output=json", "image.qed"], d)
        before = sha256(img)
        m, mobj = run_json([self.qcheck, "--output=json", "image.qed"], d)
        self.counts["subjects"] += 1
        if sha256(img) != before:
            self.fail("(5)", sid, "qcheck's check changed the file", d)
        # compare
        if q.returncode in (0, 2, 3):
            diff = {k: (qobj.get(k, 0), mobj.get(k, 0)) for k in COUNTS
                    if qobj.get(k, 0) != mobj.get(k, 0)}
            if m.returncode != q.returncode or diff:
                self.fail("compare", sid, "exit %d/%d %s" % (q.returncode, m.returncode, diff), d)
            else:
                self.counts["compare: identical"] += 1
        elif "Could not open" in q.stderr:
            unknown = "Unsupported QED features" in q.stderr
            want = 1 if unknown else 2
            if m.returncode != want or (want == 2 and not mobj.get("corruptions")):
                self.fail("compare", sid, "qemu-img cannot open it (%s); qcheck exits %d" %
                          (q.stderr.strip().splitlines()[-1], m.returncode), d)
            else:
                self.counts["compare: qemu-img cannot open, qcheck %d" % want] += 1
        else:
            self.fail("compare", sid, "qemu-img exits %d: %s" % (q.returncode, q.stderr.strip()), d)
        # (1)
        readable = self.guest(d, "image.qed", os.path.join(d, "before.raw"))
        if readable is None:
            self.counts["(1)(3) not compared: virtual size over %d MiB" % (MAX_COMPARED // MiB)] += 1
        elif m.returncode in (0, 3):
            if readable:
                self.counts["(1) clean => readable"] += 1
            else:
                self.fail("(1)", sid, "qcheck exits %d but qemu-img convert fails" %
                          m.returncode, d)
        invalid = any(p.get("id") in ("qedL1EntryInvalid", "qedL2EntryInvalid")
                      for p in mobj.get("problems", []))
        for mode in ("leaks", "all"):
            self.repair(sid, d, mode, readable, invalid)

    def repair(self, sid, d, mode, readable, invalid):
        theirs, ours = "theirs-%s.qed" % mode, "ours-%s.qed" % mode
        copy(os.path.join(d, "image.qed"), os.path.join(d, theirs))
        copy(os.path.join(d, "image.qed"), os.path.join(d, ours))
        q = run(["qemu-img", "check", "-r", mode, theirs], d)
        m, mobj = run_json([self.qcheck, "-r", mode, "--truncate-leaks", "--output=json", ours], d)
        # (2)
        if q.returncode == 0:
            if m.returncode == 0:
                self.counts["(2) -r %s: both clean" % mode] += 1
            elif mode == "leaks" and invalid:
                self.counts["(2) -r leaks: qemu-img clears entries, qcheck does not"] += 1
            elif (mobj.get("repair") or {}).get("refused"):
                self.counts["(2) -r %s: qcheck refused (%s)" %
                            (mode, mobj["repair"]["refused"].split(",")[0][:60])] += 1
            else:
                self.fail("(2)", sid, "qemu-img -r %s ends clean, qcheck -r %s exits %d" %
                          (mode, mode, m.returncode), d)
        # after
        a, aobj = run_json(["qemu-img", "check", "--output=json", ours], d)
        f, fobj = run_json([self.qcheck, "--output=json", ours], d)
        if a.returncode in (0, 2, 3):
            diff = {k: (aobj.get(k, 0), fobj.get(k, 0)) for k in COUNTS
                    if aobj.get(k, 0) != fobj.get(k, 0)}
            if a.returncode != f.returncode or diff:
                self.fail("after", sid, "-r %s: qemu-img %d, qcheck %d %s" %
                          (mode, a.returncode, f.returncode, diff), d)
            else:
                self.counts["after -r %s: identical" % mode] += 1
        elif f.returncode not in (1, 2):
            self.fail("after", sid, "-r %s: qemu-img cannot open the result, qcheck exits %d" %
                      (mode, f.returncode), d)
        # (3)
        if not readable or m.returncode not in (0, 2, 3):
            return
        out = os.path.join(d, "after-%s.raw" % mode)
        if self.guest(d, ours, out) is False:
            self.fail("(3)", sid, "-r %s: qemu-img cannot read the repaired image" % mode, d)
            return
        dropped = [(u["guest-offset"], u["guest-length"])
                   for u in mobj.get("repair", {}).get("unlinked", []) if "guest-offset" in u]
        changed = differing_range(os.path.join(d, "before.raw"), out,
                                  [(g, g + n - 1) for g, n in dropped], 4096)
        if changed is not None:
            self.fail("(3)", sid, "-r %s changed guest bytes at 0x%x, not reported dropped" %
                      (mode, changed), d)
        else:
            self.counts["(3) -r %s: guest data kept" % mode] += 1

    def seed(self, seed, mutants, only):
        base = os.path.join(self.work, "s%d" % seed)
        shutil.rmtree(base, ignore_errors=True)
        os.makedirs(base)
        try:
            build_image(seed, base)
        except (RuntimeError, subprocess.SubprocessError) as e:
            print("SETUP s%d: %s" % (seed, e))
            self.failures.append(("setup", "s%d" % seed))
            return
        rnd = random.Random(seed * 7919)
        subjects = [("s%d" % seed, None)] + [("s%dm%d" % (seed, k), k) for k in range(mutants)]
        for sid, k in subjects:
            if only and sid != only:
                continue
            d = os.path.join(self.work, sid)
            if k is not None:
                shutil.rmtree(d, ignore_errors=True)
                shutil.copytree(base, d, copy_function=copy)
                im = qedlib.Image(os.path.join(d, "image.qed"))
                kinds = [damage(im, rnd) for _ in range(rnd.randint(1, 3))]
                self.counts["mutation " + "+".join(sorted(set(kinds)))] += 0
            failed = len(self.failures)
            self.subject(sid, d)
            if k is not None and len(self.failures) == failed and not self.keep:
                shutil.rmtree(d, ignore_errors=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qcheck", required=True)
    ap.add_argument("--seeds", default="1-20")
    ap.add_argument("--mutants", type=int, default=10)
    ap.add_argument("--work", default="oracle-qed-work")
    ap.add_argument("--only")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--fast", action="store_true")
    args = ap.parse_args()
    if not shutil.which("qemu-img") or not shutil.which("qemu-io"):
        print("SKIP: qemu-img or qemu-io not found")
        return 77
    seeds, mutants = parse_seeds(args.seeds), args.mutants
    if args.fast:
        seeds, mutants = FAST_SEEDS, FAST_MUTANTS
    oracle = Oracle(os.path.abspath(args.qcheck), os.path.abspath(args.work), args.keep)
    os.makedirs(oracle.work, exist_ok=True)
    only_seed = int(args.only[1:].split("m")[0]) if args.only else None
    for seed in seeds:
        if only_seed is None or seed == only_seed:
            oracle.seed(seed, mutants, args.only)
    print("\n%d subjects, %d disagreements" % (oracle.counts["subjects"], len(oracle.failures)))
    for key, n in sorted(oracle.counts.items()):
        if n and key != "subjects":
            print("  %5d  %s" % (n, key))
    for implication, n in sorted(Counter(i for i, _ in oracle.failures).items()):
        print("  %5d  DISAGREE %s" % (n, implication))
    return 1 if oracle.failures else 0


if __name__ == "__main__":
    sys.exit(main())
