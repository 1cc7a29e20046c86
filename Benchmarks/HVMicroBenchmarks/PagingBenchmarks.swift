// EPT walks per second, uncached (the full walk) and through the translation cache, for 4 KiB,
// 2 MiB and 1 GiB mappings (issue 4: cached must be >= 5x uncached for 4-level 4 KiB).
import Benchmark
import HVModel

func registerPagingBenchmarks() {
    // 1000 walks per measured iteration (scaledIterations), so timer overhead (~80 ns here)
    // does not hide the walk; results are per walk.
    let configuration = Benchmark.Configuration(metrics: [.wallClock, .throughput, .mallocCountTotal], scalingFactor: .kilo,
                                                maxDuration: .seconds(2), maxIterations: 100_000)
    let cases: [(String, Bool, UInt64)] = [("4 KiB", false, 2 << 20), ("2 MiB", true, 64 << 20), ("1 GiB", true, 4 << 30)]
    for (name, huge, size) in cases {
        var options = EPTBuilderOptions(hugePages: huge)
        if name == "2 MiB" { options.capabilities = EPTCapabilities(rawValue: EPTCapabilities.modern.rawValue & ~(1 << 17)) }
        // 256 addresses spread over the mapping: a working set the cache holds.
        let addresses = (0..<256).map { GuestPhysicalAddress(UInt64($0) * (size / 256) + 0x18) }
        Benchmark("Paging EPT walk uncached, \(name) pages", configuration: configuration) { benchmark in
            var builder = try EPTBuilder(tables: PageTablePool(), options: options)
            try builder.identityMap(0, size: size)
            let walker = builder.walker()
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations {
                blackHole(try walker.translate(addresses[i & 255], .read, memory: &builder.tables))
            }
            benchmark.stopMeasurement()
        }
        Benchmark("Paging EPT walk cached, \(name) pages", configuration: configuration) { benchmark in
            var builder = try EPTBuilder(tables: PageTablePool(), options: options)
            try builder.identityMap(0, size: size)
            let walker = builder.walker()
            var cache = EPTTranslationCache()
            for a in addresses { _ = try cache.translate(a, .read, walker: walker, memory: &builder.tables) }
            benchmark.startMeasurement()
            for i in benchmark.scaledIterations {
                blackHole(try cache.translate(addresses[i & 255], .read, walker: walker, memory: &builder.tables))
            }
            benchmark.stopMeasurement()
        }
    }
}
