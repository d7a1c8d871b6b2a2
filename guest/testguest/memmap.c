#include "memmap.h"

#define MAX_ENTRIES 128
#define PAGE 4096UL

static struct hvm_memmap_entry entries[MAX_ENTRIES];
static u32 entry_count;

bool memmap_load(const struct hvm_start_info *info)
{
	if (info->version < 1 || !info->memmap_paddr || !info->memmap_entries || info->memmap_paddr >= (1UL << 32))
		return false; /* absent, or beyond the identity map */
	const struct hvm_memmap_entry *src = (const struct hvm_memmap_entry *)info->memmap_paddr;
	entry_count = info->memmap_entries < MAX_ENTRIES ? info->memmap_entries : MAX_ENTRIES;
	memcpy(entries, src, entry_count * sizeof(entries[0]));
	return true;
}

/* Non-RAM entries may overlap RAM ones in sloppy maps; a page counts only if no non-RAM entry covers it. */
static u64 clip_to_non_ram(u64 start, u64 end, u64 *next)
{
	for (u32 i = 0; i < entry_count; i++) {
		const struct hvm_memmap_entry *e = &entries[i];
		if (e->type == E820_RAM)
			continue;
		u64 e_start = ALIGN_DOWN(e->addr, PAGE), e_end = ALIGN_UP(e->addr + e->size, PAGE);
		if (e_end <= start || e_start >= end)
			continue;
		if (e_start <= start) { /* the range starts inside a hole: skip past it */
			*next = e_end;
			return start;
		}
		end = e_start;
	}
	*next = end;
	return end;
}

u32 memmap_usable(u64 lo, u64 hi, struct ram_range *out, u32 max)
{
	u32 n = 0;
	/* Walk candidate addresses in ascending order over the RAM entries (the map need not be sorted). */
	u64 cursor = ALIGN_UP(lo, PAGE);
	while (cursor < hi && n < max) {
		u64 best_start = ~0UL, best_end = 0;
		for (u32 i = 0; i < entry_count; i++) {
			const struct hvm_memmap_entry *e = &entries[i];
			if (e->type != E820_RAM)
				continue;
			u64 start = ALIGN_UP(e->addr, PAGE), end = ALIGN_DOWN(e->addr + e->size, PAGE);
			if (start < cursor)
				start = cursor;
			if (end > hi)
				end = hi;
			if (start < end && start < best_start) {
				best_start = start;
				best_end = end;
			}
		}
		if (best_start == ~0UL)
			break;
		u64 next;
		u64 end = clip_to_non_ram(best_start, best_end, &next);
		if (end > best_start) {
			if (n && out[n - 1].base + out[n - 1].pages * PAGE == best_start)
				out[n - 1].pages += (end - best_start) / PAGE; /* merge adjacent entries */
			else
				out[n++] = (struct ram_range){best_start, (end - best_start) / PAGE};
		}
		cursor = next > best_start ? next : best_start + PAGE;
	}
	return n;
}
