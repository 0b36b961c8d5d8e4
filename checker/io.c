/*
 * I/O backends: a read-only file and a caller-owned memory buffer. Check
 * mode never writes, so neither backend offers a write operation.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

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

static void file_close(void *opaque)
{
    file_backend *f = opaque;
    close(f->fd);
    free(f);
}

int qc_io_open_file(qc_io *io, const char *path)
{
    memset(io, 0, sizeof(*io));
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    struct stat st;
    if (fstat(fd, &st) < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    if (!S_ISREG(st.st_mode) && !S_ISBLK(st.st_mode)) {
        close(fd);
        return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
    }
    off_t size = lseek(fd, 0, SEEK_END);
    if (size < 0) {
        int err = -errno;
        close(fd);
        return err;
    }
    file_backend *f = malloc(sizeof(*f));
    if (!f) {
        close(fd);
        return -ENOMEM;
    }
    f->fd = fd;
    io->read = file_read;
    io->close = file_close;
    io->opaque = f;
    io->size = (uint64_t)size;
    return 0;
}

typedef struct mem_backend {
    const uint8_t *buf;
    size_t len;
} mem_backend;

static int mem_read(void *opaque, uint64_t off, void *buf, size_t len)
{
    const mem_backend *m = opaque;
    if (off > m->len || len > m->len - off)
        return -EIO;
    memcpy(buf, m->buf + off, len);
    return 0;
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

void qc_io_close(qc_io *io)
{
    if (io->close)
        io->close(io->opaque);
    memset(io, 0, sizeof(*io));
}
