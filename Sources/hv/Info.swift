// `hv info`: what this host's KVM offers, in words a newcomer understands.
import ArgumentParser
import Foundation
import HVCore
import HVKVM

struct Info: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Describe this host's KVM: API version, capabilities, vCPU limits.")

    @Flag(name: .long, help: "Print JSON instead of a table.")
    var json = false

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.bootstrap()
        let report = try reportingErrors { () throws(HVError) in try InfoReport.gather() }
        if json {
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            print(String(decoding: try encoder.encode(report), as: UTF8.self))
        } else {
            print(report.text)
        }
    }
}

struct InfoReport: Codable {
    struct Capability: Codable {
        var name: String
        var value: Int32
        var meaning: String
    }

    var device: String
    var apiVersion: Int32
    var vcpuMapSize: Int
    var recommendedVCPUs: Int32
    var maxVCPUs: Int32
    var memorySlots: Int32
    var hostCPU: String
    var hostCPUs: Int
    var hardwareVirtualization: Bool
    var supportedCPUIDLeaves: Int
    var capabilities: [Capability]

    static func gather() throws(HVError) -> InfoReport {
        let kvm = try KVMBackend()
        let host = HostCPU.current
        return InfoReport(
            device: KVMBackend.devicePath, apiVersion: kvm.apiVersion, vcpuMapSize: kvm.vcpuMapSize,
            recommendedVCPUs: kvm.check(.nrVCPUs), maxVCPUs: kvm.check(.maxVCPUs), memorySlots: kvm.check(.memorySlots),
            hostCPU: host.modelName, hostCPUs: host.logicalCPUs, hardwareVirtualization: host.hasHardwareVirtualization,
            supportedCPUIDLeaves: try kvm.supportedCPUID().count,
            capabilities: KVMCapability.reported.map { Capability(name: $0.name, value: kvm.check($0), meaning: $0.meaning) })
    }

    var text: String {
        var lines: [String] = []
        lines.append("KVM on this host (\(device))")
        lines.append("  API version      \(apiVersion)\(apiVersion == KVMBackend.stableAPIVersion ? " (the stable API)" : "")")
        lines.append("  host CPU         \(hostCPU), \(hostCPUs) logical CPUs")
        if hardwareVirtualization {
            lines.append("  guest execution  hardware-assisted (VT-x/AMD-V present): guest code runs natively")
        } else {
            lines.append("  guest execution  emulated: the CPU has no VT-x/AMD-V flag, so KVM interprets guest code")
            lines.append("                   (about 1 µs per instruction; keep guests small)")
        }
        lines.append("  vCPUs per VM     \(recommendedVCPUs) recommended, \(maxVCPUs) at most")
        lines.append("  memory slots     \(memorySlots)")
        lines.append("  kvm_run size     \(vcpuMapSize) bytes per vCPU")
        lines.append("  CPUID leaves     \(supportedCPUIDLeaves) offered to guests")
        lines.append("")
        lines.append("Capabilities (KVM_CHECK_EXTENSION; a number is a count, yes/no otherwise)")
        let width = capabilities.map(\.name.count).max() ?? 0
        let counted = Set(KVMCapability.reported.filter(\.isCount).map(\.name))
        for capability in capabilities {
            let value = counted.contains(capability.name)
                ? (capability.value == 0 ? "no" : "\(capability.value)")
                : (capability.value == 0 ? "no" : "yes")
            lines.append("  \(capability.name.padding(toLength: width, withPad: " ", startingAt: 0))  \(value.padding(toLength: 5, withPad: " ", startingAt: 0))  \(capability.meaning)")
        }
        return lines.joined(separator: "\n")
    }
}
