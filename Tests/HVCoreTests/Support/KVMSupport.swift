import Glibc
import HVCore
import HVKVM
import HVTestSupport
import Testing

/// Whether this host can run KVM tests, and why not.
enum KVMHost {
    /// nil when /dev/kvm opens; otherwise HV's one-line explanation.
    static let unavailableReason: String? = {
        do {
            _ = try KVMBackend()
            return nil
        } catch {
            return "\(error)"
        }
    }()

    static var available: Bool { unavailableReason == nil }

    /// A KVM machine with `memory` bytes and `cpus` vCPUs.
    static func machine(memory: UInt64 = 4 << 20, cpus: Int = 1,
                        configure: (inout VirtualMachineConfiguration) -> Void = { _ in }) throws -> Machine<KVMBackend>
    {
        var configuration = VirtualMachineConfiguration(memorySize: memory, cpuCount: cpus, timeLimit: 30)
        configure(&configuration)
        return try Machine(configuration: configuration, backend: KVMBackend())
    }
}

extension Trait where Self == ConditionTrait {
    /// Skips a test, saying why, when /dev/kvm is missing or not permitted; with
    /// HV_REQUIRE_KVM=1 (set by .ci/run where /dev/kvm exists) the test runs and fails instead,
    /// so a CI whose KVM broke cannot pass by skipping.
    static var requiresKVM: Self {
        .enabled(if: KVMHost.available || Requirement.kvm,
                 "skipped: \(KVMHost.unavailableReason ?? "")")
    }
}
