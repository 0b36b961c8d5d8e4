/*
 * The problem table (qcheck_problems.def) as data: lookup by code, by row
 * and by id, and the names of severities and fix actions.
 */
#include <string.h>

#include "result.h"

static const qc_problem problem_table[QC_PROBLEM_ROWS] = {
#define QC_PROBLEM(name, code_, id_, sev, fix_, summary_, message_)                                \
    [QC_ROW_##name] = {QC_P_##name, id_, QC_SEV_##sev, QC_FIX_##fix_, summary_, message_},
#include "qcheck_problems.def"
#undef QC_PROBLEM
};

qc_problem_row qc_problem_row_of(qc_problem_id code)
{
    switch (code) {
#define QC_PROBLEM(name, ...)                                                                      \
    case QC_P_##name:                                                                              \
        return QC_ROW_##name;
#include "qcheck_problems.def"
#undef QC_PROBLEM
    case QC_P_NONE:
        break;
    }
    return QC_PROBLEM_ROWS;
}

const qc_problem *qc_problem_get(qc_problem_id code)
{
    qc_problem_row row = qc_problem_row_of(code);
    return row < QC_PROBLEM_ROWS ? &problem_table[row] : NULL;
}

size_t qc_problem_count(void)
{
    return QC_PROBLEM_ROWS;
}

const qc_problem *qc_problem_at(size_t i)
{
    return i < QC_PROBLEM_ROWS ? &problem_table[i] : NULL;
}

const qc_problem *qc_problem_by_id(const char *id)
{
    for (size_t i = 0; i < QC_PROBLEM_ROWS; i++)
        if (strcmp(problem_table[i].id, id) == 0)
            return &problem_table[i];
    return NULL;
}

const char *qc_severity_name(qc_severity sev)
{
    static const char *const names[] = {"error", "corruption", "leak", "warning", "info"};
    return (unsigned)sev < sizeof(names) / sizeof(names[0]) ? names[sev] : "?";
}

const char *qc_fix_name(qc_fix fix)
{
    static const char *const names[] = {
        [QC_FIX_NONE] = "none",
        [QC_FIX_LOWER_REFCOUNT] = "lower-refcount",
        [QC_FIX_RAISE_REFCOUNT] = "raise-refcount",
        [QC_FIX_REBUILD_REFCOUNTS] = "rebuild-refcounts",
        [QC_FIX_FIX_COPIED] = "fix-copied",
        [QC_FIX_CLEAR_ENTRY] = "clear-entry",
        [QC_FIX_CLEAR_FEATURE_BIT] = "clear-feature-bit",
        [QC_FIX_TRIM_SNAPSHOT_TABLE] = "trim-snapshot-table",
        [QC_FIX_DROP_BITMAPS] = "drop-bitmaps",
        [QC_FIX_CLEAR_BITS] = "clear-bits",
        [QC_FIX_ZERO_TABLE_OFFSET] = "zero-table-offset",
        [QC_FIX_REWRITE_SNAPSHOT_TABLE] = "rewrite-snapshot-table",
        [QC_FIX_REPOINT_OR_CLEAR] = "repoint-or-clear",
        [QC_FIX_CLEAR_DIRTY_BIT] = "clear-dirty-bit",
        [QC_FIX_CLEAR_CORRUPT_BIT] = "clear-corrupt-bit",
        [QC_FIX_QED_CLEAR_ENTRY] = "qed-clear-entry",
        [QC_FIX_QED_SEPARATE] = "qed-separate",
        [QC_FIX_QED_TRUNCATE_LEAKS] = "qed-truncate-leaks",
    };
    return (unsigned)fix < sizeof(names) / sizeof(names[0]) ? names[fix] : "?";
}
