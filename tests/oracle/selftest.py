#!/usr/bin/env python3
"""The oracle's own test: every rule of compare.RULES on a real image.

    selftest.py QCHECK WORKDIR

For each rule, one image where qcheck and qemu-img differ in exactly the way
the rule documents (most are cases of the corruption catalogue,
tests/images/cases.py; two are built here):

  positive  compare() of the two checks reports no disagreement, and the
            rule is among those that were needed;
  negative  the same checks with the problem ids the rule is conditioned on
            renamed in qcheck's JSON (to an id no rule knows, same counts)
            must report a disagreement: the rule is not unconditional.

Prints one line per rule and exits non-zero if any check failed.
"""

import json
import os
import shutil
import sys

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import compare as cmp  # noqa: E402
import oracle  # noqa: E402
from common import QEMU_IMG, QEMU_IO, Result, qcow2lib as q, run  # noqa: E402

IMG = oracle.IMG


def l2_table_cut(d):
    """The L2 table moved to the last cluster of the file, and the file cut
    in the middle of it: QEMU accepts a table ending less than one cluster
    past the end (qcow2_inc_refcounts_imrt()) and reads zeros for the rest, qcheck reports
    l1EntryPastEof."""
    run([QEMU_IMG, "create", "-f", "qcow2", IMG, "64M"], cwd=d)
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x5a 0 64k", IMG], cwd=d)
    with q.Image(os.path.join(d, IMG), writable=True) as im:
        cs = im.cluster_size
        old = im.l1()[0] & q.OFFSET_MASK
        new = im.append_clusters(im.read(old, cs))
        im.set_l1_entry(0, q.OFLAG_COPIED | new)
        im.free_clusters(old, cs)
        im.truncate(new + cs // 2)


def shared_past_max(d):
    """2-bit refcounts (at most 3) and one data cluster mapped by five L2
    entries: QEMU reports an overflow per reference beyond 3, qcheck one
    refcountOverflow."""
    run([QEMU_IMG, "create", "-f", "qcow2", "-o", "refcount_bits=2", IMG, "1M"], cwd=d)
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x5a 0 320k", IMG], cwd=d)
    with q.Image(os.path.join(d, IMG), writable=True) as im:
        refs = im.data_refs()
        first = refs[0].entry & ~q.OFLAG_COPIED
        for r in refs[1:5]:
            im.set_refcount(r.host_offset // im.cluster_size, 0)
            im.set_l2_entry(r.l1_index, r.l2_index, first)
        im.set_l2_entry(refs[0].l1_index, refs[0].l2_index, first)
        im.set_refcount(first // im.cluster_size, 3)


def copied_cleared_and_block_past_eof(d):
    """COPIED cleared on a data cluster with one reference, and an unused
    refcount table entry pointing past the end of the file: qcheck skips
    that block and, as §2.3 says, does not judge a clear COPIED then."""
    run([QEMU_IMG, "create", "-f", "qcow2", IMG, "64M"], cwd=d)
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x5a 0 128k", IMG], cwd=d)
    with q.Image(os.path.join(d, IMG), writable=True) as im:
        r = im.data_refs()[1]
        im.set_l2_entry(r.l1_index, r.l2_index, r.entry & ~q.OFLAG_COPIED)
        im.set_reftable_entry(100, q.align_up(im.file_size, im.cluster_size) + 64 * im.cluster_size)


def shared_l2_reserved_bit(d):
    """One write, a snapshot (the active and snapshot L1 tables now share
    the L2 table), then a reserved bit in the shared L2 entry: QEMU counts
    it once per L1 table, qcheck once (§2.10)."""
    run([QEMU_IMG, "create", "-f", "qcow2", IMG, "64M"], cwd=d)
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x5a 0 64k", IMG], cwd=d)
    run([QEMU_IMG, "snapshot", "-c", "s1", IMG], cwd=d)
    with q.Image(os.path.join(d, IMG), writable=True) as im:
        r = im.data_refs()[0]
        im.set_l2_entry(r.l1_index, r.l2_index, r.entry | 2)


def snapshot_count_past_table(d):
    """One snapshot, nb_snapshots 3: QEMU reports the two entries it reads
    as zeros past the end of the file, qcheck the count once (§2.10)."""
    run([QEMU_IMG, "create", "-f", "qcow2", IMG, "64M"], cwd=d)
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x5a 0 64k", IMG], cwd=d)
    run([QEMU_IMG, "snapshot", "-c", "s1", IMG], cwd=d)
    with q.Image(os.path.join(d, IMG), writable=True) as im:
        im.set_header_field("nb_snapshots", 3)


# rule -> (catalogue case name or builder, ids the rule is conditioned on)
CASES = {
    "copied-vs-computed-refcount": ("leak_data_cluster", {"refcountLeak"}),
    "orphans-not-leaks": ("snap_l1_unaligned", {"refcountOrphan"}),
    "copied-clear-not-judged": (copied_cleared_and_block_past_eof, {"reftableEntryPastEof"}),
    "unaligned-data-followed": ("l2_unaligned", {"l2EntryUnaligned"}),
    "table-not-walked": ("l1_unaligned", {"l1EntryUnaligned"}),
    "header-walked-as-l2": ("l1_zero_offset_reserved", {"l1ZeroOffsetFlags"}),
    "overlap-as-refcount": ("overlap_data_on_refblock", {"dataOverlapsMetadata"}),
    "refcounts-unknown": ("reftable_entry_unaligned", {"reftableEntryUnaligned"}),
    "checks-qemu-does-not-make": ("l2_zero_flag_v2", {"l2ZeroFlagInvalid"}),
    "data-file-copied-warning": ("data_file_copied_missing", {"dataFileCopiedMissing"}),
    "past-eof-tolerance": (l2_table_cut, {"l1EntryPastEof"}),
    "header-finding-counted": ("hdr_reftable_clusters_0", {"reftableMissing"}),
    "compressed-bitmap-range": ("extl2_compressed_bitmap", {"compressedSubclusterBitmap"}),
    "overflow-per-cluster": (shared_past_max, {"refcountOverflow"}),
    "shared-l2-counted-once": (shared_l2_reserved_bit, {"l2EntryReservedBits"}),
    "snapshot-count-once": (snapshot_count_past_table, {"tooManySnapshots"}),
    "table-past-eof": ("hdr_l1_cut_by_eof", {"l1PastEof"}),
    "end-offset-past-eof": ("hdr_l1_cut_by_eof", {"l1PastEof"}),
    "snapshot-entry-past-eof": ("snap_table_truncated", {"snapshotEntryPastEof"}),
    "header-read-as-table": ("hdr_snapshots_at_offset_0", {"snapshotTableInHeader"}),
    "qemu-cannot-open": ("hdr_compression_type_2", {"compressionTypeInvalid"}),
    "companions-missing": ("hdr_data_file_name_missing", {"dataFileNameMissing"}),
}


def build(work, name_or_builder):
    d = os.path.join(work, "selftest", getattr(name_or_builder, "__name__", name_or_builder))
    if callable(name_or_builder):
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        name_or_builder(d)
        return d
    return oracle.prepare_case(work, name_or_builder)


def without(result, ids):
    """A qcheck Result whose problems of `ids` are renamed to an id no rule
    knows (code 0, same severity and count): what the rule is conditioned
    on is gone, the counts stay."""
    j = json.loads(result.out)
    for p in j.get("problems", []):
        if p.get("id") in ids:
            p["id"], p["code"] = "oracleSelfTestRenamed", 0
    return Result(result.argv, result.rc, json.dumps(j), result.err)


def main():
    if len(sys.argv) != 3:
        print(__doc__)
        return 2
    qcheck, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    os.makedirs(work, exist_ok=True)
    import build_images
    import cases as catalogue
    needed = sorted({c.base for c in catalogue.CASES if c.name in {v[0] for v in CASES.values()
                                                                  if isinstance(v[0], str)}})
    build_images.build_all(os.path.join(work, "catalogue-bases"), needed, 2)
    o = oracle.Oracle(qcheck, work)
    failed = 0
    for rule, (source, ids) in CASES.items():
        d = build(work, source)
        path = os.path.join(d, IMG)
        qm = run([QEMU_IMG, "check", "-f", "qcow2", "--output=json", IMG], cwd=d)
        qc = run([qcheck, "-f", "qcow2", "--output=json", IMG], cwd=d)
        cs = o.cluster_size(d, qc.json())
        pair = cmp.Pair(qm, qc, cs, o.missing_companions(d), os.path.getsize(path))
        v = cmp.compare(pair)
        fails = []
        if v.disagreements:
            fails.append("disagreements: %s" % "; ".join(s for s, _ in v.disagreements))
        if rule not in v.fired:
            fails.append("the rule was not needed (needed: %s)" % ", ".join(sorted(v.fired)) or "none")
        if not ids <= pair.ids:
            fails.append("qcheck does not report %s" % ", ".join(sorted(ids - pair.ids)))
        stripped = cmp.Pair(qm, without(qc, ids), cs, o.missing_companions(d), os.path.getsize(path))
        nv = cmp.compare(stripped)
        if not nv.disagreements:
            fails.append("still no disagreement without %s: the rule is unconditional" % ", ".join(sorted(ids)))
        print("%s %-28s %s%s" % ("FAIL" if fails else "ok  ", rule, getattr(source, "__name__", source),
                                 ": " + " | ".join(fails) if fails else ""))
        failed += bool(fails)
    missing = {r.name for r in cmp.RULES} - set(CASES)
    if missing:
        print("FAIL rules without a self-test: %s" % ", ".join(sorted(missing)))
        failed += 1
    print("%d rules, %d failed" % (len(CASES), failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
