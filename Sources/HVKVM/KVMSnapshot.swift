// KVM state as snapshot bytes, the VM's clock, and the dirty log. Documentation/virt/kvm/api.rst:
// 4.8 KVM_GET_DIRTY_LOG, 4.35 KVM_SET_USER_MEMORY_REGION (KVM_MEM_LOG_DIRTY_PAGES), 4.54-4.55
// KVM_GET_CLOCK/KVM_SET_CLOCK; the vCPU and irqchip calls are KVMState.swift's.
#if os(Linux)
import CKVM
import HVCore
import Glibc

extension KVMVCPU {
    /// Every `KVMVCPUState` field, C structures as their bytes (a reader with another layout
    /// refuses them by size), MSRs as index/value pairs.
    public func encodeState(_ state: KVMVCPUState) throws(HVError) -> [UInt8] {
        var encoder = StateEncoder()
        encoder.write(raw: state.regs)
        encoder.write(raw: state.sregs)
        encoder.write(raw: state.fpu)
        encoder.write(state.xsave != nil)
        if let xsave = state.xsave { encoder.write(raw: xsave) }
        encoder.write(state.xcrs != nil)
        if let xcrs = state.xcrs { encoder.write(raw: xcrs) }
        let msrs = state.msrs.sorted { $0.key < $1.key }
        encoder.write(UInt32(msrs.count))
        for (index, value) in msrs {
            encoder.write(index)
            encoder.write(value)
        }
        encoder.write(state.lapic != nil)
        if let lapic = state.lapic { encoder.write(raw: lapic) }
        encoder.write(state.mpState != nil)
        if let mp = state.mpState { encoder.write(raw: mp) }
        encoder.write(raw: state.events)
        encoder.write(raw: state.debugRegisters)
        encoder.write(state.nested != nil)
        if let nested = state.nested { encoder.write(bytes: nested) }
        return encoder.bytes
    }

    public func decodeState(_ bytes: [UInt8]) throws(HVError) -> KVMVCPUState {
        var decoder = StateDecoder(bytes)
        let subject = "vCPU \(id)"
        do throws(StateDecodingError) {
            var state = KVMVCPUState()
            state.regs = try decoder.read(raw: kvm_regs.self, "kvm_regs")
            state.sregs = try decoder.read(raw: kvm_sregs.self, "kvm_sregs")
            state.fpu = try decoder.read(raw: kvm_fpu.self, "kvm_fpu")
            if try decoder.read(Bool.self, "has xsave") { state.xsave = try decoder.read(raw: kvm_xsave.self, "kvm_xsave") }
            if try decoder.read(Bool.self, "has xcrs") { state.xcrs = try decoder.read(raw: kvm_xcrs.self, "kvm_xcrs") }
            let count = try decoder.read(UInt32.self, "MSR count", below: 4096)
            for _ in 0..<count {
                let index = try decoder.read(UInt32.self, "MSR index")
                state.msrs[index] = try decoder.read(UInt64.self, "MSR 0x\(String(index, radix: 16))")
            }
            if try decoder.read(Bool.self, "has lapic") { state.lapic = try decoder.read(raw: kvm_lapic_state.self, "kvm_lapic_state") }
            if try decoder.read(Bool.self, "has mp state") { state.mpState = try decoder.read(raw: kvm_mp_state.self, "kvm_mp_state") }
            state.events = try decoder.read(raw: kvm_vcpu_events.self, "kvm_vcpu_events")
            state.debugRegisters = try decoder.read(raw: kvm_debugregs.self, "kvm_debugregs")
            if try decoder.read(Bool.self, "has nested state") { state.nested = try decoder.readBytes("kvm_nested_state", atMost: 1 << 20) }
            try decoder.finish("vCPU state")
            // What this host must be able to take back.
            if state.xsave != nil, vm.backend.check(.xsave) == 0 {
                throw StateDecodingError(field: "kvm_xsave", problem: "saved with XSAVE state, but this host's KVM has no KVM_CAP_XSAVE")
            }
            if state.nested != nil, vm.backend.check(.nestedState) < 128 {
                throw StateDecodingError(field: "kvm_nested_state", problem: "saved with nested virtualization state, but this host's KVM has no KVM_CAP_NESTED_STATE")
            }
            if state.lapic == nil, vm.configuration.interruptController != .none {
                throw StateDecodingError(field: "kvm_lapic_state", problem: "saved without a local APIC, but this VM has one (interrupt controllers \(vm.configuration.interruptController))")
            }
            if state.lapic != nil, vm.configuration.interruptController == .none {
                throw StateDecodingError(field: "kvm_lapic_state", problem: "saved with a local APIC, but this VM has none (interrupt controllers none)")
            }
            return state
        } catch {
            throw .snapshot(subject: subject, problem: error.description)
        }
    }
}

extension KVMVirtualMachine {
    /// The in-kernel irqchip and PIT as bytes.
    public func encodeState(_ state: KVMVirtualMachineState) throws(HVError) -> [UInt8] {
        var encoder = StateEncoder()
        encoder.write(UInt8(state.irqchips.count))
        for chip in state.irqchips { encoder.write(raw: chip) }
        encoder.write(state.pit != nil)
        if let pit = state.pit { encoder.write(raw: pit) }
        return encoder.bytes
    }

    public func decodeState(_ bytes: [UInt8]) throws(HVError) -> KVMVirtualMachineState {
        var decoder = StateDecoder(bytes)
        do throws(StateDecodingError) {
            var state = KVMVirtualMachineState()
            let chips = try decoder.read(UInt8.self, "irqchip count", below: 4)
            for _ in 0..<chips { state.irqchips.append(try decoder.read(raw: kvm_irqchip.self, "kvm_irqchip")) }
            if try decoder.read(Bool.self, "has pit") { state.pit = try decoder.read(raw: kvm_pit_state2.self, "kvm_pit_state2") }
            try decoder.finish("VM state")
            let expected = configuration.interruptController == .kernel ? 3 : 0
            if state.irqchips.count != expected {
                throw StateDecodingError(field: "irqchip", problem: "saved with \(state.irqchips.count) in-kernel interrupt controller(s); this VM has \(expected) (interrupt controllers \(configuration.interruptController))")
            }
            if (state.pit != nil) != (configuration.effectivePIT == .kernel) {
                throw StateDecodingError(field: "pit", problem: state.pit != nil ? "saved with KVM's in-kernel PIT; this VM has none" : "saved without an in-kernel PIT; this VM has one")
            }
            return state
        } catch {
            throw .snapshot(subject: "VM state", problem: error.description)
        }
    }

    /// `saveState()` as bytes, then the kvmclock (`KVM_GET_CLOCK`).
    public func snapshotState() throws(HVError) -> [UInt8] {
        var clock = kvm_clock_data()
        try KVMSyscall.ioctl(fd, HV_KVM_GET_CLOCK, &clock, "KVM_GET_CLOCK")
        var encoder = StateEncoder()
        encoder.write(bytes: try encodeState(try saveState()))
        encoder.write(clock.clock)
        return encoder.bytes
    }

    /// Puts the irqchip, PIT and clock back. The clock goes on from where the snapshot stopped
    /// it (`KVM_SET_CLOCK` with no flags), so the guest sees no jump, only the pause.
    public func restoreSnapshotState(_ bytes: [UInt8]) throws(HVError) {
        var decoder = StateDecoder(bytes)
        let chips: [UInt8], clockValue: UInt64
        do throws(StateDecodingError) {
            chips = try decoder.readBytes("irqchip and PIT")
            clockValue = try decoder.read(UInt64.self, "kvmclock")
            try decoder.finish("VM state")
        } catch {
            throw .snapshot(subject: "VM state", problem: error.description)
        }
        try restoreState(try decodeState(chips))
        var clock = kvm_clock_data()
        clock.clock = clockValue
        try KVMSyscall.ioctl(fd, HV_KVM_SET_CLOCK, &clock, "KVM_SET_CLOCK")
    }

    /// Registers every mapped region again with KVM_MEM_LOG_DIRTY_PAGES set (or cleared). KVM
    /// then write-protects the guest's pages and records each first write in a bitmap.
    public func setDirtyLogging(_ enabled: Bool) throws(HVError) {
        let regions = mappedRegions.withLock { $0 }
        for (slot, region) in regions.sorted(by: { $0.key < $1.key }) {
            try register(region, slot: slot, flags: enabled ? UInt32(KVM_MEM_LOG_DIRTY_PAGES) : 0)
        }
    }

    /// `KVM_GET_DIRTY_LOG` for `slot`: one bit per 4 KiB page written since the last call, which
    /// KVM clears (and write-protects those pages again) as it hands the bitmap over.
    public func fetchDirtyPages(slot: Int) throws(HVError) -> [UInt64] {
        guard let region = mappedRegions.withLock({ $0[slot] }) else {
            throw .configuration(ConfigurationError(field: "slot", value: "\(slot)", expected: "a mapped memory slot"))
        }
        let pages = Int(region.size / 4096)
        var bitmap = [UInt64](repeating: 0, count: (pages + 63) / 64)
        let result = bitmap.withUnsafeMutableBytes { buffer -> Int32 in
            var log = kvm_dirty_log()
            log.slot = UInt32(slot)
            log.dirty_bitmap = buffer.baseAddress
            return hv_ioctl_ptr(fd, HV_KVM_GET_DIRTY_LOG, &log)
        }
        if result < 0 { throw .systemCall(operation: "KVM_GET_DIRTY_LOG(slot \(slot))", errno: errno) }
        return bitmap
    }
}
#endif
