"""Comparing one `qemu-img check` with one `qcheck` check of the same image.

QEMU's diagnostics (standard error) and qcheck's problems (`problems[]` of
its JSON) are both reduced to *events*: a category shared by the two tools
("leak", "copied", "l2-reserved", ...), a key where one is known (a host
cluster), and the count it adds to corruptions, leaks or check errors. The
events of the two sides are matched category by category (by key where
both sides give one); what is left over is the *residual*. Every residual
item, every differing statistic and a differing exit status must be
explained by a rule of the table `RULES`; what no rule explains is a
disagreement, named by a signature that groups like with like.

A rule is one deliberate difference documented in
docs/qemu-img-differences.md (its section is the rule's `doc`), and it is
narrow: it explains only items of its categories, and only when qcheck's
JSON names the problem id (and, where there is one, the host cluster) that
makes the difference deliberate. See docs/oracle.md for the rules and how a
rule is justified.
"""

import re
from collections import Counter

OFFSET_MASK = 0x00FFFFFFFFFFFE00
COUNT_KEYS = ("corruptions", "leaks", "check-errors")
STAT_KEYS = ("image-end-offset", "total-clusters", "allocated-clusters",
             "fragmented-clusters", "compressed-clusters")

# ---- QEMU's diagnostics ------------------------------------------------------

# (regex, category, count kind, key function of the match and cluster size)
_hex = lambda s: int(s, 16)  # noqa: E731
QEMU_LINES = [
    (r"^Leaked cluster (\d+) refcount=(\d+) reference=(\d+)$", "leak", "leaks",
     lambda m, cs: int(m.group(1))),
    (r"^ERROR cluster (\d+) refcount=0 reference=(\d+)$", "refcount-zero", "corruptions",
     lambda m, cs: int(m.group(1))),
    (r"^ERROR cluster (\d+) refcount=(\d+) reference=(\d+)$", "refcount-low", "corruptions",
     lambda m, cs: int(m.group(1))),
    (r"^ERROR OFLAG_COPIED data cluster: l2_entry=([0-9a-f]+) refcount=(\d+)$", "copied", "corruptions",
     lambda m, cs: (_hex(m.group(1)) & OFFSET_MASK) // cs),
    (r"^ERROR OFLAG_COPIED L2 cluster: l1_index=(\d+) l1_entry=([0-9a-f]+) refcount=(\d+)$", "copied",
     "corruptions", lambda m, cs: (_hex(m.group(2)) & OFFSET_MASK) // cs),
    (r"^ERROR: overflow cluster offset=0x([0-9a-f]+)$", "overflow", "corruptions",
     lambda m, cs: _hex(m.group(1)) // cs),
    (r"^ERROR found L1 entry with reserved bits set: ([0-9a-f]+)$", "l1-reserved", "corruptions", None),
    (r"^ERROR found l2 entry with reserved bits set: ([0-9a-f]+)$", "l2-reserved", "corruptions", None),
    (r"^ERROR l2_offset=([0-9a-f]+): Table is not cluster aligned; L1 entry corrupted$", "l1-unaligned",
     "corruptions", None),
    (r"^ERROR offset=([0-9a-f]+): Data cluster is not properly aligned; L2 entry corrupted\.$",
     "l2-unaligned", "corruptions", None),
    (r"^ERROR offset=([0-9a-f]+): Preallocated cluster is not properly aligned; L2 entry corrupted\.$",
     "l2-unaligned", "corruptions", None),
    (r"^ERROR: counting reference for region exceeding the end of the file by one cluster or more: "
     r"offset 0x([0-9a-f]+) size 0x([0-9a-f]+)$", "past-eof", "corruptions", None),
    (r"^ERROR: coffset=0x([0-9a-f]+): copied flag must never be set for compressed clusters$",
     "compressed-copied", "corruptions", None),
    (r"^ERROR compressed cluster (\d+) with data file, entry=0x([0-9a-f]+)$", "compressed-data-file",
     "corruptions", None),
    (r"^ERROR compressed cluster (\d+) with non-zero subcluster allocation bitmap, entry=0x([0-9a-f]+)$",
     "compressed-bitmap", "corruptions", None),
    (r"^ERROR offset=([0-9a-f]+): Allocated cluster has corrupted subcluster allocation bitmap$",
     "subcluster-alloc-zero", "corruptions", None),
    (r"^ERROR: Unallocated cluster has non-zero subcluster allocation map$", "subcluster-unalloc",
     "corruptions", None),
    (r"^ERROR refcount table entry (\d+) has reserved bits set$", "reftable-reserved", "corruptions", None),
    (r"^ERROR refcount block (\d+) is not cluster aligned; refcount table entry corrupted$",
     "refblock-unaligned", "corruptions", None),
    (r"^ERROR refcount block (\d+) is outside image$", "refblock-outside", "corruptions", None),
    (r"^ERROR refcount block (\d+) refcount=(\d+)$", "refblock-refcount", "corruptions", None),
    (r"^ERROR (\d+) snapshots in image with data file$", "snapshots-data-file", "corruptions", None),
    (r"^ERROR snapshot (.*) \((.*)\) l1_offset=0x([0-9a-f]+): L1 table is not cluster aligned; "
     r"snapshot table entry corrupted$", "snapshot-l1-unaligned", "corruptions", None),
    (r"^ERROR snapshot (.*) \((.*)\) l1_size=0x([0-9a-f]+): L1 table is too large; "
     r"snapshot table entry corrupted$", "snapshot-l1-too-large", "corruptions", None),
    (r"^ERROR snapshot table entry (\d+) is incomplete$", "snapshot-incomplete", "corruptions", None),
    (r"^Can't get refcount for cluster (\d+): .*$", "refcount-unreadable", "check-errors",
     lambda m, cs: int(m.group(1))),
]
QEMU_LINES = [(re.compile(r), cat, kind, key) for r, cat, kind, key in QEMU_LINES]

# Lines that count nothing (hints, warnings, follow-ups of a counted line).
QEMU_QUIET = [re.compile(r) for r in (
    r"^qcow2: Image is corrupt: ", r"^qcow2: Marking image as corrupt: ",
    r"^Use qemu-img amend to increase the refcount entry width", r"^qemu-img: Check failed",
    r"^qemu-img: warning: ", r"^Rebuilding refcount structure$", r"^qemu-img: Could not open ",
    r"^Repairing ", r"^qemu-img: Some clusters may be leaked", r"^qemu-img: ERROR ", r"^You can force-remove",
    r"^qemu-img: You can force-remove", r"^Discarding ", r"^qemu-img: Failed to ",
    r"^qemu-img: .*bitmap", r"^ERROR need to rebuild refcount structures$",
    r"^qemu-img: Check of the image", r"^This image format does not support checks",
    r"^qemu-img: This image format does not support checks", r"^Try block-dirty-bitmap-remove",
    r"^qemu-img: Image is not in qcow2 format$", r"^qemu-img: Could not ",
    r"^Some clusters may be leaked, run", r"^qemu-img: Some clusters may be leaked",
)]


class Event:
    __slots__ = ("cat", "kind", "key", "n", "text")

    def __init__(self, cat, kind, key, n, text):
        self.cat, self.kind, self.key, self.n, self.text = cat, kind, key, n, text

    def __repr__(self):
        return "%s%s x%d" % (self.cat, "" if self.key is None else "@%s" % self.key, self.n)


def qemu_events(stderr, cluster_size):
    """(events, unparsed lines) of a qemu-img check's standard error."""
    events, unparsed = [], []
    # QEMU prints this hint without a newline: the next diagnostic follows it
    stderr = re.sub(r"(on the image file to fix\.)(?=\S)", "\\1\n", stderr)
    for line in stderr.splitlines():
        line = line.strip()
        if not line:
            continue
        for rx, cat, kind, keyf in QEMU_LINES:
            m = rx.match(line)
            if m:
                key = keyf(m, cluster_size) if keyf and cluster_size else None
                events.append(Event(cat, kind, key, 1, line))
                break
        else:
            if not any(rx.match(line) for rx in QEMU_QUIET):
                unparsed.append(line)
    return events, unparsed


# ---- qcheck's problems ---------------------------------------------------------

QCHECK_CATEGORY = {
    "refcountLeak": "leak", "refcountTooLow": "refcount-low", "refcountZeroInUse": "refcount-zero",
    "l2CopiedWrong": "copied", "l1CopiedWrong": "copied", "refcountOverflow": "overflow",
    "l1EntryReservedBits": "l1-reserved", "l2EntryReservedBits": "l2-reserved",
    "l1EntryUnaligned": "l1-unaligned", "l2EntryUnaligned": "l2-unaligned",
    "l1EntryPastEof": "past-eof", "l2EntryPastEof": "past-eof", "l1PastEof": "past-eof",
    "snapshotL1PastEof": "past-eof", "reftablePastEof": "past-eof", "snapshotTablePastEof": "past-eof",
    "compressedCopied": "compressed-copied", "compressedWithDataFile": "compressed-data-file",
    "compressedSubclusterBitmap": "compressed-bitmap", "subclusterAllocAndZero": "subcluster-alloc-zero",
    "subclusterAllocUnallocated": "subcluster-unalloc",
    "reftableEntryReservedBits": "reftable-reserved", "reftableEntryUnaligned": "refblock-unaligned",
    "reftableEntryPastEof": "refblock-outside",
    "snapshotL1Unaligned": "snapshot-l1-unaligned", "snapshotL1TooLarge": "snapshot-l1-too-large",
    "snapshotsWithDataFile": "snapshots-data-file", "snapshotExtraTooSmall": "snapshot-incomplete",
    "refcountsUnknown": "refcount-unreadable",
}
CLUSTER_KEYED = {"leak", "refcount-low", "refcount-zero", "copied", "overflow", "refcount-unreadable"}
SEVERITY_KIND = {"corruption": "corruptions", "leak": "leaks", "error": "check-errors"}
HOST_CLUSTERS_RE = re.compile(r"^host clusters? (\d+)(?:-(\d+))?$")
AT_RE = re.compile(r"\bat 0x([0-9a-f]+)")


def problem_clusters(p):
    """Host clusters a problem's object names ("host cluster 7", "host
    clusters 4-8"), or None."""
    m = HOST_CLUSTERS_RE.match(p.get("object", ""))
    if not m:
        return None
    first = int(m.group(1))
    return range(first, int(m.group(2) or first) + 1)


def qcheck_events(result, cluster_size):
    events = []
    for p in result.get("problems", []):
        kind = SEVERITY_KIND.get(p.get("severity"))
        if not kind:
            continue
        cat = QCHECK_CATEGORY.get(p["id"], p["id"])
        if p["id"] == "compressedRangeInvalid" or (p["id"] == "bitmapTableEntryInvalid" and re.search(
                r"past the end of the file", p.get("message", ""))):
            # QEMU: "counting reference for region exceeding the end of the
            # file" (an offset using bits above 55 is past any file too)
            cat = "past-eof"
        n = int(p.get("count", 1))
        if cat in CLUSTER_KEYED:
            if p["id"] == "l1CopiedWrong":
                m = AT_RE.search(p.get("message", ""))
                if m and cluster_size:
                    events.append(Event(cat, kind, _hex(m.group(1)) // cluster_size, n, p["id"]))
                    continue
            clusters = problem_clusters(p)
            if clusters is not None and len(clusters) == n:
                events.extend(Event(cat, kind, c, 1, p["id"]) for c in clusters)
                continue
        events.append(Event(cat, kind, None, n, p["id"]))
    return events


def clusters_of(result, ids):
    """Host clusters qcheck names for these problem ids (any severity)."""
    out = set()
    for p in result.get("problems", []):
        if p.get("id") in ids:
            cl = problem_clusters(p)
            if cl is not None:
                out.update(cl)
    return out


def offsets_named(result, ids):
    """Host offsets named by "at 0x..." in the messages of these ids."""
    out = []
    for p in result.get("problems", []):
        if p.get("id") in ids:
            out += [_hex(m) for m in AT_RE.findall(p.get("message", ""))]
    return out


def problem_ids(result):
    return {p.get("id") for p in result.get("problems", [])}


def expected_exit(result):
    """The exit status qemu-img's rules give for these counts."""
    if result.get("check-errors", 0):
        return 1
    if result.get("corruptions", 0):
        return 2
    if result.get("leaks", 0):
        return 3
    return 0


def human_summary(result):
    """What qemu-img check prints on standard output for a result."""
    g = lambda k: result.get(k, 0)  # noqa: E731
    out = ""
    if not (g("corruptions") or g("leaks") or g("check-errors")):
        out += "No errors were found on the image.\n"
    else:
        if g("corruptions"):
            out += ("\n%d errors were found on the image.\nData may be corrupted, or further writes "
                    "to the image may corrupt it.\n" % g("corruptions"))
        if g("leaks"):
            out += ("\n%d leaked clusters were found on the image.\nThis means waste of disk space, "
                    "but no harm to data.\n" % g("leaks"))
        if g("check-errors"):
            out += "\n%d internal errors have occurred during the check.\n" % g("check-errors")
    if g("total-clusters") and g("allocated-clusters"):
        a, t = g("allocated-clusters"), g("total-clusters")
        out += "%d/%d = %0.2f%% allocated, %0.2f%% fragmented, %0.2f%% compressed clusters\n" % (
            a, t, a * 100.0 / t, g("fragmented-clusters") * 100.0 / a, g("compressed-clusters") * 100.0 / a)
    if g("image-end-offset"):
        out += "Image end offset: %d\n" % g("image-end-offset")
    return out


# ---- the pair ------------------------------------------------------------------

class Pair:
    """One image checked by both tools.

    qemu: the common.Result of `qemu-img check -f qcow2 --output=json`;
    qcheck: the common.Result of `qcheck -f qcow2 --output=json`;
    cluster_size: from qcheck's header (or the file), for keys;
    companions_missing: names the image gives for a backing or data file
    that are not beside it."""

    def __init__(self, qemu, qcheck, cluster_size, companions_missing=(), file_size=0):
        self.qemu, self.qcheck = qemu, qcheck
        self.file_size = file_size
        self.qm = qemu.json() or {}
        self.qc = qcheck.json() or {}
        self.cs = cluster_size
        self.companions_missing = list(companions_missing)
        self.ids = problem_ids(self.qc)
        self.q_events, self.q_unparsed = qemu_events(qemu.err, cluster_size)
        self.c_events = qcheck_events(self.qc, cluster_size)
        self.qemu_opened = "Could not open" not in qemu.err and qemu.rc != 63
        self.qemu_counted = bool(self.qm) and qemu.rc in (0, 1, 2, 3)
        self.qemu_failed = "Check failed" in qemu.err and not self.qm
        err = re.sub(r"(on the image file to fix\.)(?=\S)", "\\1\n", qemu.err)
        lines = [ln for ln in err.splitlines() if ln.startswith("qemu-img: ") and "warning:" not in ln
                 and "Check failed" not in ln]
        self.errors_line = lines[0] if lines else next(
            (ln for ln in err.splitlines() if ln.startswith("qemu-img: ")), "")

    def residual(self):
        """[(side, category, key, n)]: what one side counted and the other
        did not, per category (per key where both sides give keys)."""
        out = []
        cats = {e.cat for e in self.q_events if e.kind} | {e.cat for e in self.c_events}
        for cat in sorted(cats):
            qe = [e for e in self.q_events if e.cat == cat]
            ce = [e for e in self.c_events if e.cat == cat]
            keyed = cat in CLUSTER_KEYED and all(e.key is not None for e in qe + ce)
            if keyed:
                qk = Counter(e.key for e in qe)
                ck = Counter(e.key for e in ce)
                for k, n in (qk - ck).items():
                    out.append(("qemu", cat, k, n))
                for k, n in (ck - qk).items():
                    out.append(("qcheck", cat, k, n))
            else:
                qn, cn = sum(e.n for e in qe), sum(e.n for e in ce)
                if qn > cn:
                    out.append(("qemu", cat, None, qn - cn))
                elif cn > qn:
                    out.append(("qcheck", cat, None, cn - qn))
        return out

    def kinds(self, cat, side):
        events = self.q_events if side == "qemu" else self.c_events
        return {e.kind for e in events if e.cat == cat}


# ---- the rules -------------------------------------------------------------------

class Rule:
    """A deliberate difference. `items(pair, item)` says whether the rule
    explains one residual item; `frees(pair)` lists whole fields (counts,
    statistics, "exit") it makes incomparable for this image, with the
    condition inside. Both must look at qcheck's problem ids."""

    def __init__(self, name, doc, text, item=None, frees=None):
        self.name, self.doc, self.text = name, doc, text
        self._item, self._frees = item, frees

    def explains(self, pair, item):
        return bool(self._item and self._item(pair, item))

    def free_fields(self, pair):
        return set(self._frees(pair)) if self._frees else set()


REFCOUNT_IDS = {"refcountLeak", "refcountTooLow", "refcountZeroInUse", "refcountOrphan",
                "refcountOverflow", "refcountsUnknown"}
UNFOLLOWED_IDS = {"l1EntryPastEof", "l2EntryPastEof", "l1EntryUnaligned", "l2EntryUnaligned"}
NOT_IN_QEMU_IDS = {"l2ZeroFlagInvalid", "dataFileOffsetMismatch", "l2ZeroOffsetCopied", "emptyTableOffsetInvalid",
                   "rawDataFileInvalid", "metadataOverlap", "dataOverlapsMetadata"}
REFTABLE_IDS = {"reftableEntryUnaligned", "reftableEntryReservedBits", "reftableEntryPastEof",
                "reftablePastEof", "reftableOffsetUnaligned", "reftableMissing"}
SNAPSHOT_TABLE_IDS = {"tooManySnapshots", "snapshotTableTooLarge", "snapshotTableUnaligned", "snapshotTableInHeader",
                      "emptyTableOffsetInvalid",
                      "snapshotTablePastEof", "snapshotTableTruncated", "snapshotExtraTooLarge"}
BITMAP_IDS = {"bitmapsExtensionInvalid", "bitmapDirectoryInvalid", "bitmapEntryInvalid", "bitmapNameDuplicate",
              "bitmapUnsupportedByQemu",
              "bitmapTableEntryInvalid", "bitmapsExtensionLength"}

# QEMU refuses to open (or aborts the check of) images with these problems;
# qcheck reports them as corruptions and goes on (§2.4). QEMU's message ->
# the ids of which qcheck must name at least one.
OPEN_REFUSALS = [
    (r"qcow2 header too short|Could not read qcow2 header", {"headerTruncated", "headerLengthInvalid"}),
    (r"qcow2 header exceeds cluster size", {"headerLengthInvalid"}),
    (r"Unsupported cluster size", {"clusterBitsInvalid"}),
    (r"Reference count entry width too large", {"refcountOrderInvalid"}),
    (r"unknown compression type", {"compressionTypeInvalid"}),
    (r"Compression type incompatible feature bit", {"compressionBitMismatch"}),
    (r"Unsupported encryption method", {"cryptMethodInvalid"}),
    (r"Unsupported subcluster size", {"extendedL2ClusterTooSmall"}),
    (r"Invalid backing file offset|Backing file name too long|Could not read backing file name",
     {"backingNameInvalid", "backingNameOverlapsExtensions"}),
    (r"Header extension too large|qcow2_read_extension", {"extensionTruncated", "backingNameOverlapsExtensions"}),
    (r"ext_backing_format", {"backingFormatInvalid"}),
    (r"Could not open backing file: Unknown driver", {"backingFormatUnknown"}),
    (r"CRYPTO header|Encryption header offset", {"encryptionExtensionInvalid"}),
    (r"Active L1 table offset invalid", {"l1OffsetUnaligned", "l1PastEof", "emptyTableOffsetInvalid"}),
    (r"L1 table is too small", {"l1TooSmall"}),
    (r"Reference count table offset invalid", {"reftableOffsetUnaligned", "reftablePastEof"}),
    (r"data-file-raw requires a data file", {"rawDataFileInvalid"}),
    (r"bitmaps_ext|[Bb]itmap", BITMAP_IDS),
    (r"Check failed: Invalid argument", BITMAP_IDS),  # qcow2_check_bitmaps_refcounts(): an unloadable bitmap aborts the check
    (r"[Ss]napshot table|overhanging snapshots|extra metadata in snapshot table", SNAPSHOT_TABLE_IDS),
    (r"Active L1 table too large|Reference count table too large", {"qemuLimitExceeded"}),
    (r"Image is too big", {"l1TooSmall", "qemuLimitExceeded"}),
]
OPEN_REFUSALS = [(re.compile(r), ids) for r, ids in OPEN_REFUSALS]
REFUSAL_IDS = set().union(*(ids for _, ids in OPEN_REFUSALS))


# Header problems after which qcheck stops (nothing behind the header can
# be located, §2.4): QEMU may refuse the image for another header field it
# reads first; both refuse it.
HEADER_STOP_IDS = {"headerTruncated", "clusterBitsInvalid", "headerLengthInvalid", "refcountOrderInvalid"}


def qemu_refused_with_id(pair):
    """QEMU could not open the image or could not complete the check, and
    qcheck names a problem id that is the reason (§2.4)."""
    if pair.qemu_counted and not pair.qemu_failed:
        return False
    if not pair.qemu_opened and pair.ids & (HEADER_STOP_IDS | REFUSAL_IDS):
        # QEMU stops at the first refusal it meets, qcheck reports them all:
        # both refuse the image, for this reason or another one
        return True
    text = "\n".join(ln for ln in pair.qemu.err.splitlines() if "warning:" not in ln)
    return any(rx.search(text) and (ids & pair.ids) for rx, ids in OPEN_REFUSALS)


def _all_fields():
    return set(COUNT_KEYS) | set(STAT_KEYS) | {"exit", "residual"}


def _copied_follows_refcount(pair, item):
    side, cat, key, _ = item
    if cat != "copied" or key is None:
        return False
    if side == "qemu":
        # QEMU judged COPIED by a refcount qcheck reports as wrong for that
        # cluster, or by the refcount of a cluster qcheck did not follow.
        if key in clusters_of(pair.qc, REFCOUNT_IDS):
            return True
        if any(off // pair.cs == key for off in offsets_named(pair.qc, UNFOLLOWED_IDS)):
            return True
        # past the end of the file, where qcheck reports entries pointing
        # (beyond the 20 it names one by one, in its summary finding)
        return key * pair.cs >= pair.file_size > 0 and bool(pair.ids & {"l1EntryPastEof", "l2EntryPastEof"})
    # qcheck: the computed references disagree with an on-disk refcount
    # that COPIED agrees with (a cross-link, or refcount 0 for a cluster
    # with one reference).
    return key in clusters_of(pair.qc, REFCOUNT_IDS - {"refcountOrphan"})


SKIPPED_IDS = UNFOLLOWED_IDS | {
    "metadataOverlap", "reftableEntryPastEof", "reftableEntryUnaligned", "reftableEntryReservedBits",
    "snapshotL1Unaligned", "snapshotL1PastEof", "snapshotL1TooLarge", "snapshotTableTruncated",
    "snapshotTablePastEof", "snapshotTableUnaligned", "snapshotTableInHeader", "tooManySnapshots",
    "compressedRangeInvalid", "l1PastEof"}


def _copied_clear_not_judged(pair, item):
    """§2.3: when a structure was skipped, "a COPIED flag that is clear
    where only one reference was found is not reported either": QEMU's
    OFLAG_COPIED error for an entry without COPIED and refcount 1."""
    side, cat, key, n = item
    if side != "qemu" or cat != "copied" or key is None or not pair.ids & SKIPPED_IDS:
        return False
    clear = [e for e in pair.q_events if e.cat == "copied" and e.key == key and
             re.search(r"_entry=([0-9a-f]+) refcount=1$", e.text) and
             not _hex(re.search(r"_entry=([0-9a-f]+)", e.text).group(1)) >> 63]
    return len(clear) >= n


def _orphans(pair, item):
    side, cat, key, _ = item
    return side == "qemu" and cat == "leak" and key is not None and \
        key in clusters_of(pair.qc, {"refcountOrphan"})


def _unaligned_data_followed(pair, item):
    """QEMU counts an unaligned data cluster over the clusters its range
    touches (check_refcounts_l2()): refcount errors there are QEMU's, not the image's."""
    side, cat, key, n = item
    if side != "qemu" or "l2EntryUnaligned" not in pair.ids:
        return False
    if cat == "past-eof":
        # the unaligned range itself lies past the end of the file
        offs = {_hex(e.text.split("offset=")[1].split(":")[0]) for e in pair.q_events if e.cat == "l2-unaligned"}
        return n <= sum(1 for e in pair.q_events if e.cat == "past-eof" and
                        _hex(e.text.split("offset 0x")[1].split()[0]) in offs)
    if key is None or cat not in ("refcount-low", "refcount-zero", "leak", "copied", "overflow"):
        return False
    return any(first <= key <= last for first, last in straddled(pair))


def straddled(pair):
    """(first, last) host clusters of each unaligned L2 entry QEMU counted:
    it counts data and preallocated clusters alike over the clusters their
    unaligned range touches (check_refcounts_l2 in check mode)."""
    out = []
    for e in pair.q_events:
        if e.cat == "l2-unaligned" and pair.cs:
            off = _hex(e.text.split("offset=")[1].split(":")[0])
            out.append((off // pair.cs, (off + pair.cs - 1) // pair.cs))
    return out


def _unaligned_data_fields(pair):
    """QEMU's image end offset may be the end of a straddled range."""
    if "l2EntryUnaligned" in pair.ids and straddled(pair) and \
            pair.qm.get("image-end-offset", 0) <= (max(last for _, last in straddled(pair)) + 1) * pair.cs:
        return {"image-end-offset"}
    return ()


def _l2_tables_not_walked(pair):
    """qcheck reports an L2 table it does not walk that QEMU parses: an
    unaligned L1 entry that QEMU follows too ("Table is not cluster
    aligned", check_refcounts_l1()), or an L2 table that loses a metadataOverlap (§2.9)."""
    if "l1EntryUnaligned" in pair.ids and any(e.cat == "l1-unaligned" for e in pair.q_events):
        return True
    return any(p.get("id") == "metadataOverlap" and re.match(r"L[12] table", p.get("object", ""))
               for p in pair.qc.get("problems", []))


def _table_not_walked(pair, item):
    return item[0] == "qemu" and _l2_tables_not_walked(pair)


def _table_not_walked_stats(pair):
    if _l2_tables_not_walked(pair):
        return {"allocated-clusters", "fragmented-clusters", "compressed-clusters", "image-end-offset"}
    return ()


def _header_walked(pair, item):
    """An L1 entry with L2 table offset 0 and other bits set: QEMU follows
    it and parses the header cluster as an L2 table (its events, qemu side,
    are of that walk); qcheck reports l1ZeroOffsetFlags and follows nothing
    (§2.2)."""
    side, cat, _, _ = item
    return "l1ZeroOffsetFlags" in pair.ids and (side == "qemu" or cat == "l1ZeroOffsetFlags")


def _header_walked_stats(pair):
    if "l1ZeroOffsetFlags" in pair.ids:
        return {"allocated-clusters", "fragmented-clusters", "compressed-clusters", "image-end-offset"}
    return ()


def _overlap_clusters(pair):
    """Host clusters qcheck names as shared by two structures (metadata
    overlap) or as guest data on metadata."""
    out = set()
    for p in pair.qc.get("problems", []):
        if p.get("id") == "metadataOverlap":
            out.add(p.get("offset", 0) // pair.cs)
            out.update(off // pair.cs for off in (_hex(m) for m in AT_RE.findall(p.get("message", ""))))
        elif p.get("id") == "dataOverlapsMetadata":
            m = re.search(r"host cluster 0x([0-9a-f]+)", p.get("message", ""))
            if m:
                out.add(_hex(m.group(1)) // pair.cs)
    return out


def _overlap_as_refcount(pair, item):
    """QEMU has no overlap analysis: two structures in one cluster show up
    as a refcount error on that cluster, a COPIED error, or "refcount block
    N refcount=2" (§2.9)."""
    side, cat, key, _ = item
    if side != "qemu" or not pair.ids & {"metadataOverlap", "dataOverlapsMetadata"}:
        return False
    if cat == "refblock-refcount":
        return any("refcount block" in p.get("object", "") + p.get("message", "")
                   for p in pair.qc.get("problems", [])
                   if p.get("id") in ("metadataOverlap", "dataOverlapsMetadata"))
    return cat in ("refcount-low", "copied") and key is not None and key in _overlap_clusters(pair)


def _refcounts_unknown(pair, item):
    """An unusable refcount table entry or table (reftable*): QEMU cannot
    read those refcounts ("Can't get refcount", a check error per cluster,
    free ones too) or reads them through the masked or past-EOF offset;
    qcheck reports refcountsUnknown for the clusters in use (§2.4, §2.2)."""
    side, cat, key, _ = item
    if not refcount_blocks_unusable(pair):
        return False
    if cat == "refcount-unreadable":
        return True
    if side == "qemu" and cat in ("refcount-zero", "refcount-low", "leak", "copied") and key is not None:
        if key in clusters_of(pair.qc, {"refcountsUnknown"}) or covered_by_unusable_block(pair, key):
            return True
        # the refcount block behind an entry with reserved bits: not counted by QEMU
        return cat == "leak" and key in {
            (v & ~0x1FF) // pair.cs for v in (
                _hex(m) for p in pair.qc.get("problems", []) if p.get("id") == "reftableEntryReservedBits"
                for m in re.findall(r"entry is 0x([0-9a-f]+)", p.get("message", "")))}
    return False


def covered_by_unusable_block(pair, cluster):
    """The cluster's refcount lives in a refcount block qcheck does not use
    (an entry with a reftableEntry* problem, or a block that loses an
    overlap), or the whole refcount table is unusable."""
    bits = ((pair.qc.get("header") or {}).get("refcount-bits") or 16)
    per_block = pair.cs * 8 // bits if pair.cs else 0
    for p in pair.qc.get("problems", []):
        pid, obj = p.get("id"), p.get("object", "")
        if pid in ("reftablePastEof", "reftableOffsetUnaligned", "reftableMissing"):
            return True
        m = re.match(r"refcount (?:table entry|block) (\d+)$", obj)
        if m and per_block and (pid in REFTABLE_IDS or pid == "metadataOverlap"):
            if int(m.group(1)) == cluster // per_block:
                return True
    return False


def refcount_blocks_unusable(pair):
    """qcheck names why refcount blocks cannot be used: a reftable* problem,
    or a refcount block that loses a metadataOverlap."""
    return bool(pair.ids & REFTABLE_IDS) or any(
        p.get("id") == "metadataOverlap" and p.get("object", "").startswith("refcount block")
        for p in pair.qc.get("problems", []))


def _refcounts_unknown_fields(pair):
    if "refcountsUnknown" in pair.ids and refcount_blocks_unusable(pair):
        return {"image-end-offset"}  # QEMU stops at the last cluster it could read (§2.4)
    return ()


def _compressed_bitmap_range(pair, item):
    """QEMU does not count the host range of a compressed entry with a
    non-zero subcluster bitmap (check_refcounts_l2()): its clusters look leaked to QEMU;
    qcheck reports compressedSubclusterBitmap and counts them (§2.10)."""
    side, cat, key, _ = item
    if side != "qemu" or cat != "leak" or key is None or "compressedSubclusterBitmap" not in pair.ids:
        return False
    bits = pair.cs.bit_length() - 1
    x = 62 - (bits - 8)
    for e in pair.q_events:
        if e.cat == "compressed-bitmap":
            entry = _hex(e.text.rsplit("entry=0x", 1)[1])
            off = entry & ((1 << x) - 1)
            sectors = ((entry >> x) & ((1 << (bits - 8)) - 1)) + 1
            end = (off & ~511) + sectors * 512
            if off // pair.cs <= key <= (end - 1) // pair.cs:
                return True
    return False


def _compressed_bitmap_stats(pair):
    """check_refcounts_l2(): QEMU stops at such an entry before counting it in the
    statistics; qcheck counts it as an allocated compressed cluster."""
    n = sum(1 for e in pair.q_events if e.cat == "compressed-bitmap")
    if n and "compressedSubclusterBitmap" in pair.ids and \
            pair.qc.get("allocated-clusters", 0) - pair.qm.get("allocated-clusters", 0) == n:
        return {"allocated-clusters", "fragmented-clusters", "compressed-clusters"}
    return ()


def _not_in_qemu(pair, item):
    return item[0] == "qcheck" and item[1] in NOT_IN_QEMU_IDS


def _data_file_copied(pair, item):
    return item[0] == "qemu" and item[1] == "copied" and "dataFileCopiedMissing" in pair.ids


def _overflow_per_cluster(pair, item):
    side, cat, key, _ = item
    return side == "qemu" and cat == "overflow" and key is not None and \
        key in clusters_of(pair.qc, {"refcountOverflow"})


# Categories of QEMU's per-entry L2 errors (one message per bad entry).
L2_ENTRY_CATS = {"l2-reserved", "l2-unaligned", "past-eof", "subcluster-alloc-zero", "subcluster-unalloc",
                 "compressed-copied", "compressed-bitmap", "compressed-data-file"}


def _shared_l2_counted_once(pair, item):
    """§2.10: QEMU walks the L2 tables of every L1 table (active and each
    snapshot), so an entry error in an L2 table they share counts once per
    L1 table; qcheck checks each L2 table once. Only where qcheck reports
    the same kind of error and QEMU's count is at most qcheck's times the
    number of L1 tables."""
    side, cat, key, _ = item
    if side != "qemu" or cat not in L2_ENTRY_CATS:
        return False
    snapshots = (pair.qc.get("header") or {}).get("snapshots") or 0
    qn = sum(e.n for e in pair.q_events if e.cat == cat)
    cn = sum(e.n for e in pair.c_events if e.cat == cat)
    return snapshots > 0 and 0 < cn and qn <= cn * (snapshots + 1)


def _snapshot_entry_past_eof(pair, item):
    """§2.6: a last snapshot entry that runs past the end of the file is
    qcheck's snapshotEntryPastEof; when it runs a cluster or more past the
    end, QEMU's check says the table's range exceeds the end of the file
    and does not count the table's cluster (a leak there)."""
    side, cat, key, _ = item
    if side == "qemu" and cat in ("past-eof", "leak"):
        entries = [p.get("offset", 0) // pair.cs for p in pair.qc.get("problems", [])
                   if p.get("id") == "snapshotEntryPastEof"]
        return bool(entries) and (key is None or key in entries)
    return side == "qcheck" and cat == "snapshotEntryPastEof"


TABLE_PAST_EOF_IDS = {"l1PastEof", "snapshotL1PastEof", "reftablePastEof", "snapshotTablePastEof"}


def _table_past_eof(pair, item):
    """§2.2: a table the header (or a snapshot) places partly past the end
    of the file is qcheck's corruption, not read; QEMU reads zeros there
    (qcow2_inc_refcounts_imrt()) and counts its clusters at and past the end of the file as in use
    (refcount 0, or a leak of the last partial one), or nothing."""
    side, cat, key, n = item
    found = [p for p in pair.qc.get("problems", []) if p.get("id") in TABLE_PAST_EOF_IDS or (
        p.get("id") == "bitmapsExtensionInvalid" and "past the end of the file" in p.get("message", ""))]
    if not found:
        return False
    if side == "qcheck":
        return cat in ("past-eof", "bitmapsExtensionInvalid") and n <= sum(int(p.get("count", 1)) for p in found)
    last_partial = pair.file_size // pair.cs if pair.cs else None
    return cat in ("refcount-zero", "refcount-low", "leak") and key is not None and \
        last_partial is not None and key >= last_partial


# what qcheck reports when a structure reaches past the end of the file
PAST_EOF_IDS = TABLE_PAST_EOF_IDS | {"l1EntryPastEof", "l2EntryPastEof", "reftableEntryPastEof",
                                     "snapshotEntryPastEof", "snapshotTableTruncated", "compressedRangeInvalid",
                                     "bitmapsExtensionInvalid", "bitmapTableEntryInvalid", "tooManySnapshots"}


def _end_offset_past_eof(pair):
    """§1.5: QEMU's image end offset can lie past the end of the file (it
    counts ranges that end less than a cluster past it); qcheck's is where
    the data the file holds ends."""
    qe, ce = pair.qm.get("image-end-offset"), pair.qc.get("image-end-offset")
    if qe is None or ce is None or not pair.cs or not pair.file_size or not pair.ids & PAST_EOF_IDS:
        return ()
    inside = -(-pair.file_size // pair.cs) * pair.cs
    return {"image-end-offset"} if qe > pair.file_size and ce <= inside < qe else ()


SNAPSHOT_COUNT_IDS = {"tooManySnapshots", "snapshotTableTruncated", "snapshotTablePastEof"}


def _snapshot_entries_past_table(pair, item):
    """§2.10: QEMU reads the entries past the end of the file as zeros and
    reports each one it cannot complete (none when the zeros make whole
    entries); qcheck reports the count once."""
    side, cat, _, _ = item
    if not pair.ids & SNAPSHOT_COUNT_IDS:
        return False
    return (side == "qemu" and cat == "snapshot-incomplete") or (side == "qcheck" and cat in SNAPSHOT_COUNT_IDS)


# (id, message regex) -> (start, length in bytes, given the cluster size).
# §2.2 documents the tolerance for L2 tables, refcount blocks and bitmap
# data clusters; qcheck reports the first past the end with l1EntryPastEof
# (the other two are covered by refcounts-unknown and the bitmap ids). The
# L1 and refcount tables and snapshot L1 tables are not in that list: their
# differences are disagreements (class N-J) until the document says so.
PAST_EOF_RANGES = [
    ("l1EntryPastEof", r"points to an L2 table at 0x([0-9a-f]+)", lambda m, cs: (_hex(m.group(1)), cs)),
]
PAST_EOF_RANGES = [(pid, re.compile(rx), f) for pid, rx, f in PAST_EOF_RANGES]


def tolerated_past_eof(pair):
    """Ranges qcheck reports as (partly) past the end of the file that QEMU
    accepts: they end less than one cluster past it (qcow2_inc_refcounts_imrt())."""
    out = []
    for p in pair.qc.get("problems", []):
        for pid, rx, f in PAST_EOF_RANGES:
            m = rx.search(p.get("message", "")) if p.get("id") == pid else None
            if m and pair.cs:
                start, length = f(m, pair.cs)
                if 0 < start and start + length - pair.file_size < pair.cs:
                    out.append((start, length))
    return out


def _past_eof_tolerance(pair, item):
    side, cat, key, _ = item
    ranges = tolerated_past_eof(pair)
    if not ranges:
        return False
    if side == "qcheck":
        return cat == "past-eof"
    return cat in ("refcount-zero", "refcount-low", "leak", "copied") and key is not None and any(
        start // pair.cs <= key <= (start + length - 1) // pair.cs for start, length in ranges)


def _past_eof_tolerance_stats(pair):
    """§1.5: the statistics differ where qcheck does not walk an L2 table
    QEMU walks; QEMU walks the part of a cut table inside the file."""
    if tolerated_past_eof(pair):
        return {"allocated-clusters", "fragmented-clusters", "compressed-clusters"}
    return ()


def _header_finding_counted(pair, item):
    """A header or extension problem adds 1 to qcheck's corruptions (codes
    1xx, 2xx); QEMU counts only what it finds behind the header. Only for
    a count on an image both call corrupt: a verdict QEMU does not share is
    not a count difference."""
    side, cat, key, _ = item
    if side != "qcheck" or not pair.qm.get("corruptions"):
        return False
    codes = {p.get("id"): p.get("code", 0) for p in pair.qc.get("problems", [])}
    return 100 < codes.get(cat, 0) < 300


def _companions_missing(pair):
    if not pair.qemu_opened and (pair.companions_missing or (
            "dataFileNameMissing" in pair.ids and "'data-file' is required" in pair.qemu.err) or
            "encrypt.key-secret' is required" in pair.qemu.err):
        return _all_fields()
    return ()


def _header_read_as_table(pair):
    """§2.10: QEMU parses the header cluster as the snapshot table or the
    refcount table at offset 0 and counts what it finds there; qcheck reads
    no table there."""
    at_zero = any(p.get("id") == "reftableMissing" and "offset 0x0," in p.get("message", "")
                  for p in pair.qc.get("problems", []))
    return set(COUNT_KEYS) | {"residual"} if "snapshotTableInHeader" in pair.ids or at_zero else ()


def _qemu_refused(pair):
    return _all_fields() if qemu_refused_with_id(pair) else ()


RULES = [
    Rule("copied-vs-computed-refcount", "§2.1",
         "COPIED is judged against the computed refcount. QEMU's OFLAG_COPIED error for a cluster whose "
         "on-disk refcount qcheck reports wrong (refcountLeak, refcountTooLow, refcountZeroInUse, "
         "refcountOrphan, refcountOverflow, refcountsUnknown on that cluster) or that qcheck did not follow "
         "(l1/l2EntryPastEof, l1/l2EntryUnaligned naming it); qcheck's l1/l2CopiedWrong for a cluster whose "
         "on-disk refcount it reports wrong (the on-disk value agrees with COPIED: a cross-link, or "
         "refcount 0 for a cluster with one reference)",
         item=_copied_follows_refcount),
    Rule("copied-clear-not-judged", "§2.3",
         "a structure qcheck skipped (" + ", ".join(sorted(SKIPPED_IDS)) + "): QEMU's OFLAG_COPIED error for "
         "an entry whose COPIED is clear with refcount 1, which qcheck does not report then",
         item=_copied_clear_not_judged),
    Rule("orphans-not-leaks", "§2.3",
         "a leak in QEMU's count is a refcountOrphan warning in qcheck's, for the same cluster",
         item=_orphans),
    Rule("unaligned-data-followed", "§2.2",
         "QEMU counts an unaligned data or preallocated cluster (\"... is not properly aligned\") over the "
         "clusters it straddles; qcheck reports l2EntryUnaligned and counts nothing: QEMU's refcount, "
         "leak and COPIED events on exactly those clusters, its past-EOF error for that range, and its "
         "image end offset up to their end",
         item=_unaligned_data_followed, frees=_unaligned_data_fields),
    Rule("table-not-walked", "§2.2, §2.9",
         "QEMU parses a table qcheck does not walk (l1EntryUnaligned that QEMU also reports as "
         "\"Table is not cluster aligned\", or an L1 or L2 table that loses a metadataOverlap): QEMU's "
         "own events (qemu side only) and the cluster statistics",
         item=_table_not_walked, frees=_table_not_walked_stats),
    Rule("header-walked-as-l2", "§2.2",
         "an L1 entry with L2 table offset 0 but other bits set (l1ZeroOffsetFlags): QEMU parses the "
         "header cluster as its L2 table, qcheck follows nothing: QEMU's events (qemu side), qcheck's "
         "l1ZeroOffsetFlags, the cluster statistics and the image end offset",
         item=_header_walked, frees=_header_walked_stats),
    Rule("overlap-as-refcount", "§2.9",
         "QEMU has no overlap analysis: a cluster qcheck reports in metadataOverlap or dataOverlapsMetadata "
         "is QEMU's refcount or COPIED error on that cluster, or \"refcount block N refcount=R\" "
         "when a refcount block is involved",
         item=_overlap_as_refcount),
    Rule("refcounts-unknown", "§2.4, §2.2",
         "an unusable refcount table entry or table (reftable* ids, or a refcount block that loses a "
         "metadataOverlap): QEMU's check errors \"Can't get "
         "refcount\" against qcheck's refcountsUnknown, QEMU's refcount errors on clusters qcheck reports "
         "refcountsUnknown, the refcount block behind an entry with reserved bits as QEMU's leak, and "
         "QEMU's image end offset",
         item=_refcounts_unknown, frees=_refcounts_unknown_fields),
    Rule("checks-qemu-does-not-make", "§2.6",
         "corruptions QEMU's check does not look for: " + ", ".join(sorted(NOT_IN_QEMU_IDS)),
         item=_not_in_qemu),
    Rule("data-file-copied-warning", "§2.8",
         "with an external data file a missing COPIED flag is dataFileCopiedMissing (a warning), "
         "QEMU's OFLAG_COPIED error",
         item=_data_file_copied),
    Rule("past-eof-tolerance", "§2.2",
         "qcheck requires tables to lie entirely inside the file, QEMU accepts a range that ends less "
         "than one cluster past the end (qcow2_inc_refcounts_imrt()): qcheck's l1EntryPastEof for an L2 table that ends less than one "
         "cluster past the end, QEMU's refcount, leak or COPIED events on its clusters, and the cluster "
         "statistics (QEMU walks the part inside the file, §1.5)",
         item=_past_eof_tolerance, frees=_past_eof_tolerance_stats),
    Rule("table-past-eof", "§2.2",
         "a table placed partly past the end of the file (" + ", ".join(sorted(TABLE_PAST_EOF_IDS)) + ", "
         "bitmapsExtensionInvalid for a bitmap directory past the end): "
         "qcheck's corruption, and QEMU's refcount or leak events on the clusters at and past the end of the "
         "file, which it reads as zeros and counts as in use",
         item=_table_past_eof),
    Rule("end-offset-past-eof", "§1.5",
         "a structure reaching past the end of the file (" + ", ".join(sorted(PAST_EOF_IDS)) + "): QEMU's "
         "image end offset past the end of the file (ranges it counts up to a cluster past it), qcheck's at "
         "most the file's size rounded up to a cluster",
         frees=_end_offset_past_eof),
    Rule("header-finding-counted", "§2.10",
         "a header or extension problem (codes 1xx, 2xx) counts 1 in qcheck's corruptions and nothing in "
         "QEMU's, on an image QEMU also counts corruptions in",
         item=_header_finding_counted),
    Rule("compressed-bitmap-range", "§2.10",
         "QEMU does not count the host range of a compressed entry with a subcluster bitmap (check_refcounts_l2()) and "
         "calls its clusters leaked, nor the entry in the statistics; qcheck reports "
         "compressedSubclusterBitmap and counts both",
         item=_compressed_bitmap_range, frees=_compressed_bitmap_stats),
    Rule("shared-l2-counted-once", "§2.10",
         "an entry error in an L2 table shared by the active and snapshot L1 tables: QEMU counts it once "
         "per L1 table, qcheck once (QEMU's extra events of a per-entry category qcheck also reports, up to "
         "qcheck's count times the number of L1 tables)",
         item=_shared_l2_counted_once),
    Rule("snapshot-entry-past-eof", "§2.6",
         "a last snapshot entry running past the end of the file is snapshotEntryPastEof, which QEMU's check "
         "does not report; when the entry ends a cluster or more past the end, QEMU's \"exceeding the end "
         "of the file\" error and the leak of the table's cluster instead",
         item=_snapshot_entry_past_eof),
    Rule("snapshot-count-once", "§2.10",
         "a snapshot count larger than the table (" + ", ".join(sorted(SNAPSHOT_COUNT_IDS)) + "): QEMU's "
         "\"snapshot table entry N is incomplete\" for each entry it reads as zeros past the end of the "
         "file (none when the zeros make whole entries), qcheck's one finding",
         item=_snapshot_entries_past_table),
    Rule("overflow-per-cluster", "§2.10",
         "refcountOverflow counts a cluster once, QEMU once per reference beyond the maximum",
         item=_overflow_per_cluster),
    Rule("header-read-as-table", "§2.10",
         "a snapshot table at offset 0 (snapshotTableInHeader) or a refcount table at offset 0 "
         "(reftableMissing naming offset 0x0): QEMU reads the header cluster as that table and counts its "
         "own errors about it, qcheck reads no table there: the counts",
         frees=_header_read_as_table),
    Rule("qemu-cannot-open", "§2.4",
         "QEMU cannot open the image, or aborts its check, for a header, extension, snapshot table or "
         "bitmap problem that qcheck names by its id (QEMU's message -> ids: OPEN_REFUSALS), or, when "
         "QEMU could not open the image at all, for any reason when qcheck names another open refusal "
         "(QEMU stops at the first) or stopped after the header (" + ", ".join(sorted(HEADER_STOP_IDS)) +
         "): QEMU has no counts to compare",
         frees=_qemu_refused),
    Rule("companions-missing", "§2.7",
         "the backing or data file the image names is not there (or an external data file is not "
         "named: dataFileNameMissing, an info of §2.6; or a LUKS image whose key is not given): QEMU "
         "cannot open the image, qcheck does not need the file or the key", frees=_companions_missing),
]


class Verdict:
    """The comparison of a pair: disagreements (signature, detail) and the
    rules that were needed."""

    def __init__(self):
        self.disagreements = []
        self.observations = []
        self.fired = Counter()
        self.free = set()


def compare(pair, label="check"):
    """Compare a pair; returns a Verdict. `label` prefixes signatures
    ("check", "after qcheck -r all", ...)."""
    v = Verdict()
    for rule in RULES:
        f = rule.free_fields(pair)
        if f:
            v.free |= f
            v.fired[rule.name] += 1
    qm, qc = pair.qm, pair.qc
    if pair.qcheck.rc is None or pair.qcheck.rc < 0:
        v.disagreements.append(("%s: qcheck crashed or hung (exit %s)" % (label, pair.qcheck.rc),
                                pair.qcheck.err[-300:]))
        return v
    if pair.qemu.rc is None:
        # QEMU's time, not qcheck's fault: an observation, nothing to compare
        v.observations.append(("qemu-img check took more than %d s" % 60, label))
        return v
    if "exit" in v.free and "residual" in v.free:
        return v
    if not pair.qemu_counted or pair.qemu_failed:
        # QEMU has no counts: the exit statuses are all there is.
        if pair.qemu.rc != pair.qcheck.rc:
            v.disagreements.append((
                "%s: qemu-img exit %s (%s), qcheck exit %s" % (
                    label, pair.qemu.rc, normalise(pair.errors_line), pair.qcheck.rc),
                "qcheck ids: %s" % ", ".join(sorted(pair.ids))))
        return v
    unexplained = []
    used = set()
    for item in pair.residual():
        rules = [r for r in RULES if r.explains(pair, item)]
        if rules:
            used.add(rules[0].name)
        else:
            unexplained.append(item)
    v.fired.update(used)  # once per check that needed the rule
    if unexplained and "residual" not in v.free:
        q = sorted({"%s(%s)" % (c, "/".join(sorted(pair.kinds(c, "qemu")))) for s, c, k, n in unexplained
                    if s == "qemu"})
        c = sorted({"%s(%s)" % (c, "/".join(sorted(pair.kinds(c, "qcheck")))) for s, c, k, n in unexplained
                    if s == "qcheck"})
        sig = "%s: counted only by qemu-img: %s; only by qcheck: %s" % (
            label, ", ".join(q) or "-", ", ".join(c) or "-")
        detail = "; ".join("%s %s%s x%d" % (s, c, "" if k is None else "@%s" % k, n)
                           for s, c, k, n in unexplained[:12])
        v.disagreements.append((sig, detail))
    # totals: each tool's own events must add up to its own counts
    for key in COUNT_KEYS:
        q_sum = sum(e.n for e in pair.q_events if e.kind == key)
        c_sum = sum(e.n for e in pair.c_events if e.kind == key)
        if c_sum != qc.get(key, 0):
            v.disagreements.append(("%s: qcheck's problems do not add up to its %s" % (label, key),
                                    "problems %d, JSON %d" % (c_sum, qc.get(key, 0))))
        if q_sum != qm.get(key, 0) and not pair.q_unparsed:
            v.disagreements.append(("oracle: qemu-img's diagnostics add up to other %s than its JSON" % key,
                                    "%d vs %d" % (q_sum, qm.get(key, 0))))
    if pair.q_unparsed:
        v.disagreements.append(("oracle: unparsed qemu-img diagnostic: %s" % normalise(pair.q_unparsed[0]),
                                "; ".join(pair.q_unparsed[:3])))
    for key in STAT_KEYS:
        if key in v.free:
            continue
        if qm.get(key, 0) != qc.get(key, 0):
            v.disagreements.append(("%s: %s differs" % (label, key) + context_ids(pair),
                                    "qemu-img %s, qcheck %s" % (qm.get(key, 0), qc.get(key, 0))))
    if "exit" not in v.free and pair.qemu.rc != pair.qcheck.rc:
        # Exits that follow from each tool's own counts differ because the
        # counts do, which is explained or reported above.
        if pair.qemu.rc != expected_exit(qm) or pair.qcheck.rc != expected_exit(qc):
            v.disagreements.append(("%s: exit %s vs %s not explained by the counts" % (
                label, pair.qemu.rc, pair.qcheck.rc), "qemu %s, qcheck %s" % (
                {k: qm.get(k, 0) for k in COUNT_KEYS}, {k: qc.get(k, 0) for k in COUNT_KEYS})))
    return v


def context_ids(pair):
    """Corruption-severity ids of qcheck, to group statistic differences."""
    ids = sorted({p["id"] for p in pair.qc.get("problems", []) if p.get("severity") in ("corruption",)})
    return " [qcheck: %s]" % (", ".join(ids) if ids else "clean")


def normalise(text):
    """A message with numbers and names blanked, for signatures."""
    text = re.sub(r"'[^']*'", "'…'", text)
    text = re.sub(r"0x[0-9a-fA-F]+|\b[0-9a-f]{6,}\b|\d+", "N", text)
    return text[:160]
