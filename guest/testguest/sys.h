/* Calls from ring 3 into ring 0 (trap.c): `ud2` with the call number in rax. */
#ifndef HSG_SYS_H
#define HSG_SYS_H

#include "layout.h"
#include "types.h"

/* Reset the machine through the i8042 (ring 0 writes 0xFE to port 0x64); never returns. */
static inline NORETURN void sys_reset(void)
{
	__asm__ volatile("ud2" : : "a"((u64)SYS_RESET) : "memory");
	__builtin_unreachable();
}

#endif
