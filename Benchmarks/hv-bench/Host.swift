// What the numbers depend on: the host CPU, the kernel, KVM's capabilities and the TSC rate.
import CKVMBaseline
import Foundation
import HVCore
import HVKVM

/// The host as the report describes it.
struct HostDescription: Codable {
    var cpu: String
    var logicalCPUs: Int
    var kernel: String
    /// VMX or SVM in /proc/cpuinfo; without it KVM emulates guest code in software (slow).
    var hardwareVirtualization: Bool
    var guestCodeEmulated: Bool
    /// constant_tsc and nonstop_tsc: the TSC ticks at one rate in every P- and C-state.
    var invariantTSC: Bool
    var loadAverage: [Double]

    static func current() -> HostDescription {
        let cpu = HostCPU.current
        var name = utsname()
        uname(&name)
        let kernel = withUnsafeBytes(of: name.release) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
        let flags = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8))?
            .split(separator: "\n").first { $0.hasPrefix("flags") }?.split(separator: " ").map(String.init) ?? []
        var loads = [Double](repeating: 0, count: 3)
        _ = getloadavg(&loads, 3)
        return HostDescription(
            cpu: cpu.modelName, logicalCPUs: cpu.logicalCPUs, kernel: kernel,
            hardwareVirtualization: cpu.hasHardwareVirtualization, guestCodeEmulated: !cpu.hasHardwareVirtualization,
            invariantTSC: flags.contains("constant_tsc") && flags.contains("nonstop_tsc"),
            loadAverage: loads.map { ($0 * 100).rounded() / 100 })
    }
}

/// The KVM capabilities that change what an exit costs.
struct KVMDescription: Codable {
    var apiVersion: Int32
    /// KVM_CAP_IRQCHIP: an in-kernel PIC/IOAPIC/LAPIC could take HLT and interrupt exits.
    /// Neither side of hv-bench creates one, so HLT exits to user space.
    var inKernelIRQChip: Bool
    var splitIRQChip: Bool
    var irqchipUsed: Bool
    var userSpaceMSRExits: Bool
    var immediateExit: Bool

    init(_ backend: KVMBackend) {
        apiVersion = backend.apiVersion
        inKernelIRQChip = backend.check(.irqchip) != 0
        splitIRQChip = backend.check(.splitIRQChip) != 0
        irqchipUsed = false
        userSpaceMSRExits = backend.check(.userSpaceMSR) != 0
        immediateExit = backend.check(.immediateExit) != 0
    }
}

/// TSC cycles against CLOCK_MONOTONIC, from a start point to now.
struct TSCClock {
    let startCycles: UInt64
    let startNanoseconds: UInt64

    init() {
        startNanoseconds = hvb_monotonic_ns()
        startCycles = hvb_rdtsc()
    }

    /// Cycles per nanosecond since `init` (GHz).
    var cyclesPerNanosecond: Double {
        let cycles = hvb_rdtsc() &- startCycles
        let nanoseconds = hvb_monotonic_ns() &- startNanoseconds
        return nanoseconds == 0 ? 1 : Double(cycles) / Double(nanoseconds)
    }

    /// A first estimate, measured over `seconds` of sleep.
    static func calibrate(seconds: Double = 0.05) -> Double {
        let clock = TSCClock()
        usleep(UInt32(seconds * 1_000_000))
        return clock.cyclesPerNanosecond
    }
}
