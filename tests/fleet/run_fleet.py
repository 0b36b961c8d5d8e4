#!/usr/bin/env python3
"""Batch mode (issue 14, "fleet use"), black box, against the contract of
the coordinator's batch-spec (several FILEs, --files-from, -j, --timeout,
JSON Lines, --metrics, progress, -r per image).

    run_fleet.py QCHECK WORKDIR [--filter SUBSTR] [--keep]

One folder of WORKDIR, batch/, holds a fleet built with qemu-img, qemu-io
and layout/qcow2lib.py patches: good (data, clean), leaky (3 leaked
clusters), corrupt (refcount 0 on a cluster in use), pasteof (an L2 entry
16 clusters past the end of the file), locked (held open for writing by a
live `qemu-io` process reading commands from a pipe: QEMU's OFD locks stay
on the file until its standard input closes), missing (no such file), adir
(a directory), dangling (a symbolic link to nothing), huge (4 TiB virtual,
data at 3 TiB), tail (a good image with a 2 TiB sparse tail), raw, text and
qed files, names with a space, a quote and a backslash, a newline; and a
FIFO, which hangs whoever opens it: the --timeout image. Tests, each
printing PASS or FAIL with every failed assertion:

* verdicts: per image the verdict word, counts and exit-code of the JSON
  Lines object; the counts equal `qcheck --output=json FILE` run alone
  (leaks, corruptions, check-errors); the exit-code is qemu-img check's
  exit status for the same file, except where the contract maps it (in-use:
  0, where qemu-img says 1);
  the counts equal `qemu-img check --output=json`'s for the images qcheck
  and qemu-img count alike (all but the two corrupt ones: there the COPIED
  and refcount interplay of docs/qemu-img-differences.md makes the
  corruption totals differ by design; both must be non-zero); the batch
  exit status is the worst by the contract's order 2 > 1 > 3 > 63 > 0.
* jsonl: every line parses; an image with a single-image JSON object has
  exactly its keys plus "verdict" and "seconds", and the same values; one
  without has exactly filename, verdict, error, seconds, exit-code; the
  last line is the summary, its verdict counts and sums equal the images'.
* human: one line per image in the given order (verdict, counts, seconds,
  name), under it exactly the lines `qcheck -q FILE` prints (indented by 4)
  and nothing under an image without findings, the summary table's header
  and figures, and `Exit status N:` with N the exit status.
* exit_order: sub-batches, each for one step of the order (all good 0;
  +leaks 3; +unsupported stays 3; good+unsupported 63; +failed 1;
  +corrupt 2; in-use does not raise it; timeout counts as failed).
* timeout: FIFOs with --timeout=1.5 (decimal) at -j1 and -j2: the FIFO is
  `timeout` (exit-code 1), every other image still gets its verdict, the
  output keeps the given order, the run ends in bounded time.
* worker_dies: the worker hung on a FIFO is killed (SIGKILL) from outside:
  that image alone is `failed` ("signal 9"), the worker is replaced, the
  images after it are checked.
* files_from: --files-from=- (newlines, an empty line ignored), a list in a
  file, --null and -0 (names with a space and a newline), the list after
  FILE arguments, one name in a list is batch mode, a missing list fails.
* jobs: -j 1 and -j 2 give the same output but for the seconds (human and
  JSON).
* max_mem: --max-mem applies per image (a limit too small: every qcow2
  image `failed` with the counts qcheck gives alone, the others unchanged).
* force_share: with -U the locked image is checked (not in-use).
* repair: -r leaks -n and -r all -n write nothing; -r leaks --undo=DIR:
  leaky is `repaired` (qemu-img check then exits 0), its JSON object equals
  `qcheck -r leaks --output=json` on an identical copy, DIR/NAME.undo is
  made for it and for no image that was not repaired, `--rollback` restores
  it byte for byte; the locked image is `in-use` and unchanged; the corrupt
  one is not made worse; -r with the locked image alone in a list exits 0;
  two images of one NAME with --undo or --salvage: exit 1, nothing
  written.
* never_writes: every file of batch/ hashed before and after every
  check-only batch run of the other tests (sparse files hashed by their
  data extents).
* metrics: --metrics=FILE parsed back with prometheus_client's parser
  (gauges with HELP; every image has every series; the values equal the
  JSON Lines ones; the verdict series one-hot; the run series equal the
  summary; timestamps within the run; label values with a quote, a
  backslash and a space come back exact); written atomically (nothing else
  left in the folder, a new inode each run, the old content replaced, not
  appended to); with one FILE too (stdout unchanged); then node_exporter's
  textfile collector on that folder: node_textfile_scrape_error 0 and the
  qcheck series served; the file's mode is 0644 under umask 022 (readable
  by node_exporter's own user, as a normally created file is).
* progress: stderr on a pseudo-terminal: `[k/N] NN.N% NAME` frames, k never
  decreasing and at most N; stdout unchanged; stdout and stderr on one
  terminal: the screen (a small terminal emulator replays the bytes) shows
  exactly the lines of a run without a terminal and no frame left over;
  none with -q, --output=json, or stderr on a pipe; frames with -p on a
  pipe.
* single: one FILE is qemu-img compatible as before (stdout equal to
  qemu-img check's on the images both count alike, same exit status, JSON
  keys and values of qemu-img's), and --chain, --data-file, --rollback,
  --image-opts with several files are usage errors (exit 1, nothing on
  stdout).

Needs qemu-img and qemu-io (always), python3-prometheus-client (the Debian
package, found in /usr/lib/python3/dist-packages when this Python does not
have it) and prometheus-node-exporter for the metrics test; a missing
node_exporter skips only that part (a note), never a failed assertion.
Prints PASS/FAIL per test and a summary; exit status 0 only if nothing
failed.
"""

import ctypes
import json
import os
import re
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
sys.path.insert(0, os.path.join(HERE, "..", "digest"))
import qcow2lib as q  # noqa: E402
from qedlib import file_sha256 as file_digest  # noqa: E402  (sparse-aware: holes not read)
from run_digest import (SetupError, Test, create, l2_past_eof, leak_cluster, qemu_io,  # noqa: E402
                        refcount_zero, run, sanitizer_report, script_main)

QEMU_IMG, QEMU_IO = "qemu-img", "qemu-io"
TIMEOUT = 120  # any one qcheck run; a hang of the batch itself is a failure, not a stuck test
KiB, MiB, GiB, TiB = 1 << 10, 1 << 20, 1 << 30, 1 << 40
VERDICTS = ["clean", "repaired", "leaks", "corrupt", "failed", "timeout", "in-use", "unsupported"]
VERDICT_EXIT = {"clean": 0, "repaired": 0, "leaks": 3, "corrupt": 2, "failed": 1, "timeout": 1,
                "in-use": 0, "unsupported": 63}
EXIT_RANK = {2: 4, 1: 3, 3: 2, 63: 1, 0: 0}  # the batch's exit status: the highest rank
SUMMARY_COLUMNS = ["images", "clean", "repaired", "leaks", "corrupt", "failed", "timeout",
                   "in-use", "unsupported", "seconds"]
COUNT_KEYS = ("leaks", "corruptions", "check-errors")
ERROR_OBJECT_KEYS = {"filename", "verdict", "error", "seconds", "exit-code"}
# A count is "-" where the check reached no figures (in use, timed out, not
# opened, not qcow2): the JSON line then has no counts either.
LINE_RE = re.compile(r"^(?P<verdict>[a-z-]+) +(?P<leaks>\d+|-) leaks +(?P<corruptions>\d+|-) "
                     r"corruptions +(?P<errors>\d+|-) errors +(?P<seconds>\d+(?:\.\d+)?) s  "
                     r"(?P<name>.+)$")
FRAME_RE = re.compile(r"\[(\d+)/(\d+)\] +(\d+(?:\.\d)?)% (.*)")
CSI_RE = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
WEIRD = 'we"ird\\name.qcow2'  # a quote and a backslash: escaped in the metrics labels
NEWLINE_NAME = "new\nline.qcow2"

# What each image of batch/ must be, in check mode without -U: verdict, and
# how qemu-img's counts relate: "all" (leaks, corruptions, check-errors
# equal), "corrupt" (check-errors equal, corruptions non-zero in both: the
# totals differ by design), None (qemu-img cannot count it: it exits 1 or 63).
# qemu: qemu-img check's exit status where it is not the verdict's.
FLEET = [
    # name, verdict, qemu relation, qemu-img exit where it differs
    ("good.qcow2", "clean", "all", None),
    ("leaky.qcow2", "leaks", "all", None),
    ("corrupt.qcow2", "corrupt", "corrupt", None),
    ("pasteof.qcow2", "corrupt", "corrupt", None),
    ("locked.qcow2", "in-use", None, 1),
    ("missing.qcow2", "failed", None, None),
    ("adir.qcow2", "failed", None, None),
    ("dangling.qcow2", "failed", None, None),
    ("huge.qcow2", "clean", "all", None),
    ("tail.qcow2", "clean", "all", None),
    ("disk.raw", "unsupported", None, None),
    ("notes.txt", "unsupported", None, None),
    ("old.qed", "clean", "all", None),
    ("with space.qcow2", "clean", "all", None),
    (WEIRD, "leaks", "all", None),
]
VERDICT_OF = {name: v for name, v, _, _ in FLEET}
VERDICT_OF[NEWLINE_NAME] = "leaks"
VERDICT_OF["hang.fifo"] = VERDICT_OF["hang2.fifo"] = "timeout"
NAMES = [name for name, _, _, _ in FLEET]
QCOW2_CHECKED = [n for n, v, _, _ in FLEET if v in ("clean", "leaks", "corrupt")]

# (test, assertion tag) -> known bug; none known.
EXPECTED_FAILURES = {}

_CHILDREN = []  # processes to kill whatever happens (the lock holder, node_exporter)


def _die_with_parent():
    """In the child before exec: SIGKILL when this script dies (even by SIGKILL)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def kill_children():
    while _CHILDREN:
        p = _CHILDREN.pop()
        if p.poll() is None:
            p.kill()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            pass


# ---- files ------------------------------------------------------------------------

def tree_state(root):
    """Every regular file under root (not through links) -> digest."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for f in files:
            p = os.path.join(dirpath, f)
            st = os.lstat(p)
            if stat.S_ISREG(st.st_mode):
                out[os.path.relpath(p, root)] = file_digest(p)
    return out


def copy(src, dst):
    shutil.copyfile(src, dst)
    return dst


# ---- the lock holder and node_exporter ---------------------------------------------

class LockHolder:
    """`qemu-io -f qcow2 IMAGE` reading commands from a pipe: it opens the
    image read-write and holds QEMU's locks until its stdin closes (this
    script's end, whatever the cause, closes it too) or it is killed.
    Ready once `qemu-img check` is refused for the lock."""

    def __init__(self, path):
        self.path = path
        # The probe's own open can win the race against a qemu-io still
        # starting (a loaded machine): qemu-io then fails to get the write
        # lock and exits. Probe only once it has the image open, and start
        # it again if it lost anyway.
        deadline = time.monotonic() + 30
        while True:
            self.proc = subprocess.Popen([QEMU_IO, "-f", "qcow2", path], stdin=subprocess.PIPE,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
            _CHILDREN.append(self.proc)
            while self.proc.poll() is None and not self._has_open() and \
                    time.monotonic() < deadline:
                time.sleep(0.02)
            while self.proc.poll() is None:
                r = subprocess.run([QEMU_IMG, "check", path], capture_output=True, text=True,
                                   timeout=TIMEOUT)
                if 'Failed to get shared "write" lock' in r.stderr:
                    return
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            self.stop()
            if time.monotonic() > deadline:
                raise SetupError("qemu-io did not come to hold the lock on %s" % path)

    def _has_open(self):
        """Whether qemu-io has the image open (its descriptors, from /proc)."""
        fd_dir = "/proc/%d/fd" % self.proc.pid
        try:
            return any(os.path.realpath(os.path.join(fd_dir, fd)) == os.path.realpath(self.path)
                       for fd in os.listdir(fd_dir))
        except OSError:
            return False

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        if self.proc in _CHILDREN:
            _CHILDREN.remove(self.proc)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_prometheus_parser():
    try:
        from prometheus_client.parser import text_string_to_metric_families
    except ImportError:
        # The Debian package (python3-prometheus-client) is pure Python, in
        # the system's dist-packages, which a pyenv or venv Python does not see.
        sys.path.append("/usr/lib/python3/dist-packages")
        try:
            from prometheus_client.parser import text_string_to_metric_families
        except ImportError:
            return None
    return text_string_to_metric_families


# ---- output parsing ----------------------------------------------------------------

class ParseError(Exception):
    pass


def parse_jsonl(out):
    """(image objects, summary) of JSON Lines output; ParseError says why not."""
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    objs = []
    for i, line in enumerate(lines):
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise ParseError("line %d is not JSON (%s): %r" % (i + 1, e, line[:200]))
        if not isinstance(obj, dict):
            raise ParseError("line %d is not an object: %r" % (i + 1, line[:200]))
        objs.append(obj)
    if not objs or set(objs[-1]) != {"summary"}:
        raise ParseError("the last line is not {\"summary\": ...}: %r" % (lines[-1:] or [""])[0][:200])
    return objs[:-1], objs[-1]["summary"]


def parse_human(out):
    """[(match dict, [finding lines without the indent])], summary dict,
    exit line's N. ParseError says where it does not follow the contract."""
    lines = out.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    images, i = [], 0
    while i < len(lines) and lines[i] != "":
        m = LINE_RE.match(lines[i])
        if m:
            images.append((m.groupdict(), []))
        elif lines[i].startswith("    ") and images:
            images[-1][1].append(lines[i][4:])
        else:
            raise ParseError("line %d is neither an image line nor an indented finding: %r"
                             % (i + 1, lines[i][:200]))
        i += 1
    rest = lines[i + 1:] if i < len(lines) else []
    if len(rest) != 3:
        raise ParseError("after the images: a blank line, then 3 lines (header, figures, exit "
                         "status) expected, got %r" % rest[:6])
    if rest[0].split() != SUMMARY_COLUMNS:
        raise ParseError("summary header %r, the contract says %s" % (rest[0], SUMMARY_COLUMNS))
    figures = rest[1].split()
    if len(figures) != len(SUMMARY_COLUMNS):
        raise ParseError("summary figures %r" % rest[1])
    try:
        summary = {k: (float(v) if k == "seconds" else int(v))
                   for k, v in zip(SUMMARY_COLUMNS, figures)}
    except ValueError:
        raise ParseError("summary figures not numbers: %r" % rest[1])
    # right-aligned: each figure ends where its column's name ends
    ends_h = [m.end() for m in re.finditer(r"\S+", rest[0])]
    ends_f = [m.end() for m in re.finditer(r"\S+", rest[1])]
    if ends_h != ends_f:
        raise ParseError("summary figures not right-aligned under their columns:\n%s\n%s"
                         % (rest[0], rest[1]))
    m = re.match(r"^Exit status (\d+): \S", rest[2])
    if not m:
        raise ParseError("last line %r is not `Exit status N: <why>`" % rest[2])
    return images, summary, int(m.group(1))


def normalize_seconds(text):
    """Output with every decimal figure (seconds) and run of spaces made
    equal, for comparing runs that differ only in their timing."""
    text = re.sub(r"\d+\.\d+", "S", text)
    return re.sub(r" +", " ", text)


def drop_seconds(obj):
    if isinstance(obj, dict):
        return {k: drop_seconds(v) for k, v in obj.items() if k != "seconds"}
    if isinstance(obj, list):
        return [drop_seconds(v) for v in obj]
    return obj


def screen(data):
    """The lines a terminal shows after `data` (no wrapping): \\r to column
    0, \\n a new line, ESC[K / ESC[0K erase to the end, ESC[2K the line,
    backspace; other escapes ignored."""
    lines, cur, col = [], [], 0
    i = 0
    while i < len(data):
        c = data[i]
        if c == "\x1b":
            m = CSI_RE.match(data, i)
            if m:
                seq = m.group(0)
                if seq in ("\x1b[K", "\x1b[0K"):
                    del cur[col:]
                elif seq == "\x1b[2K":
                    cur = [" "] * col
                i = m.end()
                continue
        if c == "\r":
            col = 0
        elif c == "\n":
            lines.append("".join(cur).rstrip())
            cur, col = [], 0
        elif c == "\b":
            col = max(0, col - 1)
        else:
            if col < len(cur):
                cur[col] = c
            else:
                cur.extend(" " * (col - len(cur)))
                cur.append(c)
            col += 1
        i += 1
    if cur:
        lines.append("".join(cur).rstrip())
    return lines


# ---- the test runner ---------------------------------------------------------------



class Runner:
    def __init__(self, qcheck, workdir):
        self.qcheck = os.path.abspath(qcheck)
        self.workdir = os.path.abspath(workdir)
        self.batch = os.path.join(self.workdir, "batch")
        self.single_cache = {}
        self.holder = None
        self.state = None

    # -- running qcheck ------------------------------------------------------
    def qc(self, t, args, cwd=None, stdin=None, timeout=TIMEOUT):
        """(status, stdout, stderr) of qcheck; a hang or a sanitizer report
        is a failure of `t`. stdin: bytes or None."""
        cwd = cwd or self.batch
        try:
            res = subprocess.run([self.qcheck] + args, capture_output=True, cwd=cwd,
                                 input=stdin if stdin is not None else b"", timeout=timeout)
        except subprocess.TimeoutExpired:
            t.expect(False, "qcheck %s: still running after %d s (killed)"
                     % (" ".join(args)[:200], timeout))
            return None, "", ""
        out = res.stdout.decode(errors="replace")
        err = res.stderr.decode(errors="replace")
        t.expect(not sanitizer_report(err), "qcheck %s: sanitizer report: %s"
                 % (" ".join(args)[:200], err[-2000:]))
        return res.returncode, out, err

    def check_only(self, t, args, **kw):
        """A batch run in check mode: it must not change a byte of batch/."""
        res = self.qc(t, args, **kw)
        after = tree_state(self.batch)
        changed = sorted(k for k in set(after) | set(self.state)
                         if after.get(k) != self.state.get(k))
        t.expect(not changed, "check mode changed %s (qcheck %s)" % (changed, " ".join(args)[:200]),
                 "never_writes")
        self.state = after
        return res

    def jsonl(self, t, args, **kw):
        """(status, images, summary) of a check-only --output=json batch;
        images None if the output does not parse (a failure)."""
        rc, out, err = self.check_only(t, ["--output=json"] + args, **kw)
        try:
            images, summary = parse_jsonl(out)
        except ParseError as e:
            t.expect(False, "qcheck --output=json %s: exit %s, %s; stderr: %s"
                     % (" ".join(args)[:200], rc, e, err.strip()[:300]))
            return rc, None, None
        return rc, images, summary

    def single_json(self, name, args=(), cwd=None, again=False):
        """`qcheck [args] --output=json NAME` alone: (status, object or None);
        the answer of an earlier call unless `again`."""
        key = (name, tuple(args), cwd)
        if again or key not in self.single_cache:
            res = subprocess.run([self.qcheck, *args, "--output=json", name], capture_output=True,
                                 text=True, cwd=cwd or self.batch, timeout=TIMEOUT)
            try:
                obj = json.loads(res.stdout) if res.stdout.strip() else None
            except ValueError:
                obj = None
            self.single_cache[key] = (res.returncode, obj)
        return self.single_cache[key]

    def single_quiet(self, name):
        """Lines `qcheck -q NAME` prints (stderr, then stdout)."""
        res = subprocess.run([self.qcheck, "-q", name], capture_output=True, text=True,
                             cwd=self.batch, timeout=TIMEOUT)
        return [ln for ln in (res.stderr + res.stdout).split("\n") if ln.strip()]

    def qemu_json(self, name):
        res = subprocess.run([QEMU_IMG, "check", "--output=json", name], capture_output=True,
                             text=True, cwd=self.batch, timeout=TIMEOUT)
        try:
            obj = json.loads(res.stdout) if res.stdout.strip() else None
        except ValueError:
            obj = None
        return res.returncode, obj

    # -- building the fleet --------------------------------------------------
    def build_qcow2(self, path, size=64 * MiB, writes=("write -P 0x5a 0 256k",
                                                       "write -P 0x33 10M 64k")):
        create(path, size)
        if writes:
            qemu_io(path, *writes)
        return path

    def patched(self, path, fn):
        with q.Image(path, writable=True) as im:
            fn(im)
        return path

    def build(self):
        shutil.rmtree(self.workdir, ignore_errors=True)
        b = self.batch
        os.makedirs(b)
        j = lambda n: os.path.join(b, n)  # noqa: E731
        good = self.build_qcow2(j("good.qcow2"))
        self.patched(self.build_qcow2(j("leaky.qcow2")),
                     lambda im: im.append_clusters(count=3))
        self.patched(self.build_qcow2(j("corrupt.qcow2")), refcount_zero)
        self.patched(self.build_qcow2(j("pasteof.qcow2")), l2_past_eof)
        self.build_qcow2(j("locked.qcow2"))
        os.mkdir(j("adir.qcow2"))
        os.symlink("nowhere/gone.qcow2", j("dangling.qcow2"))
        self.build_qcow2(j("huge.qcow2"), size=4 * TiB,
                         writes=("write -P 0x21 %d 64k" % (3 * TiB), "write -P 0x22 0 64k"))
        copy(good, j("tail.qcow2"))
        os.truncate(j("tail.qcow2"), 2 * TiB)
        with open(j("disk.raw"), "wb") as f:
            f.truncate(MiB)
            f.write(b"\xeb\x63\x90" + bytes(509))
        with open(j("notes.txt"), "w") as f:
            f.write("not an image: the inventory of rack 7\n" * 20)
        run([QEMU_IMG, "create", "-q", "-f", "qed", j("old.qed"), str(64 * MiB)])
        copy(good, j("with space.qcow2"))
        copy(j("leaky.qcow2"), j(WEIRD))
        copy(j("leaky.qcow2"), j(NEWLINE_NAME))
        for fifo in ("hang.fifo", "hang2.fifo"):
            os.mkfifo(j(fifo))
        # the fleet is as FLEET says, by qemu-img, before qcheck sees it
        for name, verdict, rel, _ in FLEET:
            if rel:
                rc, _ = self.qemu_json(name)
                if rc != VERDICT_EXIT[verdict]:
                    raise SetupError("qemu-img check %s: exit %d, the fleet needs %d"
                                     % (name, rc, VERDICT_EXIT[verdict]))
        self.holder = LockHolder(j("locked.qcow2"))
        self.state = tree_state(b)

    # -- per-image assertions ------------------------------------------------
    def check_object(self, t, obj, name, verdict):
        """One JSON Lines image object against the contract and against
        qcheck and qemu-img run alone on that file."""
        t.expect(obj.get("filename") == name, "object for %r has filename %r"
                 % (name, obj.get("filename")))
        t.expect(obj.get("verdict") == verdict, "%s: verdict %r, expected %r"
                 % (name, obj.get("verdict"), verdict))
        t.expect(obj.get("exit-code") == VERDICT_EXIT[verdict], "%s: exit-code %r, verdict %s "
                 "means %d" % (name, obj.get("exit-code"), verdict, VERDICT_EXIT[verdict]))
        t.expect(isinstance(obj.get("seconds"), (int, float)) and obj.get("seconds") >= 0,
                 "%s: seconds %r is not a number >= 0" % (name, obj.get("seconds")))
        if verdict in ("timeout", "in-use"):
            t.expect(set(obj) == ERROR_OBJECT_KEYS, "%s (%s): keys %s, the contract says %s"
                     % (name, verdict, sorted(obj), sorted(ERROR_OBJECT_KEYS)))
            return
        _, alone = self.single_json(name)
        if alone is None:
            t.expect(set(obj) == ERROR_OBJECT_KEYS, "%s: qcheck alone prints no JSON object, so "
                     "the batch's must have exactly %s; it has %s"
                     % (name, sorted(ERROR_OBJECT_KEYS), sorted(obj)))
            t.expect(isinstance(obj.get("error"), str) and obj.get("error"),
                     "%s: no error text: %r" % (name, obj.get("error")))
        else:
            want = set(alone) | {"verdict", "seconds"}
            t.expect(set(obj) == want, "%s: keys differ from `qcheck --output=json %s` alone "
                     "plus verdict, seconds: extra %s, missing %s" % (
                         name, name, sorted(set(obj) - want), sorted(want - set(obj))))
            diff = sorted(k for k in alone if obj.get(k) != alone[k])
            t.expect(not diff, "%s: values differ from qcheck alone in %s" % (name, diff))

    def check_against_qemu(self, t, obj, name, verdict, rel, qemu_exit):
        rc, qm = self.qemu_json(name)
        want_rc = VERDICT_EXIT[verdict] if qemu_exit is None else qemu_exit
        t.expect(rc == want_rc, "%s: qemu-img check exits %d, expected %d" % (name, rc, want_rc))
        if rel is None or qm is None:
            return
        if rel == "all":
            for k in COUNT_KEYS:
                t.expect(obj.get(k, 0) == qm.get(k, 0), "%s: %s %r, qemu-img %r"
                         % (name, k, obj.get(k, 0), qm.get(k, 0)))
        else:
            t.expect(obj.get("check-errors", 0) == qm.get("check-errors", 0),
                     "%s: check-errors %r, qemu-img %r" % (name, obj.get("check-errors", 0),
                                                          qm.get("check-errors", 0)))
            t.expect(obj.get("corruptions", 0) > 0 and qm.get("corruptions", 0) > 0,
                     "%s: corruptions %r, qemu-img %r: both must find some"
                     % (name, obj.get("corruptions", 0), qm.get("corruptions", 0)))

    def check_summary(self, t, images, summary, rc, names):
        want = {"images": len(names)}
        for v in VERDICTS:
            want[v] = 0
        for o in images:
            if o.get("verdict") in VERDICTS:
                want[o["verdict"]] += 1
        want["leaked-clusters"] = sum(o.get("leaks", 0) for o in images)
        want["corruptions"] = sum(o.get("corruptions", 0) for o in images)
        want["check-errors"] = sum(o.get("check-errors", 0) for o in images)
        want["exit-code"] = rc
        for k, v in want.items():
            t.expect(summary.get(k) == v, "summary %s = %r, the images say %r" % (k, summary.get(k), v))
        t.expect(isinstance(summary.get("seconds"), (int, float)), "summary seconds %r"
                 % summary.get("seconds"))
        extra = set(summary) - set(want) - {"seconds"}
        t.expect(not extra, "summary has keys the contract does not list: %s" % sorted(extra))

    def batch_exit(self, verdicts):
        return max((VERDICT_EXIT[v] for v in verdicts if v != "in-use"),
                   key=lambda c: EXIT_RANK[c], default=0)

    # -- the tests -----------------------------------------------------------
    def test_verdicts(self, t):
        rc, images, summary = self.jsonl(t, NAMES)
        want_rc = self.batch_exit(VERDICT_OF[n] for n in NAMES)
        t.expect(rc == want_rc, "batch exit %s, expected %d (worst by 2 > 1 > 3 > 63 > 0)"
                 % (rc, want_rc))
        if images is None:
            return
        t.expect([o.get("filename") for o in images] == NAMES,
                 "objects not one per image in the given order: %s"
                 % [o.get("filename") for o in images])
        by_name = {o.get("filename"): o for o in images}
        for name, verdict, rel, qemu_exit in FLEET:
            obj = by_name.get(name)
            if not t.expect(obj is not None, "no object for %s" % name):
                continue
            if obj.get("verdict") in ("clean", "leaks", "corrupt"):
                for k in COUNT_KEYS:
                    alone = (self.single_json(name)[1] or {}).get(k, 0)
                    t.expect(obj.get(k, 0) == alone, "%s: %s %r, qcheck alone %r"
                             % (name, k, obj.get(k, 0), alone))
            self.check_against_qemu(t, obj, name, verdict, rel, qemu_exit)
        self.check_summary(t, images, summary, rc, NAMES)

    def test_jsonl(self, t):
        rc, images, summary = self.jsonl(t, NAMES)
        if images is None:
            return
        for obj, name in zip(images, NAMES):
            self.check_object(t, obj, name, VERDICT_OF[name])
        t.expect(len(images) == len(NAMES), "%d image objects for %d images"
                 % (len(images), len(NAMES)))
        self.check_summary(t, images, summary, rc, NAMES)

    def test_human(self, t):
        rc, out, err = self.check_only(t, NAMES)
        try:
            images, summary, exit_line = parse_human(out)
        except ParseError as e:
            t.expect(False, "human output: exit %s, %s; stderr: %s" % (rc, e, err.strip()[:300]))
            return
        t.expect([m["name"] for m, _ in images] == NAMES, "image lines not in the given order: "
                 "%s" % [m["name"] for m, _ in images])
        _, objs, _ = self.jsonl(t, NAMES)
        objs = {o.get("filename"): o for o in objs or []}
        for m, findings in images:
            name = m["name"]
            verdict = VERDICT_OF.get(name)
            t.expect(m["verdict"] == verdict, "%s: verdict %r, expected %r"
                     % (name, m["verdict"], verdict))
            o = objs.get(name, {})
            got = tuple(None if m[k] == "-" else int(m[k]) for k in ("leaks", "corruptions", "errors"))
            counted = "check-errors" in o
            want = tuple(o.get(k, 0) if counted else None for k in COUNT_KEYS)
            t.expect(got == want, "%s: counts %s in the human line, %s in the JSON" % (name, got, want))
            if verdict in ("in-use", "timeout"):
                continue
            quiet = self.single_quiet(name)
            t.expect(sorted(findings) == sorted(quiet), "%s: lines under the image %r, `qcheck -q "
                     "%s` prints %r" % (name, findings, name, quiet))
        counts = {c: 0 for c in SUMMARY_COLUMNS}
        counts["images"] = len(NAMES)
        for n in NAMES:
            counts[VERDICT_OF[n]] += 1
        for c in SUMMARY_COLUMNS[:-1]:
            t.expect(summary[c] == counts[c], "summary %s %d, expected %d" % (c, summary[c], counts[c]))
        t.expect(exit_line == rc, "`Exit status %d` but the exit status is %s" % (exit_line, rc))
        t.expect(rc == self.batch_exit(VERDICT_OF[n] for n in NAMES), "exit status %s" % rc)

    def test_exit_order(self, t):
        cases = [
            (["good.qcow2", "huge.qcow2"], 0),
            (["good.qcow2", "leaky.qcow2"], 3),
            (["good.qcow2", "leaky.qcow2", "disk.raw"], 3),
            (["good.qcow2", "disk.raw"], 63),
            (["disk.raw", "notes.txt"], 63),
            (["disk.raw", "old.qed"], 63),
            (["good.qcow2", "missing.qcow2"], 1),
            (["leaky.qcow2", "missing.qcow2", "disk.raw"], 1),
            (["good.qcow2", "adir.qcow2", "corrupt.qcow2"], 2),
            (["corrupt.qcow2", "leaky.qcow2"], 2),
            (["locked.qcow2", "good.qcow2"], 0),
            (["locked.qcow2", "leaky.qcow2"], 3),
            (["locked.qcow2", "disk.raw"], 63),
        ]
        for names, want in cases:
            rc, images, _ = self.jsonl(t, names)
            t.expect(rc == want, "%s: exit %s, expected %d" % (" ".join(names), rc, want))
            if images is not None:
                t.expect([o.get("verdict") for o in images] == [VERDICT_OF[n] for n in names],
                         "%s: verdicts %s" % (names, [o.get("verdict") for o in images]))
        rc, images, _ = self.jsonl(t, ["--timeout=1", "hang.fifo", "leaky.qcow2"], timeout=60)
        t.expect(rc == 1, "hang.fifo leaky.qcow2 --timeout=1: exit %s, expected 1 (timeout > leaks)"
                 % rc)
        rc, images, _ = self.jsonl(t, ["--timeout=1", "hang.fifo", "corrupt.qcow2"], timeout=60)
        t.expect(rc == 2, "hang.fifo corrupt.qcow2 --timeout=1: exit %s, expected 2" % rc)

    def test_timeout(self, t):
        for jobs, names in (("1", ["good.qcow2", "hang.fifo", "leaky.qcow2", "corrupt.qcow2"]),
                            ("2", ["hang.fifo", "hang2.fifo", "good.qcow2", "leaky.qcow2",
                                   "disk.raw"])):
            t0 = time.monotonic()
            rc, images, summary = self.jsonl(t, ["-j", jobs, "--timeout=1.5"] + names, timeout=60)
            took = time.monotonic() - t0
            t.expect(took < 30, "-j%s with FIFOs and --timeout=1.5 took %.1f s" % (jobs, took))
            want_rc = self.batch_exit(VERDICT_OF[n] for n in names)
            t.expect(rc == want_rc, "-j%s %s: exit %s, expected %d" % (jobs, names, rc, want_rc))
            if images is None:
                continue
            t.expect([o.get("filename") for o in images] == names,
                     "-j%s: not in the given order: %s" % (jobs, [o.get("filename") for o in images]))
            for obj, name in zip(images, names):
                self.check_object(t, obj, name, VERDICT_OF[name])
                if VERDICT_OF[name] == "timeout":
                    t.expect(obj.get("seconds", 0) >= 1.4, "%s: timed out after %r s, before "
                             "--timeout=1.5" % (name, obj.get("seconds")))
            self.check_summary(t, images, summary, rc, names)
        rc, out, err = self.check_only(t, ["--timeout=1.5", "hang.fifo", "good.qcow2"], timeout=60)
        try:
            imgs, summary, _ = parse_human(out)
            t.expect([m["verdict"] for m, _ in imgs] == ["timeout", "clean"],
                     "human: verdicts %s" % [m["verdict"] for m, _ in imgs])
            t.expect(summary["timeout"] == 1, "human summary: timeout %r" % summary["timeout"])
        except ParseError as e:
            t.expect(False, "human with a timeout: exit %s, %s" % (rc, e))
        for bad in ("--timeout=-1", "--timeout=soon"):
            rc, out, _ = self.qc(t, [bad, "good.qcow2", "leaky.qcow2"])
            t.expect(rc == 1 and out == "", "%s: exit %s, stdout %r; a usage error is exit 1 with "
                     "nothing checked" % (bad, rc, out[:100]))

    def test_worker_dies(self, t):
        """A worker killed under an image (as a crash would end it) fails
        that image alone: the batch replaces the worker and goes on."""
        names = ["good.qcow2", "hang.fifo", "leaky.qcow2", "corrupt.qcow2"]
        p = subprocess.Popen([self.qcheck, "-j1", "--output=json"] + names, cwd=self.batch,
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        killed = None
        try:
            # The worker hangs opening the FIFO: it is qcheck's one child.
            deadline = time.monotonic() + 20
            while killed is None and time.monotonic() < deadline:
                try:
                    with open("/proc/%d/task/%d/children" % (p.pid, p.pid)) as f:
                        children = [int(c) for c in f.read().split()]
                except OSError:
                    children = []
                if children:
                    time.sleep(0.3)  # let it reach the FIFO
                    os.kill(children[0], signal.SIGKILL)
                    killed = children[0]
                else:
                    time.sleep(0.05)
            out, err = p.communicate(timeout=60)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
        if not t.expect(killed is not None, "no worker process found under qcheck"):
            return
        try:
            images, summary = parse_jsonl(out.decode(errors="replace"))
        except ParseError as e:
            t.expect(False, "after a worker was killed: exit %s, %s" % (p.returncode, e))
            return
        got = {o.get("filename"): o for o in images}
        t.expect([o.get("filename") for o in images] == names, "images %s"
                 % [o.get("filename") for o in images])
        dead = got.get("hang.fifo", {})
        t.expect(dead.get("verdict") == "failed" and dead.get("exit-code") == 1 and
                 "signal 9" in dead.get("error", ""),
                 "the image whose worker was killed: %r" % dead)
        for name in ("good.qcow2", "leaky.qcow2", "corrupt.qcow2"):
            t.expect(got.get(name, {}).get("verdict") == VERDICT_OF[name],
                     "%s after the worker before it was killed: %r" % (name, got.get(name)))
        t.expect(p.returncode == 2 and summary.get("failed") == 1,
                 "exit %s, summary %r (corrupt outranks failed)" % (p.returncode, summary))

    def test_files_from(self, t):
        names = ["good.qcow2", "leaky.qcow2", "with space.qcow2"]
        listed = b"good.qcow2\n\nleaky.qcow2\nwith space.qcow2\n"
        rc, images, _ = self.jsonl(t, ["--files-from=-"], stdin=listed)
        self.expect_names(t, "--files-from=- (newlines)", images, names, rc)
        listfile = os.path.join(self.workdir, "list.txt")
        with open(listfile, "wb") as f:
            f.write(listed)
        rc, images, _ = self.jsonl(t, ["--files-from=" + listfile])
        self.expect_names(t, "--files-from=FILE", images, names, rc)
        nul_names = ["with space.qcow2", NEWLINE_NAME, "good.qcow2", "corrupt.qcow2"]
        data = b"\0".join(n.encode() for n in nul_names) + b"\0"
        for flag in ("--null", "-0"):
            rc, images, _ = self.jsonl(t, ["--files-from=-", flag], stdin=data)
            self.expect_names(t, "--files-from=- %s" % flag, images, nul_names, rc)
        rc, images, _ = self.jsonl(t, ["--files-from=-", "corrupt.qcow2", "disk.raw"],
                                   stdin=b"good.qcow2\nleaky.qcow2\n")
        self.expect_names(t, "FILE arguments and --files-from=-", images,
                          ["corrupt.qcow2", "disk.raw", "good.qcow2", "leaky.qcow2"], rc)
        rc, images, summary = self.jsonl(t, ["--files-from=-"], stdin=b"leaky.qcow2\n")
        self.expect_names(t, "--files-from with one name (batch mode)", images, ["leaky.qcow2"], rc)
        rc, out, err = self.check_only(t, ["--files-from=-"], stdin=b"leaky.qcow2\n")
        try:
            parse_human(out)
        except ParseError as e:
            t.expect(False, "--files-from with one name is batch mode, human: %s" % e)
        rc, out, _ = self.qc(t, ["--files-from=" + os.path.join(self.workdir, "no-such-list")])
        t.expect(rc not in (0, None), "--files-from=a missing list: exit %s" % rc)
        t.expect(not re.search(r"^(clean|leaks|corrupt) ", out, re.M), "--files-from=a missing "
                 "list printed image lines: %r" % out[:200])

    def expect_names(self, t, what, images, names, rc):
        if images is None:
            return
        got = [o.get("filename") for o in images]
        t.expect(got == names, "%s: images %r, expected %r" % (what, got, names))
        for obj in images:
            name = obj.get("filename")
            if name in VERDICT_OF:
                t.expect(obj.get("verdict") == VERDICT_OF[name], "%s: %r verdict %r, expected %r"
                         % (what, name, obj.get("verdict"), VERDICT_OF[name]))
        want_rc = self.batch_exit(VERDICT_OF[n] for n in names)
        t.expect(rc == want_rc, "%s: exit %s, expected %d" % (what, rc, want_rc))

    def test_jobs(self, t):
        outs = {}
        for j in ("1", "2"):
            outs[j, "human"] = self.check_only(t, ["-j", j] + NAMES)
            outs[j, "json"] = self.check_only(t, ["-j", j, "--output=json"] + NAMES)
        for mode in ("human", "json"):
            a, b = outs["1", mode], outs["2", mode]
            t.expect(a[0] == b[0], "%s: exit %s with -j1, %s with -j2" % (mode, a[0], b[0]))
            if mode == "human":
                same = normalize_seconds(a[1]) == normalize_seconds(b[1])
            else:
                try:
                    same = [drop_seconds(json.loads(ln)) for ln in a[1].splitlines()] == \
                           [drop_seconds(json.loads(ln)) for ln in b[1].splitlines()]
                except ValueError:
                    same = False
            t.expect(same and a[1].strip() != "", "%s output of -j1 and -j2 differs (or is empty) "
                     "beyond the seconds:\n-j1: %s\n-j2: %s" % (mode, a[1][:600], b[1][:600]))
        rc, out, _ = self.qc(t, ["--jobs=2", "--output=json", "good.qcow2", "leaky.qcow2"])
        t.expect(rc == 3, "--jobs=2: exit %s, expected 3" % rc)
        for bad in ("-1", "many"):
            rc, out, _ = self.qc(t, ["-j", bad, "good.qcow2", "leaky.qcow2"])
            t.expect(rc == 1 and out == "", "-j %s: exit %s, stdout %r: a usage error is exit 1 "
                     "with nothing checked" % (bad, rc, out[:100]))

    def test_max_mem(self, t):
        names = ["good.qcow2", "leaky.qcow2", "disk.raw"]
        rc, images, _ = self.jsonl(t, ["--max-mem=4K"] + names)
        t.expect(rc == 1, "--max-mem=4K: exit %s, expected 1" % rc)
        if images is None:
            return
        for obj, name in zip(images, names):
            _, alone = self.single_json(name, ["--max-mem=4K"])
            want = "unsupported" if name == "disk.raw" else "failed"
            t.expect(obj.get("verdict") == want, "--max-mem=4K %s: verdict %r, expected %s"
                     % (name, obj.get("verdict"), want))
            if alone:
                for k in COUNT_KEYS:
                    t.expect(obj.get(k, 0) == alone.get(k, 0), "--max-mem=4K %s: %s %r, alone %r"
                             % (name, k, obj.get(k, 0), alone.get(k, 0)))

    def test_force_share(self, t):
        rc, images, _ = self.jsonl(t, ["-U", "locked.qcow2", "good.qcow2"])
        t.expect(rc == 0, "-U locked.qcow2 good.qcow2: exit %s" % rc)
        if images:
            t.expect(images[0].get("verdict") == "clean", "-U: the locked image is %r, not "
                     "checked (clean)" % images[0].get("verdict"))
            t.expect("problems" in images[0], "-U: the locked image has no single-image object")

    def fresh(self, name, files):
        """A folder of copies of batch/ files (and a lock holder's image)."""
        d = os.path.join(self.workdir, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for f in files:
            copy(os.path.join(self.batch, f), os.path.join(d, f))
        return d

    def test_repair(self, t):
        files = ["good.qcow2", "leaky.qcow2", WEIRD, "corrupt.qcow2", "disk.raw", "locked.qcow2"]
        d = self.fresh("repair", files)
        holder = LockHolder(os.path.join(d, "locked.qcow2"))
        try:
            self.repair_steps(t, d, files)
        finally:
            holder.stop()

    def repair_steps(self, t, d, files):
        before = tree_state(d)
        for mode in ("leaks", "all"):
            for out_mode in ([], ["--output=json"]):
                rc, out, _ = self.qc(t, ["-r", mode, "-n"] + out_mode + files, cwd=d)
                t.expect(rc == 2, "-r %s -n %s: exit %s, expected 2 (corrupt)" % (mode, out_mode, rc))
                t.expect(tree_state(d) == before, "-r %s -n wrote to a file" % mode)
        corrupt_before = self.single_json("corrupt.qcow2", cwd=d)[1] or {}
        # the repair of an identical copy, alone, for comparison
        ref = self.fresh("repair-alone", ["leaky.qcow2"])
        _, alone = self.single_json("leaky.qcow2", ["-r", "leaks"], cwd=ref)
        undo = os.path.join(self.workdir, "undo")
        shutil.rmtree(undo, ignore_errors=True)
        os.makedirs(undo)
        rc, out, err = self.qc(t, ["-r", "leaks", "--undo=" + undo, "--output=json"] + files, cwd=d)
        t.expect(rc == 2, "-r leaks batch: exit %s, expected 2 (corrupt)" % rc)
        try:
            images, summary = parse_jsonl(out)
        except ParseError as e:
            t.expect(False, "-r leaks --output=json: exit %s, %s; stderr %s" % (rc, e, err[:300]))
            images, summary = [], {}
        got = {o.get("filename"): o for o in images}
        want = {"good.qcow2": "clean", "leaky.qcow2": "repaired", WEIRD: "repaired",
                "corrupt.qcow2": "corrupt", "disk.raw": "unsupported", "locked.qcow2": "in-use"}
        for name, verdict in want.items():
            t.expect(got.get(name, {}).get("verdict") == verdict, "-r leaks: %s is %r, expected %s"
                     % (name, got.get(name, {}).get("verdict"), verdict))
        if alone and "leaky.qcow2" in got:
            obj = dict(got["leaky.qcow2"])
            t.expect(set(obj) == set(alone) | {"verdict", "seconds"},
                     "-r leaks: leaky's keys differ from `qcheck -r leaks --output=json` alone: %s"
                     % sorted(set(obj) ^ (set(alone) | {"verdict", "seconds"})))
            diff = sorted(k for k in alone if obj.get(k) != alone[k])
            t.expect(not diff, "-r leaks: leaky's values differ from the repair alone in %s" % diff)
        if summary:
            t.expect(summary.get("repaired") == 2 and summary.get("in-use") == 1,
                     "-r leaks summary: %s" % summary)
        for name in ("leaky.qcow2", WEIRD):
            res = subprocess.run([QEMU_IMG, "check", name], capture_output=True, cwd=d,
                                 timeout=TIMEOUT)
            t.expect(res.returncode == 0, "after -r leaks, qemu-img check %s exits %d"
                     % (name, res.returncode))
        after = tree_state(d)
        t.expect(after["locked.qcow2"] == before["locked.qcow2"], "the in-use image was written")
        for name in ("good.qcow2", "disk.raw"):
            t.expect(after[name] == before[name], "-r leaks wrote to %s" % name)
        corrupt_after = self.single_json("corrupt.qcow2", cwd=d, again=True)[1] or {}
        t.expect(corrupt_after.get("corruptions", 99) <= corrupt_before.get("corruptions", 0) and
                 {p["id"] for p in corrupt_after.get("problems", [])} <=
                 {p["id"] for p in corrupt_before.get("problems", [])},
                 "-r leaks made corrupt.qcow2 worse: %s -> %s" % (
                     corrupt_before.get("problems"), corrupt_after.get("problems")))
        logs = sorted(os.listdir(undo))
        t.expect(logs == sorted(["leaky.qcow2.undo", WEIRD + ".undo"]),
                 "--undo=DIR holds %s; expected an undo log per repaired image only" % logs)
        for name in ("leaky.qcow2", WEIRD):
            log = os.path.join(undo, name + ".undo")
            if not os.path.exists(log):
                continue
            res = subprocess.run([self.qcheck, "--rollback=" + log, name], capture_output=True,
                                 cwd=d, timeout=TIMEOUT)
            t.expect(res.returncode == 0 and file_digest(os.path.join(d, name)) == before[name],
                     "--rollback=%s did not restore %s (exit %d)" % (log, name, res.returncode))
        # in use alone in a list, with -r: skipped, not a failure
        rc, out, _ = self.qc(t, ["-r", "leaks", "--output=json", "--files-from=-"], cwd=d,
                             stdin=b"locked.qcow2\n")
        t.expect(rc == 0, "-r leaks --files-from with only the in-use image: exit %s, expected 0"
                 % rc)
        t.expect('"in-use"' in out, "-r leaks on the in-use image alone: not listed in-use: %r"
                 % out[:300])
        t.expect(tree_state(d)["locked.qcow2"] == before["locked.qcow2"], "the in-use image was written")
        # two images of one NAME: refused before anything is written
        dup = os.path.join(self.workdir, "dup")
        shutil.rmtree(dup, ignore_errors=True)
        for sub in ("a", "b"):
            os.makedirs(os.path.join(dup, sub))
            copy(os.path.join(self.batch, "leaky.qcow2"), os.path.join(dup, sub, "x.qcow2"))
        dup_before = tree_state(dup)
        for opt in ("--undo", "--salvage"):
            target = os.path.join(self.workdir, "dup-" + opt.strip("-"))
            shutil.rmtree(target, ignore_errors=True)
            os.makedirs(target)
            rc, out, _ = self.qc(t, ["-r", "leaks", "%s=%s" % (opt, target), "a/x.qcow2",
                                     "b/x.qcow2"], cwd=dup)
            t.expect(rc == 1, "%s with two images named x.qcow2: exit %s, expected 1" % (opt, rc))
            t.expect(tree_state(dup) == dup_before, "%s with a duplicate NAME wrote to an image"
                     % opt)
            t.expect(os.listdir(target) == [], "%s with a duplicate NAME left %s in %s"
                     % (opt, os.listdir(target), target))
            t.expect(not re.search(r"^(repaired|leaks|clean) ", out, re.M),
                     "%s with a duplicate NAME checked images: %r" % (opt, out[:200]))

    def test_metrics(self, t):
        parse = load_prometheus_parser()
        if not t.expect(parse is not None, "prometheus_client is not installed (Debian: "
                        "python3-prometheus-client, which .ci/install-deps installs)"):
            return
        names = NAMES
        mdir = os.path.join(self.workdir, "metrics")
        shutil.rmtree(mdir, ignore_errors=True)
        os.makedirs(mdir)
        prom = os.path.join(mdir, "qcheck.prom")
        with open(prom, "w") as f:
            f.write("# stale content of an earlier run\nqcheck_stale_series 1\n")
        ino0 = os.stat(prom).st_ino
        t0 = time.time()
        rc, out, err = self.check_only(t, ["--output=json", "--metrics=" + prom] + names)
        t1 = time.time()
        try:
            images, summary = parse_jsonl(out)
        except ParseError as e:
            t.expect(False, "--metrics run: exit %s, %s; stderr %s" % (rc, e, err[:300]))
            return
        t.expect(sorted(os.listdir(mdir)) == ["qcheck.prom"], "after --metrics the folder holds "
                 "%s: a temporary file left behind?" % sorted(os.listdir(mdir)))
        if not t.expect(os.path.exists(prom), "--metrics=%s: no file written" % prom):
            return
        t.expect(os.stat(prom).st_ino != ino0, "the metrics file was rewritten in place (same "
                 "inode), not renamed over")
        # node_exporter runs as its own user (Debian: prometheus): a file made
        # 0600 like mkstemp's would be a scrape error. The test runs with umask 022.
        mode = stat.S_IMODE(os.stat(prom).st_mode)
        t.expect(mode == 0o644, "the metrics file has mode %o: node_exporter's user cannot read "
                 "it unless it is created as a normal file is (0666 less the umask: 644 here)"
                 % mode)
        with open(prom) as f:
            text = f.read()
        t.expect("qcheck_stale_series" not in text, "the old content of the metrics file is "
                 "still there (appended, not replaced)")
        fams = self.metric_families(t, parse, text)
        if fams is None:
            return
        self.check_metrics(t, fams, images, summary, rc, names, t0, t1)
        self.node_exporter(t, parse, mdir, names)
        # run again with other images: replaced, not appended; new inode
        ino1 = os.stat(prom).st_ino
        rc2, out2, _ = self.check_only(t, ["--output=json", "--metrics=" + prom, "good.qcow2",
                                           "leaky.qcow2"])
        with open(prom) as f:
            fams2 = self.metric_families(t, parse, f.read())
        t.expect(os.stat(prom).st_ino != ino1, "second run: the metrics file kept its inode")
        t.expect(sorted(os.listdir(mdir)) == ["qcheck.prom"], "second run left %s"
                 % sorted(os.listdir(mdir)))
        if fams2 is not None:
            seen = {s.labels.get("image") for f in fams2.values() for s in f.samples
                    if "image" in s.labels}
            t.expect(seen == {"good.qcow2", "leaky.qcow2"}, "second run: the file names images "
                     "%s; the run checked good.qcow2 and leaky.qcow2 only" % sorted(seen))
        # one FILE: stdout as without --metrics, and the file written
        one = os.path.join(mdir, "one.prom")
        plain = self.check_only(t, ["leaky.qcow2"])
        with_metrics = self.check_only(t, ["--metrics=" + one, "leaky.qcow2"])
        t.expect(with_metrics[:2] == plain[:2], "--metrics with one FILE changed stdout or the "
                 "exit status")
        if t.expect(os.path.exists(one), "--metrics with one FILE wrote nothing"):
            with open(one) as f:
                fams1 = self.metric_families(t, parse, f.read())
            if fams1 is not None:
                v = fams1.get("qcheck_image_leaks")
                t.expect(v is not None and [(s.labels, s.value) for s in v.samples] ==
                         [({"image": "leaky.qcow2"}, 3.0)], "one FILE: qcheck_image_leaks %s"
                         % (v.samples if v else None))
            os.unlink(one)

    def metric_families(self, t, parse, text):
        try:
            fams = {f.name: f for f in parse(text)}
        except Exception as e:  # the parser raises ValueError and others on bad input
            t.expect(False, "the metrics file does not parse: %s\n%s" % (e, text[:800]))
            return None
        return fams

    def check_metrics(self, t, fams, images, summary, rc, names, t0, t1):
        per_image = {"qcheck_image_leaks": "leaks", "qcheck_image_corruptions": "corruptions",
                     "qcheck_image_check_errors": "check-errors",
                     "qcheck_image_check_seconds": "seconds", "qcheck_image_exit_code": "exit-code",
                     "qcheck_image_last_run_timestamp_seconds": None}
        run_series = ["qcheck_run_images", "qcheck_run_exit_code", "qcheck_run_seconds",
                      "qcheck_run_last_timestamp_seconds"]
        for fam in list(per_image) + ["qcheck_image_verdict"] + run_series:
            f = fams.get(fam)
            if not t.expect(f is not None, "metrics: no %s" % fam):
                continue
            t.expect(f.type == "gauge", "%s is a %s, not a gauge" % (fam, f.type))
            t.expect(bool(f.documentation), "%s has no # HELP" % fam)
        objs = {o.get("filename"): o for o in images}
        for fam, key in per_image.items():
            f = fams.get(fam)
            if f is None:
                continue
            by_image = {}
            for s in f.samples:
                t.expect(set(s.labels) == {"image"}, "%s labels %s" % (fam, s.labels))
                t.expect(s.labels.get("image") not in by_image, "%s twice for %r"
                         % (fam, s.labels.get("image")))
                by_image[s.labels.get("image")] = s.value
            # The counts are left out for an image whose check reached no
            # figures (its JSON line has none either).
            expected = set(names) if key not in COUNT_KEYS else \
                {n for n in names if "check-errors" in objs.get(n, {})}
            t.expect(set(by_image) == expected, "%s: images %s, expected %s"
                     % (fam, sorted(by_image, key=str), sorted(expected)))
            for name in names:
                if name not in by_image:
                    continue
                v = by_image[name]
                if key is None:
                    t.expect(t0 - 1 <= v <= t1 + 1, "%s{%r} = %r, not within the run (%d..%d)"
                             % (fam, name, v, t0, t1))
                elif key == "seconds":
                    t.expect(abs(v - objs.get(name, {}).get("seconds", -9)) <= 0.0051,
                             "%s{%r} = %r, JSON seconds %r" % (fam, name, v,
                                                              objs.get(name, {}).get("seconds")))
                else:
                    t.expect(v == objs.get(name, {}).get(key, 0), "%s{%r} = %r, JSON %s %r"
                             % (fam, name, v, key, objs.get(name, {}).get(key, 0)))
        f = fams.get("qcheck_image_verdict")
        if f is not None:
            onehot = {}
            for s in f.samples:
                t.expect(set(s.labels) == {"image", "verdict"}, "qcheck_image_verdict labels %s"
                         % s.labels)
                onehot.setdefault(s.labels.get("image"), {})[s.labels.get("verdict")] = s.value
            for name in names:
                series = onehot.get(name, {})
                t.expect(set(series) == set(VERDICTS), "qcheck_image_verdict{%r}: verdicts %s"
                         % (name, sorted(series)))
                want = {v: (1.0 if v == objs.get(name, {}).get("verdict") else 0.0)
                        for v in VERDICTS}
                t.expect(series == want, "qcheck_image_verdict{%r} not one-hot on %r: %s"
                         % (name, objs.get(name, {}).get("verdict"), series))
        f = fams.get("qcheck_run_images")
        if f is not None:
            got = {s.labels.get("verdict"): s.value for s in f.samples}
            want = {v: float(summary.get(v, -1)) for v in VERDICTS}
            t.expect(got == want, "qcheck_run_images %s, the summary says %s" % (got, want))
        for fam, want in (("qcheck_run_exit_code", rc),
                          ("qcheck_run_seconds", summary.get("seconds"))):
            f = fams.get(fam)
            if f is not None:
                vals = [s.value for s in f.samples if not s.labels]
                t.expect(len(vals) == 1 and want is not None and abs(vals[0] - want) <= 0.0051,
                         "%s %s, expected %r" % (fam, vals, want))
        f = fams.get("qcheck_run_last_timestamp_seconds")
        if f is not None:
            vals = [s.value for s in f.samples]
            t.expect(len(vals) == 1 and t0 - 1 <= vals[0] <= t1 + 1,
                     "qcheck_run_last_timestamp_seconds %s, the run was %d..%d" % (vals, t0, t1))
        extra = sorted(n for n in fams if n.startswith("qcheck_") and n not in per_image and
                       n not in run_series and n != "qcheck_image_verdict")
        if extra:
            t.notes.append("metrics the contract does not list: %s" % extra)

    def node_exporter(self, t, parse, mdir, names):
        exe = shutil.which("prometheus-node-exporter") or shutil.which("node_exporter")
        if not exe:
            t.notes.append("prometheus-node-exporter not installed: the scrape was not tried")
            return
        for _ in range(3):
            port = free_port()
            p = subprocess.Popen([exe, "--web.listen-address=127.0.0.1:%d" % port,
                                  "--collector.disable-defaults", "--collector.textfile",
                                  "--collector.textfile.directory=" + mdir],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                 preexec_fn=_die_with_parent)
            _CHILDREN.append(p)
            try:
                text = None
                deadline = time.monotonic() + 15
                while time.monotonic() < deadline and p.poll() is None:
                    try:
                        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port,
                                                    timeout=5) as r:
                            text = r.read().decode()
                        break
                    except OSError:
                        time.sleep(0.1)
            finally:
                p.kill()
                _, err = p.communicate(timeout=10)
                _CHILDREN.remove(p)
            if text is not None:
                break
            if "address already in use" not in err.decode(errors="replace"):
                t.expect(False, "node_exporter did not serve /metrics: %s"
                         % err.decode(errors="replace")[-500:])
                return
        else:
            t.expect(False, "node_exporter: no free port in 3 tries")
            return
        fams = self.metric_families(t, parse, text)
        if fams is None:
            return
        errs = [s.value for s in fams.get("node_textfile_scrape_error", None).samples] \
            if "node_textfile_scrape_error" in fams else []
        t.expect(errs == [0.0], "node_exporter: node_textfile_scrape_error %s (1: it rejected "
                 "the file)" % errs)
        served = {s.labels.get("image") for s in getattr(fams.get("qcheck_image_verdict"),
                                                         "samples", [])}
        t.expect(served == set(names), "node_exporter serves qcheck_image_verdict for %s"
                 % sorted(x for x in served if x))
        t.notes.append("node_exporter %s served %d qcheck_ series, scrape error %s"
                       % (exe, sum(len(f.samples) for n, f in fams.items()
                                   if n.startswith("qcheck_")), errs))

    def test_progress(self, t):
        names = []
        d = self.fresh("progress", [])
        for i in range(12):
            n = "img%02d.qcow2" % i
            copy(os.path.join(self.batch, "leaky.qcow2" if i % 5 == 0 else "good.qcow2"),
                 os.path.join(d, n))
            names.append(n)
        os.mkfifo(os.path.join(d, "slow.fifo"))
        names.insert(6, "slow.fifo")
        args = ["-j", "1", "--timeout=1.5"] + names
        total = len(names)
        plain = self.qc(t, args, cwd=d)
        # stderr on a terminal, stdout a pipe
        rc, out, tty = self.pty_run(args, d, both=False)
        frames = [FRAME_RE.match(CSI_RE.sub("", s).strip()) for s in re.split(r"[\r\n]", tty)]
        frames = [m for m in frames if m]
        t.expect(frames, "no [k/N] progress frame on the terminal (stderr): %r" % tty[:300])
        ks = [int(m.group(1)) for m in frames]
        t.expect(all(int(m.group(2)) == total for m in frames), "frames' totals %s, expected %d"
                 % (sorted({m.group(2) for m in frames}), total))
        t.expect(ks == sorted(ks) and all(k <= total for k in ks), "frames' done counts %s" % ks)
        t.expect(all(m.group(4) in names for m in frames), "frames name %s"
                 % sorted({m.group(4) for m in frames} - set(names)))
        t.expect(all(0 <= float(m.group(3)) <= 100 for m in frames), "percentages out of range")
        t.expect(rc == plain[0] and normalize_seconds(out) == normalize_seconds(plain[1]),
                 "stdout with stderr on a terminal differs from a run without one:\n%s\n---\n%s"
                 % (out[:500], plain[1][:500]))
        t.expect("\r" not in out and not FRAME_RE.search(out), "progress on stdout")
        # both on one terminal: the screen is the output lines, no frame left over
        rc, _, tty = self.pty_run(args, d, both=True)
        shown = [ln for ln in screen(tty) if ln.strip()]
        want = [ln for ln in (plain[1] + plain[2]).split("\n") if ln.strip()]
        t.expect(not any(FRAME_RE.search(ln) for ln in shown), "a progress frame is left on the "
                 "screen: %s" % [ln for ln in shown if FRAME_RE.search(ln)][:3])
        t.expect(sorted(normalize_seconds(ln) for ln in shown) ==
                 sorted(normalize_seconds(ln) for ln in want),
                 "the terminal shows other lines than a run without one:\n%s\n---\n%s"
                 % ("\n".join(shown[:40]), "\n".join(want[:40])))
        # never with -q or JSON, nor when stderr is a pipe without -p; with -p on a pipe
        for extra in (["-q"], ["--output=json"]):
            _, _, tty = self.pty_run(extra + args, d, both=False)
            t.expect(not FRAME_RE.search(tty), "progress shown with %s: %r" % (extra, tty[:200]))
        t.expect(not FRAME_RE.search(plain[2]) and "\r" not in plain[2],
                 "progress shown with stderr on a pipe: %r" % plain[2][:200])
        _, _, err = self.qc(t, ["-p"] + args, cwd=d)
        t.expect(FRAME_RE.search(err), "-p with stderr on a pipe: no progress frame: %r" % err[:200])

    def pty_run(self, args, cwd, both):
        """qcheck with stderr (and stdout if `both`) on a new pseudo-terminal:
        (status, stdout if not both, everything the terminal got)."""
        import pty
        master, slave = pty.openpty()
        p = subprocess.Popen([self.qcheck] + args, cwd=cwd, stdin=subprocess.DEVNULL,
                             stdout=slave if both else subprocess.PIPE, stderr=slave,
                             start_new_session=True)
        os.close(slave)
        chunks, outbuf = [], []
        reader = None
        if not both:
            reader = threading.Thread(target=lambda: outbuf.append(p.stdout.read()))
            reader.start()
        deadline = time.monotonic() + TIMEOUT
        while time.monotonic() < deadline:
            r, _, _ = select.select([master], [], [], 0.2)
            if r:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: every slave end closed
                    break
                if not data:
                    break
                chunks.append(data)
            elif p.poll() is not None:
                # drained and exited
                r, _, _ = select.select([master], [], [], 0.1)
                if not r:
                    break
        if p.poll() is None:
            p.kill()
        p.wait()
        if reader:
            reader.join()
        os.close(master)
        tty = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
        out = outbuf[0].decode(errors="replace") if outbuf else ""
        return p.returncode, out, tty

    def test_single(self, t):
        for name in ("good.qcow2", "leaky.qcow2", "huge.qcow2", "tail.qcow2"):
            res = subprocess.run([QEMU_IMG, "check", name], capture_output=True, text=True,
                                 cwd=self.batch, timeout=TIMEOUT)
            rc, out, _ = self.check_only(t, [name])
            t.expect((rc, out) == (res.returncode, res.stdout), "qcheck %s: exit %s, stdout %r; "
                     "qemu-img check: exit %d, stdout %r" % (name, rc, out, res.returncode,
                                                             res.stdout))
            qrc, qm = self.qemu_json(name)
            rc, out, _ = self.check_only(t, ["--output=json", name])
            try:
                obj = json.loads(out)
            except ValueError:
                t.expect(False, "qcheck --output=json %s: not one JSON object: %r" % (name, out[:200]))
                continue
            diff = sorted(k for k in (qm or {}) if obj.get(k) != qm[k])
            t.expect(rc == qrc and not diff, "qcheck --output=json %s: exit %s (qemu-img %d), "
                     "keys of qemu-img's differing: %s" % (name, rc, qrc, diff))
            t.expect("verdict" not in obj and "seconds" not in obj and "summary" not in out,
                     "qcheck --output=json %s (one FILE) has batch members" % name)
        for args in (["--chain"], ["--data-file=disk.raw"], ["--rollback=nothing.undo"],
                     ["--image-opts"]):
            rc, out, err = self.check_only(t, args + ["good.qcow2", "leaky.qcow2"])
            t.expect(rc == 1 and out == "", "%s with two FILEs: exit %s, stdout %r; a usage error "
                     "(exit 1, nothing checked)" % (args[0], rc, out[:200]))
            rc, out, err = self.check_only(t, args + ["--files-from=-"], stdin=b"good.qcow2\n")
            t.expect(rc == 1 and out == "", "%s with --files-from: exit %s, stdout %r; a usage "
                     "error" % (args[0], rc, out[:200]))

    # -- driving -------------------------------------------------------------
    TESTS = ["verdicts", "jsonl", "human", "exit_order", "timeout", "worker_dies", "files_from", "jobs",
             "max_mem", "force_share", "repair", "metrics", "progress", "single"]

    def run(self, flt):
        failed = 0
        t_start = time.monotonic()
        try:
            try:
                self.build()
            except (SetupError, OSError, subprocess.SubprocessError) as e:
                print("FAIL setup: %s" % e)
                return 1
            print("fleet of %d files built in %.1f s in %s" % (len(NAMES) + 3,
                                                             time.monotonic() - t_start,
                                                             self.batch))
            for name in self.TESTS:
                if flt and flt not in name:
                    continue
                t = Test(name, EXPECTED_FAILURES)
                t0 = time.monotonic()
                try:
                    getattr(self, "test_" + name)(t)
                except (SetupError, OSError, subprocess.SubprocessError, KeyError,
                        TypeError, ValueError) as e:
                    t.fails.append("aborted: %s: %s" % (type(e).__name__, e))
                bad = t.fails or t.xpasses
                failed += bool(bad)
                print("%s %s (%.1f s)" % ("FAIL" if bad else "PASS", name, time.monotonic() - t0))
                for f in t.fails + t.xpasses:
                    print("    " + f.replace("\n", "\n    "))
                for x in t.xfails:
                    print("    XFAIL " + x)
                for n in t.notes:
                    print("    note: " + n)
            if self.holder:
                self.holder.stop()
                self.holder = None
            final = tree_state(self.batch)
            if final != self.state:
                failed += 1
                print("FAIL never_writes: batch/ changed between the runs: %s" % sorted(
                    k for k in set(final) | set(self.state) if final.get(k) != self.state.get(k)))
            else:
                print("PASS never_writes (every file of batch/ as built)")
        finally:
            if self.holder:
                self.holder.stop()
            kill_children()
        ran = sum(1 for n in self.TESTS if not flt or flt in n) + 1  # and never_writes
        print("fleet: %d passed, %d failed in %.1f s" % (ran - failed, failed,
                                                         time.monotonic() - t_start))
        return 1 if failed else 0


def main():
    if not shutil.which(QEMU_IMG) or not shutil.which(QEMU_IO):
        print("SKIP: qemu-img and qemu-io (qemu-utils) are needed")
        return 77

    os.umask(0o022)  # the modes of the files qcheck creates are asserted

    def on_term(signum, frame):
        kill_children()
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, on_term)
    try:
        return script_main(__doc__, lambda args: Runner(args.qcheck, args.workdir))
    finally:
        kill_children()


if __name__ == "__main__":
    sys.exit(main())
