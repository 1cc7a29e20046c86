// The traditional memory balloon (virtio 1.2, 5.5 "Traditional Memory Balloon Device"): the
// host sets a target (num_pages) and the guest's driver gives that many 4 KiB pages back by
// listing them on the inflate queue; the device hands their host memory back to the kernel
// (`madvise(MADV_DONTNEED)` on HV's private anonymous guest RAM: the VMM's RSS drops, and a
// page the guest touches again reads as zeros). With free page reporting (5.5.6.6) the guest
// also lists large free blocks on its own, which are given back the same way; with the
// statistics queue (5.5.6.3) the guest reports its memory figures, refreshed on a timer.
#if canImport(Glibc)
import Glibc
#endif
import Foundation
import Synchronization

public final class VirtioBalloon: VirtioDevice {
    /// Device feature bits (5.5.3).
    public enum Feature {
        public static let statisticsQueue: UInt64 = 1 << 1
        /// The guest may deflate when it runs out of memory (the target is then a wish).
        public static let deflateOnOOM: UInt64 = 1 << 2
        public static let pageReporting: UInt64 = 1 << 5
    }

    /// The statistics a guest reports (5.5.6.3: VIRTIO_BALLOON_S_*).
    public struct Statistics: Sendable, Equatable {
        /// By tag: 0 swap in, 1 swap out, 2 major faults, 3 minor faults, 4 free memory,
        /// 5 total memory, 6 available memory, 7 disk caches, 8/9 hugetlb allocations/failures.
        public var values: [UInt16: UInt64] = [:]
        public static let names: [UInt16: String] = [
            0: "swap-in", 1: "swap-out", 2: "major-faults", 3: "minor-faults", 4: "free-memory",
            5: "total-memory", 6: "available-memory", 7: "disk-caches", 8: "hugetlb-allocations", 9: "hugetlb-failures",
        ]
        public var freeMemory: UInt64? { values[4] }
        public var totalMemory: UInt64? { values[5] }
        public var availableMemory: UInt64? { values[6] }
    }

    /// What the device has given back and seen.
    public struct Counters: Sendable, Equatable {
        /// Pages the guest put in the balloon and took out again.
        public var inflatedPages: UInt64 = 0, deflatedPages: UInt64 = 0
        /// Bytes handed back to the host kernel for inflated pages and for reported free blocks.
        public var inflatedBytesReturned: UInt64 = 0, reportedBytesReturned: UInt64 = 0
        /// Page numbers outside guest RAM (ignored).
        public var invalidPages: UInt64 = 0
        /// Statistics reports received.
        public var statisticsReports: UInt64 = 0
    }

    public static let pageSize: UInt64 = 4096
    /// Statistics entries read from one report (a guest cannot make the device read more).
    static let maximumStatistics = 16

    public var type: VirtioDeviceType { .balloon }
    public var name: String { "virtio-balloon" }
    public let features: UInt64
    /// inflateq, deflateq, statsq, reporting_vq, as offered; a driver that declines a feature has
    /// the later queues move down (Linux numbers only the queues it uses).
    public var queueSizes: [UInt16] { [128, 128, 32, 32] }

    private enum Role { case inflate, deflate, statistics, reporting, none }

    private struct State {
        var targetPages: UInt32
        var actualPages: UInt32 = 0
        var roles: [Role] = [.inflate, .deflate, .statistics, .reporting]
        /// The statistics buffer the device holds until it wants fresh figures.
        var heldStatisticsHead: UInt16?
        var refreshRequested = false
        var statistics = Statistics()
        var counters = Counters()
    }

    private let state: Mutex<State>
    private let chain = Mutex(VirtqueueChain())
    private let serveQueue = VirtioQueueCallback()
    /// The transport's configuration-change notice (its queue argument is unused).
    private let configurationChanged = VirtioQueueCallback()
    /// How often the guest is asked for fresh statistics (nil: only at start).
    public let statisticsInterval: Double?
    private let running = Atomic<Bool>(true)

    /// The statistics refresh intervals a balloon takes, in seconds.
    public static let statisticsIntervals: ClosedRange<Double> = 0.1...86_400

    /// A balloon that asks the guest for `targetBytes` (rounded down to 4 KiB pages; the
    /// 32-bit num_pages holds at most 16 TiB); with `deflateOnOOM` the guest may take pages back
    /// under memory pressure; with `statisticsInterval` (0.1 s to a day) the guest's memory
    /// statistics are refreshed that often.
    public init(targetBytes: UInt64 = 0, deflateOnOOM: Bool = false, statisticsInterval: Double? = 2) throws(ConfigurationError) {
        try Self.checkTarget(targetBytes, field: "targetBytes")
        if let statisticsInterval, !Self.statisticsIntervals.contains(statisticsInterval) {
            throw ConfigurationError(field: "statisticsInterval", value: "\(statisticsInterval)", expected: "nil (no refresh) or 0.1 to 86400 seconds")
        }
        state = Mutex(State(targetPages: UInt32(targetBytes / Self.pageSize)))
        features = Feature.statisticsQueue | Feature.pageReporting | (deflateOnOOM ? Feature.deflateOnOOM : 0)
        self.statisticsInterval = statisticsInterval
    }

    deinit { stop() }

    /// Ends the statistics timer.
    public func stop() { running.store(false, ordering: .releasing) }

    /// The pages the host asks for, and the pages the guest says it has given.
    public var targetPages: UInt32 { state.withLock { $0.targetPages } }
    public var actualPages: UInt32 { state.withLock { $0.actualPages } }
    public var counters: Counters { state.withLock { $0.counters } }
    /// The guest's last statistics report.
    public var statistics: Statistics { state.withLock { $0.statistics } }

    /// Sets a new target while the VM runs: the driver hears of it through a configuration
    /// change and inflates or deflates to it.
    public func setTarget(bytes: UInt64) throws(ConfigurationError) {
        try Self.checkTarget(bytes, field: "bytes")
        state.withLock { $0.targetPages = UInt32(bytes / Self.pageSize) }
        configurationChanged(0)
    }

    private static func checkTarget(_ bytes: UInt64, field: String) throws(ConfigurationError) {
        guard bytes / pageSize <= UInt64(UInt32.max) else {
            throw ConfigurationError(field: field, value: "\(bytes)", expected: "at most \(UInt64(UInt32.max) * pageSize) bytes (num_pages is 32 bits of 4 KiB pages)")
        }
    }

    // MARK: Configuration space (5.5.4)

    public func readConfiguration(offset: Int, width: Int) -> UInt64 {
        let (target, actual) = state.withLock { ($0.targetPages, $0.actualPages) }
        // num_pages, actual, free_page_hint_cmd_id, poison_val: little-endian 32-bit each.
        var bytes = [UInt8](repeating: 0, count: 16)
        for index in 0..<4 {
            bytes[index] = UInt8(truncatingIfNeeded: target >> (8 * UInt32(index)))
            bytes[4 + index] = UInt8(truncatingIfNeeded: actual >> (8 * UInt32(index)))
        }
        return virtioConfigurationRead(bytes, offset: offset, width: width)
    }

    // MARK: Snapshots

    /// The target and actual size the driver knows, the statistics buffer the device holds (its
    /// chain stays taken from the ring), the last report and the counters. Pages in the
    /// balloon are holes in the snapshot's memory file like every other zero page.
    public func saveState(to encoder: inout StateEncoder) {
        let state = state.withLock { $0 }
        encoder.write(state.targetPages)
        encoder.write(state.actualPages)
        encoder.write(state.heldStatisticsHead != nil)
        encoder.write(state.heldStatisticsHead ?? 0)
        encoder.write(state.refreshRequested)
        let values = state.statistics.values.sorted { $0.key < $1.key }
        encoder.write(UInt16(values.count))
        for (tag, value) in values {
            encoder.write(tag)
            encoder.write(value)
        }
        let counters = state.counters
        for value in [counters.inflatedPages, counters.deflatedPages, counters.inflatedBytesReturned,
                      counters.reportedBytesReturned, counters.invalidPages, counters.statisticsReports] { encoder.write(value) }
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let target = try decoder.read(UInt32.self, "virtio-balloon target pages")
        let actual = try decoder.read(UInt32.self, "virtio-balloon actual pages")
        let holds = try decoder.read(Bool.self, "virtio-balloon holds a statistics buffer")
        let head = try decoder.read(UInt16.self, "virtio-balloon held statistics buffer")
        let refresh = try decoder.read(Bool.self, "virtio-balloon refresh requested")
        let count = try decoder.read(UInt16.self, "virtio-balloon statistics count", below: UInt16(Self.maximumStatistics + 1))
        var statistics = Statistics()
        for _ in 0..<count {
            let tag = try decoder.read(UInt16.self, "virtio-balloon statistic tag")
            statistics.values[tag] = try decoder.read(UInt64.self, "virtio-balloon statistic value")
        }
        var counters = Counters()
        counters.inflatedPages = try decoder.read(UInt64.self, "virtio-balloon inflated pages")
        counters.deflatedPages = try decoder.read(UInt64.self, "virtio-balloon deflated pages")
        counters.inflatedBytesReturned = try decoder.read(UInt64.self, "virtio-balloon inflated bytes returned")
        counters.reportedBytesReturned = try decoder.read(UInt64.self, "virtio-balloon reported bytes returned")
        counters.invalidPages = try decoder.read(UInt64.self, "virtio-balloon invalid pages")
        counters.statisticsReports = try decoder.read(UInt64.self, "virtio-balloon statistics reports")
        state.withLock { state in
            state.targetPages = target
            state.actualPages = actual
            state.heldStatisticsHead = holds ? head : nil
            state.refreshRequested = refresh
            state.statistics = statistics
            state.counters = counters
        }
    }

    /// The driver writes `actual` (offset 4), the pages it has in the balloon.
    public func writeConfiguration(offset: Int, width: Int, value: UInt64) {
        guard offset >= 4, offset + width <= 8 else { return }
        state.withLock { state in
            var actual = state.actualPages
            for index in 0..<width {
                let shift = UInt32(8 * (offset - 4 + index))
                actual = actual & ~(0xFF << shift) | UInt32(UInt8(truncatingIfNeeded: value >> (8 * UInt64(index)))) << shift
            }
            state.actualPages = actual
        }
    }

    public func connect(serve: @escaping @Sendable (Int) -> Void) {
        serveQueue.set(serve)
        guard let interval = statisticsInterval else { return }
        let thread = Thread { [weak self] in
            while true {
                Thread.sleep(forTimeInterval: interval)
                guard let self, self.running.load(ordering: .acquiring) else { return }
                self.requestStatistics()
            }
        }
        thread.name = "virtio-balloon-stats"
        thread.start()
    }

    public func connectConfigurationChange(_ changed: @escaping @Sendable () -> Void) {
        configurationChanged.set { _ in changed() }
    }

    /// Asks the guest for fresh statistics: the held buffer goes back to the driver, which
    /// refills it and makes it available again (5.5.6.3).
    public func requestStatistics() {
        let queue = state.withLock { state -> Int? in
            guard state.heldStatisticsHead != nil else { return nil }
            state.refreshRequested = true
            return state.roles.firstIndex(of: .statistics)
        }
        if let queue { serveQueue(queue) }
    }

    /// The queues' roles follow the negotiated features.
    public func activate(features: UInt64) {
        var roles: [Role] = [.inflate, .deflate]
        if features & Feature.statisticsQueue != 0 { roles.append(.statistics) }
        if features & Feature.pageReporting != 0 { roles.append(.reporting) }
        while roles.count < queueSizes.count { roles.append(.none) }
        state.withLock { $0.roles = roles }
    }

    /// A device reset deflates everything (the driver's pages are all the guest's again).
    public func reset() {
        state.withLock { state in
            state.actualPages = 0
            state.heldStatisticsHead = nil
            state.refreshRequested = false
            state.roles = [.inflate, .deflate, .statistics, .reporting]
        }
    }

    // MARK: Queues

    public func serve(queue index: Int, _ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        let role = state.withLock { $0.roles.indices.contains(index) ? $0.roles[index] : .none }
        return try chain.withLock { (chain) throws(VirtioDeviceError) -> Bool in
            switch role {
            case .inflate, .deflate: return try pages(&queue, inflate: role == .inflate, chain: &chain, memory: memory)
            case .statistics: return try statistics(&queue, chain: &chain, memory: memory)
            case .reporting: return try reporting(&queue, chain: &chain, memory: memory)
            case .none: return false
            }
        }
    }

    /// Inflate or deflate: chains of little-endian 32-bit page frame numbers (4 KiB pages).
    private func pages(_ queue: inout Virtqueue, inflate: Bool, chain: inout VirtqueueChain, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        var used = false
        while try queue.popRequest(into: &chain, memory: memory) {
            var count: UInt64 = 0, invalid: UInt64 = 0, returned: UInt64 = 0
            // Consecutive frames are given back as one range.
            var run: (start: UInt64, pages: UInt64)?
            func giveBack() {
                guard let range = run else { return }
                run = nil
                let address = GuestPhysicalAddress(range.start * Self.pageSize), length = range.pages * Self.pageSize
                guard memory.contains(address, length: length), (try? memory.zero(count: length, at: address)) != nil else {
                    invalid += range.pages
                    return
                }
                returned += length
            }
            var offset: UInt64 = 0
            while offset + 4 <= chain.readableLength, let frame = chain.readInteger(UInt32.self, at: offset, memory: memory) {
                offset += 4
                count += 1
                guard inflate else { continue }
                if let current = run, current.start + current.pages == UInt64(frame), current.pages < 1 << 18 {
                    run = (current.start, current.pages + 1)
                } else {
                    giveBack()
                    run = (UInt64(frame), 1)
                }
            }
            giveBack()
            state.withLock { state in
                if inflate {
                    state.counters.inflatedPages += count - invalid
                    state.counters.inflatedBytesReturned += returned
                } else {
                    state.counters.deflatedPages += count
                }
                state.counters.invalidPages += invalid
            }
            queue.push(head: chain.head, written: 0, memory: memory)
            used = true
        }
        return used
    }

    /// The statistics queue: the driver's buffer of (le16 tag, le64 value) entries is read and
    /// held until the device wants fresh figures.
    private func statistics(_ queue: inout Virtqueue, chain: inout VirtqueueChain, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        var used = false
        let release = state.withLock { state -> UInt16? in
            guard state.refreshRequested, let head = state.heldStatisticsHead else { return nil }
            state.refreshRequested = false
            state.heldStatisticsHead = nil
            return head
        }
        if let release {
            queue.push(head: release, written: 0, memory: memory)
            used = true
        }
        while try queue.popRequest(into: &chain, memory: memory) {
            var report = Statistics()
            var offset: UInt64 = 0
            while offset + 10 <= chain.readableLength, report.values.count < Self.maximumStatistics,
                  let tag = chain.readInteger(UInt16.self, at: offset, memory: memory),
                  let value = chain.readInteger(UInt64.self, at: offset + 2, memory: memory)
            {
                report.values[tag] = value
                offset += 10
            }
            let previous = state.withLock { state -> UInt16? in
                state.statistics = report
                state.counters.statisticsReports += 1
                defer { state.heldStatisticsHead = chain.head }
                return state.heldStatisticsHead
            }
            // A driver that sends a second buffer while one is held gets the first one back.
            if let previous {
                queue.push(head: previous, written: 0, memory: memory)
                used = true
            }
        }
        return used
    }

    /// Free page reporting: each buffer of a chain is a free block the guest will not touch
    /// until the device returns the chain.
    private func reporting(_ queue: inout Virtqueue, chain: inout VirtqueueChain, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        var used = false
        while try queue.popRequest(into: &chain, memory: memory) {
            var returned: UInt64 = 0
            for buffer in chain.buffers {
                // Whole pages only; buffers were checked against guest RAM when popped.
                let start = (buffer.address.rawValue + Self.pageSize - 1) / Self.pageSize * Self.pageSize
                let end = (buffer.address.rawValue + UInt64(buffer.length)) / Self.pageSize * Self.pageSize
                guard start < end, (try? memory.zero(count: end - start, at: GuestPhysicalAddress(start))) != nil else { continue }
                returned += end - start
            }
            state.withLock { $0.counters.reportedBytesReturned += returned }
            queue.push(head: chain.head, written: 0, memory: memory)
            used = true
        }
        return used
    }
}
