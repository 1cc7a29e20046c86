// The protocol every exit passes through, on every backend.

/// Where an exit happened.
public struct ExitContext: Sendable {
    /// The index of the vCPU that exited (0 for the bootstrap processor).
    public var vcpuID: Int
    @inlinable public init(vcpuID: Int) { self.vcpuID = vcpuID }
}

/// Handles exits of a running vCPU.
///
/// A handler returns `nil` for exits it does not take; the next handler in the chain then gets
/// the exit (user handler first, then the device bus, then the defaults). Handlers run on the
/// vCPU's thread, concurrently when a VM has several vCPUs, and must not block for long.
public protocol ExitHandler {
    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction?
}

/// A handler that takes no exit.
public struct NoExitHandler: ExitHandler, Sendable {
    @inlinable public init() {}
    @inlinable public func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? { nil }
}

/// Two handlers in order: `second` sees only the exits `first` declines. Generic, so a chain is
/// specialised at compile time rather than dispatched through existentials.
public struct ChainedExitHandler<First: ExitHandler, Second: ExitHandler>: ExitHandler {
    public var first: First
    public var second: Second
    @inlinable public init(_ first: First, _ second: Second) {
        self.first = first
        self.second = second
    }
    @inlinable public func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        if let action = first.handle(exit, context: context) { return action }
        return second.handle(exit, context: context)
    }
}

extension ChainedExitHandler: Sendable where First: Sendable, Second: Sendable {}

extension ExitHandler {
    /// This handler, then `next` for the exits this one declines.
    @inlinable public func then<Next: ExitHandler>(_ next: Next) -> ChainedExitHandler<Self, Next> {
        ChainedExitHandler(self, next)
    }
}

/// A handler made from a closure, for small handlers and examples.
public struct ClosureExitHandler: ExitHandler, Sendable {
    @usableFromInline let body: @Sendable (VMExit, ExitContext) -> ExitAction?
    /// `body` runs on vCPU threads, concurrently when a VM has several vCPUs: the compiler
    /// checks that what it captures is safe to share (a `Mutex`, an atomic, constants).
    @inlinable public init(_ body: @escaping @Sendable (VMExit, ExitContext) -> ExitAction?) { self.body = body }
    @inlinable public func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        body(exit, context)
    }
}
