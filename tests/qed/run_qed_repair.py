#!/usr/bin/env python3
"""`qcheck -r leaks` and `-r all` on QED images, against `qemu-img check -r`.

    run_qed_repair.py QCHECK WORKDIR [--filter SUBSTR] [--keep]

QCHECK is the test build `qcheck_crashtest` (the plain command unless the
crash variables of docs/repair.md §10 are set). The images are built as
run_qed.py builds them (qemu-img create -f qed, qemu-io, damage written
with layout/qedlib.py), mostly its `small()` layout: 64 MiB, 4 KiB
clusters, 4-cluster tables; header cluster 0, L1 table 1-4, the L2 table
of L1 entry 0 at 5-8 with guest 0 and 4 KiB at 9 and 10, L1 entry 1's
table at 11-14 with guest 8 MiB at 15, L1 entry 2's at 16-19 with guest
16 MiB at 20 (21 clusters, 86016 bytes).

Each case says, in REPAIR_CASES, how every run must end (`End`: exit
status, leaks and corruptions of the check after it, the need-check bit,
whether the file changes): `qemu-img check -r leaks` and `-r all`, and
qcheck's runs (`leaks`, `all`, and with --truncate-leaks `leaks+trunc`,
`all+trunc`). Where qcheck's End for a mode equals qemu-img's, qcheck does
what QEMU does and its standard output must be qemu-img's, line for line;
where they differ, the difference is the documented one (qcheck -r leaks
never drops guest data; -r all copies a doubly referenced data cluster
and drops a data entry that maps onto a table; --truncate-leaks removes a
trailing run of leaked clusters) and both sides are asserted. For every
qcheck run, on copies of the image:

* dry run (`-n`, JSON and human): nothing written, the exit status of the
  image as it is, the steps those of the real run;
* the real run in JSON: exit status, counts, `exit-code`, leaks-fixed /
  corruptions-fixed (first check minus the check after, as qemu-img counts
  them); a fresh qcheck check and `qemu-img check` of the result agree
  with what it printed; the need-check and autoclear bits; no write step
  and the file unchanged when the End says so; the guest ranges listed as
  dropped in `repair.unlinked` are exactly the case's, each named by a
  note; the file cut where --truncate-leaks must cut it, and without the
  option a note offering the clusters and bytes it would reclaim;
* guest data: every guest cluster outside the dropped ranges reads as
  before (a reader of the tables written here from qedlib, cross-checked
  with `qemu-img convert -O raw` wherever qemu-img can read the image);
  for a doubly referenced cluster, the earlier referrer still points where
  it did and the later one to a copy appended to the file;
* the human run: the same file as the JSON run (byte for byte), the banner
  with the fixed counts only when something counted as fixed, and then
  exactly what `qemu-img check` prints for the result.

Then, for the runs a case lists: `--undo=LOG` + `--rollback=LOG` restores
the original byte for byte (size and sha256), also after the repair was
interrupted at every write count; `--salvage=DIR` saves the target of
every dropped entry and the truncated tail with their original bytes; and
a repair interrupted at every write count (QCHECK_TEST_CRASH_AFTER_WRITES,
plain and QCHECK_TEST_CRASH_DROP_UNFLUSHED=1) leaves an image qemu-img
can open, fenced by the need-check bit between the first write and the
last header write (-r all), and one more `qcheck -r MODE` ends as the
uninterrupted repair: exit status, counts, need-check bit, guest data.

Prints PASS/FAIL per case and a summary; exit 0 only if nothing failed,
77 when qemu-img or qemu-io is missing.
"""

import hashlib
import json
import os
import re
import shutil
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
sys.path.insert(0, os.path.join(HERE, "..", "images"))
import run_qed as Q  # noqa: E402  (puts layout/ and tests/digest/ on the path)
import qedlib  # noqa: E402
import run_crash  # noqa: E402
import salvage_check  # noqa: E402
from run_crash import Failed, Test, fingerprint  # noqa: E402
from run_digest import SetupError, script_main  # noqa: E402

QEMU_IMG = Q.QEMU_IMG
KiB, MiB = Q.KiB, Q.MiB
SMALL_CLUSTERS = 21  # clusters of Q.small()'s file
SMALL_END = SMALL_CLUSTERS * 4 * KiB
BANNER = "The following inconsistencies were found and repaired:"
NEED_CHECK_FIELD = (16, 24)  # bytes of the header's features field
UNREADABLE = "unreadable"


# ---- the images --------------------------------------------------------------------
# Builders return a dict; "damaged": (L1 index, L2 index or None) of the
# entries the case made invalid, so that the reader marks them unreadable.

def b_trailing_leak_odd_tail(path):
    """Two leaked clusters at the end, then 100 bytes of a partial cluster."""
    img = Q.small(path)
    img.append_clusters(2)
    with open(path, "ab") as f:
        f.write(b"\x5a" * 100)
    return {}


def b_leaks_middle_and_trailing(path):
    """Guest 8 MiB's cluster (15) leaked in the middle, two appended at the end."""
    Q.b_leak_l2_cleared(path)
    qedlib.Image(path).append_clusters(2)
    return {}


def b_dup_across_tables(path):
    """Guest 16 MiB (L1 entry 2) points to guest 0's cluster (9): the later
    referrer is in another table; its own cluster (20, the last) leaks."""
    img = Q.small(path)
    img.set_l2(16 * MiB, Q.data_cluster(img, 0))
    return {}


def b_l1_shared_table(path):
    """L1 entries 1 and 2 point to one L2 table; entry 2's own table and
    data cluster (16-20) leak."""
    img = Q.small(path)
    img.set_l1(2, img.l1()[1])
    return {}


# The killed writer's image (1 GiB, 64 KiB clusters; guest 0 and 64 KiB at
# clusters 9 and 10, the last) takes a second to build: built once, copied.
_KILLED = {}
_KILLED_LOCK = threading.Lock()


def killed_writer_copy(path):
    with _KILLED_LOCK:
        src = _KILLED.get("path")
        if src is None or not os.path.exists(src):
            d = tempfile.mkdtemp(prefix="killed-writer-", dir=os.path.dirname(os.path.dirname(path)))
            src = os.path.join(d, "image.qed")
            Q.b_killed_writer(src)
            _KILLED["path"] = src
    shutil.copyfile(src, path)
    return qedlib.Image(path)


def b_killed_writer(path):
    killed_writer_copy(path)
    return {}


def b_killed_writer_l2_past_eof(path):
    """A killed writer's image whose guest 64 KiB entry then points past the
    end of the file: its cluster (10, the last) leaks."""
    img = killed_writer_copy(path)
    img.set_l2(64 * KiB, img.append_clusters(0) + 16 * img.cluster_size)
    return {"damaged": [(0, 1)]}


def b_killed_writer_dup(path):
    """A killed writer's image whose guest 64 KiB entry then points to
    guest 0's cluster: a corruption QEMU's repair leaves. (Its check then
    keeps the need-check bit, but its close clears it anyway.)"""
    img = killed_writer_copy(path)
    img.set_l2(64 * KiB, Q.data_cluster(img, 0))
    return {}


def with_damage(builder, damaged):
    def build(path):
        info = builder(path) or {}
        info["damaged"] = damaged
        return info
    return build


# ---- expectations ------------------------------------------------------------------

@dataclass(frozen=True)
class End:
    """How a repair run ends: its exit status, the leaks and corruptions of
    the check of the result, the need-check bit in the result's header, and
    whether the file changed."""
    exit: int
    leaks: int = 0
    corruptions: int = 0
    need_check: bool = False
    writes: bool = True


@dataclass(frozen=True)
class Case:
    name: str
    build: object
    why: str
    qemu: dict      # "leaks", "all": End of `qemu-img check -r MODE`
    qcheck: dict    # "leaks", "all", "leaks+trunc", "all+trunc": End of qcheck's run
    dropped: tuple = ()       # (guest offset, length) -r all lists as dropped
    repointed: tuple = ()     # (earlier guest offset, later guest offset) -r all copies
    cut_to: int = None        # where --truncate-leaks cuts the file
    kept_tail: bool = False   # --truncate-leaks keeps the trailing leaks (a note says why)
    recovered: tuple = ()     # guest offsets -r all re-points instead of dropping
    appended: int = 0         # clusters -r all appends (copies of a shared table and data)
    reclaim: tuple = None     # (clusters, bytes) the note without the option offers
    all_note: str = None      # a regex one of -r all's notes must match
    warning: str = None       # a warning the check after every run still reports
    autoclear: bool = False   # the image has an unknown autoclear bit: every run clears it
    crash: tuple = ()         # runs interrupted at every write count
    undo: tuple = ()          # runs undone and rolled back
    salvage: tuple = ()       # runs with --salvage=DIR


def unchanged(exit, leaks=0, corruptions=0, need_check=False):
    return End(exit, leaks, corruptions, need_check, writes=False)


REPAIR_CASES = [
    Case("clean", Q.b_data_4k, "nothing to do: no write, no fence",
         {"leaks": unchanged(0), "all": unchanged(0)},
         {"leaks": unchanged(0), "all": unchanged(0), "all+trunc": unchanged(0)}),
    Case("leak_middle", Q.b_leak_l2_cleared, "a leaked cluster with used ones after it stays",
         {"leaks": unchanged(3, 1), "all": unchanged(3, 1)},
         {"leaks": unchanged(3, 1), "all": unchanged(3, 1), "leaks+trunc": unchanged(3, 1),
          "all+trunc": unchanged(3, 1)}),
    Case("leak_trailing", Q.b_leak_appended_3, "three leaked clusters at the end",
         {"leaks": unchanged(3, 3), "all": unchanged(3, 3)},
         {"leaks": unchanged(3, 3), "all": unchanged(3, 3), "leaks+trunc": End(0),
          "all+trunc": End(0)},
         cut_to=SMALL_END, reclaim=(3, 3 * 4 * KiB),
         crash=("leaks+trunc",), undo=("leaks+trunc",), salvage=("leaks+trunc",)),
    Case("leak_trailing_odd_tail", b_trailing_leak_odd_tail,
         "two leaked clusters and a partial one at the end: all cut",
         {"leaks": unchanged(3, 2), "all": unchanged(3, 2)},
         {"leaks": unchanged(3, 2), "leaks+trunc": End(0), "all+trunc": End(0)},
         cut_to=SMALL_END, reclaim=(2, 2 * 4 * KiB + 100), salvage=("all+trunc",)),
    Case("leaks_middle_and_trailing", b_leaks_middle_and_trailing,
         "only the trailing run is cut; the leak in the middle stays",
         {"leaks": unchanged(3, 3), "all": unchanged(3, 3)},
         {"leaks": unchanged(3, 3), "leaks+trunc": End(3, 1), "all+trunc": End(3, 1)},
         cut_to=SMALL_END, reclaim=(2, 2 * 4 * KiB)),
    Case("l1_past_eof", with_damage(Q.b_l1_past_eof, [(2, None)]),
         "an L1 entry past the end: -r all clears it (8 MiB of guest dropped); the trailing "
         "leaks, maybe the table it meant, are kept even with --truncate-leaks",
         {"leaks": End(3, 5), "all": End(3, 5)},
         {"leaks": unchanged(2, 5, 1), "all": End(3, 5), "all+trunc": End(3, 5)},
         dropped=((16 * MiB, 8 * MiB),), kept_tail=True, crash=("all",)),
    Case("l1_unaligned", with_damage(Q.b_l1_unaligned, [(2, None)]),
         "an unaligned L1 entry: cleared, not re-pointed (as QEMU)",
         {"leaks": End(3, 5), "all": End(3, 5)},
         {"leaks": unchanged(2, 5, 1), "all": End(3, 5)},
         dropped=((16 * MiB, 8 * MiB),)),
    Case("l2_unaligned", with_damage(Q.b_l2_unaligned, [(2, 0)]),
         "an unaligned L2 entry into its own, now leaked, cluster: qemu-img clears it, "
         "qcheck -r all re-points it there (recovered, nothing dropped)",
         {"leaks": End(3, 1), "all": End(3, 1)},
         {"leaks": unchanged(2, 1, 1), "all": End(0), "all+trunc": End(0)},
         recovered=(16 * MiB,), undo=("all",)),
    Case("l2_past_eof", with_damage(Q.b_l2_past_eof, [(2, 0)]),
         "an L2 entry past the end of the file: cleared",
         {"leaks": End(3, 1), "all": End(3, 1)},
         {"leaks": unchanged(2, 1, 1), "all": End(3, 1)},
         dropped=((16 * MiB, 4 * KiB),), undo=("all",)),
    Case("l2_into_header", with_damage(Q.b_l2_into_header, [(2, 0)]),
         "an L2 entry into a 5-cluster header: cleared",
         {"leaks": End(3, 1), "all": End(3, 1)},
         {"leaks": unchanged(2, 1, 1), "all": End(3, 1)},
         dropped=((16 * MiB, 4 * KiB),)),
    Case("dup_same_table", Q.b_l2_duplicate,
         "guest 4 KiB shares guest 0's cluster: copied, the later entry re-pointed",
         {"leaks": unchanged(2, 1, 1), "all": unchanged(2, 1, 1)},
         {"leaks": unchanged(2, 1, 1), "all": End(3, 1), "all+trunc": End(3, 1)},
         repointed=((0, 4 * KiB),), undo=("all",)),
    Case("dup_across_tables", b_dup_across_tables,
         "guest 16 MiB shares guest 0's cluster from another table: copied",
         {"leaks": unchanged(2, 1, 1), "all": unchanged(2, 1, 1)},
         {"leaks": unchanged(2, 1, 1), "all": End(3, 1)},
         repointed=((0, 16 * MiB),), crash=("all",)),
    Case("data_on_l1_table", Q.b_l2_to_l1_table,
         "guest 16 MiB maps onto the L1 table: the data entry is cleared",
         {"leaks": unchanged(2, 1, 1), "all": unchanged(2, 1, 1)},
         {"leaks": unchanged(2, 1, 1), "all": End(3, 1), "all+trunc": End(3, 1)},
         dropped=((16 * MiB, 4 * KiB),), salvage=("all",)),
    Case("data_on_l2_table", Q.b_l2_to_own_table,
         "guest 16 MiB maps onto its own L2 table: the data entry is cleared",
         {"leaks": unchanged(2, 1, 1), "all": unchanged(2, 1, 1)},
         {"leaks": unchanged(2, 1, 1), "all": End(3, 1)},
         dropped=((16 * MiB, 4 * KiB),)),
    Case("l1_shared_table", b_l1_shared_table,
         "two L1 entries share an L2 table: qemu-img leaves it; qcheck -r all copies the "
         "table for the later entry, then the data cluster both copies map",
         {"leaks": unchanged(2, 5, 4), "all": unchanged(2, 5, 4)},
         {"leaks": unchanged(2, 5, 4), "all": End(3, 5)},
         all_note=r"own copy of the L2 table", appended=5),
    Case("need_check_set", Q.b_need_check, "need-check set on a clean image: cleared",
         {"leaks": End(0), "all": End(0)},
         {"leaks": End(0), "all": End(0)}),
    Case("need_check_killed_writer", b_killed_writer,
         "need-check left by a killed qemu-io: cleared",
         {"leaks": End(0), "all": End(0)},
         {"leaks": End(0), "all": End(0)}, undo=("leaks",)),
    Case("need_check_l2_past_eof", b_killed_writer_l2_past_eof,
         "need-check and an invalid L2 entry: -r leaks keeps both, -r all clears both",
         {"leaks": End(3, 1), "all": End(3, 1)},
         {"leaks": unchanged(2, 1, 1, need_check=True), "all": End(3, 1),
          "all+trunc": End(3, 1)},
         dropped=((64 * KiB, 64 * KiB),), crash=("all", "all+trunc"), undo=("all+trunc",)),
    Case("need_check_dup", b_killed_writer_dup,
         "need-check and a doubly referenced cluster: qemu-img clears the bit anyway (its "
         "close does), qcheck -r leaks keeps it, -r all copies the cluster and clears it",
         {"leaks": End(2, 1, 1), "all": End(2, 1, 1)},
         {"leaks": unchanged(2, 1, 1, need_check=True), "all": End(3, 1)},
         repointed=((0, 64 * KiB),), crash=("all",)),
    Case("autoclear_bit", Q.header_patch(autoclear_features=0x01),
         "an unknown autoclear bit: cleared by both modes, as QEMU's read-write open",
         {"leaks": End(0), "all": End(0)},
         {"leaks": End(0), "all": End(0)}, autoclear=True, crash=("leaks", "all")),
    Case("compat_bit", Q.header_patch(compat_features=0x01),
         "an unknown compat bit: left alone, its warning stays",
         {"leaks": unchanged(0), "all": unchanged(0)},
         {"leaks": unchanged(0), "all": unchanged(0)}, warning="qedUnknownCompatFeature"),
]


def run_args(key):
    """`-r MODE` and --truncate-leaks for a run key."""
    mode, _, trunc = key.partition("+")
    return ["-r", mode] + (["--truncate-leaks"] if trunc else [])


# ---- reading the guest -------------------------------------------------------------

def guest_clusters(path, damaged=()):
    """{guest cluster: sha256 of its bytes} for every guest cluster that
    does not read as zeros, as QEMU reads the image, from the tables with
    qedlib; UNREADABLE for the clusters behind the entries in `damaged`
    (QEMU refuses to read them)."""
    img = qedlib.Image(path)
    h, cs = img.header, img.cluster_size
    entries = h.table_entries
    total = -(-h.image_size // cs)
    size = img.file_size()
    out = {}
    bad_l1 = {i1 for i1, i2 in damaged if i2 is None}
    bad_l2 = {(i1, i2) for i1, i2 in damaged if i2 is not None}
    with open(path, "rb") as f:
        for i1, table in enumerate(img.l1()):
            if table == qedlib.UNALLOCATED or i1 * entries >= total:
                continue
            if i1 in bad_l1:
                for g in range(i1 * entries, min(total, (i1 + 1) * entries)):
                    out[g] = UNREADABLE
                continue
            for i2, entry in enumerate(img.read_table(table)):
                g = i1 * entries + i2
                if g >= total or entry in (qedlib.UNALLOCATED, qedlib.ZERO_CLUSTER):
                    continue
                if (i1, i2) in bad_l2:
                    out[g] = UNREADABLE
                    continue
                f.seek(entry)
                data = f.read(cs) if entry < size else b""
                if data.strip(b"\0"):
                    out[g] = hashlib.sha256(data.ljust(cs, b"\0")).hexdigest()
    return out


def converted_clusters(path, workdir):
    """The same map from `qemu-img convert -O raw` (None when qemu-img
    cannot read the image), reading only the data extents of the sparse
    copy."""
    cs = qedlib.Image(path).cluster_size
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        raw = os.path.join(tmp, "guest.raw")
        res = Q.tool([QEMU_IMG, "convert", "-U", "-f", "qed", "-O", "raw", path, raw], tmp)
        if res.returncode != 0:
            return None
        out = {}
        with open(raw, "rb") as f:
            fd, size, pos = f.fileno(), os.fstat(f.fileno()).st_size, 0
            while pos < size:
                try:
                    start = os.lseek(fd, pos, os.SEEK_DATA) // cs * cs
                    end = os.lseek(fd, start, os.SEEK_HOLE)
                except OSError:
                    break
                f.seek(start)
                for g in range(start // cs, -(-end // cs)):
                    data = f.read(cs)
                    if data.strip(b"\0"):
                        out[g] = hashlib.sha256(data.ljust(cs, b"\0")).hexdigest()
                pos = max(end, start + cs)
        return out


def guest_diff(before, after, drops, cluster_size):
    """The guest clusters outside `drops` ((offset, length) ranges) whose
    data differs between two guest maps, and those inside that do not read
    as zeros in `after`."""
    def dropped(g):
        return any(off <= g * cluster_size < off + length for off, length in drops)
    changed = sorted(g for g in set(before) | set(after)
                     if not dropped(g) and before.get(g) != after.get(g))
    return changed, sorted(g for g in after if dropped(g))


def kept_damage(ctx, mode):
    """What the guest reader must take as unreadable after qcheck -r MODE:
    -r leaks keeps invalid entries, -r all clears them."""
    return ctx["info"] if mode == "leaks" else {}


def header(path):
    return qedlib.Image(path).header


def need_check(path):
    return bool(header(path).features & qedlib.F_NEED_CHECK)


def write_steps(res):
    return [s for s in (res.get("repair") or {}).get("steps") or [] if not s.get("flush")]


def dropped_ranges(res):
    return sorted((u["guest-offset"], u["guest-length"])
                  for u in (res.get("repair") or {}).get("unlinked") or []
                  if "dropped" in str(u.get("kind")) and "guest-offset" in u)


def verdict(res):
    return {k: res.get(k, 0) for k in ("leaks", "corruptions", "check-errors")}


# ---- running -----------------------------------------------------------------------

class QedRepairRunner(run_crash.Runner):
    """run_crash's Runner gives qc()/qc_json() (sanitizer reports, signals
    and time-outs are failures) and tool()."""

    def __init__(self, qcheck, workdir):
        super().__init__(qcheck, workdir, jobs=2)
        self.figures = dict(runs=0, crash_points=0, converged=0, rollbacks=0, salvages=0)

    def qemu_json(self, t, path, *args):
        """qemu-img check [ARGS] --output=json: (status, object or {})."""
        rc, out, err = self.tool([QEMU_IMG, "check", *args, "--output=json",
                                  os.path.basename(path)], cwd=os.path.dirname(path))
        t.fatal(rc is not None, "qemu-img check %s timed out" % " ".join(args))
        try:
            return rc, json.loads(out)
        except ValueError:
            return rc, {}

    def qemu_human(self, t, path, *args):
        rc, out, err = self.tool([QEMU_IMG, "check", *args, os.path.basename(path)],
                                 cwd=os.path.dirname(path))
        t.fatal(rc is not None, "qemu-img check %s timed out" % " ".join(args))
        return rc, out

    def guest(self, t, path, info, what):
        """The guest map of `path`; cross-checked with qemu-img convert
        whenever qemu-img can read all of it."""
        mine = guest_clusters(path, info.get("damaged", ()))
        theirs = converted_clusters(path, self.workdir)
        if UNREADABLE not in mine.values():
            t.fatal(theirs is not None, "qemu-img convert cannot read %s" % what)
            t.fatal(mine == theirs, "the test's reader and qemu-img convert disagree on %s "
                    "(guest clusters %s)" % (what, sorted(set(mine.items()) ^ set(theirs.items()))[:4]))
        return mine

    # -- one case ----------------------------------------------------------------

    def run_case(self, case):
        t = Test(case.name)
        try:
            self._run_case(t, case)
        except Failed:
            pass
        except (SetupError, subprocess.SubprocessError, OSError) as e:
            t.fails.append("setup: %s" % e)
        return t

    def _run_case(self, t, case):
        d = os.path.join(self.workdir, case.name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        orig = os.path.join(d, "orig.qed")
        info = case.build(orig) or {}
        ctx = dict(case=case, dir=d, orig=orig, info=info, fp=fingerprint(orig),
                   guest=self.guest(t, orig, info, "the damaged image"),
                   cluster_size=qedlib.Image(orig).cluster_size)
        crc, first = self.qc_json(t, [], orig, what="check of the damaged image")
        ctx["first"], ctx["first_rc"] = first, crc
        _, ctx["first_human"] = self.qemu_human(t, orig)
        qemu_out = {mode: self.qemu_repair(t, ctx, mode, want) for mode, want in case.qemu.items()}
        # Each run on its own: a fatal failure of one does not hide the others.
        runs = [(self.qcheck_repair, key, want, qemu_out) for key, want in case.qcheck.items()]
        runs += [(self.undo, key) for key in case.undo]
        runs += [(self.salvage, key) for key in case.salvage]
        runs += [(self.crash, key) for key in case.crash]
        for fn, *args in runs:
            try:
                fn(t, ctx, *args)
            except Failed:
                pass

    def copy(self, ctx, name):
        return run_crash.Runner.copy(ctx["orig"], os.path.join(ctx["dir"], name))

    def end_of(self, t, path, ctx, rc, res, what):
        """The End a run reached, and qemu-img check agrees with qcheck's
        check of the result."""
        frc, fresh = self.qc_json(t, [], path, what="check after " + what)
        qrc, qobj = self.qemu_json(t, path)
        t.expect((qrc, Q.counts(qobj)) == (frc, Q.counts(fresh)),
                 "%s: qemu-img check of the result says %d %s, qcheck's %d %s"
                 % (what, qrc, Q.counts(qobj), frc, Q.counts(fresh)))
        return End(rc, res.get("leaks", 0), res.get("corruptions", 0), need_check(path),
                   fingerprint(path) != ctx["fp"]), fresh, frc

    # -- QEMU's side ---------------------------------------------------------------

    def qemu_repair(self, t, ctx, mode, want):
        """qemu-img check -r MODE on two copies (human, JSON): its End as the
        case says; returns its stdout and JSON for the comparison."""
        human = self.copy(ctx, "qemu-%s.qed" % mode)
        hrc, out = self.qemu_human(t, human, "-r", mode)
        js = self.copy(ctx, "qemu-%s-json.qed" % mode)
        jrc, obj = self.qemu_json(t, js, "-r", mode)
        t.expect(fingerprint(human) == fingerprint(js), "qemu-img -r %s: the human and the JSON "
                 "run left different files" % mode)
        rc, after = self.qemu_json(t, human)
        got = End(hrc, after.get("leaks", 0), after.get("corruptions", 0), need_check(human),
                  fingerprint(human) != ctx["fp"])
        t.expect(got == want and jrc == hrc, "qemu-img check -r %s: %s (JSON run: %d), the case "
                 "expects %s" % (mode, got, jrc, want))
        t.expect(rc == hrc, "qemu-img check -r %s exited %d, its check of the result %d"
                 % (mode, hrc, rc))
        t.expect(header(human).autoclear_features == 0 or not ctx["case"].autoclear,
                 "qemu-img -r %s left the unknown autoclear bit" % mode)
        # QEMU's repair keeps the guest data outside the ranges the case
        # says are dropped (it clears invalid entries, not the others): a
        # test of the reader and of the case's ranges as much as of QEMU.
        cs = ctx["cluster_size"]
        qemu_drops = ctx["case"].dropped + tuple((g, cs) for g in ctx["case"].recovered)
        changed, _ = guest_diff(ctx["guest"], self.guest(t, human, {}, "qemu-img's result"),
                                qemu_drops, cs)
        t.expect(not changed, "qemu-img -r %s changed guest clusters %s outside the case's "
                 "dropped ranges" % (mode, changed[:6]))
        return out, obj

    # -- qcheck's side -------------------------------------------------------------

    def qcheck_repair(self, t, ctx, key, want, qemu_out):
        case, args = ctx["case"], run_args(key)
        mode = args[1]
        what = "qcheck %s" % " ".join(args)
        self.count("runs")

        # The dry runs write nothing and list the steps of the real run.
        dry = self.copy(ctx, "dry-%s.qed" % key)
        drc, dres = self.qc_json(t, args + ["-n"], dry, what=what + " -n")
        ctx.setdefault("plans", {})[key] = (dres.get("repair") or {}).get("steps")
        t.expect(fingerprint(dry) == ctx["fp"], "%s -n wrote to the image" % what)
        t.expect(drc == ctx["first_rc"], "%s -n exited %d, the check %d" % (what, drc, ctx["first_rc"]))
        rep = dres.get("repair") or {}
        t.expect(rep.get("dry-run") is True and rep.get("applied") is False,
                 "%s -n: repair %s" % (what, {k: rep.get(k) for k in ("dry-run", "applied")}))
        hrc, hout, herr = self.qc(t, args + ["-n"], dry, what=what + " -n (human)")
        t.expect(fingerprint(dry) == ctx["fp"] and hrc == drc,
                 "%s -n (human): exit %d, file unchanged %s" % (what, hrc, fingerprint(dry) == ctx["fp"]))
        t.expect(re.search(r"Dry run \(-r %s\b" % mode, hout + herr), "%s -n printed no plan" % what)

        # The real run, in JSON.
        img = self.copy(ctx, "%s.qed" % key)
        rc, res = self.qc_json(t, args, img, what=what)
        t.fatal(rc != 1, "%s exited 1: %s" % (what, res.get("error") or res.get("repair", {}).get("refused")))
        got, fresh, frc = self.end_of(t, img, ctx, rc, res, what)
        t.expect(got == want, "%s ended %s, the case expects %s" % (what, got, want))
        t.expect(res.get("exit-code") == rc, "%s: exit-code %r, status %d" % (what, res.get("exit-code"), rc))
        t.expect((frc, verdict(fresh)) == (rc, verdict(res)), "%s printed %d %s; a check of the "
                 "result says %d %s" % (what, rc, verdict(res), frc, verdict(fresh)))
        steps = write_steps(res)
        t.expect([(s.get("offset"), s.get("length")) for s in steps] ==
                 [(s.get("offset"), s.get("length")) for s in write_steps(dres)],
                 "%s: its steps are not those its dry run listed" % what)
        t.expect(bool(steps) == want.writes, "%s: %d write steps, the case expects %s"
                 % (what, len(steps), "some" if want.writes else "none"))
        if steps:
            fixed = {k: max(0, ctx["first"].get(k, 0) - res.get(k, 0)) for k in ("leaks", "corruptions")}
            t.expect((res.get("leaks-fixed", 0), res.get("corruptions-fixed", 0)) ==
                     (fixed["leaks"], fixed["corruptions"]),
                     "%s: leaks-fixed %s, corruptions-fixed %s; the checks before and after give %s"
                     % (what, res.get("leaks-fixed"), res.get("corruptions-fixed"), fixed))
        if case.autoclear:
            t.expect(header(img).autoclear_features == 0, "%s left the unknown autoclear bit" % what)
        if case.warning:
            t.expect(any(p.get("id") == case.warning for p in fresh.get("problems", [])),
                     "%s: %s is gone from the check of the result" % (what, case.warning))
        t.expect(header(img).compat_features == header(ctx["orig"]).compat_features,
                 "%s changed the compat features" % what)
        self.check_unlinked(t, ctx, key, mode, res, what)
        self.check_size(t, ctx, key, img, res, what)
        after = self.check_guest(t, ctx, mode, img, what)
        ctx.setdefault("results", {})[key] = ((rc, verdict(res), need_check(img)), after)

        # The human run: the same file, qemu-img's lines.
        himg = self.copy(ctx, "%s-human.qed" % key)
        hrc, hout, herr = self.qc(t, args, himg, what=what + " (human)")
        t.expect(hrc == rc, "%s (human) exited %d, the JSON run %d" % (what, hrc, rc))
        t.expect(fingerprint(himg) == fingerprint(img), "%s: the human and the JSON run left "
                 "different files" % what)
        self.check_stdout(t, ctx, key, mode, want, img, hout, qemu_out, what)

    def check_unlinked(self, t, ctx, key, mode, res, what):
        case = ctx["case"]
        dropped = dropped_ranges(res)
        want = sorted(case.dropped) if mode == "all" else []
        t.expect(dropped == want, "%s lists the guest ranges %s as dropped, the case %s"
                 % (what, dropped, want))
        notes = (res.get("repair") or {}).get("notes") or []
        for off, _ in want:
            t.expect(any(("0x%x" % off) in n for n in notes),
                     "%s: no note names the dropped guest range at 0x%x: %s" % (what, off, notes))
        if mode == "all" and case.all_note:
            t.expect(any(re.search(case.all_note, n) for n in notes),
                     "%s: no note matches %r: %s" % (what, case.all_note, notes))
        if case.kept_tail and "+trunc" in key:
            t.expect(any(re.search(r"kept: .*not cut off", n) for n in notes),
                     "%s: no note says the trailing leaks were kept: %s" % (what, notes))
        recovered = sorted(u.get("guest-offset") for u in (res.get("repair") or {}).get(
            "unlinked") or [] if "recovered" in str(u.get("kind")))
        want_recovered = sorted(case.recovered) if mode == "all" else []
        t.expect(recovered == want_recovered, "%s lists the guest offsets %s as recovered, the "
                 "case %s" % (what, recovered, want_recovered))
        if case.reclaim and "+trunc" not in key and mode == "leaks":
            clusters, nbytes = case.reclaim
            t.expect(any("--truncate-leaks" in n and re.search(r"\b%d\b" % clusters, n) and
                         re.search(r"\b%d\b" % nbytes, n) for n in notes),
                     "%s: no note offers --truncate-leaks for %d clusters, %d bytes: %s"
                     % (what, clusters, nbytes, notes))

    def check_size(self, t, ctx, key, img, res, what):
        case = ctx["case"]
        size, before = os.path.getsize(img), ctx["fp"][0]
        cs = ctx["cluster_size"]
        if "+trunc" in key and case.cut_to is not None:
            t.expect(size == case.cut_to + cs * len(case.repointed),
                     "%s: the file is %d bytes, expected cut to %d" % (what, size, case.cut_to))
        elif case.appended and key.startswith("all"):
            t.expect(size == before + cs * case.appended,
                     "%s: the file is %d bytes, expected %d plus %d clusters"
                     % (what, size, before, case.appended))
        elif case.repointed and key.startswith("all"):
            t.expect(size == -(-before // cs) * cs + cs * len(case.repointed),
                     "%s: the file is %d bytes, expected %d plus one cluster per copy"
                     % (what, size, before))
        else:
            t.expect(size == before, "%s: the file is %d bytes, it was %d" % (what, size, before))

    def check_guest(self, t, ctx, mode, img, what):
        case, cs = ctx["case"], ctx["cluster_size"]
        after = self.guest(t, img, kept_damage(ctx, mode), what + "'s result")
        recovered = tuple((g, cs) for g in case.recovered) if mode == "all" else ()
        drops = case.dropped if mode == "all" else ()
        changed, reads = guest_diff(ctx["guest"], after, drops + recovered, cs)
        reads = [g for g in reads if not any(o <= g * cs < o + n for o, n in recovered)]
        # A recovered cluster reads what the cluster its entry pointed into holds.
        orig = qedlib.Image(ctx["orig"])
        for g, _ in recovered:
            aligned = orig.l2_entry(g)[1] & ~(cs - 1)
            with open(ctx["orig"], "rb") as f:
                f.seek(aligned)
                meant = hashlib.sha256(f.read(cs).ljust(cs, b"\0")).hexdigest()
            t.expect(after.get(g // cs) == meant, "%s: recovered guest 0x%x does not read the "
                     "cluster at 0x%x its entry pointed into" % (what, g, aligned))
        t.expect(not changed, "%s changed the guest data of clusters %s (guest offsets %s)"
                 % (what, changed[:6], ["0x%x" % (g * cs) for g in changed[:6]]))
        t.expect(not reads, "%s: dropped guest clusters %s do not read as zeros" % (what, reads[:6]))
        if mode == "all" and case.repointed:
            b, a = qedlib.Image(ctx["orig"]), qedlib.Image(img)
            for earlier, later in case.repointed:
                t.expect(a.l2_entry(earlier)[1] == b.l2_entry(earlier)[1],
                         "%s re-pointed guest 0x%x, the earlier referrer" % (what, earlier))
                t.expect(a.l2_entry(later)[1] >= -(-ctx["fp"][0] // cs) * cs,
                         "%s: guest 0x%x (the later referrer) points to 0x%x, not to a copy "
                         "appended to the file" % (what, later, a.l2_entry(later)[1]))
        return after

    def check_stdout(self, t, ctx, key, mode, want, img, out, qemu_out, what):
        qrc, result_summary = self.qemu_human(t, img)
        if not want.writes:
            t.expect(out == ctx["first_human"], "%s wrote nothing; its output is not the check's:"
                     "\n%s\nqemu-img check:\n%s" % (what, out, ctx["first_human"]))
        else:
            t.expect(out.endswith(result_summary), "%s: its output does not end with what qemu-img "
                     "check says of the result:\n%s\nqemu-img check:\n%s" % (what, out, result_summary))
        if "+trunc" not in key and want == ctx["case"].qemu[mode]:
            t.expect(out == qemu_out[mode][0], "%s ends as qemu-img -r %s, but prints:\n%s\nqemu-img:\n%s"
                     % (what, mode, out, qemu_out[mode][0]))
        first = ctx["first"]
        leaks_fixed = max(0, first.get("leaks", 0) - want.leaks)
        corr_fixed = max(0, first.get("corruptions", 0) - want.corruptions)
        if want.writes and (leaks_fixed or corr_fixed):
            banner = ("%s\n\n    %d leaked clusters\n    %d corruptions\n\nDouble checking the fixed "
                      "image now...\n" % (BANNER, leaks_fixed, corr_fixed))
            t.expect(out.startswith(banner), "%s: the output does not start with the banner:\n%s"
                     % (what, out))
        else:
            t.expect(BANNER not in out, "%s printed the banner with nothing fixed" % what)

    # -- undo, rollback, salvage ---------------------------------------------------

    def undo(self, t, ctx, key):
        args = run_args(key)
        what = "qcheck %s --undo=LOG" % " ".join(args)
        img, log = self.copy(ctx, "undo-%s.qed" % key), os.path.join(ctx["dir"], "undo-%s.log" % key)
        rc, out, err = self.qc(t, args + ["--undo=" + log], img, what=what)
        t.fatal(rc in (0, 2, 3) and os.path.exists(log), "%s exited %d (log written: %s): %s"
                % (what, rc, os.path.exists(log), err.strip()[-300:]))
        t.expect(fingerprint(img) != ctx["fp"], "%s changed nothing" % what)
        rc, out, err = self.qc(t, ["--rollback=" + log], img, what="rollback")
        t.expect(rc == 0 and fingerprint(img) == ctx["fp"],
                 "rollback after %s: exit %d, %d bytes (the original %d), same sha256: %s"
                 % (what, rc, os.path.getsize(img), ctx["fp"][0], fingerprint(img) == ctx["fp"]))
        self.count("rollbacks")
        # Interrupted at every write count, then rolled back.
        for n in range(len([s for s in self.plan_steps(t, ctx, key) if not s.get("flush")])):
            c = self.copy(ctx, "undo-crash.qed")
            clog = os.path.join(ctx["dir"], "undo-crash.log")
            if os.path.exists(clog):
                os.unlink(clog)
            repro = "QCHECK_TEST_CRASH_AFTER_WRITES=%d %s" % (n, what)
            rc, _, err = self.qc(t, args + ["--undo=" + clog], c,
                                 {"QCHECK_TEST_CRASH_AFTER_WRITES": str(n)}, what=repro)
            t.expect(rc == 1, "%s exited %d, wanted 1" % (repro, rc))
            rc, _, err = self.qc(t, ["--rollback=" + clog], c, what="rollback after " + repro)
            t.expect(rc == 0 and fingerprint(c) == ctx["fp"],
                     "rollback after %s: exit %d, original restored %s: %s"
                     % (repro, rc, fingerprint(c) == ctx["fp"], err.strip()[-200:]))
            self.count("rollbacks")

    def salvage(self, t, ctx, key):
        """--salvage=DIR saves, with the original bytes, the truncated tail
        and the in-file target cluster of every dropped entry."""
        case, args = ctx["case"], run_args(key)
        what = "qcheck %s --salvage=DIR" % " ".join(args)
        img, sdir = self.copy(ctx, "salvage-%s.qed" % key), os.path.join(ctx["dir"], "salvage-" + key)
        shutil.rmtree(sdir, ignore_errors=True)
        rc, res = self.qc_json(t, args + ["--salvage=" + sdir], img, what=what)
        t.fatal(rc in (0, 2, 3), "%s exited %d: %s" % (what, rc, res.get("error")))
        t.fatal(os.path.exists(os.path.join(sdir, salvage_check.INDEX)),
                "%s (exit %d) wrote no %s" % (what, rc, salvage_check.INDEX))
        rows, fails = salvage_check.read_salvage(sdir)
        t.fatal(rows and not fails, "%s: the index: %s" % (what, fails or "no rows"))
        with open(ctx["orig"], "rb") as f:
            orig = f.read()
        with open(os.path.join(sdir, salvage_check.DATA), "rb") as f:
            data = f.read()
        saved = set()
        for r in rows:
            chunk = data[r["data_offset"]:r["data_offset"] + r["length"]]
            t.expect(chunk == orig[r["host_offset"]:r["host_offset"] + r["length"]] and
                     salvage_check.xxh64(chunk) == r["xxh64"],
                     "%s: the row at host %d (%d bytes) does not hold the original bytes"
                     % (what, r["host_offset"], r["length"]))
            saved.update(range(r["host_offset"], r["host_offset"] + r["length"]))
        need = set()
        if "+trunc" in key:
            need.update(range(case.cut_to, len(orig)))
        for u in (res.get("repair") or {}).get("unlinked") or []:
            if "dropped" in str(u.get("kind")) and "target" in u and u["target"] < len(orig):
                start = u["target"] // ctx["cluster_size"] * ctx["cluster_size"]
                need.update(range(start, min(len(orig), start + ctx["cluster_size"])))
        t.expect(need and need <= saved, "%s: %d of the %d bytes it had to save are missing "
                 "(first: %s)" % (what, len(need - saved), len(need), min(need - saved, default=None)))
        self.count("salvages")

    # -- crashes -------------------------------------------------------------------

    def plan_steps(self, t, ctx, key):
        """The steps (writes and flushes) of the dry run of a run key (the
        one qcheck_repair made)."""
        steps = ctx.get("plans", {}).get(key)
        t.fatal(isinstance(steps, list), "the dry run lists no repair.steps")
        return steps

    def crash(self, t, ctx, key):
        args = run_args(key)
        steps = self.plan_steps(t, ctx, key)
        writes = [s for s in steps if not s.get("flush")]
        t.fatal(writes, "qcheck %s plans no write to interrupt" % " ".join(args))
        # A power failure at write n keeps the writes before the last
        # flush preceding it.
        durable = run_crash.durable_writes(steps)
        header_writes = [i for i, s in enumerate(writes) if isinstance(s.get("offset"), int) and
                         s["offset"] < NEED_CHECK_FIELD[1] and
                         s["offset"] + s.get("length", 0) > NEED_CHECK_FIELD[0]]
        t.fatal(key in ctx.get("results", {}), "no uninterrupted qcheck %s to compare with"
                % " ".join(args))
        ref, ref_guest = ctx["results"][key]
        plan = dict(key=key, writes=len(writes), durable=durable, header_writes=header_writes,
                    ref=ref, ref_guest=ref_guest)
        plain_fp = {}
        with ThreadPoolExecutor(self.jobs) as pool:
            for drop in (False, True):  # plain first: drop-mode points compare with them
                points = pool.map(lambda n: self.crash_point(ctx, plan, n, drop), range(len(writes)))
                for n, (fails, fp) in enumerate(points):
                    t.fails += fails
                    if not drop:
                        plain_fp[n] = fp
                    elif plain_fp.get(durable[n]) not in (None, fp):
                        t.fails.append("a drop-unflushed crash at %d left other bytes than a plain "
                                       "crash at %d (the writes before the last flush)" % (n, durable[n]))

    def crash_point(self, ctx, plan, n, drop):
        """One interrupted repair and its follow-up; (failures, fingerprint
        right after the crash)."""
        key = plan["key"]
        args = run_args(key)
        t = Test("crash")
        env = {"QCHECK_TEST_CRASH_AFTER_WRITES": str(n)}
        if drop:
            env["QCHECK_TEST_CRASH_DROP_UNFLUSHED"] = "1"
        repro = "%s qcheck %s" % (" ".join("%s=%s" % kv for kv in env.items()), " ".join(args))
        fp = None
        try:
            img = self.copy(ctx, "crash-%s-%d-%s.qed" % (key, n, "drop" if drop else "plain"))
            rc, out, err = self.qc(t, args, img, env, what=repro)
            t.expect(rc == 1 and "stopped" in err, "%s: exit %d, %r" % (repro, rc, err.strip()[-200:]))
            fp = fingerprint(img)
            qrc, _ = self.qemu_json(t, img)
            t.expect(qrc in (0, 2, 3), "qemu-img check exits %s right after %s" % (qrc, repro))
            # The fence (-r all): need-check set from the first write kept
            # up to the last write to the header's features.
            applied, hw = plan["durable"][n] if drop else n, plan["header_writes"]
            if applied == 0:
                t.expect(fp == ctx["fp"], "%s: no write was kept, yet the image changed" % repro)
            elif key.startswith("all") and hw and applied <= hw[-1]:
                t.expect(need_check(img), "%s: need-check is not set (writes 1..%d of %d kept; the "
                         "last header write is write %d)" % (repro, applied, plan["writes"], hw[-1] + 1))
            frc, fres = self.qc_json(t, args, img, what="the repair after " + repro)
            got = (frc, verdict(fres), need_check(img))
            t.fatal(got == plan["ref"], "after %s and one more qcheck %s: %s; uninterrupted: %s"
                    % (repro, " ".join(args), got, plan["ref"]))
            guest = self.guest(t, img, kept_damage(ctx, args[1]), "the image converged after " + repro)
            t.expect(guest == plan["ref_guest"], "after %s and the follow-up, guest clusters %s differ "
                     "from the uninterrupted result"
                     % (repro, sorted(set(guest.items()) ^ set(plan["ref_guest"].items()))[:4]))
            if not t.fails:
                self.count("converged")
                os.unlink(img)
        except Failed:
            pass
        self.count("crash_points")
        return t.fails, fp

    # -- all of it -----------------------------------------------------------------

    def run(self, filt):
        os.makedirs(self.workdir, exist_ok=True)
        started = time.monotonic()
        failed = 0
        cases = [c for c in REPAIR_CASES if filt in c.name]
        with ThreadPoolExecutor(self.jobs) as pool:
            done = list(pool.map(self.run_case, cases))
        for t in done:
            if t.fails:
                failed += 1
                print("FAIL %s" % t.name)
                for f in t.fails[:12]:
                    print("    - %s" % f)
                if len(t.fails) > 12:
                    print("    - ... and %d more" % (len(t.fails) - 12))
            else:
                print("PASS %s" % t.name)
        print("%d of %d cases failed (%.1f s): %s" % (
            failed, len(cases), time.monotonic() - started,
            ", ".join("%s %d" % kv for kv in self.figures.items())))
        return failed


def main():
    if not shutil.which(QEMU_IMG) or not shutil.which(Q.QEMU_IO):
        print("SKIP: qemu-img or qemu-io not found")
        return 77
    return script_main(__doc__, lambda args: QedRepairRunner(args.qcheck, args.workdir))


if __name__ == "__main__":
    sys.exit(main())
