#!/usr/bin/env python3
"""Seeded random qcow2 images and histories, made with qemu-img and qemu-io.

    workload.py SEED DIR                  build the image of SEED in DIR (a new folder)
    workload.py 0 DIR --replay RECIPE     run a recorded recipe.json again

One integer seed decides everything: the `qemu-img create` options (compat
0.10/1.1, cluster size 512 B - 2 MiB, refcount width 1-64, extended L2,
zlib/zstd, lazy refcounts, every preallocation mode, an external data file
with and without data_file_raw, a qcow2 or raw backing file with or without
a backing format) and a history of 3-14 steps: qemu-io writes, zero writes
with and without unmap, discards, compressed, subcluster and VM-state
writes, truncation; snapshot create/apply/delete; bitmap add/remove/merge/
clear/disable; resize (grow and shrink); amend (compat, lazy refcounts,
refcount width); commit; rebase (safe, unsafe, onto nothing); convert;
writes with I/O errors injected by blkdebug (the events qemu-iotests 026
uses); and unclean ends: qemu-io killed with `sigraise 9` or `abort` after
writes, with lazy refcounts this leaves the image dirty.

The recipe is a list of steps, each an exact command line run in DIR (or a
small file written there, or one of two edits qemu-img 7.2 cannot make, see
`PY_STEPS`), recorded with its exit status in DIR/recipe.json, so a failing
image can be rebuilt from the seed or read off the recipe. A step may fail
(qemu-img refuses an amend, blkdebug makes a write fail): that is part of
the history, not an error of the generator. After every unclean end that is
not the last step, the state is kept as a checkpoint (DIR/checkpoints/N/),
since the next open by QEMU would repair it.

The main image is always `img.qcow2`; companions are `base.qcow2` or
`base.raw` (backing), `img.data` (external data file), `base2.qcow2`
(rebase target) and `blkdebug.conf`.
"""

import argparse
import json
import os
import random
import shutil
import struct
import sys

sys.dont_write_bytecode = True
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import QEMU_IMG, QEMU_IO, copy_sparse, dump_json, qcow2lib, run  # noqa: E402

IMG = "img.qcow2"
KIB, MIB = 1 << 10, 1 << 20

# blkdebug events qemu-iotests 026 injects errors at (its three groups).
BLKDEBUG_EVENTS = [
    "l1_update", "l2_load", "l2_update", "l2_alloc_write", "write_aio",
    "refblock_load", "refblock_update_part", "refblock_alloc", "cluster_alloc",
    "refblock_alloc_hookup", "refblock_alloc_write", "refblock_alloc_write_blocks",
    "refblock_alloc_write_table", "refblock_alloc_switch_table",
    "l1_grow_alloc_table", "l1_grow_write_table", "l1_grow_activate_table",
]


def strip_backing_format(dirpath):
    """Remove the backing-format header extension: the image then names its
    backing file without a format, as images made by QEMU before 6.1 do
    (qemu-img 7.2 refuses to create or rebase to one)."""
    with qcow2lib.Image(os.path.join(dirpath, IMG), writable=True) as im:
        if im.header.backing_file_offset and im.extension(qcow2lib.EXT_BACKING_FORMAT):
            keep = [e for e in im.extensions if e.magic != qcow2lib.EXT_BACKING_FORMAT]
            im.replace_extensions(keep)
            return 0
    return 1


PY_STEPS = {"strip-backing-format": strip_backing_format}


class Model:
    """What the generator believes about the image, to choose sensible
    commands (a command that fails anyway is recorded and harmless)."""

    def __init__(self):
        self.version = 3
        self.cluster = 64 * KIB
        self.size = 4 * MIB
        self.ext_l2 = False
        self.data_file = False
        self.backing = None  # "base.qcow2" / "base.raw" / None
        self.lazy = False
        self.snapshots = []
        self.bitmaps = []
        self.base2 = False  # the rebase target exists
        self.counter = 0

    def name(self, prefix):
        self.counter += 1
        return "%s%d" % (prefix, self.counter)


class Generator:
    """Chooses the steps. Each op appends its commands to `steps` and the
    model changes they imply to `pending`; the builder runs the commands
    and applies the changes only if they succeeded, so later choices see
    the image as it is."""

    def __init__(self, seed):
        self.seed = seed
        self.rng = random.Random(seed)
        self.steps = []
        self.pending = []
        self.m = Model()

    def later(self, change):
        self.pending.append(change)

    # -- recipe building ------------------------------------------------------

    def cmd(self, *argv, why=""):
        self.steps.append({"argv": [str(a) for a in argv], "why": why})

    def qemu_io(self, commands, target=IMG, cache=None, why=""):
        argv = [QEMU_IO]
        if cache:
            argv += ["-t", cache]
        argv += ["-f", "qcow2"]
        for c in commands:
            argv += ["-c", c]
        argv.append(target)
        self.steps.append({"argv": argv, "why": why})

    # -- random pieces --------------------------------------------------------

    def offset(self, align=512, length=0):
        m = self.m
        top = max(align, m.size - length)
        return self.rng.randrange(0, top, align) // align * align

    def io_op(self):
        """One qemu-io command that writes, zeroes or discards."""
        rng, m = self.rng, self.m
        kind = rng.choices(["write", "small", "zero", "zero-unmap", "discard", "compressed",
                            "vmstate", "read"], [30, 10, 7, 7, 7, 8, 2, 2])[0]
        pattern = rng.randrange(1, 256)
        if kind == "write":
            length = rng.choice([512, 4 * KIB, 64 * KIB, 192 * KIB, m.cluster, 2 * m.cluster])
            length = min(length, m.size)
            return "write -P 0x%02x %d %d" % (pattern, self.offset(512, length), length)
        if kind == "small":  # inside one cluster: subclusters with extended L2
            sub = max(512, m.cluster // 32)
            length = sub * rng.randrange(1, 4)
            return "write -P 0x%02x %d %d" % (pattern, self.offset(sub, length), min(length, m.size))
        if kind in ("zero", "zero-unmap", "discard"):
            align = rng.choice([512, m.cluster])
            length = min(m.size, align * rng.randrange(1, 5))
            off = self.offset(align, length)
            if kind == "discard":
                return "discard %d %d" % (off, length)
            return "write -z%s %d %d" % (" -u" if kind == "zero-unmap" else "", off, length)
        if kind == "compressed":
            clusters = max(1, m.size // m.cluster)
            n = rng.randrange(1, 3)
            first = rng.randrange(0, clusters)
            n = min(n, clusters - first)
            return "write -c -P 0x%02x %d %d" % (pattern, first * m.cluster, n * m.cluster)
        if kind == "vmstate":
            return "write -b -P 0x%02x 0 %d" % (pattern, rng.choice([512, 64 * KIB]))
        return "read %d %d" % (self.offset(512, 4 * KIB), min(4 * KIB, m.size))

    def create_options(self, for_convert=False):
        """A random `-o` list for qemu-img create/convert, and the model
        attributes it implies."""
        rng, m = self.rng, self.m
        opts, attrs = [], {}
        version = 2 if rng.random() < 0.2 else 3
        opts.append("compat=%s" % ("0.10" if version == 2 else "1.1"))
        bits = rng.choices(range(9, 22), [3, 3, 6, 5, 5, 5, 8, 5, 3, 2, 1, 1, 1])[0]
        attrs.update(version=version, cluster=1 << bits, ext_l2=False, lazy=False, data_file=False)
        opts.append("cluster_size=%d" % (1 << bits))
        if version == 3:
            if rng.random() < 0.5:
                opts.append("refcount_bits=%d" % rng.choice([1, 2, 4, 8, 16, 32, 64]))
            if bits >= 14 and rng.random() < 0.3:
                opts.append("extended_l2=on")
                attrs["ext_l2"] = True
            if rng.random() < 0.3:
                opts.append("compression_type=zstd")
            if rng.random() < 0.35:
                opts.append("lazy_refcounts=on")
                attrs["lazy"] = True
            if not for_convert and not m.backing and rng.random() < 0.15:
                opts.append("data_file=img.data")
                attrs["data_file"] = True
                if rng.random() < 0.5:
                    opts.append("data_file_raw=on")
        if rng.random() < 0.3:
            modes = ["metadata", "falloc", "full", "off"] if not for_convert else ["metadata", "falloc", "off"]
            opts.append("preallocation=%s" % rng.choice(modes))
        return opts, attrs

    def set_model(self, **attrs):
        for k, v in attrs.items():
            setattr(self.m, k, v)

    # -- the history ------------------------------------------------------------

    def create(self):
        """The backing file (maybe) and the image; returns the commands of
        one attempt (the builder retries with new choices if qemu-img
        refuses the combination)."""
        rng, m = self.rng, self.m
        m.size = rng.choice([1, 2, 3, 4, 6, 8]) * MIB + rng.choice([0, 0, 0, 512, 64 * KIB + 512])
        m.backing = None
        if rng.random() < 0.25:
            kind = rng.choice(["qcow2", "qcow2", "raw"])
            m.backing = "base." + kind
            base_size = m.size + rng.choice([0, -512 * KIB, MIB])
            self.cmd(QEMU_IMG, "create", "-f", kind, m.backing, base_size, why="backing file")
            self.steps.append({"argv": [QEMU_IO, "-f", kind, "-c", "write -P 0x11 0 %d" % min(base_size, MIB),
                                        "-c", "write -P 0x22 %d 64k" % (base_size // 2), m.backing],
                               "why": "backing data"})
        opts, attrs = self.create_options()
        self.set_model(**attrs)
        argv = [QEMU_IMG, "create", "-f", "qcow2", "-o", ",".join(opts)]
        if m.backing:
            argv += ["-b", m.backing, "-F", m.backing.split(".")[1]]
        self.cmd(*argv, IMG, m.size, why="the image")
        if m.backing and rng.random() < 0.4:
            self.steps.append({"py": "strip-backing-format", "why": "backing without a format"})

    def step(self):
        rng, m = self.rng, self.m
        choices = {
            "io": 30, "snapshot-create": 6, "snapshot-apply": 3, "snapshot-delete": 4,
            "bitmap": 7, "resize": 4, "amend": 5, "commit": 2, "rebase": 2, "convert": 3,
            "blkdebug": 6, "crash": 7,
        }
        if m.data_file:
            for k in ("snapshot-create", "snapshot-apply", "snapshot-delete"):
                choices[k] = 1  # QEMU refuses them: keep a few refusals
        if m.version == 2:
            choices["bitmap"] = 1
        if not m.backing:
            choices["commit"] = choices["rebase"] = 0
        kind = rng.choices(list(choices), list(choices.values()))[0]
        getattr(self, "op_" + kind.replace("-", "_"))()
        return kind

    def op_io(self):
        self.qemu_io([self.io_op() for _ in range(self.rng.randrange(1, 5))], why="guest I/O")

    def op_snapshot_create(self):
        name = self.m.name("s")
        self.later(lambda: self.m.snapshots.append(name))
        self.cmd(QEMU_IMG, "snapshot", "-c", name, IMG, why="snapshot create")

    def op_snapshot_apply(self):
        if self.m.snapshots:
            self.cmd(QEMU_IMG, "snapshot", "-a", self.rng.choice(self.m.snapshots), IMG, why="snapshot apply")
        else:
            self.op_io()

    def op_snapshot_delete(self):
        if self.m.snapshots:
            name = self.rng.choice(self.m.snapshots)
            self.later(lambda: self.m.snapshots.remove(name))
            self.cmd(QEMU_IMG, "snapshot", "-d", name, IMG, why="snapshot delete")
        else:
            self.op_io()

    def op_bitmap(self):
        rng, m = self.rng, self.m
        action = rng.choice(["add", "add", "add", "remove", "merge", "clear", "disable"])
        if action == "add" or not m.bitmaps:
            name = m.name("b")
            self.later(lambda: m.bitmaps.append(name))
            argv = [QEMU_IMG, "bitmap", "--add"]
            if rng.random() < 0.4:
                argv += ["-g", str(1 << rng.randrange(9, 22))]
            self.cmd(*argv, IMG, name, why="bitmap add")
        elif action == "remove":
            name = rng.choice(m.bitmaps)
            self.later(lambda: m.bitmaps.remove(name))
            self.cmd(QEMU_IMG, "bitmap", "--remove", IMG, name, why="bitmap remove")
        elif action == "merge":
            src, dst = rng.choice(m.bitmaps), rng.choice(m.bitmaps)
            self.cmd(QEMU_IMG, "bitmap", "--merge", src, IMG, dst, why="bitmap merge")
        else:
            self.cmd(QEMU_IMG, "bitmap", "--" + action, IMG, rng.choice(m.bitmaps), why="bitmap " + action)

    def op_resize(self):
        rng, m = self.rng, self.m
        if rng.random() < 0.6:
            new = m.size + rng.choice([512, 64 * KIB, MIB, 3 * MIB])
            self.cmd(QEMU_IMG, "resize", "-f", "qcow2", IMG, new, why="grow")
        elif rng.random() < 0.5:
            new = max(MIB, m.size - rng.choice([512, 64 * KIB, MIB]))
            self.cmd(QEMU_IMG, "resize", "-f", "qcow2", "--shrink", IMG, new, why="shrink")
        else:
            new = m.size + MIB
            self.qemu_io(["truncate %d" % new], why="qemu-io truncate")
        self.later(lambda: self.set_model(size=new))

    def op_amend(self):
        rng, m = self.rng, self.m
        opt = rng.choice(["compat", "lazy", "refcount", "refcount", "size"])
        if opt == "compat":
            version = 2 if m.version == 3 else 3
            value = "compat=%s" % ("0.10" if version == 2 else "1.1")
            self.later(lambda: self.set_model(version=version))
        elif opt == "lazy":
            value = "lazy_refcounts=%s" % ("off" if m.lazy else "on")
            self.later(lambda: self.set_model(lazy=not m.lazy))
        elif opt == "refcount":
            value = "refcount_bits=%d" % rng.choice([1, 2, 4, 8, 16, 32, 64])
        else:
            size = m.size + MIB
            value = "size=%d" % size
            self.later(lambda: self.set_model(size=size))
        self.cmd(QEMU_IMG, "amend", "-f", "qcow2", "-o", value, IMG, why="amend")

    def op_commit(self):
        argv = [QEMU_IMG, "commit", "-f", "qcow2"]
        if self.rng.random() < 0.4:
            argv.append("-d")
        self.cmd(*argv, IMG, why="commit into the backing file")

    def op_rebase(self):
        rng, m = self.rng, self.m
        how = rng.choice(["safe", "unsafe", "none"])
        if how == "none":
            self.cmd(QEMU_IMG, "rebase", "-f", "qcow2", "-b", "", IMG, why="rebase onto nothing")
            self.later(lambda: self.set_model(backing=None))
            return
        if not m.base2:
            m.base2 = True
            self.cmd(QEMU_IMG, "create", "-f", "qcow2", "base2.qcow2", m.size, why="rebase target")
            self.qemu_io(["write -P 0x33 0 128k"], target="base2.qcow2", why="rebase target data")
        argv = [QEMU_IMG, "rebase", "-f", "qcow2"]
        if how == "unsafe":
            argv.append("-u")
        self.cmd(*argv, "-b", "base2.qcow2", "-F", "qcow2", IMG, why="rebase (%s)" % how)
        self.later(lambda: self.set_model(backing="base2.qcow2"))

    def op_convert(self):
        rng, m = self.rng, self.m
        argv = [QEMU_IMG, "convert", "-f", "qcow2", "-O", "qcow2"]
        if rng.random() < 0.3:
            argv.append("-c")
        opts, attrs = self.create_options(for_convert=True)
        argv += ["-o", ",".join(opts)]
        backing = m.backing if m.backing and rng.random() < 0.5 else None
        if backing:
            argv += ["-B", backing, "-F", backing.split(".")[1]]
        self.cmd(*argv, IMG, "conv.qcow2", why="convert")
        self.cmd("mv", "-f", "conv.qcow2", IMG, why="the copy replaces the image")
        self.later(lambda: self.set_model(backing=backing, snapshots=[], bitmaps=[], **attrs))

    def op_blkdebug(self):
        rng = self.rng
        conf = "[inject-error]\nevent = \"%s\"\nerrno = \"%d\"\nimmediately = \"off\"\nonce = \"%s\"\n" % (
            rng.choice(BLKDEBUG_EVENTS), rng.choice([5, 28]), rng.choice(["on", "off"]))
        self.steps.append({"file": "blkdebug.conf", "text": conf, "why": "blkdebug rule"})
        ops = [self.io_op() for _ in range(rng.randrange(1, 4))]
        self.qemu_io(ops, target="blkdebug:blkdebug.conf:" + IMG, why="I/O with an injected error")

    def op_crash(self):
        rng = self.rng
        ops = [self.io_op() for _ in range(rng.randrange(1, 5))]
        ops.append(rng.choice(["sigraise 9", "sigraise 9", "abort"]))
        cache = rng.choice([None, "writethrough", "writeback", "unsafe"])
        self.qemu_io(ops, cache=cache, why="unclean end")
        self.steps.append({"checkpoint": True, "why": "the state the crash left"})


class Builder:
    """Runs steps in a folder, keeping checkpoints and exit statuses."""

    def __init__(self, dirpath):
        self.dir = dirpath
        self.statuses = []
        self.checkpoints = []
        shutil.rmtree(dirpath, ignore_errors=True)
        os.makedirs(dirpath)

    def run_step(self, step):
        if "argv" in step:
            rc = run(step["argv"], cwd=self.dir).rc
        elif "file" in step:
            with open(os.path.join(self.dir, step["file"]), "w") as f:
                f.write(step["text"])
            rc = 0
        elif "py" in step:
            try:
                rc = PY_STEPS[step["py"]](self.dir)
            except (OSError, ValueError, AssertionError, KeyError, struct.error):
                rc = 1
        else:  # checkpoint
            rc = 0
            if os.path.exists(os.path.join(self.dir, IMG)):
                cp = os.path.join(self.dir, "checkpoints", str(len(self.checkpoints)))
                os.makedirs(cp)
                for name in os.listdir(self.dir):
                    if os.path.isfile(os.path.join(self.dir, name)):
                        copy_sparse(os.path.join(self.dir, name), os.path.join(cp, name))
                self.checkpoints.append(cp)
        self.statuses.append(rc)
        return rc

    def finish(self, rec):
        dump_json(os.path.join(self.dir, "recipe.json"), dict(rec, statuses=self.statuses))
        return self.checkpoints


def build(seed, dirpath):
    """Generate and run the history of SEED in a new folder DIR; returns the
    recipe and the checkpoint folders (the final state is DIR itself).

    Steps are chosen one at a time after the previous ones ran, so a
    refused command (a shrink with snapshots, an amend QEMU cannot do)
    leaves the model unchanged. qemu-img's answers are deterministic, so
    the seed alone rebuilds the same image."""
    gen = Generator(seed)
    for attempt in range(6):
        b = Builder(dirpath)
        gen.steps, gen.pending = [], []
        gen.create()
        if all(b.run_step(s) == 0 for s in gen.steps):
            break  # else qemu-img refused this combination: choose again
    steps = list(gen.steps)
    n = gen.rng.randrange(3, 15)
    last = None
    for i in range(n):
        gen.steps, gen.pending = [], []
        last = gen.step()
        if i == n - 1 and last == "crash":
            gen.steps.pop()  # the final state is checked anyway: no checkpoint
        ok = True
        for s in gen.steps:
            rc = b.run_step(s)
            ok &= rc == 0 or (last == "crash" and rc in (-9, -6))
        if ok:
            for change in gen.pending:
                change()
        steps += gen.steps
    rec = {"seed": seed, "steps": steps}
    return rec, b.finish(rec)


def replay(rec, dirpath):
    """Run a recorded recipe again, step by step (for a recipe edited by
    hand while minimising a failure)."""
    b = Builder(dirpath)
    for s in rec["steps"]:
        b.run_step(s)
    return b.finish(rec)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("seed", type=int)
    ap.add_argument("dir")
    ap.add_argument("--replay", metavar="RECIPE", help="run a recipe.json instead of generating")
    args = ap.parse_args()
    if args.replay:
        with open(args.replay) as f:
            rec = json.load(f)
        cps = replay(rec, args.dir)
    else:
        rec, cps = build(args.seed, args.dir)
    print("built %s (%d steps, %d checkpoints)" % (os.path.join(args.dir, IMG), len(rec["steps"]), len(cps)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
