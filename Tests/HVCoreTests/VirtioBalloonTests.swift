// The memory balloon against queues the test writes into guest memory: inflation hands pages
// back to the host kernel (mincore shows them gone), statistics are held and refreshed, free
// page reporting gives back whole pages, and a new target reaches the driver as a
// configuration change.
import Foundation
import HVCore
import Testing

/// A balloon behind a test driver with the features `features` (of those offered) accepted
/// and one TestQueue per queue the driver would set up.
final class BalloonBench {
    let device: VirtioBalloon
    let driver: VirtioTestDriver<VirtioBalloon>
    var queues: [TestQueue] = []

    /// `primeStatistics`: a statistics buffer made available (and notified) before DRIVER_OK,
    /// as Linux's driver does in probe.
    init(targetBytes: UInt64 = 0, accept: UInt64 = VirtioBalloon.Feature.statisticsQueue | VirtioBalloon.Feature.pageReporting,
         primeStatistics: [UInt8]? = nil) throws {
        device = try VirtioBalloon(targetBytes: targetBytes, statisticsInterval: nil)
        driver = try VirtioTestDriver(device, size: 16, memorySize: 64 << 20)
        let features = VirtioFeature.version1 | accept
        for status in [0, VirtioStatus.acknowledge, VirtioStatus.acknowledge | VirtioStatus.driver] { driver.write(0x70, status) }
        driver.write(0x24, 0); driver.write(0x20, UInt32(truncatingIfNeeded: features))
        driver.write(0x24, 1); driver.write(0x20, UInt32(features >> 32))
        driver.write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
        // Linux numbers only the queues it uses: inflate, deflate, then stats and reporting if accepted.
        let count = 2 + (accept & VirtioBalloon.Feature.statisticsQueue != 0 ? 1 : 0) + (accept & VirtioBalloon.Feature.pageReporting != 0 ? 1 : 0)
        for index in 0..<count { queues.append(TestQueue(UInt32(index), base: 0x10_0000 * UInt64(index + 1), driver: driver)) }
        if let primeStatistics { try queues[2].post(driver, bytes: primeStatistics) }
        driver.write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK)
    }

    /// Whether each 4 KiB page at `address` is resident in the host process (mincore).
    func resident(_ address: UInt64, pages: Int) throws -> [Bool] {
        let pointer = try driver.memory.hostPointer(for: GuestPhysicalAddress(address), length: UInt64(pages) * 4096)
        var vector = [UInt8](repeating: 0, count: pages)
        #expect(mincore(pointer, pages * 4096, &vector) == 0)
        return vector.map { $0 & 1 == 1 }
    }

    static func le32(_ values: [UInt32]) -> [UInt8] { values.flatMap { v in (0..<4).map { UInt8(truncatingIfNeeded: v >> (8 * $0)) } } }
}

@Suite("virtio-balloon")
struct VirtioBalloonTests {
    @Test("a target past 32-bit num_pages or a statistics interval outside 0.1 s to a day is an error naming the field, not a clamp")
    func extremeSettings() throws {
        let largest = UInt64(UInt32.max) * 4096
        #expect(throws: ConfigurationError.self) { try VirtioBalloon(targetBytes: largest + 4096) }
        #expect(throws: ConfigurationError.self) { try VirtioBalloon(targetBytes: .max) }
        for interval in [0, -1, 0.01, .nan, .infinity, 1e308] {
            #expect(throws: ConfigurationError.self, "\(interval)") { try VirtioBalloon(statisticsInterval: interval) }
        }
        let balloon = try VirtioBalloon(targetBytes: largest + 4095, statisticsInterval: nil)
        #expect(balloon.targetPages == UInt32.max)
        #expect(throws: ConfigurationError.self) { try balloon.setTarget(bytes: .max) }
        #expect(balloon.targetPages == UInt32.max, "a refused target changes nothing")
    }

    @Test("num_pages is the target; the driver's actual is kept; a new target moves ConfigGeneration and raises a configuration interrupt")
    func configuration() throws {
        let bench = try BalloonBench(targetBytes: 64 << 20)
        #expect(bench.driver.transport.mmioRead(offset: 0x100, width: 4) == 16384)
        _ = bench.driver.transport.mmioWrite(offset: 0x104, width: 4, value: 1000)
        #expect(bench.device.actualPages == 1000 && bench.driver.transport.mmioRead(offset: 0x104, width: 4) == 1000)
        let generation = bench.driver.read(0xFC)
        try bench.device.setTarget(bytes: 8 << 20)
        #expect(bench.driver.transport.mmioRead(offset: 0x100, width: 4) == 2048)
        #expect(bench.driver.read(0xFC) != generation)
        #expect(bench.driver.read(0x60) & 2 == 2, "configuration change interrupt")
        #expect(bench.driver.read(0x10) & UInt32(VirtioBalloon.Feature.statisticsQueue | VirtioBalloon.Feature.pageReporting) != 0)
    }

    @Test("inflated pages go back to the host kernel (no longer resident, read as zeros); frames outside RAM are counted and ignored")
    func inflate() throws {
        let bench = try BalloonBench()
        // Guest pages 0x1000-0x1007 (16 MiB in) are touched, then put in the balloon.
        let start: UInt64 = 0x1000
        try bench.driver.memory.fill(0xAA, count: 8 * 4096, at: GuestPhysicalAddress(start * 4096))
        #expect(try bench.resident(start * 4096, pages: 8).allSatisfy { $0 })
        let frames: [UInt32] = (0..<8).map { UInt32(start) + $0 } + [0x7FFF_FFFF]
        try bench.queues[0].post(bench.driver, bytes: BalloonBench.le32(frames))
        #expect(try bench.queues[0].usedCount(bench.driver) == 1)
        #expect(try bench.resident(start * 4096, pages: 8).allSatisfy { !$0 })
        #expect(try bench.driver.memory.readBytes(at: GuestPhysicalAddress(start * 4096), count: 4096).allSatisfy { $0 == 0 })
        let counters = bench.device.counters
        #expect(counters.inflatedPages == 8 && counters.invalidPages == 1 && counters.inflatedBytesReturned == 8 * 4096)
        try bench.queues[1].post(bench.driver, bytes: BalloonBench.le32([UInt32(start)]))
        #expect(bench.device.counters.deflatedPages == 1)
    }

    @Test("statistics: the buffer primed before DRIVER_OK is read once the driver is ready, and held; a refresh request hands it back for the driver to refill; at most 16 entries are read")
    func statistics() throws {
        var report: [UInt8] = []
        for (tag, value) in [(UInt16(4), UInt64(100 << 20)), (5, 256 << 20), (6, 120 << 20)] {
            report += (0..<2).map { UInt8(truncatingIfNeeded: tag >> (8 * $0)) } + (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
        }
        // The buffer is primed before DRIVER_OK and read once the driver is ready.
        let bench = try BalloonBench(primeStatistics: report)
        #expect(try bench.queues[2].usedCount(bench.driver) == 0, "held until the device wants fresh figures")
        #expect(bench.device.statistics.freeMemory == 100 << 20 && bench.device.statistics.totalMemory == 256 << 20)
        bench.device.requestStatistics()  // what the timer does: the transport serves the queue
        #expect(try bench.queues[2].usedCount(bench.driver) == 1)
        // A report of 1000 entries (10,000 bytes in 2 buffers' worth) is read only as far as 16.
        var flood: [UInt8] = []
        for tag in 0..<800 { flood += [UInt8(truncatingIfNeeded: tag), UInt8(tag >> 8)] + [UInt8](repeating: 1, count: 8) }
        try bench.queues[2].post(bench.driver, bytes: flood)
        #expect(bench.device.statistics.values.count == 16)
        #expect(bench.device.counters.statisticsReports == 2)
    }

    @Test("free page reporting gives back the whole pages of each reported block; with statistics declined it is queue 2")
    func reporting() throws {
        for accept in [VirtioBalloon.Feature.statisticsQueue | VirtioBalloon.Feature.pageReporting, VirtioBalloon.Feature.pageReporting] {
            let bench = try BalloonBench(accept: accept)
            let block: UInt64 = 0x200_0000  // 32 MiB in, 2 MiB
            try bench.driver.memory.fill(0x55, count: 2 << 20, at: GuestPhysicalAddress(block))
            var queue = bench.queues.last!
            try queue.post(bench.driver, address: block, length: 2 << 20, writable: true)
            #expect(try queue.usedCount(bench.driver) == 1)
            #expect(try bench.resident(block, pages: 512).allSatisfy { !$0 })
            #expect(bench.device.counters.reportedBytesReturned == 2 << 20)
            #expect(bench.driver.read(0x70) & VirtioStatus.deviceNeedsReset == 0)
        }
    }
}
