/*
 * The command's state and the parts of it shared between its files:
 * cli.c (options, single-image check), repair_mode.c (-r and --rollback),
 * chain_mode.c (--chain and --data-file), batch.c and metrics.c (several
 * images, --metrics) and visual.c (--map and --report).
 */
#ifndef QCHECK_COMMAND_H
#define QCHECK_COMMAND_H

#include <stdio.h>

#include "cli.h"
#include "qcheck.h"

enum output_format { OUTPUT_HUMAN, OUTPUT_JSON };

/* What a run of one image concluded beyond its exit status, written by
 * the command as it goes (through cli.outcome). Batch mode keeps one in
 * memory shared with each worker process; --metrics reads it. */
typedef struct image_outcome {
    unsigned permille; /* progress of the check under way (__atomic access) */
    bool summarised;   /* a check reached its figures: the counts below */
    bool in_use;       /* refused: another process holds the image (QEMU's locks) */
    uint64_t leaks, corruptions, check_errors;
    uint64_t fixed; /* leaks and corruptions a repair fixed */
} image_outcome;

/* The options as given, before they are settled. */
typedef struct invocation {
    const char *repair, *output, *cache, *undo_path, *rollback_log;
    bool image_opts, force_share;
    qc_repair_mode mode;
    /* Batch mode (batch.c): the names, and how to run them. */
    const char *files_from; /* --files-from, "-" for stdin */
    bool null_separated;    /* --null */
    unsigned jobs;          /* -j; 0: one per core */
    double timeout;         /* --timeout, seconds; 0: none */
    const char *metrics;    /* --metrics */
    char **names;           /* FILE... then the list's names */
    size_t nb_names;
    bool batch;
} invocation;

typedef struct cli {
    const qcheck_cli_hooks *hooks; /* a test build's, or NULL */
    qc_digest_alg digest_alg;      /* --digest, or 0 */
    bool deep;                     /* --deep */
    bool truncate_leaks;           /* --truncate-leaks */
    /* --chain, --data-file, --allow-probe, --max-depth (chain_mode.c) */
    bool chain, allow_probe;
    const char *data_file;
    unsigned max_depth;
    int layer;            /* the layer being checked (its findings are prefixed), or -1 */
    const char *layer_path; /* and its file */
    bool top_in_use;      /* -U let the check of the top image, in use, go ahead */
    FILE *layers_json;    /* JSON mode: the layers' objects, collected */
    char *layers_buf;
    size_t layers_len;
    char digest[80];               /* "ALG:HEX" once taken */
    const char *prog;     /* the name it was run as: every message starts with it */
    const char *filename; /* as given (with --image-opts, the option string) */
    const char *path;     /* what is opened */
    const char *format;   /* -f or driver=; NULL: the file's own */
    bool key_secret;      /* --image-opts names a LUKS key */
    bool probed_raw_warning; /* qemu-img's warning for -r on a probed raw file */
    char cannot_open[160];   /* qemu-img's reason for refusing the image's header, if any */
    qc_lock_mode lock_mode;
    bool quiet;
    enum output_format output;
    uint64_t max_mem;
    /* JSON mode collects findings and prints them inside the object. */
    char **problems;
    size_t nb_problems, cap_problems;
    bool out_of_memory;
    /* Repair: set when -r ran; printed in JSON. */
    const char *repair_mode;
    const qc_repair_plan *plan;
    bool dry_run, repaired;
    /* --salvage: the directory, what was (or would be) saved, and why not. */
    const char *salvage_dir;
    qc_salvage_info salvage;
    int salvage_ret;
    bool salvaged;
    char salvage_why[900];
    /* Progress on stderr: forced by -p, or on a terminal once the check
     * has taken longer than PROGRESS_DELAY; never with -q or JSON. */
    bool progress_forced, progress_allowed, progress_shown;
    double progress_start;
    /* --map and --report (visual.c): the files, and the image's section
     * (made before its check, which feeds it; NULL with neither). */
    const char *map_path, *report_path;
    FILE *section_out;   /* a batch's worker: the section goes here, not to a page */
    size_t visual_index; /* the image's place on the page */
    struct vis_section *visual;
    bool visual_no_memory; /* the section could not be made: the files are not written */
    double visual_seconds; /* how long the check took */
    image_outcome *outcome; /* where the run notes what it concluded */
} cli;

#define PROGRESS_DELAY 0.5 /* seconds */

/* What the command prints of a check: the library's figures, read once
 * through its accessors, plus what the command adds itself (an image in
 * use, memory running out while collecting findings). */
typedef struct verdict {
    const char *other_format;
    const char *driver; /* QEMU's driver for the file: "qcow2", or what it is instead */
    bool header_valid;
    qc_header_info header;
    uint64_t check_errors, corruptions, leaks, image_end_offset;
    uint64_t total_clusters, allocated_clusters, fragmented_clusters, compressed_clusters;
    uint64_t warnings, findings;
    int status; /* qc_exit_status() of the library's result */
} verdict;

verdict cli_verdict_of(const qc_result *r);
/* One line on stderr after the program's name (qemu-img's error_report). */
__attribute__((format(printf, 2, 3))) void cli_message(const cli *c, const char *fmt, ...);
void cli_json_string(FILE *out, const char *s);
void cli_progress_begin(cli *c);
void cli_progress_clear(cli *c);
/* qemu-img's summary lines. */
void cli_print_human_summary(const verdict *r);
/* The members of a check's JSON object, from qemu-img's keys to
 * "problems" (the findings collected), each line indented by `ind`. */
void cli_print_json_members(FILE *out, const cli *c, const verdict *r, const char *ind);
void cli_forget_findings(cli *c);
qc_options cli_check_options(cli *c);
int cli_open_for_check(const cli *c, qc_io *io, bool *in_use);
int cli_not_qcow2(const cli *c, const char *guess, const char *driver);
void cli_report_in_use(cli *c, verdict *r);
void cli_check_failed(const cli *c, const verdict *r, const char *why);
int cli_final_status(const cli *c, verdict *v);
/* The digest of io (with `raw`, its bytes), or through `chain` when given,
 * into c->digest; false, with a message, when it cannot be had. */
bool cli_take_digest(cli *c, qc_io *io, bool raw, const qc_chain *chain);
int cli_print_raw_digest(const cli *c);
/* --map and --report of a single image, once its check is done and its
 * exit status known: write the files (a message for each that cannot be)
 * and return the exit status, 1 instead of 0 when a file failed. An image
 * that was not opened (its check never began) gets no files. */
int cli_write_visual(cli *c, const verdict *v, int status);
/* The JSON object of a check or repair; `error` is set for a refused
 * repair. */
void cli_print_json(const cli *c, const verdict *r, const char *error, int status);
/* The summary or JSON object of a check, the digest, then whether the
 * check failed. */
void cli_print_result(const cli *c, const verdict *r, int status);
/* Note the figures a run reached (batch mode and --metrics read them). */
void cli_note_outcome(const cli *c, const verdict *r);
/* The reason QEMU would give for refusing the header, into c->cannot_open. */
void cli_note_cannot_open(cli *c, qc_io *io, const qc_result *r);
/* QEMU's drivers that share write (raw, file): a repair opens them as QEMU. */
bool cli_shares_write(const char *driver);
/* What qemu-img does with the format given (-f), once the file is open:
 * -1 to go on, or the exit status of a refusal reported. */
int cli_given_format(const cli *c, qc_io *io);
/* A failed open (err < 0) reported as qemu-img reports it; returns 1. */
int cli_open_error(const cli *c, int err, const qc_lock_state *o, bool repair);
/* A repair's open refused for another process's locks, and -r on a raw
 * file: qemu-img's outcome for each; returns the exit status. */
int cli_repair_open_busy(const cli *c, const qc_lock_state *others);
int cli_repair_raw(const cli *c);

/* ---- repair_mode.c ---- */

/* The "repair" member of the JSON object. */
void cli_print_json_repair(const cli *c);
/* -r: plan, carry out (or with --dry-run show) and check again; returns
 * the exit status. */
int cli_repair_file(cli *c, qc_repair_mode mode, const char *undo_path);
/* --rollback: restore the image from an undo log; returns the exit status. */
int cli_rollback_file(cli *c, const char *log_path);

/* --chain or --data-file: check every layer; returns the exit status. */
int cli_check_chain(cli *c);
/* Check, repair or roll back c->filename as the options say; returns the
 * exit status. */
int cli_run_image(cli *c, const invocation *in);
double cli_now(void); /* CLOCK_MONOTONIC, seconds */

/* ---- batch.c and metrics.c ---- */

/* The verdict of one image in a batch (and in --metrics), from the
 * mildest to the worst for a cron job; docs/fleet.md lists them. */
typedef enum image_verdict {
    VERDICT_CLEAN,
    VERDICT_REPAIRED,
    VERDICT_IN_USE,
    VERDICT_UNSUPPORTED,
    VERDICT_LEAKS,
    VERDICT_FAILED,
    VERDICT_TIMEOUT,
    VERDICT_CORRUPT,
    VERDICT_COUNT
} image_verdict;

const char *image_verdict_name(image_verdict v);
image_verdict image_verdict_of(int status, const image_outcome *o);

/* One image of a run, as reported. */
typedef struct image_record {
    const char *name;
    image_verdict verdict;
    int status;
    bool counted; /* the check reached its figures (not: in use, timed out, not opened) */
    uint64_t leaks, corruptions, check_errors;
    double seconds;  /* from start to end of its worker */
    double finished; /* Unix time */
} image_record;

/* The batch's exit status: the worst image's (docs/fleet.md). */
int batch_exit_status(const image_record *images, size_t n);
/* Several images (or --files-from): returns the exit status. */
int cli_run_batch(cli *c, invocation *in);
/* Write the node_exporter textfile: a temporary file next to `path`,
 * then rename. Returns 0, or -errno (nothing replaced). */
int metrics_write(const char *path, const image_record *images, size_t n, double seconds,
                  int status);

#endif
