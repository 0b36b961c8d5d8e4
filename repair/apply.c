/*
 * Carrying out a plan, the undo log, and rollback.
 *
 * Undo log layout (all integers big-endian):
 *   header, 48 bytes: "QCHKUNDO", version (u32: 1, or 2 with a truncation), reserved (u32 = 0),
 *     image size before the repair (u64), number of records (u64),
 *     total log length (u64), xxh64 of the preceding 40 bytes (u64)
 *   per write or truncation step of the plan, in plan order:
 *     offset (u64), length (u64), xxh64 of the bytes written (u64),
 *     the bytes the region held just before that step (length bytes),
 *     xxh64 of this record up to here (u64)
 *   A truncation (version 2 only) sets the top bit of its offset: the file
 *   was cut at offset, the length bytes after it went, and what "was
 *   written" there is what a read past the end gives, zeros. A log
 *   without one is version 1, as before truncations existed.
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
#define UNDO_VERSION_TRUNCATE 2u
#define UNDO_TRUNCATED ((uint64_t)1 << 63)
#define UNDO_HEADER_SIZE 48u
#define UNDO_RECORD_FIXED 32u /* offset, length, new hash, trailing checksum */

/* Hash `len` zero bytes into `st`. */
static void hash_zeros(XXH64_state_t *st, uint64_t len)
{
    static const uint8_t zeros[4096];
    for (; len; len -= len < sizeof(zeros) ? len : sizeof(zeros))
        XXH64_update(st, zeros, len < sizeof(zeros) ? (size_t)len : sizeof(zeros));
}

/* What [off, off + len) held just before step `upto`: the image as it is
 * (before the plan), with the plan's earlier writes and cuts applied. */
static int bytes_before_step(const qc_repair_plan *plan, size_t upto, qc_io *image, uint64_t off,
                             uint8_t *buf, size_t len)
{
    int ret = qc_read_zero_filled(image, off, buf, len);
    for (size_t j = 0; j < upto && ret == 0; j++) {
        const qc_repair_step *w = &plan->steps[j];
        uint64_t lo = w->offset > off ? w->offset : off;
        if (w->kind == QC_STEP_TRUNCATE && lo < off + len)
            memset(buf + (lo - off), 0, (size_t)(off + len - lo));
        if (w->kind != QC_STEP_WRITE)
            continue;
        uint64_t hi = w->offset + w->length < off + len ? w->offset + w->length : off + len;
        if (lo < hi)
            memcpy(buf + (lo - off), w->data + (lo - w->offset), (size_t)(hi - lo));
    }
    return ret;
}

/* The record of a truncation, streamed: its saved bytes may be more than
 * memory holds. */
static int write_truncate_record(const qc_repair_plan *plan, size_t i, qc_io *image, qc_io *undo,
                                 uint64_t pos)
{
    const qc_repair_step *s = &plan->steps[i];
    uint8_t head[24], tail[8];
    XXH64_state_t *zero_hash = XXH64_createState(), *record = XXH64_createState();
    uint8_t *chunk = malloc(1 << 20);
    int ret = zero_hash && record && chunk ? 0 : -ENOMEM;
    if (ret == 0) {
        XXH64_reset(zero_hash, 0);
        hash_zeros(zero_hash, s->length);
        qc_put_be64(head, s->offset | UNDO_TRUNCATED);
        qc_put_be64(head + 8, s->length);
        qc_put_be64(head + 16, XXH64_digest(zero_hash));
        XXH64_reset(record, 0);
        XXH64_update(record, head, sizeof(head));
        ret = undo->write(undo->opaque, pos, head, sizeof(head));
        pos += sizeof(head);
    }
    for (uint64_t done = 0; ret == 0 && done < s->length;) {
        size_t n = s->length - done < (1 << 20) ? (size_t)(s->length - done) : (1 << 20);
        ret = bytes_before_step(plan, i, image, s->offset + done, chunk, n);
        if (ret == 0) {
            XXH64_update(record, chunk, n);
            ret = undo->write(undo->opaque, pos, chunk, n);
        }
        pos += n;
        done += n;
    }
    if (ret == 0) {
        qc_put_be64(tail, XXH64_digest(record));
        ret = undo->write(undo->opaque, pos, tail, sizeof(tail));
    }
    free(chunk);
    XXH64_freeState(zero_hash);
    XXH64_freeState(record);
    return ret;
}

static int write_undo_log(const qc_repair_plan *plan, qc_io *image, qc_io *undo)
{
    uint64_t records = 0, total = UNDO_HEADER_SIZE;
    bool cuts = false;
    for (size_t i = 0; i < plan->nb_steps; i++)
        if (plan->steps[i].kind != QC_STEP_FLUSH) {
            records++;
            total += UNDO_RECORD_FIXED + plan->steps[i].length;
            cuts |= plan->steps[i].kind == QC_STEP_TRUNCATE;
        }
    uint8_t hdr[UNDO_HEADER_SIZE];
    memcpy(hdr, UNDO_MAGIC, 8);
    qc_put_be32(hdr + 8, cuts ? UNDO_VERSION_TRUNCATE : UNDO_VERSION);
    qc_put_be32(hdr + 12, 0);
    qc_put_be64(hdr + 16, plan->size_before);
    qc_put_be64(hdr + 24, records);
    qc_put_be64(hdr + 32, total);
    qc_put_be64(hdr + 40, XXH64(hdr, 40, 0));
    int ret = undo->write(undo->opaque, 0, hdr, sizeof(hdr));
    uint64_t pos = sizeof(hdr);
    for (size_t i = 0; i < plan->nb_steps && ret == 0; i++) {
        const qc_repair_step *s = &plan->steps[i];
        if (s->kind == QC_STEP_FLUSH)
            continue;
        size_t len = UNDO_RECORD_FIXED + (size_t)s->length;
        if (s->kind == QC_STEP_TRUNCATE) {
            ret = write_truncate_record(plan, i, image, undo, pos);
            pos += len;
            continue;
        }
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
    for (size_t i = 0; i < plan->nb_steps; i++)
        if (plan->steps[i].kind == QC_STEP_TRUNCATE && !image->truncate)
            return -EINVAL;
    if (undo) {
        if (!undo->write || !undo->flush)
            return -EINVAL;
        int ret = write_undo_log(plan, image, undo);
        if (ret < 0)
            return ret;
    }
    for (size_t i = 0; i < plan->nb_steps; i++) {
        const qc_repair_step *s = &plan->steps[i];
        int ret = s->kind == QC_STEP_FLUSH      ? image->flush(image->opaque)
                  : s->kind == QC_STEP_TRUNCATE ? image->truncate(image->opaque, s->offset)
                                                : image->write(image->opaque, s->offset, s->data,
                                                               (size_t)s->length);
        if (ret < 0)
            return ret;
        if (s->kind == QC_STEP_TRUNCATE)
            image->size = s->offset;
        else if (s->kind == QC_STEP_WRITE && s->offset + s->length > image->size)
            image->size = s->offset + s->length;
    }
    return image->flush(image->opaque);
}

/* ---- rollback ---- */

typedef struct undo_record {
    uint64_t offset, length, new_hash;
    const uint8_t *old;
    bool truncated; /* the file was cut at offset (see the layout above) */
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
    uint32_t version = qc_be32(h + 8);
    if (memcmp(h, UNDO_MAGIC, 8) != 0 ||
        (version != UNDO_VERSION && version != UNDO_VERSION_TRUNCATE))
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
        uint64_t offset = qc_be64(rec);
        bool truncated = offset & UNDO_TRUNCATED;
        if (truncated && version != UNDO_VERSION_TRUNCATE)
            return set_why(why, why_len, -EINVAL, "undo record %llu has an impossible offset",
                           (unsigned long long)i);
        log->records[i] = (undo_record){offset & ~UNDO_TRUNCATED, length, qc_be64(rec + 16),
                                        rec + 24, truncated};
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
    uint64_t shortest = log->size_before, longest = log->size_before;
    for (uint64_t k = 0; k < applied; k++) {
        const undo_record *rec = &log->records[k];
        uint64_t end = rec->offset + rec->length;
        if (rec->truncated)
            shortest = rec->offset < shortest ? rec->offset : shortest;
        else
            longest = end > longest ? end : longest;
    }
    if (image->size < shortest || image->size > longest)
        return set_why(why, why_len, -ESTALE,
                       "the image is %llu bytes; the repair this log undoes left it between %llu "
                       "and %llu bytes",
                       (unsigned long long)image->size, (unsigned long long)shortest,
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
