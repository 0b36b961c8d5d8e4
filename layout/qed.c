/* QED header decoding (qed.h). */
#include "qed.h"

#include <string.h>

static uint32_t le32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static uint64_t le64(const uint8_t *p)
{
    return qc_qed_entry(p, 0);
}

void qc_qed_header_decode(const uint8_t *buf, size_t len, qc_qed_header *h)
{
    uint8_t raw[QC_QED_HEADER_LENGTH] = {0};
    memcpy(raw, buf, len < sizeof(raw) ? len : sizeof(raw));
    *h = (qc_qed_header){
        .magic = le32(raw),
        .cluster_size = le32(raw + 4),
        .table_size = le32(raw + 8),
        .header_size = le32(raw + 12),
        .features = le64(raw + 16),
        .compat_features = le64(raw + 24),
        .autoclear_features = le64(raw + 32),
        .l1_table_offset = le64(raw + 40),
        .image_size = le64(raw + 48),
        .backing_filename_offset = le32(raw + 56),
        .backing_filename_size = le32(raw + 60),
    };
}
