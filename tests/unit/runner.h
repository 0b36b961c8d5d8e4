/*
 * The one main() of the unit tests (tests/unit/runner.c): each unit test
 * executable defines unit_suite(), the libcheck suite it is, and links the
 * runner, which runs it and exits non-zero when a test failed.
 */
#ifndef QC_TESTS_UNIT_RUNNER_H
#define QC_TESTS_UNIT_RUNNER_H

#include <check.h>

Suite *unit_suite(void);

#endif
