/*
 * Crash injection for tests (crash_io.c): the image io of a repair that
 * "dies" after a given number of writes.
 */
#ifndef QC_TEST_CRASH_IO_H
#define QC_TEST_CRASH_IO_H

#include <stdbool.h>
#include <stdint.h>

#include "qcheck.h"

/* Forward to `inner` (which stays owned by the caller) until
 * `writes_allowed` writes have completed, then fail every write and flush
 * as if the process had died. With `drop_unflushed`, the moment it "dies"
 * it also undoes every write not yet followed by a flush, as a power
 * failure may. */
int qc_io_open_crash(qc_io *io, qc_io *inner, uint64_t writes_allowed, bool drop_unflushed);

#endif
