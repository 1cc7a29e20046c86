// HV's SVM engine (AMD APM Vol. 2, chapter 15 "Secure Virtual Machine"): turns SVM on, builds a
// VMCB, nested page tables and the I/O and MSR permission maps, and runs a guest with VMRUN,
// handling each #VMEXIT. This first version runs one real-mode guest to its HLT.
import BareMetalSupport
import HVModel

/// Page-aligned memory from the heap (identity-mapped: its address is its physical address).
func allocatePages(_ bytes: Int, alignment: Int = 4096) -> UnsafeMutableRawPointer {
    var pointer: UnsafeMutableRawPointer?
    guard posix_memalign(&pointer, alignment, bytes) == 0, let pointer else {
        print("out of memory for \(bytes) bytes")
        DebugExit.leave(code: 3)
    }
    pointer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    return pointer
}

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
    static let iopmBase = 0x040, msrpmBase = 0x048, guestASID = 0x058, tlbControl = 0x05C
    static let exitCode = 0x070, exitInfo1 = 0x078, exitInfo2 = 0x080, nestedPagingEnable = 0x090, eventInjection = 0x0A8, nestedCR3 = 0x0B0
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
    static let cpuid: UInt64 = 0x72, hlt: UInt64 = 0x78, ioio: UInt64 = 0x7B, msr: UInt64 = 0x7C
    static let shutdown: UInt64 = 0x7F, vmrun: UInt64 = 0x80, vmmcall: UInt64 = 0x81, nestedPageFault: UInt64 = 0x400
    static let invalid: UInt64 = 0xFFFF_FFFF_FFFF_FFFF
}

/// One VM with one vCPU on HV's SVM engine: its RAM behind nested page tables, its VMCB, and
/// the VMRUN loop that turns each #VMEXIT into HVModel's `VMExit` for an `ExitHandler` chain,
/// the same protocol and values the KVM backend gives its handlers.
final class SVMVirtualMachine {
    /// EFER.SVME (bit 12) and the host save area's MSR (APM Vol. 2, 15.4, 15.30.4).
    static let eferMSR: UInt32 = 0xC000_0080, hostSaveAreaMSR: UInt32 = 0xC001_0117
    static var svmEnabled = false

    let ram: UnsafeMutableRawPointer
    let memorySize: UInt64
    let vmcb = VMCB()
    /// The guest's RBX-R15 across VMRUN (index = register number; RAX and RSP live in the VMCB).
    var registers = [UInt64](repeating: 0, count: 16)
    /// Where port I/O values travel between the engine and the handlers (`PortIOData`).
    let ioBuffer = PortIOBuffer(capacity: 8)
    var statistics = ExitTally()

    /// Guest pages the nested page tables map read-only; the writes the guest tried there.
    let readOnlyPages: [UInt64]
    var readOnlyWrites: [UInt64] = []

    /// `memorySize` bytes of guest RAM (a multiple of 2 MiB, at most 1 GiB), seen by the guest
    /// at guest-physical 0; everything else is MMIO that exits. `readOnlyPages` (4 KiB pages in
    /// the first 2 MiB) are mapped without write permission: a write there is a nested page
    /// fault the engine reports and drops, as a ROM would.
    init(memorySize: UInt64, readOnlyPages: [UInt64] = []) {
        self.readOnlyPages = readOnlyPages
        if !Self.svmEnabled {
            hv_wrmsr(Self.eferMSR, hv_rdmsr(Self.eferMSR) | 1 << 12)
            hv_wrmsr(Self.hostSaveAreaMSR, UInt64(UInt(bitPattern: allocatePages(4096))))
            Self.svmEnabled = true
        }
        self.memorySize = memorySize
        ram = allocatePages(Int(memorySize), alignment: 2 << 20)
        // Nested page tables (APM Vol. 2, 15.25 "Nested Paging"): long-mode tables whose entries
        // are all user pages; guest-physical 0 ..< memorySize -> the RAM above, in 2 MiB pages.
        let pml4 = allocatePages(4096), pdpt = allocatePages(4096), pd = allocatePages(4096)
        let present: UInt64 = 1, writable: UInt64 = 2, user: UInt64 = 4, large: UInt64 = 0x80
        pml4.storeBytes(of: UInt64(UInt(bitPattern: pdpt)) | present | writable | user, as: UInt64.self)
        pdpt.storeBytes(of: UInt64(UInt(bitPattern: pd)) | present | writable | user, as: UInt64.self)
        for index in 0..<Int(memorySize >> 21) {
            pd.storeBytes(of: (UInt64(UInt(bitPattern: ram)) + UInt64(index) << 21) | present | writable | user | large,
                          toByteOffset: 8 * index, as: UInt64.self)
        }
        if !readOnlyPages.isEmpty {
            // The first 2 MiB in 4 KiB pages instead, so single pages can lose write permission.
            let pt = allocatePages(4096)
            for page in 0..<512 {
                let address = UInt64(page) << 12
                let flags = present | user | (readOnlyPages.contains(address) ? 0 : writable)
                pt.storeBytes(of: (UInt64(UInt(bitPattern: ram)) + address) | flags, toByteOffset: 8 * page, as: UInt64.self)
            }
            pd.storeBytes(of: UInt64(UInt(bitPattern: pt)) | present | writable | user, as: UInt64.self)
        }
        // Every port and MSR intercepted: the I/O permission map (12 KiB) and the MSR
        // permission map (8 KiB) all ones (APM Vol. 2, 15.10.1, 15.11).
        let iopm = allocatePages(12 << 10), msrpm = allocatePages(8 << 10)
        iopm.initializeMemory(as: UInt8.self, repeating: 0xFF, count: 12 << 10)
        msrpm.initializeMemory(as: UInt8.self, repeating: 0xFF, count: 8 << 10)
        // INTR, NMI, CPUID (18), HLT (24), IOIO_PROT (27), MSR_PROT (28), SHUTDOWN (31);
        // VMRUN (required), VMMCALL.
        vmcb[VMCB.interceptMisc1, as: UInt32.self] = 1 << 0 | 1 << 1 | 1 << 18 | 1 << 24 | 1 << 27 | 1 << 28 | 1 << 31
        vmcb[VMCB.interceptMisc2, as: UInt32.self] = 1 << 0 | 1 << 1
        vmcb[VMCB.iopmBase, as: UInt64.self] = UInt64(UInt(bitPattern: iopm))
        vmcb[VMCB.msrpmBase, as: UInt64.self] = UInt64(UInt(bitPattern: msrpm))
        vmcb[VMCB.guestASID, as: UInt32.self] = 1
        vmcb[VMCB.tlbControl, as: UInt8.self] = 1  // flush this guest's TLB entries at the first VMRUN
        vmcb[VMCB.nestedPagingEnable, as: UInt64.self] = 1
        vmcb[VMCB.nestedCR3, as: UInt64.self] = UInt64(UInt(bitPattern: pml4))
        vmcb[VMCB.dr6, as: UInt64.self] = 0xFFFF_0FF0
        vmcb[VMCB.dr7, as: UInt64.self] = 0x400
        vmcb[VMCB.guestPAT, as: UInt64.self] = 0x0007_0406_0007_0406
    }

    /// Real mode at 0000:`entry`, as a CPU after reset but at that address, with `code` there.
    func loadRealMode(_ code: UnsafeRawBufferPointer, at entry: UInt64) {
        (ram + Int(entry)).copyMemory(from: code.baseAddress!, byteCount: code.count)
        vmcb.setSegment(VMCB.cs, selector: 0, attributes: 0x009B, limit: 0xFFFF, base: 0)
        for segment in [VMCB.ds, VMCB.es, VMCB.ss, VMCB.fs, VMCB.gs] {
            vmcb.setSegment(segment, selector: 0, attributes: 0x0093, limit: 0xFFFF, base: 0)
        }
        vmcb.setSegment(VMCB.gdtr, selector: 0, attributes: 0, limit: 0xFFFF, base: 0)
        vmcb.setSegment(VMCB.idtr, selector: 0, attributes: 0, limit: 0x3FF, base: 0)
        vmcb.setSegment(VMCB.ldtr, selector: 0, attributes: 0x0082, limit: 0xFFFF, base: 0)
        vmcb.setSegment(VMCB.tr, selector: 0, attributes: 0x008B, limit: 0xFFFF, base: 0)
        vmcb[VMCB.efer, as: UInt64.self] = 1 << 12  // SVME must be set in the guest's EFER too
        vmcb[VMCB.cr0, as: UInt64.self] = 0x10      // ET; protection and paging off
        vmcb[VMCB.rflags, as: UInt64.self] = 0x2
        vmcb[VMCB.rip, as: UInt64.self] = entry
        vmcb[VMCB.rsp, as: UInt64.self] = 0x8000
    }

    /// The chunks of a guest image into RAM, and its registers into the VMCB: HVGuest's
    /// long-mode set-up (GDT, identity-mapped page tables, CR0/CR3/CR4/EFER) as KVM gets it.
    func load(_ image: GuestImageFile) -> Bool {
        guard image.memorySize <= memorySize else { return false }
        for chunk in image.chunks {
            if let base = chunk.bytes.baseAddress { (ram + Int(chunk.address)).copyMemory(from: base, byteCount: chunk.bytes.count) }
            (ram + Int(chunk.address) + chunk.bytes.count).initializeMemory(as: UInt8.self, repeating: 0, count: Int(chunk.zeroFill))
        }
        let special = image.special
        let segments = [(VMCB.cs, special.cs), (VMCB.ds, special.ds), (VMCB.es, special.es), (VMCB.fs, special.fs),
                        (VMCB.gs, special.gs), (VMCB.ss, special.ss), (VMCB.tr, special.tr), (VMCB.ldtr, special.ldt)]
        for (index, (offset, segment)) in segments.enumerated() {
            vmcb.setSegment(offset, selector: segment.selector, attributes: image.attributes[index], limit: segment.limit, base: segment.base)
        }
        vmcb.setSegment(VMCB.gdtr, selector: 0, attributes: 0, limit: UInt32(special.gdt.limit), base: special.gdt.base)
        vmcb.setSegment(VMCB.idtr, selector: 0, attributes: 0, limit: UInt32(special.idt.limit), base: special.idt.base)
        vmcb[VMCB.cr0, as: UInt64.self] = special.cr0
        vmcb[VMCB.cr3, as: UInt64.self] = special.cr3
        vmcb[VMCB.cr4, as: UInt64.self] = special.cr4
        vmcb[VMCB.efer, as: UInt64.self] = special.efer | 1 << 12
        vmcb[VMCB.rip, as: UInt64.self] = image.registers.rip
        vmcb[VMCB.rsp, as: UInt64.self] = image.registers.rsp
        vmcb[VMCB.rflags, as: UInt64.self] = image.registers.rflags
        // The guest's CPL follows its CS (0 here).
        vmcb[VMCB.cpl, as: UInt8.self] = UInt8((image.attributes[0] >> 5) & 3)
        return true
    }

    /// What VMRUN's consistency checks look at, read from the VMCB (HVModel's `VMRUNChecks`).
    var guestState: SVMGuestState {
        var state = SVMGuestState()
        state.efer = vmcb[VMCB.efer, as: UInt64.self]
        state.cr0 = vmcb[VMCB.cr0, as: UInt64.self]
        state.cr3 = vmcb[VMCB.cr3, as: UInt64.self]
        state.cr4 = vmcb[VMCB.cr4, as: UInt64.self]
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

    // MARK: Registers

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

    /// The guest's code size from CS and EFER.LMA (APM Vol. 2, 4.8 "Long-Mode Segment Descriptors").
    var codeSize: InstructionDecoder.Mode {
        let attributes = vmcb[VMCB.cs + 2, as: UInt16.self]
        if vmcb[VMCB.efer, as: UInt64.self] & 1 << 10 != 0 && attributes & 1 << 9 != 0 { return .bits64 }
        if vmcb[VMCB.cr0, as: UInt64.self] & 1 != 0 && attributes & 1 << 10 != 0 { return .bits32 }
        return .bits16
    }

    // MARK: Running

    /// Runs until a handler stops the guest or an exit cannot be handled. `halts` says what HLT
    /// does when no handler takes it (the demo's VM resumes after it, as `haltPolicy: .resume`).
    func run<H: ExitHandler>(_ handler: H, haltResumes: Bool) -> StopReason {
        let context = ExitContext(vcpuID: 0)
        // VMRUN's own checks first, by name: the hardware would only say VMEXIT_INVALID.
        let failures = VMRUNChecks.failures(guestState)
        if !failures.isEmpty {
            for failure in failures { print("svm: VMRUN would refuse this VMCB: \(failure) (AMD APM Vol. 2, 15.5.1)") }
            return .entryFailure(hardwareReason: SVMExit.invalid)
        }
        while true {
            let entered = hv_rdtsc()
            registers.withUnsafeMutableBufferPointer { hv_svm_vmrun(vmcb.physicalAddress, $0.baseAddress) }
            let spent = hv_rdtsc() &- entered
            let code = vmcb[VMCB.exitCode, as: UInt64.self]
            let info1 = vmcb[VMCB.exitInfo1, as: UInt64.self], info2 = vmcb[VMCB.exitInfo2, as: UInt64.self]
            let rip = vmcb[VMCB.rip, as: UInt64.self]
            switch code {
            case SVMExit.ioio:
                if let stop = portIO(info1, next: info2, handler, context, spent: spent) { return stop }
            case SVMExit.nestedPageFault:
                if let stop = nestedPageFault(address: info2, error: info1, handler, context, spent: spent) { return stop }
            case SVMExit.hlt:
                statistics.add(.halt, cycles: spent)
                switch handler.handle(.halt, context: context) {
                case .stop(let reason)?: return reason
                case nil where !haltResumes: return .halted
                default: vmcb[VMCB.rip, as: UInt64.self] = rip + 1
                }
            case SVMExit.cpuid:
                // CPUID is the engine's (KVM answers it in the kernel): the CPU's own leaves.
                let leaf = CPUFeatures.cpuid(UInt32(truncatingIfNeeded: register(0)), UInt32(truncatingIfNeeded: registers[1]))
                setRegister(0, UInt64(leaf.eax))
                registers[3] = UInt64(leaf.ebx)
                registers[1] = UInt64(leaf.ecx)
                registers[2] = UInt64(leaf.edx)
                vmcb[VMCB.rip, as: UInt64.self] = rip + 2
                statistics.cpuid += 1
            case SVMExit.msr:
                // EXITINFO1: 0 RDMSR, 1 WRMSR (APM Vol. 2, 15.11). Both are two bytes long.
                let index = UInt32(truncatingIfNeeded: registers[1])
                if info1 == 0 {
                    statistics.add(.msrRead, cycles: spent)
                    let value: UInt64
                    switch handler.handle(.msrRead(index: index), context: context) {
                    case .resumeWith(let answer)?: value = answer
                    case .stop(let reason)?: return reason
                    case _ where index == 0x10: value = hv_rdtsc()  // the TSC, passed through
                    default: return .unhandledExit(.msrRead)
                    }
                    setRegister(0, value & 0xFFFF_FFFF)
                    registers[2] = value >> 32
                } else {
                    statistics.add(.msrWrite, cycles: spent)
                    let value = register(0) & 0xFFFF_FFFF | registers[2] << 32
                    switch handler.handle(.msrWrite(index: index, value: value), context: context) {
                    case .stop(let reason)?: return reason
                    case nil: return .unhandledExit(.msrWrite)
                    default: break
                    }
                }
                vmcb[VMCB.rip, as: UInt64.self] = rip + 2
            case SVMExit.shutdown:
                return .shutdown
            case SVMExit.invalid:
                print("svm: VMRUN refused the VMCB (VMEXIT_INVALID): a consistency check of AMD APM Vol. 2, 15.5.1 failed")
                return .entryFailure(hardwareReason: code)
            default:
                print("svm: exit \(hex(code)) at RIP \(hex(rip)) (EXITINFO1 \(hex(info1))): not handled")
                return .unhandledExit(.unknown)
            }
        }
    }

    /// An I/O intercept: EXITINFO1 holds the port (bits 31:16), the size (bits 4-6) and the
    /// direction (bit 0), EXITINFO2 the next instruction's address (APM Vol. 2, 15.10.2).
    private func portIO<H: ExitHandler>(_ info: UInt64, next: UInt64, _ handler: H, _ context: ExitContext, spent: UInt64) -> StopReason? {
        guard info & 0b1100 == 0 else {
            print("svm: string or REP port I/O is not handled yet")
            return .unhandledExit(.portIn)
        }
        let port = IOPort(UInt16(truncatingIfNeeded: info >> 16))
        let size = info & 0x10 != 0 ? 1 : info & 0x20 != 0 ? 2 : 4
        let read = info & 1 != 0
        ioBuffer.beginRun()
        guard let data = PortIOData(buffer: ioBuffer, size: size, count: 1) else { return .backendFailure }
        let mask: UInt64 = size == 4 ? 0xFFFF_FFFF : (1 << (8 * UInt64(size))) - 1
        let rax = register(0)
        if !read { data[0] = UInt32(truncatingIfNeeded: rax & mask) } else { data[0] = UInt32(truncatingIfNeeded: mask) }
        let io = PortIO(port: port, size: UInt8(size), count: 1, data: data)
        statistics.add(read ? .portIn : .portOut, cycles: spent)
        switch handler.handle(read ? .portIn(io) : .portOut(io), context: context) {
        case .stop(let reason)?: return reason
        case nil: return .unmappedPort(port: port, write: !read)
        case .resumeWith(let value)?:
            if read { setRegister(0, rax & ~mask | value & mask) }
        default:
            if read { setRegister(0, rax & ~mask | UInt64(data[0]) & mask) }
        }
        vmcb[VMCB.rip, as: UInt64.self] = next
        return nil
    }

    /// A nested page fault outside RAM is MMIO: the instruction at RIP is fetched through the
    /// guest's own page tables (HVModel's walker), decoded (HVModel's decoder) and emulated as
    /// the `mmioRead`/`mmioWrite` exits a KVM backend reports.
    private func nestedPageFault<H: ExitHandler>(address: UInt64, error: UInt64, _ handler: H, _ context: ExitContext, spent: UInt64) -> StopReason? {
        let rip = vmcb[VMCB.rip, as: UInt64.self]
        // EXITINFO1 is a page-fault error code (APM Vol. 2, 15.25.6): bit 0 the page was
        // present, bit 1 a write.
        let protectionWrite = address < memorySize && error & 0b11 == 0b11 && readOnlyPages.contains(address & ~0xFFF)
        guard address >= memorySize || protectionWrite else {
            print("svm: nested page fault in RAM at \(hex(address)) (error \(hex(error)))")
            return .internalError(InternalError(suberror: 0))
        }
        var special = SpecialRegisters()
        special.cr0 = vmcb[VMCB.cr0, as: UInt64.self]
        special.cr3 = vmcb[VMCB.cr3, as: UInt64.self]
        special.cr4 = vmcb[VMCB.cr4, as: UInt64.self]
        special.efer = vmcb[VMCB.efer, as: UInt64.self]
        let linear = GuestVirtualAddress(vmcb[VMCB.cs + 8, as: UInt64.self] &+ rip)
        var memory = GuestRAM(base: ram, size: memorySize)
        let physical: UInt64
        do throws(GuestPagingFault) {
            physical = try GuestPagingWalker.translate(linear, GuestAccess(.fetch), context: GuestPagingContext(special: special), memory: &memory).physicalAddress.rawValue
        } catch {
            print("svm: the instruction at \(hex(rip)) cannot be fetched: \(error)")
            return .internalError(InternalError(suberror: 1))
        }
        // Up to 15 bytes, not past RAM (an instruction that crosses a page is assumed contiguous:
        // true of identity-mapped code like HVGuest's).
        guard physical < memorySize else { return .internalError(InternalError(suberror: 1)) }
        let available = Int(min(15, memorySize - physical))
        let decoded: DecodedInstruction
        do throws(InstructionDecodingError) {
            decoded = try InstructionDecoder.decode(UnsafeRawBufferPointer(start: ram + Int(physical), count: available), size: codeSize)
        } catch {
            print("svm: MMIO at \(hex(address)) by an instruction HV cannot emulate: \(error)")
            return .internalError(InternalError(suberror: 2))
        }
        if protectionWrite {
            // A write to a read-only page: reported, dropped, and the guest goes on after it.
            readOnlyWrites.append(address)
            statistics.readOnlyWrites += 1
            print("svm: nested page fault: a \(decoded.width)-byte write to read-only guest page \(hex(address & ~0xFFF)) at RIP \(hex(rip)), dropped")
            vmcb[VMCB.rip, as: UInt64.self] = rip + UInt64(decoded.length)
            return nil
        }
        let target = GuestPhysicalAddress(address)
        switch decoded.operation {
        case .load(let register, _):
            statistics.add(.mmioRead, cycles: spent)
            switch handler.handle(.mmioRead(MMIOAccess(address: target, width: decoded.width)), context: context) {
            case .resumeWith(let value)?:
                setRegister(register.index, decoded.registerAfterLoad(old: self.register(register.index), loaded: value, codeSize: codeSize))
            case .stop(let reason)?: return reason
            case nil: return .unmappedMMIO(address: target, write: false)
            default: break
            }
        case .store(let register):
            if let stop = mmioWrite(target, decoded.storedValue(register: self.register(register.index)) ?? 0, decoded, handler, context, spent) { return stop }
        case .storeImmediate:
            if let stop = mmioWrite(target, decoded.storedValue(register: 0) ?? 0, decoded, handler, context, spent) { return stop }
        default:
            print("svm: MMIO at \(hex(address)) by an arithmetic or string instruction: not emulated yet")
            return .internalError(InternalError(suberror: 2))
        }
        vmcb[VMCB.rip, as: UInt64.self] = rip + UInt64(decoded.length)
        return nil
    }

    private func mmioWrite<H: ExitHandler>(_ target: GuestPhysicalAddress, _ value: UInt64, _ decoded: DecodedInstruction,
                                           _ handler: H, _ context: ExitContext, _ spent: UInt64) -> StopReason? {
        statistics.add(.mmioWrite, cycles: spent)
        switch handler.handle(.mmioWrite(MMIOAccess(address: target, width: decoded.width, value: value)), context: context) {
        case .stop(let reason)?: return reason
        case nil: return .unmappedMMIO(address: target, write: true)
        default: return nil
        }
    }
}

/// Guest RAM as HVModel's page walker reads it.
struct GuestRAM: PhysicalMemory {
    let base: UnsafeMutableRawPointer
    let size: UInt64

    mutating func read64(at address: UInt64) throws(PhysicalMemoryFault) -> UInt64 {
        guard address <= size &- 8, size >= 8 else { throw .unbacked(address: address) }
        return (base + Int(address)).loadUnaligned(as: UInt64.self)
    }

    mutating func write64(_ value: UInt64, at address: UInt64) throws(PhysicalMemoryFault) {
        guard address <= size &- 8, size >= 8 else { throw .unbacked(address: address) }
        (base + Int(address)).storeBytes(of: value, as: UInt64.self)
    }
}

/// Exits by kind with their round trips (TSC cycles from VMRUN to the #VMEXIT back), kept as
/// samples for the median and the 99th percentile, as `hv demo`'s table shows them.
struct ExitTally {
    static let sampleCapacity = 4096
    var samples: [[UInt64]] = Array(repeating: [], count: ExitKind.allCases.count)
    /// CPUID exits, which have no `VMExit` (KVM answers CPUID itself), and writes to read-only
    /// pages (nested page faults inside RAM).
    var cpuid = 0, readOnlyWrites = 0

    mutating func add(_ kind: ExitKind, cycles: UInt64) {
        let index = Int(kind.rawValue)
        if samples[index].count < Self.sampleCapacity { samples[index].append(cycles) }
    }

    func report() {
        print("exit        count  median cycles  p99 cycles")
        print("--------------------------------------------")
        var total = 0
        for kind in ExitKind.allCases {
            let sorted = samples[Int(kind.rawValue)].sorted()
            guard !sorted.isEmpty else { continue }
            total += sorted.count
            let median = sorted[sorted.count / 2], p99 = sorted[min(sorted.count - 1, sorted.count * 99 / 100)]
            print(column("\(kind.name)", 10) + column("\(sorted.count)", 7, right: true) + column("\(median)", 15, right: true)
                  + column("\(p99)", 12, right: true))
        }
        if cpuid > 0 { print(column("cpuid", 10) + column("\(cpuid)", 7, right: true)) }
        if readOnlyWrites > 0 { print(column("npf-ro", 10) + column("\(readOnlyWrites)", 7, right: true)) }
        print(column("total", 10) + column("\(total + cpuid + readOnlyWrites)", 7, right: true))
    }

    private func column(_ text: String, _ width: Int, right: Bool = false) -> String {
        let padding = String(repeating: " ", count: max(0, width - text.utf8.count))
        return right ? padding + text : text + padding
    }
}
