// Human-readable stop reasons for CLIs and logs.

extension StopReason: CustomStringConvertible {
    public var description: String {
        switch self {
        case .debugExit(let code): "the guest wrote \(code) (0x\(hex(UInt64(code)))) to the debug-exit port"
        case .halted: "the guest halted (HLT with nothing to wake it)"
        case .shutdown: "the guest triple-faulted (shutdown)"
        case .entryFailure(let reason): "VM entry failed (hardware reason 0x\(hex(reason)))"
        case .internalError(let error):
            error.suberror == 1
                ? "KVM could not emulate an instruction (internal error, suberror 1)"
                : "the backend could not continue the guest (internal error, suberror \(error.suberror))"
        case .systemEvent(let event): "the guest requested a system \(event)"
        case let .unmappedMMIO(address, write):
            "the guest \(write ? "wrote to" : "read from") 0x\(hex(address.rawValue)), where there is neither RAM nor a device"
        case let .unmappedPort(port, write):
            "the guest \(write ? "wrote to" : "read from") I/O port 0x\(hex(UInt64(port.rawValue))), where there is no device"
        case .unhandledExit(let kind): "no handler took a \(kind.name) exit"
        case .requested: "the host asked the VM to stop"
        case .timeout: "the VM ran past its time limit"
        case .exitLimit: "the VM reached its exit limit"
        case .reset: "the guest asked for a reset"
        case .backendFailure: "the backend failed"
        }
    }
}

private func hex(_ value: UInt64) -> String { String(value, radix: 16) }
