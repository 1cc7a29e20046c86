// A KVM VM: its file descriptor, memory slots and vCPUs.
// Documentation/virt/kvm/api.rst, 4.2 KVM_CREATE_VM, 4.35 KVM_SET_USER_MEMORY_REGION.
#if os(Linux)
import CKVM
import Glibc

/// Owns a VM file descriptor. vCPUs keep their VM alive.
public final class KVMVirtualMachine: VirtualMachine {
    public typealias CPU = KVMVCPU

    let fd: Int32
    let backend: KVMBackend
    public let configuration: VirtualMachineConfiguration
    /// The CPUID table every vCPU starts from (KVM_GET_SUPPORTED_CPUID), APIC ids patched per vCPU.
    let cpuid: [CPUIDEntry]

    /// Where KVM may place the three pages it needs for real mode on Intel (KVM_SET_TSS_ADDR)
    /// and the identity-map page: just below the 4 GiB BIOS area, inside the MMIO hole, as QEMU does.
    static let tssAddress: UInt = 0xFFFB_D000
    static let identityMapAddress: UInt64 = 0xFFFB_C000

    init(backend: KVMBackend, configuration: VirtualMachineConfiguration) throws(HVError) {
        self.backend = backend
        self.configuration = configuration
        let fd = try KVMSyscall.ioctl(backend.system.fd, HV_KVM_CREATE_VM, value: 0, "KVM_CREATE_VM")
        self.fd = fd
        do {
            cpuid = try backend.supportedCPUID()
            if backend.check(.setTSSAddress) != 0 {
                var identity = Self.identityMapAddress
                try KVMSyscall.ioctl(fd, HV_KVM_SET_IDENTITY_MAP_ADDR, &identity, "KVM_SET_IDENTITY_MAP_ADDR")
                try KVMSyscall.ioctl(fd, HV_KVM_SET_TSS_ADDR, value: Self.tssAddress, "KVM_SET_TSS_ADDR")
            }
            if configuration.trapUnknownMSRs {
                // api.rst 7.21 KVM_CAP_X86_USER_SPACE_MSR: send unknown and invalid accesses to us.
                var cap = kvm_enable_cap()
                cap.cap = UInt32(KVM_CAP_X86_USER_SPACE_MSR)
                cap.args.0 = UInt64(KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_FILTER)
                try KVMSyscall.ioctl(fd, HV_KVM_ENABLE_CAP, &cap, "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)")
            }
        } catch {
            KVMSyscall.close(fd)
            throw error
        }
    }

    deinit { KVMSyscall.close(fd) }

    /// The corresponding ioctl is `KVM_SET_USER_MEMORY_REGION`.
    public func map(_ region: MemoryRegion, slot: Int) throws(HVError) {
        guard slot >= 0, backend.capabilities.maxMemorySlots == 0 || slot < backend.capabilities.maxMemorySlots else {
            throw .configuration(ConfigurationError(field: "slot", value: "\(slot)",
                                                    expected: "0..<\(backend.capabilities.maxMemorySlots) (KVM_CAP_NR_MEMSLOTS)"))
        }
        var descriptor = kvm_userspace_memory_region(
            slot: UInt32(slot), flags: 0, guest_phys_addr: region.guestAddress.rawValue,
            memory_size: region.size, userspace_addr: UInt64(UInt(bitPattern: region.hostAddress)))
        try KVMSyscall.ioctl(fd, HV_KVM_SET_USER_MEMORY_REGION, &descriptor, "KVM_SET_USER_MEMORY_REGION")
    }

    /// The corresponding ioctls are `KVM_CREATE_VCPU` and `KVM_SET_CPUID2`.
    public func createVCPU(id: Int) throws(HVError) -> KVMVCPU {
        guard id >= 0, id < backend.capabilities.maxVCPUs else {
            throw .configuration(ConfigurationError(field: "vcpuID", value: "\(id)", expected: "0..<\(backend.capabilities.maxVCPUs)"))
        }
        let vcpuFD = try KVMSyscall.ioctl(fd, HV_KVM_CREATE_VCPU, value: UInt(id), "KVM_CREATE_VCPU")
        let vcpu: KVMVCPU
        do {
            let run = try KVMSyscall.mapShared(vcpuFD, size: backend.vcpuMapSize, "mmap(kvm_run)")
            vcpu = KVMVCPU(id: id, fd: vcpuFD, run: run, mapSize: backend.vcpuMapSize, vm: self)
        } catch {
            KVMSyscall.close(vcpuFD)
            throw error
        }
        let table = KVMCPUIDBuffer(entries: Self.cpuid(cpuid, forVCPU: UInt32(id)))
        try KVMSyscall.ioctl(vcpuFD, HV_KVM_SET_CPUID2, pointer: table.raw, "KVM_SET_CPUID2")
        return vcpu
    }

    /// `entries` with the initial APIC id set to `apicID` (CPUID.1:EBX[31:24]; CPUID.0BH/1FH:EDX,
    /// SDM Vol. 2A CPUID) so each vCPU sees its own id.
    static func cpuid(_ entries: [CPUIDEntry], forVCPU apicID: UInt32) -> [CPUIDEntry] {
        entries.map { entry in
            var entry = entry
            switch entry.function {
            case 0x1: entry.ebx = (entry.ebx & 0x00FF_FFFF) | (apicID << 24)
            case 0xB, 0x1F: entry.edx = apicID
            default: break
            }
            return entry
        }
    }
}
#endif
