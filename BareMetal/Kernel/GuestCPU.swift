// What both engines share between reading an exit from their own structure (SVM's VMCB, VMX's
// VMCS) and running the guest again: each is a `VirtualCPU` (HVModel's run-loop protocol, the
// one KVM's vCPU implements), so `run()` turns hardware exits into the `VMExit` values a KVM
// backend produces (port I/O; MMIO found through a nested page fault or an EPT violation,
// fetched through HVModel's guest page walker and decoded by its instruction decoder; HLT; MSRs;
// the preemption timer) and `complete(_:with:)` writes the handler's answer back and moves the
// guest past the instruction, as KVM does at its next KVM_RUN. What KVM does in the kernel the
// engines do inside `run()`: CPUID, the local APIC (its MSRs, its timer, HLT waiting for it,
// interrupt injection), dropping writes to read-only pages.
import BareMetalSupport
import HVModel

/// What the instruction behind the last exit still needs once the handlers have answered.
enum PendingCompletion {
    case none
    /// IN: the value into AL/AX/EAX, then RIP to the next instruction.
    case portIn(size: Int, next: UInt64)
    /// OUT: RIP to the next instruction.
    case portOut(next: UInt64)
    /// An MMIO load into `register` (MOV, MOVZX, MOVSX).
    case mmioLoad(DecodedInstruction, OperandRegister)
    /// An MMIO store, or an arithmetic instruction's write-back: RIP past the instruction.
    case mmioStore(length: UInt8)
    /// An arithmetic instruction's read: the result, the flags, and maybe a write.
    case mmioArithmetic(DecodedInstruction, ArithmeticOperation, ArithmeticSource, memoryIsDestination: Bool, address: GuestPhysicalAddress)
    /// INS or OUTS of `count` elements at guest-physical `physical` (REP: RCX counts down, RIP
    /// stays on the instruction until it reaches 0).
    case portString(read: Bool, count: Int, size: Int, repeated: Bool, addressWidth: UInt8, physical: UInt64, next: UInt64)
    /// One element of MOVS, STOS or LODS with MMIO on one side (or both: `mmioDestination`).
    case mmioString(DecodedInstruction, StringOperation, ramDestination: UInt64?, mmioDestination: UInt64?)
    /// The write half of a MOVS from MMIO to MMIO: then the registers step.
    case mmioStringWritten(DecodedInstruction, StringOperation)
    /// RDMSR or WRMSR: EDX:EAX from the answer, or #GP for `.fault`.
    case msr(write: Bool)
    case halt
    case preemptionTimer
}

/// A vCPU of either engine, as the shared code sees it.
protocol GuestCPU: VirtualCPU where RunError == BackendFailure {
    var ram: UnsafeMutableRawPointer { get }
    var memorySize: UInt64 { get }
    /// Guest pages mapped read-only (4 KiB pages in the first 2 MiB).
    var readOnlyPages: [UInt64] { get }
    /// Guest pages inside RAM's span that are not RAM: their accesses are MMIO.
    var mmioPages: [UInt64] { get }
    /// The guest's local APIC, which the engine owns as KVM's in-kernel irqchip does (nil: none).
    var interrupts: LocalAPICDevice? { get set }
    /// Blocking by STI or MOV SS (SDM Vol. 3C, 25.4.2; AMD APM Vol. 2, 15.21.5): no interrupt
    /// may be injected for one instruction.
    var interruptShadow: Bool { get set }
    /// Makes the next entry deliver external interrupt `vector` through the guest's IDT (VMX's
    /// VM-entry interruption-information field, SDM 26.6; SVM's EVENTINJ, APM Vol. 2, 15.20).
    func inject(vector: UInt8)
    /// The same for exception `vector` (with `errorCode` where the vector has one and the guest
    /// is in protected mode).
    func injectException(vector: UInt8, errorCode: UInt32?)
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
    var pending: PendingCompletion { get set }
    /// An exit `complete` produced without entering the guest (an arithmetic instruction's
    /// write after its read), which the next `run()` returns first.
    var queuedExit: VMExit? { get set }
    /// TSC cycles from the world switch in to the exit back, for the last exit.
    var lastRoundTrip: UInt64 { get }
    /// A new slice after a preemption-timer exit the handlers let the guest go on from.
    func rearmTimer()
    /// After the last run: whatever the engine armed for the guest is stopped.
    func finish()
    /// The host stack to run the guest on, from the configuration (VMX's and SVM's
    /// `hostStackSize`).
    var hostStackSize: Int { get }
}

extension GuestCPU {
    var id: Int { 0 }

    /// Copies guest bytes into RAM at guest-physical `address`.
    func load(_ bytes: UnsafeRawBufferPointer, at address: UInt64) {
        (ram + Int(address)).copyMemory(from: bytes.baseAddress!, byteCount: bytes.count)
    }

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

    /// The guest's code size (HVModel's `InstructionDecoder.Mode` from CS, CR0 and EFER).
    var codeSize: InstructionDecoder.Mode { InstructionDecoder.Mode(special) }

    // MARK: From a hardware exit to a VMExit

    /// An IN or OUT of `size` bytes at `port` (not string, not REP); `next` is the address of
    /// the following instruction.
    func portExit(port: IOPort, size: Int, read: Bool, next: UInt64) -> VMExit {
        ioBuffer.beginRun()
        guard let data = PortIOData(buffer: ioBuffer, size: size, count: 1) else { return .internalError(InternalError(suberror: 5)) }
        let mask: UInt64 = size == 4 ? 0xFFFF_FFFF : (1 << (8 * UInt64(size))) - 1
        data[0] = UInt32(truncatingIfNeeded: read ? mask : register(0) & mask)
        pending = read ? .portIn(size: size, next: next) : .portOut(next: next)
        let io = PortIO(port: port, size: UInt8(size), count: 1, data: data)
        return read ? .portIn(io) : .portOut(io)
    }

    /// The guest-physical address of linear `address` for an `access`, through the guest's own
    /// page tables (HVModel's walker) under `special`.
    func translate(_ address: UInt64, _ access: MemoryAccessKind, _ special: SpecialRegisters) throws(GuestPagingFault) -> UInt64 {
        var memory = GuestRAM(base: ram, size: memorySize)
        return try GuestPagingWalker.translate(GuestVirtualAddress(address), GuestAccess(access),
                                               context: GuestPagingContext(special: special), memory: &memory).physicalAddress.rawValue
    }

    /// The bytes of the instruction at CS:RIP: up to 15, not past RAM (an instruction that
    /// crosses a page is assumed contiguous: true of identity-mapped code like HVGuest's); nil
    /// when it is not in RAM.
    func instructionBytes(_ special: SpecialRegisters) throws(GuestPagingFault) -> UnsafeRawBufferPointer? {
        let physical = try translate(special.cs.base &+ rip, .fetch, special)
        guard physical < memorySize else { return nil }
        return UnsafeRawBufferPointer(start: ram + Int(physical), count: Int(min(15, memorySize - physical)))
    }

    /// Whether guest-physical `address` is a device's rather than RAM.
    func isMMIO(_ address: UInt64) -> Bool { address >= memorySize || mmioPages.contains(address & ~0xFFF) }

    /// The base of the segment a string instruction reads from: DS unless a prefix says otherwise.
    func sourceSegmentBase(_ override: SegmentOverride?, _ special: SpecialRegisters) -> UInt64 {
        switch override {
        case .es?: return special.es.base
        case .cs?: return special.cs.base
        case .ss?: return special.ss.base
        case .fs?: return special.fs.base
        case .gs?: return special.gs.base
        default: return special.ds.base
        }
    }

    /// The address size and segment override of the INS or OUTS at RIP, from its legacy
    /// prefixes (0x67 and the segment prefixes: SDM Vol. 2, 2.1.1); the exit information of both
    /// vendors carries them only with optional features (SVM's decode assists, VMX's INS/OUTS
    /// information), so the engines read the instruction.
    func stringIOPrefixes() -> (addressWidth: UInt8, segment: SegmentOverride?) {
        let special = special, size = InstructionDecoder.Mode(special)
        var prefixes = InstructionPrefixes()
        if let bytes = try? instructionBytes(special), let read = try? InstructionDecoder.prefixes(bytes, size: size) { prefixes = read }
        return (prefixes.addressWidth(in: size), prefixes.segment)
    }

    /// INS or OUTS (with REP when `repeated`) of `size`-byte elements at `port`: OUTS reads from
    /// segment:RSI, INS writes to ES:RDI, both in RAM (string I/O to or from MMIO is refused).
    /// Forward REP runs go to the handlers in batches up to the page's end (one `PortIO` of
    /// `count` elements, as KVM batches them); RIP stays on the instruction until RCX is 0
    /// (nil: nothing to do, a REP with RCX 0).
    func stringPortExit(port: IOPort, size: Int, read: Bool, repeated: Bool, addressWidth: UInt8, segment: SegmentOverride?, next: UInt64) -> VMExit? {
        if repeated && StringInstruction.remaining(register(1), addressWidth: addressWidth) == 0 {
            skip(next &- rip)
            return nil
        }
        let index = register(read ? 7 : 6) & StringInstruction.mask(addressWidth: addressWidth)
        let special = special
        let base = read ? special.es.base : sourceSegmentBase(segment, special)
        guard let physical = try? translate(base &+ index, read ? .write : .read, special), physical <= memorySize &- UInt64(size),
              !isMMIO(physical), !isMMIO(physical + UInt64(size) - 1) else {
            print("\(engineName): string port I/O at \(hex(port.rawValue)) with memory HV does not give it (linear \(hex(base &+ index)))")
            return .internalError(InternalError(suberror: 7))
        }
        var count = 1
        if repeated && rflags & 0x400 == 0 {
            let inPage = Int((4096 - (physical & 0xFFF)) / UInt64(size))
            let left = StringInstruction.remaining(register(1), addressWidth: addressWidth)
            count = max(1, min(Int(min(left, UInt64(Int.max))), inPage, ioBuffer.capacity / size))
        }
        ioBuffer.beginRun()
        guard let data = PortIOData(buffer: ioBuffer, size: size, count: count) else { return .internalError(InternalError(suberror: 5)) }
        if !read {
            for element in 0..<count {
                let address = ram + Int(physical) + element * size
                data[element] = size == 1 ? UInt32(address.load(as: UInt8.self)) : size == 2 ? UInt32(address.loadUnaligned(as: UInt16.self)) : address.loadUnaligned(as: UInt32.self)
            }
        }
        pending = .portString(read: read, count: count, size: size, repeated: repeated, addressWidth: addressWidth, physical: physical, next: next)
        let io = PortIO(port: port, size: UInt8(size), count: UInt32(count), data: data)
        return read ? .portIn(io) : .portOut(io)
    }

    /// After one element (or batch) of a string instruction: RSI and/or RDI step, RCX counts
    /// down under REP, and RIP leaves the instruction only when it is done.
    func stepString(elements: Int, width: UInt8, source: Bool, destination: Bool, repeated: Bool, addressWidth: UInt8, length: UInt64) {
        let down = rflags & 0x400 != 0
        if source { setRegister(6, StringInstruction.advanced(register(6), elements: UInt64(elements), width: width, down: down, addressWidth: addressWidth)) }
        if destination { setRegister(7, StringInstruction.advanced(register(7), elements: UInt64(elements), width: width, down: down, addressWidth: addressWidth)) }
        if repeated {
            setRegister(1, StringInstruction.counted(register(1), elements: UInt64(elements), addressWidth: addressWidth))
            if StringInstruction.remaining(register(1), addressWidth: addressWidth) != 0 { return }
        }
        skip(length)
    }

    /// CPUID is the engine's (KVM answers it in the kernel): the CPU's own leaves. Two bytes.
    func cpuid() {
        let leaf = CPUFeatures.cpuid(UInt32(truncatingIfNeeded: register(0)), UInt32(truncatingIfNeeded: register(1)))
        setRegister(0, UInt64(leaf.eax))
        setRegister(3, UInt64(leaf.ebx))
        setRegister(1, UInt64(leaf.ecx))
        setRegister(2, UInt64(leaf.edx))
        skip(2)
        statistics.cpuid += 1
    }

    /// RDMSR (`write` false) or WRMSR of the MSR in ECX. The local APIC's MSRs are the engine's
    /// (nil: handled here, the guest goes on); the TSC is read from the CPU; the rest go to the
    /// handlers.
    func msrExit(write: Bool) -> VMExit? {
        let index = UInt32(truncatingIfNeeded: register(1))
        let exit: VMExit = write ? .msrWrite(index: index, value: register(0) & 0xFFFF_FFFF | register(2) << 32) : .msrRead(index: index)
        pending = .msr(write: write)
        if let apic = interrupts, let action = apic.handle(exit, context: ExitContext(vcpuID: 0)) {
            statistics.add(exit.kind, cycles: lastRoundTrip)
            complete(exit, with: action)
            return nil
        }
        if !write && index == 0x10 {
            statistics.add(exit.kind, cycles: lastRoundTrip)
            complete(exit, with: .resumeWith(hv_rdtsc()))
            return nil
        }
        return exit
    }

    /// HLT: with interrupts enabled and the APIC's timer armed (or an interrupt pending), the
    /// vCPU waits for it, as a halted CPU does, and the next entry injects it (nil: the guest
    /// goes on, as with KVM's in-kernel irqchip); otherwise `.halt` for the handlers and the
    /// policy. HLT is one byte long.
    func haltExit() -> VMExit? {
        pending = .halt
        if rflags & 0x200 != 0, let apic = interrupts {
            apic.advance()
            if apic.apic.pendingInterrupt == nil, let deadline = apic.nextDeadline {
                while hv_rdtsc() < deadline { hv_pause() }
                apic.advance()
            }
            if apic.apic.pendingInterrupt != nil {
                statistics.add(.halt, cycles: lastRoundTrip)
                statistics.wakeups += 1
                skip(1)
                pending = .none
                return nil
            }
        }
        return .halt
    }

    /// A guest-physical access the second-level tables refused (a nested page fault or an EPT
    /// violation at `address`, a write when `write`): outside RAM it is MMIO, decoded from the
    /// instruction at RIP into the `mmioRead`/`mmioWrite` a KVM backend reports (nil: a write
    /// to a read-only page, reported, dropped and stepped over).
    func memoryExit(address: UInt64, write: Bool) -> VMExit? {
        let protectionWrite = address < memorySize && write && readOnlyPages.contains(address & ~0xFFF)
        guard address >= memorySize || mmioPages.contains(address & ~0xFFF) || protectionWrite else {
            print("\(engineName): a second-level page fault in RAM at \(hex(address)) (write \(write))")
            return .internalError(InternalError(suberror: 0))
        }
        let special = special
        let fetched: UnsafeRawBufferPointer?
        do throws(GuestPagingFault) {
            fetched = try instructionBytes(special)
        } catch {
            print("\(engineName): the instruction at \(hex(rip)) cannot be fetched: \(error)")
            return .internalError(InternalError(suberror: 1))
        }
        guard let bytes = fetched else { return .internalError(InternalError(suberror: 1)) }
        let decoded: DecodedInstruction
        do throws(InstructionDecodingError) {
            decoded = try InstructionDecoder.decode(bytes, size: InstructionDecoder.Mode(special))
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
        switch decoded.operation {
        case .load(let register, _):
            pending = .mmioLoad(decoded, register)
            return .mmioRead(MMIOAccess(address: target, width: decoded.width))
        case .store(let register):
            pending = .mmioStore(length: decoded.length)
            return .mmioWrite(MMIOAccess(address: target, width: decoded.width, value: decoded.storedValue(register: self.register(register.index)) ?? 0))
        case .storeImmediate:
            pending = .mmioStore(length: decoded.length)
            return .mmioWrite(MMIOAccess(address: target, width: decoded.width, value: decoded.storedValue(register: 0) ?? 0))
        case .arithmetic(let operation, let source, let memoryIsDestination):
            // The device's value first; `complete` computes and queues the write-back.
            pending = .mmioArithmetic(decoded, operation, source, memoryIsDestination: memoryIsDestination, address: target)
            return .mmioRead(MMIOAccess(address: target, width: decoded.width))
        case .string(let operation, let repeated):
            // One element per exit; a REP instruction runs again (and exits again) until RCX is 0.
            let addressWidth = decoded.addressWidth
            if repeated && StringInstruction.remaining(register(1), addressWidth: addressWidth) == 0 {
                skip(UInt64(decoded.length))
                return nil
            }
            let mask: UInt64 = decoded.width == 8 ? .max : (1 << (8 * UInt64(decoded.width))) - 1
            switch operation {
            case .stos:
                pending = .mmioString(decoded, .stos, ramDestination: nil, mmioDestination: nil)
                return .mmioWrite(MMIOAccess(address: target, width: decoded.width, value: register(0) & mask))
            case .lods:
                pending = .mmioString(decoded, .lods, ramDestination: nil, mmioDestination: nil)
                return .mmioRead(MMIOAccess(address: target, width: decoded.width))
            case .movs:
                let indexMask = StringInstruction.mask(addressWidth: addressWidth)
                guard let source = try? translate(sourceSegmentBase(decoded.segmentOverride, special) &+ register(6) & indexMask, .read, special),
                      let destination = try? translate(special.es.base &+ register(7) & indexMask, .write, special) else {
                    return .internalError(InternalError(suberror: 1))
                }
                if isMMIO(source) {
                    guard isMMIO(destination) || destination <= memorySize &- UInt64(decoded.width) else { return .internalError(InternalError(suberror: 7)) }
                    pending = .mmioString(decoded, .movs, ramDestination: isMMIO(destination) ? nil : destination,
                                          mmioDestination: isMMIO(destination) ? destination : nil)
                    return .mmioRead(MMIOAccess(address: GuestPhysicalAddress(source), width: decoded.width))
                }
                // RAM to MMIO: the source is read here.
                guard source <= memorySize &- UInt64(decoded.width) else { return .internalError(InternalError(suberror: 7)) }
                var value: UInt64 = 0
                withUnsafeMutableBytes(of: &value) { $0.baseAddress!.copyMemory(from: ram + Int(source), byteCount: Int(decoded.width)) }
                pending = .mmioString(decoded, .movs, ramDestination: nil, mmioDestination: nil)
                return .mmioWrite(MMIOAccess(address: GuestPhysicalAddress(destination), width: decoded.width, value: value))
            }
        }
    }

    // MARK: Completion (VirtualCPU)

    private func finishString(_ decoded: DecodedInstruction, _ operation: StringOperation) {
        guard case .string(_, let repeated) = decoded.operation else { return }
        stepString(elements: 1, width: decoded.width, source: operation != .stos, destination: operation != .lods, repeated: repeated,
                   addressWidth: decoded.addressWidth, length: UInt64(decoded.length))
    }

    /// Writes the answer to the exit `run()` returned back into the guest and moves it past the
    /// instruction: the run loop calls this after the handlers and the policy.
    func complete(_ exit: VMExit, with action: ExitAction) {
        let step = pending
        pending = .none
        switch (step, exit) {
        case (.portIn(let size, let next), .portIn(let io)):
            let mask: UInt64 = size == 4 ? 0xFFFF_FFFF : (1 << (8 * UInt64(size))) - 1
            let value: UInt64
            if case .resumeWith(let answer) = action { value = answer } else { value = UInt64(io.data[0]) }
            setRegister(0, register(0) & ~mask | value & mask)
            skip(next &- rip)
        case (.portOut(let next), _):
            skip(next &- rip)
        case (.mmioLoad(let decoded, let target), _):
            if case .resumeWith(let value) = action {
                setRegister(target.index, decoded.registerAfterLoad(old: register(target.index), loaded: value, codeSize: codeSize))
            }
            skip(UInt64(decoded.length))
        case (.mmioStore(let length), _):
            skip(UInt64(length))
        case (.mmioArithmetic(let decoded, let operation, let source, let memoryIsDestination, let address), _):
            var memory: UInt64 = 0
            if case .resumeWith(let value) = action { memory = value }
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
            if operation.writesResult, let operand = sourceRegister, registerIsDestination {
                setRegister(operand.index, operand.valueAfterWrite(old: register(operand.index), value: result, width: decoded.width, codeSize: codeSize))
            } else if operation.writesResult {
                // The write-back is an exit of its own, as KVM's emulator makes it.
                queuedExit = .mmioWrite(MMIOAccess(address: address, width: decoded.width, value: result))
                pending = .mmioStore(length: decoded.length)
                return
            }
            skip(UInt64(decoded.length))
        case (.portString(let read, let count, let size, let repeated, let addressWidth, let physical, let next), _):
            if read, case .portIn(let io) = exit {
                for element in 0..<count {
                    let address = ram + Int(physical) + element * size
                    // A handler's one value answers every element, as on KVM.
                    var value = io.data[element]
                    if case .resumeWith(let answer) = action { value = UInt32(truncatingIfNeeded: answer) }
                    switch size {
                    case 1: address.storeBytes(of: UInt8(truncatingIfNeeded: value), as: UInt8.self)
                    case 2: address.storeBytes(of: UInt16(truncatingIfNeeded: value), as: UInt16.self)
                    default: address.storeBytes(of: value, as: UInt32.self)
                    }
                }
            }
            stepString(elements: count, width: UInt8(size), source: !read, destination: read, repeated: repeated, addressWidth: addressWidth,
                       length: next &- rip)
        case (.mmioString(let decoded, let operation, let ramDestination, let mmioDestination), _):
            var value: UInt64 = 0
            if case .resumeWith(let answer) = action { value = answer }
            switch operation {
            case .lods:
                setRegister(0, OperandRegister(0).valueAfterWrite(old: register(0), value: value, width: decoded.width, codeSize: codeSize))
            case .movs:
                if let destination = ramDestination, case .mmioRead = exit {
                    withUnsafeBytes(of: value) { (ram + Int(destination)).copyMemory(from: $0.baseAddress!, byteCount: Int(decoded.width)) }
                } else if let destination = mmioDestination, case .mmioRead = exit {
                    queuedExit = .mmioWrite(MMIOAccess(address: GuestPhysicalAddress(destination), width: decoded.width, value: value))
                    pending = .mmioStringWritten(decoded, .movs)
                    return
                }
            case .stos:
                break
            }
            finishString(decoded, operation)
        case (.mmioStringWritten(let decoded, let operation), _):
            finishString(decoded, operation)
        case (.msr(let write), _):
            switch action {
            case .fault:
                injectException(vector: 13, errorCode: 0)  // #GP(0), RIP stays at the instruction
                return
            case .resumeWith(let value) where !write:
                setRegister(0, value & 0xFFFF_FFFF)
                setRegister(2, value >> 32)
            default: break
            }
            skip(2)
        case (.halt, _):
            skip(1)
        case (.preemptionTimer, _):
            rearmTimer()
        case (.none, _), (.portIn, _):
            break
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
    /// CPUID exits, which have no `VMExit` (KVM answers CPUID itself), writes to read-only
    /// pages (second-level page faults inside RAM), exits the APIC took.
    var cpuid = 0, readOnlyWrites = 0
    /// Interrupts injected, HLTs the APIC's timer woke, and the host's own interrupts that
    /// ended a run (taken, not the guest's).
    var injected = 0, wakeups = 0, hostInterrupts = 0

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
}

/// `text` padded with spaces to `width` columns, on the left when `right`: the image's tables.
func column(_ text: String, _ width: Int, right: Bool = false) -> String {
    let padding = String(repeating: " ", count: max(0, width - text.utf8.count))
    return right ? padding + text : text + padding
}
