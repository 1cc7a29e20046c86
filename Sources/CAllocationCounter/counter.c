// Malloc interposer that counts allocation calls. See CAllocationCounter.h.
// Why not ordo-one/malloc-interposer: it must be LD_PRELOADed on Linux, which `swift test`
// cannot do for its own test process; this one takes effect by being linked in.
#include "CAllocationCounter.h"
#include <stddef.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t count, size_t size);
extern void *__libc_realloc(void *pointer, size_t size);
extern void *__libc_memalign(size_t alignment, size_t size);

static int counting;
static uint64_t allocations;
static __thread uint64_t thread_allocations;
static __thread uint64_t thread_largest;

static inline void note_size(size_t size) {
    if (size > thread_largest) thread_largest = size;
}

static inline void note_allocation(void) {
    thread_allocations++;
    if (__atomic_load_n(&counting, __ATOMIC_RELAXED)) {
        __atomic_fetch_add(&allocations, 1, __ATOMIC_RELAXED);
    }
}

uint64_t hv_thread_allocation_count(void) { return thread_allocations; }
uint64_t hv_thread_largest_allocation(void) { return thread_largest; }
void hv_thread_largest_allocation_reset(void) { thread_largest = 0; }

void hv_allocation_counting_start(void) { __atomic_store_n(&counting, 1, __ATOMIC_SEQ_CST); }
void hv_allocation_counting_stop(void) { __atomic_store_n(&counting, 0, __ATOMIC_SEQ_CST); }
uint64_t hv_allocation_count(void) { return __atomic_load_n(&allocations, __ATOMIC_SEQ_CST); }
void hv_allocation_count_reset(void) { __atomic_store_n(&allocations, 0, __ATOMIC_SEQ_CST); }

void *malloc(size_t size) {
    note_allocation();
    note_size(size);
    return __libc_malloc(size);
}

void *calloc(size_t count, size_t size) {
    note_allocation();
    note_size(count * size);
    return __libc_calloc(count, size);
}

void *realloc(void *pointer, size_t size) {
    note_allocation();
    note_size(size);
    return __libc_realloc(pointer, size);
}

void *memalign(size_t alignment, size_t size) {
    note_allocation();
    note_size(size);
    return __libc_memalign(alignment, size);
}

void *aligned_alloc(size_t alignment, size_t size) {
    note_allocation();
    note_size(size);
    return __libc_memalign(alignment, size);
}

int posix_memalign(void **result, size_t alignment, size_t size) {
    note_allocation();
    note_size(size);
    if (alignment % sizeof(void *) != 0 || (alignment & (alignment - 1)) != 0) return 22; // EINVAL
    void *pointer = __libc_memalign(alignment, size);
    if (pointer == NULL) return 12; // ENOMEM
    *result = pointer;
    return 0;
}
