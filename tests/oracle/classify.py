"""Classes of disagreements: what the oracle found, named once.

Each class is a disagreement between qcheck and qemu-img that has been
looked at by hand: what QEMU does, what qcheck does, and which is right
(docs/oracle.md §5 has the reasoning, a minimal reproduction and the QEMU
source fact for each). `classify(report, signature, detail)` names the class
of one disagreement from its signature and the subject's facts, so the
summary of a run groups thousands of lines into the classes, and a new kind
of disagreement stands out as "unclassified".

A class is not a rule: classified disagreements still fail the run. Only
compare.RULES (documented, deliberate differences) make a difference pass.
"""

import re

# (class id, title, test(signature, detail, report) -> bool); first match wins.
CLASSES = []


def cls(cid, title):
    def wrap(f):
        CLASSES.append((cid, title, f))
        return f
    return wrap


def muts(report):
    return " ".join(report.get("origin", {}).get("mutations") or [])


@cls("K1", "QEMU refuses to open or check the image for a header problem qcheck does not report: qcheck "
     "calls it clean (exit 0/3), or corrupt for other reasons")
def _k1(sig, detail, r):
    if "doesn't satisfy the constraints" in sig:
        return False  # N-U
    if re.search(r"qemu-img exit 1 \(.*(Could not open|ERROR snapshot table|Check failed).*\), qcheck exit [03]$",
                 sig):
        return True
    if re.search(r"qemu-img exit 1 \(.*(Header extension too large|[Ss]napshot table offset invalid)", sig):
        return True
    return sig.startswith("implication 1") and "qemu-img info fails" in sig


@cls("N-U", "a persistent bitmap the specification allows but QEMU refuses (granularity below 512 bytes, "
     "an extra-data flag): qcheck warns (bitmapUnsupportedByQemu) and exits 0, QEMU cannot open the image")
def _nu(sig, detail, r):
    return "doesn't satisfy the constraints" in sig


@cls("K2", "-r leaks does not fix COPIED flags (QEMU's -r leaks does once the image is otherwise clean), and "
     "so keeps leaked clusters whose COPIED it would have to set at refcount 2 (exit 3)")
def _k2(sig, detail, r):
    return sig.startswith("implication 2 (-r leaks)") and bool(
        re.search(r"left (l1|l2)CopiedWrong$", sig) or sig.endswith("exit 3, left refcountLeak"))


@cls("K3", "-r all keeps orphaned clusters after dropping the pointer that owned them (exit 3)")
def _k3(sig, detail, r):
    return sig.startswith("implication 2 (-r all)") and sig.endswith("exit 3, left refcountLeak")


@cls("K4", "command-line contract (-f qcow2 on a file that is not qcow2 exits 63, not 1)")
def _k4(sig, detail, r):
    return re.search(r"(not in qcowN format|Unsupported qcowN version N)\), qcheck exit 63", sig) is not None


@cls("N-B", "an L2 table shared by several L1 tables (active and snapshots): QEMU counts each bad entry "
     "once per L1 table that references it, qcheck once")
def _nb(sig, detail, r):
    m = re.match(r"(check|after qcheck -r \w+): counted only by qemu-img: ([^;]*); only by qcheck: -$", sig)
    if not m:
        return False
    cats = {c.split("(")[0] for c in m.group(2).split(", ")}
    per_entry = {"l2-reserved", "l2-unaligned", "past-eof", "subcluster-alloc-zero", "subcluster-unalloc",
                 "compressed-copied", "compressed-bitmap", "compressed-data-file"}
    return cats <= per_entry and (r.get("facts", {}).get("snapshots") or 0) > 0


@cls("N-C", "image end offset past the end of the file: QEMU counts a range that ends less than one "
     "cluster past EOF (qcow2_inc_refcounts_imrt()) and reports its end; qcheck stops at the file")
def _nc(sig, detail, r):
    if "image-end-offset differs" not in sig:
        return False
    m = re.match(r"qemu-img (\d+), qcheck (\d+)", detail)
    return bool(m) and int(m.group(1)) > int(m.group(2)) and int(m.group(1)) > r.get("facts", {}).get("file", 1 << 62)


@cls("N-F", "a snapshot table that runs past the end of the file (count, offset or entry sizes): QEMU "
     "zero-fills what it reads past EOF, accepting a cut entry or reading zeros as entries (each "
     "\"incomplete\"; its -r all writes them back as phantom snapshots); qcheck reports "
     "tooManySnapshots/snapshotTableTruncated/snapshotTablePastEof, cannot repair some of them, and "
     "orphans what the lost entries owned")
def _nf(sig, detail, r):
    if "counted only by qemu-img" in sig and ids(r) & {"tooManySnapshots", "snapshotTableTruncated",
                                                        "snapshotTablePastEof"}:
        return True
    if re.search(r"snapshotTableTruncated|snapshotTablePastEof|tooManySnapshots", sig) and (
            "only by qcheck" in sig or sig.startswith("implication 2")):
        return True
    return "snapshot-incomplete" in sig and bool(
        re.search(r"tooManySnapshots|snapshotTableTruncated|snapshotTablePastEof", sig) or
        ids(r) & {"tooManySnapshots", "snapshotTableTruncated", "snapshotTablePastEof"})


@cls("N-H", "a header table at offset 0 (the snapshot table with nb_snapshots > 0, the refcount table): QEMU "
     "parses the header cluster as that table; qcheck reports snapshotTableInHeader or reftableMissing and "
     "does not read it")
def _nh(sig, detail, r):
    if "snapshot-l1" in sig and ("snapshotTableInHeader" in sig or "snapshotTableInHeader" in ids(r)):
        return True
    return "reftable-reserved" in sig and "refcount_table_offset: " in muts(r) and muts(r).rstrip().endswith("-> 0")


def ids(r):
    return set(r.get("facts", {}).get("ids") or [])


@cls("N-J", "a structure that ends past the end of the file (an L1 or refcount table, the bitmap directory): "
     "QEMU zero-fills the part past EOF and uses the rest (it accepts any range ending less than one "
     "cluster past EOF, qcow2_inc_refcounts_imrt()); qcheck uses none of it (l1PastEof, reftablePastEof, bitmapsExtensionInvalid): "
     "what lies inside the file goes unchecked, the verdict is 2 where QEMU's is 0 (both repairs complete with "
     "zeros what ends less than a cluster past EOF, -r all also an L1 table that starts inside the file or "
     "at its end)")
def _nj(sig, detail, r):
    if "bitmapsExtensionInvalid" in sig and "file cut" in muts(r):
        return True
    if re.search(r"only by qcheck: past-eof", sig):
        return True  # a range QEMU accepts because it ends less than a cluster past EOF
    if re.search(r"implication 2 \(-r leaks\).*left (l1EntryPastEof|refcountsUnknown, reftablePastEof)$", sig):
        return True  # QEMU accepts the table; -r leaks took back a zero extension that found new problems
    if not ids(r) & {"l1PastEof", "reftablePastEof", "snapshotL1PastEof"}:
        return False
    return "counted only by qemu-img" in sig or "clusters differs" in sig or bool(
        re.search(r"left (l1PastEof|reftablePastEof|snapshotL1PastEof)", sig))


@cls("N-L", "a backing format naming a driver QEMU does not have: QEMU cannot open the image, qcheck "
     "says nothing about it")
def _nl(sig, detail, r):
    return "Unknown driver" in sig




@cls("N-V", "a refcount overflow on a cluster whose refcount block qcheck cannot use: QEMU reports it (the "
     "overflow is of the computed count), qcheck only refcountsUnknown")
def _nv(sig, detail, r):
    return "counted only by qemu-img: overflow" in sig and bool(ids(r) & {"refcountsUnknown"})


@cls("Q", "QEMU's repair reaches exit 0 by changing guest data (observation, not qcheck's fault)")
def _q(sig, detail, r):
    return sig.startswith("qemu-img -r")


def classify(report, sig, detail):
    for cid, title, test in CLASSES:
        try:
            if test(sig, detail, report):
                return cid
        except (KeyError, TypeError, ValueError):
            continue
    return "new"


def titles():
    return {cid: title for cid, title, _ in CLASSES}
