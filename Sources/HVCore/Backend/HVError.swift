// One error type for the hosted SDK: every failure says what failed and what would be valid.
#if canImport(Glibc)
import Glibc
#endif

/// An error of the hosted SDK.
public enum HVError: Error, CustomStringConvertible {
    /// The hypervisor device is missing or not permitted (`path`, `errno`).
    case hypervisorUnavailable(path: String, errno: Int32)
    /// A system call failed: `operation` names it the way the kernel documents it
    /// ("KVM_SET_USER_MEMORY_REGION"), `errno` says why.
    case systemCall(operation: String, errno: Int32)
    /// The backend cannot honour a configuration knob.
    case unsupported(knob: String, backend: String, reason: String)
    /// The configuration is invalid.
    case configuration(ConfigurationError)
    /// A guest-memory mapping or access failed.
    case memory(GuestMemoryError)
    /// A device could not be placed on the bus.
    case device(DeviceBusError)
    /// A guest image could not be built or loaded.
    case image(GuestImageError)
    /// The operation is not legal in the VM's current state.
    case invalidState(operation: String, state: MachineState)
    /// The KVM API version is not the stable one (12).
    case unsupportedAPIVersion(Int32)
    /// A call that waits for every vCPU came from one of them (an exit handler), which would
    /// wait for itself forever.
    case calledFromVCPUThread(operation: String, vcpuID: Int)
    /// The seccomp confinement could not be built or loaded (`VirtualMachineConfiguration.confinement`).
    case confinement(String)
    /// A snapshot could not be taken or put back: `subject` (a device, a vCPU, the memory)
    /// and why (Documentation/Snapshots.md).
    case snapshot(subject: String, problem: String)

    public var description: String {
        switch self {
        case let .hypervisorUnavailable(path, code):
            if code == ENOENT { return "\(path) does not exist: this host offers no KVM (load the kvm module or run on a machine with virtualization)" }
            if code == EACCES || code == EPERM { return "\(path) is not accessible to this user (\(errnoText(code))): run as root or join the group that owns it (usually 'kvm')" }
            return "\(path) could not be opened: \(errnoText(code))"
        case let .systemCall(operation, code):
            return "\(operation) failed: \(errnoText(code))"
        case let .unsupported(knob, backend, reason):
            return "\(knob) is not supported by the \(backend) backend: \(reason)"
        case .configuration(let error): return error.description
        case .memory(let error): return error.description
        case .device(let error): return error.description
        case .image(let error): return "\(error)"
        case let .invalidState(operation, state):
            return "cannot \(operation) a VM that is \(state)"
        case .unsupportedAPIVersion(let version):
            return "KVM API version \(version) is not supported (HV needs the stable API, version 12)"
        case let .calledFromVCPUThread(operation, id):
            return "\(operation) was called on vCPU \(id)'s own thread (from an exit handler): it waits for every vCPU to stop, "
                + "this one included; call it from another thread, or return an ExitAction"
        case .confinement(let problem):
            return "confinement: \(problem)"
        case let .snapshot(subject, problem):
            return "snapshot: \(subject): \(problem)"
        }
    }
}

extension HVError {
    /// A failed system call reported under a fuller name (the syscall wrappers take static names;
    /// a caller adds what it was doing: the slot, the capability); any other error unchanged.
    package func naming(_ operation: String) -> HVError {
        guard case .systemCall(_, let code) = self else { return self }
        return .systemCall(operation: operation, errno: code)
    }
}

/// `strerror` text with the errno name's number, e.g. "Permission denied (errno 13)".
package func errnoText(_ code: Int32) -> String {
    "\(String(cString: strerror(code))) (errno \(code))"
}
