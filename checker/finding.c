/*
 * Findings: a problem row's message template rendered from the typed facts
 * of one finding (qc_finding_ctx).
 *
 * A template is text with placeholders naming context fields:
 *   %{field}          the field: offsets (host_offset, guest_offset) in hex,
 *                     `entry` as 16 hex digits, everything else in decimal
 *   %{field:x}        in hex; `x2`, `x8`, `x16` pad to that many digits
 *   %{field?a|b}      `a` when the field is set (variant: when it is not 0),
 *                     else `b` (the `|b` may be left out)
 *   %{field=a|b|c}    the alternative the field's value numbers, from 0; a
 *                     value past the last alternative takes the last one
 *                     (`reference%{references=s||s}` pluralises)
 *   %%                a percent sign
 * Alternatives are templates themselves. A field a plain placeholder names
 * but the context does not set prints as "?" (and is a bug at the call
 * site). Nothing from the image is ever parsed as a template: `name` is
 * copied, printable characters only.
 */
#include <inttypes.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "finding.h"

/* The numeric fields in QC_CTX_* bit order; QC_CTX_NAME follows them. */
static const struct field {
    const char *name;
    size_t offset;
    char format; /* 'x' hex offset, 'e' entry (16 hex digits), 'd' decimal */
} fields[] = {
    {"host_offset", offsetof(qc_finding_ctx, host_offset), 'x'},
    {"guest_offset", offsetof(qc_finding_ctx, guest_offset), 'x'},
    {"cluster", offsetof(qc_finding_ctx, cluster), 'd'},
    {"clusters", offsetof(qc_finding_ctx, clusters), 'd'},
    {"l1_index", offsetof(qc_finding_ctx, l1_index), 'd'},
    {"l2_index", offsetof(qc_finding_ctx, l2_index), 'd'},
    {"snapshot", offsetof(qc_finding_ctx, snapshot), 'd'},
    {"refcount", offsetof(qc_finding_ctx, refcount), 'd'},
    {"references", offsetof(qc_finding_ctx, references), 'd'},
    {"entry", offsetof(qc_finding_ctx, entry), 'e'},
    {"index", offsetof(qc_finding_ctx, index), 'd'},
    {"value", offsetof(qc_finding_ctx, value), 'd'},
    {"size", offsetof(qc_finding_ctx, size), 'd'},
    {"expected", offsetof(qc_finding_ctx, expected), 'd'},
    {"file_size", offsetof(qc_finding_ctx, file_size), 'd'},
};
#define NUMERIC_FIELDS (sizeof(fields) / sizeof(fields[0]))
_Static_assert(QC_CTX_NAME == 1u << NUMERIC_FIELDS, "the field table follows the QC_CTX_* bits");

/* Alternatives nest no deeper than this; templates are ours, but a bound
 * keeps the recursion obviously finite. */
#define MAX_DEPTH 4

typedef struct out {
    char *buf;
    size_t cap;
    size_t len;   /* the whole length, also past cap */
    bool missing; /* a plain placeholder named a field that is not set */
    bool all;     /* checking: walk every alternative, print nothing */
} out;

static void put(out *o, const char *s, size_t n)
{
    if (o->all)
        return;
    for (size_t i = 0; i < n; i++, o->len++)
        if (o->len + 1 < o->cap)
            o->buf[o->len] = s[i];
}

const char *qc_finding_field(const qc_finding_ctx *c, unsigned i, bool *present, uint64_t *value)
{
    if (i >= NUMERIC_FIELDS)
        return NULL;
    *present = (c->present >> i) & 1;
    memcpy(value, (const char *)c + fields[i].offset, sizeof(*value));
    return fields[i].name;
}

/* The end of the text that starts at s: the `}` that closes the current
 * placeholder, or a depth-0 `|` when `bar` (NULL: none). */
static const char *scan(const char *s, const char *end, bool bar)
{
    unsigned depth = 0;
    for (const char *p = s; p < end; p++) {
        if (p[0] == '%' && p + 1 < end && p[1] == '{') {
            depth++;
            p++;
        } else if (*p == '}') {
            if (depth == 0)
                return p;
            depth--;
        } else if (*p == '|' && bar && depth == 0) {
            return p;
        }
    }
    return NULL;
}

static bool render(out *o, const char *s, const char *end, const qc_finding_ctx *c, unsigned depth);

/* Which field a placeholder names: 0..NUMERIC_FIELDS-1, NUMERIC_FIELDS for
 * `name`, NUMERIC_FIELDS + 1 for `variant`; -1 for none. */
static int field_index(const char *s, size_t n)
{
    for (unsigned i = 0; i < NUMERIC_FIELDS; i++)
        if (strlen(fields[i].name) == n && memcmp(fields[i].name, s, n) == 0)
            return (int)i;
    if (n == 4 && memcmp(s, "name", 4) == 0)
        return (int)NUMERIC_FIELDS;
    if (n == 7 && memcmp(s, "variant", 7) == 0)
        return (int)NUMERIC_FIELDS + 1;
    return -1;
}

static bool field_set(const qc_finding_ctx *c, int f)
{
    if (f == (int)NUMERIC_FIELDS + 1)
        return c->variant != 0;
    if (f == (int)NUMERIC_FIELDS)
        return (c->present & QC_CTX_NAME) && c->name;
    return (c->present >> f) & 1;
}

static uint64_t field_value(const qc_finding_ctx *c, int f)
{
    if (f == (int)NUMERIC_FIELDS + 1)
        return c->variant;
    uint64_t v;
    memcpy(&v, (const char *)c + fields[f].offset, sizeof(v));
    return v;
}

static bool put_number(out *o, uint64_t v, const char *fmt, size_t n, char format)
{
    char text[24];
    int width = 0;
    if (n > 0) { /* an explicit format */
        if (fmt[0] == 'd' && n == 1) {
            format = 'd';
        } else if (fmt[0] == 'x') {
            for (size_t i = 1; i < n; i++) {
                if (fmt[i] < '0' || fmt[i] > '9' || width > 16)
                    return false;
                width = width * 10 + (fmt[i] - '0');
            }
            if (width > 16)
                return false;
            format = 'x';
        } else {
            return false;
        }
    }
    if (format == 'e')
        width = 16, format = 'x';
    if (format == 'x')
        snprintf(text, sizeof(text), "0x%0*" PRIx64, width, v);
    else
        snprintf(text, sizeof(text), "%" PRIu64, v);
    put(o, text, strlen(text));
    return true;
}

static void put_name(out *o, const char *name)
{
    for (const char *p = name; *p; p++) {
        char ch = *p >= 0x20 && *p < 0x7f ? *p : '?';
        put(o, &ch, 1);
    }
}

/* `a|b|c` between s and end: render alternative k (the last one when k is
 * past it), or every one when checking. */
static bool choose(out *o, const char *s, const char *end, uint64_t k, const qc_finding_ctx *c,
                   unsigned depth)
{
    for (uint64_t i = 0;; i++) {
        const char *bar = scan(s, end, true);
        const char *stop = bar ? bar : end;
        if ((o->all || i == k || !bar) && !render(o, s, stop, c, depth + 1))
            return false;
        if (!bar || (i == k && !o->all))
            return true;
        s = bar + 1;
    }
}

/* One placeholder, the text between `%{` and its `}`. */
static bool placeholder(out *o, const char *s, const char *end, const qc_finding_ctx *c,
                        unsigned depth)
{
    const char *p = s;
    while (p < end && ((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
        p++;
    int f = field_index(s, (size_t)(p - s));
    if (f < 0)
        return false;
    char op = p < end ? *p++ : '\0';
    if (op == '?') {
        const char *bar = scan(p, end, true);
        if (o->all)
            return render(o, p, bar ? bar : end, c, depth + 1) &&
                   (!bar || render(o, bar + 1, end, c, depth + 1));
        if (field_set(c, f))
            return render(o, p, bar ? bar : end, c, depth + 1);
        return !bar || render(o, bar + 1, end, c, depth + 1);
    }
    if (f == (int)NUMERIC_FIELDS) { /* name: as it is, or "?" */
        if (op != '\0')
            return false;
        if (!o->all && !field_set(c, f))
            o->missing = true;
        put_name(o, field_set(c, f) ? c->name : "?");
        return true;
    }
    if (!o->all && !field_set(c, f) && f != (int)NUMERIC_FIELDS + 1) {
        o->missing = true;
        if (op == '=')
            return choose(o, p, end, UINT64_MAX, c, depth);
        put(o, "?", 1);
        return op == '\0' || op == ':';
    }
    if (op == '=')
        return choose(o, p, end, field_value(c, f), c, depth);
    if (op == '\0' || op == ':')
        return put_number(o, field_value(c, f), p, (size_t)(end - p),
                          f < (int)NUMERIC_FIELDS ? fields[f].format : 'd');
    return false;
}

static bool render(out *o, const char *s, const char *end, const qc_finding_ctx *c, unsigned depth)
{
    if (depth > MAX_DEPTH)
        return false;
    while (s < end) {
        if (s[0] == '%' && s + 1 < end && s[1] == '%') {
            put(o, "%", 1);
            s += 2;
        } else if (s[0] == '%' && s + 1 < end && s[1] == '{') {
            const char *close = scan(s + 2, end, false);
            if (!close || !placeholder(o, s + 2, close, c, depth))
                return false;
            s = close + 1;
        } else {
            const char *next = s + 1;
            while (next < end && *next != '%')
                next++;
            put(o, s, (size_t)(next - s));
            s = next;
        }
    }
    return true;
}

static size_t render_template(char *buf, size_t len, const char *tmpl, const qc_finding_ctx *c,
                              int *status)
{
    out o = {buf, len, 0, false, false};
    bool ok = render(&o, tmpl, tmpl + strlen(tmpl), c, 0);
    if (len > 0)
        buf[o.len < len ? o.len : len - 1] = '\0';
    *status = !ok ? QC_TEMPLATE_INVALID : o.missing ? QC_TEMPLATE_MISSING : 0;
    return o.len;
}

int qc_template_render(char *buf, size_t len, const char *tmpl, const qc_finding_ctx *c)
{
    int status;
    render_template(buf, len, tmpl, c, &status);
    return status;
}

bool qc_template_valid(const char *tmpl)
{
    static const qc_finding_ctx none = {0};
    out o = {NULL, 0, 0, false, true};
    return render(&o, tmpl, tmpl + strlen(tmpl), &none, 0);
}

size_t qc_finding_format(const qc_problem *problem, const qc_finding_ctx *c, char *buf, size_t len)
{
    static const qc_finding_ctx none = {0};
    int status;
    return render_template(buf, len, problem->message, c ? c : &none, &status);
}
