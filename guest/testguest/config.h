/* The guest's settings, from the command line (see docs/test-guest.md for every key). */
#ifndef HSG_CONFIG_H
#define HSG_CONFIG_H

#include "types.h"

struct config {
	u64 ws_bytes;      /* ws=SIZE: working set, split across the CPUs */
	u32 cpus;          /* cpus=N: 0 = as discovered */
	u32 timer_hz;      /* timer_hz=N: LAPIC timer ticks per second per CPU, 0 = off */
	u64 tsc_khz;       /* tsc_khz=N: 0 = detect */
	u32 status_ms;     /* status_ms=N: 0 = no status lines */
	u64 exit_after;    /* exit_after=N: reset after N status lines, 0 = never */
	u64 uart_mmio;     /* uart=mmio[:ADDR] -> the address; uart=port -> 0 */
	u32 microbench;    /* microbench=1: print I/O cost measurements before "hsg: ready" */
	u32 blk;           /* blk=0 disables the virtio-blk driver */
	u64 blk_blocks;    /* blk_blocks=N: journal length in 4 KiB blocks, 0 = as many as the disk holds */
	u32 blk_rate;      /* blk_rate=N: journal writes per second, 0 = as fast as the device goes */
	u32 net;           /* net=0 disables the virtio-net driver */
	u32 rng;           /* rng=0 disables the virtio-rng driver */
	u32 iobench;       /* iobench=<kind>: the I/O benchmark mode (enum iobench_kind), 0 = off */
	u32 iobench_secs;  /* iobench_secs=N: run length in seconds, 0 = the default */
	u32 iobench_depth; /* iobench_depth=N: requests (frames) in flight, 0 = the default */
	u64 iobench_bs;    /* iobench_bs=SIZE: blk request size, 0 = 64 KiB sequential / 4 KiB random */
	u32 iobench_frame; /* iobench_frame=N: net frame size in bytes (Ethernet header on, no FCS), 0 = 1514 */
};

/* Fills `config` from the command line; prints a warning line for each value it cannot parse. */
void config_parse(struct config *config, const char *cmdline);

/* Warnings are collected before the UART is set up; this prints them. */
void config_print_warnings(void);

#endif
