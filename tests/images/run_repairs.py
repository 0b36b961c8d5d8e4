#!/usr/bin/env python3
"""Repair every case of the corruption catalogue and check the outcome.

    run_repairs.py QCHECK WORKDIR [--filter SUBSTR] [--list] [--jobs N] [--keep]

Builds the base images once into WORKDIR/bases and patches each case exactly
as run_cases.py does (same catalogue, same patches), into
WORKDIR/repairs/NAME/orig. Then, on copies, with no backing or data file
beside the image (qcheck must never need them):

  before  `QCHECK --output=json` on the damaged image;
  dry     `QCHECK -r all -n --output=json`: the file must not change
          (sha256) and the steps listed must be those of the real run
          (same offsets and lengths, same flushes), with the same verdict;
  all     `QCHECK -r all --output=json`, then
          (a) the re-check it prints is clean (exit 0, no leak: what only
              a pointer the repair dropped could own is freed in the same
              run, and orphans kept for a structure still there stay
              orphans) when every corruption the first check found has a
              fix in the problem table (checker/include/qcheck_problems.def, fix column)
              other than `none`; otherwise no corruption appears that was
              not there before, and no leak is left. A fresh
              `QCHECK --output=json` agrees with the printed re-check;
          (b) `qemu-img check` (backing/data files copied beside the image
              now) is clean whenever qcheck says exit 0;
          (c) the guest data of the active image and of every snapshot is
              unchanged, cluster by cluster, except the clusters that were
              unreadable before and the guest ranges the repair notes name
              ("guest bytes 0xA-0xB ... now read as zeros/from the backing
              file");
          (d) every cluster the first check called refcountOrphan keeps its
              on-disk refcount, unless the repair lists it as freed;
          (e) the repair's "unlinked" list is complete and true: every
              cluster whose refcount went to 0 is listed as freed, and
              every cluster listed as freed has refcount 0 (also for -r
              leaks);
          (f) it ran with --salvage=DIR (so did -r leaks and the dry run):
              DIR holds, byte for byte and with the right xxh64, every
              cluster whose on-disk refcount went from > 0 to 0 and every
              target of a pointer the repair dropped (both computed from
              the images before and after, salvage_check.py), and the
              snapshot and guest range a row names are what the image
              mapped; the dry run reports the same figures and creates
              nothing; a repair that writes nothing or is refused creates
              no DIR;
  leaks   `QCHECK -r leaks --output=json`: the same corruptions as before
          (wrong COPIED flags excepted when they were the only ones: then
          they are fixed, as qemu-img -r leaks does), no leak left (beyond
          the kept clusters), guest data unchanged, orphans' refcounts
          unchanged; and wherever `qemu-img check -r leaks` ends with exit
          0, qcheck -r leaks does too (unless qemu-img freed clusters qcheck
          keeps for a structure it could not follow).

Files that are not qcow2, and images qcheck cannot check completely (exit 1
before), must be refused: nonzero exit and the file byte for byte unchanged.

Guest data is read with the pure-Python reader below (it decodes what a
clean image needs, and marks a cluster unreadable where a pointer is
broken or ambiguous); where qemu-img can open the repaired image, the
reader's per-cluster view is compared with `qemu-img convert -O raw` too.

Prints `FAIL name: reasons` per failed case, the deliberate exceptions, and
a last line of figures; exit status 0 only if every case passed.
"""

import argparse
import collections
import hashlib
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
import build_images  # noqa: E402
import cases as catalogue  # noqa: E402
import qcow2lib as q  # noqa: E402
import salvage_check  # noqa: E402
from run_cases import expected_exit, parse_json, run  # noqa: E402

QEMU_IMG = build_images.QEMU_IMG

KEPT_RE = re.compile(r"^kept (\d+) clusters? allocated that a structure qcheck could not follow may own")
GUEST_RE = re.compile(r'^(the active image|snapshot \d+ \(id "(.*?)", name ".*?"\)): '
                      r"guest bytes 0x([0-9a-f]+)-0x([0-9a-f]+) ")
MORE_RE = re.compile(r"^\.\.\. and \d+ more like the above")
FLOORED_RE = re.compile(r"^(\d+) leaked clusters? kept at refcount 2, not lowered")
# Cases where -r all must re-point an unaligned L1 or L2 entry ("recovered" in
# "unlinked") and the guest must read exactly what the undamaged base image
# holds, in the active image and every snapshot; and cases where it must not
# (the aligned-down cluster is referenced, or two broken entries point into
# it) and drops them instead.
REPOINTED = {"l2_unaligned", "l2_unaligned_4k", "l2_unaligned_2m", "l2_unaligned_extl2",
             "l2_unaligned_snapshot", "l2_unaligned_shared_table", "l1_unaligned",
             "snap_l1_entry_unaligned"}
NOT_REPOINTED = {"l2_unaligned_into_used", "l2_unaligned_twice", "l1_unaligned_into_garbage",
                 "l1_unaligned_into_zeros"}
# Cases whose snapshot entry runs past the end of the file: -r all keeps
# the snapshot (name: how many snapshots the repaired image lists), and its
# guest data reads as in the undamaged image (qemu-img convert -l).
SNAPSHOTS_KEPT = {"snap_table_truncated": 2, "snap_extra_past_eof": 2,
                  "snap_extra_past_eof_in_known": 2, "snap_name_past_eof": 2,
                  "snap_entry_past_eof_and_dropped": 1}
# Cases whose damage makes a guest write abort QEMU: once -r all leaves
# the image clean, a copy must take this write (qemu-io) and still pass
# qemu-img check.
WRITE_AFTER_REPAIR = {"l1_zero_offset_copied": "write -P 0x5a 32k 4k",
                      "l1_zero_offset_reserved": "write -P 0x5a 32k 4k"}
# Cases both qemu-img check -r leaks and qcheck -r leaks must end clean.
LEAKS_END_CLEAN = {"snap_delete_interrupted", "snap_delete_all_interrupted", "snap_create_failed"}
# Cases whose L1 table the end of the file cuts short (oracle class N-G):
# QEMU reads zeros past the end and writes fine. After either repair,
# qemu-img check must not find a cluster in use with refcount 0 and a
# guest write must succeed (a repair that freed the table's cluster makes
# QEMU refuse the write as overlapping the L1 table); -r all completes the
# table with zeros (the file then ends where the table's last cluster does)
# and must leave the image clean.
CUT_TABLES = {"hdr_l1_cut_by_eof", "hdr_l1_cut_by_eof_freed", "hdr_l1_cut_by_eof_512", "snap_l1_cut_by_eof"}
EXTENDED_RE = re.compile(r"^extended the file with zeros from (\d+) to (\d+) bytes")
# Cases whose file ends less than one cluster short of a structure (an L2
# table, the refcount table, a refcount block, the bitmap directory; oracle
# class N-J): QEMU reads zeros past the end and qemu-img check -r leaks ends
# clean. Both repairs must complete the structure with zeros (one note, the
# file then ends at a cluster boundary), end with exit 0, and leave an image
# qemu-img check calls clean.
SHORT_CUTS = {"l2_cut_by_eof", "reftable_cut_by_eof", "refblock_cut_by_eof", "bitmap_dir_cut_by_eof"}
# Cases -r all must leave clean (exit 0, so qemu-img is asked too) although
# the problem table gives no fix for one of their corruptions: a refcount
# block that is also an L2 table (oracle class N-O) is replaced by a rebuild
# while the L2 table, which reads as a valid one, stays where it is.
ALL_ENDS_CLEAN = {"overlap_refblock_on_l2"}
TABLE_UNUSABLE = {"reftableMissing", "reftablePastEof", "reftableOffsetUnaligned"}
# Of those, the tables whose refcounts may have counted any cluster (a
# missing table counts none).
TABLE_UNREADABLE = TABLE_UNUSABLE - {"reftableMissing"}
COPIED_IDS = {"l1CopiedWrong", "l2CopiedWrong"}
FRESH_ID_RE = re.compile(r'^snapshot \d+ \(id "(.*)", name ".*"\) had no id; the repaired table gives it '
                         r'id "(.*)"$')
SNAPSHOTS_DROPPED_RE = re.compile(r"^(the snapshot table listed \d+ snapshots; \d+ could be read"
                                  r"|discarded snapshot table entr)")
# Corruptions -r leaks fixes too, whatever else is wrong: the offset of a
# table without entries, and a snapshot table at offset 0 when no cluster
# is an orphan (qemu-img check -r leaks resets a snapshot table it cannot
# validate, and writes the header; nothing is lost).
LEAKS_MODE_FIXES = {"emptyTableOffsetInvalid", "snapshotTableInHeader"}


def load_fix_table(path=catalogue.PROBLEMS_DEF):
    """{id: fix action as `qcheck --list-problems` prints it} from
    checker/include/qcheck_problems.def (REBUILD_REFCOUNTS -> rebuild-refcounts)."""
    with open(path) as f:
        text = f.read()
    rows = re.findall(r'QC_PROBLEM\(\s*\w+,\s*\d+,\s*"(\w+)",\s*\w+,\s*(\w+),', text)
    return {pid: fix.lower().replace("_", "-") for pid, fix in rows}


# ---- guest data -------------------------------------------------------------

ZERO = "zero"  # reads as zeros
BACKING = "backing"  # falls through to the backing file
UNREADABLE = None  # broken or ambiguous pointer: nothing to compare


class GuestReader:
    """Per-cluster view of what a guest reads, from an image's own tables.

    view() returns {owner: (clusters, {cluster index: token})} for the
    active image ("active") and each snapshot (its id as str); clusters not
    in the dict read as zeros (or from the backing file). A token is
    ("d", sha1) for bytes qemu would return as they are, ZERO/BACKING, a
    tuple of per-subcluster tokens for extended L2 clusters that mix kinds,
    ("raw", ...) for content this reader does not decode (compressed zstd,
    encrypted, external data file) but that is the same exactly when the
    token is, or UNREADABLE."""

    def __init__(self, path):
        self.im = q.Image(path)
        self.hosts = {}  # (owner, guest cluster) -> host cluster of its data

    def close(self):
        self.im.close()

    def view(self):
        im, h = self.im, self.im.header
        out = {"active": self.table("active", h.l1_table_offset, h.l1_size, h.size)}
        # per owner: (guest clusters, {cluster: token}, token of the rest, L1 offset)
        for s in im.snapshots() if h.nb_snapshots <= 1000 else ():
            size = s.disk_size if s.disk_size is not None else h.size
            owner = s.id.decode("latin-1")
            out[owner] = self.table(owner, s.l1_table_offset, s.l1_size, size)
        return out

    def _data(self, off, length):
        """Token of `length` bytes at host offset `off`, or UNREADABLE."""
        im = self.im
        if im.has_data_file:
            return ("raw", "data file", off)  # qcheck never writes the data file
        if off % im.cluster_size or off >= im.file_size:
            return UNREADABLE
        data = im.read(off, length)  # a short last cluster reads zeros past EOF, as in QEMU
        if im.header.crypt_method:
            return ("raw", hashlib.sha1(data).hexdigest())
        return digest(data)

    def _compressed(self, entry, length):
        im = self.im
        off, clen = im.compressed_range(entry & ~q.OFLAG_COPIED)
        if off >= im.file_size or off >> 56:
            return UNREADABLE
        raw = im.read(off, clen)
        if im.header.compression_type == 0 and not im.header.crypt_method:
            try:
                data = zlib.decompressobj(-15).decompress(raw, im.cluster_size)
            except zlib.error:
                return UNREADABLE
            if len(data) != im.cluster_size:
                return UNREADABLE
            return digest(data[:length])
        return ("raw", hashlib.sha1(raw).hexdigest())

    def table(self, owner, l1_off, l1_size, virtual_size):
        im, cs = self.im, self.im.cluster_size
        clusters = -(-virtual_size // cs)
        tokens = {}
        unalloc = BACKING if im.header.backing_file_offset else ZERO
        if l1_off % cs or l1_off + 8 * l1_size > im.file_size:
            return clusters, {g: UNREADABLE for g in range(clusters)}, unalloc, l1_off
        l1 = im.read_table(l1_off, l1_size) if l1_size else []
        for i in range(-(-clusters // im.l2_entries)):
            first = i * im.l2_entries
            span = range(first, min(first + im.l2_entries, clusters))
            e = l1[i] if i < len(l1) else 0
            l2 = e & q.OFFSET_MASK
            if not l2:
                continue
            if l2 % cs or l2 + cs > im.file_size:
                tokens.update((g, UNREADABLE) for g in span)
                continue
            for r in im.l2_entries_of(l2, i)[:len(span)]:
                g = first + r.l2_index
                length = min(cs, virtual_size - g * cs)
                tok = self.entry(r, length, unalloc)
                if r.host_offset and not r.compressed:
                    self.hosts[owner, g] = r.host_offset // cs
                if tok != unalloc:
                    tokens[g] = tok
        return clusters, tokens, unalloc, l1_off

    def entry(self, r, length, unalloc):
        im = self.im
        e, off = r.entry, r.entry & q.OFFSET_MASK
        if r.compressed:
            if im.extended_l2 and r.bitmap:
                return UNREADABLE  # compressedSubclusterBitmap: ambiguous
            return self._compressed(e, length)
        if im.has_data_file and not off and e & q.OFLAG_COPIED:
            off_is_zero_but_allocated = True  # offset 0 of the data file (QEMU: COPIED says so)
        else:
            off_is_zero_but_allocated = False
        if not im.extended_l2:
            if e & q.OFLAG_ZERO:
                return ZERO if im.header.version >= 3 else UNREADABLE  # v2: ambiguous
            return self._data(off, length) if off or off_is_zero_but_allocated else unalloc
        alloc, zero = r.bitmap & 0xFFFFFFFF, r.bitmap >> 32
        if alloc & zero or (alloc and not off):
            return UNREADABLE  # subclusterAllocAndZero / subclusterAllocUnallocated
        sc = im.cluster_size // 32
        parts = []
        for k in range(32):
            if k * sc >= length:
                break
            n = min(sc, length - k * sc)
            if zero >> k & 1:
                parts.append((ZERO, bytes(n)))
            elif alloc >> k & 1:
                if off + k * sc >= im.file_size or off % im.cluster_size:
                    return UNREADABLE
                parts.append(("d", im.read(off + k * sc, n)))
            else:
                parts.append((unalloc, bytes(n)))
        if all(kind in ("d", ZERO) for kind, _ in parts):
            return digest(b"".join(p for _, p in parts))
        return tuple((kind, hashlib.sha1(p).hexdigest()) for kind, p in parts)


def guest_view(path):
    """(view, {(owner, guest cluster): host cluster}) or (None, {}) when
    the image cannot be read at all."""
    try:
        reader = GuestReader(path)
    except Exception:  # noqa: BLE001 - a header too broken to parse
        return None, {}
    try:
        return reader.view(), reader.hosts
    except Exception:  # noqa: BLE001
        return None, {}
    finally:
        reader.close()


def metadata_clusters(path):
    """Host clusters that hold metadata in an image, as far as a
    well-formed reading finds them (each structure is read on its own, so a
    broken one does not hide the others)."""
    out = set()
    with q.Image(path) as im:
        cs, h = im.cluster_size, im.header

        def add(off, length):
            if length > 0 and off + length <= im.file_size:
                out.update(range(off // cs, (off + length - 1) // cs + 1))

        def tables(l1_off, l1_size):
            add(l1_off, 8 * l1_size)
            if l1_off % cs == 0 and l1_off + 8 * l1_size <= im.file_size:
                for e in im.read_table(l1_off, l1_size):
                    if e & q.OFFSET_MASK and (e & q.OFFSET_MASK) % cs == 0:
                        add(e & q.OFFSET_MASK, cs)
        parts = [lambda: add(0, cs),
                 lambda: tables(h.l1_table_offset, h.l1_size),
                 lambda: add(h.refcount_table_offset, h.refcount_table_clusters * cs),
                 lambda: [add(b, cs) for _, b in im.refblocks() if b % cs == 0],
                 lambda: [tables(s.l1_table_offset, s.l1_size) for s in im.snapshots()],
                 lambda: add(h.snapshots_offset, im.snapshot_table_size()),
                 lambda: out.update(im.bitmap_clusters())]
        for part in parts:
            try:
                part()
            except Exception:  # noqa: BLE001
                pass
    return out


def digest(data):
    """Token of guest bytes: ZERO for all zeros however they are stored."""
    return ZERO if not data.strip(b"\0") else ("d", hashlib.sha1(data).hexdigest())


def token_at(view, owner, g):
    clusters, tokens, default, _ = view[owner]
    return tokens.get(g, default) if g < clusters else UNREADABLE


def dropped_ranges(notes):
    """{owner: [(first byte, last byte)]} named by the repair notes, and
    whether the notes are complete (no "... and N more")."""
    out = {}
    complete = True
    for n in notes:
        m = GUEST_RE.match(n)
        if m:
            owner = "active" if m.group(1) == "the active image" else m.group(2)
            out.setdefault(owner, []).append((int(m.group(3), 16), int(m.group(4), 16)))
        elif MORE_RE.match(n):
            complete = False
    return out, complete


def compare_views(before, after, notes, cluster_size, aliased=()):
    """Failures (strings) where guest data changed outside what the notes
    name, and the number of clusters compared. `aliased` are (owner, guest
    cluster) whose data cluster was metadata before: the damage made two
    owners share the cluster, so it holds no guest data to keep."""
    fails = []
    drops, complete = dropped_ranges(notes)
    snapshots_dropped = any(SNAPSHOTS_DROPPED_RE.match(n) for n in notes)
    # (when snapshots were dropped too, an id-less one may be among them)
    fresh_ids = {} if snapshots_dropped else dict(m.groups() for m in map(FRESH_ID_RE.match, notes) if m)
    compared = 0
    for owner, (clusters, _, _, l1_off) in before.items():
        now = owner
        if owner not in after:
            # A snapshot without an id has a new one: the same snapshot has
            # the same L1 table, or the id a note gives it (when its L1
            # table had no entries, its offset may have been reset too).
            now = next((o for o, v in after.items() if o not in before and v[3] == l1_off),
                       fresh_ids.get(owner) if fresh_ids.get(owner) in after else None)
        if now is None:
            if not (owner != "active" and snapshots_dropped):
                fails.append("guest view of %s is gone after the repair" % owner)
            continue
        ranges = drops.get(owner, [])
        changed = []
        for g in range(clusters):
            b = token_at(before, owner, g)
            if b is UNREADABLE or (owner, g) in aliased:
                continue
            if any(lo <= g * cluster_size + cluster_size - 1 and g * cluster_size <= hi for lo, hi in ranges):
                continue
            compared += 1
            a = token_at(after, now, g)
            if a != b:
                changed.append(g)
        if changed:
            what = "%s guest cluster%s %s" % (
                len(changed), "s" if len(changed) > 1 else "",
                ", ".join("0x%x" % (g * cluster_size) for g in changed[:6]) + (" ..." if len(changed) > 6 else ""))
            fails.append("guest data of %s changed in %s%s" % (
                owner, what, "" if complete else " (the notes were cut short by '... and N more')"))
    return fails, compared


def guest_digests(path, workdir):
    """{"active" or snapshot id: sha256 of its guest data}, as qemu-img
    convert reads it (`-l` for the snapshots)."""
    with q.Image(path) as im:
        ids = [s.id.decode("latin-1") for s in im.snapshots()]
    out = {}
    for sid in [None] + ids:
        with tempfile.TemporaryDirectory(dir=workdir) as tmp:
            raw = os.path.join(tmp, "guest.raw")
            argv = [QEMU_IMG, "convert", "-U", "-f", "qcow2", "-O", "raw"]
            argv += ["-l", "snapshot.id=" + sid] if sid is not None else []
            rc, _, err = run(argv + [path, raw])
            out["active" if sid is None else sid] = q.file_sha256(raw) if rc == 0 else "error: " + err[-80:]
    return out


def cross_check_qemu(path, view, target_dir, cluster_size):
    """Compare the reader's active view with qemu-img convert -O raw on an
    image qemu opens; returns failures."""
    raw = os.path.join(target_dir, "guest.raw")
    rc, _, err = run([QEMU_IMG, "convert", "-f", "qcow2", "-O", "raw", path, raw], cwd=target_dir)
    if rc != 0:
        return ["qemu-img convert failed on an image qemu-img check calls clean: %s" % err.strip()[-200:]]
    clusters = view["active"][0]
    fails = []
    with open(raw, "rb") as f:
        for g in range(clusters):
            data = f.read(cluster_size)
            tok = token_at(view, "active", g)
            if tok == ZERO or (isinstance(tok, tuple) and tok and tok[0] == "d"):
                if digest(data) != tok:
                    fails.append("the test reader and qemu-img convert disagree on guest cluster 0x%x"
                                 % (g * cluster_size))
                    break
    os.unlink(raw)
    return fails


# ---- one case ---------------------------------------------------------------

def problems_by_severity(res, severity):
    return [p for p in res.get("problems", []) if p.get("severity") == severity]


def kept_count(notes):
    for n in notes:
        m = KEPT_RE.match(n)
        if m:
            return int(m.group(1))
    return 0


def floored_count(notes):
    """Leaked clusters -r leaks kept at refcount 2 because it could not fix
    their COPIED flags (other corruptions remained)."""
    for n in notes:
        m = FLOORED_RE.match(n)
        if m:
            return int(m.group(1))
    return 0


def unlinked_clusters(res, cluster_size, kind):
    """Host clusters of the repair's "unlinked" items whose kind includes
    `kind` ("dropped", "freed", "recovered")."""
    out = set()
    for u in (res.get("repair") or {}).get("unlinked") or []:
        if kind in u.get("kind", "").split("+") and "host-offset" in u:
            first = u["host-offset"] // cluster_size
            out.update(range(first, first + u["length"] // cluster_size))
    return out


def orphan_clusters(res, cluster_size):
    out = []
    for p in res.get("problems", []):
        if p.get("id") == "refcountOrphan":
            first = p["offset"] // cluster_size
            out.extend(range(first, first + p["count"]))
    return out


def refcounts_of(path, clusters):
    try:
        with q.Image(path) as im:
            return {c: im.refcount(c) for c in clusters}
    except Exception as e:  # noqa: BLE001
        return "unreadable refcounts (%s: %s)" % (type(e).__name__, e)


def write_steps(res):
    """Steps as comparable tuples: ("w", offset, length) or ("flush",)."""
    steps = (res.get("repair") or {}).get("steps", [])
    return [("flush",) if s.get("flush") else ("w", s.get("offset"), s.get("length")) for s in steps]


class Outcome:
    def __init__(self, case):
        self.case = case
        self.fails = []
        self.exceptions = []  # deliberate, documented: (kind, text)
        self.repairable = None
        self.qcheck_clean = False  # -r all left an image qcheck calls clean (exit 0)
        self.qemu_clean = None  # True/False when asked, None when not applicable
        self.qemu_leaks_clean = False  # qemu-img check -r leaks ended with exit 0
        self.guest_kept = False
        self.orphans = 0  # orphan clusters whose refcount survived both repairs
        self.beyond_table = []  # corruption ids fixed although the table says none
        self.kept = 0
        self.refused = False
        self.salvage = []  # (mode, ranges, bytes) of each --salvage that wrote


class RepairRunner:
    def __init__(self, qcheck, workdir):
        self.qcheck = os.path.abspath(qcheck)
        self.workdir = os.path.abspath(workdir)
        self.bases_dir = os.path.join(self.workdir, "bases")
        self.problems = catalogue.load_problem_table()
        self.fixes = load_fix_table()

    def prepare(self, case):
        """As run_cases.Runner.prepare, into WORKDIR/repairs/NAME/orig."""
        base = build_images.BASES[case.base]
        cdir = os.path.join(self.workdir, "repairs", case.name)
        shutil.rmtree(cdir, ignore_errors=True)
        os.makedirs(os.path.join(cdir, "orig"))
        path = os.path.join(cdir, "orig", base.filename)
        shutil.copyfile(os.path.join(self.bases_dir, base.filename), path)
        if case.patch:
            with q.Image(path, writable=True) as image:
                case.patch(image)
        return base, cdir, path

    def copy(self, cdir, src, sub):
        d = os.path.join(cdir, sub)
        os.makedirs(d, exist_ok=True)
        dst = os.path.join(d, os.path.basename(src))
        shutil.copyfile(src, dst)
        return d, dst

    def qcheck_json(self, case, path, *extra):
        args = case.qcheck_args
        if "-r" in extra:  # the command refuses a check's --deep with a repair
            args = tuple(a for a in args if a != "--deep")
        argv = [self.qcheck, *args, *extra, "--output=json", os.path.basename(path)]
        rc, out, err = run(argv, cwd=os.path.dirname(path))
        return rc, parse_json(out), err

    def run_case(self, case):
        o = Outcome(case)
        try:
            self._run_case(case, o)
        except Exception as e:  # noqa: BLE001 - a broken case is a failure, not a crash
            import traceback
            o.fails.append("%s: %s (%s)" % (type(e).__name__, e,
                                            traceback.format_exc().strip().splitlines()[-3].strip()))
        return o

    def _run_case(self, case, o):
        base, cdir, orig = self.prepare(case)
        name = os.path.basename(orig)
        rc0, before, err0 = self.qcheck_json(case, orig)
        if rc0 == 63 and before is None:  # not qcow2: nothing on stdout, as qemu-img
            self.expect_refusal(case, cdir, orig, rc0, o)
            return
        if rc0 is None or rc0 < 0 or not isinstance(before, dict):
            o.fails.append("the check before the repair failed (exit %s): %s" % (rc0, err0[-200:]))
            return
        if rc0 in (1, 63):
            self.expect_refusal(case, cdir, orig, rc0, o)
            return
        with q.Image(orig) as im:
            cs = im.cluster_size
        for p in before.get("problems", []):
            if p.get("fix") != self.fixes.get(p.get("id")):
                o.fails.append("%s: JSON fix %r, qcheck_problems.def says %r" % (
                    p.get("id"), p.get("fix"), self.fixes.get(p.get("id"))))
        corr_before = problems_by_severity(before, "corruption")
        o.repairable = all(self.fixes.get(p["id"]) != "none" for p in corr_before)
        orphans = orphan_clusters(before, cs)
        orphan_rc = refcounts_of(orig, orphans)
        if isinstance(orphan_rc, str):
            o.fails.append("orphans: %s" % orphan_rc)
            orphan_rc = {}
        view0, hosts0 = guest_view(orig)
        if view0 is None:
            o.exceptions.append(("guest", "the test reader cannot parse the damaged image; "
                                          "guest data compared by file checksum only"))
            aliased = set()
        else:
            meta = metadata_clusters(orig)
            aliased = {k for k, c in hosts0.items() if c in meta}

        # dry run, then the real -r all
        ddir, dry = self.copy(cdir, orig, "dry")
        sha = q.file_sha256(dry)
        dry_salvage = os.path.join(cdir, "salvage_dry")
        drc, dres, derr = self.qcheck_json(case, dry, "-r", "all", "-n", "--salvage=" + dry_salvage)
        if q.file_sha256(dry) != sha:
            o.fails.append("-r all -n changed the file")
        if os.path.exists(dry_salvage):
            o.fails.append("-r all -n --salvage created the salvage directory")
        if os.listdir(ddir) != [name]:
            o.fails.append("-r all -n created files: %s" % sorted(set(os.listdir(ddir)) - {name}))
        adir, img = self.copy(cdir, orig, "all")
        sha_orig = q.file_sha256(img)
        salvage_all = os.path.join(cdir, "salvage_all")
        rc, res, err = self.qcheck_json(case, img, "-r", "all", "--salvage=" + salvage_all)
        if rc is None or rc < 0 or not isinstance(res, dict):
            o.fails.append("-r all failed (exit %s): %s" % (rc, err[-300:]))
            return
        if sorted(os.listdir(adir)) != [name]:
            o.fails.append("-r all created files: %s" % sorted(set(os.listdir(adir)) - {name}))
        if (res.get("repair") or {}).get("refused"):
            if os.path.exists(salvage_all):
                o.fails.append("-r all refused but created the salvage directory")
            self.refused_after_check(case, cdir, orig, rc0, before, img, sha_orig, rc, res, dres, o)
            return
        if not isinstance(dres, dict):
            o.fails.append("-r all -n printed no JSON (exit %s): %s" % (drc, derr[-200:]))
        else:
            if write_steps(dres) != write_steps(res):
                o.fails.append("-r all -n lists %d steps, the real run made %d (first difference: %s)" % (
                    len(write_steps(dres)), len(write_steps(res)),
                    next((("dry", a, "real", b) for a, b in zip(write_steps(dres), write_steps(res)) if a != b),
                         "length")))
            if drc != rc0:  # nothing written: the image is still in the state checked before
                o.fails.append("-r all -n exits %s, the image was checked as %s" % (drc, rc0))
            ds, rs = (x.get("repair", {}).get("salvage") or {} for x in (dres, res))
            if (ds.get("ranges"), ds.get("bytes")) != (rs.get("ranges"), rs.get("bytes")) or ds.get("saved"):
                o.fails.append("-r all -n --salvage would save %s ranges (%s bytes, saved %s), the real "
                               "run saved %s (%s bytes)" % (ds.get("ranges"), ds.get("bytes"), ds.get("saved"),
                                                           rs.get("ranges"), rs.get("bytes")))
        self.check_result(case, "-r all", rc, res, o)
        repair = res.get("repair") or {}
        notes = repair.get("notes", [])
        o.kept = kept_count(notes)
        self.check_all(case, before, rc, res, notes, o)
        self.check_unknown_autoclear("-r all", res, o)
        fresh_rc, fresh, _ = self.qcheck_json(case, img)
        if isinstance(fresh, dict):
            for k in ("exit-code", "corruptions", "leaks", "check-errors"):
                if fresh.get(k, 0) != res.get(k, 0):
                    o.fails.append("-r all printed %s=%s but a fresh check says %s" % (
                        k, res.get(k, 0), fresh.get(k, 0)))
        else:
            o.fails.append("the fresh check after -r all printed no JSON (exit %s)" % fresh_rc)

        self.check_recovered(case, base, img, res, o)
        self.check_snapshots(case, base, orig, img, o)

        # (c) guest data, (d) orphans
        guest_ok = self.check_guest(view0, aliased, img, notes, cs, sha_orig, "-r all", o)
        freed = unlinked_clusters(res, cs, "freed")
        counts = self.refcounts(orig, before, img)
        self.check_unlinked(counts, img, res, cs, "-r all", o)
        self.check_salvage(orig, counts, img, res, salvage_all, "-r all", o)
        released = not any(p.get("id") == "refcountOrphan" for p in res.get("problems", []))
        orphans_ok = self.check_orphans(orphan_rc, img, "-r all", o, freed, released)

        # -r leaks
        ldir, limg = self.copy(cdir, orig, "leaks")
        lsha = q.file_sha256(limg)
        salvage_leaks = os.path.join(cdir, "salvage_leaks")
        lrc, lres, lerr = self.qcheck_json(case, limg, "-r", "leaks", "--salvage=" + salvage_leaks)
        if lrc is None or lrc < 0 or not isinstance(lres, dict):
            o.fails.append("-r leaks failed (exit %s): %s" % (lrc, lerr[-300:]))
            return
        self.check_result(case, "-r leaks", lrc, lres, o)
        self.check_unknown_autoclear("-r leaks", lres, o)
        lnotes = (lres.get("repair") or {}).get("notes", [])
        self.check_leaks(case, before, lrc, lres, lnotes, o)
        self.check_qemu_leaks(case, base, cdir, orig, lrc, lres, o)
        guest_ok &= self.check_guest(view0, aliased, limg, lnotes, cs, lsha, "-r leaks", o)
        orphans_ok &= self.check_orphans(orphan_rc, limg, "-r leaks", o)
        counts = self.refcounts(orig, before, limg)
        self.check_unlinked(counts, limg, lres, cs, "-r leaks", o)
        self.check_salvage(orig, counts, limg, lres, salvage_leaks, "-r leaks", o)
        o.guest_kept = guest_ok
        o.orphans = len(orphan_rc) if orphans_ok else 0
        if case.name in CUT_TABLES or case.name in SHORT_CUTS:
            self.check_cut_table(case, base, cdir, orig, img, rc, notes, "-r all", o)
            self.check_cut_table(case, base, cdir, orig, limg, lrc if case.name in SHORT_CUTS else None,
                                 lnotes, "-r leaks", o)
        if case.name in SHORT_CUTS:
            for f in base.companion_files():
                shutil.copyfile(os.path.join(self.bases_dir, f), os.path.join(ldir, f))
            qrc, _, qerr = run([QEMU_IMG, "check"] + base.qemu_target(os.path.basename(limg)), cwd=ldir)
            if qrc != 0:
                o.fails.append("qemu-img check exits %s after -r leaks completed the cut structure: %s" % (
                    qrc, (qerr.strip().splitlines() or [""])[-1][:200]))

        # (b) qemu-img on what qcheck calls clean
        if rc == 0:
            for f in base.companion_files():
                shutil.copyfile(os.path.join(self.bases_dir, f), os.path.join(adir, f))
            self.check_qemu(case, base, adir, name, o)
            if o.qemu_clean and case.name in WRITE_AFTER_REPAIR:
                self.check_guest_write(case, base, adir, name, o)
            if o.qemu_clean and base.qemu_target is not build_images._luks_target:
                after, _ = guest_view(img)
                if after is not None:
                    o.fails.extend(cross_check_qemu(img, after, adir, cs))

    # -- the pieces -------------------------------------------------------------

    @staticmethod
    def check_unknown_autoclear(what, res, o):
        """Every repair clears the autoclear bits qcheck does not know, as any
        writer must (QEMU clears them on every read-write open, so qemu-img
        check -r leaks does too)."""
        unknown = (res.get("header") or {}).get("unknown-autoclear-features", 0)
        if not (res.get("repair") or {}).get("refused") and unknown:
            o.fails.append("%s left unknown autoclear bits 0x%x set" % (what, unknown))

    def check_refusal(self, what, img, sha, rc, res, o):
        if q.file_sha256(img) != sha:
            o.fails.append("%s refused but changed the file" % what)
        if rc != 1:
            o.fails.append("%s refused with exit %s, not 1" % (what, rc))
        if not isinstance(res, dict):
            o.fails.append("%s printed no JSON" % what)
            return
        repair = res.get("repair") or {}
        if repair.get("applied") or repair.get("steps"):
            o.fails.append("%s refused but lists steps or says applied" % what)
        for sev, key in (("corruption", "corruptions"), ("leak", "leaks")):
            n = len(problems_by_severity(res, sev))
            if bool(n) != bool(res.get(key)):
                o.fails.append("%s refused: its JSON lists %d %s problem(s) but %s=%s "
                               "(the human summary of the same run counts them)" % (
                                   what, n, sev, key, res.get(key, 0)))

    def refused_after_check(self, case, cdir, orig, rc0, before, img, sha, rc, res, dres, o):
        """qcheck checked the image (exit 2 or 3) but refuses to repair it.
        Only acceptable where the problem table has no fix for some
        corruption; the file must be untouched in every mode."""
        o.refused = True
        o.guest_kept = True
        reason = res["repair"]["refused"]
        if o.repairable and res.get("format") != "qed":  # QED repair: issue 15, not yet
            o.fails.append("-r all refused (%s) although every corruption has a fix" % reason)
        else:
            o.exceptions.append(("refused", "-r all: %s" % reason))
        self.check_refusal("-r all", img, sha, rc, res, o)
        if not isinstance(dres, dict) or not (dres.get("repair") or {}).get("refused"):
            o.fails.append("-r all refused but -r all -n did not")
        d, limg = self.copy(cdir, orig, "leaks")
        lsha = q.file_sha256(limg)
        salvage_leaks = os.path.join(cdir, "salvage_leaks")
        lrc, lres, _ = self.qcheck_json(case, limg, "-r", "leaks", "--salvage=" + salvage_leaks)
        if os.path.exists(salvage_leaks):
            o.fails.append("-r leaks refused but created the salvage directory")
        if isinstance(lres, dict) and (lres.get("repair") or {}).get("refused"):
            self.check_refusal("-r leaks", limg, lsha, lrc, lres, o)
        else:
            o.fails.append("-r all refused but -r leaks went ahead (exit %s)" % lrc)
        if q.file_sha256(limg) != lsha:
            o.guest_kept = False

    def expect_refusal(self, case, cdir, orig, rc0, o):
        """Not qcow2, or the check cannot complete: both repairs must refuse
        and leave the file as it was."""
        o.refused = True
        for mode in ("all", "leaks"):
            d, img = self.copy(cdir, orig, mode)
            sha = q.file_sha256(img)
            salvage = os.path.join(cdir, "salvage_" + mode)
            rc, res, err = self.qcheck_json(case, img, "-r", mode, "--salvage=" + salvage)
            if os.path.exists(salvage):
                o.fails.append("-r %s refused but created the salvage directory" % mode)
            if q.file_sha256(img) != sha:
                o.fails.append("-r %s changed a file it cannot check (exit %d before)" % (mode, rc0))
            if rc in (0, 2, 3) or rc is None or rc < 0:
                o.fails.append("-r %s exits %s on a file it cannot check (exit %d before)" % (mode, rc, rc0))
            if rc0 == 63:
                if rc != 63 or res is not None:
                    o.fails.append("-r %s on a file that is not qcow2: exit %s, JSON %s (wanted 63 "
                                   "and nothing on stdout, as qemu-img)" % (mode, rc, res is not None))
            elif not isinstance(res, dict):
                o.fails.append("-r %s printed no JSON: %s" % (mode, err[-200:]))
        o.guest_kept = not o.fails

    def check_result(self, case, what, rc, res, o):
        """The printed re-check is self-consistent."""
        if res.get("exit-code") != rc:
            o.fails.append("%s: JSON exit-code %r but exited %s" % (what, res.get("exit-code"), rc))
        if expected_exit(res) != rc:
            o.fails.append("%s: exit %s does not follow from the counts (%d)" % (what, rc, expected_exit(res)))
        repair = res.get("repair")
        if not isinstance(repair, dict):
            o.fails.append("%s: no \"repair\" object in the JSON" % what)
            return
        mode = what.split()[-1]
        if repair.get("mode") != mode:
            o.fails.append("%s: repair.mode %r" % (what, repair.get("mode")))
        if repair.get("steps") and not repair.get("applied"):
            o.fails.append("%s: steps listed but applied is %r" % (what, repair.get("applied")))
        for sev, key in (("corruption", "corruptions"), ("leak", "leaks")):
            if bool(problems_by_severity(res, sev)) != bool(res.get(key)):
                o.fails.append("%s: %s=%s but %d %s problems" % (
                    what, key, res.get(key, 0), len(problems_by_severity(res, sev)), sev))

    def check_all(self, case, before, rc, res, notes, o):
        """(a): the outcome the problem table predicts."""
        corr_before = {p["id"] for p in problems_by_severity(before, "corruption")}
        corr_after = {p["id"] for p in problems_by_severity(res, "corruption")}
        leaks = res.get("leaks", 0)
        if o.repairable:
            # Orphans are freed in the same run once the pointer that made
            # them orphans is dropped; kept ones stay orphans, not leaks.
            if rc != 0 or leaks or res.get("corruptions", 0):
                o.fails.append("-r all: every corruption has a fix (%s) but the re-check exits %s "
                               "with %d corruptions (%s) and %d leaks (kept %d)" % (
                                   ", ".join(sorted(corr_before)) or "none", rc, res.get("corruptions", 0),
                                   ", ".join(sorted(corr_after)) or "-", leaks, o.kept))
            else:
                o.qcheck_clean = True
        else:
            if case.name in ALL_ENDS_CLEAN and rc != 0:
                o.fails.append("-r all must leave this image clean, but the re-check exits %s with "
                               "%d corruptions (%s) and %d leaks" % (
                                   rc, res.get("corruptions", 0), ", ".join(sorted(corr_after)) or "-",
                                   leaks))
            new = corr_after - corr_before
            if new:
                o.fails.append("-r all introduced corruptions: %s" % ", ".join(sorted(new)))
            if res.get("corruptions", 0) > before.get("corruptions", 0):
                o.fails.append("-r all: corruptions went up from %d to %d" % (
                    before.get("corruptions", 0), res.get("corruptions", 0)))
            if leaks:
                o.fails.append("-r all left %d leaks" % leaks)
            if rc == 0:
                o.qcheck_clean = True
                o.beyond_table = sorted(i for i in corr_before if self.fixes.get(i) == "none")

    def check_leaks(self, case, before, rc, res, notes, o):
        """-r leaks: no leak left beyond the kept clusters; the corruptions
        as before, except that wrong COPIED flags go when they were the only
        corruptions (qemu-img check -r leaks then fixes them too)."""
        corr_before = sorted(p["id"] for p in problems_by_severity(before, "corruption"))
        corr_after = sorted(p["id"] for p in problems_by_severity(res, "corruption"))
        orphans = any(p["id"] == "refcountOrphan" for p in before.get("problems", []))
        fixes = LEAKS_MODE_FIXES - ({"snapshotTableInHeader"} if orphans else set())
        if set(corr_after) & fixes:
            o.fails.append("-r leaks left %s" % ", ".join(sorted(set(corr_after) & fixes)))
        fixed_too = sum(p.get("count", 1) for p in problems_by_severity(before, "corruption")
                        if p["id"] in fixes)
        corr_before = [i for i in corr_before if i not in fixes]
        if any(EXTENDED_RE.match(n) for n in notes):
            # the file was completed with zeros: the cut structures are
            # whole, and the corruptions they caused gone; no new one
            more = collections.Counter(corr_after) - collections.Counter(corr_before)
            if more or res.get("corruptions", 0) >= before.get("corruptions", 0) - fixed_too:
                o.fails.append("-r leaks completed a cut structure with zeros, but the corruptions "
                               "went from %d (%s) to %d (%s)" % (
                                   before.get("corruptions", 0), ", ".join(corr_before) or "-",
                                   res.get("corruptions", 0), ", ".join(corr_after) or "-"))
        elif corr_before and set(corr_before) <= COPIED_IDS:
            if corr_after:
                o.fails.append("-r leaks left %d corruptions (%s) although wrong COPIED flags were "
                               "the only ones (qemu-img -r leaks fixes them)" % (
                                   res.get("corruptions", 0), ", ".join(corr_after)))
        elif corr_before != corr_after or before.get("corruptions", 0) - fixed_too != res.get("corruptions", 0):
            o.fails.append("-r leaks changed the corruptions: %d (%s) -> %d (%s)" % (
                before.get("corruptions", 0), ", ".join(corr_before) or "-",
                res.get("corruptions", 0), ", ".join(corr_after) or "-"))
        kept = kept_count(notes) + floored_count(notes)
        if res.get("leaks", 0) > kept:
            o.fails.append("-r leaks left %d leaks (kept %d)%s" % (
                res.get("leaks", 0), kept,
                "; notes: " + " | ".join(notes) if notes else ""))

    def check_qemu_leaks(self, case, base, cdir, orig, rc, res, o):
        """Where qemu-img check -r leaks ends clean, so must qcheck -r leaks
        (a cron job repairing leaks must see exit 0 from either), unless
        qemu-img got there by freeing what a structure qcheck could not
        follow may own (kept orphans, H1/H4 of docs/repair.md §11). Cases where the catalogue
        records that qemu-img disagrees about the damage itself are left
        out: qemu-img does not see what qcheck reports there."""
        if not case.qemu.agrees:
            return
        d, img = self.copy(cdir, orig, "qemu_leaks")
        for f in base.companion_files():
            shutil.copyfile(os.path.join(self.bases_dir, f), os.path.join(d, f))
        qrc, _, qerr = run([QEMU_IMG, "check", "-r", "leaks"] + base.qemu_target(os.path.basename(img)),
                           cwd=d)
        o.qemu_leaks_clean = qrc == 0
        if case.name in LEAKS_END_CLEAN and not (qrc == 0 and rc == 0):
            o.fails.append("the leak of an interrupted snapshot operation: qemu-img check -r leaks "
                           "exits %s, qcheck -r leaks %s (both must end clean)" % (qrc, rc))
        if qrc != 0 or rc == 0:
            return
        orphans = [p for p in res.get("problems", []) if p.get("id") == "refcountOrphan"]
        if orphans or kept_count((res.get("repair") or {}).get("notes", [])):
            o.exceptions.append(("qemu-leaks", "qemu-img check -r leaks exits 0 by freeing clusters "
                                 "qcheck keeps for a structure it could not follow; qcheck -r leaks "
                                 "exits %s" % rc))
        else:
            o.fails.append("qemu-img check -r leaks ends clean but qcheck -r leaks exits %s "
                           "(corruptions %s, leaks %s)" % (rc, res.get("corruptions", 0),
                                                          res.get("leaks", 0)))

    def check_guest(self, view0, aliased, img, notes, cs, sha_before, what, o):
        if q.file_sha256(img) == sha_before:
            return True
        if view0 is None:
            return False  # counted as not proven; the exception is recorded
        after, _ = guest_view(img)
        if after is None:
            o.fails.append("%s: the test reader cannot parse the repaired image" % what)
            return False
        fails, _ = compare_views(view0, after, notes, cs, aliased)
        o.fails.extend("%s: %s" % (what, f) for f in fails)
        return not fails

    def check_orphans(self, orphan_rc, img, what, o, freed=(), released=False):
        """(d) Every orphan of the first check keeps its refcount while a
        structure that may own it is left. With `released` (-r all, and the
        re-check finds no orphan: the repair dropped what made them
        orphans) the references the dropped structures held are gone, and
        a cluster whose refcount went to 0 must be listed as freed."""
        if not orphan_rc:
            return True
        now = refcounts_of(img, orphan_rc)
        if isinstance(now, str):
            o.fails.append("%s: orphans: %s" % (what, now))
            return False
        changed = [c for c in orphan_rc if now[c] != orphan_rc[c]]
        if released:
            unlisted = [c for c in changed if now[c] == 0 and c not in freed]
            raised = [c for c in changed if now[c] > orphan_rc[c]]
            if changed:
                o.exceptions.append(("orphans", "%s released %d orphan cluster(s) once nothing that "
                                     "may own them was left (%d freed, listed in \"unlinked\")" % (
                                         what, len(changed), sum(now[c] == 0 for c in changed))))
            if unlisted or raised:
                o.fails.append("%s: orphan cluster(s) freed without being listed (%s) or raised (%s)"
                               % (what, unlisted[:5], raised[:5]))
            return not changed
        if changed:
            o.fails.append("%s changed the refcount of %d orphan cluster(s) while a structure that "
                           "may own them is left: %s" % (
                               what, len(changed), ", ".join("%d: %d->%d" % (c, orphan_rc[c], now[c])
                                                             for c in changed[:5])))
        return not changed

    def check_recovered(self, case, base, img, res, o):
        """Re-pointed entries: listed as recovered, and the guest reads what
        the undamaged base image holds (qemu-img convert of the active image
        and of every snapshot; a snapshot the patch made holds what the
        active image held)."""
        recovered = [u for u in (res.get("repair") or {}).get("unlinked") or []
                     if "recovered" in u.get("kind", "")]
        if case.name in NOT_REPOINTED and recovered:
            o.fails.append("-r all re-pointed an entry it must drop: %s" % recovered)
        if case.name not in REPOINTED:
            return
        if not recovered:
            o.fails.append("-r all did not re-point the unaligned L2 entry")
            return
        want = guest_digests(os.path.join(self.bases_dir, base.filename), self.workdir)
        got = guest_digests(img, self.workdir)
        # A snapshot the patch took of the undamaged active image holds what it holds.
        want.update({k: want["active"] for k in got if k not in want})
        if got != want:
            o.fails.append("after re-pointing, the guest does not read what the undamaged image "
                           "holds: %s" % sorted(k for k in set(want) | set(got) if want.get(k) != got.get(k)))

    def check_snapshots(self, case, base, orig, img, o):
        """After -r all: every snapshot has a non-empty id (when the table
        could be read at all: not at an unaligned offset, say); unknown
        extra data (past the 24 known bytes) of every entry that was inside
        the file survives byte for byte (cut at 1024 bytes of extra data, as
        QEMU cuts it); and in SNAPSHOTS_KEPT, the snapshots are listed by
        qemu-img snapshot -l and read as in the undamaged image."""
        try:
            with q.Image(orig) as im:
                size = im.file_size
                readable = (im.header.nb_snapshots <= 1000 and im.header.snapshots_offset < size and
                            im.header.snapshots_offset % im.cluster_size == 0)
                before = {sn.l1_table_offset: sn for sn in im.snapshots()
                          if sn.offset + len(sn.encode()) <= q.align_up(size, 8)} if readable else {}
            with q.Image(img) as im:
                after = im.snapshots() if im.header.nb_snapshots <= 1000 else []
        except Exception:  # noqa: BLE001 - a table the test reader cannot walk
            return
        ids = [sn.id for sn in after]
        if before and any(not i for i in ids):
            o.fails.append("-r all left snapshot ids empty: %r" % ids)
        for sn in after:
            old = before.get(sn.l1_table_offset)
            if old is not None and len(old.extra) > 24 and sn.extra[24:] != old.extra[24:1024]:
                o.fails.append("-r all lost unknown extra data of snapshot %r: %d bytes -> %d" % (
                    sn.id, len(old.extra) - 24, len(sn.extra) - 24))
        want = SNAPSHOTS_KEPT.get(case.name)
        if want is None:
            return
        rc, out, err = run([QEMU_IMG, "snapshot", "-l", "-U", img])
        listed = [ln for ln in out.splitlines()[2:] if ln.strip()]
        if rc != 0 or len(listed) != want or len(after) != want:
            o.fails.append("qemu-img snapshot -l lists %d snapshots (exit %s), the table %d; wanted "
                           "%d: %s" % (len(listed), rc, len(after), want, (out + err).strip()[-200:]))
        with q.Image(os.path.join(self.bases_dir, base.filename)) as im:
            base_ids = {sn.l1_table_offset: sn.id.decode("latin-1") for sn in im.snapshots()}
        base_guest = guest_digests(os.path.join(self.bases_dir, base.filename), self.workdir)
        got = guest_digests(img, self.workdir)
        for sn in after:
            sid = sn.id.decode("latin-1")
            if got.get(sid) != base_guest.get(base_ids.get(sn.l1_table_offset)):
                o.fails.append("snapshot %r (L1 table at 0x%x) does not read as in the undamaged "
                               "image" % (sid, sn.l1_table_offset))

    @staticmethod
    def refcounts(orig, before_res, img):
        """On-disk refcounts before and after the repair (salvage_check.
        refcounts). When the check found the refcount table unreadable,
        every cluster that held anything counts as possibly counted before
        (a repair freeing it must list and save it); None when the table was
        missing (nothing was counted)."""
        ids = {p.get("id") for p in before_res.get("problems", [])}
        if ids & TABLE_UNREADABLE:
            return salvage_check.refcounts(orig, img, unknown_before=True)
        if ids & TABLE_UNUSABLE:
            return None
        return salvage_check.refcounts(orig, img)

    def check_unlinked(self, counts, img, res, cs, what, o):
        """The "unlinked" list of the repair is complete and true: every
        cluster of the file whose refcount went from non-zero to 0 is listed
        as freed, and every cluster listed as freed has refcount 0 now.
        "Before" is what the test reader finds behind the header's refcount
        table pointer, which is what qcheck reads unless it found the table
        itself unusable: then every cluster that held anything may have been
        counted (an unreadable table), or none was (a missing one: `counts`
        (salvage_check.refcounts) is None then, as when the test reader
        cannot walk the refcounts)."""
        items = (res.get("repair") or {}).get("unlinked")
        if not isinstance(items, list):
            o.fails.append("%s: no \"unlinked\" list in the repair object" % what)
            return
        if counts is None:
            return
        listed = unlinked_clusters(res, cs, "freed")
        before, after = counts
        n = len(before)
        unlisted = sorted(salvage_check.freed(counts) - listed)
        if unlisted:
            o.fails.append("%s freed %d cluster(s) without listing them in \"unlinked\": %s" % (
                what, len(unlisted), ", ".join(map(str, unlisted[:8]))))
        wrong = [c for c in sorted(listed) if c < n and after[c]]
        if wrong:
            o.fails.append("%s lists cluster(s) as freed that still have a refcount: %s" % (
                what, ", ".join("%d (%d)" % (c, after[c]) for c in wrong[:8])))

    def check_salvage(self, orig, counts, img, res, sdir, what, o):
        """--salvage: when the repair wrote anything, DIR holds every range
        it unlinked or freed, with the bytes the image held before, their
        xxh64, and the guest range and snapshot they were mapped at
        (salvage_check.verify, computed from the images, not from qcheck's
        lists); and every "unlinked" item that lies in the file is a row."""
        repair = res.get("repair") or {}
        summary = repair.get("salvage")
        if not repair.get("steps"):
            if os.path.exists(sdir):
                o.fails.append("%s wrote nothing but created the salvage directory" % what)
            return
        if not isinstance(summary, dict) or not summary.get("saved") or not os.path.isdir(sdir):
            o.fails.append("%s --salvage: nothing saved (%s)" % (what, summary))
            return
        fails, figures = salvage_check.verify(sdir, orig, img, summary, counts)
        o.fails.extend("%s --salvage: %s" % (what, f) for f in fails)
        rows, _ = salvage_check.read_salvage(sdir)
        size = os.path.getsize(orig)
        listed = sorted((u["host-offset"], min(u["length"], size - u["host-offset"]))
                        for u in repair.get("unlinked") or []
                        if {"dropped", "freed"} & set(u.get("kind", "").split("+"))
                        and "host-offset" in u and u["host-offset"] < size and u["length"])
        if listed != sorted((r["host_offset"], r["length"]) for r in rows):
            o.fails.append("%s --salvage: the index rows are not the \"unlinked\" items in the file" % what)
        o.salvage.append((what, figures.get("ranges", 0), figures.get("bytes", 0)))

    def qemu_write_state(self, base, cdir, img, sub):
        """On a copy: the clusters qemu-img check finds in use with refcount
        0, and whether a guest write then succeeds (its error if not)."""
        d, copy = self.copy(cdir, img, sub)
        for f in base.companion_files():
            shutil.copyfile(os.path.join(self.bases_dir, f), os.path.join(d, f))
        name = os.path.basename(copy)
        _, out, err = run([QEMU_IMG, "check"] + base.qemu_target(name), cwd=d)
        freed = {line for line in (out + err).splitlines() if "refcount=0 reference=" in line}
        wrc, wout, werr = run([build_images.QEMU_IO, "-c", "write -P 0x5a 0 4k",
                               "-c", "read -P 0x5a 0 4k"] + base.qemu_target(name), cwd=d)
        failed = wrc != 0 or "failed" in wout + werr
        return freed, (werr.strip() or wout.strip() or "exit %s" % wrc)[-200:] if failed else None

    def check_cut_table(self, case, base, cdir, orig, img, rc, notes, what, o):
        """CUT_TABLES: the repair frees no cluster QEMU counts as in use, and
        a guest write works afterwards if it did before (-r all: always);
        with -r all (rc given), the file was extended with zeros and is
        clean."""
        mode = what.split()[-1]
        freed0, error0 = self.qemu_write_state(base, cdir, orig, "qemu_write_orig")
        freed, error = self.qemu_write_state(base, cdir, img, "qemu_write_" + mode)
        if freed - freed0:
            o.fails.append("%s freed a cluster QEMU counts as in use: %s" % (what, sorted(freed - freed0)[0]))
        if error and (rc is not None or not error0):
            o.fails.append("%s: a guest write then fails in QEMU: %s" % (what, error))
        if rc is None:
            return
        ext = [m for m in (EXTENDED_RE.match(n) for n in notes) if m]
        size = os.path.getsize(img)
        with q.Image(img) as im:
            cs = im.cluster_size
        if rc != 0:
            o.fails.append("%s left the image with exit %s, not clean" % (what, rc))
        if len(ext) != 1 or int(ext[0].group(2)) != size or size % cs:
            o.fails.append("%s: wanted one note extending the file to its new size %d (a multiple "
                           "of the cluster size), got %s" % (what, size, [m.group(0) for m in ext]))

    def check_qemu(self, case, base, d, name, o):
        rc, out, err = run([QEMU_IMG, "check", "--output=json"] + base.qemu_target(name), cwd=d)
        qm = parse_json(out) or {}
        o.qemu_clean = rc == 0
        if rc == 0:
            return
        why = (err.strip().splitlines() or [""])[-1][:200]
        opened = "Could not open" not in err
        inherited = (not case.qemu.agrees or not case.qemu.opens) and \
            rc == case.qemu.exit and opened == case.qemu.opens
        text = "qemu-img check exits %s after -r all left an image qcheck calls clean " \
               "(corruptions %s, leaks %s): %s" % (rc, qm.get("corruptions", 0), qm.get("leaks", 0), why)
        if inherited:
            o.exceptions.append(("qemu", text + " [the catalogue records the same qemu-img verdict before "
                                 "the repair: %s]" % case.qemu.why))
        else:
            o.fails.append(text)

    def check_guest_write(self, case, base, d, name, o):
        """A guest write to the range the damage affected, on a copy of the
        repaired image; qemu-img check must stay clean."""
        wdir = os.path.join(d, "write")
        os.makedirs(wdir, exist_ok=True)
        for f in os.listdir(d):
            if os.path.isfile(os.path.join(d, f)):
                shutil.copyfile(os.path.join(d, f), os.path.join(wdir, f))
        cmd = WRITE_AFTER_REPAIR[case.name]
        rc, out, err = run([build_images.QEMU_IO, "-c", cmd] + base.qemu_target(name), cwd=wdir)
        if rc != 0 or "wrote" not in out:
            o.fails.append("qemu-io -c %r on the repaired image exits %s: %s" % (
                cmd, rc, (err.strip().splitlines() or [""])[-1][:200]))
            return
        rc, out, err = run([QEMU_IMG, "check"] + base.qemu_target(name), cwd=wdir)
        if rc != 0:
            o.fails.append("qemu-img check exits %s after qemu-io -c %r on the repaired image: %s" % (
                rc, cmd, (err.strip().splitlines() or [""])[-1][:200]))

    # -- the whole run ------------------------------------------------------------

    def run(self, selected, jobs):
        needed = sorted({c.base for c in selected})
        t0 = time.time()
        build_images.build_all(self.bases_dir, needed, jobs)
        print("built %d base images in %.1f s" % (len(needed), time.time() - t0), flush=True)
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            results = list(pool.map(self.run_case, selected))
        failed = [r for r in results if r.fails]
        for r in failed:
            print("FAIL %s: %s" % (r.case.name, "; ".join(r.fails)))
        exc = [(r.case.name, k, t) for r in results for k, t in r.exceptions]
        if exc:
            print("\ndeliberate exceptions (not failures):")
            for name, kind, text in exc:
                print("  %-40s %s: %s" % (name, kind, text))
        beyond = [r for r in results if r.beyond_table]
        if beyond:
            print("\nrepaired although qcheck_problems.def gives no fix for (problem table understates -r all):")
            for r in beyond:
                print("  %-40s %s" % (r.case.name, ", ".join(r.beyond_table)))
        qcow = [r for r in results if not r.refused]
        rep = [r for r in qcow if r.repairable]
        print()
        print("%d cases (%d s): %d refused (not qcow2, or not checkable enough to repair); of %d repaired, "
              "%d repairable by the problem table: -r all left %d clean for qcheck; %d more clean although "
              "the table promised no fix; qemu-img clean "
              "on %d of the %d qcheck calls clean; qemu-img -r leaks clean on %d, qcheck -r leaks on all "
              "of them but the exceptions; guest data unchanged in %d of %d cases; orphans kept "
              "in %d cases (%d clusters)" % (
                  len(results), time.time() - t0, len(results) - len(qcow), len(qcow), len(rep),
                  sum(r.qcheck_clean for r in rep),
                  sum(r.qcheck_clean for r in qcow if not r.repairable),
                  sum(r.qemu_clean is True for r in qcow), sum(r.qemu_clean is not None for r in qcow),
                  sum(r.qemu_leaks_clean for r in qcow), sum(r.guest_kept for r in results), len(results), sum(r.orphans > 0 for r in results),
                  sum(r.orphans for r in results)))
        saves = [s for r in results for s in r.salvage]
        for mode in ("-r all", "-r leaks"):
            mine = [(n, b) for m, n, b in saves if m == mode]
            print("--salvage with %s: %d repairs wrote, %d of them saved something: %d ranges, %d bytes, "
                  "every saved range checked" % (mode, len(mine), sum(n > 0 for n, _ in mine),
                                                 sum(n for n, _ in mine), sum(b for _, b in mine)))
        print("%d passed, %d failed" % (len(results) - len(failed), len(failed)))
        return len(failed)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("qcheck")
    ap.add_argument("workdir")
    ap.add_argument("--filter", default="", help="only cases whose name contains this")
    ap.add_argument("--list", action="store_true", help="list the cases and exit")
    ap.add_argument("--jobs", type=int, default=4)
    ap.add_argument("--keep", action="store_true", help="keep WORKDIR/repairs afterwards")
    args = ap.parse_args()

    runner = RepairRunner(args.qcheck, args.workdir)
    catalogue.validate(runner.problems, build_images.BASES)
    selected = [c for c in catalogue.CASES if args.filter in c.name]
    if args.list:
        for c in selected:
            fixes = sorted({runner.fixes[i] for i in c.expect})
            print("%-40s %-14s exit %-2d %s  [fix: %s]" % (
                c.name, c.base, c.exit, " ".join(sorted(c.expect)), ", ".join(fixes) or "-"))
        print("%d cases" % len(selected))
        return 0
    if not selected:
        print("no case matches %r" % args.filter)
        return 1
    if not os.access(args.qcheck, os.X_OK):
        print("%s is not an executable" % args.qcheck)
        return 1
    failed = runner.run(selected, args.jobs)
    if not args.keep and not failed:
        shutil.rmtree(os.path.join(runner.workdir, "repairs"), ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
