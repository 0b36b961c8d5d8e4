/*
 * Fuzz harness 2: a full check.
 *
 * Checks the input twice and requires the same result both times (a
 * difference means uninitialised memory or hidden state), every finding to
 * name a problem of the table with printable text, and the counters to be
 * consistent with each other and with qemu-img's exit codes. The check
 * runs with --deep (every compressed stream decompressed, every data
 * cluster read); on an input it finds consistent, the guest-content digest
 * must end with a value or a refusal.
 */
#include <errno.h>
#include <string.h>

#include "harness.h"
#include "result.h" /* the whole qc_result: two checks are compared byte for byte */

static void require_printable(const char *what, const char *s)
{
    if (!s)
        fuzz_fail("a finding has no %s", what);
    for (const char *p = s; *p; p++)
        if (*p < 0x20 || *p > 0x7e)
            fuzz_fail("a finding's %s has byte 0x%02x: \"%s\"", what, (unsigned char)*p, s);
}

static void on_finding(const qc_finding *f, void *payload)
{
    (void)payload;
    if (!f->problem || qc_problem_get(f->problem->code) != f->problem)
        fuzz_fail("a finding names no problem of the table");
    require_printable("object", f->object);
    require_printable("message", f->message);
}

static void require_consistent(const qc_result *r)
{
    int status = qc_exit_status(r);
    if (status != 0 && status != 1 && status != 2 && status != 3 && status != 63)
        fuzz_fail("exit status %d", status);
    if (r->other_format && (r->header_valid || r->findings))
        fuzz_fail("a file of another format (%s) has qcow2 findings", r->other_format);
    /* allocated_clusters may exceed total_clusters, as in QEMU: every L1
     * entry is walked, also those past the virtual size. */
    if (r->fragmented_clusters > r->allocated_clusters ||
        r->compressed_clusters > r->allocated_clusters)
        fuzz_fail("cluster counts out of order: allocated %llu, fragmented %llu, compressed %llu",
                  (unsigned long long)r->allocated_clusters,
                  (unsigned long long)r->fragmented_clusters,
                  (unsigned long long)r->compressed_clusters);
    if (qc_found(r, QC_P_MEMORY_LIMIT))
        fuzz_fail("the check of a small input needed more than FUZZ_MAX_MEM");
}

/* What --digest does after a check without corruptions: it must end with
 * a digest or a refusal, never read outside the input. Guest sizes are
 * bounded here only to keep a replay fast (the digest's work follows the
 * virtual size, as a conversion's does). */
static void digest_if_clean(qc_io *io, const qc_result *r)
{
    if (r->other_format || r->corruptions || r->check_errors || !r->header_valid ||
        r->header.virtual_size > (64ull << 30))
        return;
    uint8_t digest[QC_DIGEST_MAX];
    size_t n;
    int ret = qc_digest(io, QC_DIGEST_SHA256, false, digest, &n, NULL, 0);
    if (ret != 0 && ret != -ENOTSUP && ret != -EIO)
        fuzz_fail("the digest of a clean image failed with %d", ret);
    if (ret == 0 && n != 32)
        fuzz_fail("a SHA-256 digest of %zu bytes", n);
}

/* The header's names point into their own result: equal when both are
 * absent or both name the same string at the same place of the result. */
static bool same_name(const qc_result *a, const char *na, const qc_result *b, const char *nb)
{
    if (!na || !nb)
        return na == nb;
    return na - (const char *)a == nb - (const char *)b && strcmp(na, nb) == 0;
}

/* Two results byte for byte, the names compared as strings. */
static bool same_result(const qc_result *a, const qc_result *b)
{
    if (!same_name(a, a->header.backing_file, b, b->header.backing_file) ||
        !same_name(a, a->header.backing_format, b, b->header.backing_format) ||
        !same_name(a, a->header.data_file, b, b->header.data_file))
        return false;
    qc_result x = *a, y = *b;
    x.header.backing_file = x.header.backing_format = x.header.data_file = NULL;
    y.header.backing_file = y.header.backing_format = y.header.data_file = NULL;
    return memcmp(&x, &y, sizeof(x)) == 0;
}

void fuzz_one(const uint8_t *data, size_t len)
{
    qc_io io;
    qc_io_open_memory(&io, data, len);
    qc_options opts = QC_OPTIONS_INIT;
    opts.on_finding = on_finding;
    opts.max_mem = FUZZ_MAX_MEM;
    opts.deep = true; /* hostile compressed streams and data ranges too */
    qc_result first = {0}, second = {0}; /* qc_check frees a map an earlier check left */
    if (qc_check(&io, &opts, &first) != 0 || qc_check(&io, &opts, &second) != 0)
        fuzz_fail("qc_check refused its arguments");
    if (!same_result(&first, &second))
        fuzz_fail("two checks of the same bytes differ");
    require_consistent(&first);
    digest_if_clean(&io, &first);
    qc_io_close(&io);
}
