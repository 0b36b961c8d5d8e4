/*
 * Unit tests for the problem table (checker/include/qcheck_problems.def), its lookup
 * functions, and the message templates every finding is made from (checker/finding.c).
 */
#include <check.h>
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ctx.h"
#include "finding.h"
#include "qcheck.h"
#include "planner.h" /* the repair handlers */
#include "runner.h"

/* The enum names, straight from the table, to compare with the ids. */
static const char *const enum_names[] = {
#define QC_PROBLEM(name, ...) #name,
#include "qcheck_problems.def"
#undef QC_PROBLEM
};
#define ROWS (sizeof(enum_names) / sizeof(enum_names[0]))

START_TEST(test_get_indexes)
{
    ck_assert_uint_gt(ROWS, 50);
    ck_assert_uint_eq(qc_problem_count(), ROWS);
    for (size_t i = 0; i < ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        ck_assert_ptr_nonnull(p);
        /* The enum value is the row's stable code, and finds the row. */
        ck_assert_ptr_eq(qc_problem_get(p->code), p);
        ck_assert_ptr_nonnull(p->id);
        ck_assert_ptr_nonnull(p->summary);
    }
    ck_assert_uint_eq(QC_P_REFCOUNT_LEAK, qc_problem_by_id("refcountLeak")->code);
    ck_assert_ptr_null(qc_problem_at(ROWS));
    ck_assert_ptr_null(qc_problem_get(QC_P_NONE));
    ck_assert_ptr_null(qc_problem_get((qc_problem_id)999));
    ck_assert_ptr_null(qc_problem_get((qc_problem_id)-1));
}
END_TEST

START_TEST(test_codes_sorted_unique)
{
    for (size_t i = 1; i < ROWS; i++) {
        const qc_problem *a = qc_problem_at(i - 1);
        const qc_problem *b = qc_problem_at(i);
        ck_assert_msg(a->code < b->code, "code %u (%s) is not below code %u (%s)", a->code, a->id,
                      b->code, b->id);
    }
}
END_TEST

START_TEST(test_code_areas)
{
    for (size_t i = 0; i < ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        unsigned area = p->code / 100;
        ck_assert_msg(area >= 1 && area <= 10, "%s has code %u", p->id, p->code);
        ck_assert_msg(p->code % 100 != 0, "%s has code %u (xx00 is not a problem)", p->id, p->code);
        /* The 8xx area is "the check itself", not the image: a check
         * error, or a warning about how it was made (imageInUse); never
         * a corruption or leak. */
        if (area == 8)
            ck_assert_msg(p->severity == QC_SEV_ERROR || p->severity == QC_SEV_WARNING,
                          "%s (%u) is neither an error nor a warning", p->id, p->code);
        /* The 9xx area is between layers: no leak (a leak is a layer's
         * own), and nothing a single-image repair could fix. */
        if (area == 9)
            ck_assert_msg(p->severity != QC_SEV_LEAK && p->fix == QC_FIX_NONE,
                          "%s (%u) is a leak or has a fix", p->id, p->code);
        /* The 10xx area is QED's: its fixes are the QED repair's, and
         * the QED actions are the 10xx area's alone. */
        bool qed_fix = p->fix == QC_FIX_QED_CLEAR_ENTRY || p->fix == QC_FIX_QED_SEPARATE ||
                       p->fix == QC_FIX_QED_TRUNCATE_LEAKS;
        if (area != 10)
            ck_assert_msg(!qed_fix, "%s (%u) has a QED fix", p->id, p->code);
    }
}
END_TEST

START_TEST(test_ids_unique)
{
    for (size_t i = 0; i < ROWS; i++)
        for (size_t j = i + 1; j < ROWS; j++)
            ck_assert_msg(strcmp(qc_problem_at(i)->id,
                                 qc_problem_at(j)->id) != 0,
                          "id %s appears twice", qc_problem_at(i)->id);
}
END_TEST

START_TEST(test_ids_camel_case)
{
    for (size_t i = 0; i < ROWS; i++) {
        const char *id = qc_problem_at(i)->id;
        size_t len = strlen(id);
        ck_assert_msg(len >= 3, "id \"%s\" is too short", id);
        ck_assert_msg(id[0] >= 'a' && id[0] <= 'z', "id \"%s\" does not start lowercase", id);
        bool has_upper = false;
        for (size_t k = 0; k < len; k++) {
            unsigned char ch = (unsigned char)id[k];
            ck_assert_msg(isascii(ch) && isalnum(ch), "id \"%s\" has '%c'", id, ch);
            has_upper |= ch >= 'A' && ch <= 'Z';
            /* No two capitals in a row (camelCase, not SHOUTING). */
            if (k > 0 && ch >= 'A' && ch <= 'Z')
                ck_assert_msg(!(id[k - 1] >= 'A' && id[k - 1] <= 'Z'), "id \"%s\"", id);
        }
        ck_assert_msg(has_upper, "id \"%s\" is a single word", id);
    }
}
END_TEST

/* HEADER_TRUNCATED <-> headerTruncated: same letters, ignoring case and _. */
START_TEST(test_ids_match_enum_names)
{
    for (size_t i = 0; i < ROWS; i++) {
        const char *id = qc_problem_at(i)->id;
        const char *name = enum_names[i];
        ck_assert_ptr_nonnull(name);
        char folded[128];
        size_t o = 0;
        for (const char *c = name; *c && o + 1 < sizeof(folded); c++)
            if (*c != '_')
                folded[o++] = (char)tolower((unsigned char)*c);
        folded[o] = '\0';
        char lowered[128];
        size_t n = strlen(id);
        ck_assert_uint_lt(n, sizeof(lowered));
        for (size_t k = 0; k <= n; k++)
            lowered[k] = (char)tolower((unsigned char)id[k]);
        ck_assert_msg(strcmp(folded, lowered) == 0, "QC_P_%s has id \"%s\"", name, id);
    }
}
END_TEST

START_TEST(test_summaries)
{
    for (size_t i = 0; i < ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        size_t len = strlen(p->summary);
        ck_assert_msg(len > 10, "%s has summary \"%s\"", p->id, p->summary);
        for (size_t k = 0; k < len; k++) {
            unsigned char ch = (unsigned char)p->summary[k];
            ck_assert_msg(ch >= 0x20 && ch < 0x7f, "%s: summary byte %zu is 0x%02x", p->id, k, ch);
        }
        ck_assert_msg(p->summary[0] != ' ' && p->summary[len - 1] != ' ', "%s: stray space",
                      p->id);
        ck_assert_msg(p->summary[len - 1] != '.', "%s: summary ends with a period", p->id);
    }
}
END_TEST

START_TEST(test_by_id_finds_every_row)
{
    for (size_t i = 0; i < ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        /* Look it up through a copy: the match is by content, not pointer. */
        char copy[128];
        ck_assert_uint_lt(strlen(p->id), sizeof(copy));
        strcpy(copy, p->id);
        ck_assert_ptr_eq(qc_problem_by_id(copy), p);
    }
    ck_assert_ptr_eq(qc_problem_by_id("refcountLeak"), qc_problem_get(QC_P_REFCOUNT_LEAK));
    ck_assert_uint_eq(qc_problem_by_id("refcountLeak")->code, 604);
    ck_assert_ptr_eq(qc_problem_by_id("memoryLimit"), qc_problem_get(QC_P_MEMORY_LIMIT));
}
END_TEST

START_TEST(test_by_id_unknown)
{
    static const char *const unknown[] = {
        "", "nope", "HeaderTruncated", "headertruncated", "headerTruncated ", " headerTruncated",
        "headerTruncatedX", "header", "604", "refcount_leak", "REFCOUNT_LEAK",
    };
    for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
        ck_assert_msg(qc_problem_by_id(unknown[i]) == NULL, "\"%s\" was found", unknown[i]);
}
END_TEST

START_TEST(test_severity_and_fix_names)
{
    for (size_t i = 0; i < ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        const char *sev = qc_severity_name(p->severity);
        const char *fix = qc_fix_name(p->fix);
        ck_assert_ptr_nonnull(sev);
        ck_assert_ptr_nonnull(fix);
        ck_assert_msg(strcmp(sev, "?") != 0 && sev[0] != '\0', "%s: severity name", p->id);
        ck_assert_msg(strcmp(fix, "?") != 0 && fix[0] != '\0', "%s: fix name", p->id);
    }
    /* Every enum value has its own name. */
    const qc_severity sevs[] = {QC_SEV_ERROR, QC_SEV_CORRUPTION, QC_SEV_LEAK, QC_SEV_WARNING,
                                QC_SEV_INFO};
    for (size_t a = 0; a < 5; a++)
        for (size_t b = a + 1; b < 5; b++)
            ck_assert_str_ne(qc_severity_name(sevs[a]), qc_severity_name(sevs[b]));
    ck_assert_str_eq(qc_severity_name(QC_SEV_ERROR), "error");
    ck_assert_str_eq(qc_severity_name(QC_SEV_CORRUPTION), "corruption");
    ck_assert_str_eq(qc_severity_name(QC_SEV_LEAK), "leak");
    ck_assert_str_eq(qc_severity_name(QC_SEV_WARNING), "warning");
    ck_assert_str_eq(qc_severity_name(QC_SEV_INFO), "info");
    for (int a = QC_FIX_NONE; a <= QC_FIX_CLEAR_CORRUPT_BIT; a++) {
        ck_assert_str_ne(qc_fix_name((qc_fix)a), "?");
        for (int b = a + 1; b <= QC_FIX_CLEAR_CORRUPT_BIT; b++)
            ck_assert_str_ne(qc_fix_name((qc_fix)a), qc_fix_name((qc_fix)b));
    }
    ck_assert_str_eq(qc_fix_name(QC_FIX_NONE), "none");
    ck_assert_str_eq(qc_fix_name(QC_FIX_DROP_BITMAPS), "drop-bitmaps");
    ck_assert_str_eq(qc_fix_name(QC_FIX_CLEAR_BITS), "clear-bits");
    ck_assert_str_eq(qc_fix_name(QC_FIX_ZERO_TABLE_OFFSET), "zero-table-offset");
    /* Out of range values are named "?" instead of read out of bounds. */
    ck_assert_str_eq(qc_severity_name((qc_severity)(QC_SEV_INFO + 1)), "?");
    ck_assert_str_eq(qc_fix_name((qc_fix)(QC_FIX_QED_TRUNCATE_LEAKS + 1)), "?");
}
END_TEST

START_TEST(test_error_rows_have_no_fix)
{
    unsigned errors = 0;
    for (size_t i = 0; i < ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        if (p->severity != QC_SEV_ERROR)
            continue;
        errors++;
        ck_assert_msg(p->fix == QC_FIX_NONE, "%s is an error with fix %s", p->id,
                      qc_fix_name(p->fix));
    }
    ck_assert_uint_ge(errors, 3); /* versionUnsupported, readFailed, memoryLimit, ... */
}
END_TEST

START_TEST(test_counted_severities)
{
    /* The ones qemu-img counts must be what its counters need. */
    ck_assert_int_eq(qc_problem_get(QC_P_REFCOUNT_LEAK)->severity, QC_SEV_LEAK);
    ck_assert_int_eq(qc_problem_get(QC_P_REFCOUNT_TOO_LOW)->severity, QC_SEV_CORRUPTION);
    ck_assert_int_eq(qc_problem_get(QC_P_REFCOUNT_ZERO_IN_USE)->severity, QC_SEV_CORRUPTION);
    ck_assert_int_eq(qc_problem_get(QC_P_READ_FAILED)->severity, QC_SEV_ERROR);
    ck_assert_int_eq(qc_problem_get(QC_P_MEMORY_LIMIT)->severity, QC_SEV_ERROR);
    /* Every severity value of the table is a known one. */
    for (size_t i = 0; i < ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        ck_assert_int_ge(p->severity, QC_SEV_ERROR);
        ck_assert_int_le(p->severity, QC_SEV_INFO);
        ck_assert_int_ge(p->fix, QC_FIX_NONE);
        ck_assert_str_ne(qc_fix_name(p->fix), "?");
    }
}
END_TEST

/* Repairs are routed by the row's fix action: every action a row names
 * has its handler in -r all, no mode has two handlers for one action, and
 * no handler names an action no row has. A QED image has handlers of its
 * own (the 10xx rows), a qcow2 image the others. */
static void assert_one_handler_each(const qc_repair_handler *handlers, size_t count, bool qed)
{
    uint32_t in_rows = 0;
    for (size_t i = 0; i < ROWS; i++)
        if (qc_problem_at(i)->fix != QC_FIX_NONE && (qc_problem_at(i)->code / 100 == 10) == qed)
            in_rows |= 1u << qc_problem_at(i)->fix;
    uint32_t by_mode[3] = {0};
    for (size_t i = 0; i < count; i++) {
        const qc_repair_handler *h = &handlers[i];
        uint32_t handles = h->actions | h->finishes;
        ck_assert_msg(!(handles & ~in_rows), "the %s stage handles an action no row names (%s)",
                      h->name, qc_fix_name((qc_fix)__builtin_ctz(handles & ~in_rows)));
        for (unsigned mode = QC_REPAIR_LEAKS; mode <= QC_REPAIR_ALL; mode++) {
            if (!(h->modes & 1u << mode))
                continue;
            ck_assert_msg(!(by_mode[mode] & handles), "two stages of mode %u handle %s", mode,
                          qc_fix_name((qc_fix)__builtin_ctz(by_mode[mode] & handles)));
            by_mode[mode] |= handles;
        }
    }
    ck_assert_msg(!(in_rows & ~by_mode[QC_REPAIR_ALL]), "no stage of -r all handles %s",
                  qc_fix_name((qc_fix)__builtin_ctz(in_rows & ~by_mode[QC_REPAIR_ALL])));
}

START_TEST(test_every_fix_action_has_one_handler)
{
    assert_one_handler_each(qc_repair_handlers, qc_repair_handler_count, false);
    assert_one_handler_each(qc_qed_repair_handlers, qc_qed_repair_handler_count, true);
    /* -r leaks handles a subset: at least the refcounts it lowers, and a
     * QED image's trailing leaks. */
    uint32_t leaks = 0, qed_leaks = 0;
    for (size_t i = 0; i < qc_repair_handler_count; i++)
        if (qc_repair_handlers[i].modes & 1u << QC_REPAIR_LEAKS)
            leaks |= qc_repair_handlers[i].actions;
    for (size_t i = 0; i < qc_qed_repair_handler_count; i++)
        if (qc_qed_repair_handlers[i].modes & 1u << QC_REPAIR_LEAKS)
            qed_leaks |= qc_qed_repair_handlers[i].actions;
    ck_assert(leaks & 1u << QC_FIX_LOWER_REFCOUNT);
    ck_assert(qed_leaks & 1u << QC_FIX_QED_TRUNCATE_LEAKS);
    ck_assert(!(qed_leaks & 1u << QC_FIX_QED_CLEAR_ENTRY)); /* -r leaks drops no guest data */
}
END_TEST

/* ---- Message templates ----------------------------------------------- */

/* A context with every field set, to render any template. */
static qc_finding_ctx every_field(uint32_t variant)
{
    return (qc_finding_ctx){
        .present = (QC_CTX_NAME << 1) - 1,
        .variant = variant,
        .host_offset = 0x10000, .guest_offset = 0x20000, .cluster = 3, .clusters = 2,
        .l1_index = 4, .l2_index = 5, .snapshot = 1, .refcount = 2, .references = 1,
        .entry = 0x8000000000010000ull, .index = 6, .value = 7, .size = 512, .expected = 8,
        .file_size = 196608, .name = "name",
    };
}

static bool printable_text(const char *s)
{
    for (; *s; s++)
        if (*s < 0x20 || *s > 0x7e)
            return false;
    return true;
}

START_TEST(test_templates_parse)
{
    for (size_t i = 0; i < ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        ck_assert_ptr_nonnull(p->message);
        ck_assert_msg(p->message[0] != '\0', "%s has no message template", p->id);
        ck_assert_msg(qc_template_valid(p->message),
                      "%s: the template is malformed or names a field that does not exist: %s",
                      p->id, p->message);
    }
}
END_TEST

START_TEST(test_templates_render)
{
    /* Every wording of every row (a variant past a row's last one takes
     * the last), with every field set: nothing is missing, no placeholder
     * is left, and the message is printable ASCII. */
    for (size_t i = 0; i < ROWS; i++) {
        const qc_problem *p = qc_problem_at(i);
        for (uint32_t v = 0; v < 6; v++) {
            qc_finding_ctx c = every_field(v);
            char buf[600];
            ck_assert_int_eq(qc_template_render(buf, sizeof(buf), p->message, &c), 0);
            ck_assert_msg(buf[0] != '\0', "%s renders empty", p->id);
            ck_assert_msg(!strstr(buf, "%{") && !strchr(buf, '}') && !strchr(buf, '|'),
                          "%s variant %u left template syntax: %s", p->id, v, buf);
            ck_assert_msg(printable_text(buf), "%s: %s", p->id, buf);
            ck_assert_uint_eq(qc_finding_format(p, &c, buf, sizeof(buf)), strlen(buf));
        }
    }
}
END_TEST

START_TEST(test_known_messages)
{
    char buf[300];
    qc_finding_ctx c = {.present = QC_CTX_L2_INDEX | QC_CTX_HOST_OFFSET,
                        .variant = 1,
                        .l2_index = 7,
                        .host_offset = 0x10200};
    qc_finding_format(qc_problem_get(QC_P_L2_ENTRY_UNALIGNED), &c, buf, sizeof(buf));
    ck_assert_str_eq(buf, "entry 7 points to a preallocated cluster at 0x10200, which is not "
                          "cluster aligned");

    /* Plurals by value, the run prefix by variant. */
    c = (qc_finding_ctx){.present = QC_CTX_REFCOUNT | QC_CTX_REFERENCES, .refcount = 2,
                         .references = 1};
    qc_finding_format(qc_problem_get(QC_P_REFCOUNT_LEAK), &c, buf, sizeof(buf));
    ck_assert_str_eq(buf, "refcount 2 on disk, 1 reference");
    c.variant = 1;
    c.references = 0;
    qc_finding_format(qc_problem_get(QC_P_REFCOUNT_LEAK), &c, buf, sizeof(buf));
    ck_assert_str_eq(buf, "first: refcount 2 on disk, 0 references");

    /* Padded hex, and the entry's 16 digits. */
    c = (qc_finding_ctx){.present = QC_CTX_L2_INDEX | QC_CTX_VALUE, .l2_index = 3, .value = 0x30};
    qc_finding_format(qc_problem_get(QC_P_SUBCLUSTER_ALLOC_AND_ZERO), &c, buf, sizeof(buf));
    ck_assert_str_eq(buf, "entry 3: subclusters 0x00000030 are both allocated and zero");
    c = (qc_finding_ctx){.present = QC_CTX_INDEX | QC_CTX_ENTRY, .index = 12, .entry = 0x201};
    qc_finding_format(qc_problem_get(QC_P_REFTABLE_ENTRY_RESERVED_BITS), &c, buf, sizeof(buf));
    ck_assert_str_eq(buf, "entry is 0x0000000000000201");

    /* A choice by value: no clusters at all is what QEMU refuses. */
    c = (qc_finding_ctx){.present = QC_CTX_HOST_OFFSET | QC_CTX_VALUE, .host_offset = 0, .value = 0};
    qc_finding_format(qc_problem_get(QC_P_REFTABLE_MISSING), &c, buf, sizeof(buf));
    ck_assert_str_eq(buf, "refcount table offset 0x0, 0 clusters; QEMU refuses the image (\"Image "
                          "does not contain a reference count table\")");
    c.value = 1;
    qc_finding_format(qc_problem_get(QC_P_REFTABLE_MISSING), &c, buf, sizeof(buf));
    ck_assert_str_eq(buf, "refcount table offset 0x0, 1 clusters");
}
END_TEST

START_TEST(test_template_syntax)
{
    qc_finding_ctx c = {.present = QC_CTX_VALUE | QC_CTX_NAME, .value = 10, .name = "x"};
    char buf[64];
    ck_assert(qc_template_valid("plain text, 100%% sure"));
    ck_assert_int_eq(qc_template_render(buf, sizeof(buf), "100%% %{value:x} %{value:d}", &c), 0);
    ck_assert_str_eq(buf, "100% 0xa 10");
    ck_assert_int_eq(qc_template_render(buf, sizeof(buf), "%{name?[%{name}]|none}", &c), 0);
    ck_assert_str_eq(buf, "[x]");
    ck_assert_int_eq(qc_template_render(buf, sizeof(buf), "%{size?%{size}|none}", &c), 0);
    ck_assert_str_eq(buf, "none");
    /* Malformed, or naming what does not exist. */
    ck_assert(!qc_template_valid("%{nosuchfield}"));
    ck_assert(!qc_template_valid("%{value"));
    ck_assert(!qc_template_valid("%{value:q}"));
    ck_assert(!qc_template_valid("%{value:x99}"));
    ck_assert(!qc_template_valid("%{variant=a|%{nosuch}}"));
    ck_assert(!qc_template_valid("%{name:x}"));
    ck_assert_int_eq(qc_template_render(buf, sizeof(buf), "%{bogus}", &c), QC_TEMPLATE_INVALID);
    /* A field the context does not set prints as "?" and is flagged. */
    ck_assert_int_eq(qc_template_render(buf, sizeof(buf), "at %{host_offset}", &c),
                     QC_TEMPLATE_MISSING);
    ck_assert_str_eq(buf, "at ?");
}
END_TEST

START_TEST(test_render_is_bounded_and_inert)
{
    /* A name from the image is copied, never read as a template, and only
     * printable characters come out. */
    qc_finding_ctx c = {.present = QC_CTX_NAME, .name = "%{entry}\x01\xff%s%n"};
    char buf[64];
    ck_assert_int_eq(qc_template_render(buf, sizeof(buf), "<%{name}>", &c), 0);
    ck_assert_str_eq(buf, "<%{entry}??%s%n>");
    /* Cut short, always terminated; the full length is still told. */
    char small[8];
    memset(small, 'z', sizeof(small));
    qc_finding_ctx v = {.present = QC_CTX_L1_INDEX | QC_CTX_ENTRY, .l1_index = 1, .entry = 1};
    size_t need = qc_finding_format(qc_problem_get(QC_P_L1_ENTRY_RESERVED_BITS), &v, small,
                                    sizeof(small));
    ck_assert_str_eq(small, "entry 1");
    ck_assert_uint_eq(need, strlen("entry 1 is 0x0000000000000001"));
    /* No context at all: every field is missing. */
    char out[100];
    qc_finding_format(qc_problem_get(QC_P_VERSION_UNSUPPORTED), NULL, out, sizeof(out));
    ck_assert_str_eq(out, "version ?; qcheck knows versions 2 and 3");
}
END_TEST

START_TEST(test_field_names)
{
    qc_finding_ctx c = every_field(0);
    const char *expected[] = {"host_offset", "guest_offset", "cluster", "clusters", "l1_index",
                              "l2_index", "snapshot", "refcount", "references", "entry",
                              "index", "value", "size", "expected", "file_size"};
    bool present;
    uint64_t value;
    unsigned n = 0;
    for (const char *name; (name = qc_finding_field(&c, n, &present, &value)); n++) {
        ck_assert_uint_lt(n, sizeof(expected) / sizeof(expected[0]));
        ck_assert_str_eq(name, expected[n]);
        ck_assert(present);
    }
    ck_assert_uint_eq(n, sizeof(expected) / sizeof(expected[0]));
    ck_assert_uint_eq(QC_CTX_NAME, 1u << n);
    c.present = QC_CTX_L2_INDEX;
    ck_assert_str_eq(qc_finding_field(&c, 5, &present, &value), "l2_index");
    ck_assert(present);
    ck_assert_uint_eq(value, 5);
    qc_finding_field(&c, 4, &present, &value);
    ck_assert(!present);
}
END_TEST

/* The reporter: a finding carries the row's message made from the call
 * site's context, and the context itself. */
typedef struct seen {
    unsigned calls;
    char message[200];
    char object[64];
    uint64_t offset, l1_index, host_offset;
    uint32_t present;
} seen;

static void remember(const qc_finding *f, void *payload)
{
    seen *s = payload;
    s->calls++;
    snprintf(s->message, sizeof(s->message), "%s", f->message);
    snprintf(s->object, sizeof(s->object), "%s", f->object);
    s->offset = f->offset;
    ck_assert_ptr_nonnull(f->context);
    s->present = f->context->present;
    s->l1_index = f->context->l1_index;
    s->host_offset = f->context->host_offset;
}

START_TEST(test_reporter)
{
    static const uint8_t image[512];
    qc_io io;
    qc_io_open_memory(&io, image, sizeof(image));
    seen s = {0};
    qc_options opts = {.size = sizeof(qc_options), .on_finding = remember, .payload = &s};
    qc_result result;
    memset(&result, 0, sizeof(result));
    qc_ctx ctx;
    memset(&ctx, 0, sizeof(ctx));
    qc_ctx_begin(&ctx, &io, &opts, &result);
    qc_report(&ctx, QC_P_L1_ENTRY_PAST_EOF, "active L1 table", 0x30018, 1,
              &(qc_finding_ctx){.present = QC_CTX_L1_INDEX | QC_CTX_HOST_OFFSET | QC_CTX_FILE_SIZE,
                                .l1_index = 3,
                                .host_offset = 0x7000000,
                                .file_size = 196608});
    qc_report_flush(&ctx);
    qc_ctx_release(&ctx);
    qc_io_close(&io);
    ck_assert_uint_eq(s.calls, 1);
    ck_assert_str_eq(s.message, "entry 3 points to an L2 table at 0x7000000; the file is 196608 bytes");
    ck_assert_str_eq(s.object, "active L1 table");
    ck_assert_uint_eq(s.offset, 0x30018);
    ck_assert_uint_eq(s.present, QC_CTX_L1_INDEX | QC_CTX_HOST_OFFSET | QC_CTX_FILE_SIZE);
    ck_assert_uint_eq(s.l1_index, 3);
    ck_assert_uint_eq(s.host_offset, 0x7000000);
    ck_assert_uint_eq(result.corruptions, 1);
}
END_TEST

Suite *unit_suite(void)
{
    Suite *s = suite_create("problems");
    TCase *tc = tcase_create("table");
    tcase_add_test(tc, test_get_indexes);
    tcase_add_test(tc, test_codes_sorted_unique);
    tcase_add_test(tc, test_code_areas);
    tcase_add_test(tc, test_ids_unique);
    tcase_add_test(tc, test_ids_camel_case);
    tcase_add_test(tc, test_ids_match_enum_names);
    tcase_add_test(tc, test_summaries);
    tcase_add_test(tc, test_error_rows_have_no_fix);
    tcase_add_test(tc, test_counted_severities);
    tcase_add_test(tc, test_every_fix_action_has_one_handler);
    suite_add_tcase(s, tc);

    tc = tcase_create("lookup");
    tcase_add_test(tc, test_by_id_finds_every_row);
    tcase_add_test(tc, test_by_id_unknown);
    tcase_add_test(tc, test_severity_and_fix_names);
    suite_add_tcase(s, tc);

    tc = tcase_create("messages");
    tcase_add_test(tc, test_templates_parse);
    tcase_add_test(tc, test_templates_render);
    tcase_add_test(tc, test_known_messages);
    tcase_add_test(tc, test_template_syntax);
    tcase_add_test(tc, test_render_is_bounded_and_inert);
    tcase_add_test(tc, test_field_names);
    tcase_add_test(tc, test_reporter);
    suite_add_tcase(s, tc);
    return s;
}
