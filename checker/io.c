/*
 * I/O backends: a file (read-only for checks; read-write with QEMU's image
 * locks for repairs), memory (read-only or growable), and a crash-injection
 * wrapper for tests. Check mode opens files O_RDONLY and never writes.
 */
#define _GNU_SOURCE /* F_OFD_GETLK, F_OFD_SETLK */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../layout/bytes.h"
#include "qcheck.h"

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

static int file_write(void *opaque, uint64_t off, const void *buf, size_t len)
{
    file_backend *f = opaque;
    const uint8_t *p = buf;
    while (len) {
        if (off > (uint64_t)INT64_MAX)
            return -EFBIG;
        ssize_t n = pwrite(f->fd, p, len, (off_t)off);
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

/* QEMU's image locking (file-posix): byte 100 + n is locked while a
 * process holds permission n (consistent read, write, write unchanged,
 * resize, graph change), byte 200 + n while it refuses to share it. */
#define QEMU_LOCK_PERM_BASE 100
#define QEMU_LOCK_SHARED_BASE 200
#define QEMU_LOCK_PERMS 5

static int ofd_lock(int fd, short type, off_t start, off_t len, bool test)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, test ? F_OFD_GETLK : F_OFD_SETLK, &fl) < 0)
        return -errno;
    return test && fl.l_type != F_UNLCK ? -EBUSY : 0;
}

/* Refuse when anyone holds or refuses any permission (a VM, qemu-img,
 * qemu-io, a guest using it as a backing file), then lock as an exclusive
 * writer: QEMU will not open the image until we close it. */
static int take_repair_locks(int fd)
{
    int ret = ofd_lock(fd, F_WRLCK, QEMU_LOCK_PERM_BASE,
                       QEMU_LOCK_SHARED_BASE + QEMU_LOCK_PERMS - QEMU_LOCK_PERM_BASE, true);
    if (ret < 0)
        return ret;
    static const int held[] = {0, 1, 3}; /* consistent read, write, resize */
    for (size_t i = 0; i < sizeof(held) / sizeof(held[0]) && ret == 0; i++)
        ret = ofd_lock(fd, F_RDLCK, QEMU_LOCK_PERM_BASE + held[i], 1, false);
    if (ret == 0)
        ret = ofd_lock(fd, F_RDLCK, QEMU_LOCK_SHARED_BASE, QEMU_LOCK_PERMS, false);
    return ret == -EAGAIN || ret == -EACCES ? -EBUSY : ret;
}

static int open_file(qc_io *io, const char *path, bool writable)
{
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
        err = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    else if ((size = lseek(fd, 0, SEEK_END)) < 0)
        err = -errno;
    else if (writable)
        err = take_repair_locks(fd);
    file_backend *f = err ? NULL : malloc(sizeof(*f));
    if (!f) {
        close(fd);
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
    return open_file(io, path, false);
}

int qc_io_open_file_rw(qc_io *io, const char *path)
{
    return open_file(io, path, true);
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
    if (size > *m->len) {
        uint8_t *p = realloc(*m->buf, (size_t)size);
        if (!p)
            return -ENOMEM;
        memset(p + *m->len, 0, (size_t)size - *m->len);
        *m->buf = p;
    }
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
