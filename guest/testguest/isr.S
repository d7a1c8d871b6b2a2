/* Interrupt and exception entry. 256 stubs at fixed addresses (tables.S builds the IDT from ISR_BASE): the timer
 * vector has its own few-instruction path; every other vector goes through isr_common into trap_dispatch (trap.c).
 * Ring 0 runs with IF=0 throughout, so interrupts only ever arrive from ring 3, on a fresh RSP0 stack. */
#include "layout.h"

#define GP_VECTOR 13

/* Vectors for which the CPU pushes an error code. */
#define HAS_ERROR_CODE(v) ((v) == 8 || ((v) >= 10 && (v) <= 14) || (v) == 17 || (v) == 21 || (v) == 29 || (v) == 30)

	.section .isr, "ax"
	.code64
	.globl isr_stubs
isr_stubs:
	.set v, 0
	.rept 256
	.if v == TIMER_VECTOR
	jmp timer_isr
	.elseif v == GP_VECTOR
	jmp gp_isr
	.elseif HAS_ERROR_CODE(v)
	pushq $v
	jmp isr_common
	.else
	pushq $0
	pushq $v
	jmp isr_common
	.endif
	.org isr_stubs + (v + 1) * ISR_STUB_SIZE, 0xCC /* fails to assemble if a stub outgrows its slot */
	.set v, v + 1
	.endr

	.text
/* LAPIC timer: count the tick in this CPU's counter, which sits at RSP0, just above the 5-word frame. */
timer_isr:
	testb $3, 8(%rsp) /* CS of the interrupted code */
	jz 1f
	incq 40(%rsp)
	pushq %rax
	movl $LAPIC_EOI_ADDR, %eax
	movl %eax, (%rax)
	popq %rax
	iretq
1:	pushq $0 /* a tick in ring 0 should not happen: report it */
	pushq $TIMER_VECTOR
	/* fall through */

/* #GP: ring 3 cannot do port I/O here, so its byte accesses (portio.S) fault and are done here. Any other #GP
 * (and word/dword or imm8 port I/O) goes to trap.c. Frame: error code, RIP, CS, RFLAGS, RSP, SS. */
gp_isr:
	cmpq $port_outb_insn, 8(%rsp)
	je 2f
	cmpq $port_inb_insn, 8(%rsp)
	jne 3f
	inb %dx, %al
	jmp 4f
2:	outb %al, %dx
4:	addq $1, 8(%rsp) /* both instructions are one byte long */
	addq $8, %rsp
	iretq
3:	pushq $GP_VECTOR
	jmp isr_common

/* Frame layout: struct trap_frame in trap.h. Only the caller-saved registers are saved: trap_dispatch preserves
 * the rest, and every instruction saved here is one the emulator does not run. */
isr_common:
	pushq %rax
	pushq %rcx
	pushq %rdx
	pushq %rsi
	pushq %rdi
	pushq %r8
	pushq %r9
	pushq %r10
	pushq %r11
	movq %rsp, %rdi
	call trap_dispatch
	popq %r11
	popq %r10
	popq %r9
	popq %r8
	popq %rdi
	popq %rsi
	popq %rdx
	popq %rcx
	popq %rax
	addq $16, %rsp
	iretq
