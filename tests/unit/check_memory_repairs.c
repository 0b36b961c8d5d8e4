/*
 * Repairs of in-memory images: plan, undo log, apply and check again (the
 * fuzz harness's fz_repair_run), rollback, refusals, the notes and the
 * unlinked list of a plan, and random damage judged by the repair oracle
 * the fuzz harness uses (fz_repair_oracle).
 */
#include <check.h>
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "format.h"
#include "memory_image.h"
#include "qcheck.h"
#include "repair_run.h"

#define REPAIR_ROUNDS 600

/* Plan a repair of buf and apply it to a growable copy with an undo log
 * (through the crash io when crash_after is not UINT64_MAX), then check it. */
static void repair_buffer(const uint8_t *buf, size_t len, qc_repair_mode mode, uint64_t crash_after,
                          bool drop_unflushed, fz_repaired *out)
{
    ck_assert_int_eq(fz_repair_run(buf, len, NULL, mode, crash_after, drop_unflushed, out), 0);
}

START_TEST(test_repair_leak_and_rollback)
{
    img im;
    img_params p = default_params();
    p.spare_clusters = 2;
    img_build(&im, &p);
    uint64_t spare = img_clusters(&im) - 1;
    img_set_refcount(&im, spare, 1);     /* leaked */
    img_set_refcount(&im, spare - 1, 0); /* the other spare stays free */
    fz_repaired r;
    repair_buffer(im.buf, im.len, QC_REPAIR_LEAKS, UINT64_MAX, false, &r);
    ck_assert_int_eq(r.plan_ret, 0);
    ck_assert_uint_eq(r.before.leaks, 1);
    ck_assert_int_eq(r.apply_ret, 0);
    ck_assert_uint_eq(r.after.leaks, 0);
    ck_assert_uint_eq(r.after.corruptions, 0);
    ck_assert_uint_eq(r.predicted.leaks, r.after.leaks);
    /* Only the leaked cluster's refcount changed; the corrupt bit, set as a
     * fence while writing, is clear again. */
    img repaired_img = im;
    repaired_img.buf = r.image;
    ck_assert_uint_eq(img_get_refcount(&repaired_img, spare), 0);
    ck_assert_uint_eq(qc_be64(r.image + 72) & QC_INCOMPAT_CORRUPT, 0);
    /* Rollback restores every byte. */
    qc_io rw, undo;
    ck_assert_int_eq(qc_io_open_memory_rw(&rw, &r.image, &r.len), 0);
    qc_io_open_memory(&undo, r.undo, r.undo_len);
    char why[256];
    ck_assert_int_eq(qc_rollback(&rw, &undo, why, sizeof(why)), 0);
    qc_io_close(&undo);
    qc_io_close(&rw);
    ck_assert_uint_eq(r.len, im.len);
    ck_assert_mem_eq(r.image, im.buf, im.len);
    /* A log whose saved bytes were changed does not verify. */
    r.undo[r.undo_len - 9] ^= 1;
    ck_assert_int_eq(qc_io_open_memory_rw(&rw, &r.image, &r.len), 0);
    qc_io_open_memory(&undo, r.undo, r.undo_len);
    ck_assert_int_eq(qc_rollback(&rw, &undo, why, sizeof(why)), -EINVAL);
    qc_io_close(&undo);
    qc_io_close(&rw);
    ck_assert_mem_eq(r.image, im.buf, im.len);
    fz_repaired_free(&r);
    img_free(&im);
}
END_TEST

START_TEST(test_repair_refuses_unknown_incompatible)
{
    img im;
    img_params p = default_params();
    img_build(&im, &p);
    qc_put_be64(im.buf + 72, 1ull << 20);
    qc_io ro;
    qc_io_open_memory(&ro, im.buf, im.len);
    qc_result *before = result_new(), *after = result_new();
    qc_repair_plan *plan = NULL;
    ck_assert_int_eq(qc_repair_plan_build(&ro, NULL, QC_REPAIR_ALL, before, after, &plan), -EPERM);
    result_free(before);
    result_free(after);
    ck_assert_ptr_nonnull(plan);
    ck_assert_ptr_nonnull(strstr(qc_repair_plan_refusal(plan), "incompatible"));
    uint8_t *buf = malloc(im.len);
    size_t len = im.len;
    memcpy(buf, im.buf, im.len);
    qc_io rw;
    ck_assert_int_eq(qc_io_open_memory_rw(&rw, &buf, &len), 0);
    ck_assert_int_eq(qc_repair_apply(plan, &rw, NULL), -EINVAL);
    qc_io_close(&rw);
    ck_assert_mem_eq(buf, im.buf, im.len);
    free(buf);
    qc_repair_plan_free(plan);
    qc_io_close(&ro);
    img_free(&im);
}
END_TEST

/* Plan a repair of im and return its notes joined by newlines (the caller
 * frees them), checking that the plan was made. */
static char *plan_notes(const img *im, qc_repair_mode mode, qc_result *after)
{
    qc_io ro;
    qc_io_open_memory(&ro, im->buf, im->len);
    qc_repair_plan *plan = NULL;
    qc_result *before = result_new();
    int ret = qc_repair_plan_build(&ro, NULL, mode, before, after, &plan);
    result_free(before);
    const char *const *notes;
    size_t n = plan ? qc_repair_plan_notes(plan, &notes) : 0;
    size_t len = 1;
    for (size_t i = 0; i < n; i++)
        len += strlen(notes[i]) + 1;
    char *joined = calloc(len, 1);
    ck_assert_ptr_nonnull(joined);
    for (size_t i = 0; i < n; i++)
        strcat(strcat(joined, notes[i]), "\n");
    const char *refusal = plan ? qc_repair_plan_refusal(plan) : NULL;
    if (ret != 0) {
        ck_assert_int_eq(ret, -EPERM);
        ck_assert_ptr_nonnull(refusal);
        joined = realloc(joined, len + strlen(refusal) + 16);
        ck_assert_ptr_nonnull(joined);
        strcat(strcat(joined, "refused: "), refusal);
    }
    qc_repair_plan_free(plan);
    qc_io_close(&ro);
    return joined;
}

/* Found by fuzzing: -r leaks must not lower a leaked data cluster that the
 * active L2 table maps with COPIED clear below 2 while it cannot fix COPIED
 * (another corruption remains: qemu-img then leaves COPIED wrong); -r all
 * fixes both. With no other corruption, -r leaks lowers the refcount and
 * fixes COPIED, as qemu-img check -r leaks does. */
START_TEST(test_repair_leaks_keeps_copied_clear_shared)
{
    img im;
    img_build(&im, &(img_params){9, 4, 3, false, 2, 0});
    img_set_l2(&im, 0, img_get_l2(&im, 0) & ~QC_OFLAG_COPIED);
    img_set_refcount(&im, CL_DATA, 2);
    qc_result *after = result_new();
    char *notes = plan_notes(&im, QC_REPAIR_LEAKS, after);
    ck_assert_msg(!strstr(notes, "kept at refcount 2"), "notes: %s", notes);
    ck_assert_uint_eq(corruptions(after), 0);
    ck_assert_uint_eq(leaks(after), 0);
    free(notes);
    /* Another corruption: the floor holds and COPIED is left alone. */
    img_set_l2(&im, 1, img_get_l2(&im, 1) | 1ull << 57);
    notes = plan_notes(&im, QC_REPAIR_LEAKS, after);
    ck_assert_msg(strstr(notes, "1 leaked cluster kept at refcount 2"), "notes: %s", notes);
    ck_assert_uint_eq(corruptions(after), 1);
    ck_assert_uint_eq(problem_count(after, QC_P_L2_ENTRY_RESERVED_BITS), 1);
    ck_assert_uint_eq(leaks(after), 1);
    free(notes);
    result_free(after);
    fz_repaired r;
    repair_buffer(im.buf, im.len, QC_REPAIR_ALL, UINT64_MAX, false, &r);
    ck_assert_int_eq(r.apply_ret, 0);
    ck_assert_uint_eq(r.after.corruptions + r.after.leaks, 0);
    fz_repaired_free(&r);
    img_free(&im);
}
END_TEST

/* The plan of a repair of im in `mode` and what it unlinks (the caller
 * frees the plan). */
static qc_repair_plan *plan_of(const img *im, qc_repair_mode mode, const qc_unlinked **items,
                               size_t *n)
{
    qc_io ro;
    qc_io_open_memory(&ro, im->buf, im->len);
    qc_repair_plan *plan = NULL;
    qc_result *before = result_new(), *after = result_new();
    ck_assert_int_eq(qc_repair_plan_build(&ro, NULL, mode, before, after, &plan), 0);
    result_free(before);
    result_free(after);
    qc_io_close(&ro);
    *n = qc_repair_plan_unlinked(plan);
    /* White-box: the items are one array in the plan. */
    *items = *n ? qc_repair_plan_unlinked_item(plan, 0) : NULL;
    return plan;
}

/* What -r all unlinks, frees and recovers is listed: an unaligned L2 entry
 * into an allocated cluster nothing else references is re-pointed there
 * (recovered); one past the end of the file is dropped, and the cluster
 * only it could own (an orphan while it was there) is freed in the same
 * run, as a leak is with -r leaks. */
START_TEST(test_repair_lists_unlinked)
{
    img im;
    img_build(&im, &(img_params){12, 4, 3, false, 2, 0});
    uint64_t data0 = cl_off(&im, CL_DATA), data1 = cl_off(&im, CL_DATA + 1);
    img_set_l2(&im, 0, (data0 + 512) | QC_OFLAG_COPIED);
    img_set_l2(&im, 1, (cl_off(&im, img_clusters(&im) + 8)) | QC_OFLAG_COPIED);
    const qc_unlinked *u;
    size_t n;
    qc_repair_plan *plan = plan_of(&im, QC_REPAIR_ALL, &u, &n);
    ck_assert_uint_eq(n, 3);
    ck_assert_uint_eq(u[0].kind, QC_UNLINK_RECOVERED);
    ck_assert_int_eq(u[0].problem, QC_P_L2_ENTRY_UNALIGNED);
    ck_assert_uint_eq(u[0].host_offset, data0);
    ck_assert_uint_eq(u[0].target, data0 + 512);
    ck_assert_uint_eq(u[0].new_target, data0);
    ck_assert_uint_eq(u[0].snapshot, QC_UNLINKED_ACTIVE);
    ck_assert_uint_eq(u[0].guest_offset, 0);
    ck_assert_uint_eq(u[1].kind, QC_UNLINK_DROPPED);
    ck_assert_int_eq(u[1].problem, QC_P_L2_ENTRY_PAST_EOF);
    ck_assert_uint_eq(u[1].host_offset, QC_NO_OFFSET);
    ck_assert_uint_eq(u[1].guest_offset, im.cs);
    ck_assert_uint_eq(u[2].kind, QC_UNLINK_FREED);
    ck_assert_int_eq(u[2].problem, QC_P_REFCOUNT_ORPHAN);
    ck_assert_uint_eq(u[2].host_offset, data1);
    ck_assert_uint_eq(u[2].length, im.cs);
    qc_repair_plan_free(plan);
    /* -r leaks drops nothing and keeps the orphan. */
    plan = plan_of(&im, QC_REPAIR_LEAKS, &u, &n);
    ck_assert_uint_eq(n, 0);
    qc_repair_plan_free(plan);
    fz_repaired r;
    repair_buffer(im.buf, im.len, QC_REPAIR_ALL, UINT64_MAX, false, &r);
    ck_assert_int_eq(r.apply_ret, 0);
    ck_assert_uint_eq(r.after.corruptions + r.after.leaks + r.after.warnings, 0);
    fz_repaired_free(&r);
    img_free(&im);
}
END_TEST

/* Found by fuzzing: with the L1 table at offset 0, "L1 entries" are the
 * header's bytes; every repair writes the header, so none is made. */
START_TEST(test_repair_refuses_shared_header)
{
    img im;
    img_build(&im, &(img_params){9, 4, 3, false, 2, 0});
    im.hdr.l1_table_offset = 0;
    img_write_header(&im);
    qc_result *after = result_new();
    char *notes = plan_notes(&im, QC_REPAIR_ALL, after);
    result_free(after);
    ck_assert_msg(strstr(notes, "refused: the header's cluster is also claimed by the active L1 "
                                "table"),
                  "notes: %s", notes);
    free(notes);
    img_free(&im);
}
END_TEST

/* Random damage to a rich image, then -r all or -r leaks: the repair must
 * never crash, its prediction must be what the image really shows after,
 * it must never add corruptions, a second -r all must find nothing more
 * to fix, and an interrupted repair followed by a full one must end with
 * the same corruptions as an uninterrupted one. */
START_TEST(test_repair_random_damage)
{
    img im;
    img_build_rich(&im);
    const uint64_t meta[] = RICH_METADATA;
    uint8_t *copy = malloc(im.len);
    ck_assert_ptr_nonnull(copy);
    uint64_t state = 0x2545f4914f6cdd1dull + (uint64_t)_i;
    unsigned repaired_rounds = 0, crashed_rounds = 0;
    for (int round = 0; round < REPAIR_ROUNDS; round++) {
        memcpy(copy, im.buf, im.len);
        unsigned edits = 1 + (unsigned)(fuzz_next(&state) % 3);
        for (unsigned e = 0; e < edits; e++) {
            uint64_t r = fuzz_next(&state);
            uint64_t cl = meta[r % (sizeof(meta) / sizeof(meta[0]))];
            size_t off = (size_t)(cl_off(&im, cl) + ((r >> 8) % im.cs));
            if ((r >> 40) % 2)
                copy[off] = (uint8_t)(r >> 48);
            else
                qc_put_be64(copy + (off & ~(size_t)7), (r >> 48) % (im.len + 4096));
        }
        qc_repair_mode mode = round % 3 ? QC_REPAIR_ALL : QC_REPAIR_LEAKS;
        fz_verdict v;
        fz_repair_oracle(copy, im.len, NULL, mode, fuzz_next(&state), &v);
        ck_assert_msg(!v.failure[0], "round %d (-r %s): %s", round,
                      mode == QC_REPAIR_ALL ? "all" : "leaks", v.failure);
        repaired_rounds += v.writes > 0;
        crashed_rounds += v.crash_tested;
    }
    /* The damage must have given the repair something to do. */
    ck_assert_uint_gt(repaired_rounds, REPAIR_ROUNDS / 10);
    ck_assert_uint_gt(crashed_rounds, REPAIR_ROUNDS / 20);
    free(copy);
    img_free(&im);
}
END_TEST

void add_repair_tests(TCase *tc)
{
    tcase_add_test(tc, test_repair_leak_and_rollback);
    tcase_add_test(tc, test_repair_leaks_keeps_copied_clear_shared);
    tcase_add_test(tc, test_repair_lists_unlinked);
    tcase_add_test(tc, test_repair_refuses_shared_header);
    tcase_add_test(tc, test_repair_refuses_unknown_incompatible);
    tcase_add_loop_test(tc, test_repair_random_damage, 0, 2);
}
