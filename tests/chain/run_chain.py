#!/usr/bin/env python3
"""`qcheck --chain` and `--data-file` against QEMU's own behaviour.

    run_chain.py QCHECK WORKDIR [--filter SUBSTR] [--keep]

Every scenario is built in its own folder of WORKDIR with qemu-img create,
qemu-io, `qemu-img rebase -u` and layout/qcow2lib.py byte patches. For each
one, from the scenario's working directory:

* `qcheck --chain [ARGS] --output=json TOP`: the exit status expected, JSON
  that json.loads accepts, its "exit-code" equal to the status, the layers
  (count, depth, format, probed, path: the same file as expected), the
  problem codes of each layer, the totals equal to the sums of the layers,
  each layer's "exit-code" the one qemu-img gives its own counts;
* the human run: the same status, a `Layer N: PATH (FORMAT` heading per
  layer, the `Chain of N layers` line, and every finding of layer N on
  stderr prefixed `layer N: ` with its code;
* what QEMU says, where the scenario asks for it: `qemu-img check TOP`
  (status, and a sentence such as "Could not open backing file"), `qemu-img
  check` of every qcow2 and QED layer alone with the status qcheck gives
  that layer,
  and on good chains `qemu-img info --backing-chain` naming the same files
  in the same formats as qcheck's layers;
* `--digest` on clean chains: equal to the reference digest (imported from
  tests/digest/run_digest.py) of `qemu-img convert -O raw TOP`, and to
  `qcheck --digest` of that raw file, in the human and the JSON output;
* check mode never writes: the sha256 of every file of the scenario is the
  same before and after all the qcheck runs.

QEMU is never run on a chain that loops (`qemu-img check` of a loop runs
away with gigabytes of memory).

EXPECTED_FAILURES lists assertions that fail because of a known bug in
qcheck (reported, not fixed here): they print XFAIL and do not fail the
test; once the bug is fixed they print XPASS and fail it, so that the entry
is removed.

Prints PASS/FAIL/XFAIL per scenario and a summary; exit status 0 only if
nothing failed.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
sys.path.insert(0, os.path.join(HERE, "..", "digest"))
sys.path.insert(0, os.path.join(HERE, "..", "images"))
import qcow2lib as q  # noqa: E402
import qedlib  # noqa: E402
from run_digest import (SetupError, Test, leak_cluster, qemu_io, reference_digest,  # noqa: E402
                        refcount_zero, run, sanitizer_report, script_main)
from run_cases import expected_exit  # noqa: E402  (qemu-img's status for a JSON object's counts)

QEMU_IMG = "qemu-img"
TIMEOUT = 120
KiB, MiB = 1024, 1024 * 1024
DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
LEAKED_CLUSTER = 604  # refcountLeak
REFCOUNT_ZERO_IN_USE = 606
BACKING_FORMAT_MISSING = 127  # the single-image warning, on the layer naming the file
SINGLE_CHECKS = 12  # layers also checked alone (not all 258 of the depth test)

# (scenario, assertion tag) -> the bug that makes it fail today (none known).
EXPECTED_FAILURES = {}


# ---- building ----------------------------------------------------------------------

def create(path, size=None, opts="", backing=None, backing_fmt="qcow2", fmt="qcow2"):
    """qemu-img create in the image's folder (a relative backing name is
    QEMU's: relative to that folder)."""
    d = os.path.dirname(os.path.abspath(path))
    cmd = [QEMU_IMG, "create", "-q", "-f", fmt]
    if opts:
        cmd += ["-o", opts]
    if backing:
        cmd += ["-b", backing, "-F", backing_fmt]
    cmd.append(os.path.basename(path))
    if size is not None:
        cmd.append(str(size))
    run(cmd, cwd=d)
    return path


def rebase_unsafe(path, backing, backing_fmt=None):
    """Record another backing name (and format) without touching data."""
    cmd = [QEMU_IMG, "rebase", "-u", "-b", backing]
    if backing_fmt:
        cmd += ["-F", backing_fmt]
    run(cmd + [os.path.basename(path)], cwd=os.path.dirname(os.path.abspath(path)))


def set_backing_name(path, name):
    """Write a backing name no qemu-img command would accept (a loop, a
    protocol), keeping the recorded format."""
    with q.Image(path, writable=True) as im:
        im.replace_extensions(im.extensions, backing_name=name.encode())


def drop_backing_format(path):
    """Remove the backing format extension: the format is not recorded."""
    with q.Image(path, writable=True) as im:
        im.replace_extensions([e for e in im.extensions if e.magic != q.EXT_BACKING_FORMAT])


def patch(path, fn):
    with q.Image(path, writable=True) as im:
        fn(im)


def io(path, *commands, fmt="qcow2"):
    if fmt == "qcow2":
        qemu_io(path, *commands)
        return
    cmd = ["qemu-io", "-f", fmt]
    for c in commands:
        cmd += ["-c", c]
    run(cmd + [path])


# ---- a scenario --------------------------------------------------------------------

class Case:
    """What one scenario expects.

    top       the image as given to qcheck (relative to cwd or absolute)
    cwd       where qcheck and QEMU run
    args      extra qcheck arguments (after --chain unless chain=False)
    rc        qcheck's exit status
    layers    [(path relative to cwd, format, probed)] in order
    problems  {depth: [codes]} (other layers: none)
    qemu_top  (status, sentence or None) of `qemu-img check TOP`, or None
    qemu_layers  compare `qemu-img check LAYER` with each layer's exit-code
    qemu_override {depth: status}: QEMU's status where qcheck differs by design
    info      compare `qemu-img info --backing-chain` with the layers
    digest    --digest through the chain equals the raw convert's
    human     also the human run (skipped only where the JSON run says it all)
    """

    def __init__(self, top, cwd, rc, layers, problems=None, args=(), chain=True,
                 qemu_top=None, qemu_layers=True, qemu_override=None, info=False,
                 digest=False, convert_args=(), human=True):
        self.top, self.cwd, self.rc, self.layers = top, cwd, rc, layers
        self.problems = problems or {}
        self.args, self.chain = list(args), chain
        self.qemu_top, self.qemu_layers = qemu_top, qemu_layers
        self.qemu_override = qemu_override or {}
        self.info, self.digest, self.convert_args = info, digest, list(convert_args)
        self.human = human




def tree_hashes(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.isfile(p) and not os.path.islink(p):
                out[os.path.relpath(p, root)] = q.file_sha256(p)
    return out


def same_file(a, b, cwd):
    return os.path.realpath(os.path.join(cwd, a)) == os.path.realpath(os.path.join(cwd, b))


SUM_KEYS = ("check-errors", "corruptions", "leaks", "warnings")
RAW_KEYS = {"filename", "format", "depth", "probed", "exit-code", "data-file"}


class Runner:
    def __init__(self, qcheck, workdir):
        self.qcheck = os.path.abspath(qcheck)
        self.workdir = os.path.abspath(workdir)

    def qc(self, t, args, cwd):
        res = subprocess.run([self.qcheck] + args, capture_output=True, text=True, cwd=cwd,
                             timeout=TIMEOUT)
        t.expect(not sanitizer_report(res.stderr),
                 "qcheck %s: sanitizer report: %s" % (" ".join(args), res.stderr[-2000:]))
        return res

    def qemu(self, args, cwd):
        res = subprocess.run([QEMU_IMG] + args, capture_output=True, text=True, cwd=cwd,
                             timeout=60)
        return res.returncode, res.stdout + res.stderr

    def fresh_dir(self, name):
        d = os.path.join(self.workdir, re.sub(r"[^A-Za-z0-9_.-]", "_", name))
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    # -- the common assertions --

    def chain_args(self, c):
        return (["--chain"] if c.chain else []) + c.args

    def check_json(self, t, c):
        res = self.qc(t, self.chain_args(c) + ["--output=json", c.top], c.cwd)
        t.expect(res.returncode == c.rc, "json run: exit %d, expected %d (stderr: %s)"
                 % (res.returncode, c.rc, res.stderr.strip()[-600:]), "rc")
        try:
            d = json.loads(res.stdout)
        except ValueError as e:
            t.expect(False, "json run: not JSON (%s): %r" % (e, res.stdout[:400]))
            return None
        t.expect(d.get("exit-code") == res.returncode, "json exit-code %r, status %d"
                 % (d.get("exit-code"), res.returncode))
        layers = d.get("layers", [])
        got = [(L.get("filename"), L.get("format"), L.get("probed")) for L in layers]
        t.expect(len(layers) == len(c.layers) and
                 all(same_file(g[0], e[0], c.cwd) and g[1:] == e[1:]
                     for g, e in zip(got, c.layers)),
                 "layers %s, expected %s" % (got, c.layers), "layers")
        for i, L in enumerate(layers):
            t.expect(L.get("depth") == i, "layer %d has depth %r" % (i, L.get("depth")))
            codes = sorted(p["code"] for p in L.get("problems", []))
            want = sorted(c.problems.get(i, []))
            t.expect(codes == want, "layer %d: problems %s, expected %s (%s)"
                     % (i, codes, want, [p.get("message") for p in L.get("problems", [])]),
                     "problems")
            if L.get("format") == "raw":
                t.expect(set(L) <= RAW_KEYS and L.get("exit-code") == 0,
                         "raw layer %d: %s" % (i, L))
            else:
                t.expect(L.get("exit-code") == expected_exit(L),
                         "layer %d: exit-code %r, its counts give %d"
                         % (i, L.get("exit-code"), expected_exit(L)))
                if i < SINGLE_CHECKS:
                    self.check_single(t, c, i, L)
        for k in SUM_KEYS:
            t.expect(d.get(k, 0) == sum(L.get(k, 0) for L in layers),
                     "total %s %r is not the sum over the layers" % (k, d.get(k)))
        return d

    def check_single(self, t, c, i, L):
        """A layer gets the full check: its findings but the 9xx ones are
        those of `qcheck LAYER` alone."""
        res = self.qc(t, ["--output=json", L["filename"]], c.cwd)
        try:
            alone = json.loads(res.stdout).get("problems", [])
        except ValueError:
            alone = None
        mine = sorted((p["code"], p.get("count")) for p in L.get("problems", [])
                      if not 900 <= p["code"] < 1000)
        theirs = sorted((p["code"], p.get("count")) for p in alone or [])
        t.expect(mine == theirs, "layer %d: findings %s, `qcheck %s` alone %s"
                 % (i, mine, L["filename"], theirs))

    def check_human(self, t, c, d):
        res = self.qc(t, self.chain_args(c) + [c.top], c.cwd)
        t.expect(res.returncode == c.rc, "human run: exit %d, expected %d"
                 % (res.returncode, c.rc), "rc")
        if d is None:
            return
        layers = d.get("layers", [])
        for i, L in enumerate(layers):
            heading = "Layer %d: %s (%s" % (i, L.get("filename"), L.get("format"))
            t.expect(heading in res.stdout, "human output lacks %r" % heading)
            for p in L.get("problems", []):
                needle = re.compile(r"^layer %d: .*\(%d\)" % (i, p["code"]), re.M)
                t.expect(needle.search(res.stderr),
                         "stderr names no 'layer %d: ... (%d)': %s" % (i, p["code"], res.stderr))
        n = len(layers)
        t.expect("Chain of %d layer%s: " % (n, "" if n == 1 else "s") in res.stdout,
                 "no 'Chain of %d layers' line: %s" % (n, res.stdout[-300:]))

    def check_qemu(self, t, c, d):
        if c.qemu_top is not None:
            rc, out = self.qemu(["check", c.top], c.cwd)
            want_rc, sentence = c.qemu_top
            t.expect(rc == want_rc and (sentence is None or sentence in out),
                     "qemu-img check TOP: exit %d, expected %d%s: %s"
                     % (rc, want_rc, " with %r" % sentence if sentence else "", out.strip()))
        if d is None:
            return
        layers = d.get("layers", [])
        if c.qemu_layers:
            for i, L in enumerate(layers):
                if L.get("format") not in ("qcow2", "qed"):
                    continue
                rc, out = self.qemu(["check", L["filename"]], c.cwd)
                want = c.qemu_override.get(i, L.get("exit-code"))
                t.expect(rc == want, "qemu-img check of layer %d (%s): exit %d, expected %d "
                         "(qcheck's layer exit-code %r): %s"
                         % (i, L["filename"], rc, want, L.get("exit-code"), out.strip()[-400:]))
        if c.info:
            rc, out = self.qemu(["info", "--backing-chain", "--output=json", c.top], c.cwd)
            if t.expect(rc == 0, "qemu-img info --backing-chain: exit %d: %s" % (rc, out)):
                qemu = [(os.path.realpath(os.path.join(c.cwd, e["filename"])), e["format"])
                        for e in json.loads(out)]
                ours = [(os.path.realpath(os.path.join(c.cwd, L["filename"])), L["format"])
                        for L in layers]
                t.expect(qemu == ours, "qemu-img info --backing-chain %s, qcheck %s"
                         % (qemu, ours), "info")

    def check_digest(self, t, c, tmp):
        raw = os.path.join(tmp, "converted.raw")
        rc, out = self.qemu(["convert", "-O", "raw"] + c.convert_args + [c.top, raw], c.cwd)
        if not t.expect(rc == 0, "qemu-img convert: exit %d: %s" % (rc, out)):
            return
        want = reference_digest(raw)
        res = self.qc(t, self.chain_args(c) + ["--digest", c.top], c.cwd)
        last = res.stdout.strip().splitlines()[-1:] or [""]
        t.expect(res.returncode == 0 and last[0] == want,
                 "--digest through the chain: exit %d, %r, reference %s (stderr %s)"
                 % (res.returncode, last[0], want, res.stderr.strip()[-300:]), "digest")
        res = self.qc(t, self.chain_args(c) + ["--digest", "--output=json", c.top], c.cwd)
        try:
            got = json.loads(res.stdout).get("digest")
        except ValueError:
            got = "(not JSON)"
        t.expect(got == want, "JSON digest %r, reference %s" % (got, want), "digest")
        res = self.qc(t, ["--digest", raw], tmp)
        t.expect(res.stdout.strip() == want, "qcheck --digest of the raw convert: %r, %s"
                 % (res.stdout.strip(), want))

    def verify(self, t, c, root):
        """Every assertion of a Case; the files under root never change."""
        before = tree_hashes(root)
        d = self.check_json(t, c)
        if c.human:
            self.check_human(t, c, d)
        after = tree_hashes(root)
        t.expect(after == before, "check mode changed files: %s"
                 % sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k)))
        self.check_qemu(t, c, d)
        if c.digest:
            tmp = os.path.join(os.path.dirname(root), os.path.basename(root) + ".convert")
            os.makedirs(tmp, exist_ok=True)
            self.check_digest(t, c, tmp)
            shutil.rmtree(tmp, ignore_errors=True)
        return d

    # -- running --

    def run(self, flt):
        os.makedirs(self.workdir, exist_ok=True)
        passed = failed = 0
        for name, fn in SCENARIOS:
            if flt not in name:
                continue
            t = Test(name, EXPECTED_FAILURES)
            started = time.monotonic()
            root = self.fresh_dir(name)
            try:
                fn(self, t, root)
            except SetupError as e:
                t.fails.append("set-up: %s" % e)
            except subprocess.TimeoutExpired as e:
                t.fails.append("timeout: %s" % e)
            for x in t.xfails:
                print("XFAIL %s: %s" % (name, x))
            if t.fails or t.xpasses:
                failed += 1
                print("FAIL %s" % name)
                for f in t.fails + t.xpasses:
                    print("    %s" % f)
            else:
                passed += 1
                if not KEEP:
                    shutil.rmtree(root, ignore_errors=True)
                t.notes.append("%.1f s" % (time.monotonic() - started))
                print("PASS %s  (%s)" % (name, "; ".join(t.notes)), flush=True)
        print("\n%d passed, %d failed" % (passed, failed))
        return failed


KEEP = False
SCENARIOS = []


def scenario(fn):
    SCENARIOS.append((fn.__name__, fn))
    return fn


def problems_of(d, depth):
    return d["layers"][depth]["problems"] if d and len(d.get("layers", [])) > depth else []


# ---- good chains -------------------------------------------------------------------

@scenario
def clean_3_layers(r, t, root):
    """64 KiB base of 2 MiB (shorter than the overlays: reads past its end
    are zeros), a 4 KiB-cluster middle with compressed clusters and data past
    the base's end, an extended-L2 top of 128 KiB clusters with subcluster
    writes and zeros written over the base's data."""
    base = create(os.path.join(root, "base.qcow2"), 2 * MiB)
    io(base, "write -P 0x11 0 512k", "write -P 0x12 1536k 512k")
    mid = create(os.path.join(root, "mid.qcow2"), 4 * MiB, "cluster_size=4096",
                 backing="base.qcow2")
    io(mid, "write -c -P 0x21 256k 16k", "write -P 0x22 3M 64k", "write -P 0x23 1800k 8k")
    top = create(os.path.join(root, "top.qcow2"), 4 * MiB,
                 "cluster_size=131072,extended_l2=on", backing="mid.qcow2")
    io(top, "write -P 0x31 100k 8k", "write -z 0 64k", "write -z 1540k 4k",
       "write -P 0x32 2100k 4k")
    with q.Image(mid) as im:
        t.expect(bool(im.compressed_refs()), "set-up: the middle layer has no compressed cluster")
    r.verify(t, Case("top.qcow2", root, 0,
                     [("top.qcow2", "qcow2", False), ("mid.qcow2", "qcow2", False),
                      ("base.qcow2", "qcow2", False)],
                     qemu_top=(0, None), info=True, digest=True), root)


@scenario
def clean_10_layers(r, t, root):
    """Ten layers of different cluster sizes (512 B to 2 MiB), each writing
    over the ones below; one extended L2, one compressed, zeros over data."""
    clusters = [65536, 4096, 512, 131072, 32768, 65536, 2097152, 16384, 65536, 8192]
    prev = None
    for i, cs in enumerate(clusters):
        name = "L%d.qcow2" % i
        opts = "cluster_size=%d" % cs + (",extended_l2=on" if i == 3 else "")
        path = create(os.path.join(root, name), (2 + i) * MiB, opts, backing=prev)
        cmds = ["write -P 0x%02x %dk 192k" % (0x40 + i, 128 * i)]
        if i == 5:
            cmds.append("write -c -P 0x66 1M 128k")
        if i == 7:
            cmds.append("write -z 64k 128k")  # over data of layers 0 and 1
        if i == 9:
            cmds.append("write -P 0x99 %d 4096" % ((2 + i) * MiB - 4096))
        io(path, *cmds)
        prev = name
    layers = [("L%d.qcow2" % i, "qcow2", False) for i in reversed(range(10))]
    r.verify(t, Case("L9.qcow2", root, 0, layers, qemu_top=(0, None), info=True,
                     digest=True), root)


@scenario
def raw_base(r, t, root):
    base = create(os.path.join(root, "base.raw"), 3 * MiB, fmt="raw")
    io(base, "write -P 0x51 0 1M", "write -P 0x52 2M 4k", fmt="raw")
    top = create(os.path.join(root, "top.qcow2"), 3 * MiB, backing="base.raw", backing_fmt="raw")
    io(top, "write -P 0x53 512k 64k", "write -z 2M 64k")
    r.verify(t, Case("top.qcow2", root, 0,
                     [("top.qcow2", "qcow2", False), ("base.raw", "raw", False)],
                     qemu_top=(0, None), info=True, digest=True), root)


@scenario
def max_depth(r, t, root):
    """A chain of 4 files: --max-depth=3 takes all of them, 2 stops at the
    third (907 on the layer naming the fourth)."""
    prev = None
    for i in range(4):
        path = create(os.path.join(root, "d%d.qcow2" % i), MiB, backing=prev)
        io(path, "write -P 0x%02x %dk 64k" % (0x60 + i, 64 * i))
        prev = "d%d.qcow2" % i
    layers = [("d%d.qcow2" % i, "qcow2", False) for i in (3, 2, 1, 0)]
    r.verify(t, Case("d3.qcow2", root, 0, layers, args=["--max-depth=3"], info=True,
                     digest=True), root)
    r.verify(t, Case("d3.qcow2", root, 1, layers[:3], {2: [907]}, args=["--max-depth=2"],
                     qemu_layers=False), root)
    r.verify(t, Case("d3.qcow2", root, 1, layers[:2], {1: [907]}, args=["--max-depth=1"],
                     qemu_layers=False), root)


@scenario
def default_depth_256(r, t, root):
    """258 files: the default limit takes 256 layers below the top, the
    257th is 907 on layer 256. Built by copying one overlay and patching the
    backing name (same length), not by 258 qemu-img runs."""
    n = 258
    names = ["c%03d.qcow2" % i for i in range(n)]
    create(os.path.join(root, names[0]), MiB)
    tmpl = create(os.path.join(root, "template"), MiB, backing=names[0])
    for i in range(1, n):
        path = os.path.join(root, names[i])
        shutil.copyfile(tmpl, path)
        with q.Image(path, writable=True) as im:
            off = im.header.backing_file_offset
            im.write(off, names[i - 1].encode())
    os.unlink(tmpl)
    layers = [(names[i], "qcow2", False) for i in reversed(range(n))]
    r.verify(t, Case(names[-1], root, 1, layers[:257], {256: [907]}, qemu_layers=False), root)
    r.verify(t, Case(names[-2], root, 0, layers[1:], qemu_layers=False, human=False), root)


@scenario
def top_not_qcow2(r, t, root):
    """--chain on a raw or qed top says what the check of one image says: 63
    for raw, the QED check (a chain of one layer) for qed."""
    create(os.path.join(root, "top.raw"), MiB, fmt="raw")
    create(os.path.join(root, "top.qed"), MiB, fmt="qed")
    before = tree_hashes(root)
    for name in ("top.raw", "top.qed"):
        for out in ([], ["--output=json"]):
            one = r.qc(t, out + [name], root)
            chain = r.qc(t, ["--chain"] + out + [name], root)
            want = 63 if name == "top.raw" else 0
            t.expect(chain.returncode == want and one.returncode == want and
                     (name == "top.qed" or (chain.stdout, chain.stderr) == (one.stdout, one.stderr)),
                     "--chain %s %s: exit %d %r %r, alone: exit %d %r %r"
                     % (" ".join(out), name, chain.returncode, chain.stdout, chain.stderr,
                        one.returncode, one.stdout, one.stderr))
    t.expect(tree_hashes(root) == before, "check mode changed a file")
    rc, _ = r.qemu(["check", "top.raw"], root)
    t.expect(rc == 63, "qemu-img check of a raw file: exit %d" % rc)


# ---- what lies between layers ------------------------------------------------------

@scenario
def recorded_raw_is_qcow2(r, t, root):
    """The base is a qcow2 image recorded as raw: QEMU reads its metadata
    as the guest's disk (qemu-img check TOP sees nothing): 905, corruption."""
    base = create(os.path.join(root, "base.qcow2"), MiB)
    io(base, "write -P 0x71 0 64k")
    top = create(os.path.join(root, "top.qcow2"), MiB, backing="base.qcow2")
    rebase_unsafe(top, "base.qcow2", "raw")
    r.verify(t, Case("top.qcow2", root, 2,
                     [("top.qcow2", "qcow2", False), ("base.qcow2", "raw", False)], {0: [905]},
                     qemu_top=(0, None), qemu_override={0: 0}, info=True), root)


@scenario
def recorded_qcow2_is_raw(r, t, root):
    base = create(os.path.join(root, "base.img"), MiB, fmt="raw")
    io(base, "write -P 0x72 0 64k", fmt="raw")
    top = create(os.path.join(root, "top.qcow2"), MiB, backing="base.img", backing_fmt="raw")
    rebase_unsafe(top, "base.img", "qcow2")
    d = r.verify(t, Case("top.qcow2", root, 1, [("top.qcow2", "qcow2", False)], {0: [902]},
                         qemu_top=(1, "Could not open backing file")), root)
    p = problems_of(d, 0)
    t.expect(p and "is recorded as qcow2 but is not a qcow2 image" in p[0]["message"],
             "902: %s" % p)


@scenario
def missing_base(r, t, root):
    create(os.path.join(root, "base.qcow2"), MiB)
    create(os.path.join(root, "mid.qcow2"), MiB, backing="base.qcow2")
    create(os.path.join(root, "top.qcow2"), MiB, backing="mid.qcow2")
    os.unlink(os.path.join(root, "base.qcow2"))
    d = r.verify(t, Case("top.qcow2", root, 1,
                         [("top.qcow2", "qcow2", False), ("mid.qcow2", "qcow2", False)],
                         {1: [902]}, qemu_top=(1, "Could not open backing file"),
                         qemu_override={0: 1}), root)
    p = problems_of(d, 1)
    t.expect(p and "does not exist" in p[0]["message"], "902 does not say 'does not exist': %s" % p)


@scenario
def base_unreadable(r, t, root):
    """A backing name that is a directory (as root, a file's permissions
    never stop a read); without root also a file of mode 000."""
    create(os.path.join(root, "top.qcow2"), MiB)
    os.mkdir(os.path.join(root, "adir"))
    rebase_unsafe(os.path.join(root, "top.qcow2"), "adir", "qcow2")
    d = r.verify(t, Case("top.qcow2", root, 1, [("top.qcow2", "qcow2", False)], {0: [902]},
                         qemu_top=(1, "Could not open backing file")), root)
    p = problems_of(d, 0)
    t.expect(p and "is not a regular file" in p[0]["message"], "902 for a directory: %s" % p)
    if os.geteuid() == 0:
        t.notes.append("root: permission-denied part skipped")
        return
    locked = create(os.path.join(root, "locked.qcow2"), MiB)
    os.chmod(locked, 0)
    rebase_unsafe(os.path.join(root, "top.qcow2"), "locked.qcow2", "qcow2")
    try:
        d = r.verify(t, Case("top.qcow2", root, 1, [("top.qcow2", "qcow2", False)], {0: [902]},
                             qemu_top=(1, "Permission denied")), root)
        p = problems_of(d, 0)
        t.expect(p and "permission denied" in p[0]["message"], "902 message: %s" % p)
    finally:
        os.chmod(locked, 0o600)


def not_followed(r, t, root, name, qemu_rc, decoy=None):
    """The top names `name`; a valid qcow2 image sits at `decoy` (the name
    read as a file path): qcheck neither follows the name nor opens it."""
    base = create(os.path.join(root, "base.qcow2"), MiB)
    if decoy:
        shutil.copyfile(base, os.path.join(root, decoy))
    top = create(os.path.join(root, "top.qcow2"), MiB, backing="base.qcow2")
    set_backing_name(top, name)
    d = r.verify(t, Case("top.qcow2", root, 1, [("top.qcow2", "qcow2", False)], {0: [901]},
                         qemu_top=(qemu_rc, None), qemu_layers=False), root)
    p = problems_of(d, 0)
    # names are shown printable: a quote as \x22
    shown = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(int(m.group(1), 16)),
                   p[0].get("name", "")) if p else None
    t.expect(shown == name, "901 names %r, expected %r" % (shown, name))
    return d


@scenario
def json_backing_name(r, t, root):
    """QEMU follows a json: name (qemu-img check TOP exits 0); qcheck never."""
    name = 'json:{"driver":"qcow2","file":{"driver":"file","filename":"base.qcow2"}}'
    not_followed(r, t, root, name, 0, decoy=name)


@scenario
def nbd_backing_name(r, t, root):
    """nbd: on a port where nothing listens: QEMU fails to connect."""
    not_followed(r, t, root, "nbd:127.0.0.1:1", 1, decoy="nbd:127.0.0.1:1")


@scenario
def http_backing_name(r, t, root):
    os.makedirs(os.path.join(root, "http:", "127.0.0.1:1"))
    not_followed(r, t, root, "http://127.0.0.1:1/base.qcow2", 1,
                 decoy="http:/127.0.0.1:1/base.qcow2")


@scenario
def loop_of_two(r, t, root):
    """a -> b -> a: 906 on b's layer naming a (QEMU is not run on it)."""
    a = create(os.path.join(root, "a.qcow2"), MiB)
    create(os.path.join(root, "b.qcow2"), MiB, backing="a.qcow2")
    rebase_unsafe(a, "b.qcow2", "qcow2")
    d = r.verify(t, Case("a.qcow2", root, 1,
                         [("a.qcow2", "qcow2", False), ("b.qcow2", "qcow2", False)], {1: [906]},
                         qemu_layers=False), root)
    p = problems_of(d, 1)
    t.expect(p and p[0].get("index") == 0, "906 does not name layer 0: %s" % p)
    # the same loop through another name of a (by inode, not by name)
    os.mkdir(os.path.join(root, "sub"))
    rebase_unsafe(os.path.join(root, "b.qcow2"), "sub/../a.qcow2", "qcow2")
    r.verify(t, Case("a.qcow2", root, 1,
                     [("a.qcow2", "qcow2", False), ("b.qcow2", "qcow2", False)], {1: [906]},
                     qemu_layers=False), root)
    os.link(os.path.join(root, "a.qcow2"), os.path.join(root, "a-hardlink.qcow2"))
    rebase_unsafe(os.path.join(root, "b.qcow2"), "a-hardlink.qcow2", "qcow2")
    r.verify(t, Case("a.qcow2", root, 1,
                     [("a.qcow2", "qcow2", False), ("b.qcow2", "qcow2", False)], {1: [906]},
                     qemu_layers=False), root)


@scenario
def loop_of_one(r, t, root):
    a = create(os.path.join(root, "self.qcow2"), MiB)
    set_backing_name(a, "self.qcow2")
    with q.Image(a, writable=True) as im:  # a recorded format, as rebase would leave
        fmt = q.Extension(q.EXT_BACKING_FORMAT, b"qcow2")
        im.replace_extensions([fmt] + list(im.extensions))
    r.verify(t, Case("self.qcow2", root, 1, [("self.qcow2", "qcow2", False)], {0: [906]},
                     qemu_layers=False), root)


@scenario
def format_not_recorded(r, t, root):
    """No backing format extension: 903 without --allow-probe (QEMU itself
    probes and opens the chain), 904 and the probed layer with it."""
    base = create(os.path.join(root, "base.qcow2"), MiB)
    io(base, "write -P 0x81 0 64k")
    top = create(os.path.join(root, "top.qcow2"), MiB, backing="base.qcow2")
    io(top, "write -P 0x82 64k 64k")
    drop_backing_format(top)
    with q.Image(top) as im:
        t.expect(im.extension(q.EXT_BACKING_FORMAT) is None and im.backing_name == b"base.qcow2",
                 "set-up: the backing format is still recorded")
    r.verify(t, Case("top.qcow2", root, 1, [("top.qcow2", "qcow2", False)],
                     {0: [BACKING_FORMAT_MISSING, 903]},
                     qemu_top=(0, None), qemu_override={0: 0}), root)
    r.verify(t, Case("top.qcow2", root, 0,
                     [("top.qcow2", "qcow2", False), ("base.qcow2", "qcow2", True)],
                     {0: [BACKING_FORMAT_MISSING, 904]},
                     args=["--allow-probe"], qemu_top=(0, None), info=True, digest=True), root)


@scenario
def format_not_recorded_raw(r, t, root):
    base = create(os.path.join(root, "base.raw"), MiB, fmt="raw")
    io(base, "write -P 0x83 0 64k", fmt="raw")
    top = create(os.path.join(root, "top.qcow2"), MiB, backing="base.raw", backing_fmt="raw")
    drop_backing_format(top)
    r.verify(t, Case("top.qcow2", root, 0,
                     [("top.qcow2", "qcow2", False), ("base.raw", "raw", True)],
                     {0: [BACKING_FORMAT_MISSING, 904]},
                     args=["--allow-probe"], qemu_top=(0, None), info=True, digest=True), root)


# ---- QED layers ---------------------------------------------------------------------
# A QED header records a backing format only as "raw" (its no-probe bit):
# any other base is probed by QEMU, so qcheck follows it with --allow-probe.

QED_L2_ENTRY_INVALID, QED_CLUSTER_LEAKED = 1012, 1014


@scenario
def qed_top_raw_base(r, t, root):
    """A QED top over a raw base recorded as raw: its own QED check, the raw
    base read below it (data, a zero cluster over the base's data, the
    base's data where the top has nothing), and the digest of the chain."""
    base = create(os.path.join(root, "base.raw"), 3 * MiB, fmt="raw")
    io(base, "write -P 0x61 0 1M", "write -P 0x62 2M 4k", fmt="raw")
    top = create(os.path.join(root, "top.qed"), 3 * MiB, backing="base.raw", backing_fmt="raw",
                 fmt="qed")
    io(top, "write -P 0x63 512k 64k", "write -z 0 64k", "write -P 0x64 1536k 4k", fmt="qed")
    d = r.verify(t, Case("top.qed", root, 0,
                         [("top.qed", "qed", False), ("base.raw", "raw", False)],
                         qemu_top=(0, None), info=True, digest=True), root)
    t.expect(d and d.get("format") == "qed", "the chain's format: %r" % (d or {}).get("format"))


@scenario
def qed_base(r, t, root):
    """A qcow2 top over a QED base recorded as qed: both checked (QEMU opens
    the same chain: qemu-img check TOP 0), the digest through both."""
    base = create(os.path.join(root, "base.qed"), 2 * MiB, fmt="qed")
    io(base, "write -P 0x91 0 256k", "write -P 0x92 1M 64k", fmt="qed")
    create(os.path.join(root, "top.qcow2"), 2 * MiB, backing="base.qed", backing_fmt="qed")
    io(os.path.join(root, "top.qcow2"), "write -P 0x93 128k 64k", "write -z 1M 4k")
    r.verify(t, Case("top.qcow2", root, 0,
                     [("top.qcow2", "qcow2", False), ("base.qed", "qed", False)],
                     qemu_top=(0, None), info=True, digest=True), root)


@scenario
def qed_over_qed(r, t, root):
    """A QED top over a QED base: the format is not recorded (903 without
    --allow-probe, the base unchecked; QEMU probes it), probed with it
    (904), both layers checked, the digest through both; a zero cluster
    of the top hides the base's data."""
    base = create(os.path.join(root, "base.qed"), MiB, fmt="qed")
    io(base, "write -P 0xa1 0 256k", fmt="qed")
    top = create(os.path.join(root, "top.qed"), MiB, backing="base.qed", backing_fmt="qed",
                 fmt="qed")
    io(top, "write -z 0 64k", "write -P 0xa2 192k 128k", fmt="qed")
    r.verify(t, Case("top.qed", root, 1, [("top.qed", "qed", False)], {0: [903]},
                     qemu_top=(0, None), qemu_override={0: 0}), root)
    r.verify(t, Case("top.qed", root, 0,
                     [("top.qed", "qed", False), ("base.qed", "qed", True)], {0: [904]},
                     args=["--allow-probe"], qemu_top=(0, None), info=True, digest=True), root)


@scenario
def qcow2_base_under_qed(r, t, root):
    """A QED top over a qcow2 base (probed: QED cannot record qcow2)."""
    base = create(os.path.join(root, "base.qcow2"), MiB, "cluster_size=4096")
    io(base, "write -P 0xb1 0 512k")
    top = create(os.path.join(root, "top.qed"), MiB, backing="base.qcow2", fmt="qed")
    io(top, "write -P 0xb2 100k 8k", "write -z 256k 64k", fmt="qed")
    r.verify(t, Case("top.qed", root, 0,
                     [("top.qed", "qed", False), ("base.qcow2", "qcow2", True)], {0: [904]},
                     args=["--allow-probe"], qemu_top=(0, None), info=True, digest=True), root)


@scenario
def qed_base_damaged(r, t, root):
    """A QED base with an L2 entry past the end of the file (a corruption:
    exit 2, no digest) and, in a second chain, a leaked cluster (exit 3):
    counted on the base, as `qemu-img check` of the base alone counts them."""
    # the entry moved past the end leaves the cluster it pointed to leaked
    for name, fix, want_rc, codes in (("bad", "past_eof", 2,
                                       [QED_L2_ENTRY_INVALID, QED_CLUSTER_LEAKED]),
                                      ("leak", "leak", 3, [QED_CLUSTER_LEAKED])):
        d = os.path.join(root, name)
        os.makedirs(d)
        base = create(os.path.join(d, "base.qed"), MiB, fmt="qed")
        io(base, "write -P 0xc1 0 128k", fmt="qed")
        im = qedlib.Image(base)
        if fix == "past_eof":
            im.set_l2(64 * KiB, im.file_size() + 16 * im.cluster_size)
        else:
            im.append_clusters(1)
        create(os.path.join(d, "top.qcow2"), MiB, backing="base.qed", backing_fmt="qed")
        r.verify(t, Case("top.qcow2", d, want_rc,
                         [("top.qcow2", "qcow2", False), ("base.qed", "qed", False)],
                         {1: codes}), d)
        res = r.qc(t, ["--chain", "--digest", "top.qcow2"], d)
        printed = [x for x in res.stdout.split() if DIGEST_RE.match(x)]
        if want_rc == 2:
            t.expect(res.returncode == 2 and not printed and "no digest" in res.stderr,
                     "--digest over a corrupt QED base: exit %d, %r, %r"
                     % (res.returncode, res.stdout[-200:], res.stderr[-300:]))
        else:
            t.expect(res.returncode == 3 and len(printed) == 1,
                     "--digest over a leaky QED base: exit %d, %r" % (res.returncode,
                                                                     res.stdout[-200:]))


@scenario
def leak_in_lower_layer(r, t, root):
    base = create(os.path.join(root, "base.qcow2"), MiB)
    io(base, "write -P 0xa1 0 128k")
    patch(base, leak_cluster)
    create(os.path.join(root, "mid.qcow2"), MiB, backing="base.qcow2")
    top = create(os.path.join(root, "top.qcow2"), MiB, backing="mid.qcow2")
    io(top, "write -P 0xa2 64k 64k")
    d = r.verify(t, Case("top.qcow2", root, 3,
                         [("top.qcow2", "qcow2", False), ("mid.qcow2", "qcow2", False),
                          ("base.qcow2", "qcow2", False)], {2: [LEAKED_CLUSTER]},
                         qemu_top=(0, None), info=True), root)
    if d:
        t.expect(d.get("leaks") == 1 and d["layers"][2].get("exit-code") == 3,
                 "totals: leaks %r, base exit-code %r" % (d.get("leaks"),
                                                          d["layers"][2].get("exit-code")))
    res = r.qc(t, ["-q", "--chain", "top.qcow2"], root)
    t.expect(res.returncode == 3 and res.stdout == "" and
             re.search(r"^layer 2: .*\(%d\)" % LEAKED_CLUSTER, res.stderr, re.M),
             "-q --chain: exit %d, stdout %r, stderr %r" % (res.returncode, res.stdout,
                                                           res.stderr))
    # repairs are single-image: refused with --chain, nothing written
    before = tree_hashes(root)
    for args in (["-r", "leaks", "--chain"], ["-r", "all", "--chain"],
                 ["-r", "leaks", "--data-file=base.qcow2"]):
        res = r.qc(t, args + ["top.qcow2"], root)
        t.expect(res.returncode == 1 and "single-image" in res.stderr,
                 "%s: exit %d: %s" % (" ".join(args), res.returncode, res.stderr.strip()))
    t.expect(tree_hashes(root) == before, "a refused repair wrote")


@scenario
def corruption_in_lower_layer(r, t, root):
    base = create(os.path.join(root, "base.qcow2"), MiB)
    io(base, "write -P 0xb1 0 64k")
    mid = create(os.path.join(root, "mid.qcow2"), MiB, backing="base.qcow2")
    io(mid, "write -P 0xb2 128k 64k")
    patch(mid, refcount_zero)
    create(os.path.join(root, "top.qcow2"), MiB, backing="mid.qcow2")
    d = r.verify(t, Case("top.qcow2", root, 2,
                         [("top.qcow2", "qcow2", False), ("mid.qcow2", "qcow2", False),
                          ("base.qcow2", "qcow2", False)], {1: [REFCOUNT_ZERO_IN_USE]},
                         qemu_top=(0, None), info=True), root)
    res = r.qc(t, ["--chain", "--digest", "top.qcow2"], root)
    t.expect(res.returncode == 2 and not any(DIGEST_RE.match(x) for x in res.stdout.split()),
             "--digest on a corrupt chain: exit %d, %r" % (res.returncode, res.stdout[-200:]))
    del d


@scenario
def relative_paths(r, t, root):
    """Backing names with a subfolder and `..`, the top given relative to
    another working directory; decoys where a name resolved against the
    working directory would land."""
    imgs, other = os.path.join(root, "imgs"), os.path.join(root, "other")
    for sub in ("imgs/sub", "imgs/base", "other/sub", "other/base"):
        os.makedirs(os.path.join(root, sub))
    base = create(os.path.join(imgs, "base", "base.qcow2"), 2 * MiB)
    io(base, "write -P 0xc1 0 1M")
    mid = create(os.path.join(imgs, "sub", "mid.qcow2"), 2 * MiB, backing="../base/base.qcow2")
    io(mid, "write -P 0xc2 512k 64k")
    top = create(os.path.join(imgs, "top.qcow2"), 2 * MiB, backing="sub/mid.qcow2")
    io(top, "write -P 0xc3 1M 64k")
    # decoys: a raw file at other/sub/mid.qcow2 and an image at other/base/base.qcow2
    with open(os.path.join(other, "sub", "mid.qcow2"), "wb") as f:
        f.write(b"\xee" * (2 * MiB))
    create(os.path.join(other, "base", "base.qcow2"), 2 * MiB)
    layers = [("../imgs/top.qcow2", "qcow2", False), ("../imgs/sub/mid.qcow2", "qcow2", False),
              ("../imgs/base/base.qcow2", "qcow2", False)]
    r.verify(t, Case("../imgs/top.qcow2", other, 0, layers, qemu_top=(0, None), info=True,
                     digest=True), root)
    # the same chain through an absolute top name, and an absolute backing name
    rebase_unsafe(top, os.path.join(imgs, "sub", "mid.qcow2"), "qcow2")
    r.verify(t, Case(top, other, 0, layers, qemu_top=(0, None), info=True, digest=True), root)
    # a symbolic link to the top: QEMU resolves "sub/mid.qcow2" in the
    # link's folder (not the target's), where the raw decoy is
    rebase_unsafe(top, "sub/mid.qcow2", "qcow2")
    os.symlink("../imgs/top.qcow2", os.path.join(other, "link.qcow2"))
    r.verify(t, Case("link.qcow2", other, 1, [("link.qcow2", "qcow2", False)], {0: [902]},
                     qemu_top=(1, "Image is not in qcow2 format")), root)


# ---- external data files -----------------------------------------------------------

def data_file_image(root, name="img.qcow2", data="data.raw", absolute=True):
    """An image with an external data file written through it; the name
    recorded is absolute, or relative (then created in root)."""
    recorded = os.path.join(root, data) if absolute else data
    img = create(os.path.join(root, name), 2 * MiB, "data_file=%s" % recorded)
    io(img, "write -P 0xd1 0 256k", "write -P 0xd2 1M 64k", "write -z 64k 64k")
    return img


@scenario
def data_file_clean(r, t, root):
    data_file_image(root)
    top = create(os.path.join(root, "top.qcow2"), 2 * MiB, backing="img.qcow2")
    io(top, "write -P 0xd3 1M 4k")
    d = r.verify(t, Case("top.qcow2", root, 0,
                         [("top.qcow2", "qcow2", False), ("img.qcow2", "qcow2", False)],
                         qemu_top=(0, None), info=True, digest=True), root)
    if d:
        t.expect(d["layers"][1].get("data-file") == os.path.join(root, "data.raw"),
                 "layer 1 data-file %r" % d["layers"][1].get("data-file"))
    r.verify(t, Case("img.qcow2", root, 0, [("img.qcow2", "qcow2", False)], qemu_top=(0, None),
                     info=True, digest=True), root)


@scenario
def data_file_missing(r, t, root):
    data_file_image(root)
    create(os.path.join(root, "top.qcow2"), 2 * MiB, backing="img.qcow2")
    os.unlink(os.path.join(root, "data.raw"))
    r.verify(t, Case("top.qcow2", root, 1,
                     [("top.qcow2", "qcow2", False), ("img.qcow2", "qcow2", False)], {1: [909]},
                     qemu_top=(1, "Could not open"), qemu_override={0: 1}), root)


@scenario
def data_file_too_short(r, t, root):
    """qemu-img check does not look at the data file's length (exit 0); the
    guest reads zeros past its end: 910, a corruption."""
    data_file_image(root)
    os.truncate(os.path.join(root, "data.raw"), 100 * KiB)
    d = r.verify(t, Case("img.qcow2", root, 2, [("img.qcow2", "qcow2", False)], {0: [910]},
                         qemu_top=(0, None), qemu_override={0: 0}), root)
    p = problems_of(d, 0)
    t.expect(p and p[0].get("file_size", p[0].get("file-size")) in (100 * KiB, None),
             "910: %s" % p)


@scenario
def data_file_relative(r, t, root):
    """A relative data file name: QEMU 7.2 resolves it against the working
    directory. From the image's folder: 911 and a clean chain; from another
    folder holding a different file of that name: that file is read (the
    digest is qemu-img convert's from there); from a folder without one:
    909, and qemu-img cannot open the image either."""
    imgs, other, empty = (os.path.join(root, x) for x in ("imgs", "other", "empty"))
    for x in (imgs, other, empty):
        os.mkdir(x)
    data_file_image(imgs, absolute=False)
    with open(os.path.join(other, "data.raw"), "wb") as f:
        f.write(bytes([0xe7]) * (2 * MiB))
    top = create(os.path.join(imgs, "top.qcow2"), 2 * MiB, backing="img.qcow2")
    io(top, "write -P 0xd4 0 4k")
    r.verify(t, Case("top.qcow2", imgs, 0,
                     [("top.qcow2", "qcow2", False), ("img.qcow2", "qcow2", False)],
                     {1: [911]}, qemu_top=(0, None), info=True, digest=True), root)
    d = r.verify(t, Case("../imgs/img.qcow2", other, 0, [("../imgs/img.qcow2", "qcow2", False)],
                         {0: [911]}, qemu_top=(0, None), info=True, digest=True), root)
    if d:
        t.expect(same_file(d["layers"][0].get("data-file", ""), "data.raw", other),
                 "data-file %r is not other/data.raw" % d["layers"][0].get("data-file"))
    r.verify(t, Case("../imgs/img.qcow2", empty, 1, [("../imgs/img.qcow2", "qcow2", False)],
                     {0: [911, 909]}, qemu_top=(1, "Could not open")), root)


@scenario
def data_file_option(r, t, root):
    """--data-file=PATH instead of the recorded name (which is missing);
    and --data-file on an image that has none: 909, as QEMU refuses it."""
    data_file_image(root, data="gone.raw")
    os.rename(os.path.join(root, "gone.raw"), os.path.join(root, "moved.raw"))
    moved = os.path.join(root, "moved.raw")
    opts = "driver=qcow2,file.filename=img.qcow2,data-file.driver=file,data-file.filename=" + moved
    for chain in (True, False):
        c = Case("img.qcow2", root, 0, [("img.qcow2", "qcow2", False)],
                 args=["--data-file=" + moved], chain=chain, qemu_layers=False)
        r.verify(t, c, root)
        # the digest against qemu-img convert --image-opts with the same data file
        tmp = os.path.join(root, "convert")
        os.makedirs(tmp, exist_ok=True)
        raw = os.path.join(tmp, "c.raw")
        rc, out = r.qemu(["convert", "--image-opts", opts, "-O", "raw", raw], root)
        if t.expect(rc == 0, "qemu-img convert --image-opts: %d %s" % (rc, out)):
            res = r.qc(t, (["--chain"] if chain else []) + ["--digest", "--data-file=" + moved,
                                                            "img.qcow2"], root)
            t.expect(res.stdout.strip().splitlines()[-1:] == [reference_digest(raw)],
                     "--data-file digest (chain=%s): %r" % (chain, res.stdout[-200:]), "digest")
        shutil.rmtree(tmp)
    rc, out = r.qemu(["check", "--image-opts", opts], root)
    t.expect(rc == 0, "qemu-img check with data-file.filename: %d %s" % (rc, out))
    plain = create(os.path.join(root, "plain.qcow2"), MiB)
    del plain
    d = r.verify(t, Case("plain.qcow2", root, 1, [("plain.qcow2", "qcow2", False)], {0: [909]},
                         args=["--data-file=" + moved], chain=False, qemu_layers=False), root)
    p = problems_of(d, 0)
    t.expect(p and "was given for an image without an external data file" in p[0]["message"],
             "909 for --data-file on an image without one says: %s"
             % (p[0]["message"] if p else None), "message")
    rc, out = r.qemu(["check", "--image-opts", "driver=qcow2,file.filename=plain.qcow2,"
                      "data-file.driver=file,data-file.filename=" + moved], root)
    t.expect(rc == 1 and "external data file" in out, "QEMU with data-file on plain: %d %s"
             % (rc, out))


@scenario
def data_file_protocol_name(r, t, root):
    """A data file named nbd:...: not opened (909), and the message must say
    why (a protocol name), not that the image names none."""
    img = data_file_image(root)
    with q.Image(img, writable=True) as im:
        exts = [e for e in im.extensions if e.magic != q.EXT_DATA_FILE]
        im.replace_extensions(exts + [q.Extension(q.EXT_DATA_FILE, b"nbd:127.0.0.1:1")])
    d = r.verify(t, Case("img.qcow2", root, 1, [("img.qcow2", "qcow2", False)], {0: [909]},
                         qemu_top=(1, None)), root)
    p = problems_of(d, 0)
    t.expect(p and "is a json: description or a protocol name" in p[0]["message"],
             "909 for a protocol data file name says: %s" % (p[0]["message"] if p else None),
             "message")


def make_runner(args):
    global KEEP
    KEEP = args.keep
    return Runner(args.qcheck, args.workdir)


def main():
    return script_main(__doc__, make_runner)


if __name__ == "__main__":
    sys.exit(main())
