"""Verify a `qcheck --salvage=DIR` directory against the image before and
after the repair, independently of qcheck's own lists (everything is
computed from the two images with qcow2lib).

    xxh64(data, seed=0)            pure-Python XXH64 (checked against the
                                   published test vectors by self_test())
    read_salvage(dir)              the index rows and the data file's path
    refcounts(orig, img), freed()  the clusters whose on-disk refcount went
                                   from > 0 to 0
    dropped_targets(orig, img)     every target of a pointer the repair
                                   dropped (L1/L2 entries cleared, snapshots
                                   gone, snapshot table or refcount
                                   structures replaced, bitmaps dropped)
    check_rows(dir, orig)          each row's bytes, xxh64 and attribution
    verify(dir, orig, img, ...)    all of it: failures (strings) and figures

Used by run_repairs.py (every catalogue repair) and run_crash.py
(refusals, interrupted repairs).
"""

import os
import struct

import qcow2lib as q

DATA, INDEX, README = "clusters.bin", "index.tsv", "README.txt"
COLUMNS = ["data_offset", "host_offset", "length", "xxh64", "kind", "problem", "code", "snapshot",
           "snapshot_id", "snapshot_name", "guest_offset", "guest_length", "entry_offset", "target"]
NUMERIC = ("data_offset", "host_offset", "length", "code", "guest_offset", "guest_length",
           "entry_offset", "target")
SNAPSHOT_TABLE_PROBLEMS = {"snapshotTablePastEof", "snapshotTableTruncated", "tooManySnapshots",
                           "snapshotTableTooLarge"}

# ---- XXH64 ---------------------------------------------------------------------

M64 = (1 << 64) - 1
P1, P2, P3 = 0x9E3779B185EBCA87, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9
P4, P5 = 0x85EBCA77C2B2AE63, 0x27D4EB2F165667C5


def _rotl(x, r):
    return ((x << r) | (x >> (64 - r))) & M64


def _round(acc, lane):
    acc = (acc + lane * P2) & M64
    return (_rotl(acc, 31) * P1) & M64


def xxh64(data, seed=0):
    """XXH64 of `data` (bytes), as the xxHash specification defines it."""
    n = len(data)
    pos = 0
    if n >= 32:
        v1, v2, v3, v4 = (seed + P1 + P2) & M64, (seed + P2) & M64, seed, (seed - P1) & M64
        end = n - n % 32
        for a, b, c, d in struct.iter_unpack("<4Q", memoryview(data)[:end]):
            v1 = _rotl((v1 + a * P2) & M64, 31) * P1 & M64
            v2 = _rotl((v2 + b * P2) & M64, 31) * P1 & M64
            v3 = _rotl((v3 + c * P2) & M64, 31) * P1 & M64
            v4 = _rotl((v4 + d * P2) & M64, 31) * P1 & M64
        pos = end
        h = (_rotl(v1, 1) + _rotl(v2, 7) + _rotl(v3, 12) + _rotl(v4, 18)) & M64
        for v in (v1, v2, v3, v4):
            h = ((h ^ _round(0, v)) * P1 + P4) & M64
    else:
        h = (seed + P5) & M64
    h = (h + n) & M64
    while pos + 8 <= n:
        (k,) = struct.unpack_from("<Q", data, pos)
        h = (_rotl(h ^ _round(0, k), 27) * P1 + P4) & M64
        pos += 8
    if pos + 4 <= n:
        (k,) = struct.unpack_from("<I", data, pos)
        h = (_rotl(h ^ (k * P1 & M64), 23) * P2 + P3) & M64
        pos += 4
    while pos < n:
        h = _rotl(h ^ (data[pos] * P5 & M64), 11) * P1 & M64
        pos += 1
    h ^= h >> 33
    h = h * P2 & M64
    h ^= h >> 29
    h = h * P3 & M64
    return h ^ (h >> 32)


# Published vectors (xxHash's own tests and python-xxhash's documentation).
XXH64_VECTORS = [(b"", 0xEF46DB3751D8E999), (b"a", 0xD24EC4F1A98C6E5B),
                 (b"abc", 0x44BC2CF5AD770999),
                 (b"Nobody inspects the spammish repetition", 0xFBCEA83C8A378BF1)]


def self_test():
    """Failures of xxh64() on the known vectors (empty when it is right)."""
    return ["xxh64(%r) = %016x, expected %016x" % (d, xxh64(d), want)
            for d, want in XXH64_VECTORS if xxh64(d) != want]


# ---- the salvage directory ----------------------------------------------------------

def unescape(field):
    """An id or name field back to bytes (\\xHH escapes)."""
    out, i = bytearray(), 0
    while i < len(field):
        if field.startswith("\\x", i):
            out.append(int(field[i + 2:i + 4], 16))
            i += 4
        else:
            out.append(ord(field[i]))
            i += 1
    return bytes(out)


def read_salvage(d):
    """(rows, failures): rows are dicts with the columns (numbers as int,
    None for "-")."""
    fails = []
    with open(os.path.join(d, INDEX), encoding="ascii") as f:
        lines = f.read().split("\n")
    if lines[-1] != "":
        fails.append("index.tsv does not end with a newline")
    lines = lines[:-1]
    if not lines or lines[0].split("\t") != COLUMNS:
        return [], fails + ["index.tsv header is %r" % (lines[:1],)]
    rows = []
    for n, line in enumerate(lines[1:], 2):
        fields = line.split("\t")
        if len(fields) != len(COLUMNS):
            fails.append("index.tsv line %d has %d fields" % (n, len(fields)))
            continue
        row = dict(zip(COLUMNS, fields))
        for k in NUMERIC:
            row[k] = None if row[k] == "-" else int(row[k])
        row["xxh64"] = int(row["xxh64"], 16) if len(row["xxh64"]) == 16 else None
        rows.append(row)
    return rows, fails


# ---- what the salvage must hold ---------------------------------------------------

def _clusters(off, length, cs, file_size):
    """Host clusters of [off, off + length) that lie in the file."""
    if length <= 0 or off >= file_size:
        return set()
    end = min(off + length, file_size)
    return set(range(off // cs, (end - 1) // cs + 1))


def _l1_tables(im):
    """[(owner, L1 offset, entries)] of the active image and each snapshot
    whose table is aligned and inside the file."""
    h, cs = im.header, im.cluster_size
    out = [("active", h.l1_table_offset, h.l1_size)]
    # At offset 0 is the header, not snapshot entries (QEMU reads it as
    # them; what they "point to" is header fields).
    snapshots = im.snapshots(within_file=True) if h.snapshots_offset else []
    for k, s in enumerate(snapshots):
        out.append((k, s.l1_table_offset, s.l1_size))
    return [(o, off, n) for o, off, n in out
            if n and off and off % cs == 0 and off + 8 * n <= im.file_size]


def _entry_target(im, entry):
    """(what identifies the target, its host clusters) of an L2 entry."""
    cs = im.cluster_size
    if entry & q.OFLAG_COMPRESSED:
        off, length = im.compressed_range(entry & ~q.OFLAG_COPIED)
        return ("c", off, length), _clusters(off, length, cs, im.file_size)
    off = entry & q.OFFSET_MASK
    if not off:
        return None, set()
    return ("s", off // cs), _clusters(off - off % cs, cs, cs, im.file_size)


def dropped_targets(orig, img):
    """Host clusters (of the file before the repair) that a pointer the
    repair dropped pointed to, from the images before and after."""
    need = set()
    with q.Image(orig) as b, q.Image(img) as a:
        cs, size = b.cluster_size, b.file_size
        hb, ha = b.header, a.header
        after_l1 = {off for _, off, _ in _l1_tables(a)}
        l2_seen = set()
        for owner, l1_off, n in _l1_tables(b):
            if owner != "active" and l1_off not in after_l1:
                need |= _clusters(l1_off, 8 * n, cs, size)  # the snapshot is gone
                continue
            for i, (eb, ea) in enumerate(zip(b.read_table(l1_off, n), a.read_table(l1_off, n))):
                tb, ta = eb & q.OFFSET_MASK, ea & q.OFFSET_MASK
                if not tb:
                    continue
                if tb // cs != ta // cs or not ta:
                    need |= _clusters(tb - tb % cs, cs, cs, size)
                    continue
                if tb % cs or tb + cs > size or tb in l2_seen:
                    continue
                l2_seen.add(tb)
                step = b.l2_entry_size // 8
                for wb, wa in zip(b.read_table(tb, cs // 8)[::step], a.read_table(tb, cs // 8)[::step]):
                    if wb == wa:
                        continue
                    kb, cb = _entry_target(b, wb)
                    ka, _ = _entry_target(a, wa)
                    if kb is not None and kb != ka:
                        need |= cb
        if hb.nb_snapshots and hb.snapshots_offset != ha.snapshots_offset:
            need |= _clusters(hb.snapshots_offset, b.snapshot_table_size(within_file=True), cs, size)
        if hb.refcount_table_offset != ha.refcount_table_offset and hb.refcount_table_offset:
            table = hb.refcount_table_clusters * cs
            need |= _clusters(hb.refcount_table_offset, table, cs, size)
            if hb.refcount_table_offset + table <= size:
                need |= {blk // cs for _, blk in b.refblocks() if blk < size}
        if hb.autoclear_features & q.AUTOCLEAR_BITMAPS and \
                not ha.autoclear_features & q.AUTOCLEAR_BITMAPS:
            need |= b.bitmap_clusters()
    return need


# A refcount before the repair that nobody can read (an unusable refcount
# table): it may have counted the cluster.
UNKNOWN = -1


def refcounts(orig, img, unknown_before=False):
    """({cluster: on-disk refcount} before, the same after) for the clusters
    of the file before the repair, or None when the test reader cannot walk
    the refcount structures. With `unknown_before` (the refcount table was
    unusable), each cluster that held anything but zeros counts as UNKNOWN
    before: a repair that frees it must list and save it; None when the
    repair kept that table (its refcounts are still unknown)."""
    try:
        with q.Image(orig) as b, q.Image(img) as a:
            cs = b.cluster_size
            n = -(-b.file_size // cs)
            table = (b.header.refcount_table_offset, b.header.refcount_table_clusters)
            if unknown_before and table == (a.header.refcount_table_offset,
                                            a.header.refcount_table_clusters):
                return None
            if unknown_before:
                before = {c: UNKNOWN if any(b.read(c * cs, cs)) else 0 for c in range(n)}
            else:
                before = {c: b.refcount(c) for c in range(n)}
            return before, {c: a.refcount(c) for c in range(n)}
    except Exception:  # noqa: BLE001
        return None


def freed(counts):
    """The clusters whose refcount went from > 0 to 0 (counts: refcounts())."""
    before, after = counts
    return {c for c in before if before[c] and not after[c]}


# ---- the check ------------------------------------------------------------------------

def _mapped(b, l1_off, l1_size, guest, length):
    """(host offset the active or snapshot tables at l1_off map guest byte
    `guest` to, entry offset) at the level `length` says: an L1 entry's
    span, or one cluster (an L2 entry). None when it cannot be walked."""
    cs = b.cluster_size
    span = b.l2_entries * cs
    i = guest // span
    if i >= l1_size:
        return None
    l1e = b.read_int(l1_off + 8 * i, 8)
    if length == span:
        return (l1e & q.OFFSET_MASK) - (l1e & q.OFFSET_MASK) % cs, l1_off + 8 * i
    l2 = l1e & q.OFFSET_MASK
    if not l2 or l2 % cs:
        return None
    at = l2 + (guest % span) // cs * b.l2_entry_size
    e = b.read_int(at, 8)
    if e & q.OFLAG_COMPRESSED:
        off, _ = b.compressed_range(e & ~q.OFLAG_COPIED)
        return off - off % cs, at
    off = e & q.OFFSET_MASK
    return off - off % cs, at


def check_attribution(b, row):
    """Whether the snapshot, guest range and pointer a row names are what
    the image before the repair held; a failure string or None."""
    snap = row["snapshot"]
    if snap == "none":
        return None
    h = b.header
    if snap == "active":
        l1_off, l1_size, entry_at = h.l1_table_offset, h.l1_size, None
    else:
        k = int(snap)
        snaps = b.snapshots(within_file=True)
        if k >= len(snaps):
            return "names snapshot %d; the table had %d" % (k, len(snaps))
        s = snaps[k]
        if (unescape(row["snapshot_id"]), unescape(row["snapshot_name"])) != (s.id, s.name):
            return "snapshot %d is %r/%r, the index says %r/%r" % (
                k, s.id, s.name, row["snapshot_id"], row["snapshot_name"])
        l1_off, l1_size, entry_at = s.l1_table_offset, s.l1_size, s.offset
        if row["problem"] in SNAPSHOT_TABLE_PROBLEMS:  # the snapshot itself was dropped
            if row["host_offset"] != l1_off or row["entry_offset"] != entry_at:
                return "a dropped snapshot's L1 table is at 0x%x (entry 0x%x), the index says " \
                       "0x%x (entry %s)" % (l1_off, entry_at, row["host_offset"], row["entry_offset"])
            return None
    if row["guest_offset"] is None:
        return None
    got = _mapped(b, l1_off, l1_size, row["guest_offset"], row["guest_length"])
    if got is None:
        return "guest offset 0x%x of %s is not mapped by a readable table" % (row["guest_offset"], snap)
    host, at = got
    if host != row["host_offset"] or (row["entry_offset"] is not None and at != row["entry_offset"]):
        return "guest bytes 0x%x (+%d) of %s were mapped to 0x%x by the entry at 0x%x; the index " \
               "says 0x%x by the entry at %s" % (row["guest_offset"], row["guest_length"], snap, host,
                                                at, row["host_offset"], row["entry_offset"])
    return None


def check_rows(d, orig):
    """The files of salvage directory `d` against the image before the
    repair: every row's bytes are what the image held at its host offset,
    its xxh64 is theirs, and the snapshot, guest range and pointer it names
    are what the image mapped. Returns (failures, rows, {cluster: row} of
    the whole clusters the rows cover)."""
    fails = self_test()
    names = sorted(os.listdir(d))
    if names != sorted([DATA, INDEX, README]):
        return fails + ["the salvage directory holds %s" % names], [], {}
    rows, f = read_salvage(d)
    fails += f
    covered = {}
    with q.Image(orig) as b, open(os.path.join(d, DATA), "rb") as data:
        cs, size = b.cluster_size, b.file_size
        for row in rows:
            where = "row host 0x%x" % row["host_offset"]
            if row["host_offset"] + row["length"] > size:
                fails.append("%s: ends past the file (%d bytes)" % (where, size))
                continue
            data.seek(row["data_offset"])
            saved = data.read(row["length"])
            if saved != b.read(row["host_offset"], row["length"]):
                fails.append("%s: the saved bytes differ from what the image held" % where)
            if row["xxh64"] != xxh64(saved):
                fails.append("%s: xxh64 %s in the index, the bytes hash to %016x" % (
                    where, "%016x" % row["xxh64"] if row["xxh64"] is not None else "missing",
                    xxh64(saved)))
            why = check_attribution(b, row)
            if why:
                fails.append("%s (%s): %s" % (where, row["problem"], why))
            start, end = row["host_offset"], row["host_offset"] + row["length"]
            for c in range(start // cs, -(-end // cs)):
                # Whole clusters only (the last one may end with the file).
                if start <= c * cs and end >= min((c + 1) * cs, size):
                    covered[c] = row
    return fails, rows, covered


def verify(d, orig, img, summary, counts):
    """Check salvage directory `d` against the image before (`orig`) and
    after (`img`) the repair and the JSON `summary` (repair.salvage):
    check_rows(), the figures, and every cluster the repair freed (by
    `counts`, refcounts() of the two images; None when the refcounts before
    cannot be known) or whose pointer it dropped is saved whole.
    Returns (failures, {"ranges": n, "bytes": n, "clusters": n})."""
    fails, rows, covered = check_rows(d, orig)
    if not rows and fails:
        return fails, {}
    data_size = os.path.getsize(os.path.join(d, DATA))
    if summary.get("ranges") != len(rows) or summary.get("bytes") != data_size:
        fails.append("the JSON says %s ranges, %s bytes; the index has %d rows, clusters.bin %d bytes"
                     % (summary.get("ranges"), summary.get("bytes"), len(rows), data_size))
    need = dropped_targets(orig, img)
    for what, clusters in (("freed", freed(counts) if counts else set()),
                           ("dropped-pointer target", need)):
        missing = sorted(c for c in clusters if c not in covered)
        if missing:
            fails.append("%d %s cluster(s) not in the salvage: %s" % (
                len(missing), what, ", ".join(str(c) for c in missing[:8])))
    return fails, {"ranges": len(rows), "bytes": data_size, "clusters": len(covered)}
