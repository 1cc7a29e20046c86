// Micro-benchmarks of HV's pure parts, run with `swift package benchmark`.
// Each area adds its own `register...Benchmarks()` in its own file and calls it here.
import Benchmark

let benchmarks: @Sendable () -> Void = {
    Benchmark.defaultConfiguration = .init(metrics: [.wallClock, .throughput, .mallocCountTotal],
                                           maxDuration: .seconds(2), maxIterations: 1_000_000)
    registerDeviceBusBenchmarks()
    registerExitBenchmarks()
    registerPagingBenchmarks()
    registerVMXBenchmarks()
    registerVirtioBenchmarks()
}
