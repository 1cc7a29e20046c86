// Saving and restoring a vCPU and the in-kernel interrupt controllers: what an in-place reset
// puts back (and the start of snapshots). Documentation/virt/kvm/api.rst: 4.3
// KVM_GET_MSR_INDEX_LIST, 4.11-4.14 regs/sregs, 4.18-4.19 MSRs, 4.22-4.23 FPU, 4.26-4.27
// irqchip, 4.31-4.34 vCPU events and debug registers, 4.38-4.39 MP state, 4.42-4.45 XSAVE and
// XCRs, 4.57-4.58 LAPIC; section 5, "immediate_exit".
#if os(Linux)
import CKVM
import HVCore
import Glibc

/// Everything KVM keeps for one vCPU, as its `KVM_GET_*` calls return it.
public struct KVMVCPUState: @unchecked Sendable {
    // @unchecked: plain C structs without pointers.
    var regs = kvm_regs()
    var sregs = kvm_sregs()
    var fpu = kvm_fpu()
    var xsave: kvm_xsave?
    var xcrs: kvm_xcrs?
    /// The MSRs saved, by index: those of KVM_GET_MSR_INDEX_LIST that KVM takes back
    /// (`KVMVirtualMachine.restorableMSRs(probingWith:)`).
    public internal(set) var msrs: [UInt32: UInt64] = [:]
    /// With an in-kernel local APIC only.
    var lapic: kvm_lapic_state?
    var mpState: kvm_mp_state?
    var events = kvm_vcpu_events()
    var debugRegisters = kvm_debugregs()
    /// `struct kvm_nested_state` as KVM_GET_NESTED_STATE wrote it, where KVM can nest (a guest
    /// that ran VMXON or set EFER.SVME); nil without KVM_CAP_NESTED_STATE.
    var nested: [UInt8]?
}

/// The in-kernel PIC pair and I/O APIC of a `kernel`-irqchip VM (nothing for `none` and `split`,
/// whose I/O APIC lives in HV's device model).
public struct KVMVirtualMachineState: @unchecked Sendable {
    // @unchecked: plain C structs without pointers (kvm_irqchip, kvm_pit_state2), copied by value.
    var irqchips: [kvm_irqchip] = []
    /// The in-kernel 8254's channels and speaker gate, where the VM has one.
    var pit: kvm_pit_state2?
}

extension KVMVCPU {
    public typealias SavedState = KVMVCPUState

    /// IA32_TSC_DEADLINE (SDM Vol. 3A, 11.5.4.1 "TSC-Deadline Mode").
    static let tscDeadlineMSR: UInt32 = 0x6E0

    /// Lets KVM finish the instruction behind the last exit (an `OUT` moves RIP on, string I/O
    /// continues) without running guest code: a `KVM_RUN` with `immediate_exit` set, the way
    /// api.rst asks a VMM to settle a vCPU before reading its state. An exit the completion
    /// itself causes (the next piece of a `REP OUTS`) is settled the same way, at most 64 times.
    public func completePendingExit() throws(HVError) {
        hv_store_immediate_exit(shared, 1)
        defer { hv_store_immediate_exit(shared, 0) }
        for _ in 0..<64 { if try !KVMSyscall.run(fd) { return } }
    }

    /// Reads the whole vCPU, in the order QEMU's kvm_arch_get_registers does. The VM's first
    /// save also probes which MSRs KVM takes back (`restorableMSRs(probingWith:)`).
    public func saveState() throws(HVError) -> KVMVCPUState {
        var state = KVMVCPUState()
        try KVMSyscall.ioctl(fd, HV_KVM_GET_REGS, &state.regs, "KVM_GET_REGS")
        try KVMSyscall.ioctl(fd, HV_KVM_GET_SREGS, &state.sregs, "KVM_GET_SREGS")
        try KVMSyscall.ioctl(fd, HV_KVM_GET_FPU, &state.fpu, "KVM_GET_FPU")
        if vm.backend.check(.xsave) != 0 {
            var xsave = kvm_xsave()
            try KVMSyscall.ioctl(fd, HV_KVM_GET_XSAVE, &xsave, "KVM_GET_XSAVE")
            state.xsave = xsave
        }
        if vm.backend.check(.xcrs) != 0 {
            var xcrs = kvm_xcrs()
            try KVMSyscall.ioctl(fd, HV_KVM_GET_XCRS, &xcrs, "KVM_GET_XCRS")
            state.xcrs = xcrs
        }
        state.msrs = try msrs(vm.restorableMSRs(probingWith: self))
        let nestedCapacity = Int(vm.backend.check(.nestedState))
        if nestedCapacity >= 128 {
            // api.rst 4.114: the caller puts its buffer size in `size`; KVM writes the real one.
            var buffer = [UInt8](repeating: 0, count: nestedCapacity)
            buffer.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(nestedCapacity), toByteOffset: 4, as: UInt32.self) }
            if buffer.withUnsafeMutableBytes({ hv_ioctl_ptr(fd, HV_KVM_GET_NESTED_STATE, $0.baseAddress!) }) < 0 {
                throw .systemCall(operation: "KVM_GET_NESTED_STATE", errno: errno)
            }
            let size = Int(buffer.withUnsafeBytes { $0.load(fromByteOffset: 4, as: UInt32.self) })
            state.nested = Array(buffer.prefix(min(max(size, 128), nestedCapacity)))
        }
        if vm.configuration.interruptController != .none {
            var lapic = kvm_lapic_state()
            try KVMSyscall.ioctl(fd, HV_KVM_GET_LAPIC, &lapic, "KVM_GET_LAPIC")
            state.lapic = lapic
            var mp = kvm_mp_state()
            try KVMSyscall.ioctl(fd, HV_KVM_GET_MP_STATE, &mp, "KVM_GET_MP_STATE")
            state.mpState = mp
        }
        try KVMSyscall.ioctl(fd, HV_KVM_GET_VCPU_EVENTS, &state.events, "KVM_GET_VCPU_EVENTS")
        try KVMSyscall.ioctl(fd, HV_KVM_GET_DEBUGREGS, &state.debugRegisters, "KVM_GET_DEBUGREGS")
        return state
    }

    /// The MSRs of `indices` this vCPU reads and KVM accepts back: each batch is written with
    /// the values just read, and an MSR KVM refuses (some paravirtual MSRs need CPUID bits
    /// first) is left out, as KVM_SET_MSRS stops at the first refusal. Call before the guest
    /// runs: the writes put back what was read.
    func restorableMSRs(of indices: [UInt32]) throws(HVError) -> [UInt32] {
        let read = try msrs(indices).sorted { $0.key < $1.key }.map { ($0.key, $0.value) }
        return try writableMSRs(read).map(\.index)
    }

    private func writableMSRs(_ msrs: [(index: UInt32, value: UInt64)]) throws(HVError) -> [(index: UInt32, value: UInt64)] {
        var accepted: [(index: UInt32, value: UInt64)] = []
        var pending = msrs[...]
        while !pending.isEmpty {
            let batch = Array(pending)
            let buffer = KVMMSRBuffer(indices: batch.map(\.index))
            for i in 0..<batch.count { buffer[i].data = batch[i].value }
            let written = Int(try KVMSyscall.ioctl(fd, HV_KVM_SET_MSRS, pointer: buffer.raw, "KVM_SET_MSRS"))
            accepted += batch[..<written]
            if written < batch.count {
                LogCategory.vcpu.logger.debug("MSR 0x\(String(batch[written].index, radix: 16)) is not restorable on this host; left out of saved state")
            }
            pending = pending.dropFirst(written + 1)
        }
        return accepted
    }

    /// Writes the whole vCPU back, in the order QEMU's kvm_arch_put_registers does: registers,
    /// XSAVE, XCRs, special registers (EFER and APIC base before the MSRs and LAPIC that depend
    /// on them), MSRs, MP state, LAPIC (and the TSC deadline again after it), pending events,
    /// debug registers. The nested state goes
    /// first of the system state: the state HV restores is the one at start, outside VMX/SVM
    /// operation, and leaving nested operation first lets KVM accept a CR4 without VMXE.
    public func restoreState(_ saved: KVMVCPUState) throws(HVError) {
        var state = saved
        try KVMSyscall.ioctl(fd, HV_KVM_SET_REGS, &state.regs, "KVM_SET_REGS")
        if var xsave = state.xsave {
            try KVMSyscall.ioctl(fd, HV_KVM_SET_XSAVE, &xsave, "KVM_SET_XSAVE")
        } else {
            try KVMSyscall.ioctl(fd, HV_KVM_SET_FPU, &state.fpu, "KVM_SET_FPU")
        }
        if var xcrs = state.xcrs { try KVMSyscall.ioctl(fd, HV_KVM_SET_XCRS, &xcrs, "KVM_SET_XCRS") }
        if var nested = state.nested,
           nested.withUnsafeMutableBytes({ hv_ioctl_ptr(fd, HV_KVM_SET_NESTED_STATE, $0.baseAddress!) }) < 0 {
            throw .systemCall(operation: "KVM_SET_NESTED_STATE", errno: errno)
        }
        try KVMSyscall.ioctl(fd, HV_KVM_SET_SREGS, &state.sregs, "KVM_SET_SREGS")
        if !state.msrs.isEmpty { try setMSRs(state.msrs) }
        if var mp = state.mpState { try KVMSyscall.ioctl(fd, HV_KVM_SET_MP_STATE, &mp, "KVM_SET_MP_STATE") }
        if var lapic = state.lapic {
            try KVMSyscall.ioctl(fd, HV_KVM_SET_LAPIC, &lapic, "KVM_SET_LAPIC")
            // KVM takes IA32_TSC_DEADLINE only while the LAPIC timer is in TSC-deadline mode, and
            // KVM_SET_LAPIC cancels the timer: written with the other MSRs, before the LAPIC was
            // back in that mode, the deadline was dropped and a restored Linux would wait for a
            // timer that never fires. Written again now, as QEMU puts it after the APIC.
            if let deadline = state.msrs[Self.tscDeadlineMSR] { try setMSRs([Self.tscDeadlineMSR: deadline]) }
        }
        try KVMSyscall.ioctl(fd, HV_KVM_SET_VCPU_EVENTS, &state.events, "KVM_SET_VCPU_EVENTS")
        try KVMSyscall.ioctl(fd, HV_KVM_SET_DEBUGREGS, &state.debugRegisters, "KVM_SET_DEBUGREGS")
    }
}

extension KVMVirtualMachine {
    public typealias SavedState = KVMVirtualMachineState

    /// The in-kernel PIC master, PIC slave and I/O APIC (`KVM_GET_IRQCHIP` chips 0, 1, 2) and
    /// the in-kernel PIT (`KVM_GET_PIT2`).
    public func saveState() throws(HVError) -> KVMVirtualMachineState {
        var state = KVMVirtualMachineState()
        if configuration.effectivePIT == .kernel {
            var pit = kvm_pit_state2()
            try KVMSyscall.ioctl(fd, HV_KVM_GET_PIT2, &pit, "KVM_GET_PIT2")
            state.pit = pit
        }
        guard configuration.interruptController == .kernel else { return state }
        for chip in [KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC] {
            var irqchip = kvm_irqchip()
            irqchip.chip_id = UInt32(chip)
            try KVMSyscall.ioctl(fd, HV_KVM_GET_IRQCHIP, &irqchip, "KVM_GET_IRQCHIP")
            state.irqchips.append(irqchip)
        }
        return state
    }

    /// The in-kernel PICs as a BIOS leaves them (`VirtualMachine.initializeLegacyPIC`): what its
    /// ICW1-ICW4 and OCW1 writes would have left in each chip's state (`KVM_GET_IRQCHIP`, the
    /// fields changed, `KVM_SET_IRQCHIP`). Needs the kernel irqchip.
    public func initializeLegacyPIC(masterBase: UInt8, slaveBase: UInt8, mask: UInt16) throws(HVError) {
        guard configuration.interruptController == .kernel else {
            throw .unsupported(knob: "legacy PIC", backend: "kvm",
                               reason: "only the kernel irqchip has a PIC (interruptController is \(configuration.interruptController))")
        }
        for (chip, base, imr) in [(KVM_IRQCHIP_PIC_MASTER, masterBase, UInt8(truncatingIfNeeded: mask)),
                                  (KVM_IRQCHIP_PIC_SLAVE, slaveBase, UInt8(truncatingIfNeeded: mask >> 8))] {
            var irqchip = kvm_irqchip()
            irqchip.chip_id = UInt32(chip)
            try KVMSyscall.ioctl(fd, HV_KVM_GET_IRQCHIP, &irqchip, "KVM_GET_IRQCHIP")
            irqchip.chip.pic.irq_base = base & 0xF8   // ICW2: T7-T3 of the vector
            irqchip.chip.pic.init4 = 1                // ICW1 IC4: an ICW4 follows (8086 mode)
            irqchip.chip.pic.init_state = 0           // initialisation done: OCWs from now on
            irqchip.chip.pic.imr = imr                // OCW1
            irqchip.chip.pic.auto_eoi = 0
            try KVMSyscall.ioctl(fd, HV_KVM_SET_IRQCHIP, &irqchip, "KVM_SET_IRQCHIP")
        }
    }

    /// The corresponding ioctls are `KVM_SET_IRQCHIP`, once per saved chip, and `KVM_SET_PIT2`.
    public func restoreState(_ state: KVMVirtualMachineState) throws(HVError) {
        for saved in state.irqchips {
            var irqchip = saved
            try KVMSyscall.ioctl(fd, HV_KVM_SET_IRQCHIP, &irqchip, "KVM_SET_IRQCHIP")
        }
        if var pit = state.pit { try KVMSyscall.ioctl(fd, HV_KVM_SET_PIT2, &pit, "KVM_SET_PIT2") }
    }
}

extension KVMBackend {
    /// The MSRs KVM says a VMM should save and restore: the hardware MSRs it passes on and the
    /// ones it emulates (kvmclock, async page faults, ...). The corresponding ioctl is
    /// `KVM_GET_MSR_INDEX_LIST`, asked twice: once for the count, once for the list.
    public func msrIndexList() throws(HVError) -> [UInt32] {
        var count: UInt32 = 0
        if hv_ioctl_ptr(system.fd, HV_KVM_GET_MSR_INDEX_LIST, &count) < 0, errno != E2BIG {
            throw .systemCall(operation: "KVM_GET_MSR_INDEX_LIST", errno: errno)
        }
        guard count > 0 else { return [] }
        var list = [UInt32](repeating: 0, count: Int(count) + 1)
        list[0] = count
        let result = list.withUnsafeMutableBytes { hv_ioctl_ptr(system.fd, HV_KVM_GET_MSR_INDEX_LIST, $0.baseAddress!) }
        if result < 0 { throw .systemCall(operation: "KVM_GET_MSR_INDEX_LIST", errno: errno) }
        return Array(list[1...(Int(min(list[0], count)))])
    }
}
#endif
