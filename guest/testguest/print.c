#include "print.h"

#include "uart.h"

static void put(struct line *l, char c)
{
	if (l->len < sizeof(l->buf) - 2) /* keep room for "\r\n" */
		l->buf[l->len++] = c;
}

void line_start(struct line *l, const char *text)
{
	l->len = 0;
	line_str(l, text);
}

void line_str(struct line *l, const char *text)
{
	while (*text)
		put(l, *text++);
}

void line_u64(struct line *l, u64 value)
{
	char digits[20];
	int n = 0;
	do {
		digits[n++] = (char)('0' + value % 10);
		value /= 10;
	} while (value);
	while (n)
		put(l, digits[--n]);
}

void line_hex(struct line *l, u64 value)
{
	line_str(l, "0x");
	bool started = false;
	for (int shift = 60; shift >= 0; shift -= 4) {
		u32 digit = (value >> shift) & 0xF;
		if (digit || started || shift == 0) {
			put(l, "0123456789abcdef"[digit]);
			started = true;
		}
	}
}

void line_kv(struct line *l, const char *key, u64 value)
{
	put(l, ' ');
	line_str(l, key);
	put(l, '=');
	line_u64(l, value);
}

void line_mac(struct line *l, const u8 *mac)
{
	line_str(l, " mac=");
	for (u32 i = 0; i < 6; i++) {
		if (i)
			put(l, ':');
		put(l, "0123456789abcdef"[mac[i] >> 4]);
		put(l, "0123456789abcdef"[mac[i] & 0xF]);
	}
}

void line_cat(struct line *l, const struct line *other)
{
	for (usize i = 0; i < other->len; i++)
		put(l, other->buf[i]);
}

void line_print(struct line *l)
{
	l->buf[l->len++] = '\r';
	l->buf[l->len++] = '\n';
	uart_write(l->buf, l->len);
	l->len = 0;
}

void print_line(const char *text)
{
	struct line l;
	line_start(&l, text);
	line_print(&l);
}
