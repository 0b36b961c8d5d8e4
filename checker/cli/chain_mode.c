/*
 * --chain and --data-file: the top image and the files it names, checked
 * layer by layer (qc_chain_check). Human output: each finding prefixed
 * with its layer, then per layer a heading and qemu-img's summary lines,
 * then one line for the chain. JSON: one object with the totals and a
 * "layers" array holding, per layer, the single-image object's members.
 * The exit status is qemu-img's over the sums of every layer. Layers are
 * printed as their checks end, while the chain is open (the names their
 * results hold live as long as the chain).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "command.h"

/* A layer's heading, and its summary or why it has none. */
static void print_layer_human(const qc_chain_layer *L, const verdict *v)
{
    printf("%sLayer %u: %s (%s%s", L->depth ? "\n" : "", L->depth, L->path, L->format,
           L->probed ? ", probed" : "");
    if (L->depth)
        printf(", backing file of layer %u", L->depth - 1);
    printf(")\n");
    if (L->data_file)
        printf("External data file: %s\n", L->data_file);
    if (strcmp(L->format, "raw") == 0) {
        printf("A raw layer: nothing to check.\n");
        return;
    }
    cli_print_human_summary(v);
}

/* A layer's object, into c->layers_json. */
static void print_layer_json(cli *c, const qc_chain_layer *L, const verdict *v)
{
    FILE *out = c->layers_json;
    const char *ind = "            ";
    fprintf(out, "%s\n        {\n", L->depth ? "," : "");
    if (strcmp(L->format, "raw") == 0) {
        fprintf(out, "%s\"filename\": ", ind);
        cli_json_string(out, L->path);
        fprintf(out, ",\n%s\"format\": \"raw\"", ind);
    } else {
        cli_print_json_members(out, c, v, ind);
    }
    fprintf(out, ",\n%s\"depth\": %u, \"probed\": %s", ind, L->depth,
            L->probed ? "true" : "false");
    if (L->data_file) {
        fprintf(out, ",\n%s\"data-file\": ", ind);
        cli_json_string(out, L->data_file);
    }
    /* What the layer's header names, as qemu-img info calls it. */
    const qc_header_info *h = qc_result_header(L->result);
    if (h && h->backing_file) {
        fprintf(out, ",\n%s\"backing-filename\": ", ind);
        cli_json_string(out, h->backing_file);
    }
    if (h && h->backing_format) {
        fprintf(out, ",\n%s\"backing-filename-format\": ", ind);
        cli_json_string(out, h->backing_format);
    }
    fprintf(out, ",\n%s\"exit-code\": %d\n        }", ind,
            strcmp(L->format, "raw") == 0 ? 0 : qc_exit_status(L->result));
}

static void on_layer(qc_chain_event event, const qc_chain_layer *L, void *payload)
{
    cli *c = payload;
    if (event == QC_CHAIN_LAYER_BEGIN) {
        c->layer = (int)L->depth;
        c->layer_path = L->path;
        cli_forget_findings(c);
        return;
    }
    if (qc_result_other_format(L->result))
        return; /* the top image is not qcow2: said as for one image */
    verdict v = cli_verdict_of(L->result);
    if (L->depth == 0 && c->top_in_use)
        cli_report_in_use(c, &v);
    cli_progress_clear(c);
    if (c->quiet)
        return;
    if (c->output == OUTPUT_JSON && c->layers_json)
        print_layer_json(c, L, &v);
    else if (c->output == OUTPUT_HUMAN)
        print_layer_human(L, &v);
}

/* The chain's totals: the JSON object around the layers, or one line. */
static void print_chain(const cli *c, const qc_chain *ch, const verdict *total, int status)
{
    size_t n = qc_chain_layers(ch);
    if (c->output == OUTPUT_JSON) {
        printf("{\n    \"filename\": ");
        cli_json_string(stdout, c->filename);
        printf(",\n    \"format\": ");
        cli_json_string(stdout, qc_chain_layer_at(ch, 0)->format);
        if (total->corruptions)
            printf(",\n    \"corruptions\": %" PRIu64, total->corruptions);
        printf(",\n    \"check-errors\": %" PRIu64, total->check_errors);
        if (total->leaks)
            printf(",\n    \"leaks\": %" PRIu64, total->leaks);
        printf(",\n    \"warnings\": %" PRIu64 ",\n    \"layers\": [%s\n    ]", total->warnings,
               c->layers_buf ? c->layers_buf : "");
        if (c->digest[0]) {
            printf(",\n    \"digest\": ");
            cli_json_string(stdout, c->digest);
        }
        printf(",\n    \"exit-code\": %d\n}\n", status);
        return;
    }
    printf("\nChain of %zu layer%s: ", n, n == 1 ? "" : "s");
    if (!total->corruptions && !total->leaks && !total->check_errors)
        printf("no errors were found.\n");
    else
        printf("%" PRIu64 " errors, %" PRIu64 " leaked clusters, %" PRIu64
               " check errors in all.\n",
               total->corruptions, total->leaks, total->check_errors);
}

/* --digest through the chain, unless a layer has corruptions or was not
 * checked completely; false when it was asked for and not taken. */
static bool chain_digest(cli *c, const qc_chain *ch, const verdict *total)
{
    if (total->corruptions || total->check_errors) {
        cli_message(c, "no digest of '%s': the check of the chain found corruptions or could "
                       "not complete",
                    c->filename);
        return false;
    }
    return cli_take_digest(c, NULL, false, ch);
}

/* The top image is not qcow2: as the check of one image says it (a raw
 * file's digest included). */
static int top_not_qcow2(cli *c, qc_io *io, const qc_result *top)
{
    bool raw = strcmp(qc_result_driver(top), "raw") == 0;
    if (raw && c->digest_alg && cli_take_digest(c, io, true, NULL))
        return cli_print_raw_digest(c);
    return cli_not_qcow2(c, qc_result_other_format(top), qc_result_driver(top));
}

int cli_check_chain(cli *c)
{
    qc_io io;
    int status = cli_open_for_check(c, &io, &c->top_in_use);
    if (status >= 0)
        return status;
    qc_options o = cli_check_options(c);
    qc_chain_options co = QC_CHAIN_OPTIONS_INIT;
    co.backing = co.data_files = c->chain;
    co.data_file = c->data_file;
    co.allow_probe = c->allow_probe;
    co.max_depth = c->max_depth;
    co.lock = c->lock_mode;
    co.on_layer = on_layer;
    co.payload = c;
    if (c->output == OUTPUT_JSON)
        c->layers_json = open_memstream(&c->layers_buf, &c->layers_len);
    qc_chain *ch = NULL;
    cli_progress_begin(c);
    int ret = c->output == OUTPUT_JSON && !c->layers_json
                  ? -ENOMEM
                  : qc_chain_check(&io, c->path, &o, &co, &ch);
    cli_progress_clear(c);
    c->layer = -1;
    if (c->layers_json && fclose(c->layers_json) != 0)
        c->out_of_memory = true;
    c->layers_json = NULL;
    if (ret < 0) {
        qc_io_close(&io);
        cli_message(c, "Check failed: %s", strerror(-ret));
        return 1;
    }
    const qc_result *top = qc_chain_layer_at(ch, 0)->result;
    if (qc_result_other_format(top)) {
        status = top_not_qcow2(c, &io, top);
    } else {
        verdict total = {
            .check_errors = qc_chain_count(ch, QC_COUNT_CHECK_ERRORS),
            .corruptions = qc_chain_count(ch, QC_COUNT_CORRUPTIONS),
            .leaks = qc_chain_count(ch, QC_COUNT_LEAKS),
            .warnings = qc_chain_count(ch, QC_COUNT_WARNINGS) + c->top_in_use,
            .status = qc_chain_exit_status(ch),
        };
        bool no_digest = c->digest_alg && !chain_digest(c, ch, &total);
        status = cli_final_status(c, &total);
        if (no_digest && (status == 0 || status == 3))
            status = 1;
        if (!c->quiet)
            print_chain(c, ch, &total, status);
        if (c->digest[0] && (c->quiet || c->output == OUTPUT_HUMAN))
            printf("%s\n", c->digest);
        if (total.check_errors)
            cli_check_failed(c, &total, "the chain could not be checked completely (the error "
                                        "findings say where)");
    }
    qc_chain_free(ch);
    qc_io_close(&io);
    free(c->layers_buf);
    c->layers_buf = NULL;
    return status;
}
