// virtio-blk request handling, notification to used ring, against the pread(2) it wraps: the
// difference is what HV's transport, virtqueue and request parsing cost per request. Both read
// 4 KiB from the page cache in the same run.
import Benchmark
import Foundation
import HVCore

/// An image file and a virtio-blk device on it with queue 0 set up the way Linux does, and one
/// 4 KiB read request (header, data, status) in its descriptor table.
private final class BlockBench {
    let path = FileManager.default.temporaryDirectory.appendingPathComponent("hv-bench-virtio-\(getpid()).img").path
    let memory: GuestMemory
    let transport: VirtioMMIOTransport<VirtioBlock>
    private var available: UInt16 = 0

    init() throws {
        try Data(repeating: 0x5A, count: 1 << 20).write(to: URL(fileURLWithPath: path))
        memory = try GuestMemory(regions: [MemoryRegion(guestAddress: 0, size: 16 << 20)])
        transport = VirtioMMIOTransport(device: try VirtioBlock(path: path), memory: memory, interrupt: nil)
        func write(_ register: UInt64, _ value: UInt32) { _ = transport.mmioWrite(offset: register, width: 4, value: UInt64(value)) }
        write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver)
        write(0x24, 1); write(0x20, 1)  // VIRTIO_F_VERSION_1
        write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
        write(0x38, 256)
        write(0x80, 0x1_0000); write(0x90, 0x2_0000); write(0xA0, 0x3_0000)
        write(0x44, 1)
        write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK)
        // Header at 0x40000 (IN, sector 8), data at 0x50000, status at 0x60000.
        try memory.write(UInt32(0), at: 0x4_0000)
        try memory.write(UInt64(8), at: 0x4_0008)
        for (index, (address, length, flags)) in [(UInt64(0x4_0000), UInt32(16), UInt16(1)), (0x5_0000, 4096, 3), (0x6_0000, 1, 2)].enumerated() {
            let entry = GuestPhysicalAddress(0x1_0000 + 16 * UInt64(index))
            try memory.write(address, at: entry)
            try memory.write(length, at: GuestPhysicalAddress(entry.rawValue + 8))
            try memory.write(flags, at: GuestPhysicalAddress(entry.rawValue + 12))
            try memory.write(UInt16(index + 1), at: GuestPhysicalAddress(entry.rawValue + 14))
        }
    }

    /// One request: head 0 on the available ring, then the notification's register write.
    func request() {
        try? memory.write(UInt16(0), at: GuestPhysicalAddress(0x2_0004 + 2 * UInt64(available % 256)))
        available &+= 1
        try? memory.write(available, at: 0x2_0002)
        _ = transport.mmioWrite(offset: 0x50, width: 4, value: 0)
    }

    deinit { unlink(path) }
}

func registerVirtioBenchmarks() {
    Benchmark("virtio-blk 4 KiB read request (notify to used ring)") { benchmark in
        let bench = try BlockBench()
        bench.request()
        // The request must have been served (used index 1, status OK), or this measures nothing.
        guard try bench.memory.read(UInt16.self, at: 0x3_0002) == 1, try bench.memory.read(UInt8.self, at: 0x6_0000) == 0,
              !bench.transport.needsReset
        else { fatalError("the virtio-blk benchmark's request was not served") }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { bench.request() }
        benchmark.stopMeasurement()
    }

    Benchmark("baseline: pread of 4 KiB into guest RAM") { benchmark in
        let bench = try BlockBench()
        let fd = open(bench.path, O_RDONLY)
        defer { close(fd) }
        let target = try bench.memory.hostPointer(for: 0x5_0000, length: 4096)
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations { blackHole(pread(fd, target, 4096, 4096)) }
        benchmark.stopMeasurement()
    }
}
