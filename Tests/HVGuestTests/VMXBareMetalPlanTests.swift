// The VMCS the bare-metal VMX engine (BareMetal/Kernel/VMX.swift) writes, made here without a
// CPU: the same `VMXConfiguration.bareMetal` plan, host state of the image's shape and the same
// guest starts (real mode for its first guest; HVGuest's long-mode set-up, which hv demo's guest
// uses, for the second), checked by HV's VM-entry validator for every bundled CPU profile.
import HVGuest
import HVModel
import Testing

@Suite("Bare-metal VMX engine: the VMCS it writes")
struct VMXBareMetalPlanTests {
    /// The host state the image runs with: its boot CR0 (PG, MP, PE, ET) and CR4 (PAE, OSFXSR,
    /// OSXMMEXCPT) with VMX's fixed bits, EFER.LME/LMA, the power-on PAT, its GDT, IDT and TSS in
    /// the image at 4 MiB, the exit stub as RIP and a stack from the heap.
    static func host(_ capabilities: VMXCapabilities) -> VMXHostState {
        let (cr0, cr4) = VMXConfiguration.controlRegistersForVMXON(cr0: 0x8000_0013, cr4: 0x620, capabilities: capabilities)
        return VMXHostState(cr0: cr0, cr3: 0x40_9000, cr4: cr4, taskBase: 0x41_2000, gdtBase: 0x41_0000, idtBase: 0x80_1000,
                            efer: 0x500, pat: 0x0007_0406_0007_0406, entry: 0x40_1230, stack: 0x90_4000)
    }

    /// The guest start hv demo's guest gets from its image (HVGuest's long-mode set-up).
    static func longModeStart() throws -> VMXGuestStart {
        let program = try GuestProgram.longMode { a throws(AssemblerError) in a.hlt() }
        let image = try program.image(memorySize: 2 << 20)
        return VMXGuestStart(special: image.specialRegisters, rip: image.registers.rip, rsp: image.registers.rsp, rflags: image.registers.rflags)
    }

    static let eptPointer: UInt64 = 0x0120_3000 | 3 << 3 | 6

    static func plan(_ configuration: VMXConfiguration, _ capabilities: VMXCapabilities, _ start: VMXGuestStart) -> Result<VMXPlan, VMXPlanError> {
        Result { () throws(VMXPlanError) in
            try configuration.plan(for: capabilities, host: host(capabilities), guest: start, eptPointer: eptPointer)
        }
    }

    @Test("the long-mode guest's VMCS passes every VM-entry check on each profile with EPT; Core 2 is refused by knob",
          arguments: VMXProfile.all.map(\.name))
    func longModeGuest(profileName: String) throws {
        let profile = try #require(VMXProfile.named(profileName))
        let capabilities = profile.capabilities
        let configuration = VMXConfiguration.bareMetal(guestMode: .longMode, structureBase: 0x0110_0000, preemptionTimerTSC: nil)
        let start = try Self.longModeStart()
        guard capabilities.allowedSettings(.secondaryProcessorBased).mayBeOne & UInt64(SecondaryProcessorBasedControls.enableEPT.rawValue) != 0 else {
            guard case .failure(let error) = Self.plan(configuration, capabilities, start) else {
                Issue.record("\(profile.name) has no EPT, yet the plan was made")
                return
            }
            #expect(error.problems.contains { $0.message.hasPrefix("ept:") }, "\(error.problems.map(\.message))")
            return
        }
        let plan = try configuration.plan(for: capabilities, host: Self.host(capabilities), guest: start, eptPointer: Self.eptPointer)
        #expect(plan.entryFailures.isEmpty, "\(profile.name): \(plan.entryFailures.map { "\($0.check): \($0.detail)" })")
        #expect(plan.vmcs[.eptPointer] == Self.eptPointer)
        #expect(plan.vmcs[.hostRIP] == 0x40_1230)
        #expect(plan.vmcs[.hostTRSelector] == 0x18)
        #expect(plan.vmcs[.guestRIP] == start.rip)
        #expect(plan.vmcs[.guestCR3] == start.special.cr3)
        // CR0 carries the bits VMX fixes (NE); the shadow says what the guest set.
        #expect(plan.vmcs[.guestCR0] & capabilities.cr0MustBeOne == capabilities.cr0MustBeOne)
        #expect(plan.vmcs[.cr0ReadShadow] == start.special.cr0)
        #expect(plan.decisions.contains { $0.knob == "ept" && $0.text.contains("VMM's own") })
        // Every port exits; FS base passes through; the TSC exits.
        let io = try #require(plan.ioBitmaps)
        #expect(io.traps(0x3F8) && io.traps(0xF4) && io.traps(0xFFFF))
        let msrs = try #require(plan.msrBitmap)
        #expect(!msrs.exits(0xC000_0100, .read) && msrs.exits(0x10, .read))
    }

    @Test("the real-mode guest's VMCS needs unrestricted guest: passes where the CPU has it, refused by knob where not",
          arguments: VMXProfile.all.map(\.name))
    func realModeGuest(profileName: String) throws {
        let profile = try #require(VMXProfile.named(profileName))
        let capabilities = profile.capabilities
        let configuration = VMXConfiguration.bareMetal(guestMode: .realMode, structureBase: 0x0110_0000, preemptionTimerTSC: nil)
        let start = VMXGuestStart(special: .realMode, rip: 0x1000, rsp: 0x8000)
        let unrestricted = capabilities.allowedSettings(.secondaryProcessorBased).mayBeOne & UInt64(SecondaryProcessorBasedControls.unrestrictedGuest.rawValue) != 0
        switch Self.plan(configuration, capabilities, start) {
        case .success(let plan):
            #expect(unrestricted)
            #expect(plan.entryFailures.isEmpty, "\(profile.name): \(plan.entryFailures.map { "\($0.check): \($0.detail)" })")
            // PE and PG stay clear (unrestricted guest); NE is forced, and the shadow hides it.
            #expect(plan.vmcs[.guestCR0] & (ControlBits.cr0PE | ControlBits.cr0PG) == 0)
            #expect(plan.vmcs[.cr0ReadShadow] == ControlBits.cr0ET)
        case .failure(let error):
            #expect(!unrestricted)
            #expect(error.problems.contains { $0.message.contains("unrestricted-guest") })
        }
    }

    @Test("a guest state the checks refuse is reported by rule before any VMLAUNCH")
    func brokenGuestIsReported() throws {
        let capabilities = VMXProfile.broadwellI7_5600U.capabilities
        var start = try Self.longModeStart()
        start.special.cs.long = false  // IA-32e mode guest with a CS that is not 64-bit and not 32-bit
        start.special.cs.defaultSize32 = true
        start.special.tr.selector = 0x04  // TI set: the TR selector must point into the GDT
        let configuration = VMXConfiguration.bareMetal(guestMode: .longMode, structureBase: 0x0110_0000, preemptionTimerTSC: nil)
        let plan = try configuration.plan(for: capabilities, host: Self.host(capabilities), guest: start, eptPointer: Self.eptPointer)
        #expect(plan.entryFailures.contains { $0.check.field == .guestTRSelector })
    }

    @Test("the preemption timer's slice becomes timer ticks at the CPU's rate")
    func preemptionTimer() throws {
        let capabilities = VMXProfile.broadwellI7_5600U.capabilities  // rate 5: one tick per 32 TSC cycles
        let configuration = VMXConfiguration.bareMetal(guestMode: .longMode, structureBase: 0x0110_0000, preemptionTimerTSC: 32_000)
        let plan = try configuration.plan(for: capabilities, host: Self.host(capabilities), guest: try Self.longModeStart(), eptPointer: Self.eptPointer)
        #expect(plan.vmcs[.vmxPreemptionTimerValue] == 1000)
        #expect(plan.entryFailures.isEmpty)
    }

    @Test("the capability MSRs are read only where SDM Appendix A says they exist",
          arguments: VMXProfile.all.map(\.name))
    func capabilityMSRsRead(profileName: String) throws {
        let profile = try #require(VMXProfile.named(profileName))
        var asked: [VMXCapabilityMSR] = []
        let read = VMXCapabilities.read(physicalAddressWidth: profile.capabilities.physicalAddressWidth) { msr in
            asked.append(msr)
            return profile.capabilities[msr] ?? 0
        }
        for msr in asked { #expect(profile.capabilities[msr] != nil, "\(profile.name): \(msr) read but not reported") }
        for (msr, value) in profile.capabilities.reported where ![.vmFunctions, .processorBasedControls3, .exitControls2].contains(msr) {
            #expect(read[msr] == value, "\(profile.name): \(msr)")
        }
    }

    @Test("segment attributes convert between the SVM and VMX forms")
    func accessRights() {
        let code = Segment(selector: 0x08, base: 0, limit: 0xFFFF_FFFF, svmAttributes: 0xA9B)
        #expect(code.long && code.granularity && code.present && code.type == 0xB)
        #expect(code.vmxAccessRights == 0xA09B)
        let back = Segment(selector: 0x08, base: 0, limit: 0xFFFF_FFFF, vmxAccessRights: 0xA09B)
        #expect(back == code)
        var unusable = Segment()
        unusable.unusable = true
        #expect(unusable.vmxAccessRights == 1 << 16)
        #expect(Segment(selector: 0, base: 0, limit: 0, vmxAccessRights: 1 << 16).unusable)
    }
}
