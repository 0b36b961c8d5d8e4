/*
 * --salvage: before a repair writes anything, copy every host range it
 * unlinks or frees into a directory, so that nothing it takes away is lost.
 *
 * The directory gets three files (docs/repair.md, "Salvage"):
 *   clusters.bin  the bytes of the ranges, each host byte once, in host
 *                 order (overlapping items share their bytes);
 *   index.tsv     one row per unlinked or freed item inside the file: where
 *                 its bytes are in clusters.bin, its host offset and length,
 *                 their xxh64, why it was unlinked, whose guest data it held;
 *   README.txt    how to read and restore a range.
 * The index is written under a temporary name and renamed last, so an
 * index.tsv that exists belongs to a salvage that is complete on disk.
 * Every file and the directory are fsync'ed before this returns 0; the
 * caller applies the repair only then. On any failure everything created
 * here is removed again.
 *
 * Needs: the plan (its unlinked list and the first check's snapshot ids and
 * names) and the image as it is before the repair. Produces: the directory,
 * or a refusal with a message naming it, the bytes needed and available.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>
#include <xxhash.h>

#include "planner.h"

#define INDEX_TMP QC_SALVAGE_INDEX ".tmp"
#define COPY_CHUNK (1u << 20)

/* One row of the index: a piece of the file an unlinked item covers. */
typedef struct salvage_row {
    uint64_t host, length; /* clipped to the file as it was before the repair */
    uint64_t data;         /* where its bytes start in clusters.bin */
    size_t item;           /* index in the plan's unlinked list */
    uint64_t hash;
} salvage_row;

typedef struct salvage {
    const qc_repair_plan *plan;
    const char *dir;
    salvage_row *rows;
    size_t nb_rows;
    uint64_t data_bytes;
    char *index; /* the index text */
    size_t index_len;
    char *why;
    size_t why_len;
} salvage;

static const char readme[] =
    "qcheck salvage\n"
    "==============\n"
    "\n"
    "Before it changed the image, `qcheck -r ... --salvage` copied here every\n"
    "range of the image file that the repair stopped pointing to (a dropped\n"
    "L1/L2 entry's target, a dropped snapshot's L1 table, a replaced snapshot\n"
    "table or refcount structure, dropped bitmaps) or whose refcount it\n"
    "lowered to 0 (leaked and orphaned clusters). The repair itself never\n"
    "discards them, but QEMU may reuse their clusters for new data at any time.\n"
    "\n"
    "clusters.bin  the saved bytes, in host order; a byte the image held once\n"
    "              is saved once, even when several rows cover it\n"
    "index.tsv     one row per saved range, tab-separated, after a header line:\n"
    "  data_offset    where the range starts in clusters.bin (bytes)\n"
    "  host_offset    where it was in the image file (bytes)\n"
    "  length         bytes (a range ends at the old end of the file at most)\n"
    "  xxh64          XXH64 (seed 0) of those bytes, 16 hex digits\n"
    "  kind           dropped (a pointer to it was removed), freed (its\n"
    "                 refcount went to 0), or dropped+freed\n"
    "  problem, code  the finding that made the repair unlink or free it\n"
    "  snapshot       whose guest data it held: active, a snapshot's index in\n"
    "                 the snapshot table before the repair, or none (metadata,\n"
    "                 or a cluster no followed structure mapped)\n"
    "  snapshot_id, snapshot_name\n"
    "                 that snapshot's id and name before the repair; bytes\n"
    "                 outside printable ASCII, tabs and backslashes as \\xHH\n"
    "  guest_offset, guest_length\n"
    "                 the guest bytes the dropped pointer mapped\n"
    "  entry_offset   where the dropped pointer was in the image\n"
    "  target         what it held (it may be unaligned, or past the end)\n"
    "                 A `-` means not known or not applicable. Numbers are\n"
    "                 decimal, ready for dd.\n"
    "\n"
    "Copy one range out, to look at it:\n"
    "  dd if=clusters.bin of=range.bin iflag=skip_bytes,count_bytes \\\n"
    "     skip=DATA_OFFSET count=LENGTH\n"
    "\n"
    "Put one range back where it was in the image file (only with nothing\n"
    "using the image; it overwrites what the cluster holds now, which after\n"
    "the repair may be new data QEMU put there):\n"
    "  dd if=clusters.bin of=IMAGE iflag=skip_bytes,count_bytes \\\n"
    "     oflag=seek_bytes conv=notrunc skip=DATA_OFFSET seek=HOST_OFFSET count=LENGTH\n"
    "Together with `qcheck --rollback=LOG IMAGE` (when the repair ran with\n"
    "--undo=LOG), which puts the metadata back, doing this for every row\n"
    "returns those ranges to their state before the repair:\n"
    "  awk -F'\\t' 'NR > 1 { print $1, $2, $3 }' index.tsv |\n"
    "  while read d h n; do\n"
    "    dd if=clusters.bin of=IMAGE iflag=skip_bytes,count_bytes \\\n"
    "       oflag=seek_bytes conv=notrunc skip=$d seek=$h count=$n status=none\n"
    "  done\n"
    "\n"
    "A range holds the bytes as the image stored them: a data cluster the\n"
    "guest bytes at guest_offset (compressed in a compressed range, encrypted\n"
    "in an encrypted image), a table its entries. To hand plain guest data\n"
    "back to a guest, write it at guest_offset of the guest's disk (through\n"
    "qemu-nbd, say). `qcheck --list-problems` explains the problem ids.\n"
    "\n"
    "A directory with clusters.bin but without index.tsv is a salvage that\n"
    "was interrupted; the image was not touched then.\n";

static int set_why(salvage *s, int err, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int set_why(salvage *s, int err, const char *fmt, ...)
{
    if (s->why && s->why_len) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(s->why, s->why_len, fmt, ap);
        va_end(ap);
    }
    return err;
}

/* ---- the rows ---- */

static int row_cmp(const void *a, const void *b)
{
    const salvage_row *x = a, *y = b;
    if (x->host != y->host)
        return x->host < y->host ? -1 : 1;
    return x->item < y->item ? -1 : x->item > y->item;
}

/* Every dropped or freed item's range inside the file as it was, in host
 * order, with its place in clusters.bin (the union of the ranges). A
 * recovered-only item loses nothing. */
static int collect_rows(salvage *s)
{
    const qc_repair_plan *p = s->plan;
    s->rows = malloc((p->nb_unlinked ? p->nb_unlinked : 1) * sizeof(*s->rows));
    if (!s->rows)
        return -ENOMEM;
    for (size_t i = 0; i < p->nb_unlinked; i++) {
        const qc_unlinked *u = &p->unlinked[i];
        if (!(u->kind & (QC_UNLINK_DROPPED | QC_UNLINK_FREED)) || u->host_offset == QC_NO_OFFSET ||
            !u->length || u->host_offset >= p->size_before)
            continue;
        uint64_t room = p->size_before - u->host_offset;
        s->rows[s->nb_rows++] =
            (salvage_row){u->host_offset, u->length < room ? u->length : room, 0, i, 0};
    }
    qsort(s->rows, s->nb_rows, sizeof(*s->rows), row_cmp);
    uint64_t start = 0, end = 0; /* the current stretch of the union */
    for (size_t i = 0; i < s->nb_rows; i++) {
        salvage_row *r = &s->rows[i];
        if (i == 0 || r->host > end) {
            s->data_bytes += end - start;
            start = end = r->host;
        }
        r->data = s->data_bytes + (r->host - start);
        if (r->host + r->length > end)
            end = r->host + r->length;
    }
    s->data_bytes += end - start;
    return 0;
}

/* ---- the index ---- */

typedef struct text {
    char *buf;
    size_t len, cap;
    bool failed;
} text;

static void put(text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void put(text *t, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = t->failed ? 0 : vsnprintf(t->buf ? t->buf + t->len : NULL, t->cap - t->len, fmt, ap);
        va_end(ap);
        if (t->failed || n < 0) {
            t->failed = true;
            return;
        }
        if ((size_t)n < t->cap - t->len) {
            t->len += (size_t)n;
            return;
        }
        size_t cap = t->cap ? t->cap * 2 : 4096;
        while (cap - t->len <= (size_t)n)
            cap *= 2;
        char *buf = realloc(t->buf, cap);
        if (!buf) {
            t->failed = true;
            return;
        }
        t->buf = buf;
        t->cap = cap;
    }
}

/* A snapshot id or name as a field: printable ASCII as it is, other bytes,
 * tabs, backslashes (and a lone "-", which means "none") as \xHH. */
static void put_label(text *t, const uint8_t *bytes, size_t len)
{
    if (len == 1 && bytes[0] == '-') {
        put(t, "\\x2d");
        return;
    }
    for (size_t i = 0; i < len; i++) {
        if (bytes[i] >= 0x20 && bytes[i] < 0x7f && bytes[i] != '\\')
            put(t, "%c", bytes[i]);
        else
            put(t, "\\x%02x", bytes[i]);
    }
}

static void put_number(text *t, uint64_t v)
{
    if (v == QC_NO_OFFSET)
        put(t, "\t-");
    else
        put(t, "\t%" PRIu64, v);
}

static void put_row(text *t, const qc_repair_plan *p, const salvage_row *r)
{
    const qc_unlinked *u = &p->unlinked[r->item];
    const qc_problem *problem = qc_problem_get(u->problem);
    unsigned kind = u->kind & (QC_UNLINK_DROPPED | QC_UNLINK_FREED);
    put(t, "%" PRIu64 "\t%" PRIu64 "\t%" PRIu64 "\t%016" PRIx64 "\t%s\t%s\t%u\t", r->data, r->host,
        r->length, r->hash,
        kind == (QC_UNLINK_DROPPED | QC_UNLINK_FREED) ? "dropped+freed"
        : kind == QC_UNLINK_DROPPED                   ? "dropped"
                                                      : "freed",
        problem->id, problem->code);
    if (u->snapshot == QC_UNLINKED_ACTIVE) {
        put(t, "active\t-\t-");
    } else if (u->snapshot == QC_UNLINKED_NONE) {
        put(t, "none\t-\t-");
    } else if (u->snapshot < p->nb_snapshot_labels) {
        const plan_snapshot_label *l = &p->snapshot_labels[u->snapshot];
        put(t, "%" PRIu32 "\t", u->snapshot);
        put_label(t, l->id, l->id_len);
        put(t, "\t");
        put_label(t, l->name, l->name_len);
    } else {
        put(t, "%" PRIu32 "\t-\t-", u->snapshot);
    }
    put_number(t, u->guest_offset);
    put_number(t, u->guest_offset == QC_NO_OFFSET ? QC_NO_OFFSET : u->guest_length);
    put_number(t, u->entry_offset);
    put_number(t, u->target);
    put(t, "\n");
}

/* The index text; its length does not depend on the hashes (16 digits). */
static int format_index(salvage *s)
{
    text t = {0};
    put(&t, "data_offset\thost_offset\tlength\txxh64\tkind\tproblem\tcode\tsnapshot\tsnapshot_id\t"
            "snapshot_name\tguest_offset\tguest_length\tentry_offset\ttarget\n");
    for (size_t i = 0; i < s->nb_rows; i++)
        put_row(&t, s->plan, &s->rows[i]);
    free(s->index);
    s->index = t.buf;
    s->index_len = t.len;
    return t.failed ? -ENOMEM : 0;
}

/* ---- the directory ---- */

/* 1 when dir is an empty directory (or a link to one), 0 when it does not
 * exist, or a refusal. */
static int dir_state(salvage *s)
{
    struct stat st;
    if (stat(s->dir, &st) < 0)
        return errno == ENOENT ? 0 : -errno;
    if (!S_ISDIR(st.st_mode))
        return -ENOTDIR;
    DIR *d = opendir(s->dir);
    if (!d)
        return -errno;
    int ret = 1;
    for (struct dirent *e; (e = readdir(d));)
        if (strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0) {
            ret = -ENOTEMPTY;
            break;
        }
    closedir(d);
    return ret;
}

/* The parent directory of dir (malloc'd): "." for a bare name. */
static char *parent_of(const char *dir)
{
    size_t len = strlen(dir);
    while (len > 1 && dir[len - 1] == '/')
        len--;
    while (len > 0 && dir[len - 1] != '/')
        len--;
    while (len > 1 && dir[len - 1] == '/')
        len--;
    if (len == 0)
        return strdup(".");
    char *p = malloc(len + 1);
    if (p) {
        memcpy(p, dir, len);
        p[len] = '\0';
    }
    return p;
}

static uint64_t round_up(uint64_t n, uint64_t unit)
{
    return unit ? qc_div_round_up(n, unit) * unit : n;
}

/* Free room where the files go against what they take (each file rounded
 * up to whole blocks, one more block for a new directory). */
static int check_room(salvage *s, bool exists, qc_salvage_info *info)
{
    char *where = exists ? strdup(s->dir) : parent_of(s->dir);
    if (!where)
        return -ENOMEM;
    struct statvfs vfs;
    int ret = statvfs(where, &vfs) < 0 ? -errno : 0;
    free(where);
    if (ret < 0)
        return ret;
    uint64_t block = vfs.f_frsize ? vfs.f_frsize : vfs.f_bsize;
    info->needed = round_up(s->data_bytes, block) + round_up(s->index_len, block) +
                   round_up(sizeof(readme) - 1, block) + (exists ? 0 : block);
    info->available = (uint64_t)vfs.f_bavail * block;
    if (info->available < info->needed || (vfs.f_files && vfs.f_favail < 4))
        return -ENOSPC;
    return 0;
}

static void close_state(XXH64_state_t **state, uint64_t *hash)
{
    *hash = XXH64_digest(*state);
    XXH64_freeState(*state);
    *state = NULL;
}

/* Copy the union of the rows from the image into clusters.bin (one
 * stretch of overlapping or adjacent rows after the other), hashing each
 * row's bytes as they pass. */
static int copy_ranges(salvage *s, qc_io *image, int fd)
{
    size_t n = s->nb_rows ? s->nb_rows : 1;
    uint8_t *buf = malloc(COPY_CHUNK);
    XXH64_state_t **states = calloc(n, sizeof(*states));
    size_t *open = malloc(n * sizeof(*open));
    int ret = buf && states && open ? 0 : -ENOMEM;
    for (size_t i = 0, j; ret == 0 && i < s->nb_rows; i = j) {
        uint64_t start = s->rows[i].host, end = start + s->rows[i].length;
        for (j = i + 1; j < s->nb_rows && s->rows[j].host <= end; j++)
            if (s->rows[j].host + s->rows[j].length > end)
                end = s->rows[j].host + s->rows[j].length;
        size_t next = i, nb_open = 0;
        for (uint64_t a = start; ret == 0 && a < end;) {
            size_t len = end - a < COPY_CHUNK ? (size_t)(end - a) : COPY_CHUNK;
            uint64_t b = a + len;
            ret = image->read(image->opaque, a, buf, len);
            if (ret < 0) {
                ret = set_why(s, ret, "reading the image at 0x%" PRIx64 " failed: %s", a,
                              strerror(-ret));
                break;
            }
            ret = qc_pwrite_full(fd, s->rows[i].data + (a - start), buf, len);
            if (ret < 0) {
                ret = set_why(s, ret, "writing %s failed: %s", QC_SALVAGE_DATA, strerror(-ret));
                break;
            }
            for (; next < j && s->rows[next].host < b; next++) {
                if (!(states[next] = XXH64_createState()) || XXH64_reset(states[next], 0) != XXH_OK) {
                    ret = -ENOMEM;
                    break;
                }
                open[nb_open++] = next;
            }
            for (size_t k = 0; ret == 0 && k < nb_open;) {
                salvage_row *r = &s->rows[open[k]];
                uint64_t lo = r->host > a ? r->host : a;
                uint64_t hi = r->host + r->length < b ? r->host + r->length : b;
                if (lo < hi)
                    XXH64_update(states[open[k]], buf + (lo - a), (size_t)(hi - lo));
                if (r->host + r->length <= b) {
                    close_state(&states[open[k]], &r->hash);
                    open[k] = open[--nb_open];
                } else {
                    k++;
                }
            }
            a = b;
        }
    }
    for (size_t i = 0; states && i < s->nb_rows; i++)
        if (states[i])
            XXH64_freeState(states[i]);
    free(states);
    free(open);
    free(buf);
    return ret;
}

static int write_file(salvage *s, int dirfd, const char *name, const void *bytes, size_t len,
                      bool *created)
{
    int fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
    if (fd < 0)
        return set_why(s, -errno, "creating %s failed: %s", name, strerror(errno));
    *created = true;
    int ret = qc_pwrite_full(fd, 0, bytes, len);
    if (ret < 0)
        set_why(s, ret, "writing %s failed: %s", name, strerror(-ret));
    else if (fsync(fd) < 0)
        ret = set_why(s, -errno, "flushing %s failed: %s", name, strerror(errno));
    close(fd);
    return ret;
}

static int fsync_dir(salvage *s, const char *path)
{
    int fd = open(path, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int ret = fd < 0 || fsync(fd) < 0 ? -errno : 0;
    if (fd >= 0)
        close(fd);
    return ret < 0 ? set_why(s, ret, "flushing the directory %s failed: %s", path, strerror(-ret))
                   : 0;
}

enum { F_DATA, F_README, F_INDEX_TMP, F_INDEX, F_COUNT };
static const char *const file_names[F_COUNT] = {QC_SALVAGE_DATA, QC_SALVAGE_README, INDEX_TMP,
                                                QC_SALVAGE_INDEX};

/* Create the directory (unless it exists, empty) and its files, all
 * durable; on failure remove what was created. */
static int write_salvage(salvage *s, qc_io *image, bool exists)
{
    bool created[F_COUNT] = {false};
    int dirfd = -1, ret = 0;
    if (!exists && mkdir(s->dir, 0700) < 0)
        return set_why(s, -errno, "creating the directory failed: %s", strerror(errno));
    dirfd = open(s->dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dirfd < 0)
        ret = set_why(s, -errno, "opening the directory failed: %s", strerror(errno));
    if (ret == 0) {
        int fd = openat(dirfd, QC_SALVAGE_DATA, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd < 0) {
            ret = set_why(s, -errno, "creating %s failed: %s", QC_SALVAGE_DATA, strerror(errno));
        } else {
            created[F_DATA] = true;
            ret = copy_ranges(s, image, fd);
            if (ret == 0 && fsync(fd) < 0)
                ret = set_why(s, -errno, "flushing %s failed: %s", QC_SALVAGE_DATA,
                              strerror(errno));
            close(fd);
        }
    }
    if (ret == 0)
        ret = write_file(s, dirfd, QC_SALVAGE_README, readme, sizeof(readme) - 1,
                         &created[F_README]);
    if (ret == 0)
        ret = format_index(s); /* now with the hashes */
    if (ret == 0)
        ret = write_file(s, dirfd, INDEX_TMP, s->index, s->index_len, &created[F_INDEX_TMP]);
    /* The index appears only once everything it describes is on disk. */
    if (ret == 0 && renameat(dirfd, INDEX_TMP, dirfd, QC_SALVAGE_INDEX) < 0)
        ret = set_why(s, -errno, "renaming %s failed: %s", INDEX_TMP, strerror(errno));
    if (ret == 0) {
        created[F_INDEX_TMP] = false;
        created[F_INDEX] = true;
        ret = fsync_dir(s, s->dir);
    }
    if (ret == 0 && !exists) {
        char *parent = parent_of(s->dir);
        ret = parent ? fsync_dir(s, parent) : -ENOMEM;
        free(parent);
    }
    if (ret < 0) {
        for (int f = 0; f < F_COUNT; f++)
            if (created[f] && dirfd >= 0)
                unlinkat(dirfd, file_names[f], 0);
        if (!exists)
            rmdir(s->dir);
    }
    if (dirfd >= 0)
        close(dirfd);
    return ret;
}

int qc_repair_salvage(const qc_repair_plan *plan, qc_io *image, const char *dir, bool dry_run,
                      qc_salvage_info *info, char *why, size_t why_len)
{
    memset(info, 0, sizeof(*info));
    info->available = UINT64_MAX;
    if (why && why_len)
        why[0] = '\0';
    if (!plan || !dir || !*dir || plan->refusal || (!dry_run && (!image || !image->read)))
        return -EINVAL;
    salvage s = {.plan = plan, .dir = dir, .why = why, .why_len = why_len};
    char reason[320] = "";
    int ret = collect_rows(&s);
    if (ret == 0)
        ret = format_index(&s);
    info->ranges = s.nb_rows;
    info->bytes = s.data_bytes;
    int state = ret == 0 ? dir_state(&s) : ret;
    int room = state == -ENOMEM ? state : check_room(&s, state != 0, info);
    if (state == -ENOTEMPTY)
        snprintf(reason, sizeof(reason),
                 "it is not empty (a salvage never overwrites an earlier one; name a new "
                 "directory)");
    else if (state == -ENOTDIR)
        snprintf(reason, sizeof(reason), "it exists and is not a directory");
    else if (state < 0 && state != -ENOMEM)
        snprintf(reason, sizeof(reason), "%s", strerror(-state));
    else if (room == -ENOSPC)
        snprintf(reason, sizeof(reason), "not enough room there");
    else if (room < 0 && room != -ENOMEM)
        snprintf(reason, sizeof(reason), "the free space there cannot be known: %s",
                 strerror(-room));
    ret = state < 0 ? state : room;
    if (ret == 0 && !dry_run && image->size != plan->size_before) {
        ret = -ESTALE;
        snprintf(reason, sizeof(reason), "the image changed since the repair was planned");
    }
    if (ret == 0 && !dry_run) {
        ret = write_salvage(&s, image, state == 1);
        if (ret < 0 && why && why_len)
            snprintf(reason, sizeof(reason), "%s", why);
    }
    if (ret < 0 && reason[0]) {
        char available[32] = "an unknown number of";
        if (info->available != UINT64_MAX)
            snprintf(available, sizeof(available), "%" PRIu64, info->available);
        set_why(&s, ret,
                "cannot save the %zu range%s (%" PRIu64 " bytes) the repair unlinks or frees to "
                "'%s': %s; it needs %" PRIu64 " bytes, %s bytes are available there",
                s.nb_rows, s.nb_rows == 1 ? "" : "s", s.data_bytes, dir, reason, info->needed,
                available);
    }
    free(s.rows);
    free(s.index);
    return ret;
}
