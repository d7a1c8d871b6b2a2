/* Building and printing one console line at a time (ring 3, bootstrap CPU only). */
#ifndef HSG_PRINT_H
#define HSG_PRINT_H

#include "types.h"

struct line {
	usize len;
	char buf[512];
};

void line_start(struct line *l, const char *text); /* resets the line to `text` */
void line_str(struct line *l, const char *text);
void line_u64(struct line *l, u64 value);
void line_hex(struct line *l, u64 value); /* 0x... */
void line_kv(struct line *l, const char *key, u64 value); /* " key=value" */
void line_mac(struct line *l, const u8 *mac); /* " mac=aa:bb:cc:dd:ee:ff" */
void line_cat(struct line *l, const struct line *other); /* appends what `other` holds so far */
void line_print(struct line *l); /* appends "\r\n" and writes it out */

/* One-shot helper: print `text` as a whole line. */
void print_line(const char *text);

#endif
