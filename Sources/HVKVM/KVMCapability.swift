// The KVM capabilities HV asks about, each with a sentence a newcomer understands.
// Source: Documentation/virt/kvm/api.rst, section 8 ("Other capabilities") and 4.37 KVM_ENABLE_CAP.
#if os(Linux)
import CKVM
import HVCore

/// A KVM capability number (`KVM_CAP_*`) and what it means.
public struct KVMCapability: Sendable, Hashable {
    public let number: Int32
    /// The kernel's name, e.g. "KVM_CAP_IRQCHIP".
    public let name: String
    /// What having it lets a VMM do.
    public let meaning: String

    /// Whether the answer is a count (e.g. max vCPUs) rather than yes/no.
    public let isCount: Bool

    init(_ number: Int32, _ name: String, _ meaning: String, isCount: Bool = false) {
        self.number = number
        self.name = name
        self.meaning = meaning
        self.isCount = isCount
    }

    public static let userMemory = KVMCapability(KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY", "guest RAM can be ordinary process memory (KVM_SET_USER_MEMORY_REGION)")
    public static let setTSSAddress = KVMCapability(KVM_CAP_SET_TSS_ADDR, "KVM_CAP_SET_TSS_ADDR", "a TSS address can be set, needed to run real-mode code on Intel without unrestricted guest")
    public static let irqchip = KVMCapability(KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP", "the kernel can emulate the interrupt controllers (PIC, IOAPIC, LAPIC)")
    public static let splitIRQChip = KVMCapability(KVM_CAP_SPLIT_IRQCHIP, "KVM_CAP_SPLIT_IRQCHIP", "LAPICs in the kernel, IOAPIC and PIC in user space")
    public static let pit2 = KVMCapability(KVM_CAP_PIT2, "KVM_CAP_PIT2", "the kernel can emulate the 8254 timer (PIT)")
    public static let hlt = KVMCapability(KVM_CAP_HLT, "KVM_CAP_HLT", "HLT can exit to user space")
    public static let nrVCPUs = KVMCapability(KVM_CAP_NR_VCPUS, "KVM_CAP_NR_VCPUS", "recommended maximum vCPUs per VM", isCount: true)
    public static let maxVCPUs = KVMCapability(KVM_CAP_MAX_VCPUS, "KVM_CAP_MAX_VCPUS", "hard maximum vCPUs per VM", isCount: true)
    public static let maxVCPUID = KVMCapability(KVM_CAP_MAX_VCPU_ID, "KVM_CAP_MAX_VCPU_ID", "largest vCPU id + 1", isCount: true)
    public static let memorySlots = KVMCapability(KVM_CAP_NR_MEMSLOTS, "KVM_CAP_NR_MEMSLOTS", "memory slots per address space", isCount: true)
    public static let immediateExit = KVMCapability(KVM_CAP_IMMEDIATE_EXIT, "KVM_CAP_IMMEDIATE_EXIT", "a running vCPU can be kicked out cleanly (how HV pauses and stops)")
    public static let userSpaceMSR = KVMCapability(KVM_CAP_X86_USER_SPACE_MSR, "KVM_CAP_X86_USER_SPACE_MSR", "RDMSR/WRMSR of unknown MSRs can exit to user space (invalid-MSR trapping)")
    public static let msrFilter = KVMCapability(KVM_CAP_X86_MSR_FILTER, "KVM_CAP_X86_MSR_FILTER", "chosen MSRs can be forced to exit to user space (an MSR bitmap)")
    public static let guestDebug = KVMCapability(KVM_CAP_SET_GUEST_DEBUG, "KVM_CAP_SET_GUEST_DEBUG", "single-step, breakpoints and debug exceptions can be intercepted")
    public static let hwBreakpoints = KVMCapability(KVM_CAP_GUEST_DEBUG_HW_BPS, "KVM_CAP_GUEST_DEBUG_HW_BPS", "hardware breakpoints usable for guest debug", isCount: true)
    public static let xsave = KVMCapability(KVM_CAP_XSAVE, "KVM_CAP_XSAVE", "the extended FPU/vector state can be read and written (KVM_GET_XSAVE)")
    public static let xcrs = KVMCapability(KVM_CAP_XCRS, "KVM_CAP_XCRS", "XCR0 can be read and written")
    public static let vcpuEvents = KVMCapability(KVM_CAP_VCPU_EVENTS, "KVM_CAP_VCPU_EVENTS", "pending exceptions, interrupts and NMIs can be saved and restored")
    public static let ioeventfd = KVMCapability(KVM_CAP_IOEVENTFD, "KVM_CAP_IOEVENTFD", "guest writes can signal an eventfd without leaving the kernel")
    public static let irqfd = KVMCapability(KVM_CAP_IRQFD, "KVM_CAP_IRQFD", "an eventfd can inject an interrupt")
    public static let signalMSI = KVMCapability(KVM_CAP_SIGNAL_MSI, "KVM_CAP_SIGNAL_MSI", "message-signalled interrupts can be injected")
    public static let x2apicAPI = KVMCapability(KVM_CAP_X2APIC_API, "KVM_CAP_X2APIC_API", "32-bit x2APIC ids and broadcast suppression")
    public static let tscDeadline = KVMCapability(KVM_CAP_TSC_DEADLINE_TIMER, "KVM_CAP_TSC_DEADLINE_TIMER", "the LAPIC timer has TSC-deadline mode")
    public static let tscControl = KVMCapability(KVM_CAP_TSC_CONTROL, "KVM_CAP_TSC_CONTROL", "the guest TSC frequency can be set")
    public static let readonlyMemory = KVMCapability(KVM_CAP_READONLY_MEM, "KVM_CAP_READONLY_MEM", "memory slots can be read-only (writes exit as MMIO)")
    public static let dirtyLogRing = KVMCapability(KVM_CAP_DIRTY_LOG_RING, "KVM_CAP_DIRTY_LOG_RING", "dirty pages reported through a ring (live migration)", isCount: true)
    public static let manualDirtyLogProtect = KVMCapability(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, "KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2", "dirty bitmap can be cleared piece by piece", isCount: true)
    public static let nestedState = KVMCapability(KVM_CAP_NESTED_STATE, "KVM_CAP_NESTED_STATE", "nested virtualization state can be saved (VMX/SVM inside the guest)", isCount: true)
    public static let syncRegisters = KVMCapability(KVM_CAP_SYNC_REGS, "KVM_CAP_SYNC_REGS", "registers can be shared through kvm_run without extra ioctls", isCount: true)
    public static let coalescedMMIO = KVMCapability(KVM_CAP_COALESCED_MMIO, "KVM_CAP_COALESCED_MMIO", "MMIO writes can be batched in a ring instead of exiting one by one", isCount: true)
    public static let hyperVSynIC2 = KVMCapability(KVM_CAP_HYPERV_SYNIC2, "KVM_CAP_HYPERV_SYNIC2", "Hyper-V synthetic interrupt controllers and timers are emulated (for --cpu ...,hv-passthrough)")
    public static let hyperVCPUID = KVMCapability(KVM_CAP_SYS_HYPERV_CPUID, "KVM_CAP_SYS_HYPERV_CPUID", "the Hyper-V CPUID leaves KVM emulates can be asked for (KVM_GET_SUPPORTED_HV_CPUID)")
    public static let hyperVEventFD = KVMCapability(KVM_CAP_HYPERV_EVENTFD, "KVM_CAP_HYPERV_EVENTFD", "a Hyper-V HvSignalEvent can signal an eventfd without leaving the kernel")
    public static let irqfdResample = KVMCapability(KVM_CAP_IRQFD_RESAMPLE, "KVM_CAP_IRQFD_RESAMPLE", "an irqfd can report the guest's acknowledgement through a second eventfd")
    public static let exitOnEmulationFailure = KVMCapability(KVM_CAP_EXIT_ON_EMULATION_FAILURE, "KVM_CAP_EXIT_ON_EMULATION_FAILURE", "emulation failures report the instruction bytes")

    /// The capabilities `hv info` reports, in the order it reports them.
    public static let reported: [KVMCapability] = [
        userMemory, hlt, immediateExit, setTSSAddress, irqchip, splitIRQChip, pit2, x2apicAPI, tscDeadline,
        nrVCPUs, maxVCPUs, maxVCPUID, memorySlots, userSpaceMSR, msrFilter, guestDebug, hwBreakpoints,
        xsave, xcrs, vcpuEvents, ioeventfd, irqfd, signalMSI, tscControl, readonlyMemory, coalescedMMIO,
        syncRegisters, dirtyLogRing, manualDirtyLogProtect, nestedState, exitOnEmulationFailure, hyperVSynIC2,
    ]
}
#endif
