// The C runtime an Embedded Swift program needs on a bare CPU (memset, memcpy, memmove,
// memcmp, posix_memalign, free) and putchar, which Swift's print() writes through: here, COM1.
// Built with -ffreestanding -fno-builtin so the compiler does not turn these loops back into
// calls to themselves.
#include <stddef.h>
#include <stdint.h>
#include "BareMetalSupport.h"

void *memset(void *destination, int value, size_t count) {
    unsigned char *d = destination;
    while (count--) *d++ = (unsigned char)value;
    return destination;
}

void *memcpy(void *destination, const void *source, size_t count) {
    unsigned char *d = destination;
    const unsigned char *s = source;
    while (count--) *d++ = *s++;
    return destination;
}

void *memmove(void *destination, const void *source, size_t count) {
    unsigned char *d = destination;
    const unsigned char *s = source;
    if (d < s) {
        while (count--) *d++ = *s++;
    } else {
        d += count;
        s += count;
        while (count--) *--d = *--s;
    }
    return destination;
}

int memcmp(const void *a, const void *b, size_t count) {
    const unsigned char *x = a, *y = b;
    for (; count; count--, x++, y++) {
        if (*x != *y) return *x < *y ? -1 : 1;
    }
    return 0;
}

// The heap: from 8 MiB (or the end of the image, if that is higher) up to 64 MiB, handed out
// in order and never reused (the image allocates at start-up; a hypervisor's run loop allocates
// nothing). Not from the image's end: a Multiboot loader puts its information structure and the
// command line right after the image (QEMU does), and the heap's zeroed pages would wipe them.
// A request that does not fit fails as posix_memalign does, and Swift traps on it.
static uintptr_t heap_next;
static const uintptr_t heap_start = 8u << 20;
static const uintptr_t heap_limit = 64u << 20;

int posix_memalign(void **result, size_t alignment, size_t size) {
    if (alignment < sizeof(void *)) alignment = sizeof(void *);
    if (heap_next == 0) heap_next = (uintptr_t)hv_image_end > heap_start ? (uintptr_t)hv_image_end : heap_start;
    uintptr_t start = (heap_next + alignment - 1) & ~(uintptr_t)(alignment - 1);
    if (start + size > heap_limit || start + size < start) return 12;  // ENOMEM
    heap_next = start + size;
    *result = (void *)start;
    return 0;
}

void free(void *pointer) { (void)pointer; }

/// COM1 (a 16550 at 0x3F8): waits for the transmit holding register (LSR bit 5) before each
/// byte, which Bochs' UART needs and QEMU's does not mind.
int putchar(int character) {
    if (character == '\n') putchar('\r');
    while ((hv_inb(0x3F8 + 5) & 0x20) == 0) {}
    hv_outb(0x3F8, (uint8_t)character);
    return character;
}

/// Swift seeds its hash tables (Set, Dictionary) from arc4random_buf. The image has no entropy
/// source worth the name yet, so this mixes the TSC through xorshift64*: fine for hash seeds,
/// and nothing in the image uses it for anything that must be unpredictable.
void arc4random_buf(void *buffer, size_t count) {
    static uint64_t state;
    if (state == 0) state = hv_rdtsc() | 1;
    unsigned char *bytes = buffer;
    for (size_t index = 0; index < count; index++) {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        bytes[index] = (unsigned char)((state * 0x2545F4914F6CDD1DULL) >> 56);
    }
}
