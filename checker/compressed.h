/*
 * Compressed clusters (compressed.c): one cluster's stream decompressed as
 * QEMU decompresses it, zlib (raw deflate, 4 KiB window) or zstd. Used by
 * the guest-content digest and by the deep check.
 */
#ifndef QC_COMPRESSED_H
#define QC_COMPRESSED_H

#include <stddef.h>
#include <stdint.h>

typedef struct qc_decompressor qc_decompressor;

/* One decompressor (its zstd context made on first use); NULL when out of
 * memory. */
qc_decompressor *qc_decompressor_new(void);
void qc_decompressor_free(qc_decompressor *d);
/* Decompress `in` (compression_type 0 zlib, 1 zstd) into exactly out_len
 * bytes: 0, or -EIO with the decoder's reason in *reason (a static string)
 * when the stream fails or yields less; -ENOMEM. Never writes more than
 * out_len bytes, whatever the stream says. */
int qc_decompress_cluster(qc_decompressor *d, unsigned compression_type, const uint8_t *in,
                          size_t in_len, uint8_t *out, size_t out_len, const char **reason);

#endif
