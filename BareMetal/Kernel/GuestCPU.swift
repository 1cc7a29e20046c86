// What both engines do with an exit once they have read it from their own structure (SVM's VMCB,
// VMX's VMCS): port I/O, MMIO found through a nested page fault or an EPT violation (fetched
// through HVModel's guest page walker, decoded by HVModel's instruction decoder), HLT, CPUID and
// MSRs, each handed to the `ExitHandler` chain as the `VMExit` value a KVM backend produces.
import BareMetalSupport
import HVModel

/// A vCPU of either engine, as the shared exit code sees it.
protocol GuestCPU: AnyObject {
    var ram: UnsafeMutableRawPointer { get }
    var memorySize: UInt64 { get }
    /// Guest pages mapped read-only (4 KiB pages in the first 2 MiB).
    var readOnlyPages: [UInt64] { get }
    /// Guest pages inside RAM's span that are not RAM: their accesses are MMIO.
    var mmioPages: [UInt64] { get }
    /// Where the guest's interrupts come from (nil: it has none).
    var interrupts: LocalAPICDevice? { get set }
    /// Blocking by STI or MOV SS (SDM Vol. 3C, 25.4.2; AMD APM Vol. 2, 15.21.5): no interrupt
    /// may be injected for one instruction.
    var interruptShadow: Bool { get set }
    /// Makes the next entry deliver external interrupt `vector` through the guest's IDT (VMX's
    /// VM-entry interruption-information field, SDM 26.6; SVM's EVENTINJ, APM Vol. 2, 15.20).
    func inject(vector: UInt8)
    var rip: UInt64 { get set }
    var rflags: UInt64 { get set }
    func register(_ index: UInt8) -> UInt64
    func setRegister(_ index: UInt8, _ value: UInt64)
    /// CR0, CR3, CR4, EFER and CS (base and attributes): what fetching and decoding need.
    var special: SpecialRegisters { get }
    var ioBuffer: PortIOBuffer { get }
    var statistics: ExitTally { get set }
    /// The engine's name in messages ("svm", "vmx").
    var engineName: StaticString { get }
    /// Runs until a handler stops the guest or an exit cannot be handled. `haltResumes` says
    /// what HLT does when no handler takes it (the demo's VM resumes after it, as
    /// `haltPolicy: .resume`).
    func run<H: ExitHandler>(_ handler: H, haltResumes: Bool) -> StopReason
}

extension GuestCPU {
    /// Past an instruction the engine emulated or skipped: RIP moves on, and any STI or MOV SS
    /// shadow the instruction sat in is over (as KVM's skip_emulated_instruction does).
    func skip(_ length: UInt64) {
        rip &+= length
        if interruptShadow { interruptShadow = false }
    }

    /// Before each entry: an interrupt the APIC has ready is acknowledged and injected when the
    /// guest can take it (RFLAGS.IF set, no shadow).
    func deliverInterrupt() {
        guard let apic = interrupts else { return }
        apic.advance()
        guard apic.apic.pendingInterrupt != nil, rflags & 0x200 != 0, !interruptShadow, let vector = apic.apic.acknowledge() else { return }
        inject(vector: vector)
        statistics.injected += 1
    }

    /// The guest's code size from CS and EFER.LMA (SDM Vol. 3A, 5.2.1; AMD APM Vol. 2, 4.8).
    var codeSize: InstructionDecoder.Mode {
        let special = special
        if special.efer & ControlBits.eferLMA != 0 && special.cs.long { return .bits64 }
        if special.cr0 & ControlBits.cr0PE != 0 && special.cs.defaultSize32 { return .bits32 }
        return .bits16
    }

    /// An IN or OUT of `size` bytes at `port` (not string, not REP); `next` is the address of
    /// the following instruction.
    func portIO<H: ExitHandler>(port: IOPort, size: Int, read: Bool, next: UInt64, _ handler: H, spent: UInt64) -> StopReason? {
        ioBuffer.beginRun()
        guard let data = PortIOData(buffer: ioBuffer, size: size, count: 1) else { return .backendFailure }
        let mask: UInt64 = size == 4 ? 0xFFFF_FFFF : (1 << (8 * UInt64(size))) - 1
        let rax = register(0)
        data[0] = UInt32(truncatingIfNeeded: read ? mask : rax & mask)
        let io = PortIO(port: port, size: UInt8(size), count: 1, data: data)
        statistics.add(read ? .portIn : .portOut, cycles: spent)
        switch handler.handle(read ? .portIn(io) : .portOut(io), context: ExitContext(vcpuID: 0)) {
        case .stop(let reason)?: return reason
        case nil: return .unmappedPort(port: port, write: !read)
        case .resumeWith(let value)?:
            if read { setRegister(0, rax & ~mask | value & mask) }
        default:
            if read { setRegister(0, rax & ~mask | UInt64(data[0]) & mask) }
        }
        skip(next &- rip)
        return nil
    }

    /// CPUID is the engine's (KVM answers it in the kernel): the CPU's own leaves. `length` is
    /// the instruction's (2).
    func cpuid() {
        let leaf = CPUFeatures.cpuid(UInt32(truncatingIfNeeded: register(0)), UInt32(truncatingIfNeeded: register(1)))
        setRegister(0, UInt64(leaf.eax))
        setRegister(3, UInt64(leaf.ebx))
        setRegister(1, UInt64(leaf.ecx))
        setRegister(2, UInt64(leaf.edx))
        skip(2)
        statistics.cpuid += 1
    }

    /// RDMSR (`write` false) or WRMSR of the MSR in ECX, through the handlers; the TSC (10H) is
    /// read from the CPU when no handler answers. Both instructions are two bytes long.
    func msr<H: ExitHandler>(write: Bool, _ handler: H, spent: UInt64) -> StopReason? {
        let index = UInt32(truncatingIfNeeded: register(1))
        let context = ExitContext(vcpuID: 0)
        if !write {
            statistics.add(.msrRead, cycles: spent)
            let value: UInt64
            switch handler.handle(.msrRead(index: index), context: context) {
            case .resumeWith(let answer)?: value = answer
            case .stop(let reason)?: return reason
            case _ where index == 0x10: value = hv_rdtsc()
            default: return .unhandledExit(.msrRead)
            }
            setRegister(0, value & 0xFFFF_FFFF)
            setRegister(2, value >> 32)
        } else {
            statistics.add(.msrWrite, cycles: spent)
            let value = register(0) & 0xFFFF_FFFF | register(2) << 32
            switch handler.handle(.msrWrite(index: index, value: value), context: context) {
            case .stop(let reason)?: return reason
            case nil: return .unhandledExit(.msrWrite)
            default: break
            }
        }
        skip(2)
        return nil
    }

    /// HLT: with interrupts enabled and the APIC's timer armed (or an interrupt pending), the
    /// vCPU waits for it, as a halted CPU does, and the next entry injects it; otherwise the
    /// handlers decide, and with none `haltResumes` says whether the guest goes on after it (as
    /// `haltPolicy: .resume`) or stops. HLT is one byte long.
    func halt<H: ExitHandler>(_ handler: H, haltResumes: Bool, spent: UInt64) -> StopReason? {
        statistics.add(.halt, cycles: spent)
        if rflags & 0x200 != 0, let apic = interrupts {
            apic.advance()
            if apic.apic.pendingInterrupt == nil, let deadline = apic.nextDeadline {
                while hv_rdtsc() < deadline { hv_pause() }
                apic.advance()
            }
            if apic.apic.pendingInterrupt != nil {
                statistics.wakeups += 1
                skip(1)
                return nil
            }
        }
        switch handler.handle(.halt, context: ExitContext(vcpuID: 0)) {
        case .stop(let reason)?: return reason
        case nil where !haltResumes: return .halted
        default:
            skip(1)
            return nil
        }
    }

    /// A guest-physical access the second-level tables refused (a nested page fault or an EPT
    /// violation at `address`, a write when `write`): outside RAM it is MMIO, emulated from the
    /// instruction at RIP as the `mmioRead`/`mmioWrite` exits a KVM backend reports; a write to
    /// a read-only page is reported, dropped and stepped over.
    func memoryFault<H: ExitHandler>(address: UInt64, write: Bool, _ handler: H, spent: UInt64) -> StopReason? {
        let protectionWrite = address < memorySize && write && readOnlyPages.contains(address & ~0xFFF)
        guard address >= memorySize || mmioPages.contains(address & ~0xFFF) || protectionWrite else {
            print("\(engineName): a second-level page fault in RAM at \(hex(address)) (write \(write))")
            return .internalError(InternalError(suberror: 0))
        }
        let special = special
        let linear = GuestVirtualAddress(special.cs.base &+ rip)
        var memory = GuestRAM(base: ram, size: memorySize)
        let physical: UInt64
        do throws(GuestPagingFault) {
            physical = try GuestPagingWalker.translate(linear, GuestAccess(.fetch), context: GuestPagingContext(special: special), memory: &memory).physicalAddress.rawValue
        } catch {
            print("\(engineName): the instruction at \(hex(rip)) cannot be fetched: \(error)")
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
            print("\(engineName): MMIO at \(hex(address)) by an instruction HV cannot emulate: \(error)")
            return .internalError(InternalError(suberror: 2))
        }
        if protectionWrite {
            statistics.readOnlyWrites += 1
            print("\(engineName): a \(decoded.width)-byte write to read-only guest page \(hex(address & ~0xFFF)) at RIP \(hex(rip)), dropped")
            skip(UInt64(decoded.length))
            return nil
        }
        let target = GuestPhysicalAddress(address)
        let context = ExitContext(vcpuID: 0)
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
            if let stop = mmioWrite(target, decoded.storedValue(register: self.register(register.index)) ?? 0, decoded, handler, spent) { return stop }
        case .storeImmediate:
            if let stop = mmioWrite(target, decoded.storedValue(register: 0) ?? 0, decoded, handler, spent) { return stop }
        case .arithmetic(let operation, let source, let memoryIsDestination):
            // The device's value is read, combined with the register or immediate, and written
            // back when memory is the destination; RFLAGS gets the status flags.
            statistics.add(.mmioRead, cycles: spent)
            let memory: UInt64
            switch handler.handle(.mmioRead(MMIOAccess(address: target, width: decoded.width)), context: context) {
            case .resumeWith(let value)?: memory = value
            case .stop(let reason)?: return reason
            case nil: return .unmappedMMIO(address: target, write: false)
            default: memory = 0
            }
            let other: UInt64, sourceRegister: OperandRegister?
            switch source {
            case .register(let operand):
                other = operand.operand(of: register(operand.index))
                sourceRegister = operand
            case .immediate(let value):
                other = value
                sourceRegister = nil
            }
            let registerIsDestination = !memoryIsDestination && sourceRegister != nil
            let (result, flags) = operation.apply(registerIsDestination ? other : memory, registerIsDestination ? memory : other,
                                                  width: decoded.width, carryIn: rflags & StatusFlags.carry != 0)
            rflags = rflags & ~StatusFlags.all | flags
            if operation.writesResult {
                if let operand = sourceRegister, registerIsDestination {
                    setRegister(operand.index, operand.valueAfterWrite(old: register(operand.index), value: result, width: decoded.width, codeSize: codeSize))
                } else if let stop = mmioWrite(target, result, decoded, handler, spent) {
                    return stop
                }
            }
        case .string:
            print("\(engineName): MMIO at \(hex(address)) by a string instruction: not emulated yet")
            return .internalError(InternalError(suberror: 2))
        }
        skip(UInt64(decoded.length))
        return nil
    }

    private func mmioWrite<H: ExitHandler>(_ target: GuestPhysicalAddress, _ value: UInt64, _ decoded: DecodedInstruction,
                                           _ handler: H, _ spent: UInt64) -> StopReason? {
        statistics.add(.mmioWrite, cycles: spent)
        switch handler.handle(.mmioWrite(MMIOAccess(address: target, width: decoded.width, value: value)), context: ExitContext(vcpuID: 0)) {
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

/// Exits by kind with their round trips (TSC cycles from the world switch in to the exit back),
/// kept as samples for the median and the 99th percentile, as `hv demo`'s table shows them.
struct ExitTally {
    static let sampleCapacity = 4096
    var samples: [[UInt64]] = Array(repeating: [], count: ExitKind.allCases.count)
    /// CPUID exits, which have no `VMExit` (KVM answers CPUID itself), and writes to read-only
    /// pages (second-level page faults inside RAM).
    var cpuid = 0, readOnlyWrites = 0
    /// Interrupts injected, and HLTs the APIC's timer woke.
    var injected = 0, wakeups = 0

    mutating func add(_ kind: ExitKind, cycles: UInt64) {
        let index = Int(kind.rawValue)
        if samples[index].count < Self.sampleCapacity { samples[index].append(cycles) }
    }

    func report() {
        print("exit               count  median cycles  p99 cycles")
        print("---------------------------------------------------")
        var total = 0
        for kind in ExitKind.allCases {
            let sorted = samples[Int(kind.rawValue)].sorted()
            guard !sorted.isEmpty else { continue }
            total += sorted.count
            let median = sorted[sorted.count / 2], p99 = sorted[min(sorted.count - 1, sorted.count * 99 / 100)]
            print(column("\(kind.name)", 17) + column("\(sorted.count)", 7, right: true) + column("\(median)", 15, right: true)
                  + column("\(p99)", 12, right: true))
        }
        if cpuid > 0 { print(column("cpuid", 17) + column("\(cpuid)", 7, right: true)) }
        if readOnlyWrites > 0 { print(column("ro-write", 17) + column("\(readOnlyWrites)", 7, right: true)) }
        print(column("total", 17) + column("\(total + cpuid + readOnlyWrites)", 7, right: true))
        if injected > 0 { print("\(injected) interrupt\(injected == 1 ? "" : "s") injected, \(wakeups) HLT\(wakeups == 1 ? "" : "s") woken by the APIC timer") }
    }

    private func column(_ text: String, _ width: Int, right: Bool = false) -> String {
        let padding = String(repeating: " ", count: max(0, width - text.utf8.count))
        return right ? padding + text : text + padding
    }
}
