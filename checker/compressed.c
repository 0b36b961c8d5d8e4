/*
 * Compressed clusters: see compressed.h.
 */
#include <errno.h>
#include <stdlib.h>

#include <zlib.h>
#include <zstd.h>

#include "compressed.h"

struct qc_decompressor {
    ZSTD_DCtx *zstd;
};

qc_decompressor *qc_decompressor_new(void)
{
    return calloc(1, sizeof(qc_decompressor));
}

void qc_decompressor_free(qc_decompressor *d)
{
    if (!d)
        return;
    ZSTD_freeDCtx(d->zstd);
    free(d);
}

static int inflate_zlib(const uint8_t *in, size_t in_len, uint8_t *out, size_t out_len,
                        const char **reason)
{
    z_stream s = {0};
    /* Raw deflate with a 4 KiB window, as QEMU writes it. */
    if (inflateInit2(&s, -12) != Z_OK)
        return -ENOMEM;
    s.next_in = (Bytef *)in;
    s.avail_in = (uInt)in_len;
    s.next_out = out;
    s.avail_out = (uInt)out_len;
    int ret = inflate(&s, Z_FINISH);
    size_t produced = out_len - s.avail_out;
    inflateEnd(&s);
    /* QEMU takes a stream that fills the cluster, ended or not. */
    if (ret != Z_STREAM_END && ret != Z_BUF_ERROR && ret != Z_OK) {
        *reason = ret == Z_DATA_ERROR ? "zlib: invalid deflate data" : "zlib: stream error";
        return -EIO;
    }
    if (produced != out_len) {
        *reason = "zlib: the stream ends before the cluster is full";
        return -EIO;
    }
    return 0;
}

static int inflate_zstd(qc_decompressor *d, const uint8_t *in, size_t in_len, uint8_t *out,
                        size_t out_len, const char **reason)
{
    if (!d->zstd && !(d->zstd = ZSTD_createDCtx()))
        return -ENOMEM;
    ZSTD_inBuffer src = {in, in_len, 0};
    ZSTD_outBuffer dst = {out, out_len, 0};
    ZSTD_DCtx_reset(d->zstd, ZSTD_reset_session_only);
    /* Frames until the cluster is full, as QEMU decodes them. */
    while (dst.pos < dst.size) {
        size_t ret = ZSTD_decompressStream(d->zstd, &dst, &src);
        if (ZSTD_isError(ret)) {
            *reason = ZSTD_getErrorName(ret);
            return -EIO;
        }
        if (src.pos == src.size)
            break;
    }
    if (dst.pos != dst.size) {
        *reason = "zstd: the stream ends before the cluster is full";
        return -EIO;
    }
    return 0;
}

int qc_decompress_cluster(qc_decompressor *d, unsigned compression_type, const uint8_t *in,
                          size_t in_len, uint8_t *out, size_t out_len, const char **reason)
{
    *reason = NULL;
    return compression_type == 1 ? inflate_zstd(d, in, in_len, out, out_len, reason)
                                  : inflate_zlib(in, in_len, out, out_len, reason);
}
