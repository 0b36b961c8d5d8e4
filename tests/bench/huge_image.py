#!/usr/bin/env python3
"""A valid qcow2 image whose file has more than 2^31 host clusters.

    huge_image.py PATH [--smoke]

or, from Python, ``build(path, smoke=False)``.

QEMU cannot make such an image and refuses to check one:
qcow2_check_refcounts() fails with -EFBIG when the file has more than
INT_MAX clusters, so ``qemu-img check`` prints "qemu-img: Check failed: File
too large" and exits 1. qcheck must check it completely and find nothing
(exit 0). This script writes one directly.

Geometry: 512-byte clusters (cluster_bits 9) so that 2^31 clusters are a
1 TiB file, and 1-bit refcounts (refcount_order 0) so that a refcount block
covers 4096 clusters and the refcount table that covers every cluster of the
file is 2^19 + 1 entries, just over 4 MiB (QEMU's limit, and qcheck's
qemuLimitExceeded warning, is 8 MiB; 16-bit refcounts would need 64 MiB).

The file is sparse: only two regions hold blocks, about 4.3 MB in all.

  near region (host cluster 0 on):
    cluster 0                 header (v3, 112 bytes, end-of-extensions marker)
    1 .. 8193                 refcount table (8193 clusters, 524352 entries;
                              entries 0..2 and 2^19 are set, the rest 0)
    next 512                  active L1 table (32768 entries: 1 GiB virtual)
    next 2                    L2 tables A and C
    next 16                   data clusters
    next 3                    refcount blocks 0..2 (covering clusters
                              0..12287, themselves included)
  hole of about 1 TiB (never written: reads as zeros, no blocks)
  far region (host cluster 2^31 = byte 1 TiB on):
    2^31                      refcount block 2^19 (covers 2^31 .. 2^31+4095)
    2^31 + 1                  L2 table B
    2^31 + 2 .. 2^31 + 25     data clusters; the last one is the last
                              cluster of the file

L1[0] -> A (near): guest clusters 0..7 to near data, 8..15 to far data in
reverse order, one zero-flag entry (no host cluster).
L1[32767] (the last 32 KiB of the disk) -> B (far): 8 far data clusters, then
8 near data clusters. L1[100] -> C (near): the other 8 far data clusters, in
reverse order. No host cluster is mapped twice: 1-bit refcounts cannot count
to 2.
Every host cluster in use has exactly one reference and refcount 1, so every
L1 and L2 entry carries the COPIED flag. The file ends with a cluster in use,
so there is no trailing space either.

Writing takes a few milliseconds (--smoke builds the same image; it exists so
that callers need not care).
"""

import argparse
import os
import struct
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "layout"))
import qcow2lib as q  # noqa: E402

CLUSTER_BITS = 9
CS = 1 << CLUSTER_BITS                  # 512-byte clusters
REFCOUNT_ORDER = 0                      # 1-bit refcounts
REFBLOCK_ENTRIES = CS * 8 >> REFCOUNT_ORDER   # 4096 clusters per refcount block
L2_ENTRIES = CS // 8                    # 64 entries, 32 KiB of guest per L2 table
VIRTUAL_SIZE = 1 << 30                  # 1 GiB: 32768 L1 entries
L1_SIZE = VIRTUAL_SIZE // (CS * L2_ENTRIES)
FAR = 1 << 31                           # first far cluster: byte offset 1 TiB
NEAR_DATA = 16
FAR_DATA = 24

COPIED = q.OFLAG_COPIED
ZERO = q.OFLAG_ZERO


def _layout():
    """Cluster numbers of every structure (see the module docstring)."""
    nb_clusters = FAR + 2 + FAR_DATA                   # file length in clusters
    rt_entries_needed = -(-nb_clusters // REFBLOCK_ENTRIES)
    rt_clusters = -(-rt_entries_needed * 8 // CS)
    lay = {"nb_clusters": nb_clusters, "rt_clusters": rt_clusters,
           "rt_entries": rt_clusters * CS // 8}
    c = 1
    lay["reftable"] = c
    c += rt_clusters
    lay["l1"] = c
    l1_clusters = -(-L1_SIZE * 8 // CS)
    c += l1_clusters
    lay["l2_a"], lay["l2_c"] = c, c + 1
    c += 2
    lay["near_data"] = list(range(c, c + NEAR_DATA))
    c += NEAR_DATA
    # refcount blocks at the end of the near region cover it, themselves too
    nb_rb = 1
    while -(-(c + nb_rb) // REFBLOCK_ENTRIES) > nb_rb:
        nb_rb += 1
    lay["near_refblocks"] = list(range(c, c + nb_rb))
    c += nb_rb
    lay["near_end"] = c                               # clusters 0..c-1 in use
    lay["far_refblock"] = FAR
    lay["l2_b"] = FAR + 1
    lay["far_data"] = list(range(FAR + 2, FAR + 2 + FAR_DATA))
    assert lay["far_data"][-1] == nb_clusters - 1
    assert FAR % REFBLOCK_ENTRIES == 0
    assert nb_clusters - FAR <= REFBLOCK_ENTRIES      # one far refcount block
    assert lay["rt_entries"] * 8 <= 8 << 20           # QEMU's refcount table limit
    return lay


def _data(cluster):
    """Recognisable, non-zero content for a data cluster."""
    line = b"qcheck huge image: host cluster %d\n" % cluster
    return (line * (CS // len(line) + 1))[:CS]


def build(path, smoke=False):
    """Write the image to `path` (replacing it). `smoke` makes no
    difference: the full image is already fast to write. Returns a dict
    describing it (file size, cluster counts, where the structures are)."""
    del smoke
    lay = _layout()
    near = bytearray(lay["near_end"] * CS)
    far = bytearray((lay["nb_clusters"] - FAR) * CS)

    def put(cluster, data):
        if cluster >= FAR:
            off = (cluster - FAR) * CS
            far[off:off + len(data)] = data
        else:
            off = cluster * CS
            near[off:off + len(data)] = data

    def put64(cluster, index, value):
        put_at = cluster * CS + index * 8
        if cluster >= FAR:
            struct.pack_into(">Q", far, put_at - FAR * CS, value)
        else:
            struct.pack_into(">Q", near, put_at, value)

    # header (v3, 112 bytes); the end-of-extensions marker is the zeros after it
    put(0, q.encode_header(cluster_bits=CLUSTER_BITS, size=VIRTUAL_SIZE, l1_size=L1_SIZE,
                           l1_table_offset=lay["l1"] * CS,
                           refcount_table_offset=lay["reftable"] * CS,
                           refcount_table_clusters=lay["rt_clusters"],
                           refcount_order=REFCOUNT_ORDER))

    # guest mappings
    far_data = lay["far_data"]
    near_data = lay["near_data"]
    refs = {}

    def map_table(l2_cluster, hosts, first_index):
        for i, host in enumerate(hosts):
            put64(l2_cluster, first_index + i, host * CS | COPIED)
            refs[host] = refs.get(host, 0) + 1

    # A: near data in order, then far data in reverse order, and a zero cluster
    map_table(lay["l2_a"], near_data[:8] + list(reversed(far_data[:8])), 0)
    put64(lay["l2_a"], 20, ZERO)
    # B (far), the last 16 entries of the disk: far data, then near data
    map_table(lay["l2_b"], far_data[8:16] + near_data[8:16], L2_ENTRIES - 16)
    # C: the rest of the far data, in reverse order
    map_table(lay["l2_c"], list(reversed(far_data[16:])), 0)
    put64(lay["l1"], 0, lay["l2_a"] * CS | COPIED)
    put64(lay["l1"], 100, lay["l2_c"] * CS | COPIED)
    put64(lay["l1"], L1_SIZE - 1, lay["l2_b"] * CS | COPIED)
    for c in near_data + far_data:
        put(c, _data(c))

    # every cluster in use, each with refcount 1
    used = set(range(lay["near_end"]))
    used.update(range(FAR, lay["nb_clusters"]))
    assert all(refs.get(c) == 1 for c in near_data + far_data), refs
    blocks = {}
    for i, rb in enumerate(lay["near_refblocks"]):
        blocks[i] = rb
    blocks[FAR // REFBLOCK_ENTRIES] = lay["far_refblock"]
    for index, rb in blocks.items():
        put64(lay["reftable"], index, rb * CS)
        bits = bytearray(CS)
        first = index * REFBLOCK_ENTRIES
        for c in range(first, first + REFBLOCK_ENTRIES):
            if c in used:
                k = c - first
                bits[k // 8] |= 1 << (k % 8)          # LSB first (1-bit refcounts)
        put(rb, bytes(bits))

    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(near)
        f.seek(FAR * CS)
        f.write(far)
    os.replace(tmp, path)
    return {"file_size": lay["nb_clusters"] * CS, "clusters": lay["nb_clusters"],
            "used_clusters": len(used), "layout": lay}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("path")
    ap.add_argument("--smoke", action="store_true",
                    help="the image for the smoke test (the same image)")
    args = ap.parse_args()
    info = build(args.path, smoke=args.smoke)
    print("%s: %d bytes, %d host clusters (%d in use, 2^31 = %d)"
          % (args.path, info["file_size"], info["clusters"], info["used_clusters"], 1 << 31))
    return 0


if __name__ == "__main__":
    sys.exit(main())
