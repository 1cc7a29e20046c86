// Counts heap allocations, for tests and benchmarks that prove a hot path allocates nothing.
// Linking this target interposes malloc, calloc, realloc, posix_memalign, aligned_alloc and
// memalign (the executable's definitions win symbol resolution) and forwards each call to
// glibc's own entry points (__libc_malloc, ...), so no dlsym bootstrapping is needed.
#ifndef C_ALLOCATION_COUNTER_H
#define C_ALLOCATION_COUNTER_H

#include <stdint.h>

/// Allocation calls made so far by the calling thread (always counted).
uint64_t hv_thread_allocation_count(void);

/// The largest allocation (bytes) the calling thread asked for since the last reset, so a test
/// can show that no host allocation grows with a guest-chosen length.
uint64_t hv_thread_largest_allocation(void);
/// Forgets the calling thread's largest allocation.
void hv_thread_largest_allocation_reset(void);

/// Starts counting allocations of every thread into the process-wide count.
void hv_allocation_counting_start(void);
/// Stops the process-wide count.
void hv_allocation_counting_stop(void);
/// Allocation calls seen process-wide while counting was on.
uint64_t hv_allocation_count(void);
/// Sets the process-wide count back to zero.
void hv_allocation_count_reset(void);

#endif
