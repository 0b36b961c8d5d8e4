/*
 * Unit tests for the problem table (checker/include/qcheck_problems.def) and its lookup
 * functions.
 */
#include <check.h>
#include <ctype.h>
#include <stdlib.h>
#include <string.h>

#include "qcheck.h"

/* The enum names, straight from the table, to compare with the ids. */
static const char *const enum_names[QC_P_COUNT] = {
#define QC_PROBLEM(name, code, id, sev, fix, summary, message) [QC_P_##name] = #name,
#include "qcheck_problems.def"
#undef QC_PROBLEM
};

START_TEST(test_get_indexes)
{
    ck_assert_uint_gt(QC_P_COUNT, 50);
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const qc_problem *p = qc_problem_get((qc_problem_id)i);
        ck_assert_ptr_nonnull(p);
        ck_assert_uint_eq(p->index, i);
        ck_assert_ptr_nonnull(p->id);
        ck_assert_ptr_nonnull(p->summary);
    }
    ck_assert_ptr_null(qc_problem_get(QC_P_COUNT));
    ck_assert_ptr_null(qc_problem_get((qc_problem_id)(QC_P_COUNT + 100)));
    ck_assert_ptr_null(qc_problem_get((qc_problem_id)-1));
}
END_TEST

START_TEST(test_codes_sorted_unique)
{
    for (unsigned i = 1; i < QC_P_COUNT; i++) {
        const qc_problem *a = qc_problem_get((qc_problem_id)(i - 1));
        const qc_problem *b = qc_problem_get((qc_problem_id)i);
        ck_assert_msg(a->code < b->code, "code %u (%s) is not below code %u (%s)", a->code, a->id,
                      b->code, b->id);
    }
}
END_TEST

START_TEST(test_code_areas)
{
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const qc_problem *p = qc_problem_get((qc_problem_id)i);
        unsigned area = p->code / 100;
        ck_assert_msg(area >= 1 && area <= 8, "%s has code %u", p->id, p->code);
        ck_assert_msg(p->code % 100 != 0, "%s has code %u (xx00 is not a problem)", p->id, p->code);
        /* The 8xx area is "the check itself", not the image: a check
         * error, or a warning about how it was made (imageInUse); never
         * a corruption or leak. */
        if (area == 8)
            ck_assert_msg(p->severity == QC_SEV_ERROR || p->severity == QC_SEV_WARNING,
                          "%s (%u) is neither an error nor a warning", p->id, p->code);
    }
}
END_TEST

START_TEST(test_ids_unique)
{
    for (unsigned i = 0; i < QC_P_COUNT; i++)
        for (unsigned j = i + 1; j < QC_P_COUNT; j++)
            ck_assert_msg(strcmp(qc_problem_get((qc_problem_id)i)->id,
                                 qc_problem_get((qc_problem_id)j)->id) != 0,
                          "id %s appears twice", qc_problem_get((qc_problem_id)i)->id);
}
END_TEST

START_TEST(test_ids_camel_case)
{
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const char *id = qc_problem_get((qc_problem_id)i)->id;
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
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const char *id = qc_problem_get((qc_problem_id)i)->id;
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
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const qc_problem *p = qc_problem_get((qc_problem_id)i);
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
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const qc_problem *p = qc_problem_get((qc_problem_id)i);
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
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const qc_problem *p = qc_problem_get((qc_problem_id)i);
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
    for (int a = QC_FIX_NONE; a <= QC_FIX_ZERO_TABLE_OFFSET; a++) {
        ck_assert_str_ne(qc_fix_name((qc_fix)a), "?");
        for (int b = a + 1; b <= QC_FIX_ZERO_TABLE_OFFSET; b++)
            ck_assert_str_ne(qc_fix_name((qc_fix)a), qc_fix_name((qc_fix)b));
    }
    ck_assert_str_eq(qc_fix_name(QC_FIX_NONE), "none");
    ck_assert_str_eq(qc_fix_name(QC_FIX_DROP_BITMAPS), "drop-bitmaps");
    ck_assert_str_eq(qc_fix_name(QC_FIX_CLEAR_BITS), "clear-bits");
    ck_assert_str_eq(qc_fix_name(QC_FIX_ZERO_TABLE_OFFSET), "zero-table-offset");
    /* Out of range values are named "?" instead of read out of bounds. */
    ck_assert_str_eq(qc_severity_name((qc_severity)(QC_SEV_INFO + 1)), "?");
    ck_assert_str_eq(qc_fix_name((qc_fix)(QC_FIX_ZERO_TABLE_OFFSET + 1)), "?");
}
END_TEST

START_TEST(test_error_rows_have_no_fix)
{
    unsigned errors = 0;
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const qc_problem *p = qc_problem_get((qc_problem_id)i);
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
    for (unsigned i = 0; i < QC_P_COUNT; i++) {
        const qc_problem *p = qc_problem_get((qc_problem_id)i);
        ck_assert_int_ge(p->severity, QC_SEV_ERROR);
        ck_assert_int_le(p->severity, QC_SEV_INFO);
        ck_assert_int_ge(p->fix, QC_FIX_NONE);
        ck_assert_int_le(p->fix, QC_FIX_ZERO_TABLE_OFFSET);
    }
}
END_TEST

static Suite *problems_suite(void)
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
    suite_add_tcase(s, tc);

    tc = tcase_create("lookup");
    tcase_add_test(tc, test_by_id_finds_every_row);
    tcase_add_test(tc, test_by_id_unknown);
    tcase_add_test(tc, test_severity_and_fix_names);
    suite_add_tcase(s, tc);
    return s;
}

int main(void)
{
    SRunner *sr = srunner_create(problems_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
