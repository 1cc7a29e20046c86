// The kernel's own linear-address translation, for checking HV's walker against KVM.
// Documentation/virt/kvm/api.rst, 4.38 KVM_TRANSLATE.
#if os(Linux)
import CKVM
import HVCore

/// What `KVM_TRANSLATE` reports for one linear address.
public struct KVMTranslation: Sendable, Equatable {
    /// The guest-physical address (meaningful when `valid`).
    public var physicalAddress: GuestPhysicalAddress
    /// False when the address does not translate.
    public var valid: Bool
    /// As reported; x86 KVM always says 1 here, whatever the page's R/W bit.
    public var writeable: Bool
    /// As reported; x86 KVM always says 0 here.
    public var usermode: Bool
}

extension KVMVCPU {
    /// Asks the kernel to translate `address` with this vCPU's current paging state
    /// (a supervisor-mode read). The corresponding ioctl is `KVM_TRANSLATE`.
    public func kernelTranslate(_ address: GuestVirtualAddress) throws(HVError) -> KVMTranslation {
        var translation = kvm_translation()
        translation.linear_address = address.rawValue
        try KVMSyscall.ioctl(fd, HV_KVM_TRANSLATE, &translation, "KVM_TRANSLATE")
        return KVMTranslation(physicalAddress: GuestPhysicalAddress(translation.physical_address),
                              valid: translation.valid != 0, writeable: translation.writeable != 0,
                              usermode: translation.usermode != 0)
    }
}
#endif
