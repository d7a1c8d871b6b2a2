/* Kernel command line: space-separated key=value words. */
#ifndef HSG_CMDLINE_H
#define HSG_CMDLINE_H

#include "types.h"

/* Finds the last `key=` word; points *value at its value and sets *len (not NUL-terminated). */
bool cmdline_find(const char *cmdline, const char *key, const char **value, usize *len);

/* Iterates over every `key=` word in order: start with *pos = cmdline; each call finds the next one after *pos,
 * points *value at its value, sets *len and advances *pos past it. False when there is none left. */
bool cmdline_next(const char **pos, const char *key, const char **value, usize *len);

/* Parses a decimal or 0x-hex number with an optional K/M/G suffix (powers of 1024) when `allow_suffix`. */
bool parse_u64(const char *s, usize len, bool allow_suffix, u64 *out);

#endif
