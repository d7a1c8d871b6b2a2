#include "workload.h"

#include "memmap.h"
#include "progress.h"

#define PAGE 4096UL
#define WORDS_PER_PAGE (PAGE / 8)
#define WORD_STRIDE 0xD6E8FEB86659FD93UL
#define IDENTITY_MAP_END (1UL << 32)

extern u8 _end[]; /* linker script: end of the image, bss included */

static struct ram_range ranges[MAX_RAM_RANGES];
static u32 range_count;

static volatile u32 integrity_failed;
static u32 failure_claimed;
static volatile u32 failure_ready;
static bool failure_taken;
static struct integrity_failure failure;

bool workload_plan(u64 ws_bytes, u32 n, u64 *available)
{
	range_count = memmap_usable((u64)_end, IDENTITY_MAP_END, ranges, MAX_RAM_RANGES);
	u64 usable = 0;
	for (u32 i = 0; i < range_count; i++)
		usable += ranges[i].pages;
	*available = usable * PAGE;
	u64 pages = ALIGN_UP(ws_bytes, PAGE) / PAGE;
	if (pages < n || pages > usable)
		return false;
	for (u32 i = 0; i < n; i++) {
		cpus[i].first_page = pages * i / n;
		cpus[i].page_count = pages * (i + 1) / n - cpus[i].first_page;
	}
	return true;
}

static u64 page_address(u64 page)
{
	for (u32 i = 0; i < range_count; i++) {
		if (page < ranges[i].pages)
			return ranges[i].base + page * PAGE;
		page -= ranges[i].pages;
	}
	return 0; /* unreachable: workload_plan checked the size */
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

/* Word w of page frame `pfn` in generation g holds seed(pfn, g) + w * WORD_STRIDE: a stale generation, a page
 * written at the wrong address or a word out of place all show. */
static u64 page_seed(u64 pfn, u64 generation) { return mix64(pfn * 0x9E3779B97F4A7C15UL ^ mix64(generation + 1)); }

static void record_failure(struct cpu *c, u64 addr, u64 expected, u64 got)
{
	integrity_failed = 1;
	if (__atomic_exchange_n(&failure_claimed, 1, __ATOMIC_ACQ_REL))
		return;
	failure = (struct integrity_failure){c->index, addr, expected, got};
	__atomic_store_n(&failure_ready, 1, __ATOMIC_RELEASE);
}

u64 workload_step(struct cpu *c)
{
	u64 addr = page_address(c->first_page + c->next_page);
	u64 pfn = addr / PAGE;
	volatile u64 *words = (volatile u64 *)addr;
	u64 next = page_seed(pfn, c->generation);
	if (c->generation == 0) {
		for (u64 w = 0; w < WORDS_PER_PAGE; w++, next += WORD_STRIDE)
			words[w] = next;
	} else {
		u64 expected = page_seed(pfn, c->generation - 1);
		bool ok = true;
		for (u64 w = 0; w < WORDS_PER_PAGE; w++, expected += WORD_STRIDE, next += WORD_STRIDE) {
			u64 got = words[w];
			if (got != expected && ok) {
				record_failure(c, addr + w * 8, expected, got);
				ok = false;
			}
			words[w] = next;
		}
	}
	WRITE_ONCE(c->steps, c->steps + 1);
	if (++c->next_page == c->page_count) {
		c->next_page = 0;
		c->generation++;
		WRITE_ONCE(c->passes, c->passes + 1);
	}
	return progress_step(c);
}

bool workload_integrity_ok(void) { return !integrity_failed; }

bool workload_take_failure(struct integrity_failure *out)
{
	if (failure_taken || !__atomic_load_n(&failure_ready, __ATOMIC_ACQUIRE))
		return false;
	failure_taken = true;
	*out = failure;
	return true;
}
