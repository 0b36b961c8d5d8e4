/*
 * Repairing an image held in memory, and the oracles a repair must pass
 * (see repair_run.h).
 */
#include "repair_run.h"

#include "crash_io.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static fz_counts counts_of(const qc_result *r)
{
    return (fz_counts){qc_result_count(r, QC_COUNT_CORRUPTIONS), qc_result_count(r, QC_COUNT_LEAKS),
                       qc_result_count(r, QC_COUNT_CHECK_ERRORS),
                       qc_result_count(r, QC_COUNT_WARNINGS)};
}

/* The transaction over the copy in out->image; `image` is its io. */
static int run_transaction(qc_io *image, const qc_options *opts, qc_repair_mode mode,
                           uint64_t crash_after, bool drop_unflushed, fz_repaired *out)
{
    qc_io undo, crash = {0};
    if (qc_io_open_memory_rw(&undo, &out->undo, &out->undo_len) != 0)
        return -ENOMEM;
    qc_io *target = image;
    if (crash_after != UINT64_MAX) {
        if (qc_io_open_crash(&crash, image, crash_after, drop_unflushed) != 0) {
            qc_io_close(&undo);
            return -ENOMEM;
        }
        target = &crash;
    }
    qc_repair_options ro = QC_REPAIR_OPTIONS_INIT;
    ro.mode = mode;
    ro.undo = &undo;
    qc_repair *rep = NULL;
    int ret = qc_repair_run(target, opts, &ro, &rep);
    if (ret == 0) {
        const qc_repair_plan *plan = qc_repair_get_plan(rep);
        for (size_t i = 0; plan && i < qc_repair_plan_steps(plan); i++)
            out->writes += qc_repair_plan_step(plan, i)->kind != QC_STEP_FLUSH;
        out->before = counts_of(qc_repair_before(rep));
        out->predicted = counts_of(qc_repair_predicted(rep));
        qc_repair_outcome outcome = qc_repair_outcome_of(rep);
        if (outcome == QC_REPAIR_REFUSED)
            out->plan_ret = -EPERM;
        else if (outcome == QC_REPAIR_UNPLANNED)
            out->plan_ret = qc_repair_error(rep);
        else if (outcome == QC_REPAIR_FAILED || outcome == QC_REPAIR_STOPPED)
            out->apply_ret = qc_repair_error(rep);
    }
    qc_repair_free(rep);
    if (crash.close)
        qc_io_close(&crash);
    qc_io_close(&undo);
    return ret;
}

int fz_repair_run(const uint8_t *buf, size_t len, const qc_options *opts, qc_repair_mode mode,
                  uint64_t crash_after, bool drop_unflushed, fz_repaired *out)
{
    memset(out, 0, sizeof(*out));
    out->image = malloc(len ? len : 1);
    if (!out->image)
        return -ENOMEM;
    memcpy(out->image, buf, len);
    out->len = len;
    qc_io rw;
    if (qc_io_open_memory_rw(&rw, &out->image, &out->len) != 0)
        return -ENOMEM;
    int ret = run_transaction(&rw, opts, mode, crash_after, drop_unflushed, out);
    qc_io_close(&rw);
    if (ret != 0)
        return ret;

    /* The image as the repair left it, crashed or not, checked afresh. */
    qc_result *after = qc_result_new();
    qc_io check_io;
    qc_io_open_memory(&check_io, out->image, out->len);
    ret = after ? qc_check(&check_io, opts, after) : -ENOMEM;
    qc_io_close(&check_io);
    if (ret == 0)
        out->after = counts_of(after);
    qc_result_free(after);
    return ret;
}

void fz_repaired_free(fz_repaired *r)
{
    free(r->image);
    free(r->undo);
    r->image = r->undo = NULL;
}

__attribute__((format(printf, 2, 3))) static void fail(fz_verdict *v, const char *fmt, ...)
{
    if (v->failure[0])
        return; /* keep the first */
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->failure, sizeof(v->failure), fmt, ap);
    va_end(ap);
}

static unsigned long long ull(uint64_t x)
{
    return (unsigned long long)x;
}

/* The oracles for one QC_REPAIR_ALL run `a` of buf. */
static void judge_full_repair(const uint8_t *buf, size_t len, const qc_options *opts, uint64_t seed,
                              const fz_repaired *a, fz_verdict *v)
{
    fz_repaired again;
    if (fz_repair_run(a->image, a->len, opts, QC_REPAIR_ALL, UINT64_MAX, false, &again) != 0)
        fail(v, "out of memory running the second repair");
    else if (again.plan_ret != 0)
        fail(v, "a second -r all was refused (%d)", again.plan_ret);
    else if (again.after.corruptions != a->after.corruptions)
        fail(v, "a second -r all changed corruptions %llu -> %llu", ull(a->after.corruptions),
             ull(again.after.corruptions));
    fz_repaired_free(&again);
    if (v->failure[0] || a->writes == 0)
        return;

    uint64_t crash_after = seed % a->writes;
    bool drop = (seed >> 32) & 1;
    fz_repaired crashed, resumed;
    memset(&resumed, 0, sizeof(resumed));
    if (fz_repair_run(buf, len, opts, QC_REPAIR_ALL, crash_after, drop, &crashed) != 0)
        fail(v, "out of memory running the interrupted repair");
    else if (crashed.apply_ret == 0)
        fail(v, "the repair did not notice the crash after %llu writes", ull(crash_after));
    else if (fz_repair_run(crashed.image, crashed.len, opts, QC_REPAIR_ALL, UINT64_MAX, false,
                           &resumed) != 0)
        fail(v, "out of memory resuming the interrupted repair");
    else if (resumed.plan_ret != 0)
        fail(v, "after a crash at write %llu (%s), -r all was refused (%d)", ull(crash_after),
             drop ? "unflushed dropped" : "kept", resumed.plan_ret);
    else if (resumed.after.corruptions != a->after.corruptions)
        fail(v,
             "after a crash at write %llu (%s) and -r all: %llu corruptions, %llu without the "
             "crash",
             ull(crash_after), drop ? "unflushed dropped" : "kept", ull(resumed.after.corruptions),
             ull(a->after.corruptions));
    v->crash_tested = !v->failure[0];
    fz_repaired_free(&crashed);
    fz_repaired_free(&resumed);
}

void fz_repair_oracle(const uint8_t *buf, size_t len, const qc_options *opts, qc_repair_mode mode,
                      uint64_t seed, fz_verdict *v)
{
    memset(v, 0, sizeof(*v));
    fz_repaired a;
    if (fz_repair_run(buf, len, opts, mode, UINT64_MAX, false, &a) != 0) {
        fail(v, "out of memory running the repair");
        fz_repaired_free(&a);
        return;
    }
    v->plan_ret = a.plan_ret;
    v->writes = a.writes;
    if (a.plan_ret != 0) {
        if (a.plan_ret != -EPERM)
            fail(v, "planning failed with %d", a.plan_ret);
        else if (a.writes || a.len != len || memcmp(a.image, buf, len) != 0)
            fail(v, "a refused repair changed the image");
    } else if (a.apply_ret != 0) {
        fail(v, "applying the plan failed with %d", a.apply_ret);
    } else if (a.after.corruptions != a.predicted.corruptions ||
               a.after.leaks != a.predicted.leaks ||
               a.after.check_errors != a.predicted.check_errors) {
        fail(v,
             "predicted %llu corruptions, %llu leaks, %llu check errors; the re-check found "
             "%llu, %llu, %llu",
             ull(a.predicted.corruptions), ull(a.predicted.leaks), ull(a.predicted.check_errors),
             ull(a.after.corruptions), ull(a.after.leaks), ull(a.after.check_errors));
    } else if (a.after.corruptions > a.before.corruptions) {
        fail(v, "the repair added corruptions (%llu -> %llu)", ull(a.before.corruptions),
             ull(a.after.corruptions));
    } else if (a.after.check_errors > a.before.check_errors) {
        fail(v, "the repair made the image uncheckable (%llu check errors)",
             ull(a.after.check_errors));
    } else if (mode == QC_REPAIR_ALL) {
        judge_full_repair(buf, len, opts, seed, &a, v);
    }
    fz_repaired_free(&a);
}
