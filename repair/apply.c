/*
 * Carrying out a plan, the undo log, and rollback.
 *
 * Undo log layout (all integers big-endian):
 *   header, 48 bytes: "QCHKUNDO", version (u32 = 1), reserved (u32 = 0),
 *     image size before the repair (u64), number of records (u64),
 *     total log length (u64), xxh64 of the preceding 40 bytes (u64)
 *   per write step of the plan, in plan order:
 *     offset (u64), length (u64), xxh64 of the bytes written (u64),
 *     the bytes the region held just before that step (length bytes),
 *     xxh64 of this record up to here (u64)
 * Rollback walks the records backwards and puts the saved bytes back. It
 * first proves the log is this image's: some prefix of the plan's writes
 * (an interrupted repair applies a prefix) must explain the image, each
 * applied write's bytes found when undoing it on a copy-on-write view, the
 * image length within what they explain, and with none applied the image
 * already holding the saved bytes. Otherwise nothing is written.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xxhash.h>

#include "planner.h"

#define UNDO_MAGIC "QCHKUNDO"
#define UNDO_VERSION 1u
#define UNDO_HEADER_SIZE 48u
#define UNDO_RECORD_FIXED 32u /* offset, length, new hash, trailing checksum */

static int write_undo_log(const qc_repair_plan *plan, qc_io *undo)
{
    uint64_t records = 0, total = UNDO_HEADER_SIZE;
    for (size_t i = 0; i < plan->nb_steps; i++)
        if (plan->steps[i].kind == QC_STEP_WRITE) {
            records++;
            total += UNDO_RECORD_FIXED + plan->steps[i].length;
        }
    uint8_t hdr[UNDO_HEADER_SIZE];
    memcpy(hdr, UNDO_MAGIC, 8);
    qc_put_be32(hdr + 8, UNDO_VERSION);
    qc_put_be32(hdr + 12, 0);
    qc_put_be64(hdr + 16, plan->size_before);
    qc_put_be64(hdr + 24, records);
    qc_put_be64(hdr + 32, total);
    qc_put_be64(hdr + 40, XXH64(hdr, 40, 0));
    int ret = undo->write(undo->opaque, 0, hdr, sizeof(hdr));
    uint64_t pos = sizeof(hdr);
    for (size_t i = 0; i < plan->nb_steps && ret == 0; i++) {
        const qc_repair_step *s = &plan->steps[i];
        if (s->kind != QC_STEP_WRITE)
            continue;
        size_t len = UNDO_RECORD_FIXED + (size_t)s->length;
        uint8_t *rec = malloc(len);
        if (!rec)
            return -ENOMEM;
        qc_put_be64(rec, s->offset);
        qc_put_be64(rec + 8, s->length);
        qc_put_be64(rec + 16, XXH64(s->data, (size_t)s->length, 0));
        memcpy(rec + 24, plan->old_bytes[i], (size_t)s->length);
        qc_put_be64(rec + 24 + s->length, XXH64(rec, 24 + (size_t)s->length, 0));
        ret = undo->write(undo->opaque, pos, rec, len);
        pos += len;
        free(rec);
    }
    if (ret == 0)
        undo->size = pos;
    return ret ? ret : undo->flush(undo->opaque);
}

int qc_repair_apply(const qc_repair_plan *plan, qc_io *image, qc_io *undo)
{
    if (!plan || !image || !image->write || !image->flush || plan->refusal)
        return -EINVAL;
    if (image->size != plan->size_before)
        return -ESTALE; /* the image changed since the plan was made */
    if (undo) {
        if (!undo->write || !undo->flush)
            return -EINVAL;
        int ret = write_undo_log(plan, undo);
        if (ret < 0)
            return ret;
    }
    for (size_t i = 0; i < plan->nb_steps; i++) {
        const qc_repair_step *s = &plan->steps[i];
        int ret = s->kind == QC_STEP_FLUSH
                      ? image->flush(image->opaque)
                      : image->write(image->opaque, s->offset, s->data, (size_t)s->length);
        if (ret < 0)
            return ret;
        if (s->kind == QC_STEP_WRITE && s->offset + s->length > image->size)
            image->size = s->offset + s->length;
    }
    return image->flush(image->opaque);
}

/* ---- rollback ---- */

typedef struct undo_record {
    uint64_t offset, length, new_hash;
    const uint8_t *old;
} undo_record;

typedef struct undo_log {
    uint8_t *bytes;
    uint64_t size_before;
    undo_record *records;
    uint64_t nb_records;
} undo_log;

static int set_why(char *why, size_t len, int err, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int set_why(char *why, size_t len, int err, const char *fmt, ...)
{
    if (why && len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(why, len, fmt, ap);
        va_end(ap);
    }
    return err;
}

static int parse_log(qc_io *undo, undo_log *log, char *why, size_t why_len)
{
    if (undo->size < UNDO_HEADER_SIZE || undo->size > SIZE_MAX)
        return set_why(why, why_len, -EINVAL, "the undo log is too short to be one");
    log->bytes = malloc((size_t)undo->size);
    if (!log->bytes)
        return -ENOMEM;
    int ret = undo->read(undo->opaque, 0, log->bytes, (size_t)undo->size);
    if (ret < 0)
        return set_why(why, why_len, ret, "reading the undo log failed");
    const uint8_t *h = log->bytes;
    if (memcmp(h, UNDO_MAGIC, 8) != 0 || qc_be32(h + 8) != UNDO_VERSION)
        return set_why(why, why_len, -EINVAL, "not a qcheck undo log (bad magic or version)");
    if (qc_be64(h + 40) != XXH64(h, 40, 0))
        return set_why(why, why_len, -EINVAL, "the undo log header fails its checksum");
    if (qc_be64(h + 32) != undo->size)
        return set_why(why, why_len, -EINVAL,
                       "the undo log is %llu bytes but says it is %llu (truncated or extended)",
                       (unsigned long long)undo->size, (unsigned long long)qc_be64(h + 32));
    log->size_before = qc_be64(h + 16);
    uint64_t count = qc_be64(h + 24);
    if (count > (undo->size - UNDO_HEADER_SIZE) / UNDO_RECORD_FIXED)
        return set_why(why, why_len, -EINVAL, "the undo log claims more records than it holds");
    log->records = calloc(count ? count : 1, sizeof(undo_record));
    if (!log->records)
        return -ENOMEM;
    uint64_t pos = UNDO_HEADER_SIZE;
    for (uint64_t i = 0; i < count; i++) {
        if (undo->size - pos < UNDO_RECORD_FIXED)
            return set_why(why, why_len, -EINVAL, "undo record %llu is truncated",
                           (unsigned long long)i);
        const uint8_t *rec = log->bytes + pos;
        uint64_t length = qc_be64(rec + 8);
        if (length > undo->size - pos - UNDO_RECORD_FIXED)
            return set_why(why, why_len, -EINVAL,
                           "undo record %llu is truncated, or its length field is damaged",
                           (unsigned long long)i);
        if (qc_be64(rec + 24 + length) != XXH64(rec, 24 + (size_t)length, 0))
            return set_why(why, why_len, -EINVAL, "undo record %llu fails its checksum",
                           (unsigned long long)i);
        log->records[i] = (undo_record){qc_be64(rec), length, qc_be64(rec + 16), rec + 24};
        uint64_t end;
        if (!qc_add_ok(log->records[i].offset, length, &end))
            return set_why(why, why_len, -EINVAL, "undo record %llu has an impossible offset",
                           (unsigned long long)i);
        pos += UNDO_RECORD_FIXED + length;
    }
    if (pos != undo->size)
        return set_why(why, why_len, -EINVAL, "the undo log has trailing bytes");
    log->nb_records = count;
    return 0;
}

static int read_region(qc_io *io, const undo_record *rec, uint8_t **out)
{
    *out = malloc(rec->length ? (size_t)rec->length : 1);
    if (!*out)
        return -ENOMEM;
    return qc_read_zero_filled(io, rec->offset, *out, (size_t)rec->length);
}

/* Whether the region of `rec` in io holds the bytes the repair wrote. */
static int holds_written(qc_io *io, const undo_record *rec)
{
    uint8_t *cur;
    int ret = read_region(io, rec, &cur);
    if (ret == 0)
        ret = XXH64(cur, (size_t)rec->length, 0) == rec->new_hash;
    free(cur);
    return ret;
}

/* Put every record's saved bytes back, last record first. Whatever prefix
 * of the plan was applied, each byte ends with the bytes of the earliest
 * write covering it: the original. With `applied` = k, records k-1..0
 * must each hold what they wrote when their turn comes. */
static int undo_records(const undo_log *log, qc_io *io, uint64_t applied, char *why,
                        size_t why_len)
{
    for (uint64_t k = log->nb_records; k-- > 0;) {
        const undo_record *rec = &log->records[k];
        if (k < applied) {
            int held = holds_written(io, rec);
            if (held < 0)
                return set_why(why, why_len, held, "reading the image at 0x%llx failed",
                               (unsigned long long)rec->offset);
            if (!held)
                return set_why(why, why_len, -ESTALE,
                               "the image at 0x%llx (%llu bytes) does not hold what the repair "
                               "wrote there",
                               (unsigned long long)rec->offset, (unsigned long long)rec->length);
        }
        int ret = io->write(io->opaque, rec->offset, rec->old, (size_t)rec->length);
        if (ret < 0)
            return set_why(why, why_len, ret, "writing the image at 0x%llx failed",
                           (unsigned long long)rec->offset);
    }
    return 0;
}

/* Test the hypothesis that exactly the first `applied` writes of the plan
 * reached the image (an interrupted repair applies a prefix): undoing them
 * on a view must find each one's bytes, the image length must be what
 * they explain, and with none applied the image must already read as the
 * original. */
static int verify_prefix(const undo_log *log, qc_io *image, uint64_t applied, char *why,
                         size_t why_len)
{
    uint64_t longest = log->size_before;
    for (uint64_t k = 0; k < applied; k++) {
        uint64_t end = log->records[k].offset + log->records[k].length;
        longest = end > longest ? end : longest;
    }
    if (image->size < log->size_before || image->size > longest)
        return set_why(why, why_len, -ESTALE,
                       "the image is %llu bytes; the repair this log undoes left it between %llu "
                       "and %llu bytes",
                       (unsigned long long)image->size, (unsigned long long)log->size_before,
                       (unsigned long long)longest);
    qc_io view;
    int ret = qc_overlay_open(&view, image);
    if (ret == 0)
        ret = undo_records(log, &view, applied, why, why_len);
    for (uint64_t k = 0; ret == 0 && applied == 0 && k < log->nb_records; k++) {
        uint8_t *a = NULL, *b = NULL;
        ret = read_region(image, &log->records[k], &a);
        if (ret == 0)
            ret = read_region(&view, &log->records[k], &b);
        if (ret == 0 && memcmp(a, b, (size_t)log->records[k].length) != 0)
            ret = set_why(why, why_len, -ESTALE,
                          "the image at 0x%llx holds neither what the repair wrote nor what it "
                          "saved",
                          (unsigned long long)log->records[k].offset);
        free(a);
        free(b);
    }
    if (view.close)
        qc_io_close(&view);
    return ret;
}

/* The longest prefix of the plan that explains the image, tried from the
 * last write that the image still holds; -ESTALE when none does. */
static int find_applied(const undo_log *log, qc_io *image, uint64_t *applied, char *why,
                        size_t why_len)
{
    int ret = -ESTALE;
    for (uint64_t k = log->nb_records + 1; k-- > 0;) {
        if (k > 0) {
            int held = holds_written(image, &log->records[k - 1]);
            if (held < 0)
                return held;
            if (!held)
                continue;
        }
        ret = verify_prefix(log, image, k, why, why_len);
        if (ret != -ESTALE) {
            *applied = k;
            return ret;
        }
    }
    return ret;
}

int qc_rollback(qc_io *image, qc_io *undo, char *why, size_t why_len)
{
    if (!image || !undo || !image->write || !image->flush || !image->truncate)
        return set_why(why, why_len, -EINVAL, "the image is not open for writing");
    undo_log log = {0};
    uint64_t applied = 0;
    int ret = parse_log(undo, &log, why, why_len);
    if (ret == 0) {
        ret = find_applied(&log, image, &applied, why, why_len);
        if (ret == -ESTALE && why && why_len) {
            char detail[256];
            snprintf(detail, sizeof(detail), "%s", why);
            set_why(why, why_len, ret, "%s: this log is not for this image, or the image changed "
                    "since", detail);
        }
    }
    if (ret == 0)
        ret = undo_records(&log, image, 0, why, why_len);
    /* Restored regions past the old end (an interrupted repair) went away
     * with the truncation, as did everything the repair appended. */
    if (ret == 0)
        ret = image->truncate(image->opaque, log.size_before);
    if (ret == 0) {
        image->size = log.size_before;
        ret = image->flush(image->opaque);
    }
    free(log.records);
    free(log.bytes);
    return ret;
}
