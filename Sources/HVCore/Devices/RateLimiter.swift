// Token buckets for a device's bandwidth and operations, the quality-of-service limits
// Firecracker's rate limiters give each block and network device
// (https://github.com/firecracker-microvm/firecracker/blob/main/docs/api_requests/patch-block.md):
// a bucket refills at its rate up to its capacity, a request takes its tokens, and a request that
// finds too few waits until the bucket has them.
import Foundation
import Synchronization

/// One token bucket: `rate` tokens a second, at most `capacity` saved up.
///
/// A request larger than the capacity is let through once the bucket is full and leaves it in
/// debt (a negative budget), so any size passes and the long-run rate is exactly `rate`.
public struct TokenBucket: Sendable, Equatable {
    /// Tokens added per second (bytes/s for bandwidth, requests/s for operations).
    public let rate: UInt64
    /// The most tokens saved up: how large a burst may be.
    public let capacity: UInt64
    /// Tokens available now (negative: owed by an oversized request).
    private(set) var budget: Double
    private var updated: UInt64?

    /// A bucket of `rate` tokens a second (at least 1) that may save up `burst` seconds' worth
    /// (0.1 s by default; more than 0 and at most an hour), starting full with at least one token.
    public init(rate: UInt64, burst: Double = 0.1) throws(ConfigurationError) {
        guard rate >= 1 else { throw ConfigurationError(field: "rate", value: "0", expected: "at least 1 token a second") }
        guard burst > 0, burst <= 3600 else {
            throw ConfigurationError(field: "burst", value: "\(burst)", expected: "more than 0 and at most 3600 seconds' worth of tokens")
        }
        self.rate = rate
        // At most 2^64 - 1 tokens (a rate near 2^64 saved up for a while): the bucket is then unlimited in practice.
        let saved = Double(rate) * burst
        self.capacity = saved >= 0x1p64 ? UInt64.max : max(1, UInt64(saved))
        self.budget = Double(capacity)
    }

    private mutating func refill(now: UInt64) {
        if let updated, now > updated {
            budget = min(Double(capacity), budget + Double(now - updated) * Double(rate) / 1e9)
        }
        updated = max(updated ?? now, now)
    }

    /// Takes `tokens` at time `now` (nanoseconds, monotonic) and returns 0, or takes nothing and
    /// returns how many nanoseconds to wait before asking again.
    public mutating func take(_ tokens: UInt64, now: UInt64) -> UInt64 {
        refill(now: now)
        let needed = Double(min(tokens, capacity))
        // A debt can be larger than 2^64 ns' worth at a low rate: the wait saturates (584 years).
        guard budget >= needed else { return UInt64(exactly: ((needed - budget) * 1e9 / Double(rate)).rounded(.up)) ?? UInt64.max }
        budget -= Double(tokens)
        return 0
    }

    /// Gives back `tokens` taken for a request that another bucket then refused.
    mutating func giveBack(_ tokens: UInt64) { budget = min(Double(capacity), budget + Double(tokens)) }
}

/// A device's limits: bytes and operations, each optional.
public struct RateLimit: Sendable, Equatable {
    public var bandwidth: TokenBucket?
    public var operations: TokenBucket?

    public init(bandwidth: TokenBucket? = nil, operations: TokenBucket? = nil) {
        self.bandwidth = bandwidth
        self.operations = operations
    }

    /// No limit.
    public static let none = RateLimit()

    public var isLimited: Bool { bandwidth != nil || operations != nil }

    /// Takes one operation of `bytes` at `now` from both buckets and returns 0, or takes nothing
    /// and returns the nanoseconds to wait.
    public mutating func take(bytes: UInt64, now: UInt64) -> UInt64 {
        let wait = operations?.take(1, now: now) ?? 0
        guard wait == 0 else { return wait }
        let bandwidthWait = bandwidth?.take(bytes, now: now) ?? 0
        if bandwidthWait > 0 { operations?.giveBack(1) }
        return bandwidthWait
    }
}

extension TokenBucket {
    /// Takes `tokens` whatever the budget, into debt if need be: for a cost known only after the
    /// fact (a received frame's length).
    mutating func charge(_ tokens: UInt64, now: UInt64) {
        refill(now: now)
        budget -= Double(tokens)
    }
}

extension RateLimit {
    /// Charges `bytes` to the bandwidth bucket after the fact (see `TokenBucket.charge`).
    mutating func charge(bytes: UInt64, now: UInt64) {
        bandwidth?.charge(bytes, now: now)
    }
}

/// A device queue's rate limit as a device uses it: admit a request or say how long to wait,
/// and serve the queue again once, when the wait is over. Changeable while the VM runs.
public final class QueueThrottle: Sendable {
    private struct State {
        var limit: RateLimit
        var retryPending = false
        var throttled: UInt64 = 0
    }
    private let state: Mutex<State>
    private let clock: @Sendable () -> UInt64

    /// `clock` gives monotonic nanoseconds (tests pass their own).
    public init(_ limit: RateLimit, clock: (@Sendable () -> UInt64)? = nil) {
        state = Mutex(State(limit: limit))
        self.clock = clock ?? { monotonicNanoseconds() }
    }

    /// The limit in force.
    public var limit: RateLimit { state.withLock { $0.limit } }

    /// Replaces the limit (its buckets start full).
    public func set(_ limit: RateLimit) { state.withLock { $0.limit = limit } }

    /// How many times a request had to wait.
    public var throttledRequests: UInt64 { state.withLock { $0.throttled } }

    /// Takes one operation of `bytes`, or returns the nanoseconds to wait (nil: go ahead).
    func admit(bytes: UInt64) -> UInt64? {
        state.withLock { state -> UInt64? in
            guard state.limit.isLimited else { return nil }
            let wait = state.limit.take(bytes: bytes, now: clock())
            guard wait > 0 else { return nil }
            state.throttled += 1
            return wait
        }
    }

    /// Charges `bytes` after the fact (a received frame, admitted with `admit(bytes: 0)`).
    func charge(bytes: UInt64) {
        state.withLock { state in
            guard state.limit.isLimited else { return }
            state.limit.charge(bytes: bytes, now: clock())
        }
    }

    /// Gives back the operation `admit` took for a request that turned out not to exist (a
    /// receive attempt that found no frame).
    func refundOperation() {
        state.withLock { $0.limit.operations?.giveBack(1) }
    }

    /// Calls `serve` after `nanoseconds` (at most 10 s), unless a call is already pending.
    func retry(after nanoseconds: UInt64, _ serve: @escaping @Sendable () -> Void) {
        let schedule = state.withLock { state -> Bool in
            defer { state.retryPending = true }
            return !state.retryPending
        }
        guard schedule else { return }
        DispatchQueue.global().asyncAfter(deadline: .now() + .nanoseconds(Int(min(nanoseconds, 10_000_000_000)))) { [weak self] in
            guard let self else { return }
            state.withLock { $0.retryPending = false }
            serve()
        }
    }
}
