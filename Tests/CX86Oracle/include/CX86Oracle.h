// The host CPU as the oracle for HVModel's arithmetic emulation: each arithmetic or logic
// instruction run for real, with its status flags read back (tests only; x86-64 hosts).
#ifndef CX86_ORACLE_H
#define CX86_ORACLE_H
#include <stdint.h>

/// `destination OP source` at `width` bytes (1, 2, 4, 8) with CF = `carry_in` before it, as the
/// CPU computes it; operation numbers are HVModel's ArithmeticOperation raw values (0 ADD, 1 OR,
/// 2 ADC, 3 SBB, 4 AND, 5 SUB, 6 XOR, 7 CMP, 8 TEST). Returns the destination afterwards (for
/// CMP and TEST: unchanged) and stores RFLAGS in *flags.
uint64_t hv_oracle_arithmetic(int operation, uint64_t destination, uint64_t source, int width, int carry_in, uint64_t *flags);

#endif
