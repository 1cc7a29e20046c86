// A vCPU's in-kernel local APIC, read out for tools (api.rst 4.57 KVM_GET_LAPIC, 4.38 KVM_GET_MP_STATE).
#if os(Linux)
import CKVM
import HVCore
import Glibc

/// What a vCPU is doing as far as its in-kernel LAPIC knows (api.rst 4.38).
public enum MultiprocessingState: Sendable, Equatable {
    /// Running or ready to run.
    case runnable
    /// An application processor waiting for INIT (SDM Vol. 3A, 9.4: wait-for-SIPI after INIT).
    case uninitialized
    /// Received INIT, waiting for a start-up IPI.
    case initReceived
    /// In HLT, waiting for an interrupt.
    case halted
    /// Received SIPI, about to start.
    case sipiReceived
    /// Any other state KVM reports, by number.
    case other(UInt32)
}

extension KVMVCPU {
    /// The first 1 KiB of the vCPU's xAPIC register page as KVM keeps it (offsets as in SDM
    /// Vol. 3A, Table 11-1: ID at 0x20, TPR at 0x80, ISR from 0x100, IRR from 0x200, ...).
    /// Needs an in-kernel irqchip. The corresponding ioctl is `KVM_GET_LAPIC`.
    public func localAPICRegisters() throws(HVError) -> [UInt8] {
        var state = kvm_lapic_state()
        try KVMSyscall.ioctl(fd, HV_KVM_GET_LAPIC, &state, "KVM_GET_LAPIC")
        return withUnsafeBytes(of: state.regs) { Array($0) }
    }

    /// The 32-bit register at `offset` of `localAPICRegisters()`.
    public func localAPICRegister(_ offset: Int) throws(HVError) -> UInt32 {
        let page = try localAPICRegisters()
        guard offset >= 0, offset + 4 <= page.count, offset % 16 == 0 else {
            throw .configuration(ConfigurationError(field: "offset", value: "\(offset)", expected: "a 16-byte aligned offset below \(page.count)"))
        }
        return page[offset..<offset + 4].reversed().reduce(0) { $0 << 8 | UInt32($1) }
    }

    /// The vCPU's in-kernel LAPIC as HV's `LocalAPIC` model, so tools can show its TPR, PPR,
    /// IRR/ISR and LVT entries in words. The corresponding ioctls are `KVM_GET_LAPIC` and
    /// `KVM_GET_SREGS` (for IA32_APIC_BASE).
    public func localAPIC() throws(HVError) -> LocalAPIC {
        let base = APICBase(rawValue: try specialRegisters().apicBase)
        let page = try localAPICRegisters()
        let configuration = LocalAPIC.Configuration(apicID: UInt32(id), isBootstrapProcessor: base.isBootstrapProcessor)
        guard let model = LocalAPIC(registerImage: page, configuration: configuration, base: base) else {
            throw .systemCall(operation: "KVM_GET_LAPIC (short register image)", errno: EINVAL)
        }
        return model
    }

    /// The corresponding ioctl is `KVM_GET_MP_STATE`.
    public func multiprocessingState() throws(HVError) -> MultiprocessingState {
        var state = kvm_mp_state()
        try KVMSyscall.ioctl(fd, HV_KVM_GET_MP_STATE, &state, "KVM_GET_MP_STATE")
        switch Int32(state.mp_state) {
        case KVM_MP_STATE_RUNNABLE: return .runnable
        case KVM_MP_STATE_UNINITIALIZED: return .uninitialized
        case KVM_MP_STATE_INIT_RECEIVED: return .initReceived
        case KVM_MP_STATE_HALTED: return .halted
        case KVM_MP_STATE_SIPI_RECEIVED: return .sipiReceived
        default: return .other(state.mp_state)
        }
    }
}
#endif
