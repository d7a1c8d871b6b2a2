#include "cmdline.h"

static bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n'; }

bool cmdline_next(const char **pos, const char *key, const char **value, usize *len)
{
	usize key_len = strlen(key);
	const char *p = *pos;
	while (*p) {
		while (is_space(*p))
			p++;
		const char *word = p;
		while (*p && !is_space(*p))
			p++;
		if ((usize)(p - word) > key_len && memcmp(word, key, key_len) == 0 && word[key_len] == '=') {
			*value = word + key_len + 1;
			*len = (usize)(p - *value);
			*pos = p;
			return true;
		}
	}
	*pos = p;
	return false;
}

bool cmdline_find(const char *cmdline, const char *key, const char **value, usize *len)
{
	bool found = false;
	const char *pos = cmdline;
	while (cmdline_next(&pos, key, value, len))
		found = true; /* keep going: the last occurrence wins, as in Linux */
	return found;
}

bool parse_u64(const char *s, usize len, bool allow_suffix, u64 *out)
{
	u64 base = 10, value = 0, shift = 0;
	if (len > 2 && s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
		len -= 2;
	}
	if (allow_suffix && len > 1) {
		switch (s[len - 1]) {
		case 'k': case 'K': shift = 10; break;
		case 'm': case 'M': shift = 20; break;
		case 'g': case 'G': shift = 30; break;
		default: break;
		}
		if (shift)
			len--;
	}
	if (len == 0)
		return false;
	for (usize i = 0; i < len; i++) {
		char c = s[i];
		u64 digit;
		if (c >= '0' && c <= '9')
			digit = (u64)(c - '0');
		else if (base == 16 && c >= 'a' && c <= 'f')
			digit = (u64)(c - 'a' + 10);
		else if (base == 16 && c >= 'A' && c <= 'F')
			digit = (u64)(c - 'A' + 10);
		else
			return false;
		if (value > (~0UL - digit) / base)
			return false; /* overflow */
		value = value * base + digit;
	}
	if (shift && value > (~0UL >> shift))
		return false;
	*out = value << shift;
	return true;
}
