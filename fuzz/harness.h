/*
 * The one function every fuzz harness defines. driver.c calls it for each
 * input: in AFL++'s persistent mode when built with afl-clang-fast, or as a
 * replay driver over files and folders otherwise.
 */
#ifndef QC_FUZZ_HARNESS_H
#define QC_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>

/* Run one input. A finding of the harness's oracle is reported on stderr
 * and ends the process with abort(), which both AFL++ and ctest see. */
void fuzz_one(const uint8_t *data, size_t len);

/* What every harness lets a check allocate: inputs are at most a few MiB,
 * and the checker bounds its memory by the file size, so a budget this
 * size is only reached by a bug (and then reported as memoryLimit, which
 * the check harness treats as a finding). */
#define FUZZ_MAX_MEM (256ULL << 20)

/* Report an oracle failure and abort. */
_Noreturn void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
