/*
 * The guest-content digest through layers (digest.c): a backing chain, top
 * first, each layer with its external data file if it has one.
 */
#ifndef QC_DIGEST_H
#define QC_DIGEST_H

#include "qcheck.h"

typedef struct qc_digest_layer {
    qc_io *io;   /* the layer's file */
    qc_io *data; /* its external data file, or NULL */
    bool raw;    /* a raw layer: its bytes are the guest's */
} qc_digest_layer;

/* qc_digest of what the guest of specs[0] reads, where what a layer leaves
 * unallocated comes from the one after it (zeros past its end, or after
 * the last). A qcow2 layer with a backing file must have a layer after it,
 * one with an external data file its `data`. Returns as qc_digest. */
int qc_digest_layers(const qc_digest_layer *specs, size_t n, qc_digest_alg alg, uint8_t *digest,
                     size_t *digest_len, char *why, size_t why_len);

#endif
