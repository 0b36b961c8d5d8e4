/*
 * Fuzz harness 1: the header and header-extension parser.
 *
 * Runs the header pass alone (fixed fields, feature bits and names, the
 * extension area, the backing file name, table placement) on the input as
 * a whole image, and checks the header codec: whatever decodes must encode
 * back to the same bytes.
 */
#include <string.h>

#include "ctx.h"
#include "format.h"
#include "harness.h"

static void header_round_trip(const uint8_t *data, size_t len)
{
    qc_header h;
    if (!qc_header_decode(data, len, &h))
        return;
    size_t decoded = QC_V2_HEADER_LENGTH;
    if (h.version >= 3)
        decoded = h.header_length > 104 ? (h.header_length < 112 ? h.header_length : 112) : 104;
    uint8_t encoded[112] = {0};
    qc_header_encode(&h, encoded);
    if (memcmp(encoded, data, decoded) != 0)
        fuzz_fail("the header does not encode back to the %zu bytes it was decoded from", decoded);
}

static void pass_header_alone(const uint8_t *data, size_t len)
{
    qc_io io;
    qc_io_open_memory(&io, data, len);
    qc_options opts = QC_OPTIONS_INIT;
    opts.max_mem = FUZZ_MAX_MEM;
    qc_result result;
    qc_ctx ctx = {0};
    qc_ctx_begin(&ctx, &io, &opts, &result);
    qc_pass_header(&ctx);
    qc_report_flush(&ctx);
    qc_ctx_release(&ctx);
    qc_io_close(&io);
    if (result.other_format && result.header_valid)
        fuzz_fail("an image of another format (%s) has a valid qcow2 header", result.other_format);
}

void fuzz_one(const uint8_t *data, size_t len)
{
    header_round_trip(data, len);
    pass_header_alone(data, len);
}
