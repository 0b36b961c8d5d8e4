"""The corruption catalogue: one row per test case.

A case = a base image (build_images.BASES), a patch applied to a copy of it
with qcow2lib, the problem ids qcheck must report (all of them; more may
appear), qcheck's exit code, and what qemu-img check 7.2 does with the same
file (`Qemu`). The reasons name the QEMU 7.2 code that behaves so (a
function of block/qcow2.c, qcow2-refcount.c, qcow2-snapshot.c or
qcow2-bitmap.c) or quote the sentence qemu-img prints; "differences §N" is
a section of docs/qemu-img-differences.md, "repair.md §11 H1".."H8" the
harmful QEMU repairs listed there, and structure names are the sections of
the qcow2 specification (QEMU's docs/interop/qcow2.txt).

Patches read what they need before they damage anything, and keep refcounts
consistent when they add or move structures (qcow2lib.append_clusters), so
that each case carries only the inconsistency it is named after.
"""

import os
import re
from dataclasses import dataclass, field

import qcow2lib as q
from qcow2lib import OFLAG_COPIED, OFLAG_ZERO, OFFSET_MASK

PROBLEMS_DEF = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                            "..", "..", "checker", "include", "qcheck_problems.def")


def load_problem_table(path=PROBLEMS_DEF):
    """{id: (code, severity)} from checker/include/qcheck_problems.def."""
    with open(path) as f:
        text = f.read()
    rows = re.findall(r'QC_PROBLEM\(\s*\w+,\s*(\d+),\s*"(\w+)",\s*(\w+),', text)
    return {pid: (int(code), sev.lower()) for code, pid, sev in rows}


# ---- what qemu-img check says ---------------------------------------------

FULL, COUNTS, EXIT, DIFFERS = "full", "counts", "exit", "differs"


@dataclass(frozen=True)
class Qemu:
    """Expected relation between qemu-img check and qcheck.

    full    same exit code, corruptions, leaks, image-end-offset and
            total/allocated/fragmented/compressed clusters, and qcheck's
            human summary contains qemu-img's stdout lines;
    counts  same exit code, corruptions and leaks;
    exit    same exit code only (`why` says why the counts differ);
    differs deliberate difference: qemu-img exits `exit` (observed with
            qemu-img 7.2.22) for the reason `why`.
    `opens` is False when qemu-img check cannot even open the image.
    `normal_open` says whether a normal read-only open works (`qemu-io -r`,
    as a VM opens the image: with the key, the backing chain and the data
    file, and parsing the snapshot table, which check mode skips); None
    means the same as `opens`. An image QEMU refuses there must not be
    called clean by qcheck (exit 0 or 3), unless `outside` says why the
    refusal is about something outside the image (a missing file it names,
    an option the user must give)."""
    relation: str
    exit: int = None
    why: str = ""
    opens: bool = True
    normal_open: bool = None
    outside: str = ""

    @property
    def agrees(self):
        return self.relation != DIFFERS

    @property
    def opens_normally(self):
        return self.opens if self.normal_open is None else self.normal_open


def exit_only(why, opens=True):
    return Qemu(EXIT, why=why, opens=opens)


def differs(qemu_exit, why, opens=True):
    return Qemu(DIFFERS, qemu_exit, why, opens)


def cannot_open(why):
    """QEMU refuses the image at open time (exit 1) while qcheck reports it."""
    return Qemu(DIFFERS, 1, why, opens=False)


def check_aborts(why):
    """QEMU opens the image in check mode only (which skips the snapshot
    table and tolerates a missing refcount table), and its check stops with
    an error (exit 1)."""
    return Qemu(DIFFERS, 1, why, opens=True, normal_open=False)


def needs_outside(why):
    """QEMU cannot open the image without something outside it: a file it
    names, an option the user must give (qcheck checks the image alone)."""
    return Qemu(DIFFERS, 1, why, opens=False, outside=why)


def refused_too(why):
    """Neither tool checks the image; both exit 1."""
    return Qemu(EXIT, why=why, opens=False)


BAD_HEADER = ("QEMU refuses to open an image with this header field (%s) and exits 1; "
              "qcheck reports a corruption (differences §2.4)")
BAD_BITMAP = ("QEMU cannot open an image with a broken bitmap (%s; differences §2.4) and exits 1; "
              "qcheck reports it and checks the rest")
NOT_FOLLOWED = ("qcheck does not follow the bad pointer while QEMU parses or counts through it (%s), "
                "so counts differ")
COPIED_DOUBLE = ("QEMU's OFLAG_COPIED pass compares against on-disk refcounts and counts the same "
                 "cluster again (check_oflag_copied(); differences §2.1)")


@dataclass(frozen=True)
class Case:
    name: str
    base: str
    patch: object  # callable(qcow2lib.Image) or None
    expect: frozenset  # problem ids that must all be reported
    exit: int
    qemu: Qemu
    companions: bool = True  # copy backing/data files for qemu-img
    qemu_target: object = None  # override of the base's qemu-img arguments
    format: str = None  # non-qcow2 files: what qcheck must call them
    header: dict = field(default_factory=dict)  # subset of JSON "header"
    absent: frozenset = frozenset()  # problem ids qcheck must NOT report
    qcheck_args: tuple = ()  # extra qcheck options


CASES = []


def case(name, base, patch, expect, exit, qemu, absent="", **kw):
    CASES.append(Case(name, base, patch, frozenset(expect.split()), exit, qemu,
                      absent=frozenset(absent.split()), **kw))


# Clusters that only a pointer qcheck did not follow could own must be
# quarantined (refcountOrphan), never reported as leaks that a repair would
# free (docs/repair.md §11, H1 and H4; problem 611 in qcheck_problems.def). Cases whose
# unfollowed structure may own unreferenced clusters say absent=QUARANTINED.
QUARANTINED = "refcountLeak"
# When snapshots cannot be followed, COPIED in the active tables cannot be
# judged: "fixing" it would make guest writes land in clusters a snapshot
# still uses.
SNAPSHOTS_UNKNOWN = "refcountLeak l2CopiedWrong"


# ---- patch vocabulary --------------------------------------------------------
# Each helper returns a callable(im). Values may be callables of the image.

def _val(v, im):
    return v(im) if callable(v) else v


def chain(*patches):
    def p(im):
        for x in patches:
            x(im)
    return p


def header(**fields):
    def p(im):
        values = {k: _val(v, im) for k, v in fields.items()}  # read all first
        for k, v in values.items():
            im.set_header_field(k, v)
    return p


def header_bits(name, set=0, clear=0):
    return lambda im: im.set_header_bits(name, set, clear)


def past_eof(clusters=16):
    """An aligned offset well past the end of the file."""
    return lambda im: q.align_up(im.file_size, im.cluster_size) + clusters * im.cluster_size


def l1_entry(fn, index=0):
    """Replace active L1 entry `index` with fn(im, old)."""
    def p(im):
        im.set_l1_entry(index, fn(im, im.l1()[index]))
    return p


def entry(select, fn, bitmap=None):
    """Replace an L2 entry chosen by select(im) with fn(im, ref); with
    `bitmap`, replace the extended-L2 bitmap by bitmap(im, ref) too."""
    def p(im):
        r = select(im)
        value = fn(im, r)
        bits = bitmap(im, r) if bitmap else None
        im.write_int(r.entry_offset, 8, value)
        if bits is not None:
            im.write_int(r.entry_offset + 8, 8, bits)
    return p


def data(n=0):
    return lambda im: im.data_refs()[n]


def unallocated(n=0):
    return lambda im: im.unallocated_refs()[n]


def compressed(n=0):
    return lambda im: im.compressed_refs()[n]


def first(pred):
    return lambda im: next(r for r in im.mappings() if pred(r))


def snapshot_l2(snap=0, n=0):
    """The n-th data entry of snapshot `snap`'s L2 tables."""
    def sel(im):
        s = im.snapshots()[snap]
        return im.data_refs(l1_offset=s.l1_table_offset, l1_size=s.l1_size)[n]
    return sel


def set_bits(mask):
    return lambda im, r: r.entry | mask


def clear_bits(mask):
    return lambda im, r: r.entry & ~mask


def point_at(target, flags=OFLAG_COPIED):
    """Entry pointing at the host offset target(im)."""
    return lambda im, r: flags | target(im)


def move_by(delta):
    return lambda im, r: r.entry + delta


def l1_offset(im):
    return im.header.l1_table_offset


def reftable_offset(im):
    return im.header.refcount_table_offset


def refblock0(im):
    return im.refblocks()[0][1]


def l2_table0(im):
    return im.l1()[0] & OFFSET_MASK


def leak_cluster(im):
    """An unreferenced cluster with refcount 1 appended at the end."""
    im.append_clusters()


def data_refcount(value, n=0):
    def p(im):
        im.set_refcount(im.data_refs()[n].host_offset // im.cluster_size, value)
    return p


def crosslink(extra=1, disk_refcount=None):
    """Make `extra` unallocated guest clusters map the first data cluster
    too (COPIED set, as a careless writer would)."""
    def p(im):
        target = im.data_refs()[0].host_offset
        for r in im.unallocated_refs()[:extra]:
            im.write_int(r.entry_offset, 8, OFLAG_COPIED | target)
        if disk_refcount is not None:
            im.set_refcount(target // im.cluster_size, disk_refcount)
    return p


def overflow(im):
    """One more reference to a data cluster than the refcount width holds;
    the on-disk refcount is at its maximum so only the overflow is wrong."""
    top = (1 << im.refcount_bits) - 1
    crosslink(extra=top, disk_refcount=top)(im)


def edit_extension(magic, fn):
    """Replace the data of the (last) extension `magic` by fn(im, data)."""
    def p(im):
        exts = list(im.extensions)
        i = max(k for k, e in enumerate(exts) if e.magic == magic)
        exts[i] = q.Extension(magic, fn(im, exts[i].data))
        im.replace_extensions(exts)
    return p


def drop_extension(magic):
    return lambda im: im.replace_extensions([e for e in im.extensions if e.magic != magic])


def add_extension(magic, payload, where=0):
    def p(im):
        exts = list(im.extensions)
        exts.insert(where, q.Extension(magic, _val(payload, im)))
        im.replace_extensions(exts)
    return p


def bitmaps_ext(nb=None, reserved=None, size=None, offset=None):
    """Rewrite fields of the bitmaps extension (None keeps a field)."""
    def fn(im, data):
        cur = q.BITMAPS_EXT.unpack(data)
        new = [c if v is None else _val(v, im) for c, v in zip(cur, (nb, reserved, size, offset))]
        return q.BITMAPS_EXT.pack(*new)
    return edit_extension(q.EXT_BITMAPS, fn)


def _entry_field(entries, fields, index, name, fn):
    """Rewrite field `name` of entry `index` of a table of variable-length
    entries (snapshots, bitmap directory) with fn(image, old value)."""
    def p(im):
        e = entries(im)[index]
        off, size = fields[name]
        im.write_int(e.offset + off, size, fn(im, im.read_int(e.offset + off, size)))
    return p


def bitmap_field(index, name, fn):
    return _entry_field(lambda im: im.bitmaps(), q.Bitmap.FIELDS, index, name, fn)


def bitmap_table_entry(index, fn):
    """Rewrite the first data-cluster entry of bitmap `index`'s table."""
    def p(im):
        b = im.bitmaps()[index]
        i = next(k for k, e in enumerate(im.bitmap_table(b)) if e & OFFSET_MASK)
        old = im.read_int(b.table_offset + 8 * i, 8)
        im.write_int(b.table_offset + 8 * i, 8, fn(im, old))
    return p


def bitmap_tail_bit(index):
    """Set the first bit past the end of the disk in the last data cluster
    of bitmap `index` (the tail the specification requires to be zero)."""
    def p(im):
        b = im.bitmaps()[index]
        granule = 1 << b.granularity_bits
        bits = ((im.header.size & ~511) + granule - 1) // granule
        per_cluster = im.cluster_size * 8
        last = (bits - 1) // per_cluster
        data = im.bitmap_table(b)[last] & OFFSET_MASK
        assert data and bits % per_cluster, "bitmap %d has no tail to set" % index
        at = data + (bits % per_cluster) // 8
        im.write(at, bytes([im.read(at, 1)[0] | 1 << bits % 8]))
    return p


def rewrite_bitmap_directory(edit):
    """Re-encode the bitmap directory in place after edit(im, [Bitmap])
    changed the entries, and update the extension's directory size (the
    directory's cluster has room for the few bytes more)."""
    def p(im):
        bitmaps = im.bitmaps()
        edit(im, bitmaps)
        raw = b"".join(b.encode() for b in bitmaps)
        nb, _, size, offset = im.bitmaps_ext()
        assert len(raw) <= q.align_up(size, im.cluster_size)
        im.write(offset, raw)
        bitmaps_ext(size=len(raw))(im)
    return p


def bitmap_big_table(index, entries):
    """Mark bitmap `index` in use and give it a table of `entries` entries
    (its old entries, then zeros) in clusters of its own."""
    def p(im):
        b = im.bitmaps()[index]
        old = im.read(b.table_offset, 8 * b.table_size)
        new = im.append_clusters(count=-(-8 * entries // im.cluster_size))
        im.write(new, old)
        im.free_clusters(b.table_offset, 8 * b.table_size)
        im.set_bitmap_field(index, "bitmap_table_offset", new)
        im.set_bitmap_field(index, "bitmap_table_size", entries)
        im.set_bitmap_field(index, "flags", b.flags | 1)
    return p


def snapshot_field(index, name, fn):
    return _entry_field(lambda im: im.snapshots(), q.Snapshot.FIELDS, index, name, fn)


def rewrite_snapshots(edit):
    """Rewrite the snapshot table (relocated, refcounts kept right) after
    edit(im, [Snapshot]) changed the entries in place."""
    def p(im):
        snaps = im.snapshots()
        edit(im, snaps)
        im.write_snapshot_table(snaps)
    return p


def truncate_snapshot_table(im):
    """Move the snapshot table to the end of the file, then cut the file
    8 bytes before the end of the last entry."""
    off = im.write_snapshot_table(im.snapshots())
    im.truncate(off + im.snapshot_table_size() - 8)


def truncate_entry(keep, edit=None, index=-1):
    """Move the snapshot table to the end of the file (after edit(im, [Snapshot])
    changed the entries) and cut the file `keep` bytes into its entry
    `index` (default: the last)."""
    def p(im):
        snaps = im.snapshots()
        if edit:
            edit(im, snaps)
        off = im.write_snapshot_table(snaps)
        im.truncate(off + sum(len(x.encode()) for x in snaps[:index % len(snaps)]) + keep)
    return p


def unknown_extra(index, size):
    """Give snapshot `index` `size` bytes of extra data past the 24 known
    bytes, in a pattern a test can recognise."""
    def edit(im, snaps):
        snaps[index].extra = snaps[index].extra[:24] + bytes((7 * i + 1) & 0xFF for i in range(size))
    return edit


def both(*edits):
    def edit(im, snaps):
        for e in edits:
            e(im, snaps)
    return edit


def add_empty_snapshot(im):
    """An internal snapshot of an empty disk (all-zero L1 of its own)."""
    h = im.header
    l1 = im.append_clusters(count=-(-8 * h.l1_size // im.cluster_size))
    extra = q.SNAPSHOT_EXTRA.pack(0, h.size, -1)
    im.write_snapshot_table([q.Snapshot(l1, h.l1_size, 0, 0, 0, 0, extra, b"1", b"s1")])


def snapshot_create_failed(im):
    """A snapshot creation that stopped after QEMU raised the refcounts of
    the active L2 tables and data clusters (clearing their COPIED flags) and
    wrote the copy of the L1 table, but before the snapshot table listed the
    snapshot (qcow2_snapshot_create): each of those clusters has one
    reference more on disk than found, COPIED clear, and the L1 copy is
    leaked. An interrupted deletion of the only snapshot leaves the same."""
    cs = im.cluster_size
    l1 = im.l1()
    for i, e in enumerate(l1):
        if e & OFFSET_MASK:
            c = (e & OFFSET_MASK) // cs
            im.set_refcount(c, im.refcount(c) + 1)
            im.set_l1_entry(i, e & ~OFLAG_COPIED)
    for r in im.data_refs():
        c = r.host_offset // cs
        im.set_refcount(c, im.refcount(c) + 1)
        im.write_int(r.entry_offset, 8, r.entry & ~OFLAG_COPIED)
    im.append_clusters(b"".join(q.be(8, e & ~OFLAG_COPIED) for e in l1))


def snapshot_create(im):
    """A complete internal snapshot of the active image, made as QEMU makes
    one: the references of snapshot_create_failed, then the table entry
    pointing to the L1 copy. Active and snapshot then share every L2
    table."""
    snapshot_create_failed(im)
    h = im.header
    l1 = q.align_up(im.file_size, im.cluster_size) - im.cluster_size  # the L1 copy
    extra = q.SNAPSHOT_EXTRA.pack(0, h.size, -1)
    im.write_snapshot_table(im.snapshots() + [q.Snapshot(l1, h.l1_size, 0, 0, 0, 0, extra, b"9", b"sc")])


def own_data(snap):
    """The first data entry of snapshot `snap` whose cluster nothing else
    uses (refcount 1)."""
    def sel(im):
        s = im.snapshots()[snap]
        return next(r for r in im.data_refs(l1_offset=s.l1_table_offset, l1_size=s.l1_size)
                    if im.refcount(r.host_offset // im.cluster_size) == 1)
    return sel


def drop_snapshots(keep):
    """A snapshot deletion that stopped after QEMU wrote the snapshot table
    without the snapshot, before it dropped the references of the deleted
    snapshot's tables (qcow2_snapshot_delete): the clusters it shared with
    the others have one reference more on disk than found."""
    return lambda im: im.write_snapshot_table(im.snapshots()[:keep])


def with_backing_name(name):
    """Add a backing file name after the extensions (no format extension)."""
    return lambda im: im.replace_extensions(im.extensions, backing_name=name)


def shift_extensions(header_length):
    """Set header_length and move the extension area to start there, as a
    writer honouring that header_length would have placed it."""
    def p(im):
        exts = im.extensions
        im.set_header_field("header_length", header_length)
        im.replace_extensions(exts, header_length=header_length)
    return p


def end_marker_missing(im):
    """Extensions end exactly where the backing name starts: no end marker."""
    im.replace_extensions(im.extensions, end_marker=False)


def extension_length(magic, length):
    """Overwrite the length field of extension `magic` in place."""
    return lambda im: im.write_int(im.extension(magic).offset + 4, 4, _val(length, im))


def end_marker_length(length):
    """Write `length` into the length field of the end-of-extensions marker;
    length(im, at) may depend on where the marker is. QEMU checks that
    field like any extension's before it looks at the type
    (qcow2_read_extensions(): "Header extension too large")."""
    def p(im):
        last = im.extensions[-1] if im.extensions else None
        at = last.offset + 8 + q.align_up(len(last.data), 8) if last else im.header.header_length
        im.write_int(at + 4, 4, length(im, at) if callable(length) else length)
    return p


def extension_padding(magic, pad):
    """Overwrite the padding bytes after extension `magic`'s data."""
    def p(im):
        e = im.extension(magic)
        im.write(e.offset + 8 + len(e.data), pad)
    return p


def fde(fn):
    """Rewrite the LUKS header pointer extension: fn(offset, length)."""
    return edit_extension(q.EXT_FDE, lambda im, d: q.CRYPTO_EXT.pack(*fn(*q.CRYPTO_EXT.unpack(d))))


def luks_header(offset, data):
    """Overwrite bytes of the LUKS header the encryption extension points to."""
    def p(im):
        im.write(q.CRYPTO_EXT.unpack(im.extension(q.EXT_FDE).data)[0] + offset, data)
    return p


def luks_slot(index, field, value):
    """Set a 32-bit field of LUKS key slot `index` (0 active, 4 iterations,
    40 key material offset, 44 stripes)."""
    return luks_header(208 + 48 * index + field, q.be(4, value))


def huge_reftable(im):
    """Move the refcount table to the end of the file and grow it past
    QEMU's 8 MiB limit (the new clusters are sparse zeros)."""
    h, cs = im.header, im.cluster_size
    clusters = (8 << 20) // cs + 1
    old = im.read(h.refcount_table_offset, h.refcount_table_clusters * cs)
    new = q.align_up(im.file_size, cs)
    im.truncate(new + clusters * cs)
    im.write(new, old)
    im.set_range_refcount(new, clusters * cs, 1)
    im.free_clusters(h.refcount_table_offset, h.refcount_table_clusters * cs)
    im.set_header_field("refcount_table_offset", new)
    im.set_header_field("refcount_table_clusters", clusters)


def huge_l1(im):
    """Move the active L1 table to the end of the file and grow it past
    QEMU's 32 MiB limit (the new entries are sparse zeros)."""
    h, cs = im.header, im.cluster_size
    entries = (32 << 20) // 8 + 1
    old = im.read(h.l1_table_offset, 8 * h.l1_size)
    new = q.align_up(im.file_size, cs)
    im.truncate(q.align_up(new + 8 * entries, cs))
    im.write(new, old)
    im.set_range_refcount(new, 8 * entries, 1)
    im.free_clusters(h.l1_table_offset, 8 * h.l1_size)
    im.set_header_field("l1_table_offset", new)
    im.set_header_field("l1_size", entries)


def empty_l1(offset):
    """A disk of size 0 with no L1 entries, the L1 offset set to
    offset(im); what the old tables mapped is leaked."""
    return header(size=0, l1_size=0, l1_table_offset=offset)


def huge_snapshot_table(im):
    """A snapshot table just over QEMU's 64 MiB limit: 520 entries with
    65535-byte ids and names (iotest 261), written sparse at the end of the
    file. The snapshots have empty L1 tables; ids are unique."""
    extra = q.SNAPSHOT_EXTRA.pack(0, 0, -1)
    size = 65535
    # the 64 bytes of fixed fields and extra data; ids and names stay zero
    head = q.Snapshot(0, 0, 0, 0, 0, 0, extra, b"", b"").encode(id_size=size, name_size=size)
    stride = q.align_up(len(head) + 2 * size, 8)
    start = q.align_up(im.file_size, im.cluster_size)
    for i in range(520):
        im.write(start + i * stride, head + str(i).encode())
    end = start + 520 * stride
    im.truncate(q.align_up(end, im.cluster_size))
    im.set_range_refcount(start, end - start, 1)
    im.set_header_field("snapshots_offset", start)
    im.set_header_field("nb_snapshots", 520)


def cut_at_eof(table, keep=0, refcount=1):
    """Move a table (table(im) -> (offset, bytes, set_offset)) to fresh
    clusters at the end of the file, its old clusters freed, then cut the
    file `keep` bytes into it (None: just after its last non-zero byte): QEMU
    reads the rest as zeros (oracle classes N-G, N-J: a repair must keep the
    refcount of the cut table's cluster, and completes the table with
    zeros). `refcount` 0: as an older qcheck's repair left an L1 table, the
    table's cluster freed."""
    def p(im):
        off, nbytes, set_offset = table(im)
        data = im.read(off, nbytes)
        new = im.append_clusters(data, refcount=refcount)
        set_offset(im, new)
        im.free_clusters(off, nbytes)
        cut = keep if keep is not None else q.align_up(len(data.rstrip(b"\0")) or 1, 8)
        im.truncate(new + cut)
    return p


def active_l1(im):
    return (im.header.l1_table_offset, 8 * im.header.l1_size,
            lambda im, v: im.set_header_field("l1_table_offset", v))


def snapshot_l1(index):
    def t(im):
        s = im.snapshots()[index]
        return (s.l1_table_offset, 8 * s.l1_size,
                lambda im, v: snapshot_field(index, "l1_table_offset", lambda im, old: v)(im))
    return t


def l2_table(l1_index):
    def t(im):
        entry = im.l1()[l1_index]
        return (entry & OFFSET_MASK, im.cluster_size,
                lambda im, v: im.set_l1_entry(l1_index, v | (entry & ~OFFSET_MASK)))
    return t


def reftable(im):
    return (im.header.refcount_table_offset, im.header.refcount_table_clusters * im.cluster_size,
            lambda im, v: im.set_header_field("refcount_table_offset", v))


def refblock_cut_at_eof(im):
    """Move refcount block 0 to a fresh cluster at the end of the file and
    cut the file just after the refcount of its last cluster in use: what
    the end of the file cuts off counts nothing."""
    cs = im.cluster_size
    old = im.refblocks()[0][1]
    new = q.align_up(im.file_size, cs)
    im.write(new, im.read(old, cs))
    im.set_reftable_entry(0, new)
    im.set_refcount(new // cs, 1)
    im.set_refcount(old // cs, 0)
    im.truncate(new + q.align_up((new // cs + 1) * im.refcount_bits, 64) // 8)


def truncate_to(size):
    return lambda im: im.truncate(size)


def overwrite(offset, data):
    return lambda im: im.write(offset, data)


# ---- the catalogue -------------------------------------------------------------

CLEAN_BASES = ["v3_512", "v3_4k", "v3_64k", "v3_2m", "v2_64k", "v2_512",
               "rc1", "rc2", "rc4", "rc8", "rc16", "rc32", "rc64", "rc64_512",
               "zlib", "zstd", "zlib_4k", "extl2", "extl2_16k", "data_file",
               "data_file_raw", "lazy_clean", "snapshots", "bitmaps", "backing", "luks"]

# -- clean images: nothing of severity corruption/leak/error, qemu-img agrees
#    on everything it prints.
for b in CLEAN_BASES:
    case("clean_" + b, b, None, "", 0, Qemu(FULL))
case("clean_backing_nofmt", "backing_nofmt", None, "backingFormatMissing", 0, Qemu(FULL))
case("clean_snapshot_l1_copied", "snapshots",
     lambda im: [im.set_l1_entry(0, e | OFLAG_COPIED, s.l1_table_offset)
                 for s in im.snapshots() for e in im.read_table(s.l1_table_offset, 1)],
     "", 0, Qemu(FULL))  # the spec: COPIED is meaningless in snapshot L1s

# -- not qcow2 at all: exit 63, like qemu-img when it probes the format
for b, fmt in [("raw", "raw"), ("empty", None), ("qcow", "qcow"), ("vmdk", "vmdk")]:
    qemu = (differs(0, "QEMU's %s driver has its own check; qcheck only checks qcow2" % b)
            if b == "vmdk" else Qemu(EXIT))
    case("notqcow2_" + b, b, None, "", 63, qemu, format=fmt)
# -- QED images are checked: tests/qed/run_qed.py has their cases
case("notqcow2_bad_magic", "v3_64k", header(magic=0x514649FC), "", 63, Qemu(EXIT),
     qemu_target=lambda path: [path], format="raw")  # qemu-img's probing falls back to raw

# -- header fields (qcow2 spec, "Header")
case("hdr_version_4", "v3_64k", header(version=4), "versionUnsupported", 1,
     refused_too("both refuse to interpret an unknown version (qcow2_do_open())"))
case("hdr_cluster_bits_8", "v3_64k", header(cluster_bits=8), "clusterBitsInvalid", 2,
     cannot_open(BAD_HEADER % "\"Unsupported cluster size\""))
case("hdr_cluster_bits_22", "v3_64k", header(cluster_bits=22), "clusterBitsInvalid", 2,
     cannot_open(BAD_HEADER % "\"Unsupported cluster size\""))
case("hdr_length_short", "v3_64k", header(header_length=96), "headerLengthInvalid", 2,
     cannot_open(BAD_HEADER % "\"qcow2 header too short\""))
case("hdr_length_past_cluster", "v3_4k", header(header_length=8192), "headerLengthInvalid", 2,
     cannot_open(BAD_HEADER % "\"qcow2 header exceeds cluster size\""))
case("hdr_length_unaligned", "v3_64k", shift_extensions(116), "headerLengthUnaligned", 0,
     Qemu(FULL))  # the spec asks for a multiple of 8; QEMU does not check it
case("hdr_refcount_order_7", "v3_64k", header(refcount_order=7), "refcountOrderInvalid", 2,
     cannot_open(BAD_HEADER % "\"Reference count entry width too large\""))
case("hdr_compression_type_2", "zstd", header(compression_type=2), "compressionTypeInvalid", 2,
     cannot_open(BAD_HEADER % "\"qcow2: unknown compression type\""))
case("hdr_zstd_without_bit3", "zstd", header_bits("incompatible_features", clear=q.INCOMPAT_COMPRESSION),
     "compressionBitMismatch", 2,
     cannot_open(BAD_HEADER % "\"Compression type incompatible feature bit must be set\""))
case("hdr_bit3_with_zlib", "v3_64k", header_bits("incompatible_features", set=q.INCOMPAT_COMPRESSION),
     "compressionBitMismatch", 2,
     cannot_open(BAD_HEADER % "\"Compression type incompatible feature bit must not be set\""))
case("hdr_crypt_method_3", "v3_64k", header(crypt_method=3), "cryptMethodInvalid", 2,
     cannot_open(BAD_HEADER % "\"Unsupported encryption method\""))
case("hdr_padding_nonzero", "v3_64k", overwrite(105, b"\x01"), "headerPaddingNonzero", 0, Qemu(FULL))
case("hdr_unknown_incompat_bit5", "v3_64k", header_bits("incompatible_features", set=1 << 5),
     "unknownIncompatFeature", 1, refused_too("unknown incompatible bits stop both tools (qcow2_do_open())"),
     header={"unknown-incompatible-features": 1 << 5})
case("hdr_unknown_incompat_bytes72_75", "v3_64k", header_bits("incompatible_features", set=1 << 40),
     "unknownIncompatFeature", 1, refused_too("unknown incompatible bits stop both tools (qcow2_do_open())"),
     header={"unknown-incompatible-features": 1 << 40})
case("hdr_unknown_compat", "v3_64k", header_bits("compatible_features", set=1 << 9),
     "unknownCompatFeature", 0, Qemu(FULL), header={"unknown-compatible-features": 1 << 9})
case("hdr_unknown_autoclear", "v3_64k", header_bits("autoclear_features", set=1 << 9),
     "unknownAutoclearFeature", 0, Qemu(FULL), header={"unknown-autoclear-features": 1 << 9})
case("hdr_dirty_consistent", "lazy_clean", header_bits("incompatible_features", set=q.INCOMPAT_DIRTY),
     "dirtyBitSet", 0, Qemu(FULL), header={"dirty": True})
case("hdr_corrupt_bit", "v3_64k", header_bits("incompatible_features", set=q.INCOMPAT_CORRUPT),
     "corruptBitSet", 0, Qemu(FULL), header={"corrupt": True})  # QEMU's check does not look at it
case("hdr_l1_unaligned", "v3_64k", header(l1_table_offset=lambda im: im.header.l1_table_offset + 512),
     "l1OffsetUnaligned refcountOrphan", 2, cannot_open(BAD_HEADER % "\"Active L1 table offset invalid\""), absent=QUARANTINED)
case("hdr_l1_past_eof", "v3_64k", header(l1_table_offset=past_eof()), "l1PastEof refcountOrphan", 2,
     exit_only(NOT_FOLLOWED % "qcow2_inc_refcounts_imrt(), it reads zeros past EOF"), absent=QUARANTINED)
case("hdr_l1_cut_by_eof", "v3_64k", cut_at_eof(active_l1), "l1PastEof refcountOrphan", 2,
     differs(3, "QEMU reads the cut L1 table as zeros, counts its cluster (refcount 1) and calls "
                "the data it no longer maps leaked; qcheck reports the table past EOF and quarantines "
                "the data"),
     absent="refcountPastEof " + QUARANTINED)
case("hdr_l1_cut_by_eof_freed", "v3_64k", cut_at_eof(active_l1, refcount=0), "l1PastEof refcountOrphan", 2,
     exit_only("QEMU reads the cut L1 table as zeros and finds its cluster in use with refcount 0 "
               "(\"ERROR cluster 10 refcount=0 reference=1\")"),
     absent="refcountPastEof " + QUARANTINED)
case("hdr_l1_cut_by_eof_512", "rc64_512", cut_at_eof(active_l1, keep=8), "l1PastEof refcountOrphan", 2,
     exit_only("QEMU reads the cut part of the L1 table as zeros and counts its clusters, the second "
               "one a whole cluster past EOF (qcow2_inc_refcounts_imrt())"),
     absent="refcountPastEof " + QUARANTINED)
# The end of the file cuts a structure short by less than one cluster (oracle
# class N-J): QEMU reads zeros past the end and accepts it (qcow2_inc_refcounts_imrt()), qcheck
# reports it; both repair modes complete it with zeros.
case("l2_cut_by_eof", "v3_64k", cut_at_eof(l2_table(0), keep=None), "l1EntryPastEof refcountOrphan", 2,
     differs(0, "QEMU reads the cut part of the L2 table as zeros (qcow2_inc_refcounts_imrt()); qcheck reports the table "
                "past EOF and quarantines the data it maps"),
     absent="refcountPastEof " + QUARANTINED)
case("reftable_cut_by_eof", "v3_64k", cut_at_eof(reftable, keep=None), "reftablePastEof", 2,
     differs(0, "QEMU reads the cut part of the refcount table as zeros (qcow2_inc_refcounts_imrt()); qcheck cannot use "
                "the table"))
case("refblock_cut_by_eof", "v3_64k", refblock_cut_at_eof, "reftableEntryPastEof", 2,
     differs(0, "QEMU reads the cut part of the refcount block as zeros (qcow2_inc_refcounts_imrt()); qcheck cannot use "
                "the block"))
case("bitmap_dir_cut_by_eof", "bitmaps", lambda im: im.truncate(im.file_size - 1),
     "bitmapsExtensionInvalid", 2,
     differs(0, "QEMU reads the last byte of the bitmap directory, which ends the file, as a zero "
                "(qcow2_inc_refcounts_imrt()); qcheck reports the directory past EOF"))
case("hdr_l1_too_small", "v3_64k", header(l1_size=0), "l1TooSmall refcountOrphan", 2,
     cannot_open(BAD_HEADER % "\"L1 table is too small\""), absent=QUARANTINED)
# QEMU validates the offset of an empty L1 table too (qcow2_validate_table)
case("hdr_l1_empty_unaligned", "v3_64k", empty_l1(lambda im: im.header.l1_table_offset + 512),
     "emptyTableOffsetInvalid refcountLeak", 2, cannot_open(BAD_HEADER % "\"Active L1 table offset invalid\""))
case("hdr_l1_empty_offset_huge", "v3_64k", empty_l1(1 << 63), "emptyTableOffsetInvalid refcountLeak",
     2, cannot_open(BAD_HEADER % "\"Active L1 table offset invalid\""))
case("hdr_l1_empty_aligned", "v3_64k", empty_l1(lambda im: im.header.l1_table_offset),
     "refcountLeak", 3, Qemu(COUNTS), absent="l1OffsetUnaligned emptyTableOffsetInvalid")
# tiny file, huge claims (hostile cases 4, 7 and 24 of tests/hostile/run_hostile.py): sizes
# bounded by the file
case("hdr_l1_size_huge", "v3_64k", header(l1_size=0x10000000), "l1PastEof qemuLimitExceeded", 2,
     cannot_open(BAD_HEADER % "\"Active L1 table too large\""), absent=QUARANTINED)
case("hdr_reftable_clusters_huge", "v3_64k", header(refcount_table_clusters=0xFFFFFFFF),
     "reftablePastEof qemuLimitExceeded", 2,
     cannot_open(BAD_HEADER % "\"Reference count table too large\""))
case("hdr_snapshot_offset_unaligned_no_snapshots", "v3_64k",
     header(snapshots_offset=lambda im: im.header.l1_table_offset + 512), "emptyTableOffsetInvalid", 2,
     check_aborts("QEMU validates the snapshot table offset even with nb_snapshots 0: a normal "
                  "open fails (qcow2_do_open()), the check aborts (qcow2_check_read_snapshot_table())"))
case("hdr_snapshot_offset_huge_no_snapshots", "v3_64k", header(snapshots_offset=1 << 63),
     "emptyTableOffsetInvalid", 2,
     check_aborts("QEMU validates the snapshot table offset even with nb_snapshots 0: a normal "
                  "open fails (qcow2_do_open()), the check aborts (qcow2_check_read_snapshot_table())"))
case("hdr_reftable_unaligned", "v3_64k",
     header(refcount_table_offset=lambda im: im.header.refcount_table_offset + 512),
     "reftableOffsetUnaligned", 2, cannot_open(BAD_HEADER % "\"Reference count table offset invalid\""))
case("hdr_reftable_past_eof", "v3_64k", header(refcount_table_offset=past_eof()), "reftablePastEof", 2,
     exit_only(NOT_FOLLOWED % "it reads a zero reftable past EOF"))
case("hdr_reftable_clusters_0", "v3_64k", header(refcount_table_clusters=0), "reftableMissing", 2,
     Qemu(EXIT, why="check mode tolerates it (qcow2_do_open() skips it with BDRV_O_CHECK); QEMU counts every cluster as refcount=0 and "
                    "OFLAG errors; a normal open refuses it", normal_open=False))
case("hdr_snapshots_unaligned", "snapshots",
     header(snapshots_offset=lambda im: im.header.snapshots_offset + 512),
     "snapshotTableUnaligned refcountOrphan", 2,
     check_aborts("check mode skips the open-time test but the check aborts on it (qcow2_do_open(), qcow2_check_read_snapshot_table())"),
     absent=SNAPSHOTS_UNKNOWN)
# QEMU accepts offset 0 and parses the header cluster as snapshot entries
# (one whose L1 table offset is the magic and version); its -r all writes
# them back as snapshots. No snapshot can live there: -r all drops them.
case("hdr_snapshots_at_offset_0", "snapshots", header(snapshots_offset=0),
     "snapshotTableInHeader refcountOrphan", 2,
     exit_only("it reads the header cluster as the snapshot table and counts its own errors "
               "(differences §2.10)"),
     absent=SNAPSHOTS_UNKNOWN)
# nb_snapshots set on an image without snapshots (nothing is an orphan):
# -r leaks discards it too, as qemu-img check -r leaks does
case("hdr_snapshot_count_at_offset_0", "v3_64k", header(nb_snapshots=2), "snapshotTableInHeader", 2,
     exit_only("it reads the header cluster as the snapshot table and counts its own errors "
               "(differences §2.10)"))
case("hdr_snapshots_past_eof", "snapshots", header(snapshots_offset=past_eof()),
     "snapshotTablePastEof refcountOrphan", 2, exit_only(NOT_FOLLOWED % "it reads zeroed entries past EOF"),
     absent=SNAPSHOTS_UNKNOWN)
case("hdr_too_many_snapshots", "snapshots", header(nb_snapshots=70000), "tooManySnapshots", 2,
     check_aborts("check mode skips the open-time test but the check aborts on it (qcow2_do_open(), qcow2_check_read_snapshot_table())"))
case("hdr_backing_name_too_long", "backing", header(backing_file_size=2000), "backingNameInvalid", 2,
     cannot_open(BAD_HEADER % "\"Backing file name too long\""))
case("hdr_backing_name_outside_cluster0", "backing",
     header(backing_file_offset=lambda im: im.cluster_size - 4), "backingNameInvalid", 2,
     cannot_open(BAD_HEADER % "\"Backing file name too long\""))
case("hdr_backing_offset_past_cluster", "backing",
     header(backing_file_offset=lambda im: im.cluster_size + 64), "backingNameInvalid", 2,
     cannot_open(BAD_HEADER % "\"Invalid backing file offset\""))
case("hdr_backing_name_in_extensions", "backing",
     header(backing_file_offset=lambda im: im.header.header_length + 8),
     "backingNameOverlapsExtensions", 2, cannot_open(BAD_HEADER % "\"Header extension too large\""))
# A name inside the header: QEMU reads no extension (its extension area
# ends where the name starts) and the name from the header's bytes.
case("hdr_backing_name_in_header", "backing", header(backing_file_offset=16),
     "backingNameInHeader", 0, Qemu(FULL),
     absent="backingNameOverlapsExtensions backingFormatMissing extensionEndMissing")  # a NUL: no backing file
case("hdr_backing_name_in_header_bitmaps", "bitmaps", header(backing_file_offset=16),
     "backingNameInHeader autoclearWithoutBitmaps refcountLeak", 3, Qemu(FULL),
     absent="bitmapInUse")  # the bitmaps extension unread: its clusters leak, for both
case("hdr_backing_name_in_header_text", "backing", header(backing_file_offset=1),
     "backingNameOverlapsExtensions backingFormatMissing", 2,
     cannot_open("QEMU opens a backing file named by the header's bytes (\"QFI\\xfb\"), "
                 "which is not there (qcow2_do_open())"))
case("hdr_extl2_4k_clusters", "v3_4k", header_bits("incompatible_features", set=q.INCOMPAT_EXTL2),
     "extendedL2ClusterTooSmall", 2, cannot_open(BAD_HEADER % "\"Unsupported subcluster size\""))
case("hdr_virtual_size_unaligned", "v3_64k", header(size=lambda im: im.header.size - 100),
     "virtualSizeUnaligned", 0, Qemu(FULL))
# 100 bytes into a cluster past 4 MiB, less than a sector: the guest sees
# 4 MiB, so total-clusters is 64 for both, not 65.
case("hdr_virtual_size_sub_sector", "v3_64k", header(size=lambda im: im.header.size + 100),
     "virtualSizeUnaligned", 0, Qemu(FULL))
case("hdr_raw_data_bit_without_data_file", "v3_64k",
     header_bits("autoclear_features", set=q.AUTOCLEAR_DATA_FILE_RAW), "rawDataFileInvalid", 2,
     cannot_open("QEMU refuses it: \"data-file-raw requires a data file\" (qcow2_do_open())"))
case("hdr_raw_data_file_with_backing", "data_file_raw", with_backing_name(b"data_file_raw.data"),
     "rawDataFileInvalid backingFormatMissing", 2,
     differs(0, "QEMU 7.2 does not reject data-file-raw with a backing file (differences §2.6)"))
case("hdr_truncated", "v3_64k", truncate_to(60), "headerTruncated", 2,
     cannot_open("QEMU cannot read the header (qcow2_do_open()) and exits 1"))
case("hdr_data_file_name_missing", "data_file", drop_extension(q.EXT_DATA_FILE),
     "dataFileNameMissing", 0,
     needs_outside("QEMU needs the data file to open the image, given as an option (qcow2_do_open(); differences §2.7)"))
case("hdr_data_file_name_empty", "data_file", edit_extension(q.EXT_DATA_FILE, lambda im, d: b""),
     "dataFileNameMissing", 0,
     needs_outside("an empty name names no file: QEMU needs the data file given as an option "
                   "(qcow2_do_open(); differences §2.7)"))
case("hdr_data_file_ext_without_bit", "v3_64k", add_extension(q.EXT_DATA_FILE, b"v3_64k.data"),
     "dataFileExtensionInvalid", 0, Qemu(FULL))

# -- header extensions (qcow2 spec, "Header extensions")
case("ext_length_past_area", "v3_64k", extension_length(q.EXT_FEATURE_TABLE, 0x10000),
     "extensionTruncated", 2, cannot_open(BAD_HEADER % "\"Header extension too large\""))
case("ext_end_marker_length", "v3_64k", end_marker_length(0x10000), "extensionTruncated", 2,
     cannot_open(BAD_HEADER % "\"Header extension too large\""))
case("ext_end_marker_length_v2", "v2_64k",
     end_marker_length(lambda im, at: im.cluster_size - at - 7), "extensionTruncated", 2,
     cannot_open(BAD_HEADER % "\"Header extension too large\""))
case("ext_end_marker_into_backing_name", "backing",
     end_marker_length(lambda im, at: im.header.backing_file_offset - at - 7),
     "backingNameOverlapsExtensions", 2, cannot_open(BAD_HEADER % "\"Header extension too large\""))
case("ext_end_marker_length_fits", "backing",
     end_marker_length(lambda im, at: im.header.backing_file_offset - at - 8), "", 0, Qemu(FULL),
     absent="extensionTruncated backingNameOverlapsExtensions")
case("ext_padding_nonzero", "backing", extension_padding(q.EXT_BACKING_FORMAT, b"\x01"),
     "extensionPaddingNonzero", 0, Qemu(FULL))  # "qcow2" leaves 3 padding bytes
case("ext_duplicate", "backing", add_extension(q.EXT_BACKING_FORMAT, b"qcow2"),
     "extensionDuplicate", 0, Qemu(FULL))
case("ext_unknown", "v3_64k", add_extension(0x12345678, b"hello, qcheck"),
     "extensionUnknown", 0, Qemu(FULL))
case("ext_end_missing", "backing", end_marker_missing, "extensionEndMissing", 0, Qemu(FULL))
case("ext_backing_format_too_long", "backing",
     edit_extension(q.EXT_BACKING_FORMAT, lambda im, d: b"qcow2-but-much-too-long"),
     "backingFormatInvalid", 2, cannot_open(BAD_HEADER % "\"ERROR: ext_backing_format\""))
case("ext_backing_format_empty", "backing", edit_extension(q.EXT_BACKING_FORMAT, lambda im, d: b""),
     "backingFormatMissing", 0, Qemu(FULL),
     absent="backingFormatInvalid")  # QEMU takes it as no format and probes the backing file
case("ext_backing_format_unprintable", "backing",
     edit_extension(q.EXT_BACKING_FORMAT, lambda im, d: b"qc\x01w2"), "backingFormatUnknown", 2,
     cannot_open("QEMU looks up a driver of that name for the backing file (\"Unknown driver\")"),
     absent="backingFormatInvalid")
# QEMU reads the format as a C string: up to its first NUL
case("ext_backing_format_nul_padded", "backing",
     edit_extension(q.EXT_BACKING_FORMAT, lambda im, d: b"qcow2\x00\x00\x00"), "", 0, Qemu(FULL),
     absent="backingFormatUnknown backingFormatInvalid backingFormatMissing")
# without a backing file the format is never used (QEMU only checks its length)
case("ext_backing_format_without_backing", "v3_64k",
     add_extension(q.EXT_BACKING_FORMAT, b"\x00\x01\xfe\x00\x00\x00\x00\x00"), "", 0, Qemu(FULL),
     absent="backingFormatUnknown backingFormatInvalid backingFormatMissing")
case("ext_backing_format_unknown", "backing",
     edit_extension(q.EXT_BACKING_FORMAT, lambda im, d: b"qcow9"), "backingFormatUnknown", 2,
     cannot_open("QEMU has no driver of that name for the backing file (\"Unknown driver "
                 "'qcow9'\")"))
case("ext_backing_format_other_driver", "backing",
     edit_extension(q.EXT_BACKING_FORMAT, lambda im, d: b"raw"), "", 0, Qemu(FULL),
     absent="backingFormatUnknown backingFormatInvalid")  # QEMU reads the backing file as raw
case("ext_feature_table_ragged", "v3_64k",
     edit_extension(q.EXT_FEATURE_TABLE, lambda im, d: d[:-8]), "featureTableInvalid", 0,
     Qemu(FULL))  # QEMU only reads the table to name unknown incompatible bits
case("ext_bitmaps_reserved", "bitmaps", bitmaps_ext(reserved=1), "bitmapsExtensionInvalid refcountOrphan", 2,
     cannot_open(BAD_BITMAP % "\"bitmaps_ext: ...\""))
case("ext_bitmaps_short", "bitmaps", edit_extension(q.EXT_BITMAPS, lambda im, d: d[:16]),
     "bitmapsExtensionLength refcountOrphan", 2, cannot_open(BAD_BITMAP % "\"bitmaps_ext: ...\""), absent=QUARANTINED)
case("ext_bitmaps_zero_count", "bitmaps", bitmaps_ext(nb=0), "bitmapsExtensionInvalid", 2,
     cannot_open(BAD_BITMAP % "\"bitmaps_ext: ...\""))
case("ext_bitmaps_dir_unaligned", "bitmaps",
     bitmaps_ext(offset=lambda im: im.bitmaps_ext()[3] + 8), "bitmapsExtensionInvalid", 2,
     cannot_open(BAD_BITMAP % "\"bitmaps_ext: ...\""))
case("ext_bitmaps_without_autoclear", "bitmaps",
     header_bits("autoclear_features", clear=q.AUTOCLEAR_BITMAPS),
     "bitmapsWithoutAutoclear refcountLeak", 3, Qemu(COUNTS))  # qcow2_do_open() ignores the extension: its clusters leak
case("ext_autoclear_without_bitmaps", "v3_64k",
     header_bits("autoclear_features", set=q.AUTOCLEAR_BITMAPS), "autoclearWithoutBitmaps", 0,
     Qemu(FULL))
case("ext_luks_pointer_missing", "luks", drop_extension(q.EXT_FDE),
     "encryptionExtensionInvalid refcountOrphan", 2,
     cannot_open(BAD_HEADER % "\"Missing CRYPTO header for crypt method 2\""), absent=QUARANTINED)  # freeing the LUKS header loses all data
case("ext_luks_pointer_unaligned", "luks", fde(lambda off, length: (off + 512, length)),
     "encryptionExtensionInvalid refcountOrphan", 2,
     cannot_open(BAD_HEADER % "\"Encryption header offset ... is not a multiple of cluster size\""),
     absent=QUARANTINED)
case("ext_luks_pointer_without_luks", "v3_64k",
     add_extension(q.EXT_FDE, lambda im: q.CRYPTO_EXT.pack(im.append_clusters(), im.cluster_size)),
     "encryptionExtensionInvalid", 2,
     cannot_open(BAD_HEADER % "\"CRYPTO header extension only expected with LUKS encryption method\""))
# The LUKS header itself: QEMU parses it on every open, with or without the key.
BAD_LUKS = "QEMU parses the LUKS header on every open and refuses this one (\"%s\")"
case("luks_header_magic", "luks", luks_header(0, b"LUKX"), "luksHeaderInvalid", 2,
     cannot_open(BAD_LUKS % "Volume is not in LUKS format"))
case("luks_header_version_2", "luks", luks_header(6, b"\0\2"), "luksHeaderInvalid", 2,
     cannot_open(BAD_LUKS % "LUKS version 2 is not supported"))
case("luks_header_stripes", "luks", luks_slot(3, 44, 3999), "luksHeaderInvalid", 2,
     cannot_open(BAD_LUKS % "Keyslot 3 is corrupted (stripes 3999 != 4000)"))
case("luks_header_slots_overlap", "luks",
     lambda im: luks_slot(5, 40, im.read_int(
         q.CRYPTO_EXT.unpack(im.extension(q.EXT_FDE).data)[0] + 208 + 48 * 4 + 40, 4))(im),
     "luksHeaderInvalid", 2, cannot_open(BAD_LUKS % "Keyslots 4 and 5 are overlapping in the header"))
case("luks_header_cipher_unknown", "luks", luks_header(8, b"foo\0"), "luksHeaderInvalid", 2,
     cannot_open(BAD_LUKS % "Algorithm 'foo' with key size 32 bytes not supported"))
case("luks_header_hash_unknown", "luks", luks_header(72, b"sha3\0"), "luksHeaderInvalid", 2,
     cannot_open(BAD_LUKS % "Hash algorithm 'sha3' not supported"))
case("luks_header_ivgen_unknown", "luks", luks_header(40, b"xts-plain65\0"), "luksHeaderInvalid", 2,
     cannot_open(BAD_LUKS % "IV generator 'plain65' not supported"))
case("luks_header_length_short", "luks", fde(lambda off, length: (off, 591)),
     "luksHeaderInvalid refcountOrphan", 2,
     cannot_open(BAD_LUKS % "Request for data outside of extension header"),
     absent=QUARANTINED)  # the key material beyond the 591 bytes must not be freed
case("luks_key_material_past_header", "luks", fde(lambda off, length: (off, 4096)),
     "luksHeaderInvalid refcountOrphan", 2,
     cannot_open("QEMU reads the enabled key slot's material when it opens the image with the "
                 "key, and refuses it past the header's length (\"Request for data outside "
                 "of extension header\")"), absent=QUARANTINED)

# -- snapshot table (qcow2 spec, "Snapshots")
# The last entry runs past the end of the file: the snapshot is kept and
# followed, what cannot be read is lost (QEMU reads zeros there).
case("snap_table_truncated", "snapshots", truncate_snapshot_table, "snapshotEntryPastEof", 2,
     differs(0, "QEMU zero-fills the read past EOF and accepts the entry"),
     absent="refcountOrphan snapshotTableTruncated")
case("snap_extra_past_eof", "snapshots", truncate_entry(40 + 24 + 40, unknown_extra(1, 200)),
     "snapshotEntryPastEof", 2, differs(0, "QEMU zero-fills the read past EOF and accepts the entry"),
     absent="refcountOrphan snapshotTableTruncated")
case("snap_extra_past_eof_in_known", "snapshots", truncate_entry(40 + 12), "snapshotEntryPastEof", 2,
     differs(0, "QEMU zero-fills the read past EOF and accepts the entry"),
     absent="refcountOrphan snapshotTableTruncated")
case("snap_name_past_eof", "snapshots", truncate_entry(40 + 24 + 1 + 1), "snapshotEntryPastEof", 2,
     differs(0, "QEMU zero-fills the read past EOF and accepts the entry"),
     absent="refcountOrphan snapshotTableTruncated")
# The first of two entries cut: it is kept, the second (past the end) dropped.
case("snap_entry_past_eof_and_dropped", "snapshots",
     truncate_entry(40 + 24 + 40, unknown_extra(0, 200), index=0),
     "snapshotEntryPastEof snapshotTableTruncated refcountOrphan", 2,
     differs(2, "QEMU reads the second entry as zeros (no L1 table, an incomplete entry): its "
             "clusters leak"), absent=SNAPSHOTS_UNKNOWN)
# Unknown extra data survives every rewrite (run_repairs.UNKNOWN_EXTRA).
case("snap_unknown_extra_rewritten", "snapshots",
     rewrite_snapshots(both(unknown_extra(0, 100), lambda im, s: setattr(s[1], "extra", s[1].extra[:8]))),
     "snapshotExtraTooSmall", 2, Qemu(COUNTS))
case("snap_unknown_extra_too_large", "snapshots", rewrite_snapshots(unknown_extra(0, 2000)),
     "snapshotExtraTooLarge", 2, check_aborts("QEMU aborts the check on the snapshot table (qcow2_check_read_snapshot_table())"))
case("snap_id_empty", "snapshots", rewrite_snapshots(lambda im, s: setattr(s[1], "id", b"")),
     "snapshotIdEmpty", 0, Qemu(FULL))
case("snap_extra_too_large", "snapshots",
     rewrite_snapshots(lambda im, s: setattr(s[0], "extra", s[0].extra + bytes(2048))),
     "snapshotExtraTooLarge", 2, check_aborts("QEMU aborts the check on the snapshot table (qcow2_check_read_snapshot_table())"))
case("snap_extra_too_small_v3", "snapshots",
     rewrite_snapshots(lambda im, s: setattr(s[1], "extra", s[1].extra[:8])),
     "snapshotExtraTooSmall", 2, Qemu(COUNTS))  # qcow2_check_read_snapshot_table()
case("snap_duplicate_id", "snapshots",
     rewrite_snapshots(lambda im, s: setattr(s[1], "id", s[0].id)),
     "snapshotIdDuplicate", 0, Qemu(FULL))  # QEMU does not look (differences §2.6)
# QEMU's check ignores the L1 offset of a snapshot without L1 entries, but
# loading the snapshot validates it ("Snapshot L1 table offset invalid")
case("snap_l1_empty_offset_huge", "snapshots",
     chain(snapshot_field(0, "l1_size", lambda im, v: 0),
           snapshot_field(0, "l1_table_offset", lambda im, v: (1 << 63) + v)),
     "emptyTableOffsetInvalid", 2,
     differs(3, "its check does not validate an empty snapshot L1 table (the snapshot's clusters "
                "become leaks); loading the snapshot fails"))
case("snap_l1_unaligned", "snapshots", snapshot_field(0, "l1_table_offset", lambda im, v: v + 512),
     "snapshotL1Unaligned refcountOrphan", 2,
     exit_only("QEMU skips the snapshot, so its clusters count as leaks (calculate_refcounts(), repair.md §11 H4)"),
     absent=QUARANTINED)
case("snap_l1_past_eof", "snapshots", snapshot_field(0, "l1_table_offset", lambda im, v: past_eof()(im)),
     "snapshotL1PastEof refcountOrphan", 2, exit_only(NOT_FOLLOWED % "qcow2_inc_refcounts_imrt()"), absent=QUARANTINED)
case("snap_l1_cut_by_eof", "snapshots", cut_at_eof(snapshot_l1(0)), "snapshotL1PastEof refcountOrphan", 2,
     differs(3, "QEMU reads the cut snapshot L1 table as zeros, counts its cluster and calls what "
                "only the snapshot used leaked; qcheck reports the table past EOF and quarantines it"),
     absent="refcountPastEof " + QUARANTINED)
case("snap_l1_too_large", "snapshots", snapshot_field(0, "l1_size", lambda im, v: 5 << 20),
     "snapshotL1TooLarge refcountOrphan", 2,
     exit_only("QEMU skips the snapshot, so its clusters count as leaks (calculate_refcounts())"),
     absent=QUARANTINED)
case("snap_disk_size_beyond_l1", "snapshots", snapshot_field(0, "disk_size", lambda im, v: 1 << 40),
     "snapshotL1TooSmall", 0, Qemu(FULL))
case("snap_with_data_file", "data_file", add_empty_snapshot, "snapshotsWithDataFile", 2,
     Qemu(COUNTS))  # calculate_refcounts()
case("snap_l1_entry_past_eof", "snapshots",
     lambda im: im.set_l1_entry(0, past_eof()(im), im.snapshots()[0].l1_table_offset),
     "l1EntryPastEof refcountOrphan", 2,
     exit_only(NOT_FOLLOWED % "qcow2_inc_refcounts_imrt(); the lost L2 table and data become leaks"),
     absent=QUARANTINED)
case("snap_l1_entry_unaligned", "snapshots",
     lambda im: im.set_l1_entry(0, im.read_table(im.snapshots()[0].l1_table_offset, 1)[0] + 512,
                                im.snapshots()[0].l1_table_offset),
     "l1EntryUnaligned refcountOrphan", 2, exit_only(NOT_FOLLOWED % "check_refcounts_l1()"), absent=QUARANTINED)
case("snap_l2_reserved_bits", "snapshots", entry(snapshot_l2(0), set_bits(1 << 57)),
     "l2EntryReservedBits", 2, Qemu(COUNTS))  # check_refcounts_l2(), the L2 table is the snapshot's own
case("snap_shared_cluster_copied", "snapshots",
     entry(lambda im: next(r for r in im.data_refs() if not r.entry & OFLAG_COPIED),
           set_bits(OFLAG_COPIED)),
     "l2CopiedWrong", 2, Qemu(COUNTS))  # check_oflag_copied()
case("snap_shared_refcount_too_low", "snapshots",
     lambda im: im.set_refcount(next(r for r in im.data_refs() if not r.entry & OFLAG_COPIED)
                                .host_offset // im.cluster_size, 1),
     "refcountTooLow", 2, exit_only(COPIED_DOUBLE))
# Interrupted snapshot operations (the most common real leaks): qemu-img
# check -r leaks lowers the refcounts and then fixes COPIED; so must -r leaks.
case("snap_delete_interrupted", "snapshots", drop_snapshots(1), "refcountLeak", 3, Qemu(FULL),
     absent="refcountOrphan")
case("snap_delete_all_interrupted", "snapshots", drop_snapshots(0), "refcountLeak", 3, Qemu(FULL),
     absent="refcountOrphan")
case("snap_create_failed", "v3_64k", snapshot_create_failed, "refcountLeak", 3, Qemu(FULL),
     absent="refcountOrphan")
case("snap_create_failed_and_corrupt", "v3_64k",
     chain(snapshot_create_failed, entry(data(1), set_bits(1 << 57))),
     "refcountLeak l2EntryReservedBits", 2, Qemu(COUNTS))
case("snap_shares_active_l1", "snapshots",
     snapshot_field(1, "l1_table_offset", lambda im, v: im.header.l1_table_offset),
     "metadataOverlap", 2,
     exit_only("QEMU has no overlap analysis; it sees refcount and leak errors (differences §2.9)"),
     absent=QUARANTINED)

# -- persistent bitmaps (qcow2 spec, "Bitmaps")
case("ext_bitmaps_dir_past_eof", "bitmaps", bitmaps_ext(size=lambda im: im.bitmaps_ext()[2] + 8),
     "bitmapsExtensionInvalid", 2, cannot_open(BAD_BITMAP % "bitmap_list_load()"))  # the directory ends the file
case("bitmap_count_mismatch", "bitmaps", bitmaps_ext(nb=2), "bitmapDirectoryInvalid", 2,
     cannot_open(BAD_BITMAP % "bitmap_list_load(): \"More bitmaps found than specified\""))
case("bitmap_entry_overruns_directory", "bitmaps", bitmap_field(2, "name_size", lambda im, v: 200),
     "bitmapDirectoryInvalid", 2, cannot_open(BAD_BITMAP % "bitmap_list_load(): \"Broken bitmap directory\""))
case("bitmap_granularity_64", "bitmaps", bitmap_field(0, "granularity_bits", lambda im, v: 64),
     "bitmapEntryInvalid", 2, cannot_open(BAD_BITMAP % "bitmap_list_load()"))
SPEC_VALID_BITMAP = ("the spec allows it but QEMU's stricter bitmap constraints refuse to open "
                     "the image (bitmap_list_load(); differences §2.4); qcheck counts it as a corruption")
case("bitmap_granularity_8_spec_valid", "bitmaps", bitmap_field(0, "granularity_bits", lambda im, v: 8),
     "bitmapUnsupportedByQemu", 2, cannot_open(SPEC_VALID_BITMAP))  # spec: 0..63, QEMU: 9..31
case("bitmap_granularity_32_spec_valid", "bitmaps",
     bitmap_field(1, "granularity_bits", lambda im, v: 32), "bitmapUnsupportedByQemu", 2,
     cannot_open(SPEC_VALID_BITMAP))
case("bitmap_extra_data_compatible_flag", "bitmaps", bitmap_field(0, "flags", lambda im, v: v | 4),
     "bitmapUnsupportedByQemu", 2, cannot_open(SPEC_VALID_BITMAP))
case("bitmap_extra_data", "bitmaps",
     rewrite_bitmap_directory(lambda im, bs: [setattr(bs[2], "extra", bytes(8)),
                                             setattr(bs[2], "flags", bs[2].flags | 4)]),
     "bitmapUnsupportedByQemu", 2, cannot_open(SPEC_VALID_BITMAP))
# A clean bitmap's table must have exactly the entries QEMU computes for the
# disk (it loads nothing else); one in use is not loaded at all.
case("bitmap_table_larger_than_disk", "bitmaps",
     bitmap_field(0, "bitmap_table_size", lambda im, v: v + 1), "bitmapUnsupportedByQemu", 2,
     cannot_open(SPEC_VALID_BITMAP))
case("bitmap_table_larger_in_use", "bitmaps",
     chain(bitmap_field(0, "bitmap_table_size", lambda im, v: v + 1),
           bitmap_field(0, "flags", lambda im, v: v | 1)), "bitmapInUse", 0, Qemu(FULL),
     absent="bitmapUnsupportedByQemu")
case("bitmap_disk_of_size_0", "bitmaps", header(size=0), "bitmapUnsupportedByQemu", 2,
     cannot_open(SPEC_VALID_BITMAP))  # QEMU sizes a bitmap of a 0-byte disk to no table at all
case("bitmap_table_over_512mib", "bitmaps", bitmap_big_table(1, 8193),
     "bitmapInUse bitmapUnsupportedByQemu", 2, cannot_open(SPEC_VALID_BITMAP))
case("bitmap_table_512mib", "bitmaps", bitmap_big_table(1, 8192), "bitmapInUse", 0, Qemu(FULL),
     absent="bitmapUnsupportedByQemu")
case("bitmap_type_2", "bitmaps", bitmap_field(1, "type", lambda im, v: 2),
     "bitmapEntryInvalid", 2, cannot_open(BAD_BITMAP % "bitmap_list_load()"))
case("bitmap_reserved_flag", "bitmaps", bitmap_field(0, "flags", lambda im, v: v | 1 << 8),
     "bitmapEntryInvalid", 2, cannot_open(BAD_BITMAP % "bitmap_list_load()"))
case("bitmap_table_size_0", "bitmaps", bitmap_field(2, "bitmap_table_size", lambda im, v: 0),
     "bitmapEntryInvalid", 2, cannot_open(BAD_BITMAP % "bitmap_list_load()"))
case("bitmap_duplicate_name", "bitmaps",
     lambda im: im.write(im.bitmaps()[1].offset + 24, im.bitmaps()[0].name),
     "bitmapNameDuplicate", 2, cannot_open(BAD_BITMAP % "bitmap_list_load()"))
case("bitmap_names_equal_before_nul", "bitmaps",
     chain(lambda im: im.write(im.bitmaps()[0].offset + 24, b"\0a"),
           lambda im: im.write(im.bitmaps()[1].offset + 24, b"\0b")),
     "bitmapNameDuplicate", 2,
     cannot_open(BAD_BITMAP % "bitmap_list_load(): QEMU reads names up to a NUL, both are \"\""))
case("bitmap_table_reserved_bits", "bitmaps", bitmap_table_entry(0, lambda im, e: e | 1 << 60),
     "bitmapTableEntryInvalid refcountOrphan", 2, cannot_open(BAD_BITMAP % "bitmap_list_load()"))
case("bitmap_table_past_eof", "bitmaps", bitmap_table_entry(1, lambda im, e: past_eof()(im)),
     "bitmapTableEntryInvalid", 2,
     exit_only("QEMU loads the table (it only checks bits and alignment, bitmap_list_load()), counts past EOF (qcow2_inc_refcounts_imrt()) "
               "and leaks the lost cluster"))
case("bitmap_broken_rest_checked", "bitmaps",
     chain(bitmap_table_entry(0, lambda im, e: e + 512), entry(data(), clear_bits(OFLAG_COPIED))),
     "bitmapTableEntryInvalid l2CopiedWrong", 2, cannot_open(BAD_BITMAP % "bitmap_list_load()"))
# The unfollowed entry is a leaf (one bitmap data cluster): it cannot own a
# cluster elsewhere, so an unrelated leak is still a leak.
case("bitmap_broken_and_leak", "bitmaps",
     chain(bitmap_table_entry(0, lambda im, e: e + 512), leak_cluster),
     "bitmapTableEntryInvalid refcountLeak", 2, cannot_open(BAD_BITMAP % "bitmap_list_load()"))
case("bitmap_in_use", "bitmaps", bitmap_field(0, "flags", lambda im, v: v | 1),
     "bitmapInUse", 0, Qemu(FULL))
# The tail of the last bitmap data cluster is read with --deep only; QEMU
# loads the bitmap without looking at it. In use, the content means nothing.
case("bitmap_tail_bit_set", "bitmaps", bitmap_tail_bit(0), "bitmapTailBitsSet", 0, Qemu(FULL),
     qcheck_args=("--deep",))
case("bitmap_tail_bit_set_plain", "bitmaps", bitmap_tail_bit(0), "", 0, Qemu(FULL),
     absent="bitmapTailBitsSet")
case("bitmap_tail_bit_set_in_use", "bitmaps",
     chain(bitmap_tail_bit(0), bitmap_field(0, "flags", lambda im, v: v | 1)), "bitmapInUse", 0,
     Qemu(FULL), absent="bitmapTailBitsSet", qcheck_args=("--deep",))
case("bitmap_data_is_guest_data", "bitmaps",
     bitmap_table_entry(0, lambda im, e: im.data_refs()[0].host_offset), "dataOverlapsMetadata", 2,
     exit_only("QEMU has no overlap analysis (differences §2.9): refcount=1 reference=2 plus a leak"))

# -- mapping: L1 and L2 entries (qcow2 spec, "Cluster mapping", "Extended L2 Entries")
case("l1_reserved_high", "v3_64k", l1_entry(lambda im, e: e | 1 << 56), "l1EntryReservedBits", 2,
     Qemu(COUNTS))  # check_refcounts_l1(), entry still followed
case("l1_reserved_low", "v3_64k", l1_entry(lambda im, e: e | 1 << 1), "l1EntryReservedBits", 2,
     Qemu(COUNTS))
# An L1 entry without an L2 table offset but with other bits: QEMU follows
# any non-zero entry, to the header cluster (check_refcounts_l1() for the reserved bits), and a
# guest write there aborts it; -r all must leave the entry 0
# (run_repairs.WRITE_AFTER_REPAIR writes there).
case("l1_zero_offset_copied", "v3_512", l1_entry(lambda im, e: OFLAG_COPIED, index=1),
     "l1ZeroOffsetFlags", 2, exit_only(NOT_FOLLOWED % "check_refcounts_l1(): QEMU parses the header as an L2 table"))
case("l1_zero_offset_reserved", "v3_512", l1_entry(lambda im, e: OFLAG_COPIED | 1 << 58, index=1),
     "l1ZeroOffsetFlags l1EntryReservedBits", 2,
     exit_only(NOT_FOLLOWED % "check_refcounts_l1(): QEMU parses the header as an L2 table"))
case("l1_unaligned", "v3_64k", l1_entry(lambda im, e: e + 512), "l1EntryUnaligned refcountOrphan", 2,
     exit_only(NOT_FOLLOWED % "check_refcounts_l1(), repair.md §11 H3"))
# An unaligned L1 entry is re-pointed only when the aligned-down cluster
# checks as a valid L2 table mapping clusters nothing else references;
# garbage or zeros there are dropped (run_repairs.REPOINTED/NOT_REPOINTED).
case("l1_unaligned_into_garbage", "v3_64k",
     l1_entry(lambda im, e: OFLAG_COPIED | (im.append_clusters(bytes(range(256)) * 256) + 512)),
     "l1EntryUnaligned refcountOrphan", 2, exit_only(NOT_FOLLOWED % "check_refcounts_l1(), repair.md §11 H3"))
case("l1_unaligned_into_zeros", "v3_64k",
     l1_entry(lambda im, e: OFLAG_COPIED | (im.append_clusters() + 512)),
     "l1EntryUnaligned refcountOrphan", 2, exit_only(NOT_FOLLOWED % "check_refcounts_l1(), repair.md §11 H3"))
case("l1_past_eof", "v3_64k", l1_entry(lambda im, e: OFLAG_COPIED | past_eof()(im)),
     "l1EntryPastEof refcountOrphan", 2,
     exit_only(NOT_FOLLOWED % "qcow2_inc_refcounts_imrt(), repair.md §11 H1"))
case("l2_reserved_high", "v3_64k", entry(data(), set_bits(1 << 57)), "l2EntryReservedBits", 2,
     Qemu(COUNTS))  # check_refcounts_l2()
case("l2_reserved_low", "v3_64k", entry(data(), set_bits(1 << 3)), "l2EntryReservedBits", 2,
     Qemu(COUNTS))
case("l2_unaligned", "v3_64k", entry(data(), move_by(512)), "l2EntryUnaligned refcountOrphan", 2,
     exit_only(NOT_FOLLOWED % "check_refcounts_l2(), repair.md §11 H2"))
# Recover before dropping: -r all re-points an unaligned entry to the
# allocated cluster nothing else references (run_repairs.REPOINTED).
case("l2_unaligned_extl2", "extl2", entry(data(1), move_by(512)), "l2EntryUnaligned refcountOrphan", 2,
     exit_only(NOT_FOLLOWED % "check_refcounts_l2(), repair.md §11 H2"))
case("l2_unaligned_snapshot", "snapshots", entry(own_data(0), move_by(1024)),
     "l2EntryUnaligned refcountOrphan", 2, exit_only(NOT_FOLLOWED % "check_refcounts_l2(), repair.md §11 H2"))
case("l2_unaligned_shared_table", "v3_64k", chain(snapshot_create, entry(data(), move_by(512))),
     "l2EntryUnaligned refcountOrphan", 2, exit_only(NOT_FOLLOWED % "check_refcounts_l2(), repair.md §11 H2"))
# ... but not into a cluster something else references, nor one two
# broken entries point into: those are dropped (and what only they could
# own freed).
case("l2_unaligned_into_used", "v3_64k",
     entry(data(0), point_at(lambda im: im.data_refs()[1].host_offset + 512)),
     "l2EntryUnaligned refcountLeak", 2, exit_only(NOT_FOLLOWED % "check_refcounts_l2(), repair.md §11 H2"))
case("l2_unaligned_twice", "v3_64k",
     chain(entry(data(1), point_at(lambda im: im.data_refs()[0].host_offset + 1024)),
           entry(data(0), move_by(512))),
     "l2EntryUnaligned refcountOrphan", 2, exit_only(NOT_FOLLOWED % "check_refcounts_l2(), repair.md §11 H2"))
case("l2_past_eof", "v3_64k", entry(data(), point_at(past_eof())), "l2EntryPastEof refcountOrphan", 2,
     exit_only(NOT_FOLLOWED % "qcow2_inc_refcounts_imrt()"), absent=QUARANTINED)  # as l2_unaligned: the old cluster is an orphan
case("l2_zero_flag_v2", "v2_64k", entry(data(), set_bits(OFLAG_ZERO)), "l2ZeroFlagInvalid", 2,
     differs(0, "QEMU's reserved mask excludes bit 0, so it misses the v2 zero flag (differences §2.6)"))
case("l2_zero_flag_extl2", "extl2", entry(data(), set_bits(OFLAG_ZERO)), "l2ZeroFlagInvalid", 2,
     differs(0, "QEMU's reserved mask excludes bit 0, so it misses it with extended L2 (differences §2.6)"))
case("l2_unallocated_copied", "v3_64k", entry(unallocated(), point_at(lambda im: 0)),
     "l2ZeroOffsetCopied", 2,
     differs(0, "QEMU classifies offset 0 as unallocated and ignores COPIED there (differences §2.6)"))
case("l2_zero_plain_copied", "v3_64k",
     entry(first(lambda r: r.entry == OFLAG_ZERO), set_bits(OFLAG_COPIED)), "l2ZeroOffsetCopied", 2,
     differs(0, "QEMU does not flag COPIED on zero-plain entries (differences §2.6)"))
case("l2_copied_cleared", "v3_64k", entry(data(), clear_bits(OFLAG_COPIED)), "l2CopiedWrong", 2,
     Qemu(COUNTS))  # check_oflag_copied()
case("l1_copied_cleared", "v3_64k", l1_entry(lambda im, e: e & ~OFLAG_COPIED), "l1CopiedWrong", 2,
     Qemu(COUNTS))  # check_oflag_copied()
case("data_file_offset_mismatch", "data_file",
     entry(data(1), point_at(lambda im: 2 << 20)), "dataFileOffsetMismatch", 2,
     differs(0, "QEMU's check does not compare host and guest offsets (differences §2.6)"))
case("data_file_unaligned", "data_file", entry(data(1), move_by(512)),
     "l2EntryUnaligned dataFileOffsetMismatch", 2,
     exit_only("QEMU reports the alignment (check_refcounts_l2()) but does not compare host and guest offsets (differences §2.6)"))
# A preallocated zero cluster off a cluster boundary: -r all makes it a
# plain zero entry, as QEMU's does (it reads as zeros either way); a data
# entry (above) is left, its mismatch has no repair.
case("data_file_unaligned_prealloc", "data_file", entry(data(1), lambda im, r: (r.entry | OFLAG_ZERO) + 512),
     "l2EntryUnaligned dataFileOffsetMismatch", 2,
     exit_only("QEMU reports the alignment (check_refcounts_l2()) but does not compare host and guest offsets (differences §2.6)"))
case("data_file_copied_missing", "data_file", entry(data(1), clear_bits(OFLAG_COPIED)),
     "dataFileCopiedMissing", 0,
     differs(2, "QEMU takes data-file refcounts as 1 and counts the missing COPIED as a corruption (check_oflag_copied())"))
case("data_file_compressed", "data_file",
     entry(data(1), lambda im, r: im.compressed_entry(65536, 512)), "compressedWithDataFile", 2,
     Qemu(FULL))  # check_refcounts_l2(): left out of the statistics by both
case("compressed_copied", "zlib", entry(compressed(1), set_bits(OFLAG_COPIED)), "compressedCopied", 2,
     Qemu(COUNTS))  # check_refcounts_l2()
case("compressed_copied_zstd", "zstd", entry(compressed(0), set_bits(OFLAG_COPIED)),
     "compressedCopied", 2, Qemu(COUNTS))
case("compressed_past_eof", "zlib",
     entry(compressed(1), lambda im, r: im.compressed_entry(past_eof()(im) + 1000, 600)),
     "compressedRangeInvalid", 2, exit_only(NOT_FOLLOWED % "qcow2_inc_refcounts_imrt(); the packed host cluster also leaks"),
     absent=QUARANTINED)
case("compressed_offset_bit56", "zlib_4k", entry(compressed(0), set_bits(1 << 56)),
     "compressedRangeInvalid", 2, exit_only(NOT_FOLLOWED % "qcow2_inc_refcounts_imrt()"), absent=QUARANTINED)
case("extl2_alloc_and_zero", "extl2",
     entry(data(0), lambda im, r: r.entry, bitmap=lambda im, r: r.bitmap | 1 << 32),
     "subclusterAllocAndZero", 2, Qemu(COUNTS))  # check_refcounts_l2()
case("extl2_alloc_unallocated", "extl2",
     entry(unallocated(), lambda im, r: 0, bitmap=lambda im, r: 1), "subclusterAllocUnallocated", 2,
     Qemu(COUNTS))  # check_refcounts_l2()
case("extl2_compressed_bitmap", "extl2",
     entry(compressed(0), lambda im, r: r.entry, bitmap=lambda im, r: 1 << 32),
     "compressedSubclusterBitmap", 2,
     exit_only("QEMU stops counting the compressed range, so the packed cluster also leaks (check_refcounts_l2())"))

# -- refcounts, every width (qcow2 spec, "Host cluster management")
for bits in (1, 2, 4, 8, 16, 32, 64):
    b = "rc%d" % bits
    case("leak_rc%d" % bits, b, leak_cluster, "refcountLeak", 3, Qemu(FULL))
    case("zero_in_use_rc%d" % bits, b, data_refcount(0), "refcountZeroInUse", 2,
         exit_only(COPIED_DOUBLE))
    if bits > 1:  # with 1-bit refcounts two references are an overflow
        case("too_low_rc%d" % bits, b, crosslink(), "refcountTooLow", 2,
             exit_only("qcheck also flags COPIED against the computed refcount; "
                       "QEMU against the on-disk one"))
    if bits <= 4:
        case("overflow_rc%d" % bits, b, overflow, "refcountOverflow", 2,
             exit_only("QEMU reports the overflow (qcow2_inc_refcounts_imrt()) and the COPIED/refcount fallout differently"))
# the references alone overflow, whatever the unusable refcount block says
case("overflow_rc1_block_unusable", "rc1",
     chain(overflow, lambda im: im.set_reftable_entry(0, refblock0(im) + 512)),
     "refcountOverflow refcountsUnknown reftableEntryUnaligned", 2,
     differs(1, "QEMU cannot read the refcounts through the unaligned block (check errors, exit 1; compare_refcounts()); "
                "it reports the overflow too (qcow2_inc_refcounts_imrt())"))
for b in ("v3_512", "v3_4k", "v3_2m", "v2_64k", "rc64_512", "zlib", "extl2"):
    case("leak_" + b, b, leak_cluster, "refcountLeak", 3, Qemu(FULL))
for b in ("v3_512", "v3_2m", "v2_512", "extl2"):
    case("zero_in_use_" + b, b, data_refcount(0), "refcountZeroInUse", 2, exit_only(COPIED_DOUBLE))
case("l2_unaligned_4k", "v3_4k", entry(data(), move_by(512)), "l2EntryUnaligned refcountOrphan", 2,
     exit_only(NOT_FOLLOWED % "check_refcounts_l2(), repair.md §11 H2"))
# With 512-byte clusters every offset is aligned: bit 8 is a reserved bit.
case("l2_reserved_bit8_512", "v3_512", entry(data(), set_bits(1 << 8)), "l2EntryReservedBits", 2,
     Qemu(COUNTS))
case("l2_unaligned_2m", "v3_2m", entry(data(), move_by(1 << 20)), "l2EntryUnaligned refcountOrphan", 2,
     exit_only(NOT_FOLLOWED % "check_refcounts_l2(), repair.md §11 H2"))
case("leak_data_cluster", "v3_64k", data_refcount(2), "refcountLeak", 3,
     differs(2, "QEMU counts a pure data leak as a corruption via OFLAG_COPIED (differences §2.1)"))
case("leak_compressed_cluster", "zlib",
     lambda im: im.set_refcount(im.compressed_range(im.compressed_refs()[0].entry)[0] // im.cluster_size, 4),
     "refcountLeak", 3, Qemu(FULL))  # check_oflag_copied() skips compressed entries, so QEMU says leak too
case("too_low_compressed_cluster", "zlib",
     lambda im: im.set_refcount(im.compressed_range(im.compressed_refs()[0].entry)[0] // im.cluster_size, 1),
     "refcountTooLow", 2, Qemu(COUNTS))  # compare_refcounts()
case("leak_l2_table", "v3_64k", lambda im: im.set_refcount(l2_table0(im) // im.cluster_size, 2),
     "refcountLeak", 3,
     differs(2, "QEMU counts the L1 COPIED flag against the on-disk refcount 2 as a corruption (check_oflag_copied(); differences §2.1)"))
case("zero_in_use_l2_table", "v3_64k", lambda im: im.set_refcount(l2_table0(im) // im.cluster_size, 0),
     "refcountZeroInUse", 2, exit_only(COPIED_DOUBLE))
case("zero_in_use_refblock", "v3_64k", lambda im: im.set_refcount(refblock0(im) // im.cluster_size, 0),
     "refcountZeroInUse", 2, Qemu(COUNTS))
case("zero_in_use_header", "rc8", lambda im: im.set_refcount(0, 0), "refcountZeroInUse", 2, Qemu(COUNTS))
case("refcount_past_eof", "v3_64k",
     lambda im: im.set_refcount(-(-im.file_size // im.cluster_size) + 3, 1), "refcountPastEof", 0,
     Qemu(FULL))  # QEMU never looks past EOF (differences §2.5)
case("refcount_past_eof_rc1", "rc1",
     lambda im: im.set_refcount(-(-im.file_size // im.cluster_size) + 100, 1), "refcountPastEof", 0,
     Qemu(FULL))
case("reftable_entry_reserved", "v3_64k", lambda im: im.set_reftable_entry(0, refblock0(im) | 1 << 3),
     "reftableEntryReservedBits", 2, exit_only("QEMU still reads refcounts through the entry (check_refblocks())"))
case("reftable_entry_unaligned", "v3_64k", lambda im: im.set_reftable_entry(0, refblock0(im) + 512),
     "reftableEntryUnaligned refcountsUnknown", 2,
     differs(1, "QEMU fails every refcount read through the unaligned block: check errors, "
                "exit 1 (check_refblocks(), compare_refcounts())"))
case("reftable_entry_past_eof", "v3_64k", lambda im: im.set_reftable_entry(0, past_eof()(im)),
     "reftableEntryPastEof refcountsUnknown", 2,
     exit_only("QEMU reads zero refcounts past EOF: every cluster is refcount=0 (check_refblocks(), compare_refcounts())"))
case("reftable_entry_past_eof_second", "rc64_512",
     lambda im: im.set_reftable_entry(1, past_eof()(im)), "reftableEntryPastEof refcountsUnknown", 2,
     exit_only("QEMU reads zero refcounts past EOF (check_refblocks(), compare_refcounts())"))

# -- overlaps: one owner per host cluster (differences §2.9)
NO_OVERLAP_CHECK = "QEMU has no overlap analysis and reports refcount/COPIED fallout instead (differences §2.9; repair.md §11 H7)"
case("overlap_data_on_refblock", "v3_64k", entry(data(), point_at(refblock0)), "dataOverlapsMetadata", 2,
     exit_only(NO_OVERLAP_CHECK))
case("overlap_data_on_l1", "v3_64k", entry(data(), point_at(l1_offset)), "dataOverlapsMetadata", 2,
     exit_only(NO_OVERLAP_CHECK))
case("overlap_data_on_reftable", "v3_64k", entry(data(), point_at(reftable_offset)),
     "dataOverlapsMetadata", 2, exit_only(NO_OVERLAP_CHECK))
case("overlap_data_on_l2", "rc64_512", entry(data(), point_at(l2_table0)), "dataOverlapsMetadata", 2,
     exit_only(NO_OVERLAP_CHECK))
case("overlap_l2_on_refblock", "v3_64k", l1_entry(lambda im, e: OFLAG_COPIED | refblock0(im)),
     "metadataOverlap", 2, exit_only(NO_OVERLAP_CHECK))
case("overlap_l2_on_l1", "v3_64k", l1_entry(lambda im, e: OFLAG_COPIED | im.header.l1_table_offset),
     "metadataOverlap", 2, exit_only(NO_OVERLAP_CHECK))
case("overlap_refblock_on_l2", "v3_64k", lambda im: im.set_reftable_entry(0, l2_table0(im)),
     "metadataOverlap", 2, exit_only(NO_OVERLAP_CHECK))

# -- whole-image states
case("lazy_refcounts_crashed", "lazy_dirty", None, "dirtyBitSet refcountZeroInUse", 2,
     exit_only("QEMU ignores the dirty bit and counts each stale cluster twice (differences §2.1)"),
     header={"dirty": True})
case("backing_file_missing", "backing", None, "", 0,
     needs_outside("QEMU opens the backing chain and fails on the missing file (differences §2.7)"),
     companions=False)
case("data_file_missing", "data_file", None, "", 0,
     needs_outside("QEMU needs the external data file to check metadata (qcow2_do_open(); differences §2.7)"),
     companions=False)
case("trailing_space", "v3_64k", lambda im: im.append_clusters(count=2, refcount=None),
     "trailingSpace", 0, Qemu(FULL))  # QEMU never mentions it (differences §2.6)
case("reftable_beyond_qemu_limit", "v3_64k", huge_reftable, "qemuLimitExceeded", 2,
     cannot_open(BAD_HEADER % "\"Reference count table too large\""))
case("l1_beyond_qemu_limit", "v3_64k", huge_l1, "qemuLimitExceeded", 2,
     cannot_open(BAD_HEADER % "\"Active L1 table too large\""))
case("snapshot_table_too_large", "v3_64k", huge_snapshot_table, "snapshotTableTooLarge", 2,
     check_aborts("QEMU aborts the check: \"Snapshot table is too big\" (qcow2_check_read_snapshot_table())"))
case("memory_limit", "v3_64k", None, "memoryLimit", 1,
     differs(0, "qemu-img has no memory limit; qcheck stops cleanly at --max-mem"),
     qcheck_args=("--max-mem=64K",))
case("luks_without_key", "luks", None, "", 0,
     needs_outside("QEMU needs the LUKS key even to check metadata (differences §2.7)"),
     qemu_target=lambda path: ["-f", "qcow2", path])


def validate(problem_table, bases):
    """Catalogue sanity: unique names, known bases and problem ids."""
    names = [c.name for c in CASES]
    dup = {n for n in names if names.count(n) > 1}
    assert not dup, "duplicate case names: %s" % sorted(dup)
    for c in CASES:
        assert c.base in bases, "%s: unknown base %s" % (c.name, c.base)
        unknown = c.expect - set(problem_table)
        assert not unknown, "%s: ids not in qcheck_problems.def: %s" % (c.name, sorted(unknown))
        assert c.qemu.relation in (FULL, COUNTS, EXIT, DIFFERS), c.name
        assert c.qemu.relation != DIFFERS or c.qemu.why, "%s: a difference needs a reason" % c.name


def uncovered(problem_table):
    """Problem ids no case expects (reported by run_cases.py --list)."""
    seen = set().union(*(c.expect for c in CASES))
    return sorted(set(problem_table) - seen)
