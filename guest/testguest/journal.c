#include "journal.h"

#define HEADER_WORDS 4
#define WORDS (JOURNAL_BLOCK_SIZE / 8)
#define CRC_OFFSET 24

static u32 crc_table[256];

void journal_init(void)
{
	for (u32 i = 0; i < 256; i++) {
		u32 c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? 0xEDB88320U ^ (c >> 1) : c >> 1;
		crc_table[i] = c;
	}
}

static u32 crc32(const u8 *p, usize n)
{
	u32 c = 0xFFFFFFFFU;
	for (usize i = 0; i < n; i++) {
		u8 byte = i - CRC_OFFSET < 4 ? 0 : p[i]; /* the CRC field counts as zero */
		c = crc_table[(c ^ byte) & 0xFF] ^ (c >> 8);
	}
	return c ^ 0xFFFFFFFFU;
}

static u64 mix64(u64 x)
{
	x ^= x >> 33;
	x *= 0xFF51AFD7ED558CCDUL;
	x ^= x >> 33;
	x *= 0xC4CEB9FE1A85EC53UL;
	x ^= x >> 33;
	return x;
}

/* The data stream's seed: never 0 (xorshift would stay 0). */
static u64 data_seed(u64 index, u64 seq) { return mix64(index * 0x9E3779B97F4A7C15UL ^ mix64(seq)) | 1; }

static u64 xorshift64(u64 x)
{
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return x;
}

void journal_fill(u8 *block, u64 index, u64 seq)
{
	u64 *words = (u64 *)block;
	words[0] = JOURNAL_MAGIC;
	words[1] = index;
	words[2] = seq;
	words[3] = 0;
	u64 x = data_seed(index, seq);
	for (u32 w = HEADER_WORDS; w < WORDS; w++) {
		x = xorshift64(x);
		words[w] = x;
	}
	*(u32 *)(block + CRC_OFFSET) = crc32(block, JOURNAL_BLOCK_SIZE);
}

enum journal_check journal_verify(const u8 *block, u64 index, u64 seq, u64 *got_index, u64 *got_seq)
{
	const u64 *words = (const u64 *)block;
	*got_index = words[1];
	*got_seq = words[2];
	if (words[0] != JOURNAL_MAGIC)
		return JOURNAL_BAD_MAGIC;
	if (*(const u32 *)(block + CRC_OFFSET) != crc32(block, JOURNAL_BLOCK_SIZE))
		return JOURNAL_BAD_CRC;
	if (words[1] != index)
		return JOURNAL_BAD_INDEX;
	if (words[2] != seq)
		return JOURNAL_BAD_SEQ;
	u64 x = data_seed(index, seq);
	for (u32 w = HEADER_WORDS; w < WORDS; w++) {
		x = xorshift64(x);
		if (words[w] != x)
			return JOURNAL_BAD_DATA;
	}
	return JOURNAL_OK;
}

const char *journal_check_name(enum journal_check check)
{
	switch (check) {
	case JOURNAL_OK: return "ok";
	case JOURNAL_BAD_MAGIC: return "magic";
	case JOURNAL_BAD_INDEX: return "index";
	case JOURNAL_BAD_SEQ: return "seq";
	case JOURNAL_BAD_CRC: return "crc";
	default: return "data";
	}
}
