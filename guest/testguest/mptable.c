/* Intel MultiProcessor Specification 1.4: the floating pointer "_MP_" and the "PCMP" configuration table. */
#include "cpulist.h"

struct mp_floating_pointer {
	char signature[4]; /* "_MP_" */
	u32 config_paddr;
	u8 length; /* in 16-byte units */
	u8 revision;
	u8 checksum;
	u8 features[5];
} __attribute__((packed));

struct mp_config_header {
	char signature[4]; /* "PCMP" */
	u16 length;
	u8 revision;
	u8 checksum;
	char oem[8];
	char product[12];
	u32 oem_table;
	u16 oem_table_size;
	u16 entry_count;
	u32 lapic_paddr;
	u16 ext_length;
	u8 ext_checksum;
	u8 reserved;
} __attribute__((packed));

#define MP_PROCESSOR 0
#define MP_PROCESSOR_SIZE 20
#define MP_OTHER_SIZE 8
#define CPU_ENABLED 0x01
#define CPU_BOOTSTRAP 0x02

bool checksum_ok(const void *p, usize len)
{
	u8 sum = 0;
	for (usize i = 0; i < len; i++)
		sum = (u8)(sum + ((const u8 *)p)[i]);
	return sum == 0;
}

static const struct mp_floating_pointer *find_floating_pointer(u64 start, u64 end)
{
	for (u64 addr = start; addr + sizeof(struct mp_floating_pointer) <= end; addr += 16) {
		const struct mp_floating_pointer *fp = (const void *)addr;
		if (memcmp(fp->signature, "_MP_", 4) == 0 && fp->length == 1 && checksum_ok(fp, 16))
			return fp;
	}
	return NULL;
}

u32 mptable_cpus(u32 *apic_ids, u32 max)
{
	const struct mp_floating_pointer *fp = find_floating_pointer(0x9FC00, 0xA0000);
	if (!fp)
		fp = find_floating_pointer(0xF0000, 0x100000);
	if (!fp || !fp->config_paddr)
		return 0;
	const struct mp_config_header *h = (const void *)(u64)fp->config_paddr;
	if (memcmp(h->signature, "PCMP", 4) != 0 || h->length < sizeof(*h) || !checksum_ok(h, h->length))
		return 0;
	const u8 *entry = (const u8 *)(h + 1), *end = (const u8 *)h + h->length;
	u32 n = 0;
	for (u32 i = 0; i < h->entry_count && entry < end; i++) {
		if (entry[0] != MP_PROCESSOR) {
			entry += MP_OTHER_SIZE;
			continue;
		}
		if (entry + MP_PROCESSOR_SIZE > end)
			break; /* truncated table */
		u8 apic_id = entry[1], flags = entry[3];
		if ((flags & CPU_ENABLED) && n < max) {
			if (flags & CPU_BOOTSTRAP) { /* keep the bootstrap CPU first */
				for (u32 j = n; j > 0; j--)
					apic_ids[j] = apic_ids[j - 1];
				apic_ids[0] = apic_id;
			} else {
				apic_ids[n] = apic_id;
			}
			n++;
		}
		entry += MP_PROCESSOR_SIZE;
	}
	return n;
}
