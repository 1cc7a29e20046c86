import HVModel
import Testing

@Suite("VMX capabilities and reconciliation")
struct VMXCapabilityTests {
    @Test("IA32_VMX_BASIC and MISC decode to the published Broadwell values")
    func broadwellDecode() {
        let caps = VMXProfile.broadwellI7_5600U.capabilities
        #expect(caps.vmcsRevisionID == 0x12)
        #expect(caps.vmcsRegionSize == 1024)
        #expect(caps.vmcsMemoryType == 6)
        #expect(caps.hasTrueControls)
        #expect(caps.reportsINSOUTSInformation)
        #expect(caps.preemptionTimerRate == 5)
        #expect(caps.cr3TargetCount == 4)
        #expect(caps.maxMSRListCount == 512)
        #expect(caps.activityStates == [.hlt, .shutdown, .waitForSIPI])
        #expect(caps.highestVMCSFieldIndex == 21)
        #expect(caps.eptVPID.contains([.pageWalkLength4, .writeBackEPTPointer, .pages2MiB, .pages1GiB, .accessedDirtyFlags, .invvpid]))
        #expect(!caps.eptVPID.contains(.pageWalkLength5))
        #expect(caps.vmFunctions == 1)
    }

    @Test("Core 2 has no TRUE controls and no secondary controls")
    func core2Decode() {
        let caps = VMXProfile.core2X6800.capabilities
        #expect(caps.vmcsRevisionID == 7)
        #expect(!caps.hasTrueControls)
        #expect(caps.allowedSettings(.primaryProcessorBased).msr == .processorBasedControls)
        #expect(caps.allowedSettings(.secondaryProcessorBased) == AllowedControlSettings(mustBeOne: 0, mayBeOne: 0, msr: nil))
    }

    @Test("TRUE MSRs are used when IA32_VMX_BASIC bit 55 is set")
    func trueControls() {
        let caps = VMXProfile.ivyBridgeI5_3570.capabilities
        let primary = caps.allowedSettings(.primaryProcessorBased)
        #expect(primary.msr == .trueProcessorBasedControls)
        #expect(primary.mustBeOne == 0x0400_6172)  // CR3-load/store exiting may be 0
    }

    @Test("an empty request on every profile yields the known default-1 values", arguments: VMXProfile.all.map(\.name))
    func knownAnswers(name: String) throws {
        let caps = VMXProfile.named(name)!.capabilities
        let pin = try caps.reconcile(.pinBased, ControlRequest())
        #expect(pin.value == 0x16)
        let primary = try caps.reconcile(.primaryProcessorBased, ControlRequest())
        #expect(primary.value == 0x0401_E172)
        let exit = try caps.reconcile(.primaryExit, ControlRequest())
        #expect(exit.value == 0x0003_6DFF)
        let entry = try caps.reconcile(.entry, ControlRequest())
        #expect(entry.value == 0x11FF)
        #expect(primary.decisions.allSatisfy { $0.reason == .defaultOne || $0.reason == .fixedOne })
    }

    @Test("EPT is reconciled on Broadwell and refused on Core 2, naming the bit and the MSR")
    func eptRequest() throws {
        let ept = UInt64(SecondaryProcessorBasedControls.enableEPT.rawValue)
        let value = try VMXProfile.broadwellI7_5600U.capabilities.reconcile(.secondaryProcessorBased, ControlRequest(required: ept))
        #expect(value.value == ept)
        #expect(throws: VMXReconcileError(problems: [.unsupported(field: .secondaryProcessorBased, bit: 1, msr: .processorBasedControls2)])) {
            try VMXProfile.core2X6800.capabilities.reconcile(.secondaryProcessorBased, ControlRequest(required: ept))
        }
        let message = VMXControlProblem.unsupported(field: .secondaryProcessorBased, bit: 1, msr: .processorBasedControls2).message
        #expect(message.contains("enable EPT") && message.contains("IA32_VMX_PROCBASED_CTLS2") && message.contains("bit 33"))
    }

    @Test("clearing CR3-load exiting needs TRUE controls; contradictions are errors; dropped optionals are reported")
    func clearingAndDropping() throws {
        let cr3 = UInt64(PrimaryProcessorBasedControls.cr3LoadExiting.rawValue)
        let ivy = try VMXProfile.ivyBridgeI5_3570.capabilities.reconcile(.primaryProcessorBased, ControlRequest(forbidden: cr3))
        #expect(ivy.value & cr3 == 0)
        #expect(throws: VMXReconcileError(problems: [.cannotBeZero(field: .primaryProcessorBased, bit: 15, msr: .processorBasedControls)])) {
            try VMXProfile.core2X6800.capabilities.reconcile(.primaryProcessorBased, ControlRequest(forbidden: cr3))
        }
        #expect(throws: VMXReconcileError(problems: [.contradiction(field: .primaryProcessorBased, bit: 15)])) {
            try VMXProfile.ivyBridgeI5_3570.capabilities.reconcile(.primaryProcessorBased, ControlRequest(required: cr3, forbidden: cr3))
        }
        let timer = UInt64(PinBasedControls.activateVMXPreemptionTimer.rawValue)
        let pin = try VMXProfile.core2X6800.capabilities.reconcile(.pinBased, ControlRequest(optional: timer))
        #expect(pin.value & timer == 0)
        #expect(pin.dropped == timer)
    }

    @Test("random wants always honour allowed-0/allowed-1 or fail", arguments: VMXProfile.all.map(\.name))
    func randomWants(name: String) {
        let caps = VMXProfile.named(name)!.capabilities
        var generator = SplitMix64(seed: 0x5EED_0000 + UInt64(name.count))
        for _ in 0..<2000 {
            let field = VMXControlField.allCases[Int(generator.next() % 7)]
            let required = generator.next() & generator.next()
            let forbidden = generator.next() & generator.next() & generator.next()
            let optional = generator.next()
            let width: UInt64 = field.is64Bit ? .max : 0xFFFF_FFFF
            let request = ControlRequest(required: required & width, forbidden: forbidden & width, optional: optional & width)
            do {
                let result = try caps.reconcile(field, request)
                let settings = caps.allowedSettings(field)
                #expect(settings.allows(result.value))
                #expect(result.value & request.required == request.required)
                #expect(result.value & request.forbidden == 0)
            } catch {
                #expect(!error.problems.isEmpty)
                for problem in error.problems { #expect(problem.field == field) }
            }
        }
    }

    @Test("capability text round-trips and rejects bad lines with their number")
    func parsing() throws {
        let caps = VMXProfile.broadwellI7_5600U.capabilities
        #expect(try VMXCapabilities.parse(caps.text) == caps)
        let text = "# dump\nIA32_VMX_BASIC 0x00da0400`00000012\n0x485 300481e5\nMAXPHYADDR 39\n"
        let parsed = try VMXCapabilities.parse(text)
        #expect(parsed.vmcsRevisionID == 0x12 && parsed.preemptionTimerRate == 5 && parsed.physicalAddressWidth == 39)
        #expect(throws: VMXCapabilityParseError(line: 2, message: "'0x999' is not a VMX capability MSR (0x480-0x493 or a name such as IA32_VMX_BASIC)")) {
            try VMXCapabilities.parse("0x480 0x12\n0x999 1\n")
        }
        #expect(throws: VMXCapabilityParseError.self) { try VMXCapabilities.parse("0x485 0x1\n") }
        // A VMX_BASIC no processor reports is named, on its line.
        #expect(throws: VMXCapabilityParseError(line: 2, message: "IA32_VMX_BASIC 0x0000000000000000: the VMCS region size (bits 44:32) is 0; processors report 1 to 4096 bytes (SDM A.1)")) {
            try VMXCapabilities.parse("MAXPHYADDR 39\nIA32_VMX_BASIC 0\n")
        }
        #expect(throws: VMXCapabilityParseError.self) { try VMXCapabilities.parse("IA32_VMX_BASIC 0x00d8040080000012\n") }  // bit 31
        #expect(throws: VMXCapabilityParseError.self) { try VMXCapabilities.parse("IA32_VMX_BASIC 0x00cc040000000012\n") }  // type 3
    }
}

/// A seeded generator (SplitMix64) so property tests are reproducible.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
