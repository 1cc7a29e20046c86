// What a handler decides about an exit, and why a VM stopped.

/// What the monitor does after handling an exit.
public enum ExitAction: Sendable, Equatable {
    /// Continue the guest. For an `IN` the handler has filled `PortIO.data` itself.
    case resume
    /// Continue the guest with a value for the access that exited: the data of an `IN`
    /// (count 1), of an MMIO read, or of an `RDMSR`. Truncated to the access's width.
    case resumeWith(UInt64)
    /// Continue the guest but make the access fail the way hardware would:
    /// `#GP(0)` for an MSR access (SDM Vol. 4, "RDMSR"/"WRMSR").
    case fault
    /// Stop the VM, reporting `reason`.
    case stop(StopReason)
    /// Reset the VM (a real PC's reset line: i8042 pulse, port 0xCF9). The monitor's reset
    /// policy decides: restart the guest in place, or stop with `StopReason.reset`.
    case reset
    /// Put the machine to sleep (ACPI S3, suspend to RAM: ACPI 6.5, 16.1.3): every vCPU stops
    /// and RAM keeps its contents until a wake event, when the processors start again from the
    /// firmware waking vector (16.3.2).
    case suspend
}

/// Why a VM stopped. Every stop has one; none is silent.
public enum StopReason: Sendable, Equatable {
    /// The guest wrote `code` to the debug-exit port.
    case debugExit(code: UInt32)
    /// The guest executed `HLT` with nothing to wake it and the configuration stops on halt.
    case halted
    /// The guest triple-faulted (SDM Vol. 3A, 6.15: shutdown).
    case shutdown
    /// VM entry failed with the hardware's reason code.
    case entryFailure(hardwareReason: UInt64)
    /// The backend could not emulate or continue the guest.
    case internalError(InternalError)
    /// The guest asked the platform to power off, reset or crash.
    case systemEvent(SystemEvent)
    /// An access to a guest-physical address with neither RAM nor a device behind it, under
    /// the configuration's `stop` policy for unmapped MMIO.
    case unmappedMMIO(address: GuestPhysicalAddress, write: Bool)
    /// An access to an I/O port with no device, under the configuration's `stop` policy for
    /// unmapped ports.
    case unmappedPort(port: IOPort, write: Bool)
    /// An exit that no handler took and that has no safe default.
    case unhandledExit(ExitKind)
    /// The host asked the VM to stop.
    case requested
    /// The VM ran past its configured time limit.
    case timeout
    /// The VM took more exits than its configured limit.
    case exitLimit
    /// The guest asked for a reset and the configuration treats reset as a stop.
    case reset
    /// The backend failed while running the vCPU (the hosted layer reports which call).
    case backendFailure
}
