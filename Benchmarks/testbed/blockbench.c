// The guest side of Benchmarks/testbed/virtio-compare.sh: block I/O against a raw device with
// O_DIRECT (no guest page cache), fio-style, in one small static binary for the busybox guest.
//
//   blockbench DEVICE MODE SECONDS     MODE: seqread seqwrite randread randwrite
//
// Sequential modes move 1 MiB per request, random ones 4 KiB at uniformly random aligned
// offsets. Prints one line: "blockbench MODE MiB/s IOPS mean-latency-us requests".
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/fs.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: blockbench DEVICE seqread|seqwrite|randread|randwrite SECONDS\n");
        return 64;
    }
    const char *mode = argv[2];
    int writing = strstr(mode, "write") != NULL, random = strncmp(mode, "rand", 4) == 0;
    double seconds = atof(argv[3]);
    int fd = open(argv[1], (writing ? O_RDWR : O_RDONLY) | O_DIRECT);
    if (fd < 0) { perror(argv[1]); return 1; }
    uint64_t size = 0;
    if (ioctl(fd, BLKGETSIZE64, &size) != 0) { perror("BLKGETSIZE64"); return 1; }
    size_t block = random ? 4096 : 1 << 20;
    if (size < block) { fprintf(stderr, "%s: too small\n", argv[1]); return 1; }
    void *buffer;
    if (posix_memalign(&buffer, 4096, block) != 0) return 1;
    memset(buffer, 0xA5, block);
    uint64_t blocks = size / block, position = 0, requests = 0, state = 0x9E3779B97F4A7C15ull;
    double start = now(), end = start + seconds, latency = 0;
    while (now() < end) {
        uint64_t index;
        if (random) {
            state ^= state << 13; state ^= state >> 7; state ^= state << 17;
            index = state % blocks;
        } else {
            index = position++ % blocks;
        }
        double before = now();
        ssize_t done = writing ? pwrite(fd, buffer, block, index * block) : pread(fd, buffer, block, index * block);
        latency += now() - before;
        if (done != (ssize_t)block) { perror("I/O"); return 1; }
        requests++;
    }
    double elapsed = now() - start;
    printf("blockbench %s %.1f %.0f %.1f %llu\n", mode, requests * block / elapsed / (1 << 20), requests / elapsed,
           latency / requests * 1e6, (unsigned long long)requests);
    return 0;
}
