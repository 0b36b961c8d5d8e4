"""A small pure-Python reader and patcher of QED images, for tests.

It follows QEMU's docs/interop/qed_spec.txt: a little-endian header at
offset 0 (64 bytes), one L1 table of `table_size` clusters at
`l1_table_offset`, L2 tables of the same size, 64-bit table entries where 0
is "not allocated" and (in L2 tables) 1 is "reads as zeroes".

Nothing here validates: tests use it to write the damage they want, so
every setter writes exactly the bytes it is given. It is independent of the
checker's C code on purpose (a second reading of the specification).
"""

import errno
import hashlib
import os
import struct
from dataclasses import dataclass, fields

MAGIC = 0x00444551  # "QED\0" read as a little-endian uint32
HEADER_FORMAT = "<IIIIQQQQQII"
HEADER_SIZE = struct.calcsize(HEADER_FORMAT)  # 64

F_BACKING_FILE = 0x01
F_NEED_CHECK = 0x02
F_BACKING_FORMAT_NO_PROBE = 0x04

UNALLOCATED = 0
ZERO_CLUSTER = 1


@dataclass
class Header:
    magic: int
    cluster_size: int
    table_size: int          # in clusters, for L1 and L2 tables alike
    header_size: int         # in clusters
    features: int
    compat_features: int
    autoclear_features: int
    l1_table_offset: int     # in bytes
    image_size: int          # guest size in bytes
    backing_filename_offset: int
    backing_filename_size: int

    @classmethod
    def decode(cls, data):
        return cls(*struct.unpack_from(HEADER_FORMAT, data, 0))

    def encode(self):
        return struct.pack(HEADER_FORMAT, *(getattr(self, f.name) for f in fields(self)))

    @property
    def table_bytes(self):
        return self.cluster_size * self.table_size

    @property
    def table_entries(self):
        return self.table_bytes // 8


# The byte offset of each header field, for patches that must write one field
# whatever the others hold.
FIELD_OFFSETS = {}
_pos = 0
for _f, _code in zip(fields(Header), HEADER_FORMAT[1:]):
    FIELD_OFFSETS[_f.name] = (_pos, "<" + _code)
    _pos += struct.calcsize("<" + _code)


def file_sha256(path):
    """sha256 of the file's data extents (offset, length, bytes) and its
    size: a fingerprint that changes with any write, without reading the
    holes of a sparse file of gigabytes (a write of zeroes into a hole
    makes a data extent, so it changes too)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        h.update(b"size %d\n" % size)
        pos = 0
        while pos < size:
            try:
                start = os.lseek(f.fileno(), pos, os.SEEK_DATA)
                end = os.lseek(f.fileno(), start, os.SEEK_HOLE)
            except OSError as e:
                if e.errno == errno.ENXIO:  # only a hole after pos
                    break
                start, end = pos, size  # no SEEK_DATA here: all of it is data
            h.update(b"extent %d %d\n" % (start, end - start))
            f.seek(start)
            left = end - start
            while left:
                block = f.read(min(left, 1 << 20))
                if not block:
                    break
                h.update(block)
                left -= len(block)
            pos = end
    return h.hexdigest()


class Image:
    """An open QED file: the header as read, tables read and written on demand."""

    def __init__(self, path):
        self.path = path
        with open(path, "rb") as f:
            self.header = Header.decode(f.read(HEADER_SIZE))

    @property
    def cluster_size(self):
        return self.header.cluster_size

    def file_size(self):
        return os.path.getsize(self.path)

    def read_table(self, offset):
        h = self.header
        with open(self.path, "rb") as f:
            f.seek(offset)
            data = f.read(h.table_bytes)
        data = data.ljust(h.table_bytes, b"\0")
        return list(struct.unpack("<%dQ" % h.table_entries, data))

    def l1(self):
        return self.read_table(self.header.l1_table_offset)

    def l2(self, l1_index):
        return self.read_table(self.l1()[l1_index])

    def guest_to_indexes(self, guest_offset):
        """(L1 index, L2 index) of a guest offset."""
        cluster = guest_offset // self.cluster_size
        return divmod(cluster, self.header.table_entries)

    def l2_entry(self, guest_offset):
        """(byte offset of the L2 entry in the file, its value) for a guest offset."""
        i1, i2 = self.guest_to_indexes(guest_offset)
        table = self.l1()[i1]
        return table + 8 * i2, self.read_table(table)[i2]

    def l1_entry_offset(self, index):
        return self.header.l1_table_offset + 8 * index

    # ---- patching ----------------------------------------------------------------

    def write_at(self, offset, data):
        with open(self.path, "r+b") as f:
            f.seek(offset)
            f.write(data)

    def write_u64(self, offset, value):
        self.write_at(offset, struct.pack("<Q", value))

    def set_field(self, name, value):
        """Write one header field (and remember it)."""
        pos, code = FIELD_OFFSETS[name]
        self.write_at(pos, struct.pack(code, value))
        setattr(self.header, name, value)

    def set_l1(self, index, value):
        self.write_u64(self.l1_entry_offset(index), value)

    def set_l2(self, guest_offset, value):
        entry, _ = self.l2_entry(guest_offset)
        self.write_u64(entry, value)

    def append_clusters(self, count, fill=b"\xa5"):
        """Add `count` clusters at the end of the file (after rounding it up
        to a cluster); return the offset of the first."""
        size = self.file_size()
        start = -(-size // self.cluster_size) * self.cluster_size
        with open(self.path, "r+b") as f:
            f.truncate(start)
            f.seek(start)
            f.write(fill * (count * self.cluster_size // len(fill)))
        return start

    def copy_clusters(self, src, count):
        """Append a copy of `count` clusters starting at `src`; return where."""
        with open(self.path, "rb") as f:
            f.seek(src)
            data = f.read(count * self.cluster_size)
        start = self.append_clusters(count, b"\0")
        self.write_at(start, data)
        return start
