/* Ring-0 trap handling (the only C code that runs in ring 0). */
#ifndef HSG_TRAP_H
#define HSG_TRAP_H

#include "types.h"

/* Pushed by isr.S: caller-saved registers, then vector and error code, then the CPU's interrupt frame. */
struct trap_frame {
	u64 r11, r10, r9, r8, rdi, rsi, rdx, rcx, rax;
	u64 vector, error;
	u64 rip, cs, rflags, rsp, ss;
};

void trap_dispatch(struct trap_frame *frame);

/* Where ring-0 panic messages go; set by the ring-3 UART driver (0 = COM1 port I/O). */
extern u64 panic_uart_mmio_base;

#endif
