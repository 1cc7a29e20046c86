// Per-kind, per-side distributions: every recorded interval goes into an HdrHistogram in TSC
// cycles; nanoseconds come from the TSC frequency measured over the whole run.
import Histogram

/// One side's (HVCore's or C's) results for one kind, over all its rounds.
struct SideResult {
    /// Cycles per sample, 1 to 10^12 at three significant digits.
    var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 1_000_000_000_000,
                                      numberOfSignificantValueDigits: .three)
    var samples = 0
    var exits: UInt64 = 0
    var allocations: UInt64 = 0
    var cpus: Set<Int32> = []
    /// Each round's median, in cycles: how much rounds differ.
    var roundMedians: [UInt64] = []

    /// Adds a round's samples from `buffer`, each divided by `divisor` (loop iterations per sample).
    mutating func add(_ outcome: RoundOutcome, from buffer: SampleBuffer, divisor: UInt64) {
        var round = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 1_000_000_000_000,
                                      numberOfSignificantValueDigits: .three)
        for index in 0..<outcome.recorded {
            let value = max(buffer.base[index] / divisor, 1)
            _ = round.record(value)
        }
        histogram.add(round)
        roundMedians.append(round.valueAtPercentile(50))
        samples += outcome.recorded
        exits += outcome.exits
        allocations += outcome.allocations
        cpus.insert(outcome.cpu)
    }

    /// The figures a report shows.
    func figures(cyclesPerNanosecond: Double) -> Figures {
        Figures(histogram: histogram, samples: samples, allocations: allocations, cpus: cpus.sorted(),
                roundMedians: roundMedians, cyclesPerNanosecond: cyclesPerNanosecond)
    }
}

/// Percentiles, max and mean in cycles and nanoseconds.
struct Figures: Codable {
    static let percentiles: [(key: String, label: String, value: Double)] = [
        ("p50", "p50", 50), ("p90", "p90", 90), ("p99", "p99", 99), ("p999", "p99.9", 99.9),
    ]

    var samples: Int
    var p50Cycles: UInt64, p90Cycles: UInt64, p99Cycles: UInt64, p999Cycles: UInt64, maxCycles: UInt64
    var meanCycles: Double
    var p50Ns: Double, p90Ns: Double, p99Ns: Double, p999Ns: Double, maxNs: Double, meanNs: Double
    /// Heap allocations on the measuring thread during the recorded exits, and per exit.
    var allocations: UInt64
    var allocationsPerExit: Double
    /// CPUs the measuring thread was seen on at the end of its rounds.
    var cpus: [Int32]
    var roundMediansCycles: [UInt64]

    init(histogram: Histogram<UInt64>, samples: Int, allocations: UInt64, cpus: [Int32], roundMedians: [UInt64],
         cyclesPerNanosecond: Double)
    {
        self.samples = samples
        p50Cycles = histogram.valueAtPercentile(50)
        p90Cycles = histogram.valueAtPercentile(90)
        p99Cycles = histogram.valueAtPercentile(99)
        p999Cycles = histogram.valueAtPercentile(99.9)
        maxCycles = histogram.max
        meanCycles = histogram.mean
        func ns(_ cycles: Double) -> Double { (cycles / cyclesPerNanosecond * 10).rounded() / 10 }
        p50Ns = ns(Double(p50Cycles))
        p90Ns = ns(Double(p90Cycles))
        p99Ns = ns(Double(p99Cycles))
        p999Ns = ns(Double(p999Cycles))
        maxNs = ns(Double(maxCycles))
        meanNs = ns(meanCycles)
        self.allocations = allocations
        allocationsPerExit = samples == 0 ? 0 : Double(allocations) / Double(samples)
        self.cpus = cpus
        roundMediansCycles = roundMedians
    }

    /// Nanosecond values in table order: p50, p90, p99, p99.9, max, mean.
    var nanoseconds: [Double] { [p50Ns, p90Ns, p99Ns, p999Ns, maxNs, meanNs] }
}

/// Everything measured for one kind.
struct KindResult {
    var kind: BenchKind
    var hvcore = SideResult()
    var baseline: SideResult?

    /// HVCore median / C median.
    var ratio: Double? {
        guard let baseline, baseline.samples > 0, hvcore.samples > 0 else { return nil }
        return Double(hvcore.histogram.valueAtPercentile(50)) / Double(baseline.histogram.valueAtPercentile(50))
    }

    /// HVCore mean / C mean.
    var meanRatio: Double? {
        guard let baseline, baseline.samples > 0, hvcore.samples > 0 else { return nil }
        return hvcore.histogram.mean / baseline.histogram.mean
    }
}
