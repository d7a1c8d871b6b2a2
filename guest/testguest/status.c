#include "status.h"

#include "io.h"
#include "percpu.h"
#include "print.h"
#include "progress.h"
#include "start_info.h"
#include "tsc.h"
#include "vdev.h"
#include "workload.h"

void status_print_boot(const struct boot_report *r)
{
	struct line l;
	line_start(&l, "hsg: boot");
	line_kv(&l, "cpus", r->cpus);
	line_kv(&l, "ws", r->ws_bytes);
	line_kv(&l, "tsc_khz", r->tsc_khz);
	line_str(&l, " tsc_source=");
	line_str(&l, r->tsc_source);
	line_str(&l, r->uart_mmio ? " uart=mmio" : " uart=port");
	line_kv(&l, "timer_hz", r->timer_hz);
	line_str(&l, " cpu_source=");
	line_str(&l, r->cpu_source);
	line_print(&l);
	for (u32 i = 0; i < r->cpus; i++) {
		line_start(&l, "hsg: cpu ");
		line_u64(&l, i);
		line_kv(&l, "apic", cpus[i].apic_id);
		line_str(&l, " online");
		line_print(&l);
	}
}

static void print_failure(const struct integrity_failure *f)
{
	struct line l;
	line_start(&l, "hsg: integrity FAIL");
	line_kv(&l, "cpu", f->cpu);
	line_str(&l, " addr=");
	line_hex(&l, f->addr);
	line_str(&l, " expected=");
	line_hex(&l, f->expected);
	line_str(&l, " got=");
	line_hex(&l, f->got);
	line_print(&l);
}

void status_print(u64 seq, u64 tsc_khz)
{
	struct integrity_failure failure;
	if (workload_take_failure(&failure))
		print_failure(&failure);
	u64 steps = 0, passes = ~0UL, ticks = 0, gap = 0, max_gap = 0;
	for (u32 i = 0; i < cpu_count; i++) {
		struct cpu *c = &cpus[i];
		steps += READ_ONCE(c->steps);
		u64 p = READ_ONCE(c->passes);
		passes = p < passes ? p : passes;
		ticks += cpu_ticks(i);
		u64 g = progress_take_gap(c);
		gap = g > gap ? g : gap;
		u64 m = READ_ONCE(c->gap_max);
		max_gap = m > max_gap ? m : max_gap;
	}
	u64 uptime = rdtsc() - boot_tsc;
	struct line l;
	line_start(&l, "hsg: status");
	line_kv(&l, "seq", seq);
	line_kv(&l, "cpus", cpu_count);
	line_kv(&l, "steps", steps);
	line_kv(&l, "passes", passes);
	line_kv(&l, "ticks", ticks);
	line_str(&l, workload_integrity_ok() ? " integrity=ok" : " integrity=FAIL");
	line_kv(&l, "gap_us", tsc_to_us(gap, tsc_khz));
	line_kv(&l, "maxgap_us", tsc_to_us(max_gap, tsc_khz));
	line_kv(&l, "uptime_us", tsc_to_us(uptime, tsc_khz));
	vdev_status_keys(&l);
	line_print(&l);
}
