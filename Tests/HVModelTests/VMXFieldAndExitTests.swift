import HVModel
import Testing

@Suite("VMCS fields, exits, bitmaps and plans")
struct VMXFieldAndExitTests {
    @Test("field encodings match SDM Appendix B")
    func encodings() {
        #expect(VMCSField.guestCR0.rawValue == 0x6800)
        #expect(VMCSField.guestCR0.width == .natural && VMCSField.guestCR0.kind == .guestState)
        #expect(VMCSField.eptPointer.rawValue == 0x201A && VMCSField.eptPointer.width == .bits64 && VMCSField.eptPointer.kind == .control)
        #expect(VMCSField.exitReason.rawValue == 0x4402 && VMCSField.exitReason.kind == .exitInformation)
        #expect(VMCSField.hostRIP.rawValue == 0x6C16 && VMCSField.hostRIP.kind == .hostState)
        #expect(VMCSField.virtualProcessorID.rawValue == 0x0000 && VMCSField.virtualProcessorID.width == .bits16)
        #expect(VMCSField.vmcsLinkPointer.rawValue == 0x2800)
        #expect(VMCSField.guestInterruptibilityState.rawValue == 0x4824)
        #expect(VMCSField.vmxPreemptionTimerValue.rawValue == 0x482E)
        #expect(VMCSField(width: .bits32, kind: .control, index: 1) == .primaryProcessorBasedControls)
        #expect(VMCSField(0x201B).name == "EPT pointer (high)")
        #expect(VMCSField(0x6801).hasReservedBits)
        #expect(VMCSField(name: "guest RIP") == .guestRIP)
        #expect(VMCSField.all.count >= 180)
        #expect(zip(VMCSField.all, VMCSField.all.dropFirst()).allSatisfy { $0.field < $1.field })
    }

    @Test("the formatter dumps named fields through the read function")
    func formatter() {
        let dump = formatVMCS(fields: [.guestCR0, .guestRIP, .exitReason]) { field in field == .exitReason ? nil : field.rawValue == 0x6800 ? 0x80050033 : 0x1000 }
        #expect(dump.contains("0x6800  guest CR0"))
        #expect(dump.contains("0x0000000080050033"))
        #expect(!dump.contains("exit reason"))
    }

    @Test("the VMCS image keeps widths and high halves")
    func image() {
        var vmcs = VMCSImage()
        vmcs[.guestCSSelector] = 0x12345
        #expect(vmcs[.guestCSSelector] == 0x2345)
        vmcs[.eptPointer] = 0x1111_2222_3333_4444
        vmcs[VMCSField.eptPointer.high] = 0xAAAA
        #expect(vmcs[.eptPointer] == 0x0000_AAAA_3333_4444)
        #expect(vmcs.wasWritten(.eptPointer) && !vmcs.wasWritten(.guestRIP))
    }

    @Test("exit 48 with qualification 0x181 decodes as a read EPT violation with a linear address")
    func eptViolation() {
        let q = VMXEPTViolationExitQualification(0x181)
        #expect(q.read && !q.write && !q.instructionFetch)
        #expect(q.guestLinearAddressValid && q.accessToTranslatedAddress)
        #expect(VMXBasicExitReason(rawValue: 48).name == "EPT violation")
        let lines = describeExitQualification(reason: .eptViolation, qualification: 0x181)!
        #expect(lines.first == "access: data read")
    }

    @Test("qualification decoders for CR, DR, I/O, task switch, APIC access, debug")
    func decoders() {
        let cr = ControlRegisterAccessQualification(0x0000_0304)  // MOV to CR4 from RBX
        #expect(cr.controlRegister == 4 && cr.accessType == .movToCR && cr.register == 3)
        #expect(MovDRQualification(0x17).lines == ["MOV from DR7 to RAX"])
        let io = IOInstructionQualification(0x03F8_0008)
        #expect(io.port == 0x3F8 && io.isIn && io.size == 1)
        #expect(TaskSwitchQualification(0x4000_0028).source == .iret)
        #expect(APICAccessQualification(0x10B0).offset == 0xB0 && APICAccessQualification(0x10B0).accessType == 1)
        #expect(DebugExceptionQualification(0x4001).singleStep && DebugExceptionQualification(0x4001).breakpointsHit == 1)
        let info = InterruptionInformation(0x8000_0B0E)
        #expect(info.isValid && info.vector == 14 && info.type == .hardwareException && info.errorCodeValid)
        let vmx = VMXInstructionInformation(0x1000_0400 | 2 << 3)
        #expect(vmx.isRegisterOperand && vmx.register1 == 2 && vmx.register2 == 1)
        #expect(VMXExitReason(rawValue: 0x8000_0021).isEntryFailure && VMXExitReason(rawValue: 0x8000_0021).basic == .invalidGuestState)
        #expect(VMXBasicExitReason.all.count == 76)
    }

    @Test("MSR bitmap positions follow SDM 25.6.9")
    func msrBitmap() {
        #expect(MSRBitmap.position(of: 0x10, .read)! == (2, 0))
        #expect(MSRBitmap.position(of: 0xC000_0080, .write)! == (3072 + 16, 0))
        #expect(MSRBitmap.position(of: 0x4000_0000, .read) == nil)
        var bitmap = MSRBitmap()
        let passed = bitmap.passThrough(0xC000_0100)
        #expect(passed)
        #expect(!bitmap.exits(0xC000_0100, .read) && !bitmap.exits(0xC000_0100, .write))
        #expect(bitmap.exits(0xC000_0101, .read) && bitmap.exits(0x4000_0000, .read))
        let outside = bitmap.passThrough(0x4000_0000)
        #expect(!outside)
        #expect(bitmap.passThroughCount == 2)
    }

    @Test("I/O bitmaps split at 8000H and catch multi-byte and wrapping accesses")
    func ioBitmaps() {
        var bitmaps = IOBitmaps(trapAll: false)
        bitmaps.setTrap(0x3F8, count: 8, true)
        bitmaps.setTrap(0x8000, true)
        #expect(bitmaps.a[0x3F8 / 8] == 0xFF && bitmaps.b[0] == 1)
        #expect(bitmaps.exits(0x3F6, size: 4))
        #expect(!bitmaps.exits(0x3F0, size: 4))
        #expect(bitmaps.exits(0xFFFF, size: 2))
    }

    @Test("plan with EPT, VPID, unrestricted guest and preemption timer works on Broadwell")
    func planBroadwell() throws {
        var config = VMXConfiguration()
        for knob in ["ept", "vpid", "unrestricted-guest", "preemption-timer"] {
            let known = config.set(knob, true)
            #expect(known)
        }
        let plan = try config.plan(for: VMXProfile.broadwellI7_5600U.capabilities)
        #expect(plan.entryFailures.isEmpty, "\(plan.entryFailures.map(\.message))")
        let secondary = SecondaryProcessorBasedControls(rawValue: UInt32(plan.vmcs[.secondaryProcessorBasedControls]))
        #expect(secondary.contains([.enableEPT, .enableVPID, .unrestrictedGuest]))
        #expect(plan.vmcs[.primaryProcessorBasedControls] & (1 << 15 | 1 << 16) == 0)  // CR3 exiting cleared
        #expect(plan.vmcs[.vmxPreemptionTimerValue] == 10_000_000 >> 5)
        #expect(plan.vmcs[.eptPointer] & 0xFFF == 0x1E)
    }

    @Test("addresses and sizes near 2^64 are configuration problems named by their knob, not arithmetic traps")
    func extremeLayout() {
        let broadwell = VMXProfile.broadwellI7_5600U.capabilities
        let cases: [(String, (inout VMXConfiguration) -> Void)] = [
            ("host-stack-size:", { $0.hostStackSize = UInt64.max & ~0xF }),
            ("guest-stack-size:", { $0.guestStackSize = UInt64.max & ~0xF }),
            ("guest-stack-size:", { $0.guestEntry = UInt64.max - 0x1000 }),
            ("guest-entry:", { $0.guestEntry = 0x1000 }),
            ("structure-base:", { $0.structureBase = UInt64.max & ~0xFFF }),
            ("host-stack-size:", { $0.hostStackSize = 1 }),
        ]
        for (knob, edit) in cases {
            var config = VMXConfiguration()
            edit(&config)
            do {
                _ = try config.plan(for: broadwell)
                Issue.record("\(knob) accepted")
            } catch {
                #expect(error.problems.contains { $0.message.hasPrefix(knob) }, "\(error.problems.map(\.message))")
            }
        }
    }

    @Test("the same plan fails on Core 2, naming the capability MSR")
    func planCore2() {
        var config = VMXConfiguration()
        for knob in ["ept", "vpid", "unrestricted-guest", "preemption-timer"] { _ = config.set(knob, true) }
        do {
            _ = try config.plan(for: VMXProfile.core2X6800.capabilities)
            Issue.record("planning succeeded on a CPU without EPT")
        } catch {
            let messages = error.problems.map(\.message)
            #expect(messages.contains { $0.hasPrefix("preemption-timer:") && $0.contains("IA32_VMX_PINBASED_CTLS") })
            #expect(messages.contains { $0.hasPrefix("ept:") && $0.contains("enable EPT") })
        }
    }

    @Test("a real-mode guest plans and enters with unrestricted guest on Ivy Bridge")
    func realMode() throws {
        var config = VMXConfiguration()
        config.unrestrictedGuest = true
        config.guestMode = .realMode
        let plan = try config.plan(for: VMXProfile.ivyBridgeI5_3570.capabilities)
        #expect(plan.entryFailures.isEmpty, "\(plan.entryFailures.map(\.message))")
        #expect(plan.vmcs[.guestCR0] & 1 == 0)
    }

    @Test("contradicting knobs are typed errors")
    func badKnobs() {
        var config = VMXConfiguration()
        config.apic.x2APICMode = true
        config.vpidValue = 0
        #expect(throws: VMXPlanError.self) { try config.plan(for: VMXProfile.broadwellI7_5600U.capabilities) }
    }
}
