/* 16550 UART output from ring 3: COM1 by port I/O (emulated by the #GP handler) or an MMIO alias of it. */
#ifndef HSG_UART_H
#define HSG_UART_H

#include "types.h"

#define UART_MMIO_DEFAULT 0xD0000000UL /* hotswap's MMIO alias of COM1 (hotswap/layout.py SERIAL_MMIO_ADDR) */

void uart_init(u64 mmio_base); /* 0 = COM1 port I/O */
bool uart_is_mmio(void);
void uart_write(const char *s, usize n);

/* Called after every byte written: the workload counts each printed byte as a progress step. */
void uart_set_byte_hook(void (*hook)(void));

#endif
