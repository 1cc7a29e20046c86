// ACPI tables a guest finds by the standard scan (ACPI 6.4, 5.2.5.1 "Finding the RSDP on IA-PC
// Systems": a 16-byte aligned "RSD PTR " in 0xE0000-0xFFFFF): RSDP -> RSDT/XSDT -> FADT (with
// FACS and DSDT), MADT. Layouts: 5.2.5.3 (RSDP), 5.2.6 (header), 5.2.7/5.2.8 (RSDT/XSDT), 5.2.9
// (FADT, revision 6), 5.2.10 (FACS), 5.2.12 (MADT), 5.2.11.1 (DSDT); AML from chapter 20.

/// One table as placed in guest memory.
public struct ACPITable: Sendable, Equatable {
    /// "RSD PTR " for the RSDP, otherwise the 4-character signature ("FACP", "APIC", ...).
    public var signature: String
    public var address: UInt64
    public var bytes: [UInt8]
}

/// What the tables describe.
public struct ACPIConfiguration: Sendable, Equatable {
    /// One Processor Local APIC entry per vCPU, APIC IDs 0 ..< cpuCount.
    public var cpuCount: Int
    public var localAPICAddress: UInt32 = 0xFEE0_0000
    public var ioapicAddress: UInt32 = 0xFEC0_0000
    /// The PM1a event block; PM1a control is at +4 and the PM timer at +8 (`ACPIPMDevice`).
    public var pmBase: UInt16 = 0x600
    /// The SCI's ISA IRQ (QEMU's PIIX4 uses 9).
    public var sciIRQ: UInt8 = 9
    /// Whether an i8042 is present (FADT IAPC_BOOT_ARCH bit 1).
    public var hasI8042 = true
    /// Whether a reset register at 0xCF9 is present (FADT RESET_REG, value 0x06).
    public var hasResetRegister = true
    /// Adds a TPM 2.0 device (MSFT0101) with a TIS window at 0xFED40000 to the DSDT.
    public var hasTPM = false
    /// virtio-mmio devices for the DSDT (HID LNRO0005, as Linux's virtio_mmio driver matches).
    public var virtioSlots: [VirtioMMIOSlot] = []
    /// Where the tables go: the RSDP first, the rest after it. Must lie in 0xE0000-0xFFFFF.
    public var baseAddress: UInt64 = 0xE_0000

    public init(cpuCount: Int) { self.cpuCount = cpuCount }

    /// The area the RSDP scan covers (ACPI 6.4, 5.2.5.1); every table goes there.
    public static let area: Range<UInt64> = 0xE_0000..<0x10_0000

    /// Checks what the tables cannot describe, naming the field: `ACPITables.init` calls it.
    public func validate() throws(ConfigurationError) {
        let cpus = VirtualMachineConfiguration.maximumCPUCount
        guard (1...cpus).contains(cpuCount) else {
            // xAPIC IDs are 8 bits and 0xFF is the broadcast ID (SDM Vol. 3A, 11.6.1).
            throw ConfigurationError(field: "cpuCount", value: "\(cpuCount)", expected: "1 to \(cpus) (one 8-bit local APIC ID each, below the broadcast ID 0xFF)")
        }
        guard pmBase <= UInt16.max - 11 else {
            throw ConfigurationError(field: "pmBase", value: hexString(UInt64(pmBase)),
                                     expected: "a port at most 0xFFF4 (the PM1a event, control and timer blocks take 12 ports)")
        }
        guard sciIRQ < 16 else {
            throw ConfigurationError(field: "sciIRQ", value: "\(sciIRQ)", expected: "an ISA IRQ, 0 to 15 (the FADT's SCI_INT is one)")
        }
        guard Self.area.contains(baseAddress), baseAddress % 16 == 0 else {
            throw ConfigurationError(field: "baseAddress", value: hexString(baseAddress),
                                     expected: "a 16-byte aligned address in 0xE0000-0xFFFFF, where a guest scans for the RSDP (ACPI 6.4, 5.2.5.1)")
        }
        if let twice = virtioSlots.first(where: { slot in virtioSlots.filter { $0 == slot }.count > 1 }) {
            throw ConfigurationError(field: "virtioSlots", value: "slot \(twice.index) twice", expected: "each slot at most once")
        }
    }
}

/// A built set of ACPI tables: `install(into:)` writes them into guest RAM, `dump()` prints
/// them the way `acpidump` does.
public struct ACPITables: Sendable {
    public static let oemID = Array("HVSDK ".utf8)
    public static let oemTableID = Array("HVPC    ".utf8)

    /// Every table, RSDP first, in address order.
    public private(set) var tables: [ACPITable] = []

    /// Where the RSDP goes (the configuration's base address), for boot protocols that pass it
    /// (PVH's rsdp_paddr).
    public var rsdpAddress: UInt64 { tables[0].address }

    /// The tables `Machine.attachPCPlatform(acpiTables:tpm:virtio:)` installs for `cpuCount`
    /// CPUs, with the TPM device in the DSDT when `tpm` is true and one device per virtio-mmio
    /// slot. A loader that passes the RSDP's address or bytes to a kernel builds them here, so
    /// that what it passes is what gets installed.
    public static func pc(cpuCount: Int, tpm: Bool, virtio: [VirtioMMIOSlot] = []) throws(ConfigurationError) -> ACPITables {
        var configuration = ACPIConfiguration(cpuCount: cpuCount)
        configuration.hasTPM = tpm
        configuration.virtioSlots = virtio
        return try ACPITables(configuration)
    }

    /// The tables `configuration` describes; a field they cannot hold (`ACPIConfiguration.validate()`)
    /// or tables that would not end in 0xE0000-0xFFFFF are an error naming the field.
    public init(_ configuration: ACPIConfiguration) throws(ConfigurationError) {
        try configuration.validate()
        var next = configuration.baseAddress
        func place(_ size: Int, align: UInt64 = 16) -> UInt64 {
            let address = (next + align - 1) & ~(align - 1)
            next = address + UInt64(size)
            return address
        }
        let rsdpAddress = place(36)
        let dsdt = Self.table("DSDT", revision: 2, body: ACPIAML.dsdtBody(tpm: configuration.hasTPM, virtio: configuration.virtioSlots))
        let facs = Self.facs()
        let madt = Self.madt(configuration)
        let facsAddress = place(facs.count, align: 64)
        let dsdtAddress = place(dsdt.count)
        let fadtAddress = place(276)
        let fadt = Self.fadt(configuration, facs: facsAddress, dsdt: dsdtAddress)
        let madtAddress = place(madt.count)
        let pointers = [fadtAddress, madtAddress]
        let rsdt = Self.table("RSDT", revision: 1, body: pointers.flatMap { le($0, 4) })
        let rsdtAddress = place(rsdt.count)
        let xsdt = Self.table("XSDT", revision: 1, body: pointers.flatMap { le($0, 8) })
        let xsdtAddress = place(xsdt.count)
        tables = [
            ACPITable(signature: "RSD PTR ", address: rsdpAddress, bytes: Self.rsdp(rsdt: rsdtAddress, xsdt: xsdtAddress)),
            ACPITable(signature: "FACS", address: facsAddress, bytes: facs),
            ACPITable(signature: "DSDT", address: dsdtAddress, bytes: dsdt),
            ACPITable(signature: "FACP", address: fadtAddress, bytes: fadt),
            ACPITable(signature: "APIC", address: madtAddress, bytes: madt),
            ACPITable(signature: "RSDT", address: rsdtAddress, bytes: rsdt),
            ACPITable(signature: "XSDT", address: xsdtAddress, bytes: xsdt),
        ]
        // From a valid base the sums above cannot wrap: the area ends far below 2^64.
        guard next <= ACPIConfiguration.area.upperBound else {
            throw ConfigurationError(field: "baseAddress", value: hexString(configuration.baseAddress),
                                     expected: "an address the \(next - configuration.baseAddress) bytes of tables fit above, below 0x100000")
        }
    }

    /// The table with `signature`, if built.
    public func table(_ signature: String) -> ACPITable? { tables.first { $0.signature == signature } }

    /// Writes every table into guest RAM (which must hold 0xE0000-0xFFFFF: at least 1 MiB).
    /// The loader's e820 map should mark that range reserved.
    public func install(into memory: GuestMemory) throws(GuestMemoryError) {
        for table in tables { try memory.write(bytes: table.bytes, at: GuestPhysicalAddress(table.address)) }
    }

    /// `acpidump` format: per table "SIG @ 0x<address>" then 16 bytes a line with offset,
    /// hex and ASCII, a blank line between tables.
    public func dump() -> String {
        var out = ""
        for table in tables {
            let name = table.signature == "RSD PTR " ? "RSDP" : table.signature
            out += "\(name) @ 0x\(hex(table.address, digits: 16))\n"
            out += Self.header(of: table).map { "    \($0)\n" }.joined()
            for line in stride(from: 0, to: table.bytes.count, by: 16) {
                let chunk = table.bytes[line..<min(line + 16, table.bytes.count)]
                let hexPart = chunk.map { hex(UInt64($0), digits: 2) }.joined(separator: " ")
                let ascii = String(chunk.map { $0 >= 0x20 && $0 < 0x7F ? Character(UnicodeScalar($0)) : "." })
                out += "    \(hex(UInt64(line), digits: 4)): \(hexPart.padding(47)) \(ascii)\n"
            }
            out += "\n"
        }
        return out
    }

    /// The header fields of `table`, decoded as iasl shows them: the RSDP's (5.2.5.3), the
    /// FACS's (5.2.10) or the standard description header (5.2.6), each checksum checked.
    public static func header(of table: ACPITable) -> [String] {
        let bytes = table.bytes
        func text(_ range: Range<Int>) -> String {
            "\"" + String(decoding: bytes[range].map { $0 >= 0x20 && $0 < 0x7F ? $0 : UInt8(ascii: ".") }, as: UTF8.self) + "\""
        }
        func number(_ offset: Int, _ count: Int) -> UInt64 {
            (0..<count).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * UInt64($1)) }
        }
        func sum(_ range: Range<Int>) -> String { bytes[range].reduce(0, &+) == 0 ? "valid" : "INVALID" }
        switch table.signature {
        case "RSD PTR " where bytes.count >= 36:
            return ["Signature \(text(0..<8)), Checksum 0x\(hex(number(8, 1), digits: 2)) (\(sum(0..<20))), OEM ID \(text(9..<15)), Revision \(bytes[15])",
                    "RSDT 0x\(hex(number(16, 4), digits: 8)), Length \(number(20, 4)), XSDT 0x\(hex(number(24, 8), digits: 16)), Extended Checksum 0x\(hex(number(32, 1), digits: 2)) (\(sum(0..<Int(min(number(20, 4), UInt64(bytes.count))))))"]
        case "FACS" where bytes.count >= 36:
            return ["Signature \(text(0..<4)), Length \(number(4, 4)), Hardware Signature 0x\(hex(number(8, 4), digits: 8)), Waking Vector 0x\(hex(number(12, 4), digits: 8)), Global Lock 0x\(hex(number(16, 4), digits: 8)), Flags 0x\(hex(number(20, 4), digits: 8)), Version \(bytes[32])"]
        case _ where bytes.count >= 36:
            return ["Signature \(text(0..<4)), Length \(number(4, 4)), Revision \(bytes[8]), Checksum 0x\(hex(number(9, 1), digits: 2)) (\(sum(0..<Int(min(number(4, 4), UInt64(bytes.count)))))), OEM ID \(text(10..<16)), OEM Table ID \(text(16..<24))",
                    "OEM Revision \(number(24, 4)), Creator ID \(text(28..<32)), Creator Revision \(number(32, 4))"]
        default:
            return []
        }
    }

    /// The byte that makes `bytes` sum to 0 modulo 256 when stored in a zero checksum field.
    public static func checksum(_ bytes: some Sequence<UInt8>) -> UInt8 {
        0 &- bytes.reduce(0, &+)
    }

    // MARK: Tables

    /// A table with the standard 36-byte header (5.2.6) around `body`, checksummed.
    static func table(_ signature: String, revision: UInt8, body: [UInt8]) -> [UInt8] {
        var bytes = Array(signature.utf8) + le(UInt64(36 + body.count), 4) + [revision, 0]
        bytes += oemID + oemTableID + le(1, 4) + Array("HVSK".utf8) + le(1, 4)
        bytes += body
        bytes[9] = checksum(bytes)
        return bytes
    }

    static func rsdp(rsdt: UInt64, xsdt: UInt64) -> [UInt8] {
        var bytes = Array("RSD PTR ".utf8) + [0] + oemID + [2] + le(rsdt, 4) + le(36, 4) + le(xsdt, 8) + [0, 0, 0, 0]
        bytes[8] = checksum(bytes[0..<20])
        bytes[32] = checksum(bytes)
        return bytes
    }

    /// FACS offsets of the waking vectors OSPM writes before sleeping (ACPI 6.4, table 5.14).
    public static let firmwareWakingVectorOffset: UInt64 = 12
    public static let extendedFirmwareWakingVectorOffset: UInt64 = 24

    /// The FACS's guest-physical address.
    public var facsAddress: UInt64? { tables.first { $0.signature == "FACS" }?.address }

    static func facs() -> [UInt8] {
        var bytes = Array("FACS".utf8) + le(64, 4) + [UInt8](repeating: 0, count: 56)
        bytes[32] = 2  // version (ACPI 6.4, table 5.14)
        return bytes
    }

    /// Generic Address Structure (5.2.3.2) in system I/O space. `access` 0 leaves the access
    /// size to the OS (QEMU's choice for the PM1 blocks, which the OS splits in halves).
    static func ioAddress(_ port: UInt16, bits: UInt8, access: UInt8) -> [UInt8] {
        [1, bits, 0, access] + le(UInt64(port), 8)
    }

    static func fadt(_ c: ACPIConfiguration, facs: UInt64, dsdt: UInt64) -> [UInt8] {
        var body = [UInt8](repeating: 0, count: 276 - 36)
        func put(_ offset: Int, _ values: [UInt8]) { body.replaceSubrange(offset - 36 ..< offset - 36 + values.count, with: values) }
        put(36, le(facs, 4))  // FIRMWARE_CTRL
        put(40, le(dsdt, 4))  // DSDT
        put(46, le(UInt64(c.sciIRQ), 2))  // SCI_INT; SMI_CMD stays 0: always in ACPI mode
        put(56, le(UInt64(c.pmBase), 4))  // PM1a_EVT_BLK
        put(64, le(UInt64(c.pmBase) + 4, 4))  // PM1a_CNT_BLK
        put(76, le(UInt64(c.pmBase) + 8, 4))  // PM_TMR_BLK
        put(88, [4, 2, 0, 4])  // PM1_EVT_LEN, PM1_CNT_LEN, PM2_CNT_LEN, PM_TMR_LEN
        put(96, le(0x0FFF, 2) + le(0x0FFF, 2))  // P_LVL2_LAT, P_LVL3_LAT: no C2/C3
        put(108, [0x32])  // CENTURY: the CMOS byte `CMOSRTCDevice` keeps the century in
        put(109, le(c.hasI8042 ? 0x0003 : 0x0001, 2))  // IAPC_BOOT_ARCH: LEGACY_DEVICES, 8042
        // Flags: WBINVD, PROC_C1, PWR_BUTTON and SLP_BUTTON (control-method or absent), RESET_REG_SUP.
        put(112, le(1 << 0 | 1 << 2 | 1 << 4 | 1 << 5 | (c.hasResetRegister ? 1 << 10 : 0), 4))
        if c.hasResetRegister {
            put(116, ioAddress(0xCF9, bits: 8, access: 1))
            put(128, [0x06])
        }
        put(131, [4])  // FADT minor version: ACPI 6.4
        put(132, le(facs, 8))  // X_FIRMWARE_CTRL
        put(140, le(dsdt, 8))  // X_DSDT
        put(148, ioAddress(c.pmBase, bits: 32, access: 0))  // X_PM1a_EVT_BLK
        put(172, ioAddress(c.pmBase + 4, bits: 16, access: 0))  // X_PM1a_CNT_BLK
        put(208, ioAddress(c.pmBase + 8, bits: 32, access: 3))  // X_PM_TMR_BLK
        return table("FACP", revision: 6, body: body)
    }

    static func madt(_ c: ACPIConfiguration) -> [UInt8] {
        var body = le(UInt64(c.localAPICAddress), 4) + le(1, 4)  // PCAT_COMPAT: 8259s present
        for id in 0..<c.cpuCount {
            body += [0, 8, UInt8(truncatingIfNeeded: id), UInt8(truncatingIfNeeded: id)] + le(1, 4)  // enabled
        }
        body += [1, 12, 0, 0] +  // I/O APIC ID 0, its reset value, as QEMU declares it
             le(UInt64(c.ioapicAddress), 4) + le(0, 4)
        body += [2, 10, 0, 0] + le(2, 4) + le(0, 2)  // ISA IRQ 0 -> GSI 2, as on PC chipsets
        body += [2, 10, 0, c.sciIRQ] + le(UInt64(c.sciIRQ), 4) + le(0x000D, 2)  // SCI: level, active high
        body += [4, 6, 0xFF] + le(0, 2) + [1]  // LINT1 of every processor is NMI
        return table("APIC", revision: 5, body: body)
    }
}

// MARK: - AML

/// Just enough AML (ACPI 6.4, chapter 20) for a DSDT: \_S3-\_S5, the PCI root bridge, an optional
/// TPM device and virtio-mmio devices.
enum ACPIAML {
    static func dsdtBody(tpm: Bool, virtio: [VirtioMMIOSlot] = []) -> [UInt8] {
        // Name (\_S3, Package (4) { 1, 1, 0, 0 }), \_S4 { 2, 2, 0, 0 }, \_S5 { 0, 0, 0, 0 }: the
        // SLP_TYP values for suspend to RAM, suspend to disk and soft off (ACPI 6.4, 7.4.2;
        // ACPIPMDevice; QEMU's PIIX4 uses the same numbers). AML: OneOp 0x01, ZeroOp 0x00,
        // BytePrefix 0x0A for 2.
        var body: [UInt8] = []
        for (name, value) in [("_S3_", [UInt8(0x01)]), ("_S4_", [0x0A, 0x02]), ("_S5_", [0x00])] {
            body += [0x08, 0x5C] + Array(name.utf8) + [0x12] + pkgLength([0x04] + value + value + [0, 0])
        }
        // Device (PCI0) { _HID "PNP0A03", _UID 0, _CRS { bus 0-255, ports 0xCF8-0xCFF, the
        // I/O space around them, the 32-bit memory window } }: the PCI root bridge Linux
        // enumerates bus 0 under (drivers/acpi/pci_root.c) and assigns BARs from.
        let window = PCIWindow.memoryRange
        let root = wordAddressSpace(type: 2, typeFlags: 0, minimum: 0, maximum: 0xFF)
            + [0x47, 0x01] + le(0xCF8, 2) + le(0xCF8, 2) + [0x01, 0x08]  // IO (Decode16, 0xCF8, 0xCF8, 1, 8)
            + wordAddressSpace(type: 1, typeFlags: 0x03, minimum: 0x0000, maximum: 0x0CF7)
            + wordAddressSpace(type: 1, typeFlags: 0x03, minimum: 0x0D00, maximum: 0xFFFF)
            + dwordMemory(minimum: UInt32(window.lowerBound), maximum: UInt32(window.upperBound - 1))
        var devices = device("PCI0", hid: "PNP0A03", uid: 0, resources: root, status: nil)
        if tpm {
            // Device (TPM) { _HID "MSFT0101", _STA 0x0F, _CRS Memory32Fixed }
            let resources = memory32Fixed(0xFED4_0000, length: 0x5000)
            devices += device("TPM_", hid: "MSFT0101", uid: nil, resources: resources, status: 0x0F)
        }
        for slot in virtio {
            // Device (VRnn) { _HID "LNRO0005", _UID n, _CRS { Memory32Fixed (window),
            // Interrupt (ResourceConsumer, Level, ActiveHigh, Shared) { GSI } } }: the
            // virtio-mmio binding Linux's drivers/virtio/virtio_mmio.c matches.
            let resources = memory32Fixed(UInt32(truncatingIfNeeded: slot.address), length: UInt32(VirtioMMIOSlot.stride))
                + extendedInterrupt(slot.gsi, shared: true)
            let digits = Array(String(slot.index, radix: 16, uppercase: true).utf8)
            let name = "VR" + String(decoding: digits.count == 1 ? [UInt8(ascii: "0")] + digits : digits, as: UTF8.self)
            devices += device(name, hid: "LNRO0005", uid: UInt8(slot.index), resources: resources, status: nil)
        }
        // Scope (\_SB) { ... }
        body += [0x10] + pkgLength([0x5C] + Array("_SB_".utf8) + devices)
        return body
    }

    /// Device (NAME) { Name (_HID, "hid"), [Name (_UID, uid)], [Name (_STA, status)], Name (_CRS, ResourceTemplate) }
    static func device(_ name: String, hid: String, uid: UInt8?, resources: [UInt8], status: UInt8?) -> [UInt8] {
        let template = resources + [0x79, 0x00]  // End Tag (6.4.2.9), checksum 0
        let crs = [0x08] + Array("_CRS".utf8) + [0x11] + pkgLength([0x0A, UInt8(template.count)] + template)
        var contents = Array(name.utf8) + [0x08] + Array("_HID".utf8) + [0x0D] + Array(hid.utf8) + [0]
        if let uid { contents += [0x08] + Array("_UID".utf8) + [0x0A, uid] }
        if let status { contents += [0x08] + Array("_STA".utf8) + [0x0A, status] }
        return [0x5B, 0x82] + pkgLength(contents + crs)
    }

    /// Memory32Fixed (ReadWrite, base, length): ACPI 6.4, 6.4.3.4.
    static func memory32Fixed(_ base: UInt32, length: UInt32) -> [UInt8] {
        [0x86, 0x09, 0x00, 0x01] + le(UInt64(base), 4) + le(UInt64(length), 4)
    }

    /// Word Address Space Descriptor (ACPI 6.4, 6.4.3.5.3): a bridge's window of bus numbers
    /// (type 2) or I/O ports (type 1), producer, minimum and maximum fixed.
    static func wordAddressSpace(type: UInt8, typeFlags: UInt8, minimum: UInt16, maximum: UInt16) -> [UInt8] {
        [0x88, 0x0D, 0x00, type, 0x0C, typeFlags] + le(0, 2) + le(UInt64(minimum), 2) + le(UInt64(maximum), 2)
            + le(0, 2) + le(UInt64(maximum) - UInt64(minimum) + 1, 2)
    }

    /// DWord Address Space Descriptor (6.4.3.5.2) for a read-write, non-cacheable memory window.
    static func dwordMemory(minimum: UInt32, maximum: UInt32) -> [UInt8] {
        [0x87, 0x17, 0x00, 0x00, 0x0C, 0x01] + le(0, 4) + le(UInt64(minimum), 4) + le(UInt64(maximum), 4)
            + le(0, 4) + le(UInt64(maximum) - UInt64(minimum) + 1, 4)
    }

    /// Extended Interrupt (ResourceConsumer, Level, ActiveHigh, Shared or Exclusive) { gsi }:
    /// ACPI 6.4, 6.4.3.6 (flags bit 0 consumer, bit 1 edge, bit 2 active-low, bit 3 shared).
    static func extendedInterrupt(_ gsi: UInt32, shared: Bool) -> [UInt8] {
        [0x89, 0x06, 0x00, shared ? 0x09 : 0x01, 0x01] + le(UInt64(gsi), 4)
    }

    /// PkgLength (20.2.4) followed by `contents`; the length counts its own bytes.
    static func pkgLength(_ contents: [UInt8]) -> [UInt8] {
        let n = contents.count
        if n + 1 < 0x40 { return [UInt8(n + 1)] + contents }
        if n + 2 < 0x1000 {
            let total = n + 2
            return [0x40 | UInt8(total & 0x0F), UInt8(total >> 4)] + contents
        }
        let total = n + 3
        return [0x80 | UInt8(total & 0x0F), UInt8((total >> 4) & 0xFF), UInt8(total >> 12)] + contents
    }
}

private func le(_ value: UInt64, _ count: Int) -> [UInt8] {
    (0..<count).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) }
}

private func hex(_ value: UInt64, digits: Int) -> String {
    let text = String(value, radix: 16, uppercase: true)
    return String(repeating: "0", count: max(0, digits - text.count)) + text
}

extension String {
    fileprivate func padding(_ width: Int) -> String { self + String(repeating: " ", count: max(0, width - count)) }
}
