// The demo guest's own exit handler, shared by every backend: `hv demo` runs it on KVM, and the
// bare-metal image runs it on its SVM engine (Documentation/BareMetal.md). It answers reads of
// port 0x60 with a counter and keeps the POST codes written to port 0x80. Embedded-safe: two
// atomics, no lock, nothing allocated.
import Synchronization

public final class DemoExitHandler: ExitHandler, Sendable {
    /// The port the guest reads its counter from, and the one it writes POST codes to.
    public static let counterPort: IOPort = 0x60
    public static let postCodePort: IOPort = 0x80
    /// POST codes kept: eight, one per byte of `codes`.
    public static let postCodeCapacity = 8

    private let counter = Atomic<UInt32>(0)
    private let codes = Atomic<UInt64>(0)
    private let codeCount = Atomic<Int>(0)

    public init() {}

    /// How many times the guest read the counter.
    public var counterReads: UInt32 { counter.load(ordering: .relaxed) }

    /// The POST codes written, oldest first (the first eight).
    public var postCodes: [UInt8] {
        let count = min(codeCount.load(ordering: .acquiring), Self.postCodeCapacity)
        let packed = codes.load(ordering: .relaxed)
        var result: [UInt8] = []
        for index in 0..<count { result.append(UInt8(truncatingIfNeeded: packed >> (8 * UInt64(index)))) }
        return result
    }

    public func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .portIn(let io) where io.port == Self.counterPort:
            return .resumeWith(UInt64(counter.add(1, ordering: .relaxed).newValue))
        case .portOut(let io) where io.port == Self.postCodePort:
            let index = codeCount.add(1, ordering: .acquiringAndReleasing).oldValue
            if index < Self.postCodeCapacity {
                codes.bitwiseOr(UInt64(UInt8(truncatingIfNeeded: io.value)) << (8 * UInt64(index)), ordering: .relaxed)
            }
            return .resume
        default:
            return nil
        }
    }
}
