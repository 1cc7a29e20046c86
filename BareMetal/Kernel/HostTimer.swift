// The machine's own local APIC timer (Intel SDM Vol. 3A, 11.5.4 "APIC Timer"), through the xAPIC
// page at 0xFEE00000: what the SVM engine uses where VMX has its preemption timer. SVM has no
// timer that ends a guest's slice by itself (AMD APM Vol. 2, 15.13 lists none); a hypervisor
// arms a host timer, intercepts INTR, and the physical interrupt ends the slice with an INTR
// #VMEXIT, as KVM does on AMD with its hrtimers.
import BareMetalSupport

enum HostTimer {
    static let vector: UInt32 = 0xF0, spuriousVector: UInt32 = 0xFF
    static let page: UInt64 = 0xFEE0_0000
    // Register offsets (SDM Table 11-1).
    static let spurious: UInt64 = 0x0F0, lvtTimer: UInt64 = 0x320, initialCount: UInt64 = 0x380, divide: UInt64 = 0x3E0

    /// Whether the APIC is in xAPIC mode (IA32_APIC_BASE: EN set, EXTD clear), which the page needs.
    static var available: Bool { hv_rdmsr(0x1B) & (1 << 11 | 1 << 10) == 1 << 11 }

    /// Software-enables the APIC (spurious vector 0xFF) and sets the timer one-shot at `vector`,
    /// divided by 1 (SDM 11.5.4, Figure 11-10).
    static func enable() {
        hv_mmio_write32(page + spurious, 0x100 | spuriousVector)
        hv_mmio_write32(page + divide, 0xB)
        hv_mmio_write32(page + lvtTimer, vector)
    }

    /// Starts a one-shot count of `counts` APIC timer ticks (0 stops it).
    static func arm(_ counts: UInt32) { hv_mmio_write32(page + initialCount, counts) }

    /// How many times the timer has fired.
    static var ticks: UInt64 { hv_host_timer_count() }
}
