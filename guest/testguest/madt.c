/* ACPI: RSDP -> XSDT/RSDT -> MADT ("APIC"), for machines without an MP table (QEMU microvm). */
#include "cpulist.h"

struct rsdp {
	char signature[8]; /* "RSD PTR " */
	u8 checksum;
	char oem[6];
	u8 revision;
	u32 rsdt_paddr;
	u32 length; /* revision >= 2 */
	u64 xsdt_paddr;
	u8 ext_checksum;
	u8 reserved[3];
} __attribute__((packed));

struct sdt_header {
	char signature[4];
	u32 length;
	u8 revision;
	u8 checksum;
	char oem[6];
	char oem_table[8];
	u32 oem_revision;
	u32 creator;
	u32 creator_revision;
} __attribute__((packed));

#define MADT_ENTRIES_OFFSET (sizeof(struct sdt_header) + 8) /* after the LAPIC address and flags */
#define MADT_LAPIC 0
#define MADT_X2APIC 9
#define LAPIC_ENABLED 0x01
#define MAX_TABLE_LENGTH (1U << 20)

static const struct sdt_header *valid_table(u64 paddr, const char *signature)
{
	const struct sdt_header *h = (const void *)paddr;
	if (!paddr || paddr >= (1UL << 32) || memcmp(h->signature, signature, 4) != 0)
		return NULL;
	if (h->length < sizeof(*h) || h->length > MAX_TABLE_LENGTH || !checksum_ok(h, h->length))
		return NULL;
	return h;
}

static const struct sdt_header *find_madt(const struct rsdp *rsdp)
{
	bool use_xsdt = rsdp->revision >= 2 && rsdp->xsdt_paddr && rsdp->length >= sizeof(*rsdp) &&
			rsdp->length <= 4096 && checksum_ok(rsdp, rsdp->length);
	const struct sdt_header *root = use_xsdt ? valid_table(rsdp->xsdt_paddr, "XSDT")
						 : valid_table(rsdp->rsdt_paddr, "RSDT");
	if (!root)
		return NULL;
	usize width = use_xsdt ? 8 : 4;
	const u8 *p = (const u8 *)(root + 1), *end = (const u8 *)root + root->length;
	for (; p + width <= end; p += width) {
		u64 paddr = 0;
		memcpy(&paddr, p, width); /* XSDT entries are unaligned */
		const struct sdt_header *t = valid_table(paddr, "APIC");
		if (t)
			return t;
	}
	return NULL;
}

u32 madt_cpus(u64 rsdp_paddr, u32 *apic_ids, u32 max)
{
	if (!rsdp_paddr || rsdp_paddr >= (1UL << 32))
		return 0;
	const struct rsdp *rsdp = (const void *)rsdp_paddr;
	if (memcmp(rsdp->signature, "RSD PTR ", 8) != 0 || !checksum_ok(rsdp, 20))
		return 0;
	const struct sdt_header *madt = find_madt(rsdp);
	if (!madt)
		return 0;
	const u8 *p = (const u8 *)madt + MADT_ENTRIES_OFFSET, *end = (const u8 *)madt + madt->length;
	u32 n = 0;
	while (p + 2 <= end && p[1] >= 2 && p + p[1] <= end && n < max) {
		u32 flags;
		if (p[0] == MADT_LAPIC && p[1] >= 8) {
			memcpy(&flags, p + 4, 4);
			if (flags & LAPIC_ENABLED)
				apic_ids[n++] = p[3];
		} else if (p[0] == MADT_X2APIC && p[1] >= 16) {
			memcpy(&flags, p + 8, 4);
			if (flags & LAPIC_ENABLED)
				memcpy(&apic_ids[n++], p + 4, 4);
		}
		p += p[1];
	}
	return n; /* ACPI lists the bootstrap CPU first */
}
