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
    static let exitCode = 0x070, exitInfo1 = 0x078, exitInfo2 = 0x080, nestedPagingEnable = 0x090, nestedCR3 = 0x0B0
    // State save area (Table B-2).
    static let es = 0x400, cs = 0x410, ss = 0x420, ds = 0x430, fs = 0x440, gs = 0x450
    static let gdtr = 0x460, ldtr = 0x470, idtr = 0x480, tr = 0x490
    static let efer = 0x4D0, cr4 = 0x548, cr3 = 0x550, cr0 = 0x558, dr7 = 0x560, dr6 = 0x568
    static let rflags = 0x570, rip = 0x578, rsp = 0x5D8, rax = 0x5F8, guestPAT = 0x668

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

/// Counts and host-measured round trips (TSC cycles from VMRUN to the #VMEXIT back) per exit kind.
struct ExitTally {
    var names: [StaticString] = []
    var counts: [Int] = []
    var cycles: [UInt64] = []

    mutating func add(_ name: StaticString, cycles spent: UInt64) {
        for index in names.indices where names[index].utf8Start == name.utf8Start {
            counts[index] += 1
            cycles[index] &+= spent
            return
        }
        names.append(name)
        counts.append(1)
        cycles.append(spent)
    }

    func report() {
        print("exit kind   count   mean TSC cycles per round trip (VMRUN, the guest, #VMEXIT)")
        for index in names.indices {
            let name = "\(names[index])"
            let padded = name + String(repeating: " ", count: max(0, 12 - name.utf8.count))
            let count = "\(counts[index])"
            print(padded + String(repeating: " ", count: max(0, 5 - count.utf8.count)) + count + "   \(cycles[index] / UInt64(counts[index]))")
        }
    }
}

enum SVMEngine {
    /// EFER.SVME (bit 12) and the host save area's MSR (APM Vol. 2, 15.4, 15.30.4).
    static let eferMSR: UInt32 = 0xC000_0080, hostSaveAreaMSR: UInt32 = 0xC001_0117

    /// Runs the real-mode hello guest at guest-physical 0x1000 in 2 MiB of guest RAM, handling
    /// its exits until it halts; returns whether it got there.
    static func runHelloGuest() -> Bool {
        hv_wrmsr(eferMSR, hv_rdmsr(eferMSR) | 1 << 12)
        hv_wrmsr(hostSaveAreaMSR, UInt64(UInt(bitPattern: allocatePages(4096))))

        // Guest RAM: 2 MiB of host memory, seen by the guest at 0 through nested paging.
        let ram = allocatePages(2 << 20, alignment: 2 << 20)
        let code = UnsafeRawPointer(hv_guest_hello_start_pointer()!)
        let length = UnsafeRawPointer(hv_guest_hello_end_pointer()!) - code
        (ram + 0x1000).copyMemory(from: code, byteCount: length)

        // Nested page tables (APM Vol. 2, 15.25 "Nested Paging"): long-mode tables whose entries
        // are all user pages; guest-physical 0-2 MiB -> the RAM above, one 2 MiB page.
        let pml4 = allocatePages(4096), pdpt = allocatePages(4096), pd = allocatePages(4096)
        let present: UInt64 = 1, writable: UInt64 = 2, user: UInt64 = 4, large: UInt64 = 0x80
        pml4.storeBytes(of: UInt64(UInt(bitPattern: pdpt)) | present | writable | user, as: UInt64.self)
        pdpt.storeBytes(of: UInt64(UInt(bitPattern: pd)) | present | writable | user, as: UInt64.self)
        pd.storeBytes(of: UInt64(UInt(bitPattern: ram)) | present | writable | user | large, as: UInt64.self)

        // Every port and MSR intercepted: the I/O permission map (12 KiB) and the MSR
        // permission map (8 KiB) all ones (APM Vol. 2, 15.10.1, 15.11).
        let iopm = allocatePages(12 << 10), msrpm = allocatePages(8 << 10)
        iopm.initializeMemory(as: UInt8.self, repeating: 0xFF, count: 12 << 10)
        msrpm.initializeMemory(as: UInt8.self, repeating: 0xFF, count: 8 << 10)

        let vmcb = VMCB()
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
        // Real mode, as a CPU after reset but at 0000:1000: code and data segments of 64 KiB.
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
        vmcb[VMCB.dr6, as: UInt64.self] = 0xFFFF_0FF0
        vmcb[VMCB.dr7, as: UInt64.self] = 0x400
        vmcb[VMCB.rflags, as: UInt64.self] = 0x2
        vmcb[VMCB.rip, as: UInt64.self] = 0x1000
        vmcb[VMCB.rsp, as: UInt64.self] = 0x8000
        vmcb[VMCB.guestPAT, as: UInt64.self] = 0x0007_0406_0007_0406

        var registers = [UInt64](repeating: 0, count: 16)
        var tally = ExitTally()
        var line: [UInt8] = []
        while true {
            let entered = hv_rdtsc()
            registers.withUnsafeMutableBufferPointer { hv_svm_vmrun(vmcb.physicalAddress, $0.baseAddress) }
            let code = vmcb[VMCB.exitCode, as: UInt64.self]
            let info1 = vmcb[VMCB.exitInfo1, as: UInt64.self], info2 = vmcb[VMCB.exitInfo2, as: UInt64.self]
            let rip = vmcb[VMCB.rip, as: UInt64.self]
            let spent = hv_rdtsc() &- entered
            switch code {
            case SVMExit.ioio:
                // EXITINFO1 (APM Vol. 2, 15.10.2): port in bits 31:16, IN in bit 0; EXITINFO2
                // is the next instruction's RIP.
                let port = UInt16(truncatingIfNeeded: info1 >> 16)
                let rax = vmcb[VMCB.rax, as: UInt64.self]
                if info1 & 1 != 0 {
                    // LSR of the guest's UART: the transmitter is always ready.
                    let value: UInt64 = port == 0x3FD ? 0x60 : 0xFF
                    vmcb[VMCB.rax, as: UInt64.self] = rax & ~0xFF | value
                } else if port == 0x3F8 {
                    let byte = UInt8(truncatingIfNeeded: rax)
                    if byte == 10 {
                        print("guest: " + String(decoding: line, as: UTF8.self))
                        line.removeAll()
                    } else {
                        line.append(byte)
                    }
                }
                vmcb[VMCB.rip, as: UInt64.self] = info2
                tally.add("io", cycles: spent)
            case SVMExit.cpuid:
                let leaf = CPUFeatures.cpuid(UInt32(truncatingIfNeeded: vmcb[VMCB.rax, as: UInt64.self]), UInt32(truncatingIfNeeded: registers[2]))
                vmcb[VMCB.rax, as: UInt64.self] = UInt64(leaf.eax)
                registers[1] = UInt64(leaf.ebx)
                registers[2] = UInt64(leaf.ecx)
                registers[3] = UInt64(leaf.edx)
                vmcb[VMCB.rip, as: UInt64.self] = rip + 2
                tally.add("cpuid", cycles: spent)
            case SVMExit.msr:
                // EXITINFO1 0: RDMSR. The guest reads the host's TSC: passed through.
                if info1 == 0 {
                    let value = hv_rdmsr(UInt32(truncatingIfNeeded: registers[2]))
                    vmcb[VMCB.rax, as: UInt64.self] = value & 0xFFFF_FFFF
                    registers[3] = value >> 32
                }
                vmcb[VMCB.rip, as: UInt64.self] = rip + 2
                tally.add("msr", cycles: spent)
            case SVMExit.hlt:
                tally.add("hlt", cycles: spent)
                print("guest: halted at 0x\(String(rip, radix: 16)); CPUID gave \(vendor(registers))")
                tally.report()
                return true
            case SVMExit.invalid:
                print("svm: VMRUN refused the VMCB (VMEXIT_INVALID): a consistency check of AMD APM Vol. 2, 15.5.1 failed")
                return false
            case SVMExit.nestedPageFault:
                print("svm: nested page fault at guest-physical 0x\(String(info2, radix: 16)) (error code 0x\(String(info1, radix: 16))), RIP 0x\(String(rip, radix: 16))")
                return false
            default:
                print("svm: exit 0x\(String(code, radix: 16)) at RIP 0x\(String(rip, radix: 16)) (EXITINFO1 0x\(String(info1, radix: 16))): not handled")
                return false
            }
        }
    }

    /// The vendor string CPUID leaf 0 left in the guest's EBX, EDX, ECX.
    static func vendor(_ registers: [UInt64]) -> String {
        var bytes: [UInt8] = []
        for register in [registers[1], registers[3], registers[2]] {
            for shift in stride(from: UInt64(0), to: 32, by: 8) { bytes.append(UInt8(truncatingIfNeeded: register >> shift)) }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
