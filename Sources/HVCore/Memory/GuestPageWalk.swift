// Linear-address translation for hosted VMs: HVModel's guest paging walker (SDM Vol. 3A,
// chapter 4) run over a vCPU's registers and the VM's GuestMemory, and reading guest virtual
// memory built on it (for tools and debuggers). Works on every backend: it needs only
// `registers()`, `specialRegisters()` and, with CR4.PKE, `xsave()`.

/// Guest RAM as the `PhysicalMemory` the paging walkers read tables from.
public struct GuestPhysicalMemory: PhysicalMemory {
    public let memory: GuestMemory
    public init(_ memory: GuestMemory) { self.memory = memory }

    public func read64(at address: UInt64) throws(PhysicalMemoryFault) -> UInt64 {
        do { return try memory.read(UInt64.self, at: GuestPhysicalAddress(address)) } catch { throw .unbacked(address: address) }
    }

    public func write64(_ value: UInt64, at address: UInt64) throws(PhysicalMemoryFault) {
        do { try memory.write(value, at: GuestPhysicalAddress(address)) } catch { throw .unbacked(address: address) }
    }
}

/// Why a guest-virtual translation or read failed.
public enum GuestTranslationError: Error, CustomStringConvertible {
    /// The vCPU's registers could not be read.
    case registers(HVError)
    /// The guest's paging does not allow the access (what the guest would see as #PF or #GP).
    case fault(GuestPagingFault)
    /// The vCPU index does not exist.
    case noSuchVCPU(Int)

    public var description: String {
        switch self {
        case .registers(let error): "cannot read the vCPU's registers: \(error)"
        case .noSuchVCPU(let id): "there is no vCPU \(id)"
        case .fault(.pageFault(let f)):
            "page fault at 0x\(String(f.linearAddress.rawValue, radix: 16)): error code 0x\(String(f.errorCode.rawValue, radix: 16)) (\(f.reason))"
        case .fault(.nonCanonical(let a)): "0x\(String(a.rawValue, radix: 16)) is not canonical (#GP)"
        case .fault(.invalidPDPTE(let index, let entry)): "PAE PDPTE \(index) = 0x\(String(entry, radix: 16)) has reserved bits set"
        case .fault(.memory(let m)): "a paging-structure entry is outside guest RAM: \(m)"
        }
    }
}

extension VCPU {
    /// The paging state of this vCPU: CR0/CR3/CR4/EFER, RFLAGS.AC and, when CR4.PKE is set,
    /// PKRU from the XSAVE area (component 9 at offset 2688 of the standard layout, SDM Vol. 1,
    /// 13.4 and Table 13-1 / KVM_GET_XSAVE's standard format).
    /// `supports1GiBPages` is the guest's CPUID.80000001H:EDX.Page1GB[26]: without it a PDPTE's
    /// PS bit is reserved (SDM 4.5.4).
    public func pagingContext(physicalAddressBits: Int = 52, supports1GiBPages: Bool = true) throws(GuestTranslationError) -> GuestPagingContext {
        do {
            let special = try specialRegisters()
            let rflags = try registers().rflags
            var pkru: UInt32 = 0
            if special.cr4 & PagingControlBits.cr4PKE != 0 {
                let area = try xsave()
                let offset = 2688
                // XSTATE_BV (header at 512) bit 9 clear means PKRU is in its initial state, 0.
                if area.count >= offset + 4, area.count >= 520, area[512 + 1] & 0x2 != 0 {
                    pkru = UInt32(area[offset]) | UInt32(area[offset + 1]) << 8 | UInt32(area[offset + 2]) << 16 | UInt32(area[offset + 3]) << 24
                }
            }
            return GuestPagingContext(special: special, rflags: rflags, pkru: pkru, physicalAddressBits: physicalAddressBits,
                                      supports1GiBPages: supports1GiBPages)
        } catch {
            throw .registers(error)
        }
    }

    /// Translates `address` for `access` the way this vCPU's MMU would, reading its page tables
    /// from `memory`; tables are not changed (no A/D updates). A supervisor read by default,
    /// which is what `KVM_TRANSLATE` answers.
    public func translate(_ address: GuestVirtualAddress, access: GuestAccess = GuestAccess(.read),
                          memory: GuestMemory, supports1GiBPages: Bool = true) throws(GuestTranslationError) -> GuestTranslation
    {
        let context = try pagingContext(supports1GiBPages: supports1GiBPages)
        var physical = GuestPhysicalMemory(memory)
        do { return try GuestPagingWalker.translate(address, access, context: context, memory: &physical) } catch {
            throw .fault(error)
        }
    }
}

extension Machine {
    /// Translates `address` with vCPU `vcpu`'s paging state. Call while the VM is not running
    /// (created, paused or stopped): the registers belong to the vCPU thread while it runs.
    public func translate(_ address: GuestVirtualAddress, vcpu: Int = 0,
                          access: GuestAccess = GuestAccess(.read), supports1GiBPages: Bool = true) throws(GuestTranslationError) -> GuestTranslation
    {
        guard vcpus.indices.contains(vcpu) else { throw .noSuchVCPU(vcpu) }
        return try vcpus[vcpu].translate(address, access: access, memory: memory, supports1GiBPages: supports1GiBPages)
    }

    /// Reads `count` bytes of guest virtual memory at `address` as vCPU `vcpu` sees it,
    /// translating each page separately (the bytes may cross pages that map anywhere).
    public func readVirtualMemory(at address: GuestVirtualAddress, count: Int, vcpu: Int = 0) throws(GuestTranslationError) -> [UInt8] {
        guard vcpus.indices.contains(vcpu) else { throw .noSuchVCPU(vcpu) }
        let context = try vcpus[vcpu].pagingContext()
        var physical = GuestPhysicalMemory(memory)
        var result: [UInt8] = []
        result.reserveCapacity(count)
        var linear = address.rawValue
        while result.count < count {
            let translation: GuestTranslation
            do { translation = try GuestPagingWalker.translate(GuestVirtualAddress(linear), GuestAccess(.read), context: context, memory: &physical) }
            catch { throw .fault(error) }
            let inPage = Int(translation.pageSize.bytes - (linear & translation.pageSize.offsetMask))
            let chunk = min(inPage, count - result.count)
            do { result += try memory.readBytes(at: translation.physicalAddress, count: chunk) } catch {
                throw .fault(.memory(.unbacked(address: translation.physicalAddress.rawValue)))
            }
            linear &+= UInt64(chunk)
        }
        return result
    }
}
