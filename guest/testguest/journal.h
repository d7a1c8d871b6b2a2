/* The on-disk format of the virtio-blk journal (docs/test-guest.md, "The disk journal"; the host-side checker is
 * guest/testguest/tools/check_disk.py). Block i of N lives at byte offset i * 4096; write number seq (1, 2, ...)
 * goes to block (seq - 1) % N. Little-endian:
 *
 *   0   8  magic "HSGJRNL1"
 *   8   8  block index
 *   16  8  seq
 *   24  4  CRC-32 (IEEE, as zlib.crc32) of the whole 4096-byte block with these 4 bytes zero
 *   28  4  zero
 *   32  4064  508 u64 words of xorshift64 output seeded from (index, seq)
 */
#ifndef HSG_JOURNAL_H
#define HSG_JOURNAL_H

#include "types.h"

#define JOURNAL_BLOCK_SIZE 4096
#define JOURNAL_MAGIC 0x314C4E524A475348UL /* "HSGJRNL1" in memory order */

enum journal_check {
	JOURNAL_OK,
	JOURNAL_BAD_MAGIC,
	JOURNAL_BAD_INDEX,
	JOURNAL_BAD_SEQ,
	JOURNAL_BAD_CRC,
	JOURNAL_BAD_DATA,
};

void journal_init(void); /* builds the CRC table */

/* Fills `block` with write `seq` of block `index`. */
void journal_fill(u8 *block, u64 index, u64 seq);

/* Checks that `block` holds write `seq` of block `index`, intact. *got_index and *got_seq are what the block
 * claims to be. */
enum journal_check journal_verify(const u8 *block, u64 index, u64 seq, u64 *got_index, u64 *got_seq);

const char *journal_check_name(enum journal_check check);

#endif
