#include "CX86Oracle.h"

// One instruction at one width: set CF from carry_in (BT of bit 0), run it, read RFLAGS.
#define RUN(mnemonic, type, constraint)                                                          \
    do {                                                                                        \
        type d = (type)destination, s = (type)source;                                           \
        uint64_t c = (uint64_t)carry_in, f;                                                     \
        __asm__ volatile("bt $0, %[c]\n\t" mnemonic " %[s], %[d]\n\t" "pushfq\n\t" "pop %[f]"    \
                         : [d] "+" constraint(d), [f] "=r"(f)                                    \
                         : [s] constraint(s), [c] "r"(c)                                         \
                         : "cc");                                                                \
        *flags = f;                                                                             \
        return (uint64_t)d;                                                                     \
    } while (0)

#define WIDTHS(base)                                                                            \
    switch (width) {                                                                            \
    case 1: RUN(base "b", uint8_t, "q");                                                        \
    case 2: RUN(base "w", uint16_t, "r");                                                       \
    case 4: RUN(base "l", uint32_t, "r");                                                       \
    default: RUN(base "q", uint64_t, "r");                                                      \
    }

uint64_t hv_oracle_arithmetic(int operation, uint64_t destination, uint64_t source, int width, int carry_in, uint64_t *flags) {
    switch (operation) {
    case 0: WIDTHS("add")
    case 1: WIDTHS("or")
    case 2: WIDTHS("adc")
    case 3: WIDTHS("sbb")
    case 4: WIDTHS("and")
    case 5: WIDTHS("sub")
    case 6: WIDTHS("xor")
    case 7: WIDTHS("cmp")
    default: WIDTHS("test")
    }
}
