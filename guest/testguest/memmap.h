/* Guest RAM as described by the PVH memory map, and the part of it the working set may use. */
#ifndef HSG_MEMMAP_H
#define HSG_MEMMAP_H

#include "start_info.h"
#include "types.h"

#define MAX_RAM_RANGES 16

struct ram_range {
	u64 base; /* page aligned */
	u64 pages;
};

/* Copies the map out of hvm_start_info (the working set may later overwrite it). False if there is none. */
bool memmap_load(const struct hvm_start_info *info);

/* RAM pages between `lo` and `hi` (the identity map ends at 4 GiB), ascending; returns the count of ranges. */
u32 memmap_usable(u64 lo, u64 hi, struct ram_range *out, u32 max);

#endif
