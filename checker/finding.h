/*
 * Message templates (finding.c): the library's side of qc_finding_format,
 * for the reporter and the tests of the problem table.
 */
#ifndef QC_FINDING_H
#define QC_FINDING_H

#include <stdbool.h>
#include <stddef.h>

#include "qcheck.h"

enum {
    QC_TEMPLATE_INVALID = 1, /* malformed, or names a field that does not exist */
    QC_TEMPLATE_MISSING = 2, /* names a field the context does not set */
};

/* Render `tmpl` for `c` into buf (always NUL-terminated, cut short when it
 * does not fit). Returns 0 or a QC_TEMPLATE_* value. */
int qc_template_render(char *buf, size_t len, const char *tmpl, const qc_finding_ctx *c);
/* Whether every part of `tmpl` (each alternative) parses and names only
 * fields that exist. */
bool qc_template_valid(const char *tmpl);

#endif
