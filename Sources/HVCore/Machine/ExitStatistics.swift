// Per-exit-kind counts and latency distributions (HdrHistogram), collected by each vCPU thread
// with no allocation or lock, merged when the VM is paused or stopped.
import Histogram

/// Exit counts and latencies per `ExitKind`.
///
/// `roundTrip` is the time from entering the guest until the exit's handler finished: the
/// guest's execution up to the exit, the world switch, and the monitor's handling. For a guest
/// that exits in a tight loop it is the exit round-trip cost. `handling` is the monitor's part
/// alone (decode, handler chain, devices, write-back).
///
/// Times are taken with the time-stamp counter (RDTSC, SDM Vol. 3B, 18.17): about 20 cycles a
/// read, against ~50 ns for a vDSO `clock_gettime` right after a VM exit. They are stored in
/// cycles and converted with `nanosecondsPerCycle`, which the machine measures over the run
/// (TSC against CLOCK_MONOTONIC from start to stop). Hosts with an invariant TSC
/// (CPUID.80000007H:EDX[8]) make the conversion exact.
public struct ExitStatistics: Sendable {
    static let kinds = ExitKind.allCases.count
    /// Longest round trip recorded: about 100 s at 4 GHz.
    static let maximumCycles: UInt64 = 400_000_000_000

    public private(set) var counts: [UInt64]
    /// Round-trip latency per kind, in TSC cycles.
    public private(set) var roundTripCycles: [Histogram<UInt32>]
    /// Total handling time per kind, in TSC cycles.
    public private(set) var handlingCycles: [UInt64]
    /// The length of one TSC cycle in nanoseconds, as measured for this run.
    public var nanosecondsPerCycle: Double = 1

    public init() {
        counts = Array(repeating: 0, count: Self.kinds)
        // 1 cycle to ~100 s at 2 significant digits: ~40 KiB per kind, allocated once here.
        // Each histogram gets its own storage (no shared copy-on-write buffer to split later).
        roundTripCycles = (0..<Self.kinds).map { _ in
            Histogram(lowestDiscernibleValue: 1, highestTrackableValue: Self.maximumCycles, numberOfSignificantValueDigits: .two)
        }
        handlingCycles = Array(repeating: 0, count: Self.kinds)
    }

    /// Records one exit, times in TSC cycles. Allocates nothing.
    @inline(__always)
    public mutating func record(_ kind: ExitKind, roundTrip cycles: UInt64, handling: UInt64) {
        let index = Int(kind.rawValue)
        counts[index] &+= 1
        _ = roundTripCycles[index].record(Swift.min(Swift.max(cycles, 1), Self.maximumCycles))
        handlingCycles[index] &+= handling
    }

    /// Adds another vCPU's statistics to these.
    public mutating func merge(_ other: ExitStatistics) {
        for i in 0..<Self.kinds {
            counts[i] += other.counts[i]
            if other.counts[i] > 0 { roundTripCycles[i].add(other.roundTripCycles[i]) }
            handlingCycles[i] += other.handlingCycles[i]
        }
    }

    /// Makes these statistics a copy of `other` in place, allocating nothing (both have the
    /// same layout): how a vCPU publishes its figures from its run loop.
    public mutating func overwrite(with other: ExitStatistics) {
        for i in 0..<Self.kinds {
            if counts[i] > 0 || other.counts[i] > 0 {
                roundTripCycles[i].reset()
                if other.counts[i] > 0 { roundTripCycles[i].add(other.roundTripCycles[i]) }
            }
            counts[i] = other.counts[i]
            handlingCycles[i] = other.handlingCycles[i]
        }
        nanosecondsPerCycle = other.nanosecondsPerCycle
    }

    /// Number of exits of `kind`.
    public func count(_ kind: ExitKind) -> UInt64 { counts[Int(kind.rawValue)] }

    /// All exits of every kind.
    public var totalExits: UInt64 { counts.reduce(0, +) }

    /// The `percentile` (0-100) round-trip latency of `kind` in nanoseconds, nil if none recorded.
    public func roundTrip(_ kind: ExitKind, percentile: Double) -> UInt64? {
        let i = Int(kind.rawValue)
        guard counts[i] > 0 else { return nil }
        return UInt64((Double(roundTripCycles[i].valueAtPercentile(percentile)) * nanosecondsPerCycle).rounded())
    }

    /// Exits of `kind` whose round trip took at most `nanoseconds` (to the histogram's two
    /// significant digits): the cumulative buckets of a Prometheus histogram.
    public func roundTripCount(_ kind: ExitKind, atMostNanoseconds nanoseconds: UInt64) -> UInt64 {
        let i = Int(kind.rawValue)
        guard counts[i] > 0, nanosecondsPerCycle > 0 else { return 0 }
        let cycles = Double(nanoseconds) / nanosecondsPerCycle
        guard cycles >= 1 else { return 0 }
        return roundTripCycles[i].count(within: 0...UInt64(Swift.min(cycles, Double(Self.maximumCycles))))
    }

    /// Mean round-trip latency of `kind` in nanoseconds (to the histogram's precision).
    public func meanRoundTrip(_ kind: ExitKind) -> Double? {
        let i = Int(kind.rawValue)
        return counts[i] == 0 ? nil : roundTripCycles[i].mean * nanosecondsPerCycle
    }

    /// Median round-trip latency of `kind` in nanoseconds.
    public func medianRoundTrip(_ kind: ExitKind) -> UInt64? { roundTrip(kind, percentile: 50) }

    /// Mean handling time of `kind` in nanoseconds.
    public func meanHandling(_ kind: ExitKind) -> Double? {
        let i = Int(kind.rawValue)
        return counts[i] == 0 ? nil : Double(handlingCycles[i]) * nanosecondsPerCycle / Double(counts[i])
    }

    /// The kinds that occurred, in `ExitKind` order.
    public var recordedKinds: [ExitKind] { ExitKind.allCases.filter { count($0) > 0 } }
}
