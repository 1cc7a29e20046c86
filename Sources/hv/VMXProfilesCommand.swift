// `hv vmx profiles`: the built-in capability profiles of real CPUs and where their values come from.
import ArgumentParser
import HVCore

struct VMXProfilesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "profiles",
        abstract: "List the built-in VMX capability profiles of real CPUs, with their sources.")

    @Flag(name: .long, help: "Also print each profile as an --msr-file text (MSR VALUE pairs).")
    var msrs = false

    func run() {
        for profile in VMXProfile.all {
            let caps = profile.capabilities
            var features: [String] = []
            let secondary = caps.allowedSettings(.secondaryProcessorBased).mayBeOne
            let pin = caps.allowedSettings(.pinBased).mayBeOne
            if secondary & UInt64(SecondaryProcessorBasedControls.enableEPT.rawValue) != 0 { features.append("EPT") }
            if secondary & UInt64(SecondaryProcessorBasedControls.enableVPID.rawValue) != 0 { features.append("VPID") }
            if secondary & UInt64(SecondaryProcessorBasedControls.unrestrictedGuest.rawValue) != 0 { features.append("unrestricted guest") }
            if pin & UInt64(PinBasedControls.activateVMXPreemptionTimer.rawValue) != 0 { features.append("preemption timer") }
            if caps.eptVPID.contains(.pages1GiB) { features.append("1-GByte EPT pages") }
            if caps.eptVPID.contains(.accessedDirtyFlags) { features.append("EPT A/D") }
            if secondary & UInt64(SecondaryProcessorBasedControls.vmcsShadowing.rawValue) != 0 { features.append("VMCS shadowing") }
            if secondary & UInt64(SecondaryProcessorBasedControls.virtualInterruptDelivery.rawValue) != 0 { features.append("virtual-interrupt delivery") }
            if pin & UInt64(PinBasedControls.processPostedInterrupts.rawValue) != 0 { features.append("posted interrupts") }
            print(profile.name)
            print("  processor: \(profile.processor)")
            print("  source:    \(profile.source)")
            print("  VMCS revision \(caps.vmcsRevisionID), \(caps.reported.count) capability MSRs, MAXPHYADDR \(caps.physicalAddressWidth)")
            print("  has:       \(features.isEmpty ? "none of EPT, VPID, unrestricted guest, preemption timer (no secondary controls)" : features.joined(separator: ", "))")
            if msrs {
                for line in caps.text.split(separator: "\n") { print("    \(line)") }
            }
        }
    }
}
