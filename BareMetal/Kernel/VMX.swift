// HV's VMX engine (Intel SDM Vol. 3C, chapters 24-29): the capability MSRs read on the CPU and
// fed to HV's `VMXConfiguration` planner (controls reconciled against them, every knob's
// decision), VMXON, a VMCS written field by field from the plan through HV's field tables and
// checked by HV's VM-entry validator before VMLAUNCH, EPT built by HV's EPT builder, and a
// VMLAUNCH/VMRESUME loop whose exits (decoded with HV's exit-reason and qualification types)
// go to the same shared exit code and `ExitHandler` chain as the SVM engine's.
import BareMetalSupport
import HVModel

/// VMX operation for the whole image: entered once, with the capabilities it found.
enum VMXOperation {
    static var capabilities: VMXCapabilities?

    /// Reads the capability MSRs, opens IA32_FEATURE_CONTROL if the firmware left it unlocked,
    /// sets the CR0/CR4 bits VMX operation fixes and executes VMXON (SDM 24.7-24.8). Prints why
    /// when it cannot.
    static func enter() -> VMXCapabilities? {
        if let capabilities { return capabilities }
        let width = Int(CPUFeatures.cpuid(0x8000_0008).eax & 0xFF)
        let found = VMXCapabilities.read(physicalAddressWidth: width) { hv_rdmsr($0.rawValue) }
        // IA32_FEATURE_CONTROL (3AH): bit 0 lock, bit 2 VMXON outside SMX (SDM 24.7).
        let control = hv_rdmsr(0x3A)
        if control & 1 == 0 { hv_wrmsr(0x3A, control | 1 | 1 << 2) }
        let (cr0, cr4) = VMXConfiguration.controlRegistersForVMXON(cr0: hv_read_cr0(), cr4: hv_read_cr4(), capabilities: found)
        hv_write_cr0(cr0)
        hv_write_cr4(cr4)
        let region = allocatePages(found.vmcsRegionSize > 4096 ? 8192 : 4096)
        region.storeBytes(of: found.vmcsRevisionID, as: UInt32.self)
        let status = hv_vmxon(UInt64(UInt(bitPattern: region)))
        guard status == 0 else {
            print("vmx: VMXON failed (\(status == 1 ? "VMfailInvalid" : "VMfailValid"))")
            return nil
        }
        capabilities = found
        return found
    }
}

/// One VM with one vCPU on HV's VMX engine.
final class VMXVirtualMachine: GuestCPU {
    let capabilities: VMXCapabilities
    let ram: UnsafeMutableRawPointer
    let memorySize: UInt64
    let readOnlyPages: [UInt64], mmioPages: [UInt64]
    let engineName: StaticString = "vmx"
    var interrupts: LocalAPICDevice?
    /// The guest's general-purpose registers by number across the world switch (RSP is in the VMCS).
    var registers = [UInt64](repeating: 0, count: 16)
    /// Room for a REP INS/OUTS batch of a page.
    let ioBuffer = PortIOBuffer(capacity: 4096)
    var statistics = ExitTally()
    /// The plan this VM's VMCS was written from.
    let plan: VMXPlan
    static var planShown = false
    let vmcs: UnsafeMutableRawPointer
    private var launched = false
    let hostStackSize: Int
    var pending = PendingCompletion.none
    var queuedExit: VMExit?
    var lastRoundTrip: UInt64 = 0

    /// A VM of `memorySize` bytes (a multiple of 2 MiB) whose guest starts with `guest`'s
    /// registers, planned with `configuration` (whose `structureBase` the engine fills in);
    /// nil, with the reasons printed, when the plan or the VM-entry checks refuse it.
    init?(memorySize: UInt64, readOnlyPages: [UInt64] = [], mmioPages: [UInt64] = [], configuration: VMXConfiguration, guest: VMXGuestStart,
          capabilities: VMXCapabilities) {
        self.capabilities = capabilities
        self.memorySize = memorySize
        self.readOnlyPages = readOnlyPages
        self.mmioPages = mmioPages
        hostStackSize = Int(configuration.hostStackSize)
        ram = allocatePages(Int(memorySize), alignment: 2 << 20)
        vmcs = allocatePages(4096)

        // EPT (SDM 29.3) through HV's EPT builder: guest-physical 0 ..< memorySize -> the RAM,
        // the read-only pages without write permission; everything else is unmapped (MMIO).
        let eptCapabilities = EPTCapabilities(rawValue: capabilities[.eptVPIDCapabilities] ?? 0)
        let pointer: UInt64
        do throws(EPTBuildError) {
            var ept = try EPTBuilder(tables: PageTables(), options: EPTBuilderOptions(
                hugePages: eptCapabilities.pages2MiB, capabilities: eptCapabilities, physicalAddressBits: capabilities.physicalAddressWidth))
            try ept.map(GuestPhysicalAddress(0), size: memorySize, to: HostPhysicalAddress(UInt64(UInt(bitPattern: ram))), permissions: [.read, .write, .execute])
            for page in readOnlyPages { try ept.protect(GuestPhysicalAddress(page), size: 4096, permissions: [.read, .execute]) }
            for page in mmioPages { try ept.unmap(GuestPhysicalAddress(page), size: 4096) }
            pointer = ept.pointer().rawValue
        } catch {
            print("vmx: EPT: \(error)")
            return nil
        }

        let structures = allocatePages(0x10000)
        var configuration = configuration
        configuration.structureBase = UInt64(UInt(bitPattern: structures))
        let host = VMXHostState(cr0: hv_read_cr0(), cr3: hv_read_cr3(), cr4: hv_read_cr4(), taskBase: hv_task_base(), gdtBase: hv_gdt_base(),
                                idtBase: hv_idt_base(), efer: hv_rdmsr(0xC000_0080), pat: hv_rdmsr(0x277), entry: hv_vmx_exit_address(),
                                stack: 0)
        do throws(VMXPlanError) {
            plan = try configuration.plan(for: capabilities, host: host, guest: guest, eptPointer: pointer)
        } catch {
            for problem in error.problems { print("vmx: the plan refuses: \(problem.message)") }
            return nil
        }
        // The planner's decisions, as `hv vmx plan` prints them, for the first VM (the others differ
        // only in guest mode and addresses).
        if !Self.planShown {
            for decision in plan.decisions { print("vmx plan: \(decision.knob): \(decision.text)") }
            Self.planShown = true
        }
        // HOST_RSP is written by the world switch at each entry: the validator saw 0, which it
        // does not check (any 64-bit value is allowed in 64-bit mode, SDM 27.2.3).
        if !plan.entryFailures.isEmpty {
            for failure in plan.entryFailures { print("vmx: VMLAUNCH would fail: \(failure.check.sentence) \(failure.detail)") }
            return nil
        }
        // The bitmaps at the plan's addresses (SDM 25.6.4, 25.6.9).
        if let bitmap = plan.msrBitmap { copy(bitmap.bytes, to: structures) }
        if let io = plan.ioBitmaps {
            copy(io.a, to: structures + 0x1000)
            copy(io.b, to: structures + 0x2000)
        }
        // The VMCS region: revision identifier, VMCLEAR, VMPTRLD, then every field (SDM 25.2, 25.11.3).
        vmcs.storeBytes(of: capabilities.vmcsRevisionID, as: UInt32.self)
        let address = UInt64(UInt(bitPattern: vmcs))
        guard hv_vmclear(address) == 0, hv_vmptrld(address) == 0 else {
            print("vmx: VMCLEAR/VMPTRLD of the VMCS failed")
            return nil
        }
        for (field, value) in plan.vmcs.writtenFields {
            let status = hv_vmwrite(UInt64(field.rawValue), value)
            if status != 0 {
                print("vmx: VMWRITE \(field.description) = \(hex(value)) failed: \(instructionError())")
                return nil
            }
        }
        // A new EPT hierarchy: drop whatever the TLBs hold for it (INVEPT single-context, SDM 29.4.3.1).
        if eptCapabilities.rawValue & (1 << 25) != 0 { _ = hv_invept(1, pointer, 0) }
    }

    private func copy(_ bytes: [UInt8], to destination: UnsafeMutableRawPointer) {
        bytes.withUnsafeBytes { destination.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
    }

    func read(_ field: VMCSField) -> UInt64 {
        var status: Int32 = 0
        return hv_vmread(UInt64(field.rawValue), &status)
    }

    func write(_ field: VMCSField, _ value: UInt64) { _ = hv_vmwrite(UInt64(field.rawValue), value) }

    /// The VM-instruction error field, by name (SDM 31.4).
    func instructionError() -> String {
        let number = UInt32(truncatingIfNeeded: read(.vmInstructionError))
        return "VM-instruction error \(number)" + (VMInstructionError(rawValue: number).map { " (\($0.name))" } ?? "")
    }

    // MARK: GuestCPU

    var rip: UInt64 {
        get { read(.guestRIP) }
        set { write(.guestRIP, newValue) }
    }

    var interruptShadow: Bool {
        get { read(.guestInterruptibilityState) & 0b11 != 0 }
        set { write(.guestInterruptibilityState, read(.guestInterruptibilityState) & ~0b11 | (newValue ? 1 : 0)) }
    }

    /// The VM-entry interruption-information field (SDM 25.8.3): vector, type 0 (external
    /// interrupt), valid; the processor clears the valid bit on the next VM exit.
    func inject(vector: UInt8) { write(.entryInterruptionInformation, UInt64(vector) | 1 << 31) }

    /// The VM-entry interruption-information field for an exception: type 3 (hardware
    /// exception), the error code delivered where the vector has one and the guest is in
    /// protected mode (SDM 25.8.3, 27.2.1.3).
    func injectException(vector: UInt8, errorCode: UInt32?) {
        let code = read(.guestCR0) & 1 != 0 ? errorCode : nil
        if let code { write(.entryExceptionErrorCode, UInt64(code)) }
        write(.entryInterruptionInformation, UInt64(vector) | 3 << 8 | (code != nil ? 1 << 11 : 0) | 1 << 31)
    }

    var rflags: UInt64 {
        get { read(.guestRFLAGS) }
        set { write(.guestRFLAGS, newValue) }
    }

    var special: SpecialRegisters {
        var special = SpecialRegisters()
        special.cr0 = read(.guestCR0)
        special.cr3 = read(.guestCR3)
        special.cr4 = read(.guestCR4)
        special.efer = read(.guestIA32EFER)
        func segment(_ selector: VMCSField, _ base: VMCSField, _ limit: VMCSField, _ rights: VMCSField) -> Segment {
            Segment(selector: UInt16(truncatingIfNeeded: read(selector)), base: read(base), limit: UInt32(truncatingIfNeeded: read(limit)),
                    vmxAccessRights: UInt32(truncatingIfNeeded: read(rights)))
        }
        special.cs = segment(.guestCSSelector, .guestCSBase, .guestCSLimit, .guestCSAccessRights)
        special.ds = segment(.guestDSSelector, .guestDSBase, .guestDSLimit, .guestDSAccessRights)
        special.es = segment(.guestESSelector, .guestESBase, .guestESLimit, .guestESAccessRights)
        special.ss = segment(.guestSSSelector, .guestSSBase, .guestSSLimit, .guestSSAccessRights)
        special.fs = segment(.guestFSSelector, .guestFSBase, .guestFSLimit, .guestFSAccessRights)
        special.gs = segment(.guestGSSelector, .guestGSBase, .guestGSLimit, .guestGSAccessRights)
        return special
    }

    func register(_ index: UInt8) -> UInt64 { index == 4 ? read(.guestRSP) : registers[Int(index)] }

    func setRegister(_ index: UInt8, _ value: UInt64) {
        if index == 4 { write(.guestRSP, value) } else { registers[Int(index)] = value }
    }

    // MARK: Running (VirtualCPU)

    /// Enters the guest (VMLAUNCH, then VMRESUME) until an exit the handlers must see.
    func run() throws(BackendFailure) -> VMExit {
        if let queued = queuedExit {
            queuedExit = nil
            return queued
        }
        while true {
            deliverInterrupt()
            let entered = hv_rdtsc()
            let status = registers.withUnsafeMutableBufferPointer { hv_vmx_enter($0.baseAddress, launched ? 1 : 0) }
            lastRoundTrip = hv_rdtsc() &- entered
            guard status == 0 else {
                // VMfailInvalid: no current VMCS, the engine's own failure; VMfailValid: the
                // VM-instruction error says which check (SDM 31.4).
                print("vmx: \(launched ? "VMRESUME" : "VMLAUNCH") failed: \(status == 1 ? "VMfailInvalid" : instructionError())")
                guard status == 2 else { throw BackendFailure(operation: "VMLAUNCH/VMRESUME (VMfailInvalid)") }
                return .entryFailure(hardwareReason: read(.vmInstructionError))
            }
            launched = true
            let reason = VMXExitReason(rawValue: UInt32(truncatingIfNeeded: read(.exitReason)))
            let qualification = read(.exitQualification)
            if reason.isEntryFailure {
                // SDM 27.8: the guest state failed a check the processor makes after loading it.
                print("vmx: VM entry failed: \(reason.basic.name ?? "reason \(reason.basic.rawValue)"), qualification \(qualification)")
                for failure in VMEntryValidator(capabilities: capabilities).validate(plan.vmcs) { print("vmx: HV's validator: \(failure.check.sentence) \(failure.detail)") }
                return .entryFailure(hardwareReason: UInt64(reason.rawValue))
            }
            switch reason.basic {
            case .ioInstruction:
                let io = IOInstructionQualification(qualification)
                let next = rip &+ read(.exitInstructionLength)
                guard io.isString else { return portExit(port: IOPort(io.port), size: io.size, read: io.isIn, next: next) }
                let (addressWidth, segment) = stringIOPrefixes()
                if let exit = stringPortExit(port: IOPort(io.port), size: io.size, read: io.isIn, repeated: io.hasREPPrefix,
                                             addressWidth: addressWidth, segment: segment, next: next) { return exit }
            case .eptViolation:
                if let exit = memoryExit(address: read(.guestPhysicalAddress), write: VMXEPTViolationExitQualification(qualification).write) { return exit }
            case .hlt:
                if let exit = haltExit() { return exit }
            case .cpuid:
                cpuid()
            case .rdmsr, .wrmsr:
                if let exit = msrExit(write: reason.basic == .wrmsr) { return exit }
            case .preemptionTimerExpired:
                // The timer counted down from the slice (SDM 26.5.1): a slice ended.
                pending = .preemptionTimer
                return .preemptionTimer
            case .externalInterrupt:
                // The image keeps every interrupt source masked; one that still arrives is
                // acknowledged on exit and dropped.
                statistics.hostInterrupts += 1
            case .tripleFault:
                return .shutdown
            case .eptMisconfiguration:
                print("vmx: EPT misconfiguration at \(hex(read(.guestPhysicalAddress)))")
                return .internalError(InternalError(suberror: 3))
            default:
                print("vmx: exit \(reason.basic.name ?? "\(reason.basic.rawValue)") at RIP \(hex(rip)) (qualification \(hex(qualification))): not handled")
                return .unknown(reason: reason.rawValue)
            }
        }
    }

    func rearmTimer() { write(.vmxPreemptionTimerValue, plan.vmcs[.vmxPreemptionTimerValue]) }

    deinit { releasePages(ram, bytes: Int(memorySize)) }

    func finish() {}
}
