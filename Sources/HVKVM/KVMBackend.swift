// The KVM system handle: /dev/kvm, its API version and capabilities, the CPUID it supports.
// Documentation/virt/kvm/api.rst, 4.1-4.5 (system ioctls).
#if os(Linux)
import CKVM
import HVCore
import Glibc

/// Owns the open `/dev/kvm` file descriptor.
final class KVMSystemHandle: Sendable {
    let fd: Int32
    init(fd: Int32) { self.fd = fd }
    deinit { KVMSyscall.close(fd) }
}

/// The Linux KVM backend.
public struct KVMBackend: Backend {
    public typealias VM = KVMVirtualMachine

    /// The device path: `HV_KVM_DEVICE` from the environment, or /dev/kvm.
    public static var devicePath: String {
        getenv("HV_KVM_DEVICE").map { String(cString: $0) } ?? "/dev/kvm"
    }
    /// The only stable KVM API version (api.rst 4.1: "The API version is 12").
    public static let stableAPIVersion: Int32 = 12

    let system: KVMSystemHandle
    public let name = "kvm"
    /// `KVM_GET_API_VERSION`.
    public let apiVersion: Int32
    /// Size of each vCPU's `kvm_run` mapping (`KVM_GET_VCPU_MMAP_SIZE`).
    public let vcpuMapSize: Int
    public let capabilities: BackendCapabilities

    /// Opens `path` (normally /dev/kvm) and checks the API version.
    /// Fails with `HVError.hypervisorUnavailable` when the device is missing or not permitted.
    public init(path: String = KVMBackend.devicePath) throws(HVError) {
        let fd = try KVMSyscall.openDevice(path)
        let system = KVMSystemHandle(fd: fd)
        let version = try KVMSyscall.ioctl(fd, HV_KVM_GET_API_VERSION, "KVM_GET_API_VERSION")
        guard version == Self.stableAPIVersion else { throw .unsupportedAPIVersion(version) }
        self.system = system
        self.apiVersion = version
        self.vcpuMapSize = Int(try KVMSyscall.ioctl(fd, HV_KVM_GET_VCPU_MMAP_SIZE, "KVM_GET_VCPU_MMAP_SIZE"))
        func check(_ capability: KVMCapability) -> Int32 { Self.check(capability, fd: fd) }
        let recommended = Int(check(.nrVCPUs))
        let maximum = Int(check(.maxVCPUs))
        self.capabilities = BackendCapabilities(
            maxVCPUs: maximum > 0 ? maximum : (recommended > 0 ? recommended : 4),
            maxMemorySlots: Int(check(.memorySlots)),
            msrTrapping: check(.userSpaceMSR) != 0,
            immediateExit: check(.immediateExit) != 0,
            hardwareVirtualization: HostCPU.current.hasHardwareVirtualization)
    }

    /// `KVM_CHECK_EXTENSION` on the system fd: 0 when absent, 1 or a count when present.
    /// The corresponding ioctl is `KVM_CHECK_EXTENSION`.
    public func check(_ capability: KVMCapability) -> Int32 { Self.check(capability, fd: system.fd) }

    /// The answer, or the failed call itself: KVM answers 0 for a capability it lacks, so a
    /// failure (a closed or wrong descriptor) is a different fact and is reported as one. What a
    /// VM cannot work without (the irqchips, the PIT, Hyper-V's) is checked this way: a refusal
    /// then names the failed call instead of blaming the kernel for lacking the capability.
    public func checkReportingErrors(_ capability: KVMCapability) throws(HVError) -> Int32 {
        do {
            return try KVMSyscall.ioctl(system.fd, HV_KVM_CHECK_EXTENSION, value: UInt(capability.number), "KVM_CHECK_EXTENSION")
        } catch {
            throw error.naming("KVM_CHECK_EXTENSION(\(capability.name))")
        }
    }

    private static func check(_ capability: KVMCapability, fd: Int32) -> Int32 {
        do {
            return try KVMSyscall.ioctl(fd, HV_KVM_CHECK_EXTENSION, value: UInt(capability.number), "KVM_CHECK_EXTENSION")
        } catch {
            // Treated as absent, but said: "absent" and "could not ask" are different answers.
            LogCategory.kvm.logger.warning("KVM_CHECK_EXTENSION(\(capability.name)) failed (\(error)); treating it as absent")
            return 0
        }
    }

    /// The CPUID leaves KVM can present to a guest. The corresponding ioctl is `KVM_GET_SUPPORTED_CPUID`.
    public func supportedCPUID() throws(HVError) -> [CPUIDEntry] {
        var capacity = 128
        while true {
            let buffer = KVMCPUIDBuffer(capacity: capacity)
            do {
                try KVMSyscall.ioctl(system.fd, HV_KVM_GET_SUPPORTED_CPUID, pointer: buffer.raw, "KVM_GET_SUPPORTED_CPUID")
                return buffer.entries
            } catch {
                // E2BIG: the array was too small; api.rst says to retry with a bigger one.
                if case .systemCall(_, let code) = error, code == E2BIG, capacity < 4096 {
                    capacity *= 2
                    continue
                }
                throw error
            }
        }
    }

    /// The Hyper-V CPUID leaves (0x40000000 up) KVM emulates, for a guest with Hyper-V
    /// enlightenments. The corresponding ioctl is the system `KVM_GET_SUPPORTED_HV_CPUID`
    /// (api.rst 4.118, KVM_CAP_SYS_HYPERV_CPUID).
    public func supportedHyperVCPUID() throws(HVError) -> [CPUIDEntry] {
        guard check(.hyperVCPUID) != 0 else {
            throw .unsupported(knob: "cpu hv-passthrough", backend: name,
                               reason: "this kernel's KVM does not emulate Hyper-V (no KVM_CAP_SYS_HYPERV_CPUID; CONFIG_KVM_HYPERV is off or the kernel is older than 5.11)")
        }
        let buffer = KVMCPUIDBuffer(capacity: 64)
        try KVMSyscall.ioctl(system.fd, HV_KVM_GET_SUPPORTED_HV_CPUID, pointer: buffer.raw, "KVM_GET_SUPPORTED_HV_CPUID")
        return buffer.entries
    }

    public func createVirtualMachine(configuration: VirtualMachineConfiguration) throws(HVError) -> KVMVirtualMachine {
        do { try configuration.validate() } catch { throw .configuration(error) }
        guard configuration.cpuCount <= capabilities.maxVCPUs else {
            throw .configuration(ConfigurationError(field: "cpuCount", value: "\(configuration.cpuCount)",
                                                    expected: "at most \(capabilities.maxVCPUs) on this host's KVM (KVM_CAP_MAX_VCPUS)"))
        }
        if configuration.trapUnknownMSRs && !capabilities.msrTrapping {
            throw .unsupported(knob: "trapUnknownMSRs", backend: name,
                               reason: "this kernel lacks KVM_CAP_X86_USER_SPACE_MSR; set trapUnknownMSRs = false")
        }
        return try KVMVirtualMachine(backend: self, configuration: configuration)
    }
}

/// A heap `struct kvm_cpuid2` with room for `capacity` entries.
final class KVMCPUIDBuffer {
    let raw: UnsafeMutableRawPointer
    let capacity: Int
    private let byteCount: Int

    init(capacity: Int) {
        self.capacity = capacity
        byteCount = MemoryLayout<kvm_cpuid2>.size + capacity * MemoryLayout<kvm_cpuid_entry2>.stride
        raw = UnsafeMutableRawPointer.allocate(byteCount: byteCount, alignment: 16)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: byteCount)
        raw.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent = UInt32(capacity)
    }

    convenience init(entries: [CPUIDEntry]) {
        self.init(capacity: entries.count)
        let base = entryBase
        for (i, entry) in entries.enumerated() {
            var raw = kvm_cpuid_entry2()
            raw.function = entry.function
            raw.index = entry.index
            raw.flags = entry.flags
            raw.eax = entry.eax
            raw.ebx = entry.ebx
            raw.ecx = entry.ecx
            raw.edx = entry.edx
            base[i] = raw
        }
    }

    deinit { raw.deallocate() }

    private var entryBase: UnsafeMutablePointer<kvm_cpuid_entry2> {
        (raw + MemoryLayout<kvm_cpuid2>.size).assumingMemoryBound(to: kvm_cpuid_entry2.self)
    }

    var entries: [CPUIDEntry] {
        let count = min(Int(raw.assumingMemoryBound(to: kvm_cpuid2.self).pointee.nent), capacity)
        return (0..<count).map { i in
            let e = entryBase[i]
            return CPUIDEntry(function: e.function, index: e.index, flags: e.flags, eax: e.eax, ebx: e.ebx, ecx: e.ecx, edx: e.edx)
        }
    }
}
#endif
