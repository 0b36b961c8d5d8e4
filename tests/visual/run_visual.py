#!/usr/bin/env python3
"""`qcheck --map=FILE.svg --report=FILE.html` on real images, and the report
rendered by a real headless browser.

    run_visual.py QCHECK WORKDIR

Images are built in WORKDIR with qemu-img / qemu-io and patched with
layout/qcow2lib.py:

* clean: data written with qemu-io, `qemu-img convert -c` (compressed
  clusters), then more data written uncompressed;
* snapbitmap: data, an internal snapshot (`qemu-img snapshot -c`), a
  persistent bitmap (`qemu-img bitmap --add`), more data after both;
* leaky: clean, then three clusters appended with refcount 1, the middle
  one set back to 0: two leaks, two findings;
* mixed: leaky, and a data cluster's refcount set to 0 (refcountZeroInUse).

For each: the exit status; the SVG parses as XML (python's xml.etree, and
xmllint when installed), has no script and no external reference, has a
legend entry for every class a cell shows and legend counts that add up to
the file's clusters; the cells at the offsets the header and tables give
are of the right class (header, L1, L2, refcount table and block, data,
compressed, snapshot table and L1, bitmap), the patched clusters are
leaked or corrupt; the HTML refers to nothing outside itself and has one
findings row per finding of the JSON output; `--output=json` prints the
same JSON with and without --map/--report. Then the refusals: a file that
cannot be written (exit 1 for a clean image, the status kept otherwise,
the file named on stderr), an image that cannot be opened (exit 1, no
files, no message about them), --map with -r.

Then Debian's chromium (headless) renders the mixed report: with
#problem=refcountLeak&sort=offset&dir=desc the script must have run
(body data-ready), hidden the other problem's row, and ordered the leak
rows by decreasing offset; with #sort=code, ordered every row by code. A
screenshot (1280x2000) is kept in WORKDIR and its path printed.

Then a batch: `qcheck --timeout=5 --report=batch.html --map=batch-maps`
on clean, leaky, mixed, a missing path, a text file and a FIFO (which
hangs its worker until the timeout). The exit status is the worst
verdict's (docs/fleet.md); batch-maps holds NAME.svg for each file that
was opened (the text file's says "No map: not a qcow2 image"), each with
the cells the single-image checks expect; the page has one summary row per
image in the order given with the batch's verdict words, and "-" for the
counts of the images whose check reached no figures (missing, text,
timeout), one section per opened image (the others' rows link nowhere),
each with the findings rows of `qcheck --output=json` for that image and
its counts, and nothing external. Chromium renders it with
#problem=refcountLeak: the script ran, in every image's table the leak
rows show and the others are hidden, each section's map is in the
rendered page with all its cells; a screenshot (batch-report.png) is kept
next to the other. Refused with exit 1 and nothing written: two images of
one NAME in different folders, and --map naming a file.

Without chromium the test is skipped (exit 77): it never passes without it.
"""

import html.parser
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True  # keep the source tree clean under CTest
sys.path.insert(0, os.path.join(HERE, "..", "..", "layout"))
import qcow2lib as q  # noqa: E402

SVG_NS = "{http://www.w3.org/2000/svg}"
MB = 1 << 20
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL: " + what)
    return cond


def run(argv, **kw):
    return subprocess.run(argv, capture_output=True, text=True, **kw)


def must(argv):
    r = run(argv)
    if r.returncode != 0:
        sys.exit("cannot build an image: %s: %s%s" % (" ".join(argv), r.stdout, r.stderr))


# ---- images ------------------------------------------------------------------

def build_clean(path):
    src = path + ".src"
    must(["qemu-img", "create", "-f", "qcow2", src, "64M"])
    must(["qemu-io", "-c", "write -P 0x11 0 3M", "-c", "write -P 0x22 20M 1M", src])
    must(["qemu-img", "convert", "-c", "-O", "qcow2", src, path])
    os.unlink(src)
    must(["qemu-io", "-c", "write -P 0x33 40M 2M", path])


def build_snapbitmap(path):
    must(["qemu-img", "create", "-f", "qcow2", path, "64M"])
    must(["qemu-io", "-c", "write -P 1 0 2M", path])
    must(["qemu-img", "snapshot", "-c", "s1", path])
    must(["qemu-img", "bitmap", "--add", path, "b0"])
    must(["qemu-io", "-c", "write -P 2 1M 2M", path])


def build_leaky(path):
    build_clean(path)
    with q.Image(path, writable=True) as im:
        first = im.append_clusters(count=3)
        im.set_refcount(first // im.cluster_size + 1, 0)
    return [first, first + 2 * 65536]


def build_mixed(path):
    leaks = build_leaky(path)
    with q.Image(path, writable=True) as im:
        victim = im.data_refs()[5].host_offset
        im.set_refcount(victim // im.cluster_size, 0)
    return leaks, victim


# ---- the SVG -----------------------------------------------------------------

class SvgMap:
    def __init__(self, path):
        self.tree = ET.parse(path)
        self.root = self.tree.getroot()
        self.cells = []  # (first, count, class)
        self.legend = {}
        for e in self.root.iter():
            if e.tag == SVG_NS + "rect" and e.get("data-first") is not None:
                self.cells.append((int(e.get("data-first")), int(e.get("data-cells")),
                                   e.get("data-class")))
            if e.tag == SVG_NS + "g" and e.get("class") == "legend":
                self.legend[e.get("data-class")] = int(e.get("data-clusters"))
        self.per_cell = int(self.root.get("data-clusters-per-cell"))
        self.cluster_size = int(self.root.get("data-cluster-size"))
        self.clusters = int(self.root.get("data-clusters"))

    def class_at(self, offset):
        cell = offset // self.cluster_size // self.per_cell
        for first, count, cls in self.cells:
            if first <= cell < first + count:
                return cls
        return None


def external_references(text):
    """What in a page or picture would be fetched from elsewhere."""
    found = []
    for pat in (r"https?://", r"\bsrc\s*=", r"<link\b", r"@import", r"url\(", r"xlink:href",
                r"\bhref\s*=\s*[\"'](?!#)"):
        if re.search(pat, text, re.I):
            found.append(pat)
    return found


def check_svg(name, path, expect):
    try:
        m = SvgMap(path)
    except ET.ParseError as e:
        check(False, "%s: the SVG does not parse: %s" % (name, e))
        return None
    check(m.root.tag == SVG_NS + "svg", "%s: the root is %s, not svg" % (name, m.root.tag))
    if shutil.which("xmllint"):
        r = run(["xmllint", "--noout", path])
        check(r.returncode == 0, "%s: xmllint: %s" % (name, r.stderr))
    text = open(path, encoding="ascii").read()
    check("<script" not in text, "%s: the SVG has a script" % name)
    # The namespace name is not a reference: nothing else may be.
    check(not external_references(text.replace('xmlns="http://www.w3.org/2000/svg"', "")),
          "%s: the SVG refers outside itself: %s" % (name, external_references(text)))
    check(m.cells, "%s: the map has no cells" % name)
    shown = {cls for _, _, cls in m.cells}
    check(shown <= set(m.legend), "%s: classes without a legend entry: %s"
          % (name, sorted(shown - set(m.legend))))
    check(sum(m.legend.values()) == m.clusters, "%s: the legend counts %d clusters, the file %d"
          % (name, sum(m.legend.values()), m.clusters))
    covered = sum(count for _, count, _ in m.cells)
    check(covered == -(-m.clusters // m.per_cell), "%s: %d cells drawn for %d clusters"
          % (name, covered, m.clusters))
    for offset, cls, what in expect:
        got = m.class_at(offset)
        check(got == cls, "%s: the cell of %s (0x%x) is %s, not %s" % (name, what, offset, got, cls))
    return m


def structure_offsets(path, snapshots=False, bitmaps=False, compressed=False):
    """(offset, class, what) of the structures the image's header and tables
    place."""
    with q.Image(path) as im:
        cs = im.cluster_size
        h = im.header
        out = [(0, "header", "the header"),
               (h.l1_table_offset, "l1", "the active L1 table"),
               (h.refcount_table_offset, "refcount-table", "the refcount table"),
               (im.reftable()[0] & q.REFT_OFFSET_MASK, "refcount-block", "refcount block 0"),
               (im.l1()[0] & q.OFFSET_MASK, "l2", "the L2 table of L1 entry 0")]
        data = [r for r in im.data_refs()]
        out.append((data[-1].host_offset, "data", "a data cluster"))
        if compressed:
            c = im.compressed_refs()
            check(c, "%s: no compressed cluster" % path)
            if c:
                first, _ = im.compressed_range(c[0].entry)
                out.append((first // cs * cs, "compressed", "a compressed cluster"))
        if snapshots:
            out.append((h.snapshots_offset, "snapshot-table", "the snapshot table"))
            out.append((im.snapshots()[0].l1_table_offset, "snapshot-l1", "the snapshot's L1 table"))
        if bitmaps:
            ext = im.extension(q.EXT_BITMAPS)
            directory = q.BITMAPS_EXT.unpack(ext.data[:q.BITMAPS_EXT.size])[3]
            out.append((directory, "bitmap", "the bitmap directory"))
    return out


# ---- the HTML ----------------------------------------------------------------

class Rows(html.parser.HTMLParser):
    """The findings rows of a page, in order: (problem id, whether it is
    hidden, its cells' text), and the attributes of body and the tables.
    For a page of several images also: the summary rows (attributes, link,
    cells' text), the sections' attributes, the index of the section each
    findings row is in, and per section its maps' cells and text."""

    def __init__(self):
        super().__init__()
        self.rows, self.body, self.tables, self.map_rects = [], {}, [], 0
        self.summary, self.sections, self.row_section = [], [], []
        self.section_rects, self.section_svgs, self.section_text = {}, {}, {}
        self._in_findings = self._in_summary = False
        self._row = None
        self._link = None
        self._cells = []
        self._text = None
        self._section = None

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "section" and "image" in a.get("class", ""):
            self.sections.append(a)
            self._section = int(a["data-index"])
        elif tag == "table" and "summary" in a.get("class", ""):
            self._in_summary = True
        elif tag == "table" and "findings" in a.get("class", ""):
            self.tables.append(a)
            self._in_findings = True
        elif tag == "tr" and ((self._in_findings and "data-problem" in a) or
                              (self._in_summary and "data-verdict" in a)):
            self._row = a
            self._link = None
            self._cells = []
        elif tag == "td" and self._row is not None:
            self._text = ""
        elif tag == "a" and self._row is not None and self._in_summary:
            self._link = a.get("href")
        elif tag == "svg" and self._section is not None:
            self.section_svgs[self._section] = self.section_svgs.get(self._section, 0) + 1
        elif tag == "rect" and "data-first" in a:
            self.map_rects += 1
            if self._section is not None:
                self.section_rects[self._section] = self.section_rects.get(self._section, 0) + 1

    def handle_endtag(self, tag):
        if tag == "table":
            self._in_findings = self._in_summary = False
        elif tag == "section":
            self._section = None
        elif tag == "td" and self._text is not None:
            self._cells.append(self._text.strip())
            self._text = None
        elif tag == "tr" and self._row is not None and self._in_summary:
            self.summary.append((self._row, self._link, self._cells))
            self._row = None
        elif tag == "tr" and self._row is not None:
            self.rows.append((self._row["data-problem"], "hidden" in self._row, self._cells))
            self.row_section.append(self._section)
            self._row = None

    def handle_data(self, data):
        if self._text is not None:
            self._text += data
        if self._section is not None:
            self.section_text[self._section] = self.section_text.get(self._section, "") + data


def parse_rows(text):
    p = Rows()
    p.feed(text)
    return p


def check_html(name, path, nb_findings):
    text = open(path, encoding="ascii").read()
    check(text.startswith("<!DOCTYPE html>"), "%s: the report is not an HTML document" % name)
    check(not external_references(text), "%s: the report refers outside itself: %s"
          % (name, external_references(text)))
    p = parse_rows(text)
    check(len(p.rows) == nb_findings, "%s: %d findings rows, %d findings in the JSON output"
          % (name, len(p.rows), nb_findings))
    check(p.map_rects > 0, "%s: the report has no map" % name)
    check(text.count("<script>") == 1, "%s: not exactly one inline script" % name)


# ---- running qcheck -------------------------------------------------------------

def qcheck_visual(qcheck, work, name, image, expect_status):
    svg = os.path.join(work, name + ".svg")
    page = os.path.join(work, name + ".html")
    for f in (svg, page):
        if os.path.exists(f):
            os.unlink(f)
    r = run([qcheck, "--map=" + svg, "--report=" + page, image])
    check(r.returncode == expect_status, "%s: exit %d, expected %d\n%s"
          % (name, r.returncode, expect_status, r.stderr))
    plain = run([qcheck, "--output=json", image])
    both = run([qcheck, "--output=json", "--map=" + svg + ".2", "--report=" + page + ".2", image])
    check(plain.stdout == both.stdout and plain.returncode == both.returncode,
          "%s: --map/--report change the JSON output" % name)
    check(os.path.exists(svg + ".2") and os.path.exists(page + ".2"),
          "%s: no files written in JSON mode" % name)
    findings = json.loads(plain.stdout).get("problems", [])
    return svg, page, len(findings)


def chromium_checks(browser, work, page):
    url = "file://" + os.path.abspath(page)

    def dom(fragment):
        r = run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                 url + fragment], timeout=180)
        check(r.returncode == 0, "chromium --dump-dom failed: %s" % r.stderr[-2000:])
        return parse_rows(r.stdout)

    def offset(row):
        return int(row[2][4], 16)

    d = dom("")
    check(d.body.get("data-ready") == "1", "rendered page: the script did not run")
    check(d.map_rects > 0, "rendered page: no map drawn")
    check(len(d.rows) == 3 and not any(h for _, h, _ in d.rows),
          "rendered page: expected 3 visible findings rows, got %s" % d.rows)
    check(d.tables and d.tables[0].get("data-visible") == "3",
          "rendered page: data-visible %s, not 3" % (d.tables[0].get("data-visible") if d.tables else None))

    d = dom("#problem=refcountLeak&sort=offset&dir=desc")
    visible = [r for r in d.rows if not r[1]]
    check(d.body.get("data-filter") == "refcountLeak", "filter by problem id did not run")
    check([r[0] for r in visible] == ["refcountLeak", "refcountLeak"],
          "filter: visible rows %s" % [r[0] for r in visible])
    check(all(h for p, h, _ in d.rows if p != "refcountLeak"), "filter: another problem's row shows")
    check(d.tables and d.tables[0].get("data-visible") == "2", "filter: data-visible is not 2")
    check(d.tables and d.tables[0].get("data-sorted") == "offset:desc", "sort by offset did not run")
    check(len(visible) == 2 and offset(visible[0]) > offset(visible[1]),
          "sort: leak rows not by decreasing offset: %s" % visible)

    d = dom("#sort=code&dir=asc")
    codes = [int(r[2][0]) for r in d.rows]
    check(codes == sorted(codes) and codes[0] == 604 and codes[-1] == 606,
          "sort by code: %s" % codes)

    screenshot(browser, url, os.path.join(work, "report.png"), 2000, "screenshot")


def screenshot(browser, url, shot, height, what):
    """The rendered page as a PNG at `shot`, kept as the test's artifact."""
    if os.path.exists(shot):
        os.unlink(shot)
    r = run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--screenshot=" + shot, "--window-size=1280,%d" % height, url], timeout=180)
    ok = os.path.exists(shot) and open(shot, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    check(ok and os.path.getsize(shot) > 10000, "no %s: %s" % (what, r.stderr[-2000:]))
    print("%s: %s" % (what, shot))


# ---- a batch --------------------------------------------------------------------

def json_findings_row(p):
    """A finding of the JSON output as the page's row shows it."""
    offset = "0x%x" % p["offset"] if "offset" in p else ""
    return [str(p["code"]), p["id"], p["severity"], p["object"], offset, p["message"]]


def single_image(qcheck, image):
    """What `qcheck --output=json IMAGE` says of an image: its exit status,
    its counts (None where the check reached none) and findings rows."""
    r = run([qcheck, "--output=json", image])
    obj = json.loads(r.stdout) if r.stdout.strip() else {}
    counts = None
    if obj.get("format") == "qcow2":
        counts = [str(obj.get(k, 0)) for k in ("leaks", "corruptions", "check-errors")]
    return r.returncode, counts, [json_findings_row(p) for p in obj.get("problems", [])]


def batch_checks(qcheck, browser, work, images):
    """`qcheck --report=PAGE --map=DIR IMAGE...` on `images`: (path, batch
    verdict, what the map's cells must be: a list for check_svg, "none" for
    a file that is not qcow2 (a map without cells), None for no map)."""
    maps = os.path.join(work, "batch-maps")
    page = os.path.join(work, "batch.html")
    shutil.rmtree(maps, ignore_errors=True)
    os.makedirs(maps)
    if os.path.exists(page):
        os.unlink(page)
    paths = [path for path, _, _ in images]
    # The fifo hangs its worker until --timeout; the rest take well under a second.
    r = run([qcheck, "-q", "--timeout=5", "--report=" + page, "--map=" + maps] + paths,
            timeout=300)
    order = {0: 0, 63: 1, 3: 2, 1: 3, 2: 4}  # docs/fleet.md: 2 > 1 > 3 > 63 > 0
    word_status = {"clean": 0, "in-use": 0, "unsupported": 63, "leaks": 3, "failed": 1,
                   "timeout": 1, "corrupt": 2}
    expect_status = max((word_status[w] for _, w, _ in images), key=order.get)
    check(r.returncode == expect_status, "batch: exit %d, expected %d\n%s%s"
          % (r.returncode, expect_status, r.stdout, r.stderr))
    check("cannot write" not in r.stdout + r.stderr,
          "batch: a file reported as not written: %s%s" % (r.stdout, r.stderr))

    # The maps: DIR/NAME.svg for each image that was opened, nothing else.
    names = [os.path.basename(p) + ".svg" for p, _, m in images if m is not None]
    check(sorted(os.listdir(maps)) == sorted(names), "batch: the maps are %s, expected %s"
          % (sorted(os.listdir(maps)), sorted(names)))
    for path, _, expect in images:
        svg = os.path.join(maps, os.path.basename(path) + ".svg")
        if expect == "none":
            text = open(svg, encoding="ascii").read() if os.path.exists(svg) else ""
            try:
                m = SvgMap(svg)
                check(not m.cells and "No map: not a qcow2 image" in text,
                      "batch: %s: the map of a file that is not qcow2 has cells or no reason" % svg)
            except (ET.ParseError, OSError) as e:
                check(False, "batch: %s does not parse: %s" % (svg, e))
        elif expect is not None and os.path.exists(svg):
            check_svg("batch " + os.path.basename(path), svg, expect)

    # The page: one summary row per image in the order given, one section per
    # image that got a check, each section's findings those of the image.
    text = open(page, encoding="ascii").read()
    check(not external_references(text), "batch: the page refers outside itself: %s"
          % external_references(text))
    check(text.count("<script>") == 1, "batch: not exactly one inline script")
    p = parse_rows(text)
    check(p.body.get("data-images") == str(len(images)), "batch: body data-images %s, not %d"
          % (p.body.get("data-images"), len(images)))
    check(len(p.summary) == len(images), "batch: %d summary rows for %d images"
          % (len(p.summary), len(images)))
    sectioned = [i for i, (_, _, m) in enumerate(images) if m is not None]
    check([int(a["data-index"]) for a in p.sections] == sectioned,
          "batch: sections of images %s, expected %s"
          % ([a.get("data-index") for a in p.sections], sectioned))
    expected_rows = []
    for i, (path, word, expect) in enumerate(images):
        if i >= len(p.summary):
            break
        # The fifo would hang a check of its own: its status is the verdict's.
        status, counts, findings = (single_image(qcheck, path) if word != "timeout"
                                    else (word_status[word], None, []))
        attrs, link, cells = p.summary[i]
        shown = counts if expect is not None and expect != "none" else ["-", "-", "-"]
        want = [path, word, str(status)] + shown
        check(cells[:6] == want and attrs.get("data-verdict") == word,
              "batch: summary row %d is %s, expected %s" % (i, cells[:6], want))
        sections = [a for a in p.sections if a["data-index"] == str(i)]
        if expect is None:
            check(not sections, "batch: %s never reached its check and has a section" % path)
            check(link is None, "batch: the row of %s links to a section it has not (%s)"
                  % (path, link))
            continue
        check(link == "#image-%d" % i and sections and sections[0].get("id") == "image-%d" % i,
              "batch: the row of %s links to %s, its section is %s"
              % (path, link, sections and sections[0].get("id")))
        check(sections and sections[0].get("data-file") == path and
              sections[0].get("data-verdict") == word,
              "batch: the section of %s is %s" % (path, sections))
        got = [cells for (_, _, cells), at in zip(p.rows, p.row_section) if at == i]
        check(got == findings, "batch: %s: findings rows\n  %s\nnot those of its JSON output\n  %s"
              % (path, got, findings))
        expected_rows += [(i, f[1]) for f in findings]
        section_html = re.search(r'<section [^>]*id="image-%d".*?</section>' % i, text, re.S)
        facts = re.findall(r"<dt>(Leaks|Corruptions|Check errors)</dt><dd>([^<]*)</dd>",
                           section_html.group(0) if section_html else "")
        check([v for _, v in facts] == shown, "batch: the section of %s counts %s, expected %s"
              % (path, facts, shown))
        if expect == "none":
            check("No map: not a qcow2 image" in p.section_text.get(i, "") and
                  not p.section_rects.get(i), "batch: the section of %s has a map or no reason"
                  % path)
        else:
            check(p.section_rects.get(i, 0) > 0, "batch: the section of %s has no map" % path)
    check(len(p.rows) == len(expected_rows), "batch: %d findings rows, the images have %d"
          % (len(p.rows), len(expected_rows)))
    batch_chromium_checks(browser, work, page, p, expected_rows)

    # Refusals: two images named alike, --map naming a file.
    twin_dir = os.path.join(work, "batch-twin")
    os.makedirs(twin_dir, exist_ok=True)
    twin = os.path.join(twin_dir, os.path.basename(paths[0]))
    shutil.copyfile(paths[0], twin)
    shutil.rmtree(maps)
    os.makedirs(maps)
    os.unlink(page)
    r = run([qcheck, "--report=" + page, "--map=" + maps, paths[0], twin])
    check(r.returncode == 1 and os.path.basename(twin) in r.stderr and not os.listdir(maps)
          and not os.path.exists(page) and not r.stdout,
          "batch, two images of one name: exit %d, maps %s, page %s, %s%s"
          % (r.returncode, os.listdir(maps), os.path.exists(page), r.stdout, r.stderr))
    not_dir = os.path.join(work, "batch-not-a-dir.svg")
    with open(not_dir, "w") as f:
        f.write("kept\n")
    r = run([qcheck, "--map=" + not_dir, paths[0], paths[1]])
    check(r.returncode == 1 and "--map" in r.stderr and not r.stdout and
          open(not_dir).read() == "kept\n",
          "batch, --map naming a file: exit %d, %s%s" % (r.returncode, r.stdout, r.stderr))


def batch_chromium_checks(browser, work, page, static, expected_rows):
    """The batch page in chromium: the script ran, a problem filter in the
    address hides other problems' rows in every image's table, each
    section's map is in the rendered page with its cells."""
    url = "file://" + os.path.abspath(page)

    def dom(fragment):
        r = run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--dump-dom",
                 url + fragment], timeout=180)
        check(r.returncode == 0, "chromium --dump-dom failed: %s" % r.stderr[-2000:])
        return parse_rows(r.stdout)

    d = dom("#problem=refcountLeak")
    check(d.body.get("data-ready") == "1", "batch page: the script did not run")
    check(d.body.get("data-filter") == "refcountLeak", "batch page: filter by problem id did not run")
    got = [(at, pid, hidden) for (pid, hidden, _), at in zip(d.rows, d.row_section)]
    want = [(at, pid, pid != "refcountLeak") for at, pid in expected_rows]
    check(got == want, "batch page, #problem=refcountLeak: rows (image, problem, hidden)\n  %s\n"
          "expected\n  %s" % (got, want))
    check(any(not h for _, _, h in want) and any(h for _, _, h in want),
          "batch page: the images give no row to show and one to hide: %s" % want)
    visible = [t.get("data-visible") for t in d.tables]
    want_visible = [str(sum(1 for at, pid in expected_rows
                            if at == int(a["data-index"]) and pid == "refcountLeak"))
                    for a in static.sections]
    check(visible == want_visible, "batch page: tables' data-visible %s, expected %s"
          % (visible, want_visible))
    for a in static.sections:
        i = int(a["data-index"])
        check(d.section_svgs.get(i) == 1 and
              d.section_rects.get(i, 0) == static.section_rects.get(i, 0),
              "batch page: section %d: %s svg with %s cells rendered, the page has %s"
              % (i, d.section_svgs.get(i), d.section_rects.get(i, 0),
                 static.section_rects.get(i, 0)))

    screenshot(browser, url, os.path.join(work, "batch-report.png"), 3000, "batch screenshot")


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    qcheck, work = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
    browser = shutil.which("chromium")
    if not browser:
        print("SKIP: chromium is not installed (Debian package chromium)")
        return 77
    os.makedirs(work, exist_ok=True)

    clean = os.path.join(work, "clean.qcow2")
    build_clean(clean)
    svg, page, n = qcheck_visual(qcheck, work, "clean", clean, 0)
    check_svg("clean", svg, structure_offsets(clean, compressed=True))
    check_html("clean", page, n)

    snap = os.path.join(work, "snapbitmap.qcow2")
    build_snapbitmap(snap)
    svg, page, n = qcheck_visual(qcheck, work, "snapbitmap", snap, 0)
    check_svg("snapbitmap", svg, structure_offsets(snap, snapshots=True, bitmaps=True))
    check_html("snapbitmap", page, n)

    leaky = os.path.join(work, "leaky.qcow2")
    leaks = leaky_leaks = build_leaky(leaky)
    svg, page, n = qcheck_visual(qcheck, work, "leaky", leaky, 3)
    m = check_svg("leaky", svg, structure_offsets(leaky, compressed=True) +
                  [(o, "leaked", "a leaked cluster") for o in leaks] +
                  [(leaks[0] + 65536, "free", "the cluster between the leaks")])
    if m:
        check(m.legend.get("leaked") == 2, "leaky: legend counts %s leaked clusters"
              % m.legend.get("leaked"))
    check_html("leaky", page, n)

    mixed = os.path.join(work, "mixed.qcow2")
    leaks, victim = build_mixed(mixed)
    svg, page, n = qcheck_visual(qcheck, work, "mixed", mixed, 2)
    check_svg("mixed", svg, [(o, "leaked", "a leaked cluster") for o in leaks] +
              [(victim, "corrupt", "the data cluster with refcount 0")])
    check_html("mixed", page, n)
    check(n == 3, "mixed: %d findings, expected 3 (two leaks, one refcountZeroInUse)" % n)

    # A file that cannot be written: named on stderr; 1 for a clean image,
    # the check's own status otherwise.
    bad = os.path.join(work, "no-such-dir", "x.svg")
    r = run([qcheck, "--map=" + bad, clean])
    check(r.returncode == 1 and bad in r.stderr and "No such file" in r.stderr,
          "unwritable map, clean image: exit %d, %s" % (r.returncode, r.stderr))
    r = run([qcheck, "-q", "--report=" + bad, leaky])
    check(r.returncode == 3 and bad in r.stderr,
          "unwritable report, leaky image: exit %d, %s" % (r.returncode, r.stderr))
    # An image that cannot be opened: no files, and nothing said of them.
    gone_svg, gone_page = os.path.join(work, "gone.svg"), os.path.join(work, "gone.html")
    r = run([qcheck, "--map=" + gone_svg, "--report=" + gone_page,
             os.path.join(work, "no-such-image.qcow2")])
    check(r.returncode == 1 and "cannot write" not in r.stderr and
          not os.path.exists(gone_svg) and not os.path.exists(gone_page),
          "missing image: exit %d, files %s, %s" % (r.returncode, [os.path.exists(f) for f in
                                                  (gone_svg, gone_page)], r.stderr))
    r = run([qcheck, "-r", "leaks", "--map=" + os.path.join(work, "r.svg"), leaky])
    check(r.returncode == 1 and "--map" in r.stderr and not os.path.exists(os.path.join(work, "r.svg")),
          "--map with -r: exit %d, %s" % (r.returncode, r.stderr))

    chromium_checks(browser, work, os.path.join(work, "mixed.html"))

    text_file = os.path.join(work, "notes.txt")
    with open(text_file, "w") as f:
        f.write("not an image\n")
    fifo = os.path.join(work, "hangs.qcow2")
    if not os.path.exists(fifo):
        os.mkfifo(fifo)
    batch_checks(qcheck, browser, work, [
        (clean, "clean", structure_offsets(clean, compressed=True)),
        (leaky, "leaks", [(o, "leaked", "a leaked cluster") for o in leaky_leaks]),
        (mixed, "corrupt", [(o, "leaked", "a leaked cluster") for o in leaks] +
         [(victim, "corrupt", "the data cluster with refcount 0")]),
        (os.path.join(work, "no-such-image.qcow2"), "failed", None),
        (text_file, "unsupported", "none"),
        (fifo, "timeout", None),
    ])

    if failures:
        print("%d failures" % len(failures))
        return 1
    print("PASS")
    return 0


if __name__ == "__main__":
    sys.exit(main())
