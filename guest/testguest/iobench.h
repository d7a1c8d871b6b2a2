/* The I/O benchmark mode (`iobench=<kind>`, docs/test-guest.md): instead of the memory workload and the status
 * lines, the bootstrap CPU drives one virtio device as fast as it completes requests, from ring 3 with polling and
 * event-index notifications, for `iobench_secs` seconds; then it prints one `hsg: iobench ...` line (TSC-timed)
 * and resets the machine. */
#ifndef HSG_IOBENCH_H
#define HSG_IOBENCH_H

#include "config.h"
#include "types.h"

enum iobench_kind {
	IOBENCH_OFF,
	IOBENCH_BLK_SEQ_READ,
	IOBENCH_BLK_SEQ_WRITE,
	IOBENCH_BLK_RAND_READ,
	IOBENCH_BLK_RAND_WRITE,
	IOBENCH_NET_TX,
	IOBENCH_NET_RX,
	IOBENCH_KINDS
};

#define IOBENCH_DEFAULT_SECS 5
#define IOBENCH_DEFAULT_DEPTH 16
#define IOBENCH_SEQ_BS (64 * 1024) /* sequential kinds: 64 KiB requests unless iobench_bs= says otherwise */
#define IOBENCH_RAND_BS 4096
#define IOBENCH_DEFAULT_FRAME 1514 /* Ethernet header + 1500-byte payload, no FCS */
#define IOBENCH_MIN_FRAME 60
#define IOBENCH_MAX_FRAME 1514

/* The kind named by a cmdline value ("blk-seq-read", ...); false if the name is unknown. */
bool iobench_kind_parse(const char *value, usize len, u32 *kind);
const char *iobench_kind_name(u32 kind);

/* Runs the benchmark the config selects on the first virtio device of its type, prints the result line, then
 * `hsg: exit`, and resets the machine. */
NORETURN void iobench_run(const char *cmdline, const struct config *config, u64 tsc_khz);

#endif
