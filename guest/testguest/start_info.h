/* struct hvm_start_info: what a PVH loader passes in EBX (Xen's public arch-x86/hvm/start_info.h). */
#ifndef HSG_START_INFO_H
#define HSG_START_INFO_H

#include "types.h"

#define HVM_START_MAGIC 0x336ec578

struct hvm_start_info {
	u32 magic;
	u32 version;
	u32 flags;
	u32 nr_modules;
	u64 modlist_paddr;
	u64 cmdline_paddr;
	u64 rsdp_paddr;
	/* version >= 1 */
	u64 memmap_paddr;
	u32 memmap_entries;
	u32 reserved;
};

struct hvm_memmap_entry {
	u64 addr;
	u64 size;
	u32 type; /* E820 types: 1 = RAM */
	u32 reserved;
};

#define E820_RAM 1

extern u32 pvh_start_info_paddr; /* boot.S */
extern u64 boot_tsc;             /* boot.S: TSC at the PVH entry */

#endif
