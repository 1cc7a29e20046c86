// Both ends of the virtio-vsock check in the test bed (Tests/TestBed/linux-boots.sh), built
// static so that it runs in the busybox guest and on the bed's host alike.
//
//   vsock-peer connect CID PORT BYTES        guest: connect over AF_VSOCK, send BYTES, read the
//                                            echo back and check it; prints "ok BYTES MiB/s"
//   vsock-peer serve PORT SECONDS            guest: accept one AF_VSOCK connection on PORT
//                                            (waiting up to SECONDS) and echo it; "ok BYTES"
//   vsock-peer unix-echo PATH                host: echo every connection to the Unix socket PATH
//   vsock-peer unix-connect PATH PORT BYTES  host: connect to hv's Unix socket PATH, ask for guest
//                                            port PORT ("CONNECT PORT\n", retried until the
//                                            guest listens), then the same check as connect
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <linux/vm_sockets.h>

static unsigned char pattern(size_t i) { return (unsigned char)(i * 7 + i / 4096); }

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

// Sends `bytes` of the pattern from a child process while this one reads the echo and checks
// it; 0 when every byte came back in order.
static int echo_check(int fd, size_t bytes) {
    double start = now();
    pid_t child = fork();
    if (child == 0) {
        unsigned char buffer[16384];
        for (size_t sent = 0; sent < bytes;) {
            size_t count = bytes - sent < sizeof buffer ? bytes - sent : sizeof buffer;
            for (size_t i = 0; i < count; i++) buffer[i] = pattern(sent + i);
            ssize_t written = write(fd, buffer, count);
            if (written <= 0) { perror("vsock-peer: write"); _exit(1); }
            sent += written;
        }
        shutdown(fd, SHUT_WR);
        _exit(0);
    }
    unsigned char buffer[16384];
    size_t received = 0;
    for (;;) {
        ssize_t count = read(fd, buffer, sizeof buffer);
        if (count < 0 && errno == EINTR) continue;
        if (count <= 0) break;
        for (ssize_t i = 0; i < count; i++) {
            if (buffer[i] != pattern(received + i)) {
                printf("mismatch at byte %zu\n", received + i);
                return 1;
            }
        }
        received += count;
    }
    int status = 0;
    waitpid(child, &status, 0);
    double seconds = now() - start;
    if (received != bytes || status != 0) {
        printf("short: %zu of %zu bytes came back\n", received, bytes);
        return 1;
    }
    printf("ok %zu %.1f\n", bytes, bytes / seconds / 1048576.0);
    return 0;
}

static void echo(int fd) {
    char buffer[65536];
    for (;;) {
        ssize_t count = read(fd, buffer, sizeof buffer);
        if (count < 0 && errno == EINTR) continue;
        if (count <= 0) break;
        for (ssize_t done = 0; done < count;) {
            ssize_t written = write(fd, buffer + done, count - done);
            if (written <= 0) return;
            done += written;
        }
    }
    shutdown(fd, SHUT_WR);
}

static int unix_socket(const char *path, struct sockaddr_un *address) {
    memset(address, 0, sizeof *address);
    address->sun_family = AF_UNIX;
    strncpy(address->sun_path, path, sizeof address->sun_path - 1);
    return socket(AF_UNIX, SOCK_STREAM, 0);
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IONBF, 0);
    if (argc == 5 && strcmp(argv[1], "connect") == 0) {
        int fd = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm address = { .svm_family = AF_VSOCK, .svm_cid = atoi(argv[2]), .svm_port = atoi(argv[3]) };
        if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) {
            printf("connect: %s\n", strerror(errno));
            return 1;
        }
        return echo_check(fd, strtoul(argv[4], NULL, 0));
    }
    if (argc == 4 && strcmp(argv[1], "serve") == 0) {
        int listener = socket(AF_VSOCK, SOCK_STREAM, 0);
        struct sockaddr_vm address = { .svm_family = AF_VSOCK, .svm_cid = VMADDR_CID_ANY, .svm_port = atoi(argv[2]) };
        if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 1) != 0) {
            printf("listen: %s\n", strerror(errno));
            return 1;
        }
        struct pollfd entry = { .fd = listener, .events = POLLIN };
        if (poll(&entry, 1, atoi(argv[3]) * 1000) != 1) { printf("nobody connected\n"); return 1; }
        int fd = accept(listener, NULL, NULL);
        if (fd < 0) { printf("accept: %s\n", strerror(errno)); return 1; }
        echo(fd);
        printf("ok\n");
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "unix-echo") == 0) {
        struct sockaddr_un address;
        int listener = unix_socket(argv[2], &address);
        unlink(argv[2]);
        if (listener < 0 || bind(listener, (struct sockaddr *)&address, sizeof address) != 0 || listen(listener, 8) != 0) {
            perror("vsock-peer: unix-echo");
            return 1;
        }
        signal(SIGCHLD, SIG_IGN);
        for (;;) {
            int fd = accept(listener, NULL, NULL);
            if (fd < 0) continue;
            if (fork() == 0) { echo(fd); _exit(0); }
            close(fd);
        }
    }
    if (argc == 5 && strcmp(argv[1], "unix-connect") == 0) {
        // The guest may not listen yet: hv then resets the connection and this tries again.
        for (int attempt = 0; attempt < 600; attempt++, usleep(200000)) {
            struct sockaddr_un address;
            int fd = unix_socket(argv[2], &address);
            if (fd < 0 || connect(fd, (struct sockaddr *)&address, sizeof address) != 0) { close(fd); continue; }
            char line[64];
            int length = snprintf(line, sizeof line, "CONNECT %s\n", argv[3]);
            if (write(fd, line, length) != length) { close(fd); continue; }
            size_t got = 0;
            while (got < sizeof line - 1 && read(fd, line + got, 1) == 1 && line[got] != '\n') got++;
            line[got] = 0;
            if (strncmp(line, "OK ", 3) != 0) { close(fd); continue; }
            return echo_check(fd, strtoul(argv[4], NULL, 0));
        }
        printf("the guest never accepted\n");
        return 1;
    }
    fprintf(stderr, "usage: vsock-peer connect CID PORT BYTES | serve PORT SECONDS | unix-echo PATH | unix-connect PATH PORT BYTES\n");
    return 64;
}
