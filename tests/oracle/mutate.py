#!/usr/bin/env python3
"""Seeded mutations of qcow2 images that aim at the metadata.

    mutate.py IMAGE SEED [--count N]      (mutates IMAGE in place)

A mutant is 1-3 mutations of one image, chosen by a `random.Random` seeded
with a string (the workload seed and the mutant number, or the corpus file
name and the mutant number), so the same image and seed always give the
same bytes. Each mutation is recorded as what it meant ("L2 entry 3 of the
table at 0x50000: set COPIED") and as the raw edits it made (offset, old
bytes, new bytes; or a new file length), so a mutant can be rebuilt from
the JSON alone (`apply_edits`).

Targets (structures are found with layout/qcow2lib.py, each on its
own, so a broken one does not hide the others):

  header field        every field of the version's header, set to a
                      boundary value (0, 1, all ones, old +-1, old +- one
                      cluster, unaligned, the file size, a power of two)
  header bits         a bit flip in the header; known and unknown bits of
                      the three feature masks
  extensions          length, magic (unknown, end, duplicate), data bytes,
                      the end marker removed
  L1 / L2 entries     active or snapshot tables: cleared, COPIED toggled,
                      zero/compressed flag, reserved bits, unaligned, past
                      the end of the file, pointed at metadata or at
                      another data cluster, bit flips; extended-L2 bitmaps
  refcount table      entries cleared, unaligned, past the end, reserved
                      bits, duplicated, pointed at other clusters
  refcount blocks     the refcount of a cluster in use, free, metadata or
                      past the end set to 0, 1, 2, old +- 1 or the maximum
  snapshot table      nb_snapshots and snapshots_offset boundaries; every
                      fixed field of an entry and of its extra data
  bitmaps             extension fields, directory entry fields, flags,
                      bitmap table entries
  file length         cut (cluster-aligned or not), or grown with zeros or
                      garbage
  metadata bytes      a random bit flip in any metadata cluster
"""

import argparse
import json
import os
import random
import struct
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import open_image, qcow2lib as q  # noqa: E402

FIELD_SIZES = {1: ">B", 2: ">H", 4: ">I", 8: ">Q"}


class Mutator:
    """Mutations of one image file, applied in place."""

    def __init__(self, path, rng):
        self.path = path
        self.rng = rng
        self.edits = []  # [{"offset", "old", "new"}] or [{"truncate": size}]
        self.im = None

    # -- raw edits, recorded ----------------------------------------------------

    def write(self, offset, data):
        if offset < 0 or offset > (1 << 40):
            raise ValueError("edit offset out of range")
        old = self.im.read(offset, len(data))
        if old == data and offset + len(data) <= self.im.file_size:
            return  # no change: the target does not count
        self.im.write(offset, data)
        self.edits.append({"offset": offset, "old": old.hex(), "new": data.hex()})

    def set_int(self, offset, size, value):
        value &= (1 << (8 * size)) - 1
        self.write(offset, struct.pack(FIELD_SIZES[size], value))

    def get_int(self, offset, size):
        return self.im.read_int(offset, size)

    def truncate(self, size):
        self.im.truncate(size)
        self.edits.append({"truncate": size})

    # -- value choices ------------------------------------------------------------

    def boundary(self, old, size, align=None):
        """A boundary value for an integer field of `size` bytes."""
        rng = self.rng
        cs = self.im.cluster_size if 9 <= self.im.cluster_bits <= 30 else 65536
        top = (1 << (8 * size)) - 1
        fsize = self.im.file_size
        cands = [0, 1, top, top >> 1, old + 1, old - 1, old + cs, old - cs, old ^ (1 << rng.randrange(8 * size)),
                 fsize, q.align_up(fsize, cs), fsize + cs, 1 << rng.randrange(8 * size), old + 512,
                 old * 2, rng.randrange(0, top + 1)]
        if align:
            cands += [old + align // 2, rng.randrange(0, max(1, fsize // align + 4)) * align]
        return rng.choice(cands) & top

    def cluster_offsets(self):
        """Host offsets of clusters an entry might be pointed at."""
        cs, fs = self.im.cluster_size, self.im.file_size
        h = self.im.header
        cands = [0, h.l1_table_offset, h.refcount_table_offset, q.align_up(fs, cs), q.align_up(fs, cs) + 16 * cs,
                 self.rng.randrange(0, max(1, fs // cs)) * cs]
        if h.snapshots_offset:
            cands.append(h.snapshots_offset)
        try:
            cands += [b for _, b in self.im.refblocks()[:4]]
        except (struct.error, ValueError, MemoryError, OverflowError):
            pass
        return cands

    # -- targets ---------------------------------------------------------------------

    def header_field(self):
        im = self.im
        fields = [n for n, (_, _, v) in q.HEADER_FIELDS.items()
                  if v <= im.header.version and n != "magic" or (n == "magic" and self.rng.random() < 0.1)]
        name = self.rng.choice(fields)
        off, size, _ = q.HEADER_FIELDS[name]
        old = self.get_int(off, size)
        align = im.cluster_size if name.endswith("offset") else None
        new = self.boundary(old, size, align)
        self.set_int(off, size, new)
        return "header %s: %d -> %d" % (name, old, new)

    def header_bits(self):
        rng, im = self.rng, self.im
        if im.header.version >= 3 and rng.random() < 0.6:
            name = rng.choice(["incompatible_features", "compatible_features", "autoclear_features"])
            bit = rng.choice([0, 1, 2, 3, 4, 5, rng.randrange(64)]) if name == "incompatible_features" \
                else rng.choice([0, 1, 2, rng.randrange(64)])
            off, size, _ = q.HEADER_FIELDS[name]
            old = self.get_int(off, size)
            self.set_int(off, size, old ^ (1 << bit))
            return "header %s: bit %d flipped" % (name, bit)
        end = min(im.header.header_length if im.header.version >= 3 else 72, 112)
        byte = rng.randrange(4, end)
        bit = rng.randrange(8)
        self.write(byte, bytes([im.read(byte, 1)[0] ^ (1 << bit)]))
        return "header byte %d: bit %d flipped" % (byte, bit)

    def extension(self):
        rng, im = self.rng, self.im
        exts = im.extensions
        start = im.header.header_length if im.header.version >= 3 else 72
        end_marker = start + sum(8 + q.align_up(len(e.data), 8) for e in exts)
        kind = rng.choice(["length", "magic", "data", "end", "length"])
        if not exts or kind == "end":
            if end_marker + 8 > im.cluster_size:
                raise ValueError("no room")
            if rng.random() < 0.5:
                self.write(end_marker, struct.pack(">II", 0, rng.choice([1, 8, 16, 0xFFFF])))
                return "extension end marker at %d: non-zero length" % end_marker
            self.write(end_marker, struct.pack(">II", rng.choice([0x12345678, q.EXT_BACKING_FORMAT,
                                                                 q.EXT_FEATURE_TABLE, q.EXT_BITMAPS]),
                                               rng.choice([0, 8, 24, 64])))
            return "extension end marker at %d replaced by an extension header" % end_marker
        e = rng.choice(exts)
        if kind == "length":
            new = rng.choice([0, 1, 7, len(e.data) - 1, len(e.data) + 1, len(e.data) + 8, 0xFFFFFFFF,
                              im.cluster_size, rng.randrange(0, 4096)]) & 0xFFFFFFFF
            self.set_int(e.offset + 4, 4, new)
            return "extension 0x%08x at %d: length %d -> %d" % (e.magic, e.offset, len(e.data), new)
        if kind == "magic":
            others = [x.magic for x in exts if x.magic != e.magic] or [q.EXT_BITMAPS]
            new = rng.choice([0, 0x12345678, rng.choice(others), q.EXT_DATA_FILE, q.EXT_FDE])
            self.set_int(e.offset, 4, new)
            return "extension 0x%08x at %d: magic -> 0x%08x" % (e.magic, e.offset, new)
        if not e.data:
            raise ValueError("empty extension")
        i = rng.randrange(len(e.data))
        self.write(e.offset + 8 + i, bytes([e.data[i] ^ (1 << rng.randrange(8))]))
        return "extension 0x%08x at %d: data byte %d flipped" % (e.magic, e.offset, i)

    def l1_tables(self):
        """(label, offset, size) of the active and snapshot L1 tables."""
        im = self.im
        out = [("active L1", im.header.l1_table_offset, im.header.l1_size)]
        if im.header.nb_snapshots <= 64:
            for i, s in enumerate(im.snapshots()):
                out.append(("snapshot %d L1" % i, s.l1_table_offset, s.l1_size))
        return [t for t in out if 0 < t[2] <= 1 << 16 and t[1] + 8 * t[2] <= im.file_size]

    def entry_value(self, old, kind):
        """A damaged L1/L2 entry."""
        rng, im = self.rng, self.im
        cs = im.cluster_size
        choice = rng.choice(["zero", "copied", "reserved", "unaligned", "past-eof", "metadata", "flip",
                             "other"] + (["zeroflag", "compressed"] if kind == "L2" else []))
        if choice == "zero":
            return 0, "cleared"
        if choice == "copied":
            return old ^ q.OFLAG_COPIED, "COPIED toggled"
        if choice == "reserved":
            mask = q.L1E_RESERVED_MASK if kind == "L1" else q.L2E_RESERVED_MASK
            bits = [b for b in range(64) if mask >> b & 1]
            b = rng.choice(bits)
            return old | 1 << b, "reserved bit %d set" % b
        if choice == "unaligned":
            delta = rng.choice([512, cs // 2, 8]) if cs > 512 else 8
            return old + delta, "host offset +%d" % delta
        if choice == "past-eof":
            return (old & ~q.OFFSET_MASK) | (q.align_up(im.file_size, cs) + cs * rng.randrange(0, 64)), \
                "host offset past the end of the file"
        if choice in ("metadata", "other"):
            target = rng.choice(self.cluster_offsets())
            return (old & ~q.OFFSET_MASK) | target, "host offset -> 0x%x" % target
        if choice == "zeroflag":
            return old ^ q.OFLAG_ZERO, "zero flag toggled"
        if choice == "compressed":
            return old ^ q.OFLAG_COMPRESSED, "compressed flag toggled"
        b = rng.randrange(64)
        return old ^ (1 << b), "bit %d flipped" % b

    def l1_entry(self):
        rng = self.rng
        label, off, size = rng.choice(self.l1_tables())
        entries = self.im.read_table(off, size)
        used = [i for i, e in enumerate(entries) if e]
        i = rng.choice(used) if used and rng.random() < 0.85 else rng.randrange(size)
        new, what = self.entry_value(entries[i], "L1")
        self.set_int(off + 8 * i, 8, new)
        return "%s entry %d: %s (0x%x -> 0x%x)" % (label, i, what, entries[i], new & (1 << 64) - 1)

    def l2_tables(self):
        im, cs = self.im, self.im.cluster_size
        out = []
        for label, off, size in self.l1_tables():
            for i, e in enumerate(im.read_table(off, size)):
                l2 = e & q.OFFSET_MASK
                if l2 and l2 % cs == 0 and l2 + cs <= im.file_size:
                    out.append(("L2 table at 0x%x (%s entry %d)" % (l2, label, i), l2))
        return out

    def l2_entry(self):
        rng, im = self.rng, self.im
        label, l2 = rng.choice(self.l2_tables())
        refs = im.l2_entries_of(l2)
        used = [r for r in refs if r.entry or r.bitmap]
        r = rng.choice(used) if used and rng.random() < 0.85 else rng.choice(refs)
        if im.extended_l2 and rng.random() < 0.3:
            b = rng.randrange(64)
            self.set_int(r.entry_offset + 8, 8, r.bitmap ^ (1 << b))
            return "%s entry %d: subcluster bitmap bit %d flipped" % (label, r.l2_index, b)
        if r.compressed and rng.random() < 0.5:
            x = 62 - (im.cluster_bits - 8)
            what = rng.choice(["sectors", "offset"])
            new = r.entry ^ (1 << rng.randrange(x, 62)) if what == "sectors" else r.entry ^ (1 << rng.randrange(0, x))
            self.set_int(r.entry_offset, 8, new)
            return "%s entry %d: compressed descriptor %s bit flipped" % (label, r.l2_index, what)
        if rng.random() < 0.15:
            other = rng.choice(used or refs)
            self.set_int(r.entry_offset, 8, other.entry)
            return "%s entry %d: copy of entry %d (cross-link)" % (label, r.l2_index, other.l2_index)
        new, what = self.entry_value(r.entry, "L2")
        self.set_int(r.entry_offset, 8, new)
        return "%s entry %d: %s" % (label, r.l2_index, what)

    def reftable_entry(self):
        rng, im = self.rng, self.im
        h = im.header
        size = h.refcount_table_clusters * im.cluster_size // 8
        if not 0 < size <= 1 << 20 or h.refcount_table_offset + 8 * size > im.file_size:
            raise ValueError("no usable refcount table")
        entries = im.read_table(h.refcount_table_offset, min(size, 4096))
        used = [i for i, e in enumerate(entries) if e]
        i = rng.choice(used) if used and rng.random() < 0.8 else rng.randrange(len(entries))
        old = entries[i]
        choice = rng.choice(["zero", "unaligned", "past-eof", "reserved", "dup", "other", "flip"])
        if choice == "zero":
            new = 0
        elif choice == "unaligned":
            new = old + 512
        elif choice == "past-eof":
            new = q.align_up(im.file_size, im.cluster_size) + im.cluster_size * rng.randrange(4)
        elif choice == "reserved":
            new = old | rng.randrange(1, 512)
        elif choice == "dup":
            new = entries[rng.choice(used)] if used else 0
        elif choice == "other":
            new = rng.choice(self.cluster_offsets())
        else:
            new = old ^ (1 << rng.randrange(64))
        self.set_int(h.refcount_table_offset + 8 * i, 8, new)
        return "refcount table entry %d: %s (0x%x -> 0x%x)" % (i, choice, old, new)

    def refcount(self):
        rng, im = self.rng, self.im
        cs = im.cluster_size
        clusters = -(-im.file_size // cs)
        cluster = rng.choice([rng.randrange(clusters + 4), rng.randrange(clusters), 0,
                              im.header.l1_table_offset // cs, clusters, clusters + 1])
        slot = im._refcount_slot(cluster)
        if slot is None:
            raise ValueError("cluster not covered")
        old = im.refcount(cluster)
        top = (1 << im.refcount_bits) - 1
        new = rng.choice([0, 1, 2, old + 1, old - 1, top]) & top
        off, shift, width = slot
        if off + width > im.file_size:
            raise ValueError("refcount block past the end")
        word = self.get_int(off, width)
        mask = top << shift
        self.set_int(off, width, (word & ~mask) | (new << shift))
        return "refcount of host cluster %d: %d -> %d" % (cluster, old, new)

    def snapshot(self):
        rng, im = self.rng, self.im
        h = im.header
        if rng.random() < 0.25 or not h.nb_snapshots:
            name = rng.choice(["nb_snapshots", "snapshots_offset"])
            off, size, _ = q.HEADER_FIELDS[name]
            old = self.get_int(off, size)
            if name == "nb_snapshots":
                new = rng.choice([0, old + 1, old - 1, 65536, 65537, 0xFFFFFFFF, old * 2]) & 0xFFFFFFFF
            else:
                new = self.boundary(old, 8, im.cluster_size)
            self.set_int(off, size, new)
            return "header %s: %d -> %d" % (name, old, new)
        snaps = im.snapshots() if h.nb_snapshots <= 64 else []
        if not snaps:
            raise ValueError("no snapshot table to parse")
        i = rng.randrange(len(snaps))
        s = snaps[i]
        fields = [f for f, (o, _) in q.Snapshot.FIELDS.items() if o < 40 or o - 40 + 8 <= len(s.extra)]
        name = rng.choice(fields)
        o, size = q.Snapshot.FIELDS[name]
        old = self.get_int(s.offset + o, size)
        if name == "extra_data_size":
            new = rng.choice([0, 8, 15, 16, 24, 1024, 1025, old + 8, old - 8, 0xFFFFFFFF]) & 0xFFFFFFFF
        elif name in ("id_str_size", "name_size"):
            new = rng.choice([0, old + 1, old - 1, 0xFFFF, 1024])
        elif name == "l1_table_offset":
            new = rng.choice([self.boundary(old, 8, im.cluster_size), h.l1_table_offset])
        elif name == "l1_size":
            new = rng.choice([0, old + 1, old - 1, 1 << 22, 0xFFFFFFFF, h.l1_size])
        else:
            new = self.boundary(old, size)
        self.set_int(s.offset + o, size, new)
        return "snapshot %d (id %r) %s: %d -> %d" % (i, s.id.decode("latin-1"), name, old, new & ((1 << 8 * size) - 1))

    def bitmap(self):
        rng, im = self.rng, self.im
        ext = im.extension(q.EXT_BITMAPS)
        if not ext:
            raise ValueError("no bitmaps")
        roll = rng.random()
        if roll < 0.25:
            fields = [("nb_bitmaps", 0, 4), ("reserved", 4, 4), ("directory size", 8, 8), ("directory offset", 16, 8)]
            name, o, size = rng.choice(fields)
            old = self.get_int(ext.offset + 8 + o, size)
            new = self.boundary(old, size, im.cluster_size if "offset" in name else None)
            self.set_int(ext.offset + 8 + o, size, new)
            return "bitmaps extension %s: %d -> %d" % (name, old, new)
        bms = im.bitmaps() if im.bitmaps_ext() and im.bitmaps_ext()[0] <= 64 else []
        if not bms:
            raise ValueError("no bitmap directory")
        i = rng.randrange(len(bms))
        b = bms[i]
        if roll < 0.7 or not b.table_size:
            name = rng.choice(list(q.Bitmap.FIELDS))
            o, size = q.Bitmap.FIELDS[name]
            old = self.get_int(b.offset + o, size)
            if name == "flags":
                new = old ^ (1 << rng.choice([0, 1, 2, rng.randrange(32)]))
            elif name in ("type", "granularity_bits"):
                new = rng.choice([0, 1, 8, 9, 31, 32, 63, 64, 255, old + 1])
            else:
                new = self.boundary(old, size, im.cluster_size if "offset" in name else None)
            self.set_int(b.offset + o, size, new)
            return "bitmap %d (%r) %s: %d -> %d" % (i, b.name.decode("latin-1"), name, old, new & ((1 << 8 * size) - 1))
        if b.table_offset + 8 * b.table_size > im.file_size or b.table_size > 1 << 16:
            raise ValueError("bitmap table out of the file")
        table = im.bitmap_table(b)
        j = rng.randrange(len(table))
        old = table[j]
        new, what = self.entry_value(old, "L1")
        if rng.random() < 0.3:
            new, what = old ^ 1, "all-ones flag toggled"
        self.set_int(b.table_offset + 8 * j, 8, new)
        return "bitmap %d table entry %d: %s" % (i, j, what)

    def file_length(self):
        rng, im = self.rng, self.im
        fs, cs = im.file_size, im.cluster_size
        if rng.random() < 0.6:
            new = rng.choice([fs - 1, fs - 512, fs - cs, fs // 2, q.align_up(fs // 2, cs), max(0, fs - 3 * cs), 200,
                              rng.randrange(1, max(2, fs))])
            new = max(0, new)
            self.truncate(new)
            return "file cut from %d to %d bytes" % (fs, new)
        extra = rng.choice([1, 512, cs, 3 * cs + 17])
        data = bytes(extra) if rng.random() < 0.5 else bytes(rng.randrange(256) for _ in range(min(extra, 4096)))
        self.write(fs, data)
        return "file grown by %d bytes (%s)" % (len(data), "zeros" if not data.strip(b"\0") else "garbage")

    def metadata_byte(self):
        rng, im = self.rng, self.im
        cs = im.cluster_size
        regions = [(0, min(cs, 4096))]
        h = im.header
        regions.append((h.l1_table_offset, 8 * h.l1_size))
        regions.append((h.refcount_table_offset, min(h.refcount_table_clusters * cs, 4096)))
        for _, l2 in self.l2_tables()[:8]:
            regions.append((l2, cs))
        for _, b in im.refblocks()[:4]:
            regions.append((b, cs))
        if h.nb_snapshots:
            regions.append((h.snapshots_offset, 256))
        regions = [(o, n) for o, n in regions if n > 0 and o + n <= im.file_size]
        off, n = rng.choice(regions)
        pos = off + rng.randrange(n)
        bit = rng.randrange(8)
        self.write(pos, bytes([im.read(pos, 1)[0] ^ (1 << bit)]))
        return "metadata byte 0x%x: bit %d flipped" % (pos, bit)

    TARGETS = [("header_field", 10), ("header_bits", 6), ("extension", 5), ("l1_entry", 10),
               ("l2_entry", 20), ("reftable_entry", 6), ("refcount", 14), ("snapshot", 10),
               ("bitmap", 7), ("file_length", 4), ("metadata_byte", 8)]

    def mutate(self, count):
        """Apply `count` mutations (a target that cannot apply to this image
        is replaced by another); returns their descriptions."""
        done = []
        names = [n for n, _ in self.TARGETS]
        weights = [w for _, w in self.TARGETS]
        tries = 0
        while len(done) < count and tries < 40:
            tries += 1
            name = self.rng.choices(names, weights)[0]
            before = len(self.edits)
            try:
                self.im = open_image(self.path, writable=True)
                what = getattr(self, name)()
                if len(self.edits) > before:
                    done.append(what)
            except (ValueError, IndexError, struct.error, AssertionError, MemoryError, OverflowError,
                    ZeroDivisionError, OSError, KeyError):
                continue  # this target does not exist here (or the image is too broken to find it)
            finally:
                if self.im:
                    self.im.close()
                    self.im = None
        return done


def mutate(path, seed_text, count=None):
    """Mutate the file at `path` in place; returns (descriptions, edits)."""
    rng = random.Random(seed_text)
    count = count or rng.choices([1, 2, 3], [70, 20, 10])[0]
    m = Mutator(path, rng)
    return m.mutate(count), m.edits


def apply_edits(path, edits):
    """Redo recorded edits on a copy of the original image."""
    with open(path, "r+b") as f:
        for e in edits:
            if "truncate" in e:
                f.truncate(e["truncate"])
            else:
                f.seek(e["offset"])
                f.write(bytes.fromhex(e["new"]))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image")
    ap.add_argument("seed", help="any string; the same one gives the same mutations")
    ap.add_argument("--count", type=int, help="number of mutations (default: 1-3 by the seed)")
    args = ap.parse_args()
    what, edits = mutate(args.image, args.seed, args.count)
    print(json.dumps({"mutations": what, "edits": edits}, indent=1))
    return 0 if what else 1


if __name__ == "__main__":
    sys.exit(main())
