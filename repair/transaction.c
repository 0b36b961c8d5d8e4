/*
 * The repair transaction: plan, undo log, salvage, apply, check again, as
 * one library call (qc_repair_run). The command and the fuzz oracle both
 * repair through it, so the order of those steps lives in one place.
 *
 * Needs: an io open for writing (a file open with QC_LOCK_REPAIR). Produces:
 * the outcome, the plan, the checks before, predicted and after.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "planner.h"

struct qc_repair {
    qc_repair_outcome outcome;
    int error;
    qc_repair_plan *plan;
    qc_result before, predicted, after;
    int salvage_status;
    qc_salvage_info salvage;
    char why[1024];
};

__attribute__((format(printf, 3, 4))) static void set_why(qc_repair *rep, int err,
                                                          const char *fmt, ...)
{
    rep->error = err;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(rep->why, sizeof(rep->why), fmt, ap);
    va_end(ap);
}

/* The undo log at a path: a new file, so that an old log is never
 * overwritten, locked as a repair locks its image so that QEMU keeps out of
 * it too. */
static int create_undo(const char *path, qc_io *io)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return -errno;
    close(fd);
    int ret = qc_io_open_image(io, path, QC_LOCK_REPAIR, NULL);
    if (ret < 0)
        unlink(path);
    return ret;
}

static bool load_options(qc_repair_options *dst, const qc_repair_options *src)
{
    memset(dst, 0, sizeof(*dst));
    if (!src || src->size < offsetof(qc_repair_options, dry_run))
        return false;
    memcpy(dst, src, src->size < sizeof(*dst) ? src->size : sizeof(*dst));
    return dst->mode == QC_REPAIR_LEAKS || dst->mode == QC_REPAIR_ALL;
}

static int tell(const qc_repair_options *o, qc_repair_event event, const qc_repair *rep)
{
    return o->on_event ? o->on_event(event, rep, o->payload) : 0;
}

/* Undo log, salvage, the caller's last word, the writes: the image is
 * touched only once all of them are in place. */
static void carry_out(qc_repair *rep, qc_io *io, const qc_options *check,
                      const qc_repair_options *o)
{
    qc_io own_undo = {0};
    qc_io *undo = o->undo;
    if (o->undo_path) {
        int ret = create_undo(o->undo_path, &own_undo);
        if (ret < 0) {
            rep->outcome = QC_REPAIR_STOPPED;
            set_why(rep, ret, "could not create the undo log '%s': %s", o->undo_path,
                    strerror(-ret));
            return;
        }
        undo = &own_undo;
    }
    bool stopped = false;
    if (o->salvage_dir) {
        rep->salvage_status = qc_repair_salvage(rep->plan, io, o->salvage_dir, false,
                                                &rep->salvage, rep->why, sizeof(rep->why));
        if (rep->salvage_status < 0) {
            if (!rep->why[0])
                set_why(rep, rep->salvage_status, "cannot save to '%s': %s", o->salvage_dir,
                        strerror(-rep->salvage_status));
            rep->error = rep->salvage_status;
            stopped = true;
        }
    }
    if (!stopped && tell(o, QC_REPAIR_EVENT_WRITING, rep) != 0) {
        set_why(rep, -ECANCELED, "stopped by the caller before the first write");
        stopped = true;
    }
    if (stopped) {
        rep->outcome = QC_REPAIR_STOPPED;
        if (own_undo.close) {
            qc_io_close(&own_undo);
            unlink(o->undo_path);
        }
        return;
    }
    int ret = qc_repair_apply(rep->plan, io, undo);
    if (own_undo.close)
        qc_io_close(&own_undo);
    if (ret < 0) {
        rep->outcome = QC_REPAIR_FAILED;
        rep->error = ret;
        return;
    }
    tell(o, QC_REPAIR_EVENT_APPLIED, rep);
    ret = qc_check(io, check, &rep->after);
    if (ret < 0) {
        rep->outcome = QC_REPAIR_FAILED;
        rep->error = ret;
        return;
    }
    rep->outcome = QC_REPAIR_DONE;
}

int qc_repair_run(qc_io *io, const qc_options *check, const qc_repair_options *opts,
                  qc_repair **out)
{
    qc_repair_options o;
    *out = NULL;
    if (!io || !io->read || !load_options(&o, opts))
        return -EINVAL;
    qc_repair *rep = calloc(1, sizeof(*rep));
    if (!rep)
        return -ENOMEM;
    *out = rep;
    int ret = qc_repair_plan_build(io, check, o.mode, &rep->before, &rep->predicted, &rep->plan);
    if (ret == -EPERM) {
        rep->outcome = QC_REPAIR_REFUSED;
        snprintf(rep->why, sizeof(rep->why), "%s",
                 rep->before.other_format ? "not a qcow2 image"
                                          : qc_repair_plan_refusal(rep->plan));
        return 0;
    }
    if (ret < 0) {
        rep->outcome = QC_REPAIR_UNPLANNED;
        rep->error = ret;
        return 0;
    }
    bool has_writes = rep->plan->nb_steps != 0;
    if (!o.dry_run && has_writes && (!io->write || !io->flush)) {
        rep->outcome = QC_REPAIR_STOPPED;
        set_why(rep, -EBADF, "the image is open read-only");
        return 0;
    }
    if (o.dry_run || !has_writes) {
        /* A dry run sizes the salvage and reports its refusals, but goes on. */
        if (o.salvage_dir && has_writes)
            rep->salvage_status = qc_repair_salvage(rep->plan, io, o.salvage_dir, true,
                                                    &rep->salvage, rep->why, sizeof(rep->why));
        rep->outcome = QC_REPAIR_PLANNED;
        return 0;
    }
    carry_out(rep, io, check, &o);
    return 0;
}

qc_repair_outcome qc_repair_outcome_of(const qc_repair *rep)
{
    return rep->outcome;
}

const qc_repair_plan *qc_repair_get_plan(const qc_repair *rep)
{
    return rep->plan;
}

const qc_result *qc_repair_before(const qc_repair *rep)
{
    return &rep->before;
}

const qc_result *qc_repair_predicted(const qc_repair *rep)
{
    return &rep->predicted;
}

const qc_result *qc_repair_after(const qc_repair *rep)
{
    return rep->outcome == QC_REPAIR_DONE ? &rep->after : NULL;
}

int qc_repair_error(const qc_repair *rep)
{
    return rep->error;
}

const char *qc_repair_why(const qc_repair *rep)
{
    return rep->why[0] ? rep->why : NULL;
}

int qc_repair_salvage_status(const qc_repair *rep, const qc_salvage_info **info)
{
    *info = &rep->salvage;
    return rep->salvage_status;
}

void qc_repair_free(qc_repair *rep)
{
    if (!rep)
        return;
    qc_repair_plan_free(rep->plan);
    qc_result_drop_map(&rep->after); /* the check after has one if the options asked */
    free(rep);
}
