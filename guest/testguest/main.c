/* The ring-3 entry points: bsp_main on the bootstrap CPU, ap_main on each application processor (boot.S gets
 * here with iretq). All setup that ring 3 can do happens here, at native speed. */
#include "config.h"
#include "io.h"
#include "iobench.h"
#include "lapic.h"
#include "memmap.h"
#include "microbench.h"
#include "percpu.h"
#include "print.h"
#include "progress.h"
#include "smp.h"
#include "start_info.h"
#include "status.h"
#include "sys.h"
#include "tsc.h"
#include "uart.h"
#include "vdev.h"
#include "workload.h"

#define CMDLINE_MAX 4096

struct cpu cpus[MAX_CPUS];
u32 cpu_count;

static struct config config;
static char cmdline[CMDLINE_MAX];
static u64 tsc_khz;
static u64 lapic_timer_counts_hz;
static u32 workload_go;

NORETURN void bsp_main(u32 index);
NORETURN void ap_main(u32 index);

static NORETURN void fail(struct line *l)
{
	line_print(l);
	sys_reset();
}

static void copy_cmdline(const struct hvm_start_info *info)
{
	if (!info->cmdline_paddr || info->cmdline_paddr >= (1UL << 32))
		return;
	const char *src = (const char *)info->cmdline_paddr;
	for (usize i = 0; i < CMDLINE_MAX - 1 && src[i]; i++)
		cmdline[i] = src[i];
}

static void bsp_progress_byte(void) { progress_step(&cpus[0]); }

static u32 start_cpus(u32 *apic_ids, u32 n)
{
	cpus[0] = (struct cpu){.index = 0, .apic_id = apic_ids[0], .online = 1};
	if (n > 1)
		smp_install_trampoline();
	for (u32 i = 1; i < n; i++) {
		if (!smp_start_ap(i, apic_ids[i], tsc_khz)) {
			struct line l;
			line_start(&l, "hsg: error cpu ");
			line_u64(&l, i);
			line_kv(&l, "apic", apic_ids[i]);
			line_str(&l, " did not start");
			fail(&l);
		}
	}
	return n;
}

static void plan_workload(void)
{
	u64 available;
	if (workload_plan(config.ws_bytes, cpu_count, &available))
		return;
	struct line l;
	line_start(&l, "hsg: error");
	line_kv(&l, "ws", config.ws_bytes);
	if (config.ws_bytes < (u64)cpu_count * 4096)
		line_str(&l, " is less than one page per CPU:");
	else
		line_str(&l, " does not fit:");
	line_kv(&l, "usable", available);
	line_kv(&l, "cpus", cpu_count);
	fail(&l);
}

static NORETURN void bsp_loop(void)
{
	u64 period = (u64)config.status_ms * tsc_khz;
	u64 next_status = rdtsc() + period;
	u64 seq = 0;
	for (;;) {
		u64 now = workload_step(&cpus[0]);
		for (u32 done = vdev_poll(now); done; done--)
			progress_step(&cpus[0]); /* each completed I/O is a step: a device stall shows as a gap */
		if (!period || now < next_status)
			continue;
		vdev_status_tick();
		status_print(++seq, tsc_khz);
		if (config.exit_after && seq >= config.exit_after) {
			print_line("hsg: exit");
			sys_reset();
		}
		next_status += period;
		now = rdtsc();
		if (next_status <= now) /* printing took longer than the period: do not fire back to back */
			next_status = now + period;
	}
}

NORETURN void bsp_main(u32 index)
{
	(void)index;
	const struct hvm_start_info *info = (const struct hvm_start_info *)(u64)pvh_start_info_paddr;
	bool have_info = info && info->magic == HVM_START_MAGIC;
	if (have_info)
		copy_cmdline(info);
	config_parse(&config, cmdline);
	uart_init(config.uart_mmio);
	config_print_warnings();

	struct line l;
	if (!have_info) {
		line_start(&l, "hsg: error no hvm_start_info at ");
		line_hex(&l, pvh_start_info_paddr);
		fail(&l);
	}
	if (!memmap_load(info)) {
		line_start(&l, "hsg: error no memory map in hvm_start_info");
		line_kv(&l, "version", info->version);
		fail(&l);
	}

	enum tsc_source tsc_source;
	tsc_khz = tsc_detect_khz(config.tsc_khz, &tsc_source);
	if (!tsc_khz) {
		line_start(&l, "hsg: error cannot determine the TSC frequency (no PIT?): pass tsc_khz=N");
		fail(&l);
	}

	lapic_enable();
	u32 apic_ids[MAX_CPUS];
	const char *cpu_source;
	u32 n = smp_discover(config.cpus, info->rsdp_paddr, lapic_id(), apic_ids, &cpu_source);
	if (config.timer_hz) {
		lapic_timer_counts_hz = lapic_timer_hz(tsc_khz);
		if (!lapic_timer_counts_hz)
			print_line("hsg: warning LAPIC timer does not count: no ticks");
	}
	cpu_count = start_cpus(apic_ids, n);
	plan_workload();

	struct boot_report report = {
		.cpus = cpu_count,
		.ws_bytes = config.ws_bytes,
		.tsc_khz = tsc_khz,
		.tsc_source = tsc_source_name(tsc_source),
		.cpu_source = cpu_source,
		.uart_mmio = uart_is_mmio(),
		.timer_hz = config.timer_hz,
	};
	status_print_boot(&report);
	if (config.iobench) /* the I/O benchmark replaces the workload and the status lines; it ends in a reset */
		iobench_run(cmdline, &config, tsc_khz);
	vdev_setup(cmdline, &config, tsc_khz);
	if (config.microbench) {
		microbench_run(tsc_khz, config.uart_mmio);
		vdev_microbench(tsc_khz);
	}
	print_line("hsg: ready");

	uart_set_byte_hook(bsp_progress_byte);
	progress_begin(&cpus[0]);
	__atomic_store_n(&workload_go, 1, __ATOMIC_RELEASE);
	lapic_timer_start(lapic_timer_counts_hz, config.timer_hz);
	bsp_loop();
}

NORETURN void ap_main(u32 index)
{
	struct cpu *c = &cpus[index];
	lapic_enable();
	__atomic_store_n(&c->online, 1, __ATOMIC_RELEASE);
	while (!__atomic_load_n(&workload_go, __ATOMIC_ACQUIRE))
		cpu_relax();
	progress_begin(c);
	lapic_timer_start(lapic_timer_counts_hz, config.timer_hz);
	for (;;)
		workload_step(c);
}
