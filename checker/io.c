/*
 * I/O backends: a file (read-only for checks, read-write for repairs, both
 * with QEMU's image locks), memory (read-only or growable), and a
 * crash-injection wrapper for tests. Check mode opens files O_RDONLY and
 * never writes (a lock is not a write).
 */
#define _GNU_SOURCE /* F_OFD_GETLK, F_OFD_SETLK */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../layout/bytes.h"
#include "ctx.h"

typedef struct file_backend {
    int fd;
} file_backend;

static int file_read(void *opaque, uint64_t off, void *buf, size_t len)
{
    file_backend *f = opaque;
    uint8_t *p = buf;
    while (len) {
        if (off > (uint64_t)INT64_MAX)
            return -EIO;
        ssize_t n = pread(f->fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -EIO; /* the file shrank under us */
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

int qc_io_next_data(qc_io *io, uint64_t off, uint64_t *data)
{
    if (io->read != file_read || off >= io->size)
        return -ENOTSUP;
    const file_backend *f = io->opaque;
    off_t at = lseek(f->fd, (off_t)off, SEEK_DATA);
    if (at < 0)
        return errno == ENXIO ? (*data = io->size, 0) : -errno;
    *data = (uint64_t)at < io->size ? (uint64_t)at : io->size;
    return 0;
}

int qc_pwrite_full(int fd, uint64_t off, const void *buf, size_t len)
{
    const uint8_t *p = buf;
    while (len) {
        if (off > (uint64_t)INT64_MAX)
            return -EFBIG;
        ssize_t n = pwrite(fd, p, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        p += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int file_write(void *opaque, uint64_t off, const void *buf, size_t len)
{
    const file_backend *f = opaque;
    return qc_pwrite_full(f->fd, off, buf, len);
}

static int file_flush(void *opaque)
{
    file_backend *f = opaque;
    /* fsync, not fdatasync: a repair may grow the file and the new length
     * must be durable before the header points into it. */
    return fsync(f->fd) < 0 ? -errno : 0;
}

static int file_truncate(void *opaque, uint64_t size)
{
    file_backend *f = opaque;
    if (size > (uint64_t)INT64_MAX)
        return -EFBIG;
    return ftruncate(f->fd, (off_t)size) < 0 ? -errno : 0;
}

static void file_close(void *opaque)
{
    file_backend *f = opaque;
    close(f->fd);
    free(f);
}

/* QEMU's image locking (block/file-posix.c): a process holding block
 * permission n (QC_PERM_*) has an OFD read lock on byte 100 + n of the
 * file, and one on byte 200 + n while it refuses to share that permission.
 * Locks are taken first and the others' tested afterwards, as QEMU does,
 * so that of two processes opening the image at once one sees the other. */
#define QEMU_LOCK_PERM_BASE 100
#define QEMU_LOCK_SHARED_BASE 200
#define QEMU_LOCK_PERMS 5 /* QEMU 7.2 uses 4; older versions a fifth (graph change) */

static int ofd_lock(int fd, short type, off_t start, bool test)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = 1};
    if (fcntl(fd, test ? F_OFD_GETLK : F_OFD_SETLK, &fl) < 0)
        return -errno;
    return test && fl.l_type != F_UNLCK ? -EBUSY : 0;
}

/* Lock the bytes of the permissions held and of those not shared; on
 * failure, others->failed_byte says which. */
static int take_locks(int fd, unsigned held, unsigned unshared, qc_lock_state *others)
{
    for (int n = 0; n < QEMU_LOCK_PERMS * 2; n++) {
        int perm = n % QEMU_LOCK_PERMS;
        int byte = (n < QEMU_LOCK_PERMS ? QEMU_LOCK_PERM_BASE : QEMU_LOCK_SHARED_BASE) + perm;
        if (!((n < QEMU_LOCK_PERMS ? held : unshared) >> perm & 1))
            continue;
        int ret = ofd_lock(fd, F_RDLCK, byte, false);
        if (ret < 0) {
            others->failed_byte = byte;
            others->failed_errno = -ret;
            return -EBUSY;
        }
    }
    return 0;
}

/* Which permissions other processes hold or refuse to share. */
static int read_others(int fd, qc_lock_state *others)
{
    for (int perm = 0; perm < QEMU_LOCK_PERMS; perm++) {
        int ret = ofd_lock(fd, F_WRLCK, QEMU_LOCK_PERM_BASE + perm, true);
        if (ret == -EBUSY)
            others->held |= 1u << perm;
        else if (ret < 0)
            return ret;
        ret = ofd_lock(fd, F_WRLCK, QEMU_LOCK_SHARED_BASE + perm, true);
        if (ret == -EBUSY)
            others->unshared |= 1u << perm;
        else if (ret < 0)
            return ret;
    }
    return 0;
}

static int apply_lock_mode(int fd, qc_lock_mode mode, qc_lock_state *others)
{
    const unsigned all = (1u << QEMU_LOCK_PERMS) - 1;
    int ret = 0;
    switch (mode) {
    case QC_LOCK_CHECK: /* qemu-img check: read, share neither write nor resize */
        ret = take_locks(fd, QC_PERM_CONSISTENT_READ, QC_PERM_WRITE | QC_PERM_RESIZE, others);
        break;
    case QC_LOCK_SHARED: /* qemu-img check -U: read, share everything */
        ret = take_locks(fd, QC_PERM_CONSISTENT_READ, 0, others);
        break;
    case QC_LOCK_NONE: /* file.locking=off: take nothing, only look */
        break;
    case QC_LOCK_REPAIR:
        /* Read, write and resize, sharing nothing: QEMU will not open the
         * image until the repair is over. */
        ret = take_locks(fd, QC_PERM_CONSISTENT_READ | QC_PERM_WRITE | QC_PERM_RESIZE, all,
                         others);
        break;
    }
    if (ret == 0)
        ret = read_others(fd, others);
    /* A repair refuses any other user of the image (even a reader: the
     * image changes under it); a check leaves the verdict to its caller,
     * because whether a lock conflicts depends on the format. */
    if (ret == 0 && mode == QC_LOCK_REPAIR && (others->held | others->unshared))
        ret = -EBUSY;
    return ret;
}

static int open_file(qc_io *io, const char *path, bool writable, bool lock, qc_lock_mode mode,
                     qc_lock_state *others)
{
    qc_lock_state ignored;
    if (!others)
        others = &ignored;
    memset(others, 0, sizeof(*others));
    memset(io, 0, sizeof(*io));
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    int err = 0;
    off_t size = 0;
    if (fstat(fd, &st) < 0)
        err = -errno;
    else if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode))
        err = -EINVAL;
    else if ((size = lseek(fd, 0, SEEK_END)) < 0)
        err = -errno;
    else if (lock)
        err = apply_lock_mode(fd, mode, others);
    file_backend *f = err ? NULL : malloc(sizeof(*f));
    if (!f) {
        close(fd); /* releases every lock taken on it */
        return err ? err : -ENOMEM;
    }
    f->fd = fd;
    io->read = file_read;
    if (writable) {
        io->write = file_write;
        io->flush = file_flush;
        io->truncate = file_truncate;
    }
    io->close = file_close;
    io->opaque = f;
    io->size = (uint64_t)size;
    return 0;
}

int qc_io_open_file(qc_io *io, const char *path)
{
    return open_file(io, path, false, false, QC_LOCK_NONE, NULL);
}

int qc_io_open_image(qc_io *io, const char *path, qc_lock_mode mode, qc_lock_state *others)
{
    return open_file(io, path, mode == QC_LOCK_REPAIR, true, mode, others);
}

typedef struct mem_backend {
    const uint8_t *buf;
    size_t len;
} mem_backend;

/* Read from a buffer of `size` bytes; past its end is -EIO. */
static int copy_out(const uint8_t *data, size_t size, uint64_t off, void *buf, size_t len)
{
    if (off > size || len > size - off)
        return -EIO;
    memcpy(buf, data + off, len);
    return 0;
}

static int mem_read(void *opaque, uint64_t off, void *buf, size_t len)
{
    const mem_backend *m = opaque;
    return copy_out(m->buf, m->len, off, buf, len);
}

static void mem_close(void *opaque)
{
    free(opaque);
}

void qc_io_open_memory(qc_io *io, const void *buf, size_t len)
{
    memset(io, 0, sizeof(*io));
    mem_backend *m = malloc(sizeof(*m));
    if (!m)
        return; /* io->read stays NULL: qc_check() refuses it */
    m->buf = buf;
    m->len = len;
    io->read = mem_read;
    io->close = mem_close;
    io->opaque = m;
    io->size = len;
}

typedef struct growable_backend {
    uint8_t **buf;
    size_t *len;
    size_t cap; /* bytes allocated at *buf: grown by doubling, so that many
                   small appends (an undo log's records) cost linear time */
} growable_backend;

static int growable_read(void *opaque, uint64_t off, void *buf, size_t len)
{
    const growable_backend *m = opaque;
    return copy_out(*m->buf, *m->len, off, buf, len);
}

static int growable_truncate(void *opaque, uint64_t size)
{
    growable_backend *m = opaque;
    if (size > SIZE_MAX)
        return -EFBIG;
    if (size > m->cap) {
        size_t cap = m->cap > SIZE_MAX / 2 || m->cap * 2 < size ? (size_t)size : m->cap * 2;
        uint8_t *p = realloc(*m->buf, cap);
        if (!p)
            return -ENOMEM;
        *m->buf = p;
        m->cap = cap;
    }
    if (size > *m->len)
        memset(*m->buf + *m->len, 0, (size_t)size - *m->len);
    *m->len = (size_t)size;
    return 0;
}

static int growable_write(void *opaque, uint64_t off, const void *buf, size_t len)
{
    growable_backend *m = opaque;
    uint64_t end;
    if (!qc_add_ok(off, len, &end))
        return -EFBIG;
    if (end > *m->len) {
        int ret = growable_truncate(m, end);
        if (ret < 0)
            return ret;
    }
    memcpy(*m->buf + off, buf, len);
    return 0;
}

static int growable_flush(void *opaque)
{
    (void)opaque;
    return 0;
}

int qc_io_open_memory_rw(qc_io *io, uint8_t **buf, size_t *len)
{
    memset(io, 0, sizeof(*io));
    growable_backend *m = malloc(sizeof(*m));
    if (!m)
        return -ENOMEM;
    m->buf = buf;
    m->len = len;
    m->cap = *len;
    io->read = growable_read;
    io->write = growable_write;
    io->flush = growable_flush;
    io->truncate = growable_truncate;
    io->close = mem_close;
    io->opaque = m;
    io->size = *len;
    return 0;
}

void qc_io_close(qc_io *io)
{
    if (io->close)
        io->close(io->opaque);
    memset(io, 0, sizeof(*io));
}
