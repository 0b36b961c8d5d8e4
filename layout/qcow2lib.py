"""The qcow2 format in pure Python: the one reader, patcher and header
writer of the project's scripts (the image tests, the oracle, the hostile
inputs, the benchmark and the fuzz seed generator). It lives beside the C
decoders of layout/ so that tests/ and fuzz/ both import it from here; each
script puts this folder on sys.path from its own location.

This is test tooling, not a second checker: it parses well-formed images
(those qemu-img writes) so that tests can locate structures and damage them
precisely. It assumes the structures it is asked to read are sane; patch
functions read what they need *before* they break it.

Section names in comments ("Header", "Cluster mapping", ...) are those of
the qcow2 specification, QEMU's docs/interop/qcow2.txt (L1 and L2 entries and
compressed clusters are under "Cluster mapping", refcounts under "Host
cluster management"). Everything on disk is big-endian.
"""

import hashlib
import os
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from types import SimpleNamespace

MAGIC = 0x514649FB

# (offset, size, first version that has it) for every header field ("Header").
HEADER_FIELDS = {
    "magic": (0, 4, 2),
    "version": (4, 4, 2),
    "backing_file_offset": (8, 8, 2),
    "backing_file_size": (16, 4, 2),
    "cluster_bits": (20, 4, 2),
    "size": (24, 8, 2),
    "crypt_method": (32, 4, 2),
    "l1_size": (36, 4, 2),
    "l1_table_offset": (40, 8, 2),
    "refcount_table_offset": (48, 8, 2),
    "refcount_table_clusters": (56, 4, 2),
    "nb_snapshots": (60, 4, 2),
    "snapshots_offset": (64, 8, 2),
    "incompatible_features": (72, 8, 3),
    "compatible_features": (80, 8, 3),
    "autoclear_features": (88, 8, 3),
    "refcount_order": (96, 4, 3),
    "header_length": (100, 4, 3),
    "compression_type": (104, 1, 3),
}
V2_HEADER_LENGTH = 72

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
COMPAT_LAZY_REFCOUNTS = 1 << 0
AUTOCLEAR_BITMAPS = 1 << 0
AUTOCLEAR_DATA_FILE_RAW = 1 << 1

EXT_END = 0x00000000
EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_BITMAPS = 0x23852875
EXT_FDE = 0x0537BE77
EXT_DATA_FILE = 0x44415441

OFFSET_MASK = 0x00FFFFFFFFFFFE00  # L1 and standard L2 host offsets ("Cluster mapping")
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_RESERVED_MASK = 0x3F000000000001FE  # QEMU's; bit 0 is the zero flag
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1

SNAPSHOT_HEADER = struct.Struct(">QIHHIIQII")  # the fixed 40 bytes of a "Snapshots" entry
SNAPSHOT_EXTRA = struct.Struct(">QQq")  # vm_state_size_large, disk_size, icount
BITMAP_DIR_HEADER = struct.Struct(">QIIBBHI")  # the fixed 24 bytes of a "Bitmap directory" entry
BITMAPS_EXT = struct.Struct(">IIQQ")  # nb_bitmaps, reserved, directory size, offset
CRYPTO_EXT = struct.Struct(">QQ")  # the encryption header's offset and length

_INT_FORMATS = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}


def be(size, value):
    """Big-endian encoding of an unsigned integer of `size` bytes."""
    return struct.pack(_INT_FORMATS[size], value)


def align_up(value, alignment):
    return (value + alignment - 1) // alignment * alignment


def decode_header(raw):
    """The header fields of the first 112 bytes of a file, as a dict (a
    shorter `raw` reads as if padded with zeros). Version 2 and short v3
    headers get the values their missing fields stand for ("Header")."""
    raw = bytes(raw[:112]).ljust(112, b"\0")
    h = {name: int.from_bytes(raw[off:off + size], "big")
         for name, (off, size, _) in HEADER_FIELDS.items()}
    if h["version"] < 3:
        # v2: everything from byte 72 on is not header ("Header")
        h.update(incompatible_features=0, compatible_features=0,
                 autoclear_features=0, refcount_order=4,
                 header_length=V2_HEADER_LENGTH, compression_type=0)
    elif h["header_length"] <= 104:
        h["compression_type"] = 0
    return h


def encode_header(**fields):
    """A bare 112-byte version 3 header: 64 KiB clusters, 16-bit refcounts,
    a 1 GiB disk and every table offset 0 unless `fields` say otherwise
    (any HEADER_FIELDS name, any value that fits its width)."""
    h = dict(magic=MAGIC, version=3, backing_file_offset=0, backing_file_size=0,
             cluster_bits=16, size=1 << 30, crypt_method=0, l1_size=0, l1_table_offset=0,
             refcount_table_offset=0, refcount_table_clusters=0, nb_snapshots=0,
             snapshots_offset=0, incompatible_features=0, compatible_features=0,
             autoclear_features=0, refcount_order=4, header_length=112, compression_type=0)
    unknown = set(fields) - set(h)
    if unknown:
        raise KeyError("not header fields: %s" % ", ".join(sorted(unknown)))
    h.update(fields)
    out = bytearray(112)
    for name, (off, size, _) in HEADER_FIELDS.items():
        out[off:off + size] = h[name].to_bytes(size, "big")
    return bytes(out)


@dataclass
class Extension:
    magic: int
    data: bytes
    offset: int = -1  # where its 8-byte header was found; -1 if new

    def encode(self, padding=b"", length=None):
        """Header, data, then zero padding to 8 (or `padding` verbatim).
        `length` makes the header claim another length than the data's."""
        pad = padding if padding else bytes(align_up(len(self.data), 8) - len(self.data))
        claimed = len(self.data) if length is None else length
        return struct.pack(">II", self.magic, claimed) + self.data + pad


@dataclass
class Snapshot:
    """One snapshot table entry ("Snapshots"); `offset` is where the entry starts."""
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    extra: bytes
    id: bytes
    name: bytes
    offset: int = -1

    # byte offsets inside the entry of the fixed fields
    FIELDS = {
        "l1_table_offset": (0, 8), "l1_size": (8, 4), "id_str_size": (12, 2),
        "name_size": (14, 2), "date_sec": (16, 4), "date_nsec": (20, 4),
        "vm_clock_nsec": (24, 8), "vm_state_size": (32, 4),
        "extra_data_size": (36, 4),
        # inside extra data (present when extra_data_size is big enough)
        "vm_state_size_large": (40, 8), "disk_size": (48, 8), "icount": (56, 8),
    }

    def encode(self, extra=None, id_size=None, name_size=None):
        """The entry as bytes, padded to 8. Overrides allow lying sizes."""
        extra = self.extra if extra is None else extra
        head = SNAPSHOT_HEADER.pack(
            self.l1_table_offset, self.l1_size,
            len(self.id) if id_size is None else id_size,
            len(self.name) if name_size is None else name_size,
            self.date_sec, self.date_nsec, self.vm_clock_nsec,
            self.vm_state_size, len(extra))
        raw = head + extra + self.id + self.name
        return raw + bytes(align_up(len(raw), 8) - len(raw))

    @property
    def disk_size(self):
        return struct.unpack(">Q", self.extra[8:16])[0] if len(self.extra) >= 16 else None


@dataclass
class Bitmap:
    """One bitmap directory entry ("Bitmap directory"); `offset` is where the entry starts."""
    table_offset: int
    table_size: int
    flags: int
    type: int
    granularity_bits: int
    extra: bytes
    name: bytes
    offset: int = -1

    FIELDS = {
        "bitmap_table_offset": (0, 8), "bitmap_table_size": (8, 4),
        "flags": (12, 4), "type": (16, 1), "granularity_bits": (17, 1),
        "name_size": (18, 2), "extra_data_size": (20, 4),
    }

    def encode(self):
        head = BITMAP_DIR_HEADER.pack(self.table_offset, self.table_size, self.flags,
                                      self.type, self.granularity_bits,
                                      len(self.name), len(self.extra))
        raw = head + self.extra + self.name
        return raw + bytes(align_up(len(raw), 8) - len(raw))


@dataclass
class L2Ref:
    """Where one L2 entry lives and what it says."""
    l1_index: int
    l2_index: int
    entry: int
    bitmap: int  # extended L2 subcluster bitmap, 0 for standard entries
    entry_offset: int  # host byte offset of the entry itself

    @property
    def host_offset(self):
        return self.entry & OFFSET_MASK

    @property
    def compressed(self):
        return bool(self.entry & OFLAG_COMPRESSED)


class Image:
    """A qcow2 file opened for reading or, with writable=True, patching.

    Every setter writes straight to the file and re-parses the header, so a
    sequence of patches always sees the current state.
    """

    def __init__(self, path, writable=False):
        self.path = path
        self._f = open(path, "r+b" if writable else "rb")
        self.reload()

    def close(self):
        self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- raw access ------------------------------------------------------

    @property
    def file_size(self):
        return os.fstat(self._f.fileno()).st_size

    def read(self, offset, length):
        self._f.seek(offset)
        data = self._f.read(length)
        return data + bytes(length - len(data))  # past EOF reads as zeros

    def write(self, offset, data):
        self._f.seek(offset)
        self._f.write(data)
        self._f.flush()

    def read_int(self, offset, size):
        return struct.unpack(_INT_FORMATS[size], self.read(offset, size))[0]

    def write_int(self, offset, size, value):
        self.write(offset, be(size, value))

    def set_bits(self, offset, size, set_mask=0, clear_mask=0):
        """Read-modify-write an integer field."""
        self.write_int(offset, size, (self.read_int(offset, size) | set_mask) & ~clear_mask)

    def truncate(self, size):
        self._f.truncate(size)

    # ---- header ----------------------------------------------------------

    def reload(self):
        h = decode_header(self.read(0, 112))
        self.header = SimpleNamespace(**h)
        self.cluster_bits = h["cluster_bits"]
        self.cluster_size = 1 << self.cluster_bits
        self.extended_l2 = bool(h["incompatible_features"] & INCOMPAT_EXTL2)
        self.l2_entry_size = 16 if self.extended_l2 else 8
        self.l2_entries = self.cluster_size // self.l2_entry_size
        self.refcount_bits = 1 << h["refcount_order"]
        self.refblock_entries = self.cluster_size * 8 // self.refcount_bits
        self.has_data_file = bool(h["incompatible_features"] & INCOMPAT_DATA_FILE)
        self.extensions = self._parse_extensions()

    def set_header_field(self, name, value):
        offset, size, _ = HEADER_FIELDS[name]
        self.write_int(offset, size, value)
        self.reload()

    def set_header_bits(self, name, set_mask=0, clear_mask=0):
        offset, size, _ = HEADER_FIELDS[name]
        self.set_bits(offset, size, set_mask, clear_mask)
        self.reload()

    @property
    def ext_end(self):
        """Where the extension area ends ("Header extensions")."""
        bfo = self.header.backing_file_offset
        return bfo if bfo else self.cluster_size

    def _parse_extensions(self):
        exts = []
        off = self.header.header_length
        end = min(self.ext_end, self.cluster_size)
        while off + 8 <= end:
            magic, length = struct.unpack(">II", self.read(off, 8))
            if magic == EXT_END or off + 8 + length > end:
                break
            exts.append(Extension(magic, self.read(off + 8, length), off))
            off += 8 + align_up(length, 8)
        return exts

    def extension(self, magic):
        found = [e for e in self.extensions if e.magic == magic]
        return found[-1] if found else None  # QEMU uses the last copy

    @property
    def backing_name(self):
        h = self.header
        return self.read(h.backing_file_offset, h.backing_file_size) if h.backing_file_offset else None

    def write_cluster0_tail(self, extensions, backing_name=None, end_marker=True,
                            header_length=None):
        """Rewrite everything after the fixed header in cluster 0.

        Serialises `extensions` (Extension objects, or raw bytes taken
        verbatim), an end marker unless told not to, then the backing file
        name right after them as QEMU places it, and zeroes the rest of the
        cluster. Header fields for the backing name are updated to match.
        """
        start = self.header.header_length if header_length is None else header_length
        blob = b"".join(e if isinstance(e, bytes) else e.encode() for e in extensions)
        if end_marker:
            blob += bytes(8)
        if backing_name is not None:
            name_off = start + len(blob)
            blob += backing_name
        if start + len(blob) > self.cluster_size:
            raise ValueError("cluster 0 overflow")
        self.write(start, blob + bytes(self.cluster_size - start - len(blob)))
        if backing_name is not None:
            self.set_header_field("backing_file_offset", name_off)
            self.set_header_field("backing_file_size", len(backing_name))
        else:
            self.set_header_field("backing_file_offset", 0)
            self.set_header_field("backing_file_size", 0)

    def replace_extensions(self, extensions, **kw):
        """Rewrite the extension area keeping the current backing name."""
        kw.setdefault("backing_name", self.backing_name)
        self.write_cluster0_tail(extensions, **kw)

    # ---- L1 / L2 ---------------------------------------------------------

    def read_table(self, offset, count):
        return list(struct.unpack(">%dQ" % count, self.read(offset, 8 * count)))

    def l1(self):
        return self.read_table(self.header.l1_table_offset, self.header.l1_size)

    def set_l1_entry(self, index, value, l1_offset=None):
        base = self.header.l1_table_offset if l1_offset is None else l1_offset
        self.write_int(base + 8 * index, 8, value)

    def l2_entries_of(self, l2_offset, l1_index=0):
        """Every entry of the L2 table at l2_offset as L2Ref objects."""
        words = self.read_table(l2_offset, self.cluster_size // 8)
        step = self.l2_entry_size // 8
        return [L2Ref(l1_index, i, words[i * step], words[i * step + 1] if step == 2 else 0,
                      l2_offset + i * self.l2_entry_size)
                for i in range(self.l2_entries)]

    def l2_entry_offset(self, l1_index, l2_index, l1_offset=None):
        l1 = self.read_table(self.header.l1_table_offset if l1_offset is None else l1_offset,
                             l1_index + 1)
        l2_offset = l1[l1_index] & OFFSET_MASK
        assert l2_offset, "L1 entry %d has no L2 table" % l1_index
        return l2_offset + l2_index * self.l2_entry_size

    def set_l2_entry(self, l1_index, l2_index, value, bitmap=None, l1_offset=None):
        off = self.l2_entry_offset(l1_index, l2_index, l1_offset)
        self.write_int(off, 8, value)
        if bitmap is not None:
            assert self.extended_l2
            self.write_int(off + 8, 8, bitmap)

    def mappings(self, l1_offset=None, l1_size=None):
        """All L2 entries reachable from an L1 table (default: active)."""
        l1 = self.read_table(self.header.l1_table_offset if l1_offset is None else l1_offset,
                             self.header.l1_size if l1_size is None else l1_size)
        refs = []
        for i, e in enumerate(l1):
            if e & OFFSET_MASK:
                refs.extend(self.l2_entries_of(e & OFFSET_MASK, i))
        return refs

    def data_refs(self, **kw):
        """Allocated standard (non-compressed) entries with a host offset."""
        return [r for r in self.mappings(**kw) if not r.compressed and r.host_offset]

    def compressed_refs(self, **kw):
        return [r for r in self.mappings(**kw) if r.compressed]

    def unallocated_refs(self, **kw):
        """Entries inside the virtual disk that map nothing at all."""
        virt_clusters = -(-self.header.size // self.cluster_size)
        return [r for r in self.mappings(**kw)
                if r.entry == 0 and r.bitmap == 0
                and r.l1_index * self.l2_entries + r.l2_index < virt_clusters]

    def compressed_range(self, entry):
        """(host byte offset, byte length) of a compressed descriptor ("Cluster mapping")."""
        x = 62 - (self.cluster_bits - 8)
        offset = entry & ((1 << x) - 1)
        sectors = ((entry >> x) & ((1 << (self.cluster_bits - 8)) - 1)) + 1
        return offset, sectors * 512 - (offset & 511)

    def compressed_entry(self, offset, length):
        """Encode a compressed descriptor for a byte range (inverse of above)."""
        x = 62 - (self.cluster_bits - 8)
        sectors = -(-(length + (offset & 511)) // 512)
        return OFLAG_COMPRESSED | ((sectors - 1) << x) | offset

    # ---- refcounts -------------------------------------------------------

    def reftable(self):
        h = self.header
        return self.read_table(h.refcount_table_offset,
                               h.refcount_table_clusters * self.cluster_size // 8)

    def set_reftable_entry(self, index, value):
        self.write_int(self.header.refcount_table_offset + 8 * index, 8, value)

    def _refcount_slot(self, cluster):
        """(byte offset, bit shift, byte width) of a cluster's refcount."""
        rt_index, index = divmod(cluster, self.refblock_entries)
        block = self.read_int(self.header.refcount_table_offset + 8 * rt_index, 8) & REFT_OFFSET_MASK
        if not block:
            return None
        bits = self.refcount_bits
        if bits < 8:  # packed LSB-first inside a byte ("Host cluster management")
            return block + index * bits // 8, index * bits % 8, 1
        return block + index * bits // 8, 0, bits // 8

    def refcount(self, cluster):
        slot = self._refcount_slot(cluster)
        if slot is None:
            return 0
        off, shift, width = slot
        return (self.read_int(off, width) >> shift) & ((1 << self.refcount_bits) - 1)

    def set_refcount(self, cluster, value):
        slot = self._refcount_slot(cluster)
        assert slot is not None, "cluster %d is not covered by a refcount block" % cluster
        off, shift, width = slot
        mask = ((1 << self.refcount_bits) - 1) << shift
        assert value << shift & ~mask == 0, "refcount %d does not fit" % value
        old = self.read_int(off, width)
        self.write_int(off, width, (old & ~mask) | (value << shift))

    def refblocks(self):
        """(reftable index, refblock offset) for every refblock in use."""
        return [(i, e & REFT_OFFSET_MASK) for i, e in enumerate(self.reftable())
                if e & REFT_OFFSET_MASK]

    # ---- allocation helpers for patches ----------------------------------

    def append_clusters(self, data=b"", count=None, refcount=1):
        """Append whole clusters at the cluster-aligned end of the file.

        The new clusters get `refcount` so that the only inconsistency a
        patch introduces is the one it means to. Returns their offset."""
        count = count or max(1, -(-len(data) // self.cluster_size))
        offset = align_up(self.file_size, self.cluster_size)
        self.write(offset, data + bytes(count * self.cluster_size - len(data)))
        for c in range(count):
            if refcount is not None:
                self.set_refcount(offset // self.cluster_size + c, refcount)
        return offset

    def set_range_refcount(self, offset, length, value):
        """Set the refcount of every cluster a byte range touches."""
        first = offset // self.cluster_size
        last = (offset + length - 1) // self.cluster_size
        for c in range(first, last + 1):
            self.set_refcount(c, value)

    def free_clusters(self, offset, length):
        self.set_range_refcount(offset, length, 0)

    # ---- snapshots ---------------------------------------------------------

    def snapshots(self, within_file=False):
        """The snapshot table entries. With within_file, only those before
        the first entry that does not lie wholly inside the file (otherwise
        the part past the end reads as zeros)."""
        snaps = []
        off = self.header.snapshots_offset
        size = self.file_size if within_file else None
        for _ in range(self.header.nb_snapshots):
            if size is not None and off + SNAPSHOT_HEADER.size > size:
                break
            (l1_off, l1_size, id_size, name_size, dsec, dnsec, vmclock,
             vmstate, extra_size) = SNAPSHOT_HEADER.unpack(self.read(off, SNAPSHOT_HEADER.size))
            p = off + SNAPSHOT_HEADER.size
            if size is not None and p + extra_size + id_size + name_size > size:
                break
            extra = self.read(p, extra_size)
            sid = self.read(p + extra_size, id_size)
            name = self.read(p + extra_size + id_size, name_size)
            snaps.append(Snapshot(l1_off, l1_size, dsec, dnsec, vmclock, vmstate,
                                  extra, sid, name, off))
            off = align_up(p + extra_size + id_size + name_size, 8)
        return snaps

    def snapshot_table_size(self, within_file=False):
        """QEMU's snapshots_size: end of the last entry minus the start."""
        snaps = self.snapshots(within_file)
        if not snaps:
            return 0
        return snaps[-1].offset + len(snaps[-1].encode()) - self.header.snapshots_offset

    def set_snapshot_field(self, index, name, value):
        off, size = Snapshot.FIELDS[name]
        self.write_int(self.snapshots()[index].offset + off, size, value)

    def write_snapshot_table(self, entries):
        """Write a new snapshot table (list of Snapshot or raw bytes) in
        freshly appended clusters, switch the header to it and free the old
        table, keeping refcounts consistent. Returns the new offset."""
        blob = b"".join(e if isinstance(e, bytes) else e.encode() for e in entries)
        old_off, old_size = self.header.snapshots_offset, self.snapshot_table_size()
        new_off = self.append_clusters(blob)
        if old_size:
            self.free_clusters(old_off, old_size)
        self.set_header_field("snapshots_offset", new_off)
        self.set_header_field("nb_snapshots", len(entries))
        return new_off

    # ---- bitmaps -----------------------------------------------------------

    def bitmaps_ext(self):
        """(nb_bitmaps, reserved, directory size, directory offset) or None."""
        ext = self.extension(EXT_BITMAPS)
        return BITMAPS_EXT.unpack(ext.data) if ext and len(ext.data) == BITMAPS_EXT.size else None

    def bitmaps(self):
        ext = self.bitmaps_ext()
        if not ext:
            return []
        nb, _, _, off = ext
        result = []
        for _ in range(nb):
            tab_off, tab_size, flags, btype, gran, name_size, extra_size = \
                BITMAP_DIR_HEADER.unpack(self.read(off, BITMAP_DIR_HEADER.size))
            p = off + BITMAP_DIR_HEADER.size
            extra = self.read(p, extra_size)
            name = self.read(p + extra_size, name_size)
            result.append(Bitmap(tab_off, tab_size, flags, btype, gran, extra, name, off))
            off = align_up(p + extra_size + name_size, 8)
        return result

    def set_bitmap_field(self, index, name, value):
        off, size = Bitmap.FIELDS[name]
        self.write_int(self.bitmaps()[index].offset + off, size, value)

    def bitmap_table(self, bitmap):
        return self.read_table(bitmap.table_offset, bitmap.table_size)

    def bitmap_ranges(self):
        """(offset, length) of every structure of the persistent bitmaps:
        the directory, each bitmap table and each data cluster."""
        ext = self.bitmaps_ext()
        if not ext:
            return
        yield ext[3], ext[2]
        for b in self.bitmaps():
            yield b.table_offset, 8 * b.table_size
            for e in self.bitmap_table(b):
                if e & OFFSET_MASK:
                    yield e & OFFSET_MASK, self.cluster_size

    def bitmap_clusters(self):
        """Host clusters the persistent bitmaps use (directory, tables,
        data), as far as they lie inside the file."""
        cs, out = self.cluster_size, set()
        for off, length in self.bitmap_ranges():
            if length > 0 and off + length <= self.file_size:
                out.update(range(off // cs, (off + length - 1) // cs + 1))
        return out

    # ---- whole-image views -------------------------------------------------

    def computed_refcounts(self):
        """Reference counts per host cluster derived from the metadata, the
        way QEMU's calculate_refcounts() does it (block/qcow2-refcount.c).
        Only for well-formed images: used to validate base images and this
        library itself against QEMU's on-disk refcounts."""
        cs = self.cluster_size
        counts = {}

        def ref(offset, length):
            for c in range(offset // cs, (offset + length - 1) // cs + 1):
                counts[c] = counts.get(c, 0) + 1

        def walk(l1_off, l1_size):
            ref(l1_off, 8 * l1_size)
            for e in self.read_table(l1_off, l1_size):
                if e & OFFSET_MASK:
                    ref(e & OFFSET_MASK, cs)
            for r in self.mappings(l1_off, l1_size):
                if r.compressed:
                    ref(*self.compressed_range(r.entry))
                elif r.host_offset and not self.has_data_file:
                    ref(r.host_offset, cs)

        h = self.header
        ref(0, cs)
        walk(h.l1_table_offset, h.l1_size)
        for s in self.snapshots():
            walk(s.l1_table_offset, s.l1_size)
        if h.nb_snapshots:
            ref(h.snapshots_offset, self.snapshot_table_size())
        ref(h.refcount_table_offset, h.refcount_table_clusters * cs)
        for _, block in self.refblocks():
            ref(block, cs)
        fde = self.extension(EXT_FDE)
        if fde:
            ref(*CRYPTO_EXT.unpack(fde.data))
        if h.autoclear_features & AUTOCLEAR_BITMAPS:
            for off, length in self.bitmap_ranges():
                ref(off, length)
        return counts

    def refcount_mismatches(self):
        """{cluster: (on disk, computed)} for every cluster of the file
        where the two disagree; empty for a consistent image."""
        computed = self.computed_refcounts()
        clusters = -(-self.file_size // self.cluster_size)
        out = {}
        for c in range(max(clusters, max(computed, default=0) + 1)):
            disk, want = self.refcount(c), computed.get(c, 0)
            if disk != want:
                out[c] = (disk, want)
        return out


def guest_hash(path, qemu_img="qemu-img", extra_args=()):
    """sha256 of the guest-visible disk content, via qemu-img convert.

    Used by repair tests to prove that a repair kept guest data. Backing and
    data files must be where the image names them; `extra_args` can carry
    --object/--image-opts for encrypted images."""
    with tempfile.TemporaryDirectory() as tmp:
        raw = os.path.join(tmp, "guest.raw")
        subprocess.run([qemu_img, "convert", *extra_args, "-O", "raw", path, raw],
                       check=True, capture_output=True)
        digest = hashlib.sha256()
        with open(raw, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                digest.update(chunk)
        return digest.hexdigest()


def file_sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
