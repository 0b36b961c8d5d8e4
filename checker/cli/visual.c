/*
 * --map and --report: the host map as SVG, the HTML report (visual.h says
 * how a page is put together from sections).
 *
 * Everything written is ASCII: names and messages go through one escaper
 * that turns markup characters into entities and any byte outside
 * printable ASCII into "\xNN" text, so a file name of any bytes makes
 * valid XML and HTML.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "visual.h"

/* ---- colours and labels -------------------------------------------------- */

typedef struct class_style {
    const char *fill;
    const char *label; /* for people; qc_map_class_name is the attribute value */
} class_style;

static const class_style styles[QC_MAP_CLASSES] = {
    [QC_MAP_FREE] = {"#e9ecef", "free"},
    [QC_MAP_HEADER] = {"#343a40", "header"},
    [QC_MAP_L1] = {"#1864ab", "L1 table"},
    [QC_MAP_L2] = {"#4dabf7", "L2 table"},
    [QC_MAP_REFCOUNT_TABLE] = {"#5f3dc4", "refcount table"},
    [QC_MAP_REFCOUNT_BLOCK] = {"#9775fa", "refcount block"},
    [QC_MAP_SNAPSHOT_TABLE] = {"#0b7285", "snapshot table"},
    [QC_MAP_SNAPSHOT_L1] = {"#66d9e8", "snapshot L1 / L2"},
    [QC_MAP_BITMAP] = {"#c29d4b", "bitmap"},
    [QC_MAP_DATA] = {"#8ce99a", "data"},
    [QC_MAP_COMPRESSED] = {"#2b8a3e", "compressed data"},
    [QC_MAP_LEAKED] = {"#f76707", "leaked"},
    [QC_MAP_ORPHANED] = {"#e64980", "orphaned"},
    [QC_MAP_CORRUPT] = {"#c92a2a", "corrupt"},
    [QC_MAP_OVERLAP] = {"#1a1a1a", "overlap"},
};

/* ---- escaping and formatting --------------------------------------------- */

/* Text or attribute value, escaped for both XML and HTML. */
static void put_escaped(FILE *out, const char *s)
{
    for (const unsigned char *p = (const unsigned char *)(s ? s : ""); *p; p++) {
        switch (*p) {
        case '&':
            fputs("&amp;", out);
            break;
        case '<':
            fputs("&lt;", out);
            break;
        case '>':
            fputs("&gt;", out);
            break;
        case '"':
            fputs("&quot;", out);
            break;
        case '\'':
            fputs("&#39;", out);
            break;
        default:
            if (*p < 0x20 || *p >= 0x7f)
                fprintf(out, "\\x%02x", *p);
            else
                fputc(*p, out);
        }
    }
}

/* A CSS class name from a verdict word: letters and '-' only. */
static void put_token(FILE *out, const char *s)
{
    for (; s && *s; s++)
        fputc((*s >= 'a' && *s <= 'z') || *s == '-' ? *s : '-', out);
}

/* Bytes for people: "512 B", "64 KiB", "1.5 GiB". */
static void human_bytes(char *buf, size_t len, uint64_t bytes)
{
    static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
    unsigned u = 0;
    double v = (double)bytes;
    while (v >= 1024 && u + 1 < sizeof(units) / sizeof(units[0])) {
        v /= 1024;
        u++;
    }
    if (u == 0 || v >= 100 || v == (double)(uint64_t)v)
        snprintf(buf, len, "%.0f %s", v, units[u]);
    else
        snprintf(buf, len, "%.1f %s", v, units[u]);
}

static int stream_status(FILE *out)
{
    return ferror(out) ? -EIO : 0;
}

/* ---- the map, as a section keeps it -------------------------------------- */

typedef struct vis_map {
    qc_map_cell *cells; /* NULL: no map (why says why) */
    size_t nb_cells;
    uint64_t per_cell, clusters, cluster_size;
    uint64_t class_clusters[QC_MAP_CLASSES];
    const char *why;
} vis_map;

static const char *no_map_reason(const qc_result *r)
{
    if (!r)
        return "the image was not checked";
    if (qc_result_other_format(r))
        return "not a qcow2 image";
    return "the check stopped before it could classify every cluster (see the findings)";
}

static int map_take(vis_map *m, const qc_result *r)
{
    memset(m, 0, sizeof(*m));
    size_t n;
    const qc_map_cell *cells = r ? qc_result_map(r, &n, &m->per_cell, &m->clusters,
                                                 &m->cluster_size)
                                 : NULL;
    if (!cells) {
        m->why = no_map_reason(r);
        return 0;
    }
    m->cells = malloc(n * sizeof(*cells));
    if (!m->cells) {
        m->why = "no memory for it";
        return -ENOMEM;
    }
    memcpy(m->cells, cells, n * sizeof(*cells));
    m->nb_cells = n;
    for (unsigned k = 0; k < QC_MAP_CLASSES; k++)
        m->class_clusters[k] = qc_result_map_clusters(r, (qc_map_class)k);
    return 0;
}

/* What a cell is drawn as: its most severe problem, else its dominant class. */
static unsigned shown_class(const qc_map_cell *c)
{
    return c->problem >= QC_MAP_FIRST_PROBLEM ? c->problem : c->dominant;
}

/* Cells drawn as one <rect>: the same look, the same dominant class (its
 * title lists every class of the run). */
static bool same_cell(const qc_map_cell *a, const qc_map_cell *b)
{
    return shown_class(a) == shown_class(b) && a->dominant == b->dominant;
}

/* The grid's geometry for n cells. */
typedef struct grid {
    unsigned cols, rows, px;
    unsigned left, top, width, height, legend_top;
} grid;

enum { LEGEND_COLUMN = 250, LEGEND_ROW = 20, LEGEND_COLUMNS = 3 };

static unsigned legend_entries(const vis_map *m)
{
    unsigned n = 0;
    for (unsigned k = 0; k < QC_MAP_CLASSES; k++)
        n += m->class_clusters[k] || k >= QC_MAP_FIRST_PROBLEM;
    return n;
}

static grid grid_for(const vis_map *m)
{
    grid g;
    size_t n = m->nb_cells ? m->nb_cells : 1;
    g.cols = n <= 16 ? (unsigned)n : n <= 4096 ? (n < 64 ? (unsigned)n : 64) : 128;
    g.rows = (unsigned)((n + g.cols - 1) / g.cols);
    g.px = 768 / g.cols; /* a grid about 768 pixels wide */
    g.px = g.px < 6 ? 6 : g.px > 28 ? 28 : g.px;
    g.left = 84;
    g.top = 96;
    unsigned grid_w = g.cols * g.px;
    unsigned legend_w = LEGEND_COLUMNS * LEGEND_COLUMN;
    g.width = g.left + (grid_w > legend_w ? grid_w : legend_w) + 16;
    g.legend_top = g.top + (m->cells ? g.rows * g.px : 0) + 24;
    unsigned legend_rows = (legend_entries(m) + LEGEND_COLUMNS - 1) / LEGEND_COLUMNS;
    g.height = g.legend_top + (m->cells ? legend_rows * LEGEND_ROW : 0) + 12;
    return g;
}

static void svg_title_lines(FILE *out, const vis_map *m, const char *filename, const grid *g)
{
    fputs("<text x=\"16\" y=\"26\" font-size=\"17\" font-weight=\"600\" fill=\"#212529\">Host map of ",
          out);
    put_escaped(out, filename);
    fputs("</text>\n", out);
    if (!m->cells) {
        fputs("<text x=\"16\" y=\"50\" fill=\"#495057\">No map: ", out);
        put_escaped(out, m->why);
        fputs(".</text>\n", out);
        return;
    }
    char cell[32], file[32];
    human_bytes(cell, sizeof(cell), m->per_cell * m->cluster_size);
    human_bytes(file, sizeof(file), m->clusters * m->cluster_size);
    fprintf(out,
            "<text x=\"16\" y=\"48\" fill=\"#495057\">Each cell = %" PRIu64
            " cluster%s of %" PRIu64 " bytes (%s). File: %" PRIu64 " clusters (%s) in %zu cells, "
            "%u per row.</text>\n",
            m->per_cell, m->per_cell == 1 ? "" : "s", m->cluster_size, cell, m->clusters, file,
            m->nb_cells, g->cols);
    fputs("<text x=\"16\" y=\"65\" fill=\"#495057\">Host offsets grow left to right, top to "
          "bottom. A cell shows the class most of its clusters have,</text>\n"
          "<text x=\"16\" y=\"82\" fill=\"#495057\">or, outlined, the worst problem any of them "
          "has (leaked, orphaned, corrupt, overlap); a small square: metadata among them.</text>\n",
          out);
}

/* The cells, one <rect> per run of alike cells within a row. */
static void svg_cells(FILE *out, const vis_map *m, const grid *g)
{
    char from[32], to[32];
    for (size_t i = 0; i < m->nb_cells;) {
        size_t row_end = (i / g->cols + 1) * g->cols;
        size_t j = i + 1;
        uint32_t classes = m->cells[i].classes;
        while (j < m->nb_cells && j < row_end && same_cell(&m->cells[i], &m->cells[j]))
            classes |= m->cells[j++].classes;
        const qc_map_cell *c = &m->cells[i];
        unsigned cls = shown_class(c);
        bool problem = cls >= QC_MAP_FIRST_PROBLEM;
        unsigned x = g->left + (unsigned)(i % g->cols) * g->px;
        unsigned y = g->top + (unsigned)(i / g->cols) * g->px;
        uint64_t first = (uint64_t)i * m->per_cell;
        uint64_t last = (uint64_t)j * m->per_cell;
        if (last > m->clusters)
            last = m->clusters;
        fprintf(out,
                "<rect x=\"%u\" y=\"%u\" width=\"%u\" height=\"%u\" fill=\"%s\"%s "
                "data-class=\"%s\" data-dominant=\"%s\" data-first=\"%zu\" data-cells=\"%zu\">",
                x, y, (unsigned)(j - i) * g->px, g->px, styles[cls].fill,
                problem ? " stroke=\"#000\" stroke-width=\"1\"" : "", qc_map_class_name(cls),
                qc_map_class_name(c->dominant), i, j - i);
        human_bytes(from, sizeof(from), first * m->cluster_size);
        human_bytes(to, sizeof(to), last * m->cluster_size);
        fprintf(out, "<title>clusters %" PRIu64 "-%" PRIu64 ", bytes 0x%" PRIx64 "-0x%" PRIx64
                     " (%s to %s): ",
                first, last - 1, first * m->cluster_size, last * m->cluster_size - 1, from, to);
        fputs(styles[c->dominant].label, out);
        const char *sep = m->per_cell > 1 ? " mostly; also " : "";
        for (unsigned k = 0; k < QC_MAP_CLASSES; k++)
            if (k != c->dominant && (classes >> k & 1)) {
                fprintf(out, "%s%s", sep, styles[k].label);
                sep = ", ";
            }
        fputs("</title></rect>\n", out);
        i = j;
    }
    /* Metadata a cell holds but does not show (its clusters are mostly
     * data or free): a small square of the first such class, so that
     * scattered tables still show. */
    const uint32_t metadata = ((1u << (QC_MAP_BITMAP + 1)) - 1) & ~1u;
    unsigned side = g->px / 2, inset = (g->px - side) / 2;
    for (size_t i = 0; i < m->nb_cells && m->per_cell > 1; i++) {
        const qc_map_cell *c = &m->cells[i];
        uint32_t hidden = c->classes & metadata & ~(1u << shown_class(c));
        if (!hidden || (metadata >> shown_class(c) & 1))
            continue;
        unsigned k = (unsigned)__builtin_ctz(hidden);
        fprintf(out,
                "<rect x=\"%u\" y=\"%u\" width=\"%u\" height=\"%u\" fill=\"%s\" "
                "data-marker=\"%s\"/>\n",
                g->left + (unsigned)(i % g->cols) * g->px + inset,
                g->top + (unsigned)(i / g->cols) * g->px + inset, side, side, styles[k].fill,
                qc_map_class_name(k));
    }
    /* Host offsets at the left, every few rows. */
    unsigned every = (14 + g->px - 1) / g->px;
    for (unsigned r = 0; r < g->rows; r += every) {
        char at[32];
        human_bytes(at, sizeof(at), (uint64_t)r * g->cols * m->per_cell * m->cluster_size);
        fprintf(out,
                "<text x=\"%u\" y=\"%u\" text-anchor=\"end\" font-size=\"10\" "
                "fill=\"#868e96\">%s</text>\n",
                g->left - 6, g->top + r * g->px + (g->px < 10 ? 9 : g->px / 2 + 4), at);
    }
}

static void svg_legend(FILE *out, const vis_map *m, const grid *g)
{
    unsigned n = 0;
    for (unsigned k = 0; k < QC_MAP_CLASSES; k++) {
        if (!m->class_clusters[k] && k < QC_MAP_FIRST_PROBLEM)
            continue;
        unsigned x = 16 + (n % LEGEND_COLUMNS) * LEGEND_COLUMN;
        unsigned y = g->legend_top + (n / LEGEND_COLUMNS) * LEGEND_ROW;
        fprintf(out,
                "<g class=\"legend\" data-class=\"%s\" data-clusters=\"%" PRIu64 "\">"
                "<rect x=\"%u\" y=\"%u\" width=\"14\" height=\"14\" fill=\"%s\"%s/>"
                "<text x=\"%u\" y=\"%u\" fill=\"#212529\">%s: %" PRIu64 " cluster%s</text></g>\n",
                qc_map_class_name(k), m->class_clusters[k], x, y, styles[k].fill,
                k >= QC_MAP_FIRST_PROBLEM ? " stroke=\"#000\" stroke-width=\"1\"" : "", x + 20,
                y + 11, styles[k].label, m->class_clusters[k],
                m->class_clusters[k] == 1 ? "" : "s");
        n++;
    }
}

/* The map as an <svg> element: a document of its own (`standalone`, with
 * the XML declaration and namespace) or inline in the page. */
static int write_svg(FILE *out, const vis_map *m, const char *filename, bool standalone)
{
    grid g = grid_for(m);
    if (standalone)
        fputs("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n", out);
    fprintf(out, "<svg%s width=\"%u\" height=\"%u\" viewBox=\"0 0 %u %u\" role=\"img\" "
                 "class=\"hostmap\" data-cells=\"%zu\" data-clusters-per-cell=\"%" PRIu64 "\" "
                 "data-cluster-size=\"%" PRIu64 "\" data-clusters=\"%" PRIu64 "\" "
                 "font-family=\"system-ui, sans-serif\" font-size=\"12\">\n",
            standalone ? " xmlns=\"http://www.w3.org/2000/svg\"" : "", g.width, g.height, g.width,
            g.height, m->nb_cells, m->per_cell, m->cluster_size, m->clusters);
    fputs("<title>Host map of ", out);
    put_escaped(out, filename);
    fputs("</title>\n", out);
    fprintf(out, "<rect width=\"%u\" height=\"%u\" fill=\"#ffffff\"/>\n", g.width, g.height);
    svg_title_lines(out, m, filename, &g);
    if (m->cells) {
        svg_cells(out, m, &g);
        svg_legend(out, m, &g);
    }
    fputs("</svg>\n", out);
    return stream_status(out);
}

int vis_map_write_svg(FILE *out, const qc_result *r, const char *filename)
{
    vis_map m;
    int ret = map_take(&m, r);
    if (ret == 0)
        ret = write_svg(out, &m, filename, true);
    free(m.cells);
    return ret;
}

/* ---- sections -------------------------------------------------------------- */

typedef struct vis_finding {
    unsigned code;
    const char *id; /* the problem table's: lives as long as the program */
    qc_severity severity;
    char *object, *message;
    uint64_t offset;
} vis_finding;

struct vis_section {
    char *filename;
    size_t index;
    vis_finding *findings;
    size_t nb_findings, cap_findings;
    uint64_t lost; /* findings that could not be kept */
    uint64_t leaks, corruptions, check_errors, warnings;
    const char *other_format;
    bool header_valid;
    qc_header_info header;
    vis_map map;
};

vis_section *vis_section_new(const char *filename, size_t index)
{
    vis_section *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->filename = strdup(filename ? filename : "");
    if (!s->filename) {
        free(s);
        return NULL;
    }
    s->index = index;
    s->map.why = no_map_reason(NULL);
    return s;
}

void vis_section_add_finding(vis_section *s, const qc_finding *f)
{
    if (s->nb_findings == s->cap_findings) {
        size_t cap = s->cap_findings ? s->cap_findings * 2 : 32;
        vis_finding *grown = realloc(s->findings, cap * sizeof(*grown));
        if (!grown) {
            s->lost++;
            return;
        }
        s->findings = grown;
        s->cap_findings = cap;
    }
    vis_finding v = {f->problem->code, f->problem->id, f->problem->severity,
                     strdup(f->object ? f->object : ""), strdup(f->message ? f->message : ""),
                     f->offset};
    if (!v.object || !v.message) {
        free(v.object);
        free(v.message);
        s->lost++;
        return;
    }
    s->findings[s->nb_findings++] = v;
}

int vis_section_set_result(vis_section *s, const qc_result *r)
{
    s->leaks = qc_result_count(r, QC_COUNT_LEAKS);
    s->corruptions = qc_result_count(r, QC_COUNT_CORRUPTIONS);
    s->check_errors = qc_result_count(r, QC_COUNT_CHECK_ERRORS);
    s->warnings = qc_result_count(r, QC_COUNT_WARNINGS);
    s->other_format = qc_result_other_format(r); /* a static string of the library's */
    const qc_header_info *h = qc_result_header(r);
    s->header_valid = h != NULL;
    if (h) {
        s->header = *h;
        /* The names point into the result, which goes away. */
        s->header.backing_file = s->header.backing_format = s->header.data_file = NULL;
    }
    free(s->map.cells);
    return map_take(&s->map, r);
}

void vis_section_free(vis_section *s)
{
    if (!s)
        return;
    for (size_t i = 0; i < s->nb_findings; i++) {
        free(s->findings[i].object);
        free(s->findings[i].message);
    }
    free(s->findings);
    free(s->map.cells);
    free(s->filename);
    free(s);
}

int vis_section_write_svg(const vis_section *s, FILE *out)
{
    return write_svg(out, &s->map, s->filename, true);
}

static void fact(FILE *out, const char *name, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void fact(FILE *out, const char *name, const char *fmt, ...)
{
    char value[128];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof(value), fmt, ap);
    va_end(ap);
    fprintf(out, "<div><dt>%s</dt><dd>", name);
    put_escaped(out, value);
    fputs("</dd></div>", out);
}

/* A count of the check; "-" for a file that is not qcow2, which was not
 * counted (as in its summary row). */
static void count_fact(FILE *out, const char *name, const vis_section *s, uint64_t value)
{
    if (s->other_format)
        fact(out, name, "-");
    else
        fact(out, name, "%" PRIu64, value);
}

static void finding_row(FILE *out, const vis_finding *f)
{
    const char *sev = qc_severity_name(f->severity);
    fputs("<tr data-problem=\"", out);
    put_escaped(out, f->id);
    fprintf(out, "\" class=\"sev-%s\">", sev);
    fprintf(out, "<td data-v=\"%05u\">%u</td><td data-v=\"", f->code, f->code);
    put_escaped(out, f->id);
    fputs("\"><code>", out);
    put_escaped(out, f->id);
    fprintf(out, "</code></td><td data-v=\"%d\"><span class=\"sev\">%s</span></td><td>",
            (int)f->severity, sev);
    put_escaped(out, f->object);
    if (f->offset == QC_NO_OFFSET)
        fputs("</td><td data-v=\"~\"></td><td>", out);
    else
        fprintf(out, "</td><td data-v=\"%016" PRIx64 "\"><code>0x%" PRIx64 "</code></td><td>",
                f->offset, f->offset);
    put_escaped(out, f->message);
    fputs("</td></tr>\n", out);
}

int vis_section_write(const vis_section *s, FILE *out, const char *word, int exit_code,
                      double seconds)
{
    fprintf(out, "<section class=\"image panel\" id=\"image-%zu\" data-index=\"%zu\" data-verdict=\"",
            s->index, s->index);
    put_token(out, word);
    fputs("\" data-file=\"", out);
    put_escaped(out, s->filename);
    fputs("\">\n<h2><span class=\"badge v-", out);
    put_token(out, word);
    fputs("\">", out);
    put_escaped(out, word);
    fputs("</span> ", out);
    put_escaped(out, s->filename);
    fputs("</h2>\n<dl class=\"facts\">", out);
    fact(out, "Verdict", "%s", word);
    fact(out, "Exit code", "%d", exit_code);
    count_fact(out, "Leaks", s, s->leaks);
    count_fact(out, "Corruptions", s, s->corruptions);
    count_fact(out, "Check errors", s, s->check_errors);
    count_fact(out, "Warnings", s, s->warnings);
    fact(out, "Seconds", "%.3f", seconds);
    if (s->other_format)
        fact(out, "Format", "%s (not qcow2)", s->other_format);
    if (s->header_valid) {
        char size[32];
        human_bytes(size, sizeof(size), s->header.virtual_size);
        fact(out, "Virtual size", "%s", size);
        fact(out, "Cluster size", "%llu", 1ull << s->header.cluster_bits);
        fact(out, "qcow2 version", "%u", s->header.version);
        fact(out, "Snapshots", "%u", s->header.nb_snapshots);
    }
    fputs("</dl>\n<figure class=\"map\">\n", out);
    write_svg(out, &s->map, s->filename, false);
    fputs("</figure>\n", out);
    fprintf(out, "<h3>Findings <span class=\"count\">%zu</span></h3>\n", s->nb_findings);
    if (s->lost)
        fprintf(out, "<p class=\"note\">%" PRIu64 " more findings could not be kept (no memory).</p>\n",
                s->lost);
    fprintf(out,
            "<table class=\"findings\" data-rows=\"%zu\"><thead><tr>"
            "<th data-col=\"code\">Code</th><th data-col=\"id\">Problem</th>"
            "<th data-col=\"severity\">Severity</th><th data-col=\"object\">Object</th>"
            "<th data-col=\"offset\">Offset</th><th data-col=\"message\">Message</th>"
            "</tr></thead>\n<tbody>\n",
            s->nb_findings);
    for (size_t i = 0; i < s->nb_findings; i++)
        finding_row(out, &s->findings[i]);
    fputs("</tbody></table>\n", out);
    if (!s->nb_findings)
        fputs("<p class=\"none\">No findings.</p>\n", out);
    fputs("</section>\n", out);
    return stream_status(out);
}

/* ---- the page ---------------------------------------------------------------- */

static const char page_style[] =
    "*{box-sizing:border-box}"
    "body{margin:0;font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,sans-serif;"
    "color:#212529;background:#f4f5f7}"
    "header.top{background:#1f2d3d;color:#fff;padding:18px 32px}"
    "header.top h1{margin:0;font-size:22px;font-weight:600}"
    "header.top p{margin:4px 0 0;color:#c5cfdb}"
    "main{padding:20px 32px 40px;max-width:1400px}"
    ".panel{background:#fff;border:1px solid #dee2e6;border-radius:6px;padding:16px 20px;"
    "margin:0 0 20px}"
    "h2{font-size:18px;margin:0 0 12px;word-break:break-all}"
    "h3{font-size:15px;margin:18px 0 8px}"
    "h3 .count{color:#868e96;font-weight:400}"
    "table{border-collapse:collapse;width:100%}"
    "th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #e9ecef;vertical-align:top}"
    "th{background:#f1f3f5;font-weight:600;white-space:nowrap}"
    "table.findings th{cursor:pointer;user-select:none}"
    "table.findings th:hover{background:#e7ebef}"
    "th[aria-sort=ascending]::after{content:' \\25B2';font-size:10px}"
    "th[aria-sort=descending]::after{content:' \\25BC';font-size:10px}"
    "td.num,th.num{text-align:right;font-variant-numeric:tabular-nums}"
    "code{font:12px ui-monospace,SFMono-Regular,Menlo,Consolas,monospace}"
    ".badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;"
    "font-weight:600;color:#fff;background:#868e96;vertical-align:2px}"
    ".v-clean{background:#2b8a3e}.v-leaks{background:#e8590c}.v-corrupt{background:#c92a2a}"
    ".v-failed{background:#5c5f66}.v-unsupported{background:#1864ab}"
    ".v-repaired{background:#2f9e44}.v-in-use{background:#6741d9}.v-timeout{background:#862e9c}"
    "dl.facts{display:flex;flex-wrap:wrap;gap:8px 24px;margin:0 0 12px}"
    "dl.facts div{min-width:70px}dl.facts dt{font-size:11px;text-transform:uppercase;"
    "letter-spacing:.04em;color:#868e96}dl.facts dd{margin:0;font-weight:600}"
    "figure.map{margin:0;overflow-x:auto}"
    ".sev{display:inline-block;padding:0 6px;border-radius:4px;font-size:12px;background:#e9ecef}"
    "tr.sev-corruption .sev{background:#ffe3e3;color:#a61e1e}"
    "tr.sev-leak .sev{background:#ffe8cc;color:#a74000}"
    "tr.sev-error .sev{background:#dee2e6;color:#212529}"
    "tr.sev-warning .sev{background:#fff3bf;color:#6b5400}"
    ".controls{display:flex;gap:16px;align-items:center;flex-wrap:wrap}"
    ".controls select,.controls input{font:inherit;padding:4px 8px;border:1px solid #ced4da;"
    "border-radius:4px}"
    ".controls .shown{color:#868e96}"
    "p.none,p.note{color:#868e96;margin:8px 0 0}";

/* Sorting by a column (click its header; again to reverse) and filtering
 * by problem id, for every findings table. The page's address can carry
 * both: #problem=ID&sort=COLUMN&dir=asc|desc. What it did is left in the
 * DOM (body data-ready, each table's data-visible and data-sorted) so a
 * test can read it. */
static const char page_script[] =
    "(function(){\n"
    "'use strict';\n"
    "var tables=[].slice.call(document.querySelectorAll('table.findings'));\n"
    "var select=document.getElementById('problem-filter');\n"
    "var text=document.getElementById('text-filter');\n"
    "var shown=document.getElementById('shown');\n"
    "var ids={};\n"
    "tables.forEach(function(t){[].forEach.call(t.tBodies[0].rows,function(r){"
    "ids[r.getAttribute('data-problem')]=(ids[r.getAttribute('data-problem')]||0)+1;});});\n"
    "Object.keys(ids).sort().forEach(function(id){var o=document.createElement('option');"
    "o.value=id;o.textContent=id+' ('+ids[id]+')';select.appendChild(o);});\n"
    "function params(){var p={};location.hash.replace(/^#/,'').split('&').forEach(function(kv){"
    "var i=kv.indexOf('=');if(i>0)p[decodeURIComponent(kv.slice(0,i))]="
    "decodeURIComponent(kv.slice(i+1));});return p;}\n"
    "var state={problem:'',sort:'',dir:'asc'};\n"
    "function key(row,col){var c=row.cells[col];var v=c.getAttribute('data-v');"
    "return v===null?c.textContent.toLowerCase():v;}\n"
    "function sortTable(t,name,dir){var ths=[].slice.call(t.tHead.rows[0].cells);"
    "var col=-1;ths.forEach(function(th,i){th.removeAttribute('aria-sort');"
    "if(th.getAttribute('data-col')===name)col=i;});if(col<0)return;"
    "ths[col].setAttribute('aria-sort',dir==='desc'?'descending':'ascending');"
    "var body=t.tBodies[0];var rows=[].slice.call(body.rows);"
    "rows.forEach(function(r,i){r._i=i;});"
    "rows.sort(function(a,b){var x=key(a,col),y=key(b,col);"
    "var c=x<y?-1:x>y?1:a._i-b._i;return dir==='desc'&&x!==y?-c:c;});"
    "rows.forEach(function(r){body.appendChild(r);});"
    "t.setAttribute('data-sorted',name+':'+dir);}\n"
    "function filter(){var want=state.problem,words=text.value.toLowerCase(),total=0;"
    "tables.forEach(function(t){var n=0;[].forEach.call(t.tBodies[0].rows,function(r){"
    "var ok=(!want||r.getAttribute('data-problem')===want)&&"
    "(!words||r.textContent.toLowerCase().indexOf(words)>=0);"
    "if(ok)r.removeAttribute('hidden');else r.setAttribute('hidden','');n+=ok?1:0;});"
    "t.setAttribute('data-visible',n);total+=n;});"
    "shown.textContent=total+' finding'+(total===1?'':'s')+' shown';"
    "document.body.setAttribute('data-filter',want);}\n"
    "function remember(){var h=[];if(state.problem)h.push('problem='+"
    "encodeURIComponent(state.problem));if(state.sort)h.push('sort='+state.sort,'dir='+state.dir);"
    "history.replaceState(null,'',h.length?'#'+h.join('&'):location.pathname+location.search);}\n"
    "select.addEventListener('change',function(){state.problem=select.value;filter();remember();});\n"
    "text.addEventListener('input',filter);\n"
    "tables.forEach(function(t){[].forEach.call(t.tHead.rows[0].cells,function(th){"
    "th.addEventListener('click',function(){var name=th.getAttribute('data-col');"
    "state.dir=state.sort===name&&state.dir==='asc'?'desc':'asc';state.sort=name;"
    "tables.forEach(function(u){sortTable(u,state.sort,state.dir);});remember();});});});\n"
    "var p=params();\n"
    "if(p.problem){state.problem=p.problem;if(!ids[p.problem]){var o=document.createElement('option');"
    "o.value=p.problem;o.textContent=p.problem+' (0)';select.appendChild(o);}select.value=p.problem;}\n"
    "if(p.sort){state.sort=p.sort;state.dir=p.dir==='desc'?'desc':'asc';"
    "tables.forEach(function(t){sortTable(t,state.sort,state.dir);});}\n"
    "filter();\n"
    "document.body.setAttribute('data-ready','1');\n"
    "})();\n";

int vis_page_begin(FILE *out, size_t nb_images)
{
    fprintf(out,
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            "<meta name=\"generator\" content=\"qcheck %s\">\n"
            "<title>qcheck report</title>\n<style>%s</style>\n</head>\n"
            "<body data-images=\"%zu\">\n"
            "<header class=\"top\"><h1>qcheck report</h1>"
            "<p>%zu image%s checked by qcheck %s</p></header>\n<main>\n"
            "<div class=\"panel\"><h2>Summary</h2>\n"
            "<table class=\"summary\"><thead><tr><th>File</th><th>Verdict</th>"
            "<th class=\"num\">Exit code</th><th class=\"num\">Leaks</th>"
            "<th class=\"num\">Corruptions</th><th class=\"num\">Check errors</th>"
            "<th class=\"num\">Seconds</th></tr></thead>\n<tbody>\n",
            QC_VERSION_STRING, page_style, nb_images, nb_images, nb_images == 1 ? "" : "s",
            QC_VERSION_STRING);
    return stream_status(out);
}

void vis_page_summary_row(FILE *out, size_t index, const char *name, const char *word,
                          bool has_section, bool counted, uint64_t leaks,
                          uint64_t corruptions, uint64_t check_errors, double seconds,
                          int exit_code)
{
    fprintf(out, "<tr data-verdict=\"");
    put_token(out, word);
    fputs("\"><td>", out);
    if (has_section)
        fprintf(out, "<a href=\"#image-%zu\">", index);
    put_escaped(out, name);
    fputs(has_section ? "</a></td>" : "</td>", out);
    fputs("<td><span class=\"badge v-", out);
    put_token(out, word);
    fputs("\">", out);
    put_escaped(out, word);
    fprintf(out, "</span></td><td class=\"num\">%d</td>", exit_code);
    const uint64_t counts[] = {leaks, corruptions, check_errors};
    for (size_t k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
        if (counted)
            fprintf(out, "<td class=\"num\">%" PRIu64 "</td>", counts[k]);
        else
            fputs("<td class=\"num\">-</td>", out);
    }
    fprintf(out, "<td class=\"num\">%.3f</td></tr>\n", seconds);
}

void vis_page_sections_begin(FILE *out)
{
    fputs("</tbody></table></div>\n"
          "<div class=\"panel controls\"><label>Problem <select id=\"problem-filter\">"
          "<option value=\"\">all problems</option></select></label>"
          "<label>Text <input id=\"text-filter\" type=\"search\" "
          "placeholder=\"filter findings\"></label><span class=\"shown\" id=\"shown\"></span>"
          "</div>\n",
          out);
}

int vis_page_end(FILE *out)
{
    fprintf(out, "</main>\n<script>\n%s</script>\n</body>\n</html>\n", page_script);
    return stream_status(out);
}

/* ---- the command's --map and --report, for one image ---------------------- */

static int write_map(const cli *c, const verdict *v, int status, FILE *out)
{
    (void)v;
    (void)status;
    return vis_section_write_svg(c->visual, out);
}

static int write_report(const cli *c, const verdict *v, int status, FILE *out)
{
    const char *word = image_verdict_name(image_verdict_of(status, c->outcome));
    int ret = vis_page_begin(out, 1);
    vis_page_summary_row(out, 0, c->filename, word, true, c->outcome->summarised, v->leaks,
                         v->corruptions, v->check_errors, c->visual_seconds, status);
    vis_page_sections_begin(out);
    if (ret == 0)
        ret = vis_section_write(c->visual, out, word, status, c->visual_seconds);
    int end = vis_page_end(out);
    return ret ? ret : end;
}

/* Write one file; false, with a message naming it, when it cannot be. */
static bool write_visual_file(const cli *c, const char *path, const verdict *v, int status,
                              int (*write)(const cli *, const verdict *, int, FILE *))
{
    int ret = -ENOMEM;
    if (c->visual) {
        FILE *out = fopen(path, "w");
        if (!out) {
            ret = -errno;
        } else {
            ret = write(c, v, status, out);
            if (fclose(out) != 0 && ret == 0)
                ret = -errno;
        }
    }
    if (ret < 0)
        cli_message(c, "cannot write '%s': %s", path, strerror(-ret));
    return ret == 0;
}

int cli_write_visual(cli *c, const verdict *v, int status)
{
    /* An image that was not opened (missing, in use, ...) has no files:
     * its own message says why. */
    if ((!c->map_path && !c->report_path && !c->section_out) ||
        (!c->visual && !c->visual_no_memory))
        return status;
    bool ok = true;
    /* A batch's worker: the image's section, for the page its parent
     * writes (a failure there is the parent's to report). */
    if (c->section_out && c->visual)
        vis_section_write(c->visual, c->section_out,
                          image_verdict_name(image_verdict_of(status, c->outcome)), status,
                          c->visual_seconds);
    if (c->map_path)
        ok = write_visual_file(c, c->map_path, v, status, write_map);
    if (c->report_path)
        ok = write_visual_file(c, c->report_path, v, status, write_report) && ok;
    vis_section_free(c->visual);
    c->visual = NULL;
    /* What was asked for was not done: a clean check says so. */
    return !ok && status == 0 ? 1 : status;
}
