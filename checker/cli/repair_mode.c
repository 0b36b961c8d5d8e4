/*
 * The command's repairs (-r, --dry-run, --undo, --salvage) and rollbacks
 * (--rollback) of one image: open it as a repair must, run the library's
 * repair transaction, and print its plan, banner and outcome as qemu-img
 * prints a repair's (human), or the "repair" member of the JSON object.
 * cli.c settles the options and checks; this file is what -r adds.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"
#include "qcheck.h"

/* "unlinked": what the repair drops, frees or recovers (qc_unlinked);
 * offsets unknown or not applicable are left out. */
static void print_json_unlinked(const qc_repair_plan *plan)
{
    size_t n = qc_repair_plan_unlinked(plan);
    printf(", \"unlinked\": [");
    for (size_t i = 0; i < n; i++) {
        const qc_unlinked *u = qc_repair_plan_unlinked_item(plan, i);
        unsigned k = u->kind;
        printf("%s\n        {\"kind\": \"%s%s%s%s%s\", \"problem\": \"%s\"", i ? "," : "",
               k & QC_UNLINK_DROPPED ? "dropped" : "",
               (k & QC_UNLINK_DROPPED) && (k & ~QC_UNLINK_DROPPED) ? "+" : "",
               k & QC_UNLINK_FREED ? "freed" : "",
               (k & QC_UNLINK_FREED) && (k & QC_UNLINK_RECOVERED) ? "+" : "",
               k & QC_UNLINK_RECOVERED ? "recovered" : "", qc_problem_get(u->problem)->id);
        if (u->host_offset != QC_NO_OFFSET)
            printf(", \"host-offset\": %" PRIu64 ", \"length\": %" PRIu64, u->host_offset,
                   u->length);
        if (u->snapshot == QC_UNLINKED_ACTIVE)
            printf(", \"snapshot\": \"active\"");
        else if (u->snapshot != QC_UNLINKED_NONE)
            printf(", \"snapshot\": %" PRIu32, u->snapshot);
        if (u->guest_offset != QC_NO_OFFSET)
            printf(", \"guest-offset\": %" PRIu64 ", \"guest-length\": %" PRIu64,
                   u->guest_offset, u->guest_length);
        if (u->entry_offset != QC_NO_OFFSET)
            printf(", \"entry-offset\": %" PRIu64, u->entry_offset);
        if (u->target != QC_NO_OFFSET)
            printf(", \"target\": %" PRIu64, u->target);
        if (u->new_target != QC_NO_OFFSET)
            printf(", \"new-target\": %" PRIu64, u->new_target);
        printf("}");
    }
    printf("%s]", n ? "\n    " : "");
}

/* DIR/index.tsv, without doubling a trailing slash. */
static void salvage_index_path(const char *dir, char *buf, size_t len)
{
    size_t n = strlen(dir);
    snprintf(buf, len, "%s%s%s", dir, n && dir[n - 1] == '/' ? "" : "/", QC_SALVAGE_INDEX);
}

/* "salvage": what --salvage saved, or (dry run) would save. */
static void print_json_salvage(const cli *c)
{
    char index[4200];
    salvage_index_path(c->salvage_dir, index, sizeof(index));
    printf(", \"salvage\": {\"dir\": ");
    cli_json_string(stdout, c->salvage_dir);
    printf(", \"ranges\": %" PRIu64 ", \"bytes\": %" PRIu64 ", \"index\": ", c->salvage.ranges,
           c->salvage.bytes);
    cli_json_string(stdout, index);
    printf(", \"saved\": %s", c->salvaged ? "true" : "false");
    if (c->salvage_ret < 0) {
        printf(", \"refused\": ");
        cli_json_string(stdout, c->salvage_why);
    }
    printf("}");
}

/* "repair": what -r did or (with --dry-run) would do. */
void cli_print_json_repair(const cli *c)
{
    const char *const *notes;
    size_t nb_steps = qc_repair_plan_steps(c->plan);
    size_t nb_notes = qc_repair_plan_notes(c->plan, &notes);
    printf(",\n    \"repair\": {\"mode\": ");
    cli_json_string(stdout, c->repair_mode);
    printf(", \"dry-run\": %s, \"applied\": %s", c->dry_run ? "true" : "false",
           c->repaired ? "true" : "false");
    if (qc_repair_plan_refusal(c->plan)) {
        printf(", \"refused\": ");
        cli_json_string(stdout, qc_repair_plan_refusal(c->plan));
    }
    printf(", \"notes\": [");
    for (size_t i = 0; i < nb_notes; i++) {
        printf("%s", i ? ", " : "");
        cli_json_string(stdout, notes[i]);
    }
    printf("], \"steps\": [");
    for (size_t i = 0; i < nb_steps; i++) {
        const qc_repair_step *st = qc_repair_plan_step(c->plan, i);
        printf("%s\n        ", i ? "," : "");
        if (st->kind == QC_STEP_FLUSH) {
            printf("{\"flush\": true}");
            continue;
        }
        printf("{\"offset\": %" PRIu64 ", \"length\": %" PRIu64 "%s, \"what\": ", st->offset,
               st->length, st->kind == QC_STEP_TRUNCATE ? ", \"truncate\": true" : "");
        cli_json_string(stdout, st->what);
        printf(", \"why\": ");
        cli_json_string(stdout, st->why);
        printf("}");
    }
    printf("%s]", nb_steps ? "\n    " : "");
    print_json_unlinked(c->plan);
    if (c->salvage_dir)
        print_json_salvage(c);
    printf("}");
}

/* Human output of a plan: notes and steps on stderr (dry run: steps on
 * stdout, since they are what was asked for). */
static void print_plan_human(const cli *c, const verdict *after)
{
    const char *const *notes;
    size_t nb_steps = qc_repair_plan_steps(c->plan);
    size_t nb_notes = qc_repair_plan_notes(c->plan, &notes);
    for (size_t i = 0; i < nb_notes; i++)
        fprintf(stderr, "repair: %s\n", notes[i]);
    char index[4200] = "";
    if (c->salvage_dir)
        salvage_index_path(c->salvage_dir, index, sizeof(index));
    if (c->salvaged)
        fprintf(stderr, "Saved %" PRIu64 " range%s (%" PRIu64 " bytes) to %s before repairing; index %s\n",
                c->salvage.ranges, c->salvage.ranges == 1 ? "" : "s", c->salvage.bytes,
                c->salvage_dir, index);
    if (!c->dry_run) {
        /* Like qemu-img's "Repairing ..." lines, capped for huge repairs. */
        size_t shown = 0, writes = 0;
        for (size_t i = 0; i < nb_steps; i++) {
            const qc_repair_step *st = qc_repair_plan_step(c->plan, i);
            if (st->kind == QC_STEP_FLUSH)
                continue;
            writes++;
            if (shown++ < 50)
                fprintf(stderr, "Repairing %s: %s\n", st->what, st->why);
        }
        if (writes > 50)
            fprintf(stderr, "Repairing: ... and %zu more writes\n", writes - 50);
        return;
    }
    FILE *out = c->quiet ? stderr : stdout;
    size_t writes = 0;
    for (size_t i = 0; i < nb_steps; i++)
        writes += qc_repair_plan_step(c->plan, i)->kind != QC_STEP_FLUSH;
    if (writes == 0) {
        fprintf(out, "Dry run (-r %s): the repair would write nothing.\n", c->repair_mode);
        return;
    }
    if (c->salvage_dir && c->salvage_ret == 0)
        fprintf(out, "Dry run (--salvage): %" PRIu64 " range%s (%" PRIu64 " bytes) would be saved to %s "
                "first; index %s\n",
                c->salvage.ranges, c->salvage.ranges == 1 ? "" : "s", c->salvage.bytes,
                c->salvage_dir, index);
    else if (c->salvage_dir)
        fprintf(out, "Dry run (--salvage): the repair would stop: %s\n", c->salvage_why);
    fprintf(out, "Dry run (-r %s): the repair would make these writes, in this order:\n",
            c->repair_mode);
    for (size_t i = 0; i < nb_steps; i++) {
        const qc_repair_step *st = qc_repair_plan_step(c->plan, i);
        if (st->kind == QC_STEP_FLUSH)
            fprintf(out, "    flush\n");
        else if (st->kind == QC_STEP_TRUNCATE)
            fprintf(out, "    truncate %s to %" PRIu64 " bytes (%" PRIu64 " bytes go): %s\n",
                     st->what, st->offset, st->length, st->why);
        else
            fprintf(out, "    write %" PRIu64 " bytes at 0x%" PRIx64 " (%s): %s\n", st->length,
                    st->offset, st->what, st->why);
    }
    fprintf(out,
            "After them, the check would find %" PRIu64 " errors and %" PRIu64
            " leaked clusters.\nNothing was written. The image as it is now:\n",
            after->corruptions, after->leaks);
}

/* The repair is refused before anything is written: the first check's
 * figures, then why (exit 1). */
static int refuse_repair(cli *c, qc_io *io, const qc_result *before, const char *reason)
{
    char why[1200];
    snprintf(why, sizeof(why), "cannot repair '%s': %s; nothing was written", c->path, reason);
    verdict v = cli_verdict_of(before);
    cli_note_outcome(c, &v);
    if (!c->quiet) {
        if (c->output == OUTPUT_JSON)
            cli_print_json(c, &v, why, 1);
        else
            cli_print_human_summary(&v);
    }
    cli_note_cannot_open(c, io, before);
    cli_check_failed(c, &v, why);
    return 1;
}

/* What --salvage saved (or, in a dry run, would save), and why not. */
static void note_salvage(cli *c, const qc_repair *rep)
{
    const qc_repair_plan *plan = qc_repair_get_plan(rep);
    /* A plan without writes saves nothing and says nothing of it. */
    if (!c->salvage_dir || !plan || qc_repair_plan_steps(plan) == 0)
        return;
    const qc_salvage_info *info;
    c->salvage_ret = qc_repair_salvage_status(rep, &info);
    c->salvage = *info;
    if (c->salvage_ret < 0)
        snprintf(c->salvage_why, sizeof(c->salvage_why), "%s",
                 qc_repair_why(rep) ? qc_repair_why(rep) : strerror(-c->salvage_ret));
    c->salvaged = c->salvage_ret == 0 && !c->dry_run;
}

/* The repair's progress, as qemu-img shows it: the plan before the first
 * write, the banner after the last, then the findings of the second check
 * alone. */
static int on_repair_event(qc_repair_event event, const qc_repair *rep, void *payload)
{
    cli *c = payload;
    c->plan = qc_repair_get_plan(rep);
    if (event == QC_REPAIR_EVENT_WRITING) {
        cli_progress_clear(c);
        note_salvage(c, rep);
        if (c->output == OUTPUT_HUMAN)
            print_plan_human(c, NULL);
        return 0;
    }
    c->repaired = true;
    uint64_t leaks_fixed, corruptions_fixed;
    qc_repair_plan_fixed(c->plan, &leaks_fixed, &corruptions_fixed);
    /* qemu-img prints its banner only when something counted as fixed;
     * clearing only the corrupt bit or an unknown autoclear bit prints the
     * result alone. */
    if (c->output == OUTPUT_HUMAN && !c->quiet && (leaks_fixed || corruptions_fixed))
        printf("The following inconsistencies were found and repaired:\n\n"
               "    %" PRIu64 " leaked clusters\n    %" PRIu64 " corruptions\n\n"
               "Double checking the fixed image now...\n",
               leaks_fixed, corruptions_fixed);
    cli_forget_findings(c);
    cli_progress_begin(c);
    return 0;
}

/* Tell the caller how the repair transaction ended; returns the exit
 * status. */
static int repair_outcome(cli *c, qc_io *io, const qc_repair *rep, const char *undo_path)
{
    const qc_result *before = qc_repair_before(rep);
    int err = qc_repair_error(rep);
    switch (qc_repair_outcome_of(rep)) {
    case QC_REPAIR_REFUSED:
        if (qc_result_other_format(before)) {
            c->plan = NULL;
            return cli_not_qcow2(c, qc_result_other_format(before), qc_result_driver(before));
        }
        return refuse_repair(c, io, before, qc_repair_why(rep));
    case QC_REPAIR_UNPLANNED:
        cli_message(c, "Check failed: %s", strerror(-err));
        cli_message(c, "the repair of '%s' could not be planned; nothing was written", c->path);
        return 1;
    case QC_REPAIR_PLANNED: {
        note_salvage(c, rep);
        verdict v = cli_verdict_of(before);
        if (c->output == OUTPUT_HUMAN) {
            verdict after = cli_verdict_of(qc_repair_predicted(rep));
            print_plan_human(c, &after);
        }
        cli_print_result(c, &v, v.status);
        return v.status;
    }
    case QC_REPAIR_STOPPED:
        note_salvage(c, rep);
        if (c->salvage_ret < 0)
            return refuse_repair(c, io, before, c->salvage_why);
        cli_message(c, "Could not create the undo log '%s': %s", undo_path, strerror(-err));
        cli_message(c, "nothing was written to '%s'", c->path);
        return 1;
    case QC_REPAIR_FAILED:
        /* qemu-img's sentence when its repair fails part way. */
        cli_message(c, "Check failed: %s", strerror(-err));
        cli_message(c, "the repair of '%s' stopped; the image is safe to check and repair again "
                   "(qcheck -r all)%s",
                c->path, undo_path ? ", or to roll back" : "");
        return 1;
    case QC_REPAIR_DONE:
        break;
    }
    const qc_result *after = qc_repair_after(rep);
    cli_note_cannot_open(c, io, after);
    verdict v = cli_verdict_of(after);
    int status = cli_final_status(c, &v);
    cli_print_result(c, &v, status);
    return status;
}

int cli_repair_file(cli *c, qc_repair_mode mode, const char *undo_path)
{
    qc_io io;
    int status;
    if (c->dry_run) {
        bool in_use; /* false: -U does not go with -r */
        status = cli_open_for_check(c, &io, &in_use);
    } else if (c->format && cli_shares_write(c->format)) {
        return cli_repair_raw(c);
    } else {
        qc_lock_state others;
        c->probed_raw_warning = !c->format;
        int ret = qc_io_open_image(&io, c->path, QC_LOCK_REPAIR, &others);
        if (ret == -EBUSY)
            status = cli_repair_open_busy(c, &others);
        else
            status = ret < 0 ? cli_open_error(c, ret, &others, true) : cli_given_format(c, &io);
    }
    if (status >= 0)
        return status;
    qc_options o = cli_check_options(c);
    qc_repair_options ro = QC_REPAIR_OPTIONS_INIT;
    ro.mode = mode;
    ro.dry_run = c->dry_run;
    ro.undo_path = undo_path;
    ro.salvage_dir = c->salvage_dir;
    ro.on_event = on_repair_event;
    ro.payload = c;
    /* A test build may put its own io between the repair and the image. */
    qc_io wrapped = {0};
    qc_io *target = c->hooks && c->hooks->wrap_repair_io &&
                            c->hooks->wrap_repair_io(&wrapped, &io) == 0
                        ? &wrapped
                        : &io;
    qc_repair *rep = NULL;
    cli_progress_begin(c);
    int ret = qc_repair_run(target, &o, &ro, &rep);
    cli_progress_clear(c);
    if (ret < 0) {
        cli_message(c, "Check failed: %s", strerror(-ret));
        cli_message(c, "the repair of '%s' could not be planned; nothing was written", c->path);
        status = 1;
    } else {
        c->plan = qc_repair_get_plan(rep);
        status = repair_outcome(c, &io, rep, undo_path);
    }
    if (wrapped.close)
        qc_io_close(&wrapped);
    qc_io_close(&io);
    qc_repair_free(rep);
    c->plan = NULL;
    return status;
}

int cli_rollback_file(cli *c, const char *log_path)
{
    char why[600] = "";
    qc_io image, log;
    qc_lock_state others;
    int ret = qc_io_open_image(&image, c->path, QC_LOCK_REPAIR, &others);
    if (ret < 0)
        return cli_open_error(c, ret, &others, true);
    ret = qc_io_open_file(&log, log_path);
    if (ret < 0) {
        qc_io_close(&image);
        cli_message(c, "Could not open the undo log '%s': %s", log_path, strerror(-ret));
        return 1;
    }
    ret = qc_rollback(&image, &log, why, sizeof(why));
    qc_io_close(&log);
    qc_io_close(&image);
    if (ret < 0) {
        cli_message(c, "refusing to roll back '%s' with '%s': %s%s", c->path, log_path,
                why[0] ? why : strerror(-ret),
                ret == -EINVAL || ret == -ESTALE ? " (nothing was written)" : "");
        return 1;
    }
    if (!c->quiet) {
        if (c->output == OUTPUT_JSON) {
            printf("{\n    \"filename\": ");
            cli_json_string(stdout, c->filename);
            printf(",\n    \"rolled-back\": true,\n    \"exit-code\": 0\n}\n");
        } else {
            printf("Rolled back '%s' to its state before the repair.\n", c->filename);
        }
    }
    return 0;
}
