// VM lifecycle events and periodic metrics, for the server-sent-events stream (GET /v1/events)
// and the recent-events list: every subscriber gets every event after it subscribed; the last
// `capacity` events are kept for clients that connect later (and for the dashboard's log).
import Foundation
import NIOConcurrencyHelpers

public struct VMEvent: Codable, Sendable, Equatable {
    /// Increasing from 1 in this daemon's life: the SSE `id`, so a client can say where it was.
    public var id: UInt64
    /// RFC 3339, UTC.
    public var time: String
    /// vm.created, vm.started, vm.stopped, vm.exited, vm.crashed, vm.restarting, vm.deleted,
    /// vm.paused, vm.resumed, vm.reset, vm.metrics, alert.
    public var type: String
    public var vm: String
    /// What happened, for people ("exited with status 2: the guest crashed").
    public var message: String
    /// Figures, for `vm.metrics` (exits per second, RSS bytes, ...).
    public var values: [String: Double]?
}

public final class EventBus: Sendable {
    private struct State {
        var nextID: UInt64 = 1
        var recent: [VMEvent] = []
        var subscribers: [UInt64: AsyncStream<VMEvent>.Continuation] = [:]
        var nextSubscriber: UInt64 = 0
    }

    private let state = NIOLockedValueBox(State())
    public let capacity: Int

    public init(capacity: Int = 1000) { self.capacity = capacity }

    /// Publishes an event to every subscriber and keeps it among the recent ones.
    @discardableResult
    public func publish(_ type: String, vm: String, message: String, values: [String: Double]? = nil) -> VMEvent {
        state.withLockedValue { state in
            let event = VMEvent(id: state.nextID, time: ISO8601DateFormatter().string(from: Date()), type: type, vm: vm,
                                message: message, values: values)
            state.nextID += 1
            state.recent.append(event)
            if state.recent.count > capacity { state.recent.removeFirst(state.recent.count - capacity) }
            for continuation in state.subscribers.values { continuation.yield(event) }
            return event
        }
    }

    /// Recent events after `id` (all kept ones for 0), oldest first.
    public func recent(after id: UInt64 = 0, types: Set<String>? = nil) -> [VMEvent] {
        state.withLockedValue { state in state.recent.filter { $0.id > id && (types?.contains($0.type) ?? true) } }
    }

    /// A stream of the events from now on, first the kept ones after `id` (a reconnecting
    /// client's Last-Event-ID). A slow reader loses the oldest of what it has not read (the
    /// stream holds `capacity` events), never slows the daemon.
    public func subscribe(after id: UInt64? = nil) -> AsyncStream<VMEvent> {
        let (stream, continuation) = AsyncStream.makeStream(of: VMEvent.self, bufferingPolicy: .bufferingNewest(capacity))
        let key = state.withLockedValue { state in
            if let id { for event in state.recent where event.id > id { continuation.yield(event) } }
            let key = state.nextSubscriber
            state.nextSubscriber += 1
            state.subscribers[key] = continuation
            return key
        }
        continuation.onTermination = { [weak self] _ in
            _ = self?.state.withLockedValue { $0.subscribers.removeValue(forKey: key) }
        }
        return stream
    }

    /// Sends every subscriber an event with id 0, not kept: an SSE comment that tells a stream
    /// whose client has gone away that it has (its write fails), and keeps proxies from timing out.
    public func keepAlive() {
        let continuations = state.withLockedValue { Array($0.subscribers.values) }
        let event = VMEvent(id: 0, time: ISO8601DateFormatter().string(from: Date()), type: "keep-alive", vm: "", message: "")
        for continuation in continuations { continuation.yield(event) }
    }

    /// Ends every stream (the daemon is shutting down).
    public func finish() {
        let continuations = state.withLockedValue { state in
            defer { state.subscribers.removeAll() }
            return Array(state.subscribers.values)
        }
        for continuation in continuations { continuation.finish() }
    }
}
