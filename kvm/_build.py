"""cffi build script for kvm._kvm_cffi.

API mode: the C compiler reads the system's <linux/kvm.h>, so every struct layout ("...;" lets the compiler fill in
offsets and sizes) and every ioctl number ("#define X ...") comes from the header, never from hand-copied values.
Built by setup.py at install time (`pip install -e .`), or by `python -m kvm._build` in place.
"""

from __future__ import annotations

import pathlib

from cffi import FFI

# Structs C and Python both use, declared once for the cdef and the C source alike (cffi needs both).
SHARED_STRUCTS = r"""
struct hs_ioctl_step { unsigned long request; void *arg; int expect; };
/* A vCPU's state record in memory shared by the old VMM and its successor (kvm/lane.py). */
struct hs_lane_piece { void *buf; uint32_t size; };
struct hs_lane {
    uint8_t *slot; uint32_t capacity;
    uint32_t layout; uint32_t vcpu_id; uint64_t generation;
    int notify_fd; int batch_fd;
    int count; struct hs_lane_piece pieces[16];
    const struct hs_ioctl_step *steps; int steps_count;
    const struct hs_ioctl_step *armed; int armed_count;
    int deadline_piece;
    int fault;
    int status; int done; int rc; uint32_t found; uint32_t expected;
    long long began_ns; long long ran_ns;
};
struct hs_park {
    int gate_fd; int wake_fd; int done_fd; int batch_fd;
    const struct hs_ioctl_step *steps; int count;
    int done; int rc;
    long long spin_ns; long long ran_ns;
    struct hs_lane *lane;
};
"""

CDEF = r"""
/* ---- ioctl numbers and constants, all resolved by the compiler from <linux/kvm.h> ---- */
#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_GET_MSR_INDEX_LIST ...
#define KVM_GET_MSR_FEATURE_INDEX_LIST ...
#define KVM_CREATE_VCPU ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_SET_TSS_ADDR ...
#define KVM_SET_IDENTITY_MAP_ADDR ...
#define KVM_CREATE_IRQCHIP ...
#define KVM_CREATE_PIT2 ...
#define KVM_GET_IRQCHIP ...
#define KVM_SET_IRQCHIP ...
#define KVM_GET_PIT2 ...
#define KVM_SET_PIT2 ...
#define KVM_GET_CLOCK ...
#define KVM_SET_CLOCK ...
#define KVM_IRQ_LINE ...
#define KVM_IRQ_LINE_STATUS ...
#define KVM_IRQFD ...
#define KVM_IOEVENTFD ...
#define KVM_GET_DIRTY_LOG ...
#define KVM_ENABLE_CAP ...
#define KVM_REGISTER_COALESCED_MMIO ...
#define KVM_UNREGISTER_COALESCED_MMIO ...
#define KVM_RUN ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_GET_FPU ...
#define KVM_SET_FPU ...
#define KVM_GET_MSRS ...
#define KVM_SET_MSRS ...
#define KVM_SET_CPUID2 ...
#define KVM_GET_CPUID2 ...
#define KVM_GET_MP_STATE ...
#define KVM_SET_MP_STATE ...
#define KVM_GET_LAPIC ...
#define KVM_SET_LAPIC ...
#define KVM_GET_XSAVE ...
#define KVM_GET_XSAVE2 ...
#define KVM_SET_XSAVE ...
#define KVM_GET_XCRS ...
#define KVM_SET_XCRS ...
#define KVM_GET_DEBUGREGS ...
#define KVM_SET_DEBUGREGS ...
#define KVM_GET_VCPU_EVENTS ...
#define KVM_SET_VCPU_EVENTS ...
#define KVM_KVMCLOCK_CTRL ...
#define KVM_GET_TSC_KHZ ...
#define KVM_SET_TSC_KHZ ...
#define KVM_HAS_DEVICE_ATTR ...
#define KVM_GET_DEVICE_ATTR ...
#define KVM_SET_DEVICE_ATTR ...
#define KVM_TRANSLATE ...

#define KVM_API_VERSION ...
#define KVM_CAP_IRQCHIP ...
#define KVM_CAP_HLT ...
#define KVM_CAP_USER_MEMORY ...
#define KVM_CAP_SET_TSS_ADDR ...
#define KVM_CAP_EXT_CPUID ...
#define KVM_CAP_NR_VCPUS ...
#define KVM_CAP_MAX_VCPUS ...
#define KVM_CAP_MAX_VCPU_ID ...
#define KVM_CAP_NR_MEMSLOTS ...
#define KVM_CAP_MP_STATE ...
#define KVM_CAP_PIT2 ...
#define KVM_CAP_PIT_STATE2 ...
#define KVM_CAP_IRQFD ...
#define KVM_CAP_IOEVENTFD ...
#define KVM_CAP_ADJUST_CLOCK ...
#define KVM_CAP_VCPU_EVENTS ...
#define KVM_CAP_DEBUGREGS ...
#define KVM_CAP_XSAVE ...
#define KVM_CAP_XSAVE2 ...
#define KVM_CAP_XCRS ...
#define KVM_CAP_KVMCLOCK_CTRL ...
#define KVM_CAP_GET_TSC_KHZ ...
#define KVM_CAP_TSC_DEADLINE_TIMER ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_COALESCED_MMIO ...
#define KVM_CAP_DEVICE_CTRL ...
#define KVM_CAP_SET_IDENTITY_MAP_ADDR ...
#define KVM_CAP_IRQ_ROUTING ...
#define KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2 ...

#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_EXCEPTION ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HYPERCALL ...
#define KVM_EXIT_DEBUG ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_IRQ_WINDOW_OPEN ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_SET_TPR ...
#define KVM_EXIT_TPR_ACCESS ...
#define KVM_EXIT_NMI ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_SYSTEM_EVENT ...
#define KVM_EXIT_IOAPIC_EOI ...
#define KVM_EXIT_X86_RDMSR ...
#define KVM_EXIT_X86_WRMSR ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...
#define KVM_INTERNAL_ERROR_EMULATION ...
#define KVM_INTERNAL_ERROR_SIMUL_EX ...
#define KVM_INTERNAL_ERROR_DELIVERY_EV ...
#define KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON ...
#define KVM_INTERNAL_ERROR_EMULATION_FLAG_INSTRUCTION_BYTES ...
#define KVM_SYSTEM_EVENT_SHUTDOWN ...
#define KVM_SYSTEM_EVENT_RESET ...
#define KVM_SYSTEM_EVENT_CRASH ...

#define KVM_MP_STATE_RUNNABLE ...
#define KVM_MP_STATE_UNINITIALIZED ...
#define KVM_MP_STATE_INIT_RECEIVED ...
#define KVM_MP_STATE_HALTED ...
#define KVM_MP_STATE_SIPI_RECEIVED ...

#define KVM_IRQCHIP_PIC_MASTER ...
#define KVM_IRQCHIP_PIC_SLAVE ...
#define KVM_IRQCHIP_IOAPIC ...
#define KVM_PIT_SPEAKER_DUMMY ...
#define KVM_IRQFD_FLAG_DEASSIGN ...
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
#define KVM_IOEVENTFD_FLAG_PIO ...
#define KVM_IOEVENTFD_FLAG_DEASSIGN ...
#define KVM_MEM_LOG_DIRTY_PAGES ...
#define KVM_MEM_READONLY ...
#define KVM_CLOCK_TSC_STABLE ...
#define KVM_CLOCK_REALTIME ...
#define KVM_CLOCK_HOST_TSC ...
#define KVM_VCPUEVENT_VALID_NMI_PENDING ...
#define KVM_VCPUEVENT_VALID_SIPI_VECTOR ...
#define KVM_VCPUEVENT_VALID_SHADOW ...
#define KVM_VCPUEVENT_VALID_SMM ...
#define KVM_VCPUEVENT_VALID_PAYLOAD ...
#define KVM_VCPUEVENT_VALID_TRIPLE_FAULT ...
#define KVM_VCPU_TSC_CTRL ...
#define KVM_VCPU_TSC_OFFSET ...
#define KVM_COALESCED_MMIO_PAGE_OFFSET ...

/* ---- structs: named fields are the ones Python touches; "...;" lets the compiler place the rest ---- */
struct kvm_userspace_memory_region {
    uint32_t slot; uint32_t flags; uint64_t guest_phys_addr; uint64_t memory_size; uint64_t userspace_addr;
};

struct kvm_regs {
    uint64_t rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    uint64_t r8, r9, r10, r11, r12, r13, r14, r15;
    uint64_t rip, rflags;
};

struct kvm_segment {
    uint64_t base; uint32_t limit; uint16_t selector;
    uint8_t type; uint8_t present, dpl, db, s, l, g, avl; uint8_t unusable; uint8_t padding;
};

struct kvm_dtable { uint64_t base; uint16_t limit; ...; };

struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss;
    struct kvm_segment tr, ldt;
    struct kvm_dtable gdt, idt;
    uint64_t cr0, cr2, cr3, cr4, cr8;
    uint64_t efer;
    uint64_t apic_base;
    unsigned long long interrupt_bitmap[...];
};

struct kvm_cpuid_entry2 {
    uint32_t function; uint32_t index; uint32_t flags;
    uint32_t eax; uint32_t ebx; uint32_t ecx; uint32_t edx;
    ...;
};
struct kvm_cpuid2 { uint32_t nent; struct kvm_cpuid_entry2 entries[]; ...; };

struct kvm_msr_entry { uint32_t index; uint32_t reserved; uint64_t data; };
struct kvm_msrs { uint32_t nmsrs; struct kvm_msr_entry entries[]; ...; };
struct kvm_msr_list { uint32_t nmsrs; uint32_t indices[]; };

struct kvm_mp_state { uint32_t mp_state; };
struct kvm_lapic_state { char regs[...]; };
struct kvm_xsave { uint32_t region[...]; ...; };
struct kvm_xcrs { uint32_t nr_xcrs; uint32_t flags; ...; };
struct kvm_debugregs { unsigned long long db[4]; uint64_t dr6; uint64_t dr7; uint64_t flags; ...; };
struct kvm_vcpu_events { uint32_t sipi_vector; uint32_t flags; ...; };
struct kvm_irqchip { uint32_t chip_id; uint32_t pad; ...; };
struct kvm_pit_state2 { uint32_t flags; ...; };
struct kvm_pit_config { uint32_t flags; ...; };
struct kvm_clock_data { uint64_t clock; uint32_t flags; uint64_t realtime; uint64_t host_tsc; ...; };
struct kvm_irq_level { uint32_t irq; uint32_t level; };
struct kvm_irqfd { uint32_t fd; uint32_t gsi; uint32_t flags; uint32_t resamplefd; ...; };
struct kvm_ioeventfd { uint64_t datamatch; uint64_t addr; uint32_t len; int32_t fd; uint32_t flags; ...; };
struct kvm_device_attr { uint32_t flags; uint32_t group; uint64_t attr; uint64_t addr; };
struct kvm_dirty_log { uint32_t slot; void *dirty_bitmap; ...; };
struct kvm_enable_cap { uint32_t cap; uint32_t flags; unsigned long long args[4]; ...; };
struct kvm_coalesced_mmio_zone { uint64_t addr; uint32_t size; uint32_t pio; };
struct kvm_coalesced_mmio { uint64_t phys_addr; uint32_t len; uint32_t pio; uint8_t data[8]; };
struct kvm_coalesced_mmio_ring { uint32_t first, last; struct kvm_coalesced_mmio coalesced_mmio[]; };

/* struct kvm_run has anonymous unions the Python side reads through these views (same offsets) */
struct kvm_run {
    uint8_t request_interrupt_window;
    uint8_t immediate_exit;
    uint32_t exit_reason;
    uint8_t ready_for_interrupt_injection;
    uint8_t if_flag;
    uint16_t flags;
    uint64_t cr8;
    uint64_t apic_base;
    ...;
};

/* ---- helpers implemented in C below (their structs: SHARED_STRUCTS) ---- */
int hs_ioctl_batch(int fd, const struct hs_ioctl_step *steps, int count, int *rc);
int hs_ioctl_ptr(int fd, unsigned long request, void *arg);
int hs_ioctl_int(int fd, unsigned long request, unsigned long arg);
void *hs_mmap(size_t length, int prot, int flags, int fd, long offset, int *err);
int hs_munmap(void *addr, size_t length);
int hs_madvise(void *addr, size_t length, int advice);
int hs_install_kick_handler(int signo);
size_t hs_run_union_offset(void);
#define HS_LANE_HEADER_BYTES ...
#define HS_LANE_MAX_PIECES ...
#define HS_LANE_OK ...
#define HS_LANE_STEP_FAILED ...
#define HS_LANE_NO_RECORD ...
#define HS_LANE_BAD_LAYOUT ...
#define HS_LANE_WRONG_VCPU ...
#define HS_LANE_WRONG_GENERATION ...
#define HS_LANE_BAD_LENGTH ...
#define HS_LANE_BAD_CHECKSUM ...
#define HS_LANE_TOO_BIG ...
#define HS_LANE_FAULT_CORRUPT ...
#define HS_LANE_FAULT_TRUNCATE ...
#define HS_LANE_FAULT_BADVERSION ...
int hs_lane_send(struct hs_lane *lane);
int hs_lane_take(struct hs_lane *lane);
uint64_t hs_lane_checksum(const uint8_t *data, size_t size);

int hs_park(struct hs_park *park);
int hs_open_and_wait(int gate_fd, int counter_fd, int count, int timeout_ms);

/* A UART's transmitter served in C (kvm/byte_queue.py): while `open`, 1-byte MMIO writes to base + data_offset
   are queued and 1-byte reads of base + status_offset return status_value, without returning to Python. */
struct hs_byte_queue {
    uint64_t base; uint32_t data_offset; uint32_t status_offset; uint8_t status_value;
    int open; int lock; int notify_fd; int notify_pending;
    uint32_t head; uint32_t tail; uint64_t served;
    uint8_t bytes[4096];
};
int hs_run(int vcpu_fd, struct kvm_run *run, struct hs_byte_queue *queue);
int hs_byte_queue_serve(struct hs_byte_queue *queue, struct kvm_run *run);
uint32_t hs_byte_queue_take(struct hs_byte_queue *queue, uint8_t *out, uint32_t max, int whole_lines);
void hs_byte_queue_set_open(struct hs_byte_queue *queue, int open);
uint32_t hs_byte_queue_count(struct hs_byte_queue *queue);

/* views of the kvm_run exit union; offsets computed by the compiler */
struct hs_exit_io { uint8_t direction; uint8_t size; uint16_t port; uint32_t count; uint64_t data_offset; };
struct hs_exit_mmio { uint64_t phys_addr; uint8_t data[8]; uint32_t len; uint8_t is_write; };
struct hs_exit_internal { uint32_t suberror; uint32_t ndata; uint64_t data[16]; };
struct hs_exit_system_event { uint32_t type; uint32_t ndata; uint64_t data[16]; };
struct hs_exit_fail_entry { uint64_t hardware_entry_failure_reason; uint32_t cpu; };
struct hs_exit_hw { uint64_t hardware_exit_reason; };
struct hs_exit_emulation_failure {
    uint32_t suberror; uint32_t ndata; uint64_t flags; uint8_t insn_size; uint8_t insn_bytes[15];
};

#define MAP_SHARED ...
#define MAP_PRIVATE ...
#define MAP_ANONYMOUS ...
#define MAP_NORESERVE ...
#define MAP_POPULATE ...
#define PROT_READ ...
#define PROT_WRITE ...
#define MADV_DONTNEED ...
#define MADV_HUGEPAGE ...
#define MADV_DONTFORK ...
"""

SOURCE = r"""
#include <errno.h>
#include <poll.h>
#include <sched.h>
#include <stdint.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <linux/kvm.h>

/* SHARED_STRUCTS */

/* Views with the same layout as kvm_run's exit-union members. */
struct hs_exit_io { uint8_t direction; uint8_t size; uint16_t port; uint32_t count; uint64_t data_offset; };
struct hs_exit_mmio { uint64_t phys_addr; uint8_t data[8]; uint32_t len; uint8_t is_write; };
struct hs_exit_internal { uint32_t suberror; uint32_t ndata; uint64_t data[16]; };
struct hs_exit_system_event { uint32_t type; uint32_t ndata; uint64_t data[16]; };
struct hs_exit_fail_entry { uint64_t hardware_entry_failure_reason; uint32_t cpu; };
struct hs_exit_hw { uint64_t hardware_exit_reason; };
struct hs_exit_emulation_failure {
    uint32_t suberror; uint32_t ndata; uint64_t flags; uint8_t insn_size; uint8_t insn_bytes[15];
};

_Static_assert(sizeof(struct hs_exit_io) == sizeof(((struct kvm_run *)0)->io), "io view");
_Static_assert(sizeof(struct hs_exit_mmio) == sizeof(((struct kvm_run *)0)->mmio), "mmio view");
_Static_assert(offsetof(struct kvm_run, io) == offsetof(struct kvm_run, mmio), "union");
_Static_assert(offsetof(struct hs_exit_io, data_offset) == offsetof(struct kvm_run, io.data_offset)
               - offsetof(struct kvm_run, io), "io.data_offset");
_Static_assert(offsetof(struct hs_exit_mmio, is_write) == offsetof(struct kvm_run, mmio.is_write)
               - offsetof(struct kvm_run, mmio), "mmio.is_write");
_Static_assert(offsetof(struct hs_exit_system_event, ndata) == offsetof(struct kvm_run, system_event.ndata)
               - offsetof(struct kvm_run, system_event), "system_event.ndata");
_Static_assert(offsetof(struct hs_exit_emulation_failure, insn_bytes)
               == offsetof(struct kvm_run, emulation_failure.insn_bytes)
               - offsetof(struct kvm_run, emulation_failure), "emulation_failure.insn_bytes");

/* ioctl returning -errno on failure, so Python needs no thread-local errno dance. */
static int hs_ioctl_ptr(int fd, unsigned long request, void *arg) {
    int r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}
/* A fixed sequence of ioctls on one fd in one call from Python: no interpreter work between them (each costs a
   few us of Python in the pause window otherwise). Stops at the first step that fails or returns other than
   `expect` (-1: any non-negative value); returns that step's index, or `count` when all ran, with the step's
   return value (-errno on failure) in *rc. */
#define HS_LANE_MAX_PIECES 16
_Static_assert(sizeof(((struct hs_lane *)0)->pieces) == HS_LANE_MAX_PIECES * sizeof(struct hs_lane_piece), "pieces");
static int hs_ioctl_batch(int fd, const struct hs_ioctl_step *steps, int count, int *rc) {
    for (int i = 0; i < count; i++) {
        int r = ioctl(fd, steps[i].request, steps[i].arg);
        *rc = r < 0 ? -errno : r;
        if (steps[i].expect == -2) continue;  /* advisory: any result, errors too (kvm/batch.py ADVISORY) */
        if (r < 0 || (steps[i].expect >= 0 && r != steps[i].expect)) return i;
    }
    return count;
}
static int hs_ioctl_int(int fd, unsigned long request, unsigned long arg) {
    int r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}
static void *hs_mmap(size_t length, int prot, int flags, int fd, long offset, int *err) {
    void *p = mmap(NULL, length, prot, flags, fd, offset);
    if (p == MAP_FAILED) { *err = errno; return NULL; }
    *err = 0;
    return p;
}
static int hs_munmap(void *addr, size_t length) { return munmap(addr, length) < 0 ? -errno : 0; }
static int hs_madvise(void *addr, size_t length, int advice) {
    return madvise(addr, length, advice) < 0 ? -errno : 0;
}

/* A do-nothing C handler (no SA_RESTART): a signal sent to a vCPU thread only makes KVM_RUN return EINTR,
   without waking the Python main thread as a Python-level handler would. */
static void hs_kick_noop(int signo) { (void)signo; }
static int hs_install_kick_handler(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = hs_kick_noop;
    sigemptyset(&sa.sa_mask);
    return sigaction(signo, &sa, NULL) < 0 ? -errno : 0;
}
static size_t hs_run_union_offset(void) { return offsetof(struct kvm_run, io); }
static long long hs_ns_between(const struct timespec *from, const struct timespec *to) {
    return (to->tv_sec - from->tv_sec) * 1000000000LL + (to->tv_nsec - from->tv_nsec);
}
/* Wait for fd to become readable without sleeping (no wake-up latency), for at most max_ns; between polls the
   thread yields to runnable threads of its own priority. 1: readable, 0: timed out, -errno: poll failed. */
static int hs_spin_readable(int fd, long long max_ns) {
    struct pollfd want = { .fd = fd, .events = POLLIN };
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    for (;;) {
        int ready = poll(&want, 1, 0);
        if (ready > 0) return 1;
        if (ready < 0 && errno != EINTR) return -errno;
        clock_gettime(CLOCK_MONOTONIC, &now);
        if (hs_ns_between(&start, &now) >= max_ns) return 0;
        sched_yield();
    }
}

/* ---- a vCPU's state record in shared memory (kvm/lane.py) ----
   The old VMM's vCPU thread reads its vCPU (the capture batch) and copies the buffers into its slot of a memfd
   mapped by both processes; the successor's parked vCPU thread checks the record and restores it (a restore
   batch), both in C without the GIL: the vCPU state never passes through either main thread.
   Header (little-endian): u64 magic, u32 layout, u32 vCPU id, u64 generation, u32 payload bytes, u32 flags (0),
   u64 checksum of the payload, 24 reserved bytes; the payload (the pieces, in order) follows. The magic is
   stored last (release) and cleared by the reader once it took the record. */
#define HS_LANE_MAGIC 0x3130555043565348ULL  /* "HSVCPU01" */
#define HS_LANE_HEADER_BYTES 64
#define HS_LANE_OK 0
#define HS_LANE_STEP_FAILED 1       /* an ioctl of the batch failed: done, rc */
#define HS_LANE_NO_RECORD 2         /* woken, but no record (magic missing) */
#define HS_LANE_BAD_LAYOUT 3        /* found: the record's layout version */
#define HS_LANE_WRONG_VCPU 4        /* found: the record's vCPU id */
#define HS_LANE_WRONG_GENERATION 5
#define HS_LANE_BAD_LENGTH 6        /* found / expected: payload bytes */
#define HS_LANE_BAD_CHECKSUM 7
#define HS_LANE_TOO_BIG 8           /* writer: the pieces do not fit the slot */
#define HS_LANE_FAULT_CORRUPT 1     /* writer faults for the safety tests (hotswap/handover/faults.py) */
#define HS_LANE_FAULT_TRUNCATE 2
#define HS_LANE_FAULT_BADVERSION 3
struct hs_lane_header {
    uint64_t magic; uint32_t layout; uint32_t vcpu_id; uint64_t generation;
    uint32_t payload_bytes; uint32_t flags; uint64_t checksum; uint64_t reserved[3];
};
_Static_assert(sizeof(struct hs_lane_header) == HS_LANE_HEADER_BYTES, "lane header");

/* FNV-1a over 64-bit words (the tail zero-padded): every single-byte change changes the result (each step is a
   bijection of the running value), and it runs at a word per multiply (~10 KB in a few us). */
static uint64_t hs_lane_checksum(const uint8_t *data, size_t size) {
    uint64_t hash = 0xcbf29ce484222325ULL;
    size_t i = 0;
    for (; i + 8 <= size; i += 8) {
        uint64_t word;
        memcpy(&word, data + i, 8);
        hash = (hash ^ word) * 0x100000001b3ULL;
    }
    if (i < size) {
        uint64_t word = 0;
        memcpy(&word, data + i, size - i);
        hash = (hash ^ word) * 0x100000001b3ULL;
    }
    return hash ^ (uint64_t)size;
}

static uint32_t hs_lane_payload_bytes(const struct hs_lane *lane) {
    uint32_t total = 0;
    for (int i = 0; i < lane->count; i++) total += lane->pieces[i].size;
    return total;
}

/* Writer: capture the vCPU (lane->steps on batch_fd), write the record, signal notify_fd. */
static int hs_lane_send(struct hs_lane *lane) {
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    lane->began_ns = start.tv_sec * 1000000000LL + start.tv_nsec;
    lane->found = lane->expected = 0;
    lane->done = hs_ioctl_batch(lane->batch_fd, lane->steps, lane->steps_count, &lane->rc);
    if (lane->done != lane->steps_count) return lane->status = HS_LANE_STEP_FAILED;
    uint32_t total = hs_lane_payload_bytes(lane);
    if (total > lane->capacity - HS_LANE_HEADER_BYTES) {
        lane->found = total;
        lane->expected = lane->capacity - HS_LANE_HEADER_BYTES;
        return lane->status = HS_LANE_TOO_BIG;
    }
    struct hs_lane_header *header = (struct hs_lane_header *)lane->slot;
    uint8_t *payload = lane->slot + HS_LANE_HEADER_BYTES;
    __atomic_store_n(&header->magic, 0, __ATOMIC_RELAXED);
    uint32_t at = 0;
    for (int i = 0; i < lane->count; i++) {
        memcpy(payload + at, lane->pieces[i].buf, lane->pieces[i].size);
        at += lane->pieces[i].size;
    }
    header->layout = lane->layout;
    header->vcpu_id = lane->vcpu_id;
    header->generation = lane->generation;
    header->payload_bytes = total;
    header->flags = 0;
    header->checksum = hs_lane_checksum(payload, total);
    memset(header->reserved, 0, sizeof header->reserved);
    if (lane->fault == HS_LANE_FAULT_CORRUPT && total > 0) payload[total / 2] ^= 0xFF;
    if (lane->fault == HS_LANE_FAULT_TRUNCATE) header->payload_bytes = total / 2;
    if (lane->fault == HS_LANE_FAULT_BADVERSION) header->layout = 99;
    __atomic_store_n(&header->magic, HS_LANE_MAGIC, __ATOMIC_RELEASE);
    uint64_t one = 1;
    if (write(lane->notify_fd, &one, sizeof one) < 0) {
        lane->rc = -errno;
        lane->done = lane->steps_count;
        return lane->status = HS_LANE_STEP_FAILED;
    }
    clock_gettime(CLOCK_MONOTONIC, &end);
    lane->ran_ns = hs_ns_between(&start, &end);
    return lane->status = HS_LANE_OK;
}

/* Reader: check the record (everything before the first ioctl), copy it into the restore buffers, run the restore
   batch for a TSC deadline disarmed (steps) or armed (armed: the deadline piece's MSR value is not 0). */
static int hs_lane_take(struct hs_lane *lane) {
    struct timespec start, end;
    clock_gettime(CLOCK_MONOTONIC, &start);
    lane->began_ns = start.tv_sec * 1000000000LL + start.tv_nsec;
    const struct hs_lane_header *header = (const struct hs_lane_header *)lane->slot;
    const uint8_t *payload = lane->slot + HS_LANE_HEADER_BYTES;
    lane->found = lane->expected = 0;
    lane->done = 0;
    lane->rc = 0;
    if (__atomic_load_n(&header->magic, __ATOMIC_ACQUIRE) != HS_LANE_MAGIC) return lane->status = HS_LANE_NO_RECORD;
    if (header->layout != lane->layout) {
        lane->found = header->layout;
        lane->expected = lane->layout;
        return lane->status = HS_LANE_BAD_LAYOUT;
    }
    if (header->vcpu_id != lane->vcpu_id) {
        lane->found = header->vcpu_id;
        lane->expected = lane->vcpu_id;
        return lane->status = HS_LANE_WRONG_VCPU;
    }
    if (header->generation != lane->generation) {
        lane->found = (uint32_t)header->generation;
        lane->expected = (uint32_t)lane->generation;
        return lane->status = HS_LANE_WRONG_GENERATION;
    }
    uint32_t total = hs_lane_payload_bytes(lane);
    if (header->payload_bytes != total || total > lane->capacity - HS_LANE_HEADER_BYTES) {
        lane->found = header->payload_bytes;
        lane->expected = total;
        return lane->status = HS_LANE_BAD_LENGTH;
    }
    if (header->checksum != hs_lane_checksum(payload, total)) return lane->status = HS_LANE_BAD_CHECKSUM;
    uint32_t at = 0;
    for (int i = 0; i < lane->count; i++) {
        memcpy(lane->pieces[i].buf, payload + at, lane->pieces[i].size);
        at += lane->pieces[i].size;
    }
    __atomic_store_n(&((struct hs_lane_header *)lane->slot)->magic, 0, __ATOMIC_RELEASE);
    const struct hs_ioctl_step *steps = lane->steps;
    int count = lane->steps_count;
    if (lane->deadline_piece >= 0) {
        uint64_t deadline;  /* struct kvm_msr_entry: u32 index, u32 reserved, u64 data */
        memcpy(&deadline, (const uint8_t *)lane->pieces[lane->deadline_piece].buf + 8, 8);
        if (deadline != 0) {
            steps = lane->armed;
            count = lane->armed_count;
        }
    }
    lane->done = hs_ioctl_batch(lane->batch_fd, steps, count, &lane->rc);
    lane->expected = (uint32_t)count;
    clock_gettime(CLOCK_MONOTONIC, &end);
    lane->ran_ns = hs_ns_between(&start, &end);
    return lane->status = lane->done == count ? HS_LANE_OK : HS_LANE_STEP_FAILED;
}

/* Open a gate (write 1 to its eventfd) and wait, still without the GIL, until a semaphore eventfd was signalled
   `count` times or timeout_ms passed: the threads released need the GIL at once, and a caller that took it back
   between the two would make each of them wait for it. Returns how many signals arrived, or -errno. */
static int hs_open_and_wait(int gate_fd, int counter_fd, int count, int timeout_ms) {
    uint64_t value = 1;
    if (write(gate_fd, &value, sizeof value) < 0) return -errno;
    struct pollfd want = { .fd = counter_fd, .events = POLLIN };
    struct timespec start, now;
    clock_gettime(CLOCK_MONOTONIC, &start);
    int seen = 0;
    while (seen < count) {
        clock_gettime(CLOCK_MONOTONIC, &now);
        long long left = timeout_ms - hs_ns_between(&start, &now) / 1000000;
        if (left <= 0) break;
        int ready = poll(&want, 1, (int)left);
        if (ready < 0 && errno != EINTR) return -errno;
        while (seen < count && read(counter_fd, &value, sizeof value) == sizeof value) seen++;
    }
    return seen;
}

/* A parked thread's wait, without the GIL: returns 1 when gate_fd is readable (open), -errno if poll failed. A
   record arriving in its lane (lane != NULL, lane->notify_fd readable) is taken here (hs_lane_take), once; a
   batch posted to it (steps != NULL when wake_fd is signalled) runs here: its result goes to done/rc and its
   duration to ran_ns, then done_fd is signalled and, with spin_ns, the gate is polled without sleeping for that
   long before the thread sleeps again. */
/* Posted work done: signal done_fd, then, with spin_ns, poll the gate that long without sleeping. 1: the gate
   opened meanwhile, 0: go on parking, -errno: the signal failed. */
static int hs_park_report(struct hs_park *park) {
    uint64_t one = 1;
    if (write(park->done_fd, &one, sizeof one) < 0) return -errno;
    return park->spin_ns > 0 && hs_spin_readable(park->gate_fd, park->spin_ns) == 1 ? 1 : 0;
}

static int hs_park(struct hs_park *park) {
    struct pollfd want[3] = { { .fd = park->gate_fd, .events = POLLIN }, { .fd = park->wake_fd, .events = POLLIN },
                              { .fd = -1, .events = POLLIN } };
    uint64_t count;
    for (;;) {
        want[2].fd = park->lane != NULL ? park->lane->notify_fd : -1;  /* poll ignores a negative fd */
        if (poll(want, 3, -1) < 0) {
            if (errno == EINTR) continue;
            return -errno;
        }
        if (want[0].revents & POLLIN) return 1;
        if (park->lane != NULL && (want[2].revents & POLLIN)) {
            /* A record in the lane: take it once (the lane is detached), then report like a posted batch. */
            if (read(park->lane->notify_fd, &count, sizeof count) < 0 && errno != EAGAIN) return -errno;
            hs_lane_take(park->lane);
            park->lane = NULL;
            int opened = hs_park_report(park);
            if (opened != 0) return opened;
            continue;
        }
        if (!(want[1].revents & POLLIN)) continue;
        if (read(park->wake_fd, &count, sizeof count) < 0 && errno != EAGAIN) return -errno;
        if (park->steps == NULL) continue;
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        park->done = hs_ioctl_batch(park->batch_fd, park->steps, park->count, &park->rc);
        clock_gettime(CLOCK_MONOTONIC, &end);
        park->ran_ns = hs_ns_between(&start, &end);
        park->steps = NULL;
        int opened = hs_park_report(park);
        if (opened != 0) return opened;
    }
}

/* ---- a UART transmitter served in C ----
   A guest printing through the UART takes one exit per byte (and one per status poll). Handled in Python, each
   needs the GIL, and on this nested host a vCPU thread that finds the GIL held sleeps and is woken up to
   milliseconds later: a gap the guest sees. While the device model says the UART only transmits (no divisor
   latch, no loopback, no THR-empty interrupt, nothing received), those exits are served here. */
#define HS_QUEUE_SIZE 4096u
struct hs_byte_queue {
    uint64_t base; uint32_t data_offset; uint32_t status_offset; uint8_t status_value;
    int open; int lock; int notify_fd; int notify_pending;
    uint32_t head; uint32_t tail; uint64_t served;
    uint8_t bytes[4096];
};
_Static_assert(sizeof(((struct hs_byte_queue *)0)->bytes) == HS_QUEUE_SIZE, "queue size");

static void hs_queue_lock(struct hs_byte_queue *q) {
    while (__atomic_exchange_n(&q->lock, 1, __ATOMIC_ACQUIRE)) {
        while (__atomic_load_n(&q->lock, __ATOMIC_RELAXED)) __builtin_ia32_pause();
    }
}
static void hs_queue_unlock(struct hs_byte_queue *q) { __atomic_store_n(&q->lock, 0, __ATOMIC_RELEASE); }

/* 1 when the exit in `run` was served (KVM_RUN may simply be entered again), 0 when Python must see it. The
   consumer is told through notify_fd at a newline, at half full, and when a byte lands in an empty queue (a
   prompt without a newline); once told, not again until it has taken. */
static int hs_byte_queue_serve(struct hs_byte_queue *q, struct kvm_run *run) {
    if (run->exit_reason != KVM_EXIT_MMIO || run->mmio.len != 1 || run->mmio.phys_addr < q->base) return 0;
    uint64_t offset = run->mmio.phys_addr - q->base;
    int notify = 0;
    if (!run->mmio.is_write) {
        if (offset != q->status_offset || !__atomic_load_n(&q->open, __ATOMIC_ACQUIRE)) return 0;
        run->mmio.data[0] = q->status_value;
    } else {
        if (offset != q->data_offset) return 0;
        uint8_t byte = run->mmio.data[0];
        hs_queue_lock(q);
        uint32_t held = q->tail - q->head;
        if (!q->open || held >= HS_QUEUE_SIZE) {  /* closed meanwhile, or full: Python takes it after the rest */
            hs_queue_unlock(q);
            return 0;
        }
        q->bytes[q->tail % HS_QUEUE_SIZE] = byte;
        q->tail++;
        if (!q->notify_pending && (byte == '\n' || held == 0 || held + 1 >= HS_QUEUE_SIZE / 2)) {
            q->notify_pending = 1;
            notify = 1;
        }
        hs_queue_unlock(q);
    }
    __atomic_add_fetch(&q->served, 1, __ATOMIC_RELAXED);
    if (notify && q->notify_fd >= 0) {
        uint64_t one = 1;
        if (write(q->notify_fd, &one, sizeof one) < 0) { /* an eventfd at its limit is still readable */ }
    }
    return 1;
}

/* KVM_RUN until an exit Python must handle: 0, or -errno (-EINTR after a kick). */
static int hs_run(int vcpu_fd, struct kvm_run *run, struct hs_byte_queue *queue) {
    for (;;) {
        if (ioctl(vcpu_fd, KVM_RUN, 0) < 0) return -errno;
        if (queue == NULL || !hs_byte_queue_serve(queue, run)) return 0;
    }
}

/* Move up to `max` queued bytes to `out` (only up to the last newline with whole_lines); returns how many. */
static uint32_t hs_byte_queue_take(struct hs_byte_queue *q, uint8_t *out, uint32_t max, int whole_lines) {
    hs_queue_lock(q);
    uint32_t count = q->tail - q->head;
    if (count > max) count = max;
    if (whole_lines) {
        while (count > 0 && q->bytes[(q->head + count - 1) % HS_QUEUE_SIZE] != '\n') count--;
    }
    for (uint32_t i = 0; i < count; i++) out[i] = q->bytes[(q->head + i) % HS_QUEUE_SIZE];
    q->head += count;
    q->notify_pending = 0;
    hs_queue_unlock(q);
    return count;
}

static void hs_byte_queue_set_open(struct hs_byte_queue *q, int open) {
    hs_queue_lock(q);
    __atomic_store_n(&q->open, open, __ATOMIC_RELEASE);
    hs_queue_unlock(q);
}

static uint32_t hs_byte_queue_count(struct hs_byte_queue *q) {
    hs_queue_lock(q);
    uint32_t count = q->tail - q->head;
    hs_queue_unlock(q);
    return count;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(SHARED_STRUCTS + CDEF)
ffibuilder.set_source("kvm._kvm_cffi", SOURCE.replace("/* SHARED_STRUCTS */", SHARED_STRUCTS, 1))


def build_in_place() -> None:
    """Compile the extension next to this file (for a source checkout without `pip install -e .`)."""
    here = pathlib.Path(__file__).resolve().parent
    ffibuilder.compile(tmpdir=str(here.parent), verbose=False)


if __name__ == "__main__":
    build_in_place()
