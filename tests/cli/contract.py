#!/usr/bin/env python3
"""What a caller of `qemu-img check` sees, qcheck must show: both tools run
side by side on the same files (qemu-img 7.2, the installed version).

Usage: contract.py QCHECK WORKDIR

1. Fixed sentences. For every situation in which qemu-img prints a fixed
   sentence (usage errors, files it cannot open, formats, check errors),
   run in human and JSON mode, with and without -q: the same exit status;
   every line qemu-img prints on stderr, with its program name replaced by
   qcheck's, appears in qcheck's stderr in the same order (qcheck adds its
   own explanation lines); stdout is empty whenever qemu-img's is. The
   formats qemu-img can check and qcheck cannot (qed, vmdk, vdi, vhdx,
   parallels) are a known difference: qcheck exits 63 with qemu-img's
   "This image format does not support checks".
2. Locks. With a qemu-io holding the image read-write: a check is refused
   as qemu-img refuses it (exit 1, QEMU's lock sentences, nothing on
   stdout); -U and file.locking=off check it with qemu-img's result and an
   imageInUse warning; repairs are refused. A read-only holder does not
   block a check; a raw file in use still reaches exit 63. OFD locks set
   by hand (unshared consistent read, resize held, a write lock) give
   qemu-img's sentences and exit codes too. A check writes
   nothing (strace: the image is opened read-only, locked only with read
   locks, and never written or truncated).
3. Repair output. On images whose only defect is the corrupt bit, the
   dirty bit, an unknown autoclear bit, or a leak, -r leaks and -r all
   print what qemu-img prints (the banner only when something counted as
   fixed) and exit as it does; leaks-fixed / corruptions-fixed as qemu-img
   emits them.
4. JSON key order. qemu-img's keys are always a subsequence of the order
   derived from its QDict (KEY_ORDER); every optional key is observed at
   least once; qcheck prints the same ImageCheck keys as qemu-img, in that
   order, and its own keys after them.
5. Callers (docs/qemu-img-differences.md §1.1, §1.3): vdsm, CloudStack, ploop,
   SlapOS (also through a link named qemu-img: "qemu-img: This image
   format does not support checks"), ZStack, xcp-ng, GNS3, as they parse.
"""
import contextlib
import fcntl
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
import qcow2lib as q  # noqa: E402

QEMU_IMG = os.environ.get("QEMU_IMG", "qemu-img")
QEMU_IO = os.environ.get("QEMU_IO", "qemu-io")

# qemu-img 7.2's ImageCheck key order: its QDict iterates hash buckets
# (tdb_hash(key) % 512), one bucket per key, so the order is fixed.
KEY_ORDER = ["image-end-offset", "compressed-clusters", "total-clusters", "corruptions",
             "corruptions-fixed", "check-errors", "leaks", "leaks-fixed",
             "allocated-clusters", "filename", "format", "fragmented-clusters"]
OWN_KEYS = ["warnings", "header", "problems", "repair", "error", "exit-code"]
BANNER = "The following inconsistencies were found and repaired:"
NO_CHECKS = "This image format does not support checks"

FAILURES = []


def expect(cond, what):
    if not cond:
        FAILURES.append(what)
    return cond


def run(argv, cwd, env=None):
    p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, errors="replace",
                       timeout=120, env=env)
    return p.returncode, p.stdout, p.stderr


def tdb_hash(key):
    """QEMU's qdict hash, to show where KEY_ORDER comes from."""
    v = (0x238F13AF * len(key)) & 0xFFFFFFFF
    for i, ch in enumerate(key.encode()):
        v = (v + (ch << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * v + 12345) & 0xFFFFFFFF


def is_subsequence(seq, order):
    pos = [order.index(k) for k in seq]
    return pos == sorted(pos)


def lines_in_order(wanted, lines):
    it = iter(lines)
    return all(any(w == l for l in it) for w in wanted)


class Tools:
    def __init__(self, qcheck, work):
        self.qcheck, self.work = qcheck, work
        self.prog = os.path.basename(qcheck)
        self.qemu_json, self.qcheck_json = [], []  # every object printed, for item 4

    def qemu(self, args, **kw):
        return run([QEMU_IMG, "check", *args], kw.get("cwd", self.work), kw.get("env"))

    def qc(self, args, **kw):
        return run([kw.get("exe", self.qcheck), *args], kw.get("cwd", self.work), kw.get("env"))

    def as_qcheck(self, line):
        """A qemu-img stderr line as qcheck must print it."""
        if line.startswith("qemu-img: "):
            line = self.prog + ": " + line[len("qemu-img: "):]
        return line.replace("Try 'qemu-img --help'", "Try '%s --help'" % self.prog)

    def collect(self, out, qemu):
        """The JSON object printed (its keys in printed order), kept for item 4."""
        try:
            obj = json.loads(out)
        except ValueError:
            return None
        if isinstance(obj, dict):
            (self.qemu_json if qemu else self.qcheck_json).append(obj)
        return obj


# ---- images ------------------------------------------------------------------

def make_images(work):
    def sh(*argv, cwd=work):
        # LUKS creation times PBKDF2 and fails now and then on a loaded
        # machine ("Unable to get accurate CPU usage"): try again.
        for attempt in range(10):
            p = subprocess.run(argv, cwd=cwd, capture_output=True, text=True)
            if p.returncode == 0:
                return
            time.sleep(0.5 * attempt)
        sys.exit("%s exited %d: %s" % (" ".join(argv), p.returncode, p.stderr.strip()))

    def qcow2(name):
        sh(QEMU_IMG, "create", "-q", "-f", "qcow2", name, "64M")
        # data, a run written backwards (fragmented), a compressed cluster
        sh(QEMU_IO, "-f", "qcow2", "-c", "write -P 1 1M 64k", "-c", "write -P 2 0 64k",
           "-c", "write -c -P 3 2M 64k", "-c", "write -P 4 3M 64k", name)
        return os.path.join(work, name)

    def patched(src, name, fn):
        path = os.path.join(work, name)
        shutil.copyfile(os.path.join(work, src), path)
        with q.Image(path, writable=True) as im:
            fn(im)

    qcow2("clean.qcow2")
    patched("clean.qcow2", "leak.qcow2",
            lambda im: im.append_clusters(b"\0" * im.cluster_size, count=1, refcount=1))

    def leak_and_zero(im):
        data = [r for r in im.data_refs() if not r.compressed][0]
        im.append_clusters(b"\0" * im.cluster_size, count=1, refcount=1)
        im.set_refcount(data.host_offset // im.cluster_size, 0)
    patched("clean.qcow2", "both.qcow2", leak_and_zero)
    patched("clean.qcow2", "corrupt_bit.qcow2",
            lambda im: im.set_header_bits("incompatible_features", set_mask=q.INCOMPAT_CORRUPT))
    patched("clean.qcow2", "dirty_bit.qcow2",
            lambda im: im.set_header_bits("incompatible_features", set_mask=q.INCOMPAT_DIRTY))
    patched("clean.qcow2", "autoclear_bit.qcow2",
            lambda im: im.set_header_bits("autoclear_features", set_mask=1 << 40))
    # An unusable refcount block: qemu-img counts check errors and still prints JSON.
    patched("both.qcow2", "check_errors.qcow2",
            lambda im: im.set_reftable_entry(0, im.reftable()[0] | 0x200))
    patched("clean.qcow2", "incompat_bit.qcow2",
            lambda im: im.set_header_bits("incompatible_features", set_mask=1 << 20))
    patched("clean.qcow2", "version4.qcow2", lambda im: im.set_header_field("version", 4))
    sh(QEMU_IMG, "create", "-q", "-f", "raw", "r.raw", "1M")
    open(os.path.join(work, "empty"), "wb").close()
    os.mkdir(os.path.join(work, "dir"))
    for fmt in ("qed", "vmdk", "vdi", "vhdx", "parallels", "vpc", "qcow"):
        sh(QEMU_IMG, "create", "-q", "-f", fmt, "img." + fmt, "16M")
    sh(QEMU_IMG, "create", "-q", "--object", "secret,id=s0,data=x", "-f", "luks",
       "-o", "key-secret=s0", "img.luks", "16M")
    shutil.copyfile(os.path.join(work, "clean.qcow2"), os.path.join(work, "noread.qcow2"))
    os.chmod(os.path.join(work, "noread.qcow2"), 0)


# ---- 1. fixed sentences -------------------------------------------------------

# (arguments, relation): "same" = same exit status and sentences; an int =
# qcheck's exit status where qemu-img checks a format qcheck cannot.
SENTENCES = [
    ("r.raw", "same"),
    ("empty", "same"),
    ("-f qcow2 r.raw", "same"),
    ("-f qcow2 empty", "same"),
    ("--image-opts driver=qcow2,file.filename=r.raw", "same"),
    ("--image-opts file.filename=r.raw", "same"),
    ("--image-opts driver=raw,file.filename=clean.qcow2", "same"),
    ("--image-opts r.raw", "same"),
    ("--image-opts driver=qcow2", "same"),
    ("-f qcow2 --image-opts driver=qcow2,file.filename=clean.qcow2", "same"),
    ("-U --image-opts driver=qcow2,file.filename=clean.qcow2,force-share=off", "same"),
    ("missing", "same"),
    ("-f qcow2 missing", "same"),
    ("-f raw missing", "same"),
    ("dir", "same"),
    ("-r all dir", "same"),
    ("-r foo clean.qcow2", "same"),
    ("-r foo", "same"),
    ("--output=xml clean.qcow2", "same"),
    ("--output=xml", "same"),
    ("-T bogus clean.qcow2", "same"),
    ("-f", "same"),
    ("--bogus clean.qcow2", "same"),
    ("-qx clean.qcow2", "same"),
    ("", "same"),
    # Two or more files are a batch (qemu-img refuses them): a deliberate
    # difference, tested by tests/fleet/.
    ("-U -r leaks clean.qcow2", "same"),
    ("-U -r all clean.qcow2", "same"),
    ("--image-opts driver=qcow2,file.filename=clean.qcow2,force-share=on -r all", "same"),
    ("-f raw clean.qcow2", "same"),
    ("-f file clean.qcow2", "same"),
    ("-r all -f raw clean.qcow2", "same"),
    ("-r all r.raw", "same"),
    ("-f nosuch clean.qcow2", "same"),
    ("-U -r all -f nosuch missing", "same"),
    ("-f qed clean.qcow2", "same"),
    ("-f vmdk clean.qcow2", "same"),
    ("-f parallels clean.qcow2", "same"),
    ("-f vpc clean.qcow2", "same"),
    ("-f qcow clean.qcow2", "same"),
    ("-f luks clean.qcow2", "same"),
    ("-f qcow2 img.qcow", "same"),
    ("-f qcow2 img.qed", "same"),
    ("img.vpc", "same"),
    ("img.qcow", "same"),
    ("img.luks", "same"),
    ("--object secret,id=s0,data=x --image-opts driver=luks,file.filename=img.luks,key-secret=s0",
     "same"),
    # QEMU cannot open these; qcheck cannot check them either (exit 1, a
    # check error) and prints its result before qemu-img's sentence.
    ("incompat_bit.qcow2", "result"),
    ("version4.qcow2", "result"),
    # Deliberate differences: qcheck's exit status (docs/qemu-img-differences.md).
    ("check_errors.qcow2", 2),  # unusable refcounts are corruptions (§2.4), not check errors
    ("img.qed", "same"),  # QED is checked (tests/qed has its cases)
    ("-f qed img.qed", "same"),
    ("img.vmdk", 63),  # qemu-img checks these formats; qcheck does not (§2.11)
    ("img.vdi", 63),
    ("img.vhdx", 63),
    ("img.parallels", 63),
]

MODES = [[], ["--output=json"], ["-q", "--output=json"]]

# qemu-img sentences after which qcheck explains what it found (the others,
# usage errors and plain open errors, say everything already).
EXPLAINED = ("does not support checks", "not in qcow2 format", "lock", "Check failed",
             "Unsupported qcow2", "force-share=on", "key-secret", "Image not in",
             "Cannot find device", "must be specified")


def qemu_sentences(err):
    """qemu-img's stderr lines that are sentences, not check diagnostics."""
    keep = ("qemu-img: ", "Try ", "Is another process", "WARNING:", "         ")
    return [l for l in err.splitlines() if l.startswith(keep)]


def check_sentence_row(t, args, relation, mode):
    argv = mode + args.split()
    what = "qcheck %s" % " ".join(argv)
    qrc, qout, qerr = t.qemu(argv)
    rc, out, err = t.qc(argv)
    if isinstance(relation, int):
        expect(rc == relation, "%s: exit %d, wanted %d (qemu-img: %d)" % (what, rc, relation, qrc))
        expect(rc != qrc, "%s: qemu-img now exits %d too: the row is no longer a difference"
               % (what, qrc))
        if relation == 63:
            expect(qrc == 0, "%s: qemu-img exits %d, the row expects it to check the format"
                   % (what, qrc))
            expect(t.as_qcheck("qemu-img: " + NO_CHECKS) in err.splitlines(),
                   "%s: stderr lacks qemu-img's %r: %r" % (what, NO_CHECKS, err[-300:]))
            expect(not out, "%s: stdout not empty: %r" % (what, out[:200]))
        return
    expect(rc == qrc, "%s: exit %d, qemu-img exits %d" % (what, rc, qrc))
    wanted = [t.as_qcheck(l) for l in qemu_sentences(qerr)]
    expect(lines_in_order(wanted, err.splitlines()),
           "%s: stderr lacks qemu-img's lines %r in that order: %r" % (what, wanted, err[-400:]))
    if not qout and relation == "result":
        # qcheck's result of a check that could not be completed
        res = t.collect(out, False) if "--output=json" in argv else None
        expect(not out or "--output=json" not in argv or
               (isinstance(res, dict) and res.get("check-errors", 0) > 0),
               "%s: a result without check errors where qemu-img prints nothing: %r"
               % (what, out[:200]))
    elif not qout:
        expect(not out, "%s: stdout %r where qemu-img prints nothing" % (what, out[:200]))
    elif "--output=json" in argv:
        qm, qc = t.collect(qout, True), t.collect(out, False)
        expect(isinstance(qm, dict) and isinstance(qc, dict),
               "%s: JSON missing (qemu-img %r, qcheck %r)" % (what, qout[:80], out[:80]))
    if any(s in l for l in wanted for s in EXPLAINED):
        ours = [l for l in err.splitlines() if l.startswith(t.prog + ": ")]
        theirs = [w for w in wanted if w.startswith(t.prog + ": ")]
        expect(len(ours) > len(theirs),
               "%s: no explanation after qemu-img's sentence: %r" % (what, err[-300:]))


def check_sentences(t):
    rows = [(args, relation, mode) for args, relation in SENTENCES for mode in MODES]
    # Rows that may open a file read-write take write locks; run them
    # alone, so that they do not refuse each other's checks.
    writers = [row for row in rows if "-r" in row[0].split()]
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(lambda row: check_sentence_row(t, *row),
                      [row for row in rows if row not in writers]))
    for row in writers:
        check_sentence_row(t, *row)
    # qcheck's own check errors end with qemu-img's "Check failed" too, in
    # every mode, after the result.
    for mode in MODES:
        argv = mode + ["--max-mem=1K", "clean.qcow2"]
        rc, out, err = t.qc(argv)
        what = "qcheck %s" % " ".join(argv)
        expect(rc == 1 and t.prog + ": Check failed" in err.splitlines(),
               "%s: exit %d, stderr %r (wanted 1 and \"Check failed\")" % (what, rc, err[-300:]))
        if "--output=json" in mode and "-q" not in mode:
            res = t.collect(out, False)
            expect(isinstance(res, dict) and res.get("check-errors", 0) > 0,
                   "%s: JSON without check errors: %r" % (what, out[:200]))


def check_unreadable(t):
    """A file the user may not read: qemu-img's "Permission denied". As
    root, both tools run as nobody."""
    prefix = []
    if os.geteuid() == 0:
        if not shutil.which("setpriv"):
            print("note: running as root without setpriv: unreadable-file row skipped")
            return
        prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    for args in (["noread.qcow2"], ["-r", "leaks", "noread.qcow2"], ["--output=json", "noread.qcow2"]):
        path = os.path.join(t.work, "noread.qcow2")
        qrc, qout, qerr = run(prefix + [QEMU_IMG, "check", *args[:-1], path], t.work)
        rc, out, err = run(prefix + [t.qcheck, *args[:-1], path], t.work)
        what = "qcheck %s (unreadable)" % " ".join(args)
        expect("Permission denied" in qerr, "%s: qemu-img does not say Permission denied: %r"
               % (what, qerr))
        expect(rc == qrc == 1, "%s: exit %d, qemu-img %d" % (what, rc, qrc))
        wanted = [t.as_qcheck(l) for l in qemu_sentences(qerr)]
        expect(lines_in_order(wanted, err.splitlines()), "%s: stderr %r lacks %r" % (what, err, wanted))
        expect(not out and not qout, "%s: stdout not empty: %r" % (what, out))


# ---- 2. locks ---------------------------------------------------------------------

@contextlib.contextmanager
def holder(work, path, *opts):
    """qemu-io with `path` open (read-write unless opts has -r); it has the
    image open once it has answered its first command."""
    p = subprocess.Popen([QEMU_IO, *opts, path], cwd=work, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        p.stdin.write(b"read 0 512\n")
        p.stdin.flush()
        answer = p.stdout.readline().decode(errors="replace")
        if "512/512 bytes" not in answer:
            raise RuntimeError("qemu-io did not open %s: %r" % (path, answer))
        yield p
    finally:
        try:
            p.communicate(b"quit\n", timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def same_as_qemu(t, argv, what, stdout_too=True):
    qrc, qout, qerr = t.qemu(argv)
    rc, out, err = t.qc(argv)
    expect(rc == qrc, "%s: exit %d, qemu-img exits %d (%s)" % (what, rc, qrc, qerr.strip()[-200:]))
    wanted = [t.as_qcheck(l) for l in qemu_sentences(qerr)]
    expect(lines_in_order(wanted, err.splitlines()),
           "%s: stderr lacks qemu-img's lines %r: %r" % (what, wanted, err[-400:]))
    if not qout:
        expect(not out, "%s: stdout %r where qemu-img prints nothing" % (what, out[:200]))
    elif stdout_too and "--output=json" not in argv:
        expect(lines_in_order([l for l in qout.splitlines() if l], out.splitlines()),
               "%s: stdout lacks qemu-img's lines %r: %r" % (what, qout, out))
    return rc, out, err


def check_locks(t):
    img = "leak.qcow2"  # exit 3 when checked: a result both tools agree on
    fp = q.file_sha256(os.path.join(t.work, img))
    with holder(t.work, img, "-f", "qcow2"):
        for argv in ([img], ["--output=json", img], ["-q", img], ["-f", "qcow2", img],
                     ["-f", "qed", img], ["-f", "raw", img], ["-r", "leaks", img],
                     ["-r", "all", img], ["-r", "all", "-f", "raw", img],
                     ["--image-opts", "driver=qcow2,file.filename=" + img]):
            same_as_qemu(t, argv, "qcheck %s (read-write holder)" % " ".join(argv))
        rc, out, err = t.qc(["-r", "all", "-n", img])
        expect(rc == 1 and 'Failed to get shared "write" lock' in err,
               "dry run on an image in use: exit %d, %r" % (rc, err[-200:]))
        for argv in (["-U", img], ["--force-share", "--output=json", img],
                     ["--image-opts", "driver=qcow2,file.filename=%s,file.locking=off" % img],
                     ["--image-opts", "driver=qcow2,file.filename=%s,force-share=on" % img]):
            what = "qcheck %s (read-write holder)" % " ".join(argv)
            rc, out, err = same_as_qemu(t, argv, what)
            expect(rc == 3, "%s: exit %d, wanted 3" % (what, rc))
            if "--output=json" in argv:
                res = t.collect(out, False) or {}
                ids = [p.get("id") for p in res.get("problems", [])]
                expect("imageInUse" in ids and res.get("warnings", 0) >= 1,
                       "%s: no imageInUse warning in the JSON: %s" % (what, ids))
                expect(not err.strip(), "%s: stderr in JSON mode: %r" % (what, err))
            else:
                expect(re.search(r"^warning: imageInUse \(803\) .*inconsistent", err, re.M),
                       "%s: no imageInUse warning on stderr: %r" % (what, err[-300:]))
    with holder(t.work, img, "-r", "-f", "qcow2"):
        for argv in ([img], ["--output=json", img], ["-U", img], ["-r", "leaks", img]):
            what = "qcheck %s (read-only holder)" % " ".join(argv)
            rc, out, err = same_as_qemu(t, argv, what)
            expect("imageInUse" not in out + err, "%s: imageInUse with a read-only holder" % what)
    with holder(t.work, "r.raw", "-f", "raw"):
        for argv in (["r.raw"], ["-r", "all", "r.raw"], ["-f", "raw", "r.raw"],
                     ["-f", "qcow2", "r.raw"], ["-U", "-f", "qcow2", "r.raw"]):
            same_as_qemu(t, argv, "qcheck %s (raw holder)" % " ".join(argv))
    expect(q.file_sha256(os.path.join(t.work, img)) == fp, "the locked image changed")
    check_no_writes(t, img)


@contextlib.contextmanager
def ofd_locks(path, locks):
    """OFD locks as QEMU's file-posix takes them, without QEMU: (type, byte)."""
    F_OFD_SETLK = 37
    fd = os.open(path, os.O_RDWR)
    try:
        for kind, byte in locks:
            # struct flock: short l_type, l_whence; off_t l_start, l_len; pid_t l_pid
            fcntl.fcntl(fd, F_OFD_SETLK, struct.pack("hhqqi4x", kind, os.SEEK_SET, byte, 1, 0))
        yield
    finally:
        os.close(fd)


def check_ofd_locks(t):
    """Locks no qemu-io takes on its own: a process refusing to share
    consistent read (byte 200: even -U is refused), one holding resize
    only (byte 103), and a write lock where QEMU takes read locks (QEMU
    cannot take its own: "Failed to lock byte 100")."""
    img = "leak.qcow2"
    path = os.path.join(t.work, img)
    for locks, argvs in (
            ([(fcntl.F_RDLCK, 200)], ([img], ["-U", img], ["-r", "all", img], ["r.raw"])),
            ([(fcntl.F_RDLCK, 103)], ([img], ["-U", img], ["-r", "leaks", img])),
            ([(fcntl.F_WRLCK, 100)], ([img], ["-U", img], ["-r", "all", img]))):
        for argv in argvs:
            target = os.path.join(t.work, argv[-1])
            with ofd_locks(target, locks):
                same_as_qemu(t, argv, "qcheck %s (OFD locks %s)" % (" ".join(argv), locks))


def check_no_writes(t, img):
    if not shutil.which("strace"):
        print("note: no strace: the no-write check is skipped")
        return
    log = os.path.join(t.work, "check.strace")
    run(["strace", "-f", "-qq", "-o", log, "-e",
         "trace=open,openat,openat2,fcntl,write,pwrite64,pwritev,pwritev2,ftruncate,fallocate",
         t.qcheck, img], t.work)
    fds, calls = set(), []
    with open(log) as f:
        for line in f:
            m = re.search(r'open(?:at2?)?\(.*"([^"]*)", ([A-Z_|]+).*\) = (\d+)', line)
            if m and os.path.basename(m.group(1)) == img:
                expect("O_RDONLY" in m.group(2) and "O_RDWR" not in m.group(2),
                       "the check opened the image with %s" % m.group(2))
                fds.add(m.group(3))
                continue
            m = re.search(r"(\w+)\((\d+),(.*)", line)
            if m and m.group(2) in fds:
                calls.append((m.group(1), m.group(3)))
    expect(fds, "strace did not see the image opened")
    writes = [c for c in calls if c[0] != "fcntl"]
    expect(not writes, "the check wrote to the image: %s" % writes[:3])
    locks = [c[1] for c in calls if "F_OFD_SETLK" in c[1]]
    expect(locks and all("F_RDLCK" in c or "F_UNLCK" in c for c in locks),
           "the check's locks are not QEMU's read locks: %s" % locks[:5])


# ---- 3. repair output --------------------------------------------------------

def check_repairs(t):
    for img in ("corrupt_bit", "dirty_bit", "autoclear_bit", "leak", "both"):
        for mode in ("leaks", "all"):
            for output in ("human", "json"):
                what = "qcheck -r %s --output=%s on %s" % (mode, output, img)
                paths = []
                for tool in ("qemu", "qcheck"):
                    path = os.path.join(t.work, "%s.%s.qcow2" % (img, tool))
                    shutil.copyfile(os.path.join(t.work, img + ".qcow2"), path)
                    paths.append(os.path.basename(path))
                argv = ["-r", mode, "--output=" + output]
                qrc, qout, qerr = t.qemu(argv + [paths[0]])
                rc, out, err = t.qc(argv + [paths[1]])
                out = out.replace(paths[1], paths[0])
                if img == "both" and mode == "leaks":
                    # a deliberate difference (docs/qemu-img-differences.md
                    # §5.2): qemu-img fails with "need to rebuild", qcheck
                    # lowers the leak and reports the corruption left
                    expect(qrc == 1 and rc == 2, "%s: exit %d (qemu-img %d), expected 2 (1)"
                           % (what, rc, qrc))
                    continue
                expect(rc == qrc, "%s: exit %d, qemu-img %d" % (what, rc, qrc))
                if output == "human":
                    expect((BANNER in out) == (BANNER in qout),
                           "%s: banner %s, qemu-img's %s" % (what, BANNER in out, BANNER in qout))
                    if img == "both":  # the rebuilt refcounts end elsewhere
                        qout, out = (re.sub(r"Image end offset: \d+", "", s) for s in (qout, out))
                    expect(out == qout, "%s: stdout differs:\n%s\nqemu-img:\n%s" % (what, out, qout))
                else:
                    qm, qc = t.collect(qout, True), t.collect(out, False)
                    if not expect(isinstance(qm, dict) and isinstance(qc, dict),
                                  "%s: JSON missing" % what):
                        continue
                    for key in ("leaks-fixed", "corruptions-fixed", "corruptions", "leaks",
                                "check-errors"):
                        expect(qm.get(key) == qc.get(key), "%s: %s %s, qemu-img %s"
                               % (what, key, qc.get(key), qm.get(key)))


# ---- 4. key order -------------------------------------------------------------

def check_key_order(t):
    for name in ("clean", "leak", "both", "check_errors", "incompat_bit"):
        for tool in ("qemu", "qcheck"):
            args = ["--output=json", name + ".qcow2"]
            _, out, _ = t.qemu(args) if tool == "qemu" else t.qc(args)
            t.collect(out, tool == "qemu")
    # qemu-img's own order, and its derivation
    buckets = [tdb_hash(k) % 512 for k in KEY_ORDER]
    expect(buckets == sorted(set(buckets)), "KEY_ORDER is not the bucket order: %s" % buckets)
    seen = set()
    for obj in t.qemu_json:
        keys = list(obj)
        seen.update(keys)
        expect(is_subsequence(keys, KEY_ORDER) and set(keys) <= set(KEY_ORDER),
               "qemu-img's keys %s do not follow KEY_ORDER" % keys)
    expect(seen == set(KEY_ORDER), "keys never observed from qemu-img: %s"
           % sorted(set(KEY_ORDER) - seen))
    for obj in t.qcheck_json:
        keys = list(obj)
        if "rolled-back" in keys:
            continue
        image_keys = [k for k in keys if k in KEY_ORDER]
        own = [k for k in keys if k not in KEY_ORDER]
        expect(keys == image_keys + own, "qcheck's own keys mixed with qemu-img's: %s" % keys)
        expect(is_subsequence(image_keys, KEY_ORDER), "qcheck's keys out of order: %s" % keys)
        expect(set(own) <= set(OWN_KEYS) and is_subsequence(own, OWN_KEYS),
               "qcheck's own keys: %s" % own)
    # Same image, both tools: the same ImageCheck keys in the same order.
    for name in ("clean", "leak", "both", "check_errors"):
        args = ["--output=json", name + ".qcow2"]
        qkeys = list(json.loads(t.qemu(args)[1]))
        ckeys = [k for k in json.loads(t.qc(args)[1]) if k in KEY_ORDER]
        expect(qkeys == ckeys, "%s: ImageCheck keys %s, qemu-img %s" % (name, ckeys, qkeys))


# ---- 5. callers ---------------------------------------------------------------

def check_callers(t):
    # oVirt vdsm: check --output json [-f FMT]; 0 and 3 are success and
    # image-end-offset is required.
    for img, want in (("clean.qcow2", 0), ("leak.qcow2", 3)):
        rc, out, _ = t.qc(["--output", "json", "-f", "qcow2", img])
        res = json.loads(out) if rc in (0, 3) else {}
        expect(rc == want and isinstance(res.get("image-end-offset"), int)
               and res["image-end-offset"] > 0,
               "vdsm: %s: exit %d, image-end-offset %r" % (img, rc, res.get("image-end-offset")))
        if rc == 3:
            expect(res.get("leaks") == 1, "vdsm logs the leaks: %r" % res.get("leaks"))
    # CloudStack: leaks absent means 0; a failure must not parse as a result.
    rc, out, _ = t.qc(["--output=json", "clean.qcow2"])
    expect(rc == 0 and "leaks" not in json.loads(out), "CloudStack: clean image has a leaks key")
    with holder(t.work, "clean.qcow2", "-f", "qcow2"):
        rc, out, _ = t.qc(["--output=json", "clean.qcow2"])
        expect(rc == 1 and out == "", "CloudStack: image in use: exit %d, stdout %r" % (rc, out[:100]))
    # OpenVZ ploop: -q -r leaks --image-opts ... file.locking=off, 0 or 3.
    shutil.copyfile(os.path.join(t.work, "leak.qcow2"), os.path.join(t.work, "ploop.qcow2"))
    rc, out, err = t.qc(["-q", "-r", "leaks", "--image-opts",
                         "driver=qcow2,file.driver=file,file.filename=ploop.qcow2,file.locking=off"])
    expect(rc in (0, 3) and out == "", "ploop: exit %d, stdout %r, %r" % (rc, out, err[-200:]))
    # SlapOS: check -U; 0 or 3 OK; its own test greps the sentence for a
    # file that is not an image, "qemu-img: ..." through a qemu-img name.
    rc, out, err = t.qc(["-U", "clean.qcow2"])
    expect(rc == 0, "SlapOS: check -U of a clean image exits %d" % rc)
    rc, out, err = t.qc(["-U", "r.raw"])
    expect(rc == 63 and NO_CHECKS in out + err, "SlapOS: %d %r" % (rc, err))
    link_dir = os.path.join(t.work, "bin")
    os.makedirs(link_dir, exist_ok=True)
    link = os.path.join(link_dir, "qemu-img")
    if not os.path.lexists(link):
        os.symlink(os.path.abspath(t.qcheck), link)
    rc, out, err = t.qc(["-U", "r.raw"], exe=link)
    expect(rc == 63 and "qemu-img: " + NO_CHECKS in out + err,
           "SlapOS through a qemu-img link: %d %r" % (rc, err))
    # ZStack: --force-share --out json (an abbreviation getopt accepts);
    # any non-zero exit raises, then four keys are read.
    rc, out, err = t.qc(["--force-share", "--out", "json", "clean.qcow2"])
    res = json.loads(out) if rc == 0 else {}
    expect(all(k in res for k in ("image-end-offset", "total-clusters", "check-errors",
                                  "allocated-clusters")), "ZStack: %d %r" % (rc, list(res)))
    # xcp-ng sm: check -f qcow2 -r all; 1, 2, 3, 63 are told apart.
    for img, want in (("r.raw", 1), ("img.qcow", 1), ("missing", 1)):
        rc, _, _ = t.qc(["-f", "qcow2", "-r", "all", img])
        qrc, _, _ = t.qemu(["-f", "qcow2", "-r", "all", img])
        expect(rc == qrc == want, "xcp-ng: -f qcow2 -r all %s: exit %d, qemu-img %d" % (img, rc, qrc))
    # GNS3: exit 3 -> -r leaks, exit 2 -> -r all, then clean.
    shutil.copyfile(os.path.join(t.work, "both.qcow2"), os.path.join(t.work, "gns3.qcow2"))
    rc, _, _ = t.qc(["gns3.qcow2"])
    expect(rc == 2, "GNS3: corrupt image exits %d" % rc)
    rc, _, _ = t.qc(["-r", "all", "gns3.qcow2"])
    expect(rc == 0, "GNS3: -r all exits %d" % rc)


def main():
    qcheck, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    for tool in (QEMU_IMG, QEMU_IO):
        if not shutil.which(tool):
            sys.exit("%s is needed" % tool)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    os.chmod(work, 0o755)
    make_images(work)
    t = Tools(qcheck, work)
    for part in (check_sentences, check_unreadable, check_locks, check_ofd_locks, check_repairs,
                 check_key_order, check_callers):
        before = len(FAILURES)
        part(t)
        print("%s %s" % ("PASS" if len(FAILURES) == before else "FAIL", part.__name__))
    for f in FAILURES:
        print("FAIL " + f)
    print("%d situations of sentences, %d qemu-img JSON objects, %d qcheck JSON objects compared; "
          "%d failures" % (len(SENTENCES) * len(MODES), len(t.qemu_json), len(t.qcheck_json),
                           len(FAILURES)))
    sys.exit(1 if FAILURES else 0)


if __name__ == "__main__":
    main()
