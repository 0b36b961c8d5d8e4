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
 * first does so on a copy-on-write view to prove the log is this image's:
 * the writes found applied must form a prefix of the plan (an interrupted
 * repair applies a prefix), the image length must be what they explain,
 * and with none applied the image must already hold the saved bytes.
 * Anything else, and nothing is written.
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
            return set_why(why, why_len, -EINVAL, "undo record %llu is truncated",
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

/* A repair applies its writes in order, so an interrupted one applied a
 * prefix: walking the records backwards, the first whose region holds the
 * bytes it wrote is the last one applied, and every earlier one must hold
 * its own bytes once the later ones are undone. Writing every record's
 * saved bytes backwards restores the original whatever the prefix was
 * (each byte ends with the bytes of the earliest write covering it), so
 * the walk only decides whether the log matches the image. Returns the
 * number of writes found applied, or a negative errno. */
static int64_t restore(const undo_log *log, qc_io *io, char *why, size_t why_len)
{
    int64_t applied = 0;
    for (uint64_t k = log->nb_records; k-- > 0;) {
        const undo_record *rec = &log->records[k];
        uint8_t *cur = malloc(rec->length ? (size_t)rec->length : 1);
        if (!cur)
            return -ENOMEM;
        int ret = qc_read_zero_filled(io, rec->offset, cur, (size_t)rec->length);
        bool written = ret == 0 && XXH64(cur, (size_t)rec->length, 0) == rec->new_hash;
        free(cur);
        if (ret < 0)
            return set_why(why, why_len, ret, "reading the image at 0x%llx failed",
                           (unsigned long long)rec->offset);
        if (written && !applied)
            applied = (int64_t)k + 1;
        if (applied && !written)
            return set_why(why, why_len, -ESTALE,
                           "the image at 0x%llx (%llu bytes) does not hold what the repair wrote "
                           "there: this log is not for this image, or the image changed since",
                           (unsigned long long)rec->offset, (unsigned long long)rec->length);
        ret = io->write(io->opaque, rec->offset, rec->old, (size_t)rec->length);
        if (ret < 0)
            return set_why(why, why_len, ret, "writing the image at 0x%llx failed",
                           (unsigned long long)rec->offset);
    }
    return applied;
}

/* The image may be longer than before the repair only by what the applied
 * writes appended; with nothing applied, it must read as the original. */
static int check_belongs(const undo_log *log, qc_io *image, qc_io *restored, int64_t applied,
                         char *why, size_t why_len)
{
    uint64_t longest = log->size_before;
    for (int64_t k = 0; k < applied; k++) {
        uint64_t end = log->records[k].offset + log->records[k].length;
        longest = end > longest ? end : longest;
    }
    if (image->size < log->size_before || image->size > longest)
        return set_why(why, why_len, -ESTALE,
                       "the image is %llu bytes; the repair this log undoes left it between %llu "
                       "and %llu bytes: this log is not for this image",
                       (unsigned long long)image->size, (unsigned long long)log->size_before,
                       (unsigned long long)longest);
    for (uint64_t k = 0; applied == 0 && k < log->nb_records; k++) {
        const undo_record *rec = &log->records[k];
        uint8_t *a = malloc(rec->length ? (size_t)rec->length : 1);
        uint8_t *b = malloc(rec->length ? (size_t)rec->length : 1);
        int ret = !a || !b ? -ENOMEM : qc_read_zero_filled(image, rec->offset, a, (size_t)rec->length);
        if (ret == 0)
            ret = qc_read_zero_filled(restored, rec->offset, b, (size_t)rec->length);
        bool same = ret == 0 && memcmp(a, b, (size_t)rec->length) == 0;
        free(a);
        free(b);
        if (ret < 0)
            return ret;
        if (!same)
            return set_why(why, why_len, -ESTALE,
                           "the image at 0x%llx holds neither what the repair wrote nor what it "
                           "saved: this log is not for this image",
                           (unsigned long long)rec->offset);
    }
    return 0;
}

int qc_rollback(qc_io *image, qc_io *undo, char *why, size_t why_len)
{
    if (!image || !undo || !image->write || !image->flush || !image->truncate)
        return set_why(why, why_len, -EINVAL, "the image is not open for writing");
    undo_log log = {0};
    int ret = parse_log(undo, &log, why, why_len);
    qc_io view = {0};
    if (ret == 0)
        ret = qc_overlay_open(&view, image);
    int64_t applied = 0;
    if (ret == 0) {
        applied = restore(&log, &view, why, why_len);
        ret = applied < 0 ? (int)applied : check_belongs(&log, image, &view, applied, why, why_len);
    }
    if (ret == 0) {
        int64_t again = restore(&log, image, why, why_len);
        ret = again < 0 ? (int)again : 0;
    }
    /* Restored regions past the old end (an interrupted repair) went away
     * with the truncation, as did everything the repair appended. */
    if (ret == 0)
        ret = image->truncate(image->opaque, log.size_before);
    if (ret == 0) {
        image->size = log.size_before;
        ret = image->flush(image->opaque);
    }
    if (view.close)
        qc_io_close(&view);
    free(log.records);
    free(log.bytes);
    return ret;
}
