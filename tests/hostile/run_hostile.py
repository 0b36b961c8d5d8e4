#!/usr/bin/env python3
"""Hostile inputs: 27 classes of input a qcow2 checker must survive, numbered
1 to 27 in this file (the `# N.` comments below; docs/fuzzing.md §5 has the
table). They come from QEMU's iotests (060, 080, 108, 261, 271), CVEs
against QEMU and its callers, and what fuzzing found in other qcow2
implementations: huge header claims in tiny files, overflowing offsets,
circular and overlapping structures, implicit backing and data files.

    run_hostile.py BOUNDED_RUN QCHECK WORK_DIR [--table]

QCHECK must be a build without sanitizers (ASan reserves terabytes of
address space, so an address-space limit cannot be set under it). Each case
is a small image made from a seed of corpus/seeds/ (or from raw bytes),
damaged with qcow2lib. For each case, the check and a repair (-r all on a
copy) must:

  * report the expected problem ids, with the expected exit status;
  * finish within TIME_LIMIT seconds of wall time (and RLIMIT_CPU);
  * stay within an address-space limit (RLIMIT_AS) proportional to the file:
    BASE_AS + AS_PER_BYTE * file size. qcheck's memory is bounded by the
    real file: per-cluster maps of a few bits per cluster, the extent list,
    and tables that are read one at a time and are at most the file's size,
    so a few times the file size plus a fixed part for the program, libc and
    the stack reservation is enough; a header claim (petabytes of virtual
    size, 2^32 snapshots) must not move it;
  * open no file but the image (checked with strace: backing files, data
    files and json: specs named in the image are never opened, also when a
    real file of that name exists).

Prints the worst time and peak RSS over all cases; --table prints every
case's figures.
"""

import argparse
import ast
import json
import os
import random
import shutil
import subprocess
import sys
import threading

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
import qcow2lib as q  # noqa: E402

SEEDS = os.path.join(HERE, "..", "..", "corpus", "seeds")
TIME_LIMIT = 5.0           # seconds, wall clock, per run
BASE_AS = 48 << 20         # program, libc, stack reservation, stdio
AS_PER_BYTE = 8            # see the docstring


# ---- building the images ---------------------------------------------------

def seed(name):
    def make(path):
        shutil.copyfile(os.path.join(SEEDS, name), path)
    return make


def raw(data, size=None):
    def make(path):
        with open(path, "wb") as f:
            f.write(data)
            if size is not None:
                f.truncate(size)
    return make


# A bare 112-byte v3 header (the rest of the file is what `raw` adds).
v3_header = q.encode_header


def patched(base, *patches):
    def make(path):
        seed(base)(path)
        with q.Image(path, writable=True) as im:
            for p in patches:
                p(im)
    return make


def field(name, value):
    return lambda im: im.set_header_field(name, value)


def put(offset, size, value):
    return lambda im: im.write_int(offset, size, value)


def l1_entry(index, value):
    return lambda im: im.set_l1_entry(index, value)


def l2_entry(n, value):
    """The n-th mapped entry of the active tables."""
    def p(im):
        r = [m for m in im.mappings() if m.entry][n]
        im.set_l2_entry(r.l1_index, r.l2_index, value)
    return p


def reftable_entry(index, value):
    return lambda im: im.set_reftable_entry(index, value)


def extension(magic, payload, length=None):
    def p(im):
        blob = q.Extension(magic, payload).encode(length=length)
        im.replace_extensions([blob] + list(im.extensions))
    return p


def backing_name(name):
    return lambda im: im.replace_extensions(im.extensions, backing_name=name)


def data_file_name(name):
    def p(im):
        others = [e for e in im.extensions if e.magic != q.EXT_DATA_FILE]
        im.replace_extensions(others + [q.Extension(q.EXT_DATA_FILE, name)])
    return p


def snapshot_field(index, name, value):
    return lambda im: im.set_snapshot_field(index, name, value)


def zeroed_v2_snapshots(count):
    """A v2 image whose header lists `count` all-zero snapshot entries."""
    def p(im):
        at = im.file_size
        im.truncate(at + count * 40)
        im.set_header_field("nb_snapshots", count)
        im.set_header_field("snapshots_offset", at)
    return p


def truncate(size):
    return lambda im: im.truncate(size)


def first_data(im):
    return [m for m in im.mappings() if m.entry and not m.compressed][0].host_offset


# ---- the cases ---------------------------------------------------------------

class Case:
    def __init__(self, ref, name, make, expect, exit, canaries=(), repair_exit=None):
        self.ref = ref            # class number in this file's catalogue (1-27)
        self.name = name
        self.make = make
        self.expect = expect      # problem ids that must be reported
        self.exit = exit          # exit status of the check
        self.canaries = canaries  # files named in the image that must stay unopened
        self.repair_exit = repair_exit  # None: any status but a crash


ALL_ONES = (1 << 64) - 1
SHADOW = "/etc/shadow"


def cases(work):
    canary = os.path.join(work, "canary-backing")
    json_spec = 'json:{"file":{"driver":"file","filename":"%s"}}' % canary
    c = []
    add = c.append
    # 1. header_length
    for v in (0xFFFFFFFF, 0x7FFFFFFF):
        add(Case(1, "header_length_%x" % v, patched("v3.qcow2", field("header_length", v)),
                 ["headerLengthInvalid"], 2))
    # 2. extension lengths, backing name offsets
    add(Case(2, "extension_length_7fffffff",
             patched("v3.qcow2", extension(0x12345678, b"x" * 8, 0x7FFFFFFF)),
             ["extensionTruncated"], 2))
    add(Case(2, "extension_length_ffffffff_120_bytes",
             raw(v3_header(cluster_bits=9, size=1 << 20)
                 + q.Extension(0x12345678, b"").encode(length=0xFFFFFFFF)),
             ["extensionTruncated"], 2))
    add(Case(2, "backing_offset_all_ones",
             patched("v3.qcow2", field("backing_file_offset", ALL_ONES),
                     field("backing_file_size", 16)),
             ["backingNameInvalid"], 2))
    add(Case(2, "extensions_overlap_backing_name",
             patched("v3.qcow2", extension(0x12345678, b"y" * 64), field("backing_file_offset", 120),
                     field("backing_file_size", 8)),
             ["backingNameOverlapsExtensions"], 2))
    # 3. cluster_bits (116-byte files, as in the reports)
    for v in (0, 8, 22, 33, 0xFFFFFFFF):
        add(Case(3, "cluster_bits_%d" % v, raw(v3_header(cluster_bits=v)[:104] + bytes(12)),
                 ["clusterBitsInvalid"], 2))
    # 4. refcount_table_clusters
    for v in (0xFFFFFFFF, 0x00020001):
        add(Case(4, "reftable_clusters_%x" % v,
                 patched("v3.qcow2", field("refcount_table_clusters", v)),
                 ["reftablePastEof", "qemuLimitExceeded"], 2))
    add(Case(4, "reftable_clusters_zero", patched("v3.qcow2", field("refcount_table_clusters", 0)),
             ["reftableMissing"], 2))
    # 5. refcount table offset
    add(Case(5, "reftable_offset_unaligned",
             patched("v3.qcow2", field("refcount_table_offset", 0x1234567890ABCDEF)),
             ["reftableOffsetUnaligned"], 2))
    add(Case(5, "reftable_offset_end_of_space",
             patched("v3.qcow2", field("refcount_table_offset", 0xFFFFFFFFFFFF0000)),
             ["reftablePastEof"], 2))
    # 6. nb_snapshots, snapshots_offset
    for v in (0xFFFFFFFF, 0x7FFFFFFF):
        add(Case(6, "nb_snapshots_%x" % v, patched("snapshots.qcow2", field("nb_snapshots", v)),
                 ["tooManySnapshots"], 2))
    add(Case(6, "snapshots_offset_unaligned",
             patched("snapshots.qcow2", field("snapshots_offset", 0x1A01)),
             ["snapshotTableUnaligned"], 2))
    add(Case(6, "snapshots_offset_end_of_space",
             patched("snapshots.qcow2", field("snapshots_offset", 0xFFFFFFFFFFFFFE00)),
             ["snapshotTablePastEof"], 2))
    # 7. l1_size, L1 offset
    for v in (0xFFFFFFFF, 0x7FFFFFFF):
        add(Case(7, "l1_size_%x" % v, patched("v3.qcow2", field("l1_size", v)),
                 ["l1PastEof", "qemuLimitExceeded"], 2))
    add(Case(7, "l1_offset_unaligned", patched("v3.qcow2", field("l1_table_offset", 0x601)),
             ["l1OffsetUnaligned"], 2))
    add(Case(7, "l1_offset_end_of_space",
             patched("v3.qcow2", field("l1_table_offset", 0xFFFFFFFFFFFFFE00)),
             ["l1PastEof"], 2))
    add(Case(7, "l1_too_small", patched("v3.qcow2", field("l1_size", 1),
                                         field("size", 1 << 40)),
             ["l1TooSmall"], 2))
    # 8. backing file name size and placement
    add(Case(8, "backing_size_ffffffff",
             patched("backing.qcow2", field("backing_file_size", 0xFFFFFFFF)),
             ["backingNameInvalid"], 2))
    add(Case(8, "backing_name_1024_bytes", patched("extended-l2.qcow2", backing_name(b"b" * 1024)),
             ["backingNameInvalid"], 2))
    add(Case(8, "backing_name_outside_cluster_0",
             patched("v3.qcow2", field("backing_file_offset", 0x800),
                     field("backing_file_size", 8)),
             ["backingNameInvalid"], 2))
    # 9. L2 entries with huge host offsets
    add(Case(9, "l2_offset_bfffffffffff0000", patched("v3.qcow2", l2_entry(0, 0xBFFFFFFFFFFF0000)),
             ["l2EntryReservedBits", "l2EntryPastEof"], 2))
    add(Case(9, "l2_offset_800000ffffff0000", patched("v3.qcow2", l2_entry(0, 0x800000FFFFFF0000)),
             ["l2EntryPastEof"], 2))
    # 10. snapshot L1
    add(Case(10, "snapshot_l1_unaligned",
             patched("snapshots.qcow2", snapshot_field(0, "l1_table_offset", 0x1234)),
             ["snapshotL1Unaligned"], 2))
    add(Case(10, "snapshot_l1_size_huge",
             patched("snapshots.qcow2", snapshot_field(0, "l1_size", 0xFFFFFFFF)),
             ["snapshotL1TooLarge"], 2))
    # 11. snapshot table abuse
    add(Case(11, "snapshot_extra_64k",
             patched("snapshots.qcow2", snapshot_field(0, "extra_data_size", 0xFFFF)),
             ["snapshotTableTruncated"], 2))
    add(Case(11, "snapshot_extra_too_small",
             patched("snapshots.qcow2", snapshot_field(1, "extra_data_size", 8)),
             ["snapshotExtraTooSmall"], 2))
    add(Case(11, "v2_70000_zero_snapshots", patched("v2.qcow2", zeroed_v2_snapshots(70000)),
             ["tooManySnapshots"], 2))
    # 12. refcount structures missing or past the end of the file
    add(Case(12, "reftable_zeroed", patched("v3.qcow2", field("refcount_table_offset", 0),
                                             field("refcount_table_clusters", 0)),
             ["reftableMissing"], 2))
    for v in (0x100000, 0x7FFFFFFFFFFF0000, 0xFFFFFFFFFFFF0000):
        add(Case(12, "refblock_at_%x" % v, patched("v3.qcow2", reftable_entry(0, v)),
                 ["reftableEntryPastEof"], 2))
    # 13. allocations at offset 0
    add(Case(13, "l2_entry_offset_0_copied", patched("v3.qcow2", l2_entry(0, 1 << 63)),
             ["l2ZeroOffsetCopied"], 2))
    add(Case(13, "compressed_at_offset_0",
             patched("compressed-zlib.qcow2",
                     lambda im: im.set_l2_entry(0, 0, im.compressed_entry(0, 512))),
             ["dataOverlapsMetadata"], 2))
    # 14. metadata overlaps, circular and self-referencing structures
    add(Case(14, "l2_entry_into_header", patched("v3.qcow2", l2_entry(0, (1 << 63) | 0)),
             ["l2ZeroOffsetCopied"], 2))
    add(Case(14, "l2_entry_into_l1", patched(
        "v3.qcow2", lambda im: l2_entry(0, (1 << 63) | im.header.l1_table_offset)(im)),
        ["dataOverlapsMetadata"], 2))
    add(Case(14, "l1_entry_into_reftable", patched(
        "v3.qcow2", lambda im: l1_entry(0, (1 << 63) | im.header.refcount_table_offset)(im)),
        ["metadataOverlap"], 2))
    add(Case(14, "l1_entry_to_itself", patched(
        "v3.qcow2", lambda im: l1_entry(0, (1 << 63) | im.header.l1_table_offset)(im)),
        ["metadataOverlap"], 2))
    add(Case(14, "reftable_entry_to_itself", patched(
        "v3.qcow2", lambda im: reftable_entry(0, im.header.refcount_table_offset)(im)),
        ["metadataOverlap"], 2))
    add(Case(14, "l2_entry_to_own_table", patched(
        "v3.qcow2", lambda im: l2_entry(0, (1 << 63) | (im.l1()[0] & q.OFFSET_MASK))(im)),
        ["dataOverlapsMetadata"], 2))
    # ... and no repair writes a header another structure shares: refused.
    add(Case(14, "l1_at_header", patched("v3.qcow2", field("l1_table_offset", 0)),
             ["metadataOverlap"], 2, repair_exit=1))
    # 15. offsets at the very end of what an entry can hold
    add(Case(15, "l2_entry_max_offset", patched("v3.qcow2", l2_entry(0, 0x80FFFFFFFFFFFE00)),
             ["l2EntryPastEof"], 2))
    add(Case(15, "refblock_max_offset", patched("v3.qcow2", reftable_entry(0, 0xFFFFFFFFFFFFFE00)),
             ["reftableEntryPastEof"], 2))
    # 16. refcount saturation
    add(Case(16, "refcount1_cluster_twice", patched(
        "refcount1.qcow2", lambda im: l2_entry(1, first_data(im))(im)),
        ["refcountOverflow"], 2))
    # 17. extended L2 bitmaps
    add(Case(17, "extl2_alloc_and_zero", patched(
        "extended-l2.qcow2",
        lambda im: im.write_int(im.l2_entry_offset(0, 1) + 8, 8, 0x0000000100000001)),
        ["subclusterAllocAndZero"], 2))
    # 18. compressed clusters
    add(Case(18, "compressed_copied", patched(
        "compressed-zlib.qcow2",
        lambda im: im.set_l2_entry(0, 0, im.l2_entries_of(im.l1()[0] & q.OFFSET_MASK)[0].entry
                                   | (1 << 63))),
        ["compressedCopied"], 2))
    add(Case(18, "compressed_past_eof", patched(
        "compressed-zlib.qcow2",
        lambda im: im.set_l2_entry(0, 0, im.compressed_entry(0x100000, 512))),
        ["compressedRangeInvalid"], 2))
    # 19. reserved bits
    add(Case(19, "l1_reserved_bits", patched(
        "v3.qcow2", lambda im: l1_entry(0, im.l1()[0] | (1 << 56))(im)),
        ["l1EntryReservedBits"], 2))
    add(Case(19, "l2_reserved_bits", patched(
        "v3.qcow2", lambda im: l2_entry(0, [m for m in im.mappings() if m.entry][0].entry
                                        | (1 << 57))(im)),
        ["l2EntryReservedBits"], 2))
    add(Case(19, "reftable_reserved_bits", patched(
        "v3.qcow2", lambda im: reftable_entry(0, im.reftable()[0] | 0x100)(im)),
        ["reftableEntryReservedBits"], 2))
    # 20. feature bits
    add(Case(20, "unknown_incompatible_bit", patched(
        "v3.qcow2", lambda im: im.set_header_bits("incompatible_features", set_mask=1 << 40)),
        ["unknownIncompatFeature"], 1, repair_exit=1))
    add(Case(20, "unknown_autoclear_bit", patched(
        "v3.qcow2", lambda im: im.set_header_bits("autoclear_features", set_mask=1 << 40)),
        ["unknownAutoclearFeature"], 0))
    # 21. version confusion
    add(Case(21, "version_1", patched("v3.qcow2", field("version", 1)), [], 63, repair_exit=63))
    add(Case(21, "version_4", patched("v3.qcow2", field("version", 4)), ["versionUnsupported"], 1,
             repair_exit=1))
    add(Case(21, "v2_with_v3_extension_area", patched(
        "v2.qcow2", put(72, 8, 1 << 40), put(100, 4, 112)), [], 0))
    # 22. backing and data files named in the image are never opened
    for label, name in (("shadow", SHADOW), ("canary", canary), ("json", json_spec)):
        add(Case(22, "backing_%s" % label, patched("v3.qcow2", backing_name(name.encode())),
                 [], 0, canaries=(name,)))
        add(Case(22, "data_file_%s" % label, patched("data-file.qcow2",
                                                     data_file_name(name.encode())),
                 [], 0, canaries=(name,)))
    add(Case(25, "backing_is_itself", patched("v3.qcow2", backing_name(b"backing_is_itself.qcow2")),
             [], 0))
    # 23. raw files with a qcow2 header
    add(Case(23, "raw_with_qcow2_header_inside",
             raw(bytes(4096) + v3_header() + bytes(512), 1 << 20), [], 63, repair_exit=63))
    add(Case(23, "raw_with_guest_written_header", raw(
        v3_header(backing_file_offset=112, backing_file_size=len(SHADOW)) + SHADOW.encode(),
        1 << 20), ["reftableMissing"], 2, canaries=(SHADOW,)))
    # 24. tiny file, huge claims
    add(Case(24, "petabyte_virtual_size", raw(v3_header(size=1 << 50, cluster_bits=9), 4096),
             ["l1TooSmall"], 2))
    add(Case(24, "tiny_file_huge_tables", raw(v3_header(
        size=1 << 50, cluster_bits=21, l1_size=0x7FFFFFFF, l1_table_offset=1 << 21,
        refcount_table_offset=2 << 21, refcount_table_clusters=0xFFFFFF), 512),
        ["l1PastEof", "reftablePastEof"], 2))
    # 26. truncated and empty files
    add(Case(26, "zero_length", raw(b""), [], 63, repair_exit=63))
    add(Case(26, "truncated_50_bytes", patched("v3.qcow2", truncate(50)), ["headerTruncated"], 2,
             repair_exit=1))
    add(Case(26, "truncated_in_l2", patched(
        "v3.qcow2", lambda im: truncate((im.l1()[0] & q.OFFSET_MASK) + 100)(im)),
        ["l1EntryPastEof"], 2))
    return c


# ---- running -----------------------------------------------------------------

def run(bounded, argv, size, strace_log=None):
    """Run argv under bounded_run's limits; returns (exit status or None when
    killed, seconds, peak RSS in bytes, stdout). With strace_log, strace runs
    the command (under the same limits) and logs every file it opens."""
    if strace_log:
        argv = ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2,creat", "-o",
                strace_log] + argv
    limit = BASE_AS + AS_PER_BYTE * size
    p = subprocess.run([bounded, str(limit), str(int(TIME_LIMIT)), "--"] + argv,
                       capture_output=True)
    report = [line for line in p.stderr.decode(errors="replace").splitlines()
              if line.startswith("bounded_run: ")]
    if p.returncode != 0 or not report:
        sys.exit("bounded_run failed: %s" % p.stderr.decode(errors="replace"))
    fields = dict(kv.split("=") for kv in report[-1].split()[1:])
    status = int(fields["status"]) if fields["signal"] == "0" else None
    return status, float(fields["seconds"]), int(fields["maxrss_kib"]) * 1024, p.stdout


def opened_files(log):
    files = []
    with open(log) as f:
        for line in f:
            if '"' in line and "= -1" not in line:
                files.append(line.split('"')[1])
    return files


def ids_in(out):
    """The problem ids of qcheck's JSON output, or None if it does not parse."""
    try:
        doc = json.loads(out)
    except ValueError:
        return None
    return {p["id"] for p in doc.get("problems", [])}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("bounded", help="the bounded_run helper")
    ap.add_argument("qcheck")
    ap.add_argument("work")
    ap.add_argument("--table", action="store_true")
    args = ap.parse_args()
    if shutil.which("strace") is None:
        sys.exit("strace is needed (the set-up installs it)")
    work = os.path.abspath(args.work)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    with open(os.path.join(work, "canary-backing"), "wb") as f:
        f.write(b"never to be opened\n")
    # The limits must bite: a command allocating 4 times the limit of a
    # 1 MiB file must fail under them, and one looping must be stopped.
    status, _, _, _ = run(args.bounded, [sys.executable, "-c",
                                         "b = bytearray(%d)" % (4 * (BASE_AS + AS_PER_BYTE * 2**20))],
                          2**20)
    if status == 0:
        sys.exit("the address-space limit is not enforced")
    status, secs, _, _ = run(args.bounded, [sys.executable, "-c", "while True: pass"], 0)
    if status is not None or secs > 4 * TIME_LIMIT:
        sys.exit("the time limit is not enforced (%s after %.1f s)" % (status, secs))
    failures, rows = [], []
    worst_time = worst_rss = (0, "")
    for case in cases(work):
        path = os.path.join(work, case.name + ".qcow2")
        case.make(path)
        size = os.path.getsize(path)
        problems = []
        # The check, bounded.
        status, secs, rss, out = run(args.bounded, [args.qcheck, "--output=json", path], size)
        found = ids_in(out)
        if status not in (0, 1, 2, 3, 63):
            problems.append("check: exit status %s (killed, crashed or out of time)" % status)
        else:
            if status != case.exit:
                problems.append("check: exit %d, expected %d" % (status, case.exit))
            if status == 63:
                # Nothing was checked: like qemu-img, nothing on stdout.
                if out.strip():
                    problems.append("check: exit 63 but stdout is not empty: %r" % out[:100])
            elif found is None:
                problems.append("check: the JSON output does not parse")
            else:
                missing = [i for i in case.expect if i not in found]
                if missing:
                    problems.append("check: %s not reported (got %s)"
                                    % (", ".join(missing), ", ".join(sorted(found)) or "nothing"))
        if secs > TIME_LIMIT:
            problems.append("check: took %.2f s" % secs)
        worst_time = max(worst_time, (secs, case.name + " (check)"))
        worst_rss = max(worst_rss, (rss, case.name + " (check)"))
        # The repair, on a copy, bounded the same way.
        copy = path + ".repair"
        shutil.copyfile(path, copy)
        rstatus, rsecs, rrss, _ = run(args.bounded, [args.qcheck, "-r", "all", copy], size)
        if rstatus not in (0, 1, 2, 3, 63):
            problems.append("repair: exit status %s (killed, crashed or hung)" % rstatus)
        elif case.repair_exit is not None and rstatus != case.repair_exit:
            problems.append("repair: exit %d, expected %d" % (rstatus, case.repair_exit))
        if rsecs > TIME_LIMIT:
            problems.append("repair: took %.2f s" % rsecs)
        worst_time = max(worst_time, (rsecs, case.name + " (repair)"))
        worst_rss = max(worst_rss, (rrss, case.name + " (repair)"))
        # Nothing but the image is opened, by the check or by a repair.
        for mode, target in (("check", path), ("repair", copy)):
            log = os.path.join(work, "%s.%s.strace" % (case.name, mode))
            argv = [args.qcheck, target] if mode == "check" else [args.qcheck, "-r", "all", target]
            run(args.bounded, argv, size, strace_log=log)
            opened = opened_files(log)
            if os.path.abspath(target) not in map(os.path.abspath, opened):
                problems.append("%s: strace did not see the image opened; the trace is not "
                                "working" % mode)
            others = [f for f in opened
                      if os.path.abspath(f) != os.path.abspath(target) and not system_file(f)]
            if others:
                problems.append("%s: opened %s" % (mode, ", ".join(sorted(set(others)))))
            named = [n for n in case.canaries if any(n in f for f in opened)]
            if named:
                problems.append("%s: opened a file named in the image: %s" % (mode, named))
        rows.append((case, size, status, secs, rss, rstatus, rsecs, rrss))
        if problems:
            failures.append((case, problems))
    if args.table:
        print("%-4s %-40s %9s %5s %8s %9s %6s %8s %9s" % (
            "ref", "case", "bytes", "exit", "seconds", "peak RSS", "-r all", "seconds",
            "peak RSS"))
        for case, size, st, secs, rss, rst, rsecs, rrss in rows:
            print("%-4d %-40s %9d %5s %8.3f %8.1fM %6s %8.3f %8.1fM" % (
                case.ref, case.name, size, st, secs, rss / 2**20, rst, rsecs, rrss / 2**20))
    # 27. the image changes while it is checked: whatever is read, no crash
    # and no hang.
    for problem in concurrent_writes(args.bounded, args.qcheck, work):
        failures.append((Case(27, "concurrent_writes", None, [], 0), [problem]))
    rows.append((Case(27, "concurrent_writes", None, [], 0), 0, None, 0.0, 0, None, 0.0, 0))
    refs = sorted({r[0].ref for r in rows})
    print("%d hostile cases (classes %s), each checked and repaired under "
          "RLIMIT_AS = %d MiB + %d x file size and %.0f s" % (
              len(rows), ",".join(map(str, refs)), BASE_AS >> 20, AS_PER_BYTE, TIME_LIMIT))
    print("worst time %.3f s (%s); worst peak RSS %.1f MiB (%s)" % (
        worst_time[0], worst_time[1], worst_rss[0] / 2**20, worst_rss[1]))
    for case, problems in failures:
        for p in problems:
            print("FAIL %s (item %d): %s" % (case.name, case.ref, p))
    sys.exit(1 if failures else 0)


def concurrent_writes(bounded, qcheck, work, runs=20):
    """Check an image 20 times while another thread overwrites random
    metadata bytes of it; every check must end with a qemu-img status."""
    path = os.path.join(work, "concurrent.qcow2")
    seed("snapshots.qcow2")(path)
    size = os.path.getsize(path)
    stop = threading.Event()
    rng = random.Random(27)

    def scribble():
        with open(path, "r+b") as f:
            while not stop.is_set():
                f.seek(rng.randrange(0, 16 * 512))
                f.write(bytes([rng.randrange(256)]) * rng.randrange(1, 9))
                f.flush()
    writer = threading.Thread(target=scribble)
    writer.start()
    problems = []
    try:
        for _ in range(runs):
            status, secs, _, _ = run(bounded, [qcheck, path], size)
            if status not in (0, 1, 2, 3, 63):
                problems.append("check under concurrent writes: exit status %s after %.2f s"
                                % (status, secs))
    finally:
        stop.set()
        writer.join()
    return problems


def system_file(path):
    return path.startswith(("/lib", "/usr/lib", "/etc/ld.so", "/usr/share/locale",
                            "/usr/lib/locale", "/proc/self", "/sys/"))


if __name__ == "__main__":
    main()
