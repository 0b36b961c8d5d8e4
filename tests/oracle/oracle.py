#!/usr/bin/env python3
"""The differential oracle: qcheck against qemu-img 7.2 on generated and
mutated images. See docs/oracle.md.

    oracle.py --qcheck BUILD/qcheck [--seeds 1-500] [--mutants 10] [--jobs 2]
              [--images PATH...] [--catalogue [FILTER]] [--work DIR] [--only ID]
              [--keep] [--fast] [--json FILE] [--summarise FILE]

--seeds A-B[,C...]  workload seeds (workload.py): each builds one image with a
                    random history, plus a checkpoint after each unclean end
                    that is not the last step;
--mutants N         mutants per seed (mutate.py), spread over its images; with
                    --images, mutants per image file;
--images PATH...    image files or folders (corpus/, an AFL++ queue): each file
                    is a subject (and the seed of --mutants mutants);
--catalogue [F]     the cases of tests/images/cases.py (names containing F),
                    each with its companion files (and --mutants mutants);
--only ID           one subject (as printed in a report line);
--fast              the CI slice: a fixed seed range and mutant count;
--keep              keep every subject's folder (default: only failing ones).

For every subject (a generated image, a checkpoint, a mutant, a file):

  compare  `qemu-img check -f qcow2` and `qcheck -f qcow2`, JSON and human:
           exit status and every ImageCheck count and statistic equal, or
           a difference a rule of compare.RULES explains (each rule is a
           section of docs/qemu-img-differences.md, conditioned on the
           problem ids qcheck names);
  (1)      qcheck exits 0 or 3 => `qemu-img info -f qcow2` opens the image
           and `qemu-img convert` reads the guest data of the active image
           and of every snapshot (when the files it names are there);
  (2)      for -r leaks and -r all, on copies: qemu-img reaches exit 0 =>
           qcheck's same mode reaches exit 0, unless qcheck refused naming
           a problem id;
  (3)      guest data after qcheck's repair equals the data before, outside
           the guest ranges the repair reports as dropped, for the active
           image and every snapshot;
  (4)      the snapshot list (ids and names) survives qcheck's repair unless
           the repair reports dropping snapshots;
  (5)      qcheck's check mode never changes the file (sha256);
  after    qemu-img check of the image qcheck repaired is compared with a
           fresh qcheck check by the same rules, and the fresh check agrees
           with the counts the repair printed.

Prints one line per disagreement (signature, subject, detail, reproduction
command), then a classified summary: each signature with its count and
first reproduction, and how often each rule was needed. Exit status 0 only
if nothing disagreed.
"""

import argparse
import json
import os
import re
import shutil
import signal
import struct
import sys
import time
from collections import Counter, defaultdict
from concurrent.futures import ProcessPoolExecutor

sys.dont_write_bytecode = True
HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import classify  # noqa: E402
import compare as cmp  # noqa: E402
import mutate  # noqa: E402
import workload  # noqa: E402
from common import (IMAGES_DIR, QEMU_IMG, REPO, copy_sparse, dump_json, file_sha256, open_image,  # noqa: E402
                    qcow2lib as q, run)

sys.path.insert(0, IMAGES_DIR)
import run_repairs  # noqa: E402  (the pure-Python guest reader and the note parser)

IMG = "img.qcow2"
FAST_SEEDS = "1-6"
FAST_MUTANTS = 5
MAX_GUEST_BYTES = 64 << 20
SUBJECT_SECONDS = 600  # a watchdog: the oracle reports a subject it could not finish  # guest data compared through qemu-img convert up to this size
SNAPSHOTS_DROPPED_RE = re.compile(r"^the snapshot table listed (\d+) snapshots; (\d+) could be read")
# a table past the end of the file or at offset 0: every entry discarded
SNAPSHOTS_DISCARDED_RE = re.compile(r"^discarded snapshot table entr(y|ies) ")
# docs/repair.md §5.2, §5.5: an entry cut at the end of the file loses the
# extra data it did not hold (QEMU reads zeros there, qcheck QEMU's
# defaults for the missing fields); an entry without an id gets a fresh one
SNAPSHOT_CUT_RE = re.compile(r'^snapshot (\d+) \(id ".*", name ".*"\) ran past the end of the file: .*'
                             r'lost: (.*)$')
SNAPSHOT_FRESH_ID_RE = re.compile(r'^snapshot (\d+) \(id "", name ".*"\) had no id; the repaired table gives '
                                  r'it id "(.*)"$')
ID_IN_TEXT_RE = re.compile(r"\(([a-z][A-Za-z0-9]+)\)|\b([a-z]+[A-Z][A-Za-z0-9]+)\b")


# ---- subjects -------------------------------------------------------------------

class Subject:
    """One image to examine: a folder holding IMG and its companions."""

    def __init__(self, sid, src_dir, origin, repro):
        self.id, self.src, self.origin, self.repro = sid, src_dir, origin, repro


def copy_files(src, dst):
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for name in os.listdir(src):
        p = os.path.join(src, name)
        if os.path.isfile(p) and name not in ("recipe.json", "subject.json"):
            copy_sparse(p, os.path.join(dst, name))
    return dst


class Oracle:
    def __init__(self, qcheck, work, keep=False):
        self.qcheck = os.path.abspath(qcheck)
        self.work = os.path.abspath(work)
        self.keep = keep

    # -- running the tools --------------------------------------------------------

    def qcheck_run(self, d, *args):
        return run([self.qcheck, *args, IMG], cwd=d)

    def qemu_run(self, d, *args):
        return run([QEMU_IMG, *args], cwd=d)

    def cluster_size(self, d, qc_json):
        h = (qc_json or {}).get("header") or {}
        if h.get("cluster-size"):
            return h["cluster-size"]
        try:
            with open_image(os.path.join(d, IMG)) as im:
                return im.cluster_size if 9 <= im.cluster_bits <= 30 else 0
        except Exception:  # noqa: BLE001 - a file too broken to read
            return 0

    def missing_companions(self, d):
        """Backing or data file names the image gives that are not in d."""
        missing = []
        try:
            with open_image(os.path.join(d, IMG)) as im:
                h = im.header
                if h.backing_file_offset and h.backing_file_size and h.backing_file_offset < im.cluster_size:
                    missing.append(im.backing_name.decode("latin-1"))
                ext = im.extension(q.EXT_DATA_FILE)
                if ext:
                    missing.append(ext.data.decode("latin-1"))
        except Exception:  # noqa: BLE001
            return []
        return [n for n in missing if not n or "/" in n or not os.path.isfile(os.path.join(d, n))]

    def check_pair(self, d, label, out, human=True):
        """Check the image in d with both tools (and in human mode too, if
        `human`), and compare. Appends violations to `out`; returns the
        Pair."""
        path = os.path.join(d, IMG)
        sha = file_sha256(path)
        qc = self.qcheck_run(d, "-f", "qcow2", "--output=json")
        if file_sha256(path) != sha:
            out.append(("implication 5: qcheck's check changed the file", label))
        qch = self.qcheck_run(d, "-f", "qcow2") if human else None
        if file_sha256(path) != sha:
            out.append(("implication 5: qcheck's human check changed the file", label))
        qm = self.qemu_run(d, "check", "-f", "qcow2", "--output=json", IMG)
        pair = cmp.Pair(qm, qc, self.cluster_size(d, qc.json()), self.missing_companions(d),
                        os.path.getsize(path))
        v = cmp.compare(pair, label)
        out.extend(v.disagreements)
        self.observations.extend(v.observations)
        self.fired.update(v.fired)
        if not human:
            return pair
        # human mode: the same verdict, and the summary of the JSON's counts
        if qch.rc != qc.rc:
            out.append(("%s: qcheck exits %s in human mode, %s in JSON mode" % (label, qch.rc, qc.rc), ""))
        if pair.qc and qc.rc in (0, 2, 3) or (qc.rc == 1 and pair.qc.get("check-errors")):
            if qch.out != cmp.human_summary(pair.qc):
                out.append(("%s: qcheck's human summary is not the summary of its JSON counts" % label,
                            repr(qch.out[:200])))
        if pair.qm and pair.qc and qm.rc == qc.rc and all(
                pair.qm.get(k, 0) == pair.qc.get(k, 0) for k in cmp.COUNT_KEYS + cmp.STAT_KEYS):
            # the same verdict: the human outputs must be the same bytes
            qmh = self.qemu_run(d, "check", "-f", "qcow2", IMG)
            if qmh.rc == qm.rc and qmh.out != cmp.human_summary(pair.qm):
                out.append(("oracle: qemu-img's human summary is not what compare.human_summary makes",
                            qmh.out[:200]))
            if qmh.out != qch.out:
                out.append(("%s: same counts, but qcheck's human output differs from qemu-img's" % label,
                            repr(qch.out[:200])))
        return pair

    # -- guest data ---------------------------------------------------------------

    def snapshot_list(self, d):
        """[(id, name, what `qemu-img snapshot -l` shows and the disk size)]
        from the snapshot table, or None if it cannot be read. Extra data
        qcheck does not know is not compared (differences §5.2)."""
        try:
            with open_image(os.path.join(d, IMG)) as im:
                if im.header.nb_snapshots > 1000 or im.header.snapshots_offset > im.file_size:
                    return None
                out = []
                for s in im.snapshots():
                    extra = s.extra + bytes(24)
                    vm_state = struct.unpack(">Q", extra[:8])[0] if len(s.extra) >= 8 else s.vm_state_size
                    icount = struct.unpack(">Q", extra[16:24])[0] if len(s.extra) >= 24 else None
                    out.append((s.id.decode("latin-1"), s.name.decode("latin-1"), s.date_sec, s.date_nsec,
                                s.vm_clock_nsec, vm_state, s.disk_size, icount))
                return out
        except Exception:  # noqa: BLE001
            return None

    def read_guest(self, d, tag, snapshots):
        """{owner: raw file or error text} read with qemu-img convert:
        "active" and every snapshot id (unique, plain ids only)."""
        owners = [("active", [])]
        ids = [sn[0] for sn in snapshots or []]
        for sid in ids:
            if sid and ids.count(sid) == 1 and re.fullmatch(r"[A-Za-z0-9_.-]+", sid):
                owners.append((sid, ["-l", "snapshot.id=" + sid]))
        out = {}
        for owner, extra in owners:
            raw = os.path.join(self.scratch, "%s-%s.raw" % (tag, owner))
            r = self.qemu_run(d, "convert", "-f", "qcow2", "-O", "raw", *extra, IMG, raw)
            if r.rc == 0:
                out[owner] = raw
            else:
                out[owner] = "exit %s: %s" % (r.rc, (r.err.strip().splitlines() or [""])[-1][:200])
        return out

    def virtual_size(self, d):
        try:
            with open_image(os.path.join(d, IMG)) as im:
                return im.header.size
        except Exception:  # noqa: BLE001
            return 1 << 62

    # -- one subject --------------------------------------------------------------

    def examine(self, subj):
        """Everything about one subject; returns its report (a dict)."""
        t0 = time.time()
        signal.signal(signal.SIGALRM, _timeout)
        signal.alarm(SUBJECT_SECONDS)
        self.fired = Counter()
        self.observations = []
        base = os.path.join(self.work, "subjects", subj.id.replace(":", "_").replace("/", "_"))
        shutil.rmtree(base, ignore_errors=True)
        orig = copy_files(subj.src, os.path.join(base, "orig"))
        dump_json(os.path.join(base, "subject.json"), {"id": subj.id, "origin": subj.origin, "repro": subj.repro})
        self.scratch = os.path.join(base, "scratch")
        os.makedirs(self.scratch)
        out = []
        facts = {}
        try:
            self._examine(subj, base, orig, out, facts)
        except Exception as e:  # noqa: BLE001 - a bug of the oracle is reported, not fatal
            import traceback
            out.append(("oracle: exception %s" % type(e).__name__,
                        traceback.format_exc().strip().splitlines()[-1][:300]))
        finally:
            signal.alarm(0)
        shutil.rmtree(self.scratch, ignore_errors=True)
        if not out and not self.keep:
            shutil.rmtree(base, ignore_errors=True)
        return {"id": subj.id, "repro": subj.repro, "origin": subj.origin, "dir": base,
                "violations": out, "observations": self.observations, "fired": dict(self.fired), "facts": facts,
                "seconds": round(time.time() - t0, 2)}

    def _examine(self, subj, base, orig, out, facts):
        pair = self.check_pair(orig, "check", out)
        self.cs = pair.cs or 65536
        facts.update(qemu=pair.qemu.rc, qcheck=pair.qcheck.rc, ids=sorted(i for i in pair.ids if i),
                     data_file=bool((pair.qc.get("header") or {}).get("external-data-file")))
        if pair.qcheck.rc in (63,) and pair.qemu.rc == 63:
            return
        snaps = self.snapshot_list(orig)
        facts.update(snapshots=len(snaps or []), file=os.path.getsize(os.path.join(orig, IMG)))
        vsize = self.virtual_size(orig)
        readable = vsize <= MAX_GUEST_BYTES
        guest0 = self.read_guest(orig, "orig", snaps) if readable else {}

        # (1) qcheck calls the image usable => QEMU can use it
        if pair.qcheck.rc in (0, 3):
            self.implication1(orig, pair, guest0 if readable else None, "check", out)

        view0, hosts0 = guest_view(orig, snaps)
        aliased = set()
        if view0 is not None:
            try:
                meta = run_repairs.metadata_clusters(os.path.join(orig, IMG))
                aliased = {k for k, c in hosts0.items() if c in meta}
            except Exception:  # noqa: BLE001
                pass
        for mode in ("leaks", "all"):
            self.repair(subj, base, orig, mode, pair, snaps, guest0, view0, aliased, out, facts)

    def implication1(self, d, pair, guest, label, out):
        missing = self.missing_companions(d)
        if missing:
            self.fired["implication1-companions-missing"] += 1
            return
        if "dataFileNameMissing" in pair.ids:
            self.fired["implication1-companions-missing"] += 1  # §2.6/§2.7: QEMU must be told the file
            return
        if "qemuLimitExceeded" in pair.ids:
            self.fired["implication1-qemu-limit"] += 1  # §2.4: valid qcow2 beyond QEMU's limits
            return
        info = self.qemu_run(d, "info", "-f", "qcow2", IMG)
        if info.rc != 0:
            why = [ln for ln in re.sub(r"(to fix\.)(?=\S)", "\\1\n", info.err).splitlines() if ln.strip()]
            out.append(("implication 1 (%s): qcheck exit %s but qemu-img info fails: %s" % (
                label, pair.qcheck.rc, cmp.normalise(why[-1] if why else "")),
                "qcheck ids: %s" % ", ".join(sorted(pair.ids))))
            return
        if guest is None:
            return
        for owner, res in guest.items():
            if not os.path.isfile(res) and "encrypt.key-secret' is required" in res:
                self.fired["implication1-key-needed"] += 1  # §2.7: qcheck needs no key, QEMU's read does
            elif not os.path.isfile(res) and compressed_read_error(d, owner, res):
                # §2.6: neither check decompresses; qemu-img check calls such
                # an image clean too (the pair was compared above).
                self.fired["implication1-compressed-data-not-decoded"] += 1
            elif not os.path.isfile(res):
                out.append(("implication 1 (%s): qcheck exit %s but qemu-img convert cannot read %s: %s" % (
                    label, pair.qcheck.rc, "the active image" if owner == "active" else "a snapshot",
                    cmp.normalise(res)), "qcheck ids: %s" % ", ".join(sorted(pair.ids))))

    def repair(self, subj, base, orig, mode, pair, snaps, guest0, view0, aliased, out, facts):
        label = "-r %s" % mode
        qd = copy_files(orig, os.path.join(base, "qemu-" + mode))
        cd = copy_files(orig, os.path.join(base, "qcheck-" + mode))
        qr = self.qemu_run(qd, "check", "-f", "qcow2", "-r", mode, "--output=json", IMG)
        cr = self.qcheck_run(cd, "-f", "qcow2", "-r", mode, "--output=json")
        qj, cj = qr.json() or {}, cr.json() or {}
        facts["qemu " + label] = qr.rc
        facts["qcheck " + label] = cr.rc
        if cr.rc is None or cr.rc < 0:
            out.append(("%s: qcheck crashed or hung (exit %s)" % (label, cr.rc), cr.err[-300:]))
            return
        rep = cj.get("repair") or {}
        refused = rep.get("refused")
        notes = rep.get("notes", [])
        # (2) QEMU repairs it clean => so does qcheck
        left = sorted({p["id"] for p in cj.get("problems", [])
                       if p.get("severity") in ("corruption", "leak", "error")})
        if qr.rc == 0 and cr.rc != 0:
            named = refused and self.names_problem_id(refused)
            if named:
                self.fired["implication2-refused-naming-id"] += 1
            elif left and set(left) <= cmp.NOT_IN_QEMU_IDS:
                # §2.6: what is left is a corruption QEMU's check does not see
                self.fired["implication2-checks-qemu-does-not-make"] += 1
            elif (qemu_destroyed := self.qemu_changed_guest(qd, guest0, snaps, view0, aliased)):
                # QEMU's "repair" reached exit 0 by changing guest data: no
                # standard for qcheck to meet (reported as an observation).
                self.observations.append(("qemu-img -r %s reaches exit 0 by changing guest data (%s); "
                                          "qcheck exit %s" % (mode, qemu_destroyed, cr.rc),
                                          "qcheck before: %s" % ", ".join(sorted(pair.ids))))
            else:
                what = "refused (%s)" % cmp.normalise(refused) if refused else \
                    "exit %s, left %s" % (cr.rc, ", ".join(left) or "nothing it counts")
                out.append(("implication 2 (%s): qemu-img repairs to exit 0, qcheck %s" % (label, what),
                            "before: qcheck %s; qemu-img fixed %s/%s" % (
                                ", ".join(sorted(pair.ids)) or "-", qj.get("leaks-fixed", 0),
                                qj.get("corruptions-fixed", 0))))
        # Both repaired an image they counted alike, to exit 0: they must say
        # they fixed the same numbers (QEMU's fixed counts are what its
        # repair changed; qcheck's are the counts before minus after).
        # Not with persistent bitmaps: QEMU's read-write open rewrites them
        # and its repair then frees the clusters its own open leaked
        # (differences §5.2).
        bitmaps = ((pair.qc.get("header") or {}).get("autoclear-features", 0) & 1) or \
            {"bitmapsWithoutAutoclear", "bitmapInUse"} & pair.ids
        counted_alike = pair.qm and pair.qc and pair.qemu.rc == pair.qcheck.rc and not bitmaps and all(
            pair.qm.get(k, 0) == pair.qc.get(k, 0) for k in cmp.COUNT_KEYS)
        if counted_alike and qr.rc == 0 and cr.rc == 0:
            self.fired["fixed-counts-compared"] += 1
            for k in ("leaks-fixed", "corruptions-fixed"):
                own = pair.qm.get(k[:-6], 0) - qj.get(k[:-6], 0)  # QEMU's counts before minus after
                if qj.get(k, 0) != own:
                    # QEMU's number is not about the image it checked (it
                    # counts what its own repair broke and fixed again)
                    self.observations.append((
                        "qemu-img -r %s: %s is not its own count before minus after" % (mode, k),
                        "%s %d, %s %d before and %d after (qcheck: %s %d)" % (
                            k, qj.get(k, 0), k[:-6], pair.qm.get(k[:-6], 0), qj.get(k[:-6], 0), k, cj.get(k, 0))))
                elif qj.get(k, 0) != cj.get(k, 0):
                    out.append(("%s: both repair an image they counted alike to exit 0, but %s differs" % (label, k),
                                "qemu-img %s, qcheck %s (before: %s)" % (qj.get(k, 0), cj.get(k, 0), ", ".join(
                                    "%s %s" % (c, pair.qc.get(c, 0)) for c in cmp.COUNT_KEYS))))
        if refused:
            if file_sha256(os.path.join(cd, IMG)) != file_sha256(os.path.join(orig, IMG)):
                out.append(("%s: qcheck refused but changed the file" % label, refused))
            return
        if not rep.get("applied"):
            return
        # the repaired image, checked again by both tools
        after = self.check_pair(cd, "after qcheck " + label, out, human=False)
        for k in ("exit-code",) + cmp.COUNT_KEYS:
            if after.qc and after.qc.get(k, 0) != cj.get(k, 0):
                out.append(("%s: the check qcheck printed after repairing differs from a fresh check (%s)"
                            % (label, k), "%s vs %s" % (cj.get(k, 0), after.qc.get(k, 0))))
        snaps_after = self.snapshot_list(cd)
        changed = file_sha256(os.path.join(cd, IMG)) != file_sha256(os.path.join(orig, IMG))
        guest1 = self.read_guest(cd, "qcheck-" + mode, snaps_after) if guest0 and (
            changed or cr.rc in (0, 3)) else None
        if cr.rc in (0, 3):
            self.implication1(cd, after, guest1, "after qcheck " + label, out)
        # (4) snapshots survive
        self.check_snapshots(label, snaps, snaps_after, notes, out)
        # (3) guest data kept outside the dropped ranges
        self.check_guest(label, orig, cd, guest0, guest1, view0, aliased, notes, rep, pair.cs, out)

    def qemu_changed_guest(self, qd, guest0, snaps, view0, aliased):
        """Which guest data (active, snapshot ids) QEMU's repair changed; ""
        if none. Through qemu-img convert where it read the owner before,
        else through the pure-Python reader (which skips the clusters it
        cannot read, so a snapshot with one broken entry is still compared
        everywhere else)."""
        changed, compared = [], set()
        after = self.read_guest(qd, "qemu-repaired", snaps) if guest0 else {}
        for owner, raw0 in (guest0 or {}).items():
            if not os.path.isfile(raw0):
                continue
            compared.add(owner)
            raw1 = after.get(owner)
            skip = [(g * self.cs, g * self.cs + self.cs - 1) for o, g in aliased if o == owner]
            if not raw1 or not os.path.isfile(raw1) or differing_range(raw0, raw1, skip, self.cs) is not None:
                changed.append(owner)
        rest = {k: v for k, v in (view0 or {}).items() if k not in compared}
        if rest:
            view1, _ = guest_view(qd, self.snapshot_list(qd))
            for owner in rest if view1 is not None else ():
                if run_repairs.compare_views({owner: rest[owner]}, view1, [], self.cs, aliased)[0]:
                    changed.append(owner)
        return ", ".join(o if o == "active" else "snapshot " + o for o in changed)

    @staticmethod
    def names_problem_id(text):
        ids = {a or b for a, b in ID_IN_TEXT_RE.findall(text)}
        return bool(ids & KNOWN_IDS)

    def check_snapshots(self, label, before, after, notes, out):
        if before is None:
            return
        keep = len(before)
        cut, fresh = {}, {}
        last = None  # the kind of the previous note, to read "... and N more like the above"
        for n in notes:
            if n.startswith("... and ") and last == "fresh":
                fresh[None] = True  # some fresh ids are not named one by one
            last = "fresh" if SNAPSHOT_FRESH_ID_RE.match(n) else None
            m = SNAPSHOTS_DROPPED_RE.match(n)
            if m:
                keep = int(m.group(2))
            elif SNAPSHOTS_DISCARDED_RE.match(n):
                keep = 0
            m = SNAPSHOT_CUT_RE.match(n)
            if m:
                lost = m.group(2)
                cut[int(m.group(1))] = ({0} if "the id" in lost else set()) | \
                    ({1} if "the name" in lost else set()) | (set(range(5, 8)) if "extra data" in lost else set())
            m = SNAPSHOT_FRESH_ID_RE.match(n)
            if m:
                fresh[int(m.group(1))] = m.group(2)
        def same(k, b, a):
            """A field absent before (None) may be filled in by the repair;
            the id may be the fresh one a note gives; what a note says a
            cut entry lost (its id, name, or the fields of its extra data:
            VM state, disk size, icount) may change."""
            lost = cut.get(k, set())
            renamed = fresh.get(k) == a[0] or (fresh.get(None) and b[0] == "" and a[0] != "")
            if len(b) != len(a) or (b[0] != a[0] and not renamed and 0 not in lost):
                return False
            return all(x is None or x == y or i in lost for i, (x, y) in enumerate(zip(b, a)) if i)
        if after is None:
            out.append(("implication 4 (%s): the snapshot table cannot be read after the repair" % label, ""))
        elif len(after) != len(before[:keep]) or not all(
                same(k, b, a) for k, (b, a) in enumerate(zip(before[:keep], after))):
            lost = [b for b in before[:keep] if b not in after]
            what = "ids or names" if [b[:2] for b in before[:keep]] != [a[:2] for a in after] else \
                "date, VM state, VM clock, disk size or icount"
            out.append(("implication 4 (%s): the snapshot list changed (%s)" % (label, what),
                        "before %s, after %s (the notes keep %d)" % (lost[:3], [a for a in after if a not in before][:3],
                                                                     keep)))

    def check_guest(self, label, orig, cd, guest0, guest1, view0, aliased, notes, rep, cs, out):
        drops, complete = run_repairs.dropped_ranges(notes)
        for d in rep.get("dropped", []) if isinstance(rep.get("dropped"), list) else []:
            owner = str(d.get("snapshot-id", d.get("owner", "active")))
            first = d.get("first", d.get("offset", 0))
            last = d.get("last", first + d.get("length", 1) - 1)
            drops.setdefault(owner, []).append((first, last))
        if file_sha256(os.path.join(cd, IMG)) == file_sha256(os.path.join(orig, IMG)):
            return
        compared = set()
        for owner, raw0 in (guest0 or {}).items():
            raw1 = (guest1 or {}).get(owner)
            if not (os.path.isfile(raw0) and raw1 and os.path.isfile(raw1)):
                continue
            compared.add(owner)
            cs = cs or 65536
            skip = drops.get(owner, []) + [(g * cs, g * cs + cs - 1) for o, g in aliased if o == owner]
            bad = differing_range(raw0, raw1, skip, cs)
            if bad:
                out.append(("implication 3 (%s): guest data changed outside the dropped ranges (qemu-img convert)"
                            % label, "%s: first difference at guest offset 0x%x%s" % (
                                owner, bad, "" if complete else " (notes cut short)")))
        if view0 is None:
            return
        view1, _ = guest_view(cd, self.snapshot_list(cd))
        if view1 is None:
            out.append(("implication 3 (%s): the test reader cannot parse the repaired image" % label, ""))
            return
        view0 = {k: v for k, v in view0.items() if k not in compared}
        if not view0:
            return
        fails, _ = run_repairs.compare_views(view0, view1, notes, cs, aliased)
        for f in fails:
            out.append(("implication 3 (%s): guest data changed outside the dropped ranges (reader)" % label, f))


READ_ERROR_RE = re.compile(r"error while reading at byte (\d+)")


def compressed_read_error(d, owner, error):
    """qemu-img convert failed reading a guest cluster that a compressed L2
    entry maps (its data does not decompress)."""
    m = READ_ERROR_RE.search(error)
    if not m:
        return False
    try:
        with open_image(os.path.join(d, IMG)) as im:
            l1_off, l1_size = im.header.l1_table_offset, im.header.l1_size
            if owner != "active":
                s = [s for s in im.snapshots() if s.id.decode("latin-1") == owner][0]
                l1_off, l1_size = s.l1_table_offset, s.l1_size
            g = int(m.group(1)) // im.cluster_size
            i, j = divmod(g, im.l2_entries)
            if i >= l1_size:
                return False
            l2 = im.read_table(l1_off + 8 * i, 1)[0] & q.OFFSET_MASK
            return bool(l2) and bool(im.read_int(l2 + j * im.l2_entry_size, 8) & q.OFLAG_COMPRESSED)
    except Exception:  # noqa: BLE001
        return False


def guest_view(d, snaps):
    """run_repairs' pure-Python guest view, where it is cheap: the virtual
    size of the image and of every snapshot within MAX_GUEST_BYTES (a
    mutated size field would have it walk 2^60 bytes)."""
    path = os.path.join(d, IMG)
    try:
        with open_image(path) as im:
            sizes = [im.header.size]
            if im.header.nb_snapshots:
                if snaps is None:
                    return None, {}
                sizes += [s.disk_size or 0 for s in im.snapshots()]
            if max(sizes) > MAX_GUEST_BYTES or im.header.l1_size > 1 << 20:
                return None, {}
    except Exception:  # noqa: BLE001
        return None, {}
    return run_repairs.guest_view(path)


class SubjectTimeout(Exception):
    pass


def _timeout(signum, frame):
    raise SubjectTimeout("the subject took more than %d s" % SUBJECT_SECONDS)


def differing_range(a, b, drops, cs):
    """First guest offset where two raw files differ outside `drops`
    ([(first, last)]), or None. A size difference counts from the shorter
    end."""
    with open(a, "rb") as fa, open(b, "rb") as fb:
        off = 0
        while True:
            x, y = fa.read(cs), fb.read(cs)
            if not x and not y:
                return None
            if x != y:
                n = min(len(x), len(y))
                for i in range(max(len(x), len(y))):
                    if i >= n or x[i] != y[i]:
                        pos = off + i
                        if not any(lo <= pos <= hi for lo, hi in drops):
                            return pos
            off += cs


def load_known_ids():
    path = os.path.join(REPO, "checker", "include", "qcheck_problems.def")
    with open(path) as f:
        return set(re.findall(r'QC_PROBLEM\(\s*\w+,\s*\d+,\s*"(\w+)"', f.read()))


KNOWN_IDS = load_known_ids()


# ---- the tasks ---------------------------------------------------------------------

def repro_cmd(args_qcheck, sid, seed_spec="", images="", mutant=None):
    base = "python3 tests/oracle/oracle.py --qcheck %s --only %s --keep" % (args_qcheck, sid)
    if seed_spec:
        base += " --seeds %s" % seed_spec
    if mutant is not None:
        base += " --mutants %d" % (mutant + 1)
    if images:
        base += " --images %s" % images
    return base


def seed_task(args):
    """Build the workload of one seed, its checkpoints and mutants, and
    examine them; returns the reports."""
    qcheck, work, seed, mutants, only, keep = args
    oracle = Oracle(qcheck, work, keep)
    # (one folder per subject when re-examining one: tasks of a seed may run at once)
    wdir = os.path.join(work, "workloads", str(seed) + ("-" + only if only else ""))
    rec, checkpoints = workload.build(seed, wdir)
    bases = [("w%d" % seed, wdir, {"seed": seed})]
    bases += [("w%dc%d" % (seed, i), cp, {"seed": seed, "checkpoint": i}) for i, cp in enumerate(checkpoints)]
    subjects = []
    for sid, d, origin in bases:
        subjects.append(Subject(sid, d, origin, repro_cmd(qcheck, sid, str(seed))))
    for k in range(mutants):
        sid0, d0, origin0 = bases[k % len(bases)]
        sid = "w%dm%d" % (seed, k)
        if only and only != sid:
            continue
        md = os.path.join(work, "mutants", sid)
        copy_files(d0, md)
        what, edits = mutate.mutate(os.path.join(md, IMG), "%s:%d" % (sid0, k))
        origin = dict(origin0, mutant=k, of=sid0, mutations=what, edits=edits)
        subjects.append(Subject(sid, md, origin, repro_cmd(qcheck, sid, str(seed), mutant=k)))
    reports = [oracle.examine(s) for s in subjects if not only or s.id == only]
    for s in subjects:
        if s.id.startswith("w%dm" % seed):
            shutil.rmtree(s.src, ignore_errors=True)
    failed = any(r["violations"] for r in reports)
    if failed or keep:
        dump_json(os.path.join(wdir, "reports.json"), reports)
    else:
        shutil.rmtree(wdir, ignore_errors=True)
    return {"seed": seed, "statuses": rec.get("steps") and len(rec["steps"]), "reports": reports}


def examine_with_mutants(oracle, work, first, mutants, only, origin, repro):
    """Examine the subject `first` and `mutants` mutants of it (ids
    FIRST:mK; origin(k) and repro(k) describe mutant k), then remove the
    mutants' folders; returns the reports."""
    subjects = [first]
    for k in range(mutants):
        sid = "%s:m%d" % (first.id, k)
        md = os.path.join(work, "mutants", sid.replace(":", "_"))
        copy_files(first.src, md)
        what, edits = mutate.mutate(os.path.join(md, IMG), "%s:%d" % (first.id, k))
        subjects.append(Subject(sid, md, dict(origin(k), mutations=what, edits=edits), repro(k)))
    reports = [oracle.examine(s) for s in subjects if not only or s.id == only]
    for s in subjects[1:]:
        shutil.rmtree(s.src, ignore_errors=True)
    return reports


def file_task(args):
    qcheck, work, path, mutants, only, keep = args
    oracle = Oracle(qcheck, work, keep)
    name = os.path.basename(path)
    src = os.path.join(work, "files", name + ("-" + only.replace(":", "_") if only else ""))
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    copy_sparse(path, os.path.join(src, IMG))
    sid0 = "f:" + name
    first = Subject(sid0, src, {"file": path}, repro_cmd(qcheck, sid0, images=path))
    reports = examine_with_mutants(
        oracle, work, first, mutants, only, lambda k: {"file": path, "mutant": k},
        lambda k: repro_cmd(qcheck, "%s:m%d" % (sid0, k), images=path, mutant=k))
    shutil.rmtree(src, ignore_errors=True)
    return {"file": path, "reports": reports}


def catalogue_task(args):
    """One case of the corruption catalogue (tests/images/cases.py), built
    from its base (already in BASES_DIR) and patched as run_cases does,
    with its companion files beside it, and its mutants."""
    qcheck, work, name, mutants, only, keep = args
    src = prepare_case(work, name, "-" + only.replace(":", "_") if only else "")
    oracle = Oracle(qcheck, work, keep)
    sid0 = "c:" + name
    repro = "python3 tests/oracle/oracle.py --qcheck %s --catalogue %s --only %s --keep" % (qcheck, name, sid0)
    reports = examine_with_mutants(
        oracle, work, Subject(sid0, src, {"case": name}, repro), mutants, only,
        lambda k: {"case": name, "mutant": k}, lambda k: repro + " --mutants %d" % (k + 1))
    return {"case": name, "reports": reports}


def prepare_case(work, name, suffix=""):
    """WORK/catalogue/NAME[SUFFIX]: the case's base (from
    WORK/catalogue-bases), patched, as IMG, with the base's companion
    files."""
    import build_images
    import cases as catalogue
    case = next(c for c in catalogue.CASES if c.name == name)
    base = build_images.BASES[case.base]
    bases = os.path.join(work, "catalogue-bases")
    src = os.path.join(work, "catalogue", name + suffix)
    shutil.rmtree(src, ignore_errors=True)
    os.makedirs(src)
    copy_sparse(os.path.join(bases, base.filename), os.path.join(src, IMG))
    for f in base.companion_files():
        copy_sparse(os.path.join(bases, f), os.path.join(src, f))
    if case.patch:
        with open_image(os.path.join(src, IMG), writable=True) as image:
            case.patch(image)
    return src


def catalogue_cases(filter_text, work, jobs):
    """Names of the catalogue cases whose name contains filter_text (all
    if empty), after building their bases into WORK/catalogue-bases."""
    import build_images
    import cases as catalogue
    names = [c.name for c in catalogue.CASES if filter_text in c.name]
    needed = sorted({c.base for c in catalogue.CASES if c.name in names})
    build_images.build_all(os.path.join(work, "catalogue-bases"), needed, jobs)
    return names


def parse_seeds(text):
    out = []
    for part in text.split(","):
        if "-" in part:
            a, b = part.split("-")
            out += range(int(a), int(b) + 1)
        elif part:
            out.append(int(part))
    return out


def image_files(paths):
    out = []
    for p in paths:
        if os.path.isdir(p):
            for root, _, files in os.walk(p):
                out += [os.path.join(root, f) for f in sorted(files)
                        if not f.endswith((".md", ".txt", ".json")) and not f.startswith(".")]
        elif os.path.isfile(p):
            out.append(p)
    return sorted(out)


# ---- the report ----------------------------------------------------------------------

def summarise(results, elapsed, out=sys.stdout):
    """Print the classified report; returns the number of subjects with
    disagreements."""
    reports = [r for res in results for r in res["reports"]]
    fired = Counter()
    by_class = defaultdict(lambda: defaultdict(list))  # class -> signature -> [(report, detail)]
    for r in reports:
        fired.update(r["fired"])
        for sig, detail in r["violations"]:
            by_class[classify.classify(r, sig, detail)][sig].append((r, detail))
    titles = classify.titles()
    order = sorted(by_class, key=lambda c: (c == "new", c))
    for c in order:
        sigs = by_class[c]
        subjects = {r["id"] for items in sigs.values() for r, _ in items}
        print("\n=== %s: %s (%d subjects, %d signatures)" % (
            c, titles.get(c, "not classified yet: look at these"), len(subjects), len(sigs)), file=out)
        for sig in sorted(sigs, key=lambda s: (-len(sigs[s]), s)):
            items = sigs[sig]
            print("\n[%d] %s" % (len(items), sig), file=out)
            for r, detail in items[:2]:
                m = r["origin"].get("mutations")
                print("    %s%s: %s" % (r["id"], " (%s)" % "; ".join(m) if m else "", detail[:300]), file=out)
                print("      repro: %s" % r["repro"], file=out)
    obs = defaultdict(list)
    for r in reports:
        for sig, detail in r.get("observations", []):
            obs[cmp.normalise(sig)].append((r, detail))
    if obs:
        print("\n=== observations about qemu-img (not counted against qcheck)", file=out)
        for sig in sorted(obs, key=lambda s: -len(obs[s])):
            r, detail = obs[sig][0]
            print("[%d] %s\n    %s: %s\n      repro: %s" % (len(obs[sig]), sig, r["id"], detail[:200], r["repro"]),
                  file=out)
    print("\nrules needed (how often each deliberate difference explained something):", file=out)
    for name, n in sorted(fired.items(), key=lambda x: -x[1]):
        print("  %6d  %s" % (n, name), file=out)
    kinds = Counter("mutant" if "mutant" in r["origin"] else "checkpoint" if "checkpoint" in r["origin"]
                    else "file" if "file" in r["origin"] else "catalogue case" if "case" in r["origin"]
                    else "generated" for r in reports)
    bad = sum(1 for r in reports if r["violations"])
    nsigs = len({sig for sigs in by_class.values() for sig in sigs})
    print("\n%d subjects (%s) in %.0f s: %d with disagreements in %d signatures, %d classes (%s)" % (
        len(reports), ", ".join("%d %s" % (n, k) for k, n in sorted(kinds.items())), elapsed, bad, nsigs,
        len(by_class), ", ".join("%s %d" % (c, len({r["id"] for items in by_class[c].values() for r, _ in items}))
                                 for c in order)), file=out)
    return bad


def recheck(args):
    """Re-examine selected subjects of an earlier run with the code as it is
    now (a rule narrowed or a check added since), and print the merged
    report."""
    with open(args.recheck) as f:
        results = json.load(f)
    rules = set(filter(None, args.rules.split(",")))
    picked = {}
    for res in results:
        for r in res["reports"]:
            if r["violations"] or (rules & set(r["fired"])):
                picked[r["id"]] = r
    tasks = []
    for sid, r in picked.items():
        o = r["origin"]
        m = o.get("mutant")
        n = 0 if m is None else m + 1
        if "seed" in o:
            tasks.append((seed_task, (args.qcheck, os.path.abspath(args.work), o["seed"], n, sid, args.keep)))
        elif "case" in o:
            tasks.append((catalogue_task, (args.qcheck, os.path.abspath(args.work), o["case"], n, sid, args.keep)))
        elif "file" in o:
            tasks.append((file_task, (args.qcheck, os.path.abspath(args.work), o["file"], n, sid, args.keep)))
    if any(f is catalogue_task for f, _ in tasks):
        catalogue_cases("", os.path.abspath(args.work), args.jobs)
    print("recheck: %d of %d subjects" % (len(tasks), sum(len(res["reports"]) for res in results)), flush=True)
    t0 = time.time()
    fresh = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        for res in pool.map(_run_task, tasks):
            for r in res["reports"]:
                fresh[r["id"]] = r
    for res in results:
        res["reports"] = [fresh.get(r["id"], r) for r in res["reports"]]
    if args.json:
        dump_json(args.json, results)
    return 1 if summarise(results, time.time() - t0) else 0


def _run_task(task):
    f, a = task
    return f(a)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--qcheck")
    ap.add_argument("--seeds", default="")
    ap.add_argument("--mutants", type=int, default=0)
    ap.add_argument("--images", nargs="*", default=[])
    ap.add_argument("--catalogue", nargs="?", const="", metavar="FILTER",
                    help="the corruption catalogue of tests/images/cases.py (cases whose name contains FILTER)")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--work", default=os.path.join("/tmp", "qcheck-oracle"))
    ap.add_argument("--only")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--fast", action="store_true", help="the CI slice: --seeds %s --mutants %d" % (
        FAST_SEEDS, FAST_MUTANTS))
    ap.add_argument("--json", help="write every report to this file")
    ap.add_argument("--summarise", metavar="JSON", nargs="+", help="print the report of --json files again (merged)")
    ap.add_argument("--recheck", metavar="JSON",
                    help="examine again, with this code, the subjects of a --json file that disagreed or needed "
                         "one of --rules (default: all rules); the others are kept as they were")
    ap.add_argument("--rules", default="", help="comma-separated rule names for --recheck")
    args = ap.parse_args()
    if args.summarise:
        results = []
        for path in args.summarise:
            with open(path) as f:
                results += json.load(f)
        return 1 if summarise(results, 0) else 0
    if args.recheck:
        return recheck(args)
    if args.fast:
        args.seeds, args.mutants = args.seeds or FAST_SEEDS, args.mutants or FAST_MUTANTS
    if not args.qcheck or not os.access(args.qcheck, os.X_OK):
        print("%s is not an executable" % args.qcheck)
        return 1
    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    tasks = []
    seeds = parse_seeds(args.seeds)
    if args.only and args.only.startswith("w"):
        seeds = [int(re.match(r"w(\d+)", args.only).group(1))]
    tasks += [(seed_task, (args.qcheck, work, s, args.mutants, args.only, args.keep)) for s in seeds]
    tasks += [(file_task, (args.qcheck, work, os.path.abspath(p), args.mutants, args.only, args.keep))
              for p in image_files(args.images)
              if not args.only or not args.only.startswith("f:") or args.only.split(":")[1] == os.path.basename(p)]
    if args.catalogue is not None:
        names = catalogue_cases(args.catalogue, work, args.jobs)
        tasks += [(catalogue_task, (args.qcheck, work, n, args.mutants, args.only, args.keep)) for n in names
                  if not args.only or args.only.split(":")[1] == n]
    if not tasks:
        print("nothing to do: give --seeds, --images or --fast")
        return 1
    print("oracle: %d tasks, qcheck %s, work %s" % (len(tasks), args.qcheck, work), flush=True)
    t0 = time.time()
    results = []
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(f, a) for f, a in tasks]
        for fut in futures:
            res = fut.result()
            results.append(res)
            print("done %s: %d subjects, %.0f s" % (res.get("seed", res.get("file", res.get("case"))),
                                                   len(res["reports"]),
                                                   sum(r["seconds"] for r in res["reports"])), flush=True)
            if args.json:  # after every task, so an interrupted run still has its results
                dump_json(args.json, results)
            for r in res["reports"]:
                for sig, detail in r["violations"]:
                    print("DISAGREE %s | %s | %s" % (r["id"], sig, detail[:200]), flush=True)
    bad = summarise(results, time.time() - t0)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
