/*
 * --map and --report (visual.c): the host map of a check as an SVG
 * picture, and an HTML report of one image or of many.
 *
 * Both are self-contained: no script in the SVG, and in the page only its
 * own inline script and style, nothing fetched from anywhere.
 *
 * A report page is assembled from parts, so that batch mode can make each
 * image's part in a child process and the parent the page:
 *
 *   each image (a child):
 *     vis_section *s = vis_section_new(name, index);
 *     check with opts.map_cells = VIS_MAP_CELLS, calling
 *     vis_section_add_finding(s, f) from the finding callback;
 *     vis_section_set_result(s, r) while the result lives;
 *     vis_section_write(s, file, verdict, exit_code, seconds) into a file
 *     the parent gave it; vis_section_free(s).
 *   the page (the parent):
 *     vis_page_begin(out, n);
 *     vis_page_summary_row(out, i, ...) for each image, in order;
 *     vis_page_sections_begin(out);
 *     the bytes of each section file, in the same order;
 *     vis_page_end(out).
 *
 * `index` numbers the images from 0 in page order: it makes the anchors
 * that link a summary row to its section. The writers return 0, or a
 * negative errno when the stream reports an error (the caller names the
 * file). Nothing here prints on its own.
 */
#ifndef QCHECK_VISUAL_H
#define QCHECK_VISUAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "qcheck.h"

/* The map cells the command asks the library for: 128 columns of 64
 * rows at most. */
#define VIS_MAP_CELLS 8192

typedef struct vis_section vis_section;

/* A section for the image `filename` (any bytes: escaped when written),
 * the index-th of its page. NULL when out of memory. */
vis_section *vis_section_new(const char *filename, size_t index);
/* Keep a finding for the section's table (a copy: `f` may go away). One
 * that cannot be kept (no memory) is counted and the section says so. */
void vis_section_add_finding(vis_section *s, const qc_finding *f);
/* Take from a check's result what the section shows: the counters, the
 * header's geometry, the host map (a copy). Returns 0 or -ENOMEM (the
 * section then says the map is missing). */
int vis_section_set_result(vis_section *s, const qc_result *r);
/* The section's HTML (summary, map, findings table) for the page. */
int vis_section_write(const vis_section *s, FILE *out, const char *word, int exit_code,
                      double seconds);
/* The section's map as a standalone SVG document (--map). */
int vis_section_write_svg(const vis_section *s, FILE *out);
void vis_section_free(vis_section *s);

/* The map of a result as a standalone SVG document, titled with
 * `filename`, without a section. */
int vis_map_write_svg(FILE *out, const qc_result *r, const char *filename);

/* The page around the sections. A summary row links to the index-th
 * section if the image `has_section` (not: it never reached its check).
 * Its counts are shown only when `counted` (the check reached its
 * figures); otherwise "-", not a 0 that would read "checked and fine" (a
 * missing file, an image in use, a timeout, a file that is not qcow2). */
int vis_page_begin(FILE *out, size_t nb_images);
void vis_page_summary_row(FILE *out, size_t index, const char *name, const char *word,
                          bool has_section, bool counted, uint64_t leaks,
                          uint64_t corruptions, uint64_t check_errors, double seconds,
                          int exit_code);
void vis_page_sections_begin(FILE *out);
int vis_page_end(FILE *out);

#endif
