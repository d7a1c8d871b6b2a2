#include "config.h"

#include "cmdline.h"
#include "iobench.h"
#include "print.h"
#include "uart.h"
#include "virtq.h"

#define MAX_WARNINGS 16

static const char *bad_keys[MAX_WARNINGS];
static u32 bad_key_count;

static void warn(const char *key)
{
	if (bad_key_count < MAX_WARNINGS)
		bad_keys[bad_key_count++] = key;
}

static void get_u64(const char *cmdline, const char *key, bool allow_suffix, u64 max, u64 *out)
{
	const char *value;
	usize len;
	u64 parsed;
	if (!cmdline_find(cmdline, key, &value, &len))
		return;
	if (parse_u64(value, len, allow_suffix, &parsed) && parsed <= max)
		*out = parsed;
	else
		warn(key);
}

static void get_u32(const char *cmdline, const char *key, u64 max, u32 *out)
{
	u64 value = *out;
	get_u64(cmdline, key, false, max, &value);
	*out = (u32)value;
}

static void get_uart(const char *cmdline, u64 *mmio)
{
	const char *value;
	usize len;
	if (!cmdline_find(cmdline, "uart", &value, &len))
		return;
	if (len == 4 && memcmp(value, "port", 4) == 0) {
		*mmio = 0;
	} else if (len == 4 && memcmp(value, "mmio", 4) == 0) {
		*mmio = UART_MMIO_DEFAULT;
	} else if (len > 5 && memcmp(value, "mmio:", 5) == 0) {
		u64 addr;
		if (parse_u64(value + 5, len - 5, false, &addr) && addr && addr < (1UL << 32))
			*mmio = addr;
		else
			warn("uart");
	} else {
		warn("uart");
	}
}

static void get_iobench(const char *cmdline, u32 *kind)
{
	const char *value;
	usize len;
	if (!cmdline_find(cmdline, "iobench", &value, &len))
		return;
	if (len == 3 && memcmp(value, "off", 3) == 0)
		*kind = IOBENCH_OFF;
	else if (!iobench_kind_parse(value, len, kind))
		warn("iobench");
}

void config_parse(struct config *c, const char *cmdline)
{
	c->ws_bytes = 16UL << 20;
	c->cpus = 0;
	c->timer_hz = 10;
	c->tsc_khz = 0;
	c->status_ms = 100;
	c->exit_after = 0;
	c->uart_mmio = 0;
	c->microbench = 0;
	c->blk = 1;
	c->blk_blocks = 0;
	c->blk_rate = 200;
	c->net = 1;
	c->rng = 1;
	get_u64(cmdline, "ws", true, 1UL << 40, &c->ws_bytes);
	get_u32(cmdline, "cpus", 1UL << 20, &c->cpus); /* larger than MAX_CPUS is clamped later, with a warning */
	get_u32(cmdline, "timer_hz", 100000, &c->timer_hz);
	get_u64(cmdline, "tsc_khz", false, 100000000, &c->tsc_khz);
	get_u32(cmdline, "status_ms", 3600000, &c->status_ms);
	get_u64(cmdline, "exit_after", false, ~0UL, &c->exit_after);
	get_uart(cmdline, &c->uart_mmio);
	get_u32(cmdline, "microbench", 1, &c->microbench);
	get_u32(cmdline, "blk", 1, &c->blk);
	get_u64(cmdline, "blk_blocks", false, 1UL << 40, &c->blk_blocks);
	get_u32(cmdline, "blk_rate", 1000000, &c->blk_rate);
	get_u32(cmdline, "net", 1, &c->net);
	get_u32(cmdline, "rng", 1, &c->rng);
	c->iobench = IOBENCH_OFF;
	c->iobench_secs = 0;
	c->iobench_depth = 0;
	c->iobench_bs = 0;
	c->iobench_frame = 0;
	get_iobench(cmdline, &c->iobench);
	get_u32(cmdline, "iobench_secs", 3600, &c->iobench_secs);
	get_u32(cmdline, "iobench_depth", VIRTQ_MAX_SIZE, &c->iobench_depth);
	get_u64(cmdline, "iobench_bs", true, 2UL << 20, &c->iobench_bs);
	get_u32(cmdline, "iobench_frame", IOBENCH_MAX_FRAME, &c->iobench_frame);
}

void config_print_warnings(void)
{
	struct line l;
	for (u32 i = 0; i < bad_key_count; i++) {
		line_start(&l, "hsg: warning bad value for ");
		line_str(&l, bad_keys[i]);
		line_str(&l, "=, using the default");
		line_print(&l);
	}
}
