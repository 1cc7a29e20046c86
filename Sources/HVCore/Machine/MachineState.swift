// VM states and the transitions between them (Documentation/Architecture.md, Conventions: after Virtualization.framework).

/// Where a VM is in its life.
public enum MachineState: String, Sendable, CustomStringConvertible {
    /// Built and loaded, never run.
    case created
    /// vCPU threads are running the guest.
    case running
    /// vCPU threads are parked between exits; registers and statistics may be read.
    case paused
    /// The VM has stopped for a reason and will not run again.
    case stopped
    /// A backend call failed; the VM cannot continue.
    case error

    public var description: String { rawValue }

    /// Whether moving from this state to `next` is legal.
    public func canTransition(to next: MachineState) -> Bool {
        switch (self, next) {
        case (.created, .running), (.created, .stopped): true
        case (.running, .paused), (.running, .stopped): true
        case (.paused, .running), (.paused, .stopped): true
        case (.created, .error), (.running, .error), (.paused, .error): true
        default: false
        }
    }
}
