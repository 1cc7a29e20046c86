// Per-exit-kind counts and latency distributions (HdrHistogram), collected by each vCPU thread
// with no allocation or lock, merged when the VM is paused or stopped.
import Histogram

/// Exit counts and latencies per `ExitKind`.
///
/// `roundTrip` is the time from entering the guest until the exit's handler finished: the
/// guest's execution up to the exit, the world switch, and the monitor's handling. For a guest
/// that exits in a tight loop it is the exit round-trip cost. `handling` is the monitor's part
/// alone (decode, handler chain, devices, write-back).
public struct ExitStatistics: Sendable {
    static let kinds = ExitKind.allCases.count

    public private(set) var counts: [UInt64]
    /// Round-trip latency per kind, in nanoseconds.
    public private(set) var roundTrip: [Histogram<UInt32>]
    /// Total handling time per kind, in nanoseconds.
    public private(set) var handlingNanoseconds: [UInt64]

    public init() {
        counts = Array(repeating: 0, count: Self.kinds)
        // 1 ns to 100 s at 2 significant digits: ~40 KiB per kind, allocated once here.
        // Each histogram gets its own storage (no shared copy-on-write buffer to split later).
        roundTrip = (0..<Self.kinds).map { _ in
            Histogram(lowestDiscernibleValue: 1, highestTrackableValue: 100_000_000_000, numberOfSignificantValueDigits: .two)
        }
        handlingNanoseconds = Array(repeating: 0, count: Self.kinds)
    }

    /// Records one exit. Allocates nothing.
    @inline(__always)
    public mutating func record(_ kind: ExitKind, roundTrip nanoseconds: UInt64, handling: UInt64) {
        let index = Int(kind.rawValue)
        counts[index] &+= 1
        _ = roundTrip[index].record(Swift.min(Swift.max(nanoseconds, 1), 100_000_000_000))
        handlingNanoseconds[index] &+= handling
    }

    /// Adds another vCPU's statistics to these.
    public mutating func merge(_ other: ExitStatistics) {
        for i in 0..<Self.kinds {
            counts[i] += other.counts[i]
            if other.counts[i] > 0 { roundTrip[i].add(other.roundTrip[i]) }
            handlingNanoseconds[i] += other.handlingNanoseconds[i]
        }
    }

    /// Number of exits of `kind`.
    public func count(_ kind: ExitKind) -> UInt64 { counts[Int(kind.rawValue)] }

    /// All exits of every kind.
    public var totalExits: UInt64 { counts.reduce(0, +) }

    /// The `percentile` (0-100) round-trip latency of `kind` in nanoseconds, nil if none recorded.
    public func roundTrip(_ kind: ExitKind, percentile: Double) -> UInt64? {
        let i = Int(kind.rawValue)
        return counts[i] == 0 ? nil : roundTrip[i].valueAtPercentile(percentile)
    }

    /// Median round-trip latency of `kind` in nanoseconds.
    public func medianRoundTrip(_ kind: ExitKind) -> UInt64? { roundTrip(kind, percentile: 50) }

    /// Mean handling time of `kind` in nanoseconds.
    public func meanHandling(_ kind: ExitKind) -> Double? {
        let i = Int(kind.rawValue)
        return counts[i] == 0 ? nil : Double(handlingNanoseconds[i]) / Double(counts[i])
    }

    /// The kinds that occurred, in `ExitKind` order.
    public var recordedKinds: [ExitKind] { ExitKind.allCases.filter { count($0) > 0 } }
}
