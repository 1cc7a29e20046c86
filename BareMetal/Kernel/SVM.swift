// HV's SVM engine (AMD APM Vol. 2, chapter 15 "Secure Virtual Machine"): turns SVM on, builds a
// VMCB, nested page tables and the I/O and MSR permission maps, and runs a guest with VMRUN,
// turning each #VMEXIT into HVModel's `VMExit` for the shared run loop.
import BareMetalSupport
import HVModel

/// A VMCB (APM Vol. 2, Appendix B "Layout of VMCB"): the control area at 0x000, the state save
/// area at 0x400, each field at a fixed offset.
struct VMCB {
    let page: UnsafeMutableRawPointer
    var physicalAddress: UInt64 { UInt64(UInt(bitPattern: page)) }

    init() { page = allocatePages(4096) }

    subscript<T: FixedWidthInteger>(offset: Int, as type: T.Type) -> T {
        get { page.load(fromByteOffset: offset, as: T.self) }
        nonmutating set { page.storeBytes(of: newValue, toByteOffset: offset, as: T.self) }
    }

    // Control area (Table B-1).
    static let interceptMisc1 = 0x00C, interceptMisc2 = 0x010
    static let iopmBase = 0x040, msrpmBase = 0x048, guestASID = 0x058, tlbControl = 0x05C, virtualInterrupt = 0x060
    static let interruptShadow = 0x068, exitCode = 0x070, exitInfo1 = 0x078, exitInfo2 = 0x080, nestedPagingEnable = 0x090, eventInjection = 0x0A8, nestedCR3 = 0x0B0
    // State save area (Table B-2).
    static let es = 0x400, cs = 0x410, ss = 0x420, ds = 0x430, fs = 0x440, gs = 0x450
    static let gdtr = 0x460, ldtr = 0x470, idtr = 0x480, tr = 0x490
    static let efer = 0x4D0, cr4 = 0x548, cr3 = 0x550, cr0 = 0x558, dr7 = 0x560, dr6 = 0x568
    static let cpl = 0x4CB, rflags = 0x570, rip = 0x578, rsp = 0x5D8, rax = 0x5F8, guestPAT = 0x668

    /// A segment register's selector, attributes (descriptor bits 40-47 and 52-55), limit, base.
    func setSegment(_ offset: Int, selector: UInt16, attributes: UInt16, limit: UInt32, base: UInt64) {
        self[offset, as: UInt16.self] = selector
        self[offset + 2, as: UInt16.self] = attributes
        self[offset + 4, as: UInt32.self] = limit
        self[offset + 8, as: UInt64.self] = base
    }
}

/// #VMEXIT codes this engine handles (APM Vol. 2, Appendix C "SVM Intercept Exit Codes").
enum SVMExit {
    static let intr: UInt64 = 0x60, cpuid: UInt64 = 0x72, hlt: UInt64 = 0x78, ioio: UInt64 = 0x7B, msr: UInt64 = 0x7C
    static let shutdown: UInt64 = 0x7F, vmrun: UInt64 = 0x80, vmmcall: UInt64 = 0x81, nestedPageFault: UInt64 = 0x400
    static let invalid: UInt64 = 0xFFFF_FFFF_FFFF_FFFF
}

/// One VM with one vCPU on HV's SVM engine: its RAM behind nested page tables, its VMCB, and
/// the VMRUN loop that turns each #VMEXIT into HVModel's `VMExit` for an `ExitHandler` chain,
/// the same protocol and values the KVM backend gives its handlers.
final class SVMVirtualMachine: GuestCPU {
    /// EFER.SVME (bit 12) and the host save area's MSR (APM Vol. 2, 15.4, 15.30.4).
    static let eferMSR: UInt32 = 0xC000_0080, hostSaveAreaMSR: UInt32 = 0xC001_0117
    /// The host's VMSAVE area (a VMCB-sized page), once SVM is on.
    static var hostSaveVMCB: UInt64 = 0

    let ram: UnsafeMutableRawPointer
    let memorySize: UInt64
    let vmcb = VMCB()
    /// The guest's RBX-R15 across VMRUN (index = register number; RAX and RSP live in the VMCB).
    var registers = [UInt64](repeating: 0, count: 16)
    /// Where port I/O values travel between the engine and the handlers (`PortIOData`).
    /// Room for a REP INS/OUTS batch of a page.
    let ioBuffer = PortIOBuffer(capacity: 4096)
    var statistics = ExitTally()

    /// Guest pages the nested page tables map read-only, and pages they leave out (MMIO).
    let readOnlyPages: [UInt64], mmioPages: [UInt64]
    let engineName: StaticString = "svm"
    /// The host APIC timer's slice (the preemption timer's stand-in), if any.
    var hostTimerSlice: UInt32?
    let hostStackSize: Int
    var pending = PendingCompletion.none
    var queuedExit: VMExit?
    var lastRoundTrip: UInt64 = 0
    /// Whether VMRUN's checks have passed (they run before the first VMRUN).
    private var checked = false
    var interrupts: LocalAPICDevice?

    /// `memorySize` bytes of guest RAM (a multiple of 2 MiB, at most 1 GiB), seen by the guest
    /// at guest-physical 0; everything else is MMIO that exits. `readOnlyPages` (4 KiB pages in
    /// the first 2 MiB) are mapped without write permission: a write there is a nested page
    /// fault the engine reports and drops, as a ROM would.
    init?(memorySize: UInt64, readOnlyPages: [UInt64] = [], mmioPages: [UInt64] = [], configuration: SVMConfiguration = SVMConfiguration()) {
        self.readOnlyPages = readOnlyPages
        self.mmioPages = mmioPages
        if Self.hostSaveVMCB == 0 {
            hv_wrmsr(Self.eferMSR, hv_rdmsr(Self.eferMSR) | 1 << 12)
            hv_wrmsr(Self.hostSaveAreaMSR, UInt64(UInt(bitPattern: allocatePages(4096))))
            Self.hostSaveVMCB = UInt64(UInt(bitPattern: allocatePages(4096)))
        }
        self.memorySize = memorySize
        ram = allocatePages(Int(memorySize), alignment: 2 << 20)
        // Nested page tables (APM Vol. 2, 15.25 "Nested Paging") from HVModel's builder:
        // guest-physical 0 ..< memorySize -> the RAM in 2 MiB pages, a read-only page without
        // write permission and an MMIO page left out (each splits its 2 MiB page).
        let nestedRoot: UInt64
        do throws(NestedPageTableError) {
            var tables = try NestedPageTables(tables: PageTables())
            try tables.map(GuestPhysicalAddress(0), size: memorySize, to: HostPhysicalAddress(UInt64(UInt(bitPattern: ram))))
            for page in readOnlyPages { try tables.protect(GuestPhysicalAddress(page), size: 4096, writable: false) }
            for page in mmioPages { try tables.unmap(GuestPhysicalAddress(page), size: 4096) }
            nestedRoot = tables.root.rawValue
        } catch {
            print("svm: nested page tables: \(error)")
            return nil
        }
        // The I/O permission map (12 KiB) and the MSR permission map (8 KiB) from the
        // configuration's bitmaps (APM Vol. 2, 15.10.1, 15.11): every port exits, every MSR but
        // the segment bases, which VMLOAD/VMSAVE carry.
        let iopm = allocatePages(SVMIOPermissionMap.size), msrpm = allocatePages(SVMMSRPermissionMap.size)
        configuration.ioPermissionMap.bytes.withUnsafeBytes { iopm.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        configuration.msrPermissionMap.bytes.withUnsafeBytes { msrpm.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        vmcb[VMCB.interceptMisc1, as: UInt32.self] = configuration.intercepts.misc1
        vmcb[VMCB.interceptMisc2, as: UInt32.self] = configuration.intercepts.misc2
        vmcb[VMCB.iopmBase, as: UInt64.self] = UInt64(UInt(bitPattern: iopm))
        vmcb[VMCB.msrpmBase, as: UInt64.self] = UInt64(UInt(bitPattern: msrpm))
        vmcb[VMCB.guestASID, as: UInt32.self] = configuration.asid
        vmcb[VMCB.tlbControl, as: UInt8.self] = configuration.firstTLBControl
        vmcb[VMCB.nestedPagingEnable, as: UInt64.self] = configuration.nestedPaging ? 1 : 0
        vmcb[VMCB.nestedCR3, as: UInt64.self] = nestedRoot
        vmcb[VMCB.virtualInterrupt, as: UInt64.self] = configuration.virtualInterruptMasking ? 1 << 24 : 0
        hostTimerSlice = configuration.hostTimerSlice
        hostStackSize = Int(configuration.hostStackSize)
        vmcb[VMCB.dr6, as: UInt64.self] = 0xFFFF_0FF0
        vmcb[VMCB.dr7, as: UInt64.self] = 0x400
        vmcb[VMCB.guestPAT, as: UInt64.self] = 0x0007_0406_0007_0406
    }

    /// Real mode at 0000:`entry`, as a CPU after reset but at that address, with `code` there.
    func loadRealMode(_ code: UnsafeRawBufferPointer, at entry: UInt64) {
        load(code, at: entry)
        start(.realMode, rip: entry, rsp: 0x8000, rflags: 0x2)
    }

    /// The chunks of a guest image into RAM, and its registers into the VMCB: HVGuest's
    /// long-mode set-up (GDT, identity-mapped page tables, CR0/CR3/CR4/EFER) as KVM gets it.
    func load(_ image: GuestImageFile) -> Bool {
        guard image.memorySize <= memorySize else { return false }
        image.load(into: ram)
        start(image.special, rip: image.registers.rip, rsp: image.registers.rsp, rflags: image.registers.rflags)
        return true
    }

    /// The guest's registers into the VMCB's state save area (APM Vol. 2, Table B-2).
    func start(_ special: SpecialRegisters, rip: UInt64, rsp: UInt64, rflags: UInt64) {
        let segments = [(VMCB.cs, special.cs), (VMCB.ds, special.ds), (VMCB.es, special.es), (VMCB.fs, special.fs),
                        (VMCB.gs, special.gs), (VMCB.ss, special.ss), (VMCB.tr, special.tr), (VMCB.ldtr, special.ldt)]
        for (offset, segment) in segments {
            vmcb.setSegment(offset, selector: segment.selector, attributes: segment.svmAttributes, limit: segment.limit, base: segment.base)
        }
        vmcb.setSegment(VMCB.gdtr, selector: 0, attributes: 0, limit: UInt32(special.gdt.limit), base: special.gdt.base)
        vmcb.setSegment(VMCB.idtr, selector: 0, attributes: 0, limit: UInt32(special.idt.limit), base: special.idt.base)
        vmcb[VMCB.cr0, as: UInt64.self] = special.cr0
        vmcb[VMCB.cr3, as: UInt64.self] = special.cr3
        vmcb[VMCB.cr4, as: UInt64.self] = special.cr4
        vmcb[VMCB.efer, as: UInt64.self] = special.efer | 1 << 12  // SVME must be set in the guest's EFER too
        vmcb[VMCB.rip, as: UInt64.self] = rip
        vmcb[VMCB.rsp, as: UInt64.self] = rsp
        vmcb[VMCB.rflags, as: UInt64.self] = rflags
        vmcb[VMCB.cpl, as: UInt8.self] = special.cs.dpl  // the guest's CPL follows its CS
    }

    /// What VMRUN's consistency checks look at, read from the VMCB (HVModel's `VMRUNChecks`).
    var guestState: SVMGuestState {
        var state = SVMGuestState()
        let special = special
        state.efer = special.efer
        state.cr0 = special.cr0
        state.cr3 = special.cr3
        state.cr4 = special.cr4
        state.dr6 = vmcb[VMCB.dr6, as: UInt64.self]
        state.dr7 = vmcb[VMCB.dr7, as: UInt64.self]
        state.codeSegmentAttributes = vmcb[VMCB.cs + 2, as: UInt16.self]
        state.interceptMisc2 = vmcb[VMCB.interceptMisc2, as: UInt32.self]
        state.asid = vmcb[VMCB.guestASID, as: UInt32.self]
        state.iopmBase = vmcb[VMCB.iopmBase, as: UInt64.self]
        state.msrpmBase = vmcb[VMCB.msrpmBase, as: UInt64.self]
        state.eventInjection = vmcb[VMCB.eventInjection, as: UInt64.self]
        state.physicalAddressBits = Int(CPUFeatures.cpuid(0x8000_0008).eax & 0xFF)
        state.longModeSupported = CPUFeatures.cpuid(0x8000_0001).edx & 1 << 29 != 0
        return state
    }

    // MARK: Registers (GuestCPU)

    var rip: UInt64 {
        get { vmcb[VMCB.rip, as: UInt64.self] }
        set { vmcb[VMCB.rip, as: UInt64.self] = newValue }
    }

    var interruptShadow: Bool {
        get { vmcb[VMCB.interruptShadow, as: UInt64.self] & 1 != 0 }
        set { vmcb[VMCB.interruptShadow, as: UInt64.self] = newValue ? 1 : 0 }
    }

    deinit { releasePages(ram, bytes: Int(memorySize)) }

    /// EVENTINJ (APM Vol. 2, 15.20): vector, type 0 (external interrupt), valid.
    func inject(vector: UInt8) { vmcb[VMCB.eventInjection, as: UInt64.self] = UInt64(vector) | 1 << 31 }

    /// EVENTINJ for an exception (type 3), with its error code where it has one (APM Vol. 2, 15.20).
    func injectException(vector: UInt8, errorCode: UInt32?) {
        let code = special.cr0 & 1 != 0 ? errorCode : nil
        vmcb[VMCB.eventInjection, as: UInt64.self] = UInt64(vector) | 3 << 8 | (code != nil ? 1 << 11 : 0) | 1 << 31 | UInt64(code ?? 0) << 32
    }

    var rflags: UInt64 {
        get { vmcb[VMCB.rflags, as: UInt64.self] }
        set { vmcb[VMCB.rflags, as: UInt64.self] = newValue }
    }

    var special: SpecialRegisters {
        var special = SpecialRegisters()
        special.cr0 = vmcb[VMCB.cr0, as: UInt64.self]
        special.cr3 = vmcb[VMCB.cr3, as: UInt64.self]
        special.cr4 = vmcb[VMCB.cr4, as: UInt64.self]
        special.efer = vmcb[VMCB.efer, as: UInt64.self]
        func segment(_ offset: Int) -> Segment {
            Segment(selector: vmcb[offset, as: UInt16.self], base: vmcb[offset + 8, as: UInt64.self],
                    limit: vmcb[offset + 4, as: UInt32.self], svmAttributes: vmcb[offset + 2, as: UInt16.self])
        }
        special.cs = segment(VMCB.cs)
        special.ds = segment(VMCB.ds)
        special.es = segment(VMCB.es)
        special.ss = segment(VMCB.ss)
        special.fs = segment(VMCB.fs)
        special.gs = segment(VMCB.gs)
        return special
    }

    func register(_ index: UInt8) -> UInt64 {
        switch index {
        case 0: vmcb[VMCB.rax, as: UInt64.self]
        case 4: vmcb[VMCB.rsp, as: UInt64.self]
        default: registers[Int(index)]
        }
    }

    func setRegister(_ index: UInt8, _ value: UInt64) {
        switch index {
        case 0: vmcb[VMCB.rax, as: UInt64.self] = value
        case 4: vmcb[VMCB.rsp, as: UInt64.self] = value
        default: registers[Int(index)] = value
        }
    }

    // MARK: Running (VirtualCPU)

    /// Enters the guest (VMRUN) until an exit the handlers must see. VMRUN's own checks run
    /// first, by name: the hardware would only say VMEXIT_INVALID.
    func run() throws(BackendFailure) -> VMExit {
        if let queued = queuedExit {
            queuedExit = nil
            return queued
        }
        if !checked {
            let failures = VMRUNChecks.failures(guestState)
            for failure in failures { print("svm: VMRUN would refuse this VMCB: \(failure) (AMD APM Vol. 2, 15.5.1)") }
            guard failures.isEmpty else { return .entryFailure(hardwareReason: SVMExit.invalid) }
            checked = true
            if let slice = hostTimerSlice {
                guard HostTimer.available else { throw BackendFailure(operation: "the host APIC timer (not in xAPIC mode)") }
                HostTimer.enable()
                HostTimer.arm(slice)
            }
        }
        while true {
            deliverInterrupt()
            let entered = hv_rdtsc()
            registers.withUnsafeMutableBufferPointer { hv_svm_vmrun(vmcb.physicalAddress, $0.baseAddress, Self.hostSaveVMCB) }
            lastRoundTrip = hv_rdtsc() &- entered
            vmcb[VMCB.tlbControl, as: UInt8.self] = 0
            let code = vmcb[VMCB.exitCode, as: UInt64.self]
            let info1 = vmcb[VMCB.exitInfo1, as: UInt64.self], info2 = vmcb[VMCB.exitInfo2, as: UInt64.self]
            switch code {
            case SVMExit.ioio:
                // EXITINFO1: the port (bits 31:16), the size (bits 4-6), string/REP (bits 2-3),
                // IN (bit 0); EXITINFO2: the next instruction's address (APM Vol. 2, 15.10.2).
                let size = info1 & 0x10 != 0 ? 1 : info1 & 0x20 != 0 ? 2 : 4
                let port = IOPort(UInt16(truncatingIfNeeded: info1 >> 16))
                guard info1 & 0b100 != 0 else { return portExit(port: port, size: size, read: info1 & 1 != 0, next: info2) }
                let (addressWidth, segment) = stringIOPrefixes()
                if let exit = stringPortExit(port: port, size: size, read: info1 & 1 != 0, repeated: info1 & 0b1000 != 0,
                                             addressWidth: addressWidth, segment: segment, next: info2) { return exit }
            case SVMExit.nestedPageFault:
                // EXITINFO1 is a page-fault error code (APM Vol. 2, 15.25.6): bit 0 the page
                // was present, bit 1 a write; EXITINFO2 the guest-physical address.
                if let exit = memoryExit(address: info2, write: info1 & 0b11 == 0b11) { return exit }
            case SVMExit.hlt:
                if let exit = haltExit() { return exit }
            case SVMExit.cpuid:
                cpuid()
            case SVMExit.msr:
                // EXITINFO1: 0 RDMSR, 1 WRMSR (APM Vol. 2, 15.11).
                if let exit = msrExit(write: info1 != 0) { return exit }
            case SVMExit.intr:
                // A physical interrupt ended the run (INTR intercept, APM Vol. 2, 15.13.1). The
                // host takes it now; if it was the host timer, a slice ended.
                let before = HostTimer.ticks
                hv_take_pending_interrupt()
                if HostTimer.ticks != before, hostTimerSlice != nil {
                    pending = .preemptionTimer
                    return .preemptionTimer
                }
                statistics.hostInterrupts += 1
            case SVMExit.shutdown:
                return .shutdown
            case SVMExit.invalid:
                print("svm: VMRUN refused the VMCB (VMEXIT_INVALID): a consistency check of AMD APM Vol. 2, 15.5.1 failed")
                return .entryFailure(hardwareReason: code)
            default:
                print("svm: exit \(hex(code)) at RIP \(hex(rip)) (EXITINFO1 \(hex(info1))): not handled")
                return .unknown(reason: UInt32(truncatingIfNeeded: code))
            }
        }
    }

    /// The slice starts again after a preemption-timer exit (the handlers let the guest go on).
    func rearmTimer() {
        if let slice = hostTimerSlice { HostTimer.arm(slice) }
    }

    /// Stops the host timer and takes an interrupt it raised after the last exit, so it cannot
    /// end the next VM's first run.
    func finish() {
        if hostTimerSlice != nil {
            HostTimer.arm(0)
            hv_take_pending_interrupt()
        }
    }
}
