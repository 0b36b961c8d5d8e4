/*
 * Lookups on the check's picture of the image (check_view.h) that need
 * more than one line.
 */
#include <stdio.h>

#include "ctx.h"

const qc_l2_table *qc_l2_table_at(const qc_check_view *v, uint64_t off)
{
    uint64_t table = off & ~(v->geo.cluster_size - 1);
    /* Tables are in offset order (their offset is their first reference's). */
    size_t lo = 0, hi = v->nb_l2_tables;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (qc_l2_table_offset(v, &v->l2_tables[mid]) < table)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo < v->nb_l2_tables && qc_l2_table_offset(v, &v->l2_tables[lo]) == table
               ? &v->l2_tables[lo]
               : NULL;
}

void qc_describe_snapshot(const qc_check_view *v, uint32_t index, char *buf, size_t len)
{
    if (index >= v->nb_snapshots) {
        snprintf(buf, len, "snapshot #%u", index);
        return;
    }
    const qc_snapshot_entry *e = &v->snapshots[index].entry;
    char id[48], name[48]; /* keeps the description within the callers' 160 bytes */
    qc_printable(id, sizeof(id), e->id, e->id_str_size);
    qc_printable(name, sizeof(name), e->name, e->name_size);
    snprintf(buf, len, "snapshot %u (id \"%s\", name \"%s\")", index, id, name);
}
