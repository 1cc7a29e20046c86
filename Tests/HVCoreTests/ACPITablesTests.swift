// ACPI tables (ACPI 6.4 chapter 5) and the PM registers at 0x600, without a VM, plus a guest
// that finds them by the standard RSDP scan.
import Foundation
import HVCore
import Synchronization
import HVTestSupport
import Testing

@Suite("ACPI tables and PM device")
struct ACPITablesTests {
    func u32(_ bytes: [UInt8], _ offset: Int) -> UInt64 { (0..<4).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * $1) } }
    func u64(_ bytes: [UInt8], _ offset: Int) -> UInt64 { (0..<8).reduce(0) { $0 | UInt64(bytes[offset + $1]) << (8 * $1) } }
    func sum(_ bytes: some Sequence<UInt8>) -> UInt8 { bytes.reduce(0, &+) }

    @Test("the RSDP is 16-byte aligned in 0xE0000-0xFFFFF with both checksums, pointing at RSDT and XSDT")
    func rsdp() throws {
        let tables = try ACPITables(ACPIConfiguration(cpuCount: 2))
        let rsdp = try #require(tables.table("RSD PTR "))
        #expect(rsdp.address == 0xE_0000)
        #expect(rsdp.bytes.count == 36)
        #expect(sum(rsdp.bytes[0..<20]) == 0)
        #expect(sum(rsdp.bytes) == 0)
        #expect(rsdp.bytes[15] == 2)
        #expect(u32(rsdp.bytes, 16) == tables.table("RSDT")?.address)
        #expect(u64(rsdp.bytes, 24) == tables.table("XSDT")?.address)
    }

    @Test("every table has a valid length and checksum and lies in the BIOS area")
    func checksums() throws {
        let tables = try ACPITables(ACPIConfiguration(cpuCount: 4))
        for table in tables.tables where table.signature != "RSD PTR " {
            #expect(Array(table.bytes[0..<4]) == Array(table.signature.utf8))
            #expect(u32(table.bytes, 4) == UInt64(table.bytes.count))
            if table.signature != "FACS" { #expect(sum(table.bytes) == 0, "\(table.signature)") }
            #expect(table.address >= 0xE_0000 && table.address + UInt64(table.bytes.count) <= 0x10_0000)
        }
        #expect(tables.table("FACS")!.address % 64 == 0)
    }

    @Test("the XSDT lists the FADT and MADT; the FADT points at FACS, DSDT, PM blocks and 0xCF9")
    func fadt() throws {
        let tables = try ACPITables(ACPIConfiguration(cpuCount: 1))
        let xsdt = try #require(tables.table("XSDT"))
        let fadt = try #require(tables.table("FACP"))
        #expect([u64(xsdt.bytes, 36), u64(xsdt.bytes, 44)] == [fadt.address, tables.table("APIC")!.address])
        #expect(fadt.bytes.count == 276)
        #expect(fadt.bytes[8] == 6)
        #expect(u64(fadt.bytes, 132) == tables.table("FACS")!.address)
        #expect(u64(fadt.bytes, 140) == tables.table("DSDT")!.address)
        #expect(u32(fadt.bytes, 56) == 0x600)
        #expect(u32(fadt.bytes, 64) == 0x604)
        #expect(u32(fadt.bytes, 76) == 0x608)
        #expect(fadt.bytes[91] == 4)
        #expect(u32(fadt.bytes, 112) & (1 << 10) != 0)  // RESET_REG_SUP
        #expect(Array(fadt.bytes[116..<128]) == [1, 8, 0, 1, 0xF9, 0x0C, 0, 0, 0, 0, 0, 0])
        #expect(fadt.bytes[128] == 0x06)
        #expect(Array(fadt.bytes[148..<152]) == [1, 32, 0, 0])
        #expect(Array(fadt.bytes[172..<176]) == [1, 16, 0, 0])
        #expect(Array(fadt.bytes[208..<212]) == [1, 32, 0, 3])
        #expect(u64(fadt.bytes, 212) == 0x608)
    }

    @Test("the MADT has one enabled LAPIC per vCPU and the I/O APIC")
    func madt() throws {
        let madt = try #require(try ACPITables(ACPIConfiguration(cpuCount: 3)).table("APIC"))
        #expect(u32(madt.bytes, 36) == 0xFEE0_0000)
        var entries: [[UInt8]] = []
        var offset = 44
        while offset < madt.bytes.count {
            let length = Int(madt.bytes[offset + 1])
            entries.append(Array(madt.bytes[offset..<offset + length]))
            offset += length
        }
        #expect(offset == madt.bytes.count)
        let lapics = entries.filter { $0[0] == 0 }
        #expect(lapics.map { [$0[2], $0[3], $0[4]] } == [[0, 0, 1], [1, 1, 1], [2, 2, 1]])
        let ioapic = try #require(entries.first { $0[0] == 1 })
        #expect(u32(ioapic, 4) == 0xFEC0_0000)
        #expect(entries.filter { $0[0] == 2 }.count == 2)
    }

    @Test("the DSDT holds \\_S3, \\_S4, \\_S5, the PCI root bridge and, when asked, a TPM device with its TIS window")
    func dsdt() throws {
        let plain = try #require(try ACPITables(ACPIConfiguration(cpuCount: 1)).table("DSDT"))
        // Name (\_S3, Package (4) { One, One, Zero, Zero }), \_S4 { 2, 2, 0, 0 }, \_S5 { 0, 0, 0, 0 }
        #expect(Array(plain.bytes[36..<49]) == [0x08, 0x5C, 0x5F, 0x53, 0x33, 0x5F, 0x12, 0x06, 0x04, 1, 1, 0, 0])
        #expect(Array(plain.bytes[49..<64]) == [0x08, 0x5C, 0x5F, 0x53, 0x34, 0x5F, 0x12, 0x08, 0x04, 0x0A, 2, 0x0A, 2, 0, 0])
        #expect(Array(plain.bytes[64..<77]) == [0x08, 0x5C, 0x5F, 0x53, 0x35, 0x5F, 0x12, 0x06, 0x04, 0, 0, 0, 0])
        #expect(String(decoding: plain.bytes, as: UTF8.self).contains("PNP0A03"), "the PCI root bridge")
        var configuration = ACPIConfiguration(cpuCount: 1)
        configuration.hasTPM = true
        let withTPM = try #require(try ACPITables(configuration).table("DSDT"))
        let text = String(decoding: withTPM.bytes, as: UTF8.self)
        #expect(text.contains("MSFT0101"))
        #expect(text.contains("TPM_"))
        #expect(sum(withTPM.bytes) == 0)
    }

    @Test("virtio-mmio devices appear in the DSDT as LNRO0005 with their window and a level, active-high, shared interrupt, and the PCI root bridge with its windows, as iasl disassembles them",
          .enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/iasl") || Requirement.tools, "skipped: no iasl (acpica-tools); run scripts/setup.sh"))
    func virtioDevicesInDSDT() throws {
        var configuration = ACPIConfiguration(cpuCount: 1)
        configuration.hasTPM = true
        configuration.virtioSlots = [try VirtioMMIOSlot(0), try VirtioMMIOSlot(11)]
        let dsdt = try #require(try ACPITables(configuration).table("DSDT"))
        #expect(sum(dsdt.bytes) == 0)
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("hv-dsdt-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        try Data(dsdt.bytes).write(to: folder.appendingPathComponent("dsdt.dat"))
        let iasl = Process()
        iasl.executableURL = URL(fileURLWithPath: "/usr/bin/iasl")
        iasl.arguments = ["-d", "dsdt.dat"]
        iasl.currentDirectoryURL = folder
        iasl.standardOutput = FileHandle.nullDevice
        iasl.standardError = FileHandle.nullDevice
        try iasl.run()
        iasl.waitUntilExit()
        #expect(iasl.terminationStatus == 0)
        let source = try String(contentsOf: folder.appendingPathComponent("dsdt.dsl"), encoding: .utf8)
        let compact = source.replacingOccurrences(of: " ", with: "")
        for (name, uid, window, gsi) in [("VR00", "0x00", "0xD0000000", "0x00000010"), ("VR0B", "0x0B", "0xD000B000", "0x00000013")] {
            #expect(source.contains("Device (\(name))"), "\(source)")
            #expect(compact.contains("Name(_UID,\(uid))"), "\(name): \(source)")
            #expect(compact.contains("Memory32Fixed(ReadWrite,\n\(window),//AddressBase\n0x00001000,//AddressLength\n)"), "\(name): \(source)")
            #expect(compact.contains("Interrupt(ResourceConsumer,Level,ActiveHigh,Shared,,,)\n{\n\(gsi),\n}"), "\(name): \(source)")
        }
        #expect(source.components(separatedBy: "\"LNRO0005\"").count == 3)
        #expect(source.contains("\"MSFT0101\""))
        // The PCI root bridge and its windows (bus numbers, the configuration ports, the I/O
        // space around them, the 32-bit memory window the virtio-pci BARs come from).
        #expect(source.contains("Device (PCI0)") && source.contains("\"PNP0A03\""), "\(source)")
        for window in ["WordBusNumber(ResourceProducer,MinFixed,MaxFixed,PosDecode,\n0x0000,//Granularity\n0x0000,//RangeMinimum\n0x00FF,",
                       "IO(Decode16,\n0x0CF8,//RangeMinimum\n0x0CF8,//RangeMaximum\n0x01,//Alignment\n0x08,",
                       "0x0000,//RangeMinimum\n0x0CF7,", "0x0D00,//RangeMinimum\n0xFFFF,",
                       "0xC0000000,//RangeMinimum\n0xCFFFFFFF,"] {
            #expect(compact.contains(window), "\(window): \(source)")
        }
    }

    /// A one-CPU configuration with `change` applied.
    static func configuration(_ change: (inout ACPIConfiguration) -> Void) -> ACPIConfiguration {
        var configuration = ACPIConfiguration(cpuCount: 1)
        change(&configuration)
        return configuration
    }

    @Test("a configuration the tables cannot describe is an error naming the field, never a trap", arguments: [
        (configuration { $0.cpuCount = -1 }, "cpuCount: -1 is invalid; expected 1 to 255"),
        (configuration { $0.cpuCount = 0 }, "cpuCount: 0 is invalid"),
        (configuration { $0.cpuCount = 256 }, "cpuCount: 256 is invalid"),
        (configuration { $0.cpuCount = .max }, "cpuCount: 9223372036854775807 is invalid"),
        (configuration { $0.pmBase = 0xFFFF }, "pmBase: 0xffff is invalid; expected a port at most 0xFFF4"),
        (configuration { $0.sciIRQ = 200 }, "sciIRQ: 200 is invalid; expected an ISA IRQ, 0 to 15"),
        (configuration { $0.baseAddress = .max }, "baseAddress: 0xffffffffffffffff is invalid; expected a 16-byte aligned address in 0xE0000-0xFFFFF"),
        (configuration { $0.baseAddress = 0xE_0001 }, "baseAddress: 0xe0001 is invalid"),
        (configuration { $0.baseAddress = 0xF_FFF0 }, "baseAddress: 0xffff0 is invalid; expected an address the "),
        (configuration { $0.virtioSlots = [VirtioMMIOSlot.all[3], VirtioMMIOSlot.all[3]] }, "virtioSlots: slot 3 twice is invalid"),
    ])
    func invalidConfigurations(configuration: ACPIConfiguration, message: String) {
        #expect(throws: ConfigurationError.self) { try ACPITables(configuration) }
        do { _ = try ACPITables(configuration) } catch {
            #expect(error.description.hasPrefix(message), "\(error)")
        }
    }

    @Test("the largest valid configuration (255 CPUs, a TPM, every virtio slot) fits the RSDP scan area")
    func largestConfiguration() throws {
        var largest = ACPIConfiguration(cpuCount: 255)
        largest.hasTPM = true
        largest.virtioSlots = VirtioMMIOSlot.all
        let tables = try ACPITables(largest)
        #expect(tables.tables.allSatisfy { ACPIConfiguration.area.contains($0.address + UInt64($0.bytes.count) - 1) })
    }

    @Test("install writes the tables into guest RAM; dump decodes each header (checksums checked), then the bytes acpidump-style")
    func installAndDump() throws {
        let memory = try GuestMemory.pcLayout(size: 2 << 20)
        let tables = try ACPITables(ACPIConfiguration(cpuCount: 1))
        try tables.install(into: memory)
        #expect(try memory.readBytes(at: 0xE_0000, count: 8) == Array("RSD PTR ".utf8))
        let dump = tables.dump()
        #expect(dump.hasPrefix("RSDP @ 0x00000000000E0000\n    Signature \"RSD PTR \", Checksum 0x"))
        #expect(dump.contains("\n    0000: 52 53 44 20 50 54 52 20"))
        #expect(dump.contains("FACP @ 0x"))
        #expect(dump.contains("APIC @ 0x"))
        #expect(dump.contains("Signature \"FACP\", Length 276, Revision 6, Checksum 0x"))
        #expect(!dump.contains("INVALID"), "every checksum holds")
        // A corrupted byte shows as an invalid checksum.
        var table = tables.tables.first { $0.signature == "APIC" }!
        table.bytes[40] ^= 0xFF
        #expect(ACPITables.header(of: table)[0].contains("(INVALID)"))
    }

    @Test("the PM timer counts 3,579,545 ticks a second in 24 bits")
    func pmTimer() {
        let now = Mutex<UInt64>(1_000)
        let pm = ACPIPMDevice(clock: { now.withLock { $0 } })
        #expect(pm.portRead(offset: 8, size: 4) == 0)
        now.withLock { $0 += 1_000_000_000 }
        #expect(pm.portRead(offset: 8, size: 4) == 3_579_545)
        now.withLock { $0 += 4_000_000_000 }
        #expect(pm.portRead(offset: 8, size: 4) == 17_897_725 - (1 << 24))
        now.withLock { $0 += 1_000 }  // 1 µs is 3.58 ticks
        #expect(pm.timerValue == 17_897_728 - (1 << 24))
    }

    @Test("PM1 control reports SCI_EN; SLP_EN with SLP_TYP 0 (S5) or 2 (S4) powers off, 1 (S3) suspends, others do nothing")
    func pm1Control() {
        let pm = ACPIPMDevice(clock: { 0 })
        #expect(pm.portRead(offset: 4, size: 2) == 1)
        #expect(pm.portWrite(offset: 4, size: 2, value: 0x0400) == .resume)
        #expect(pm.portRead(offset: 4, size: 2) == 0x0401)
        #expect(pm.portWrite(offset: 4, size: 2, value: 0x2C00) == .resume)  // SLP_TYP 3: no \_Sx declares it
        #expect(pm.portWrite(offset: 4, size: 2, value: 0x2800) == .stop(.systemEvent(.shutdown)))  // S4
        #expect(!pm.isSleeping)
        #expect(pm.portWrite(offset: 4, size: 2, value: 0x2400) == .suspend)  // S3
        #expect(pm.isSleeping)
        pm.reset()
        pm.resumed()
        #expect(!pm.isSleeping && pm.portRead(offset: 0, size: 2) == 0x8000, "WAK_STS after the wake")
        _ = pm.portWrite(offset: 0, size: 2, value: 0x8000)
        #expect(pm.portWrite(offset: 4, size: 2, value: 0x2000) == .stop(.systemEvent(.shutdown)))
        #expect(pm.portRead(offset: 0, size: 2) == 0)
        _ = pm.portWrite(offset: 2, size: 2, value: 0x0100)
        #expect(pm.portRead(offset: 2, size: 2) == 0x0100)
        #expect(pm.portRead(offset: 0, size: 4) == 0x0100_0000)  // status and enable as one dword
        #expect(pm.portWrite(offset: 5, size: 1, value: 0x20) == .stop(.systemEvent(.shutdown)))  // byte write of SLP_EN
        #expect(pm.portRead(offset: 12, size: 1) == 0xFF)
    }

    @Test("PM1 events: RTC_STS and PWRBTN_STS set, clear by writing 1, drive the SCI with their enables; only enabled RTC alarms wake a sleeper, the power button always does")
    func pm1Events() {
        let controller = RecordingController()
        let pm = ACPIPMDevice(sci: InterruptLine(controller: controller, gsi: 9), clock: { 0 })
        let wakes = Mutex(0)
        pm.onWake { wakes.withLock { $0 += 1 } }
        pm.rtcAlarm()
        #expect(pm.portRead(offset: 0, size: 2) == 0x0400)
        #expect(controller.levels.withLock { $0.last?.high } == false, "RTC_EN clear: no SCI")
        _ = pm.portWrite(offset: 2, size: 2, value: 0x0500)       // RTC_EN | PWRBTN_EN
        #expect(controller.levels.withLock { $0.last?.high } == true)
        _ = pm.portWrite(offset: 0, size: 2, value: 0x0400)       // clear RTC_STS
        #expect(pm.portRead(offset: 0, size: 2) == 0 && controller.levels.withLock { $0.last?.high } == false)
        pm.pressPowerButton()
        #expect(pm.portRead(offset: 0, size: 2) == 0x0100 && controller.levels.withLock { $0.last?.high } == true)
        #expect(wakes.withLock { $0 } == 0, "awake: nothing to wake")
        _ = pm.portWrite(offset: 0, size: 2, value: 0x0100)
        _ = pm.portWrite(offset: 2, size: 2, value: 0)            // nothing enabled
        #expect(pm.portWrite(offset: 4, size: 2, value: 0x2400) == .suspend)
        pm.rtcAlarm()
        #expect(wakes.withLock { $0 } == 0, "RTC_EN clear: the alarm does not wake")
        pm.pressPowerButton()
        #expect(wakes.withLock { $0 } == 1, "the power button wakes")
        pm.reset()
        pm.resumed()
        #expect(pm.portRead(offset: 0, size: 2) == 0x8100, "WAK_STS and what woke it")
    }
}

@Suite("ACPI under KVM", .requiresKVM, .serialized)
struct ACPIKVMTests {
    @Test("a long-mode guest finds the RSDP by the standard scan, follows XSDT to the FADT and reads an advancing PM timer")
    func guestFindsThePMTimer() throws {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        try ACPITables(ACPIConfiguration(cpuCount: 1)).install(into: vm.memory)
        try vm.devices.register(ACPIPMDevice(), port: ACPIPMDevice.basePort, count: ACPIPMDevice.portCount)
        try vm.load(GuestProgram.longMode { a in
            let scan = a.label()
            let found = a.label()
            a.mov(Register64.rbx, 0xE_0000)
            a.mov(Register64.rcx, 0x2052_5450_2044_5352)  // "RSD PTR " little-endian
            a.bind(scan)
            a.mov(Register64.rax, .at(Register64.rbx))
            a.cmp(Register64.rax, Register64.rcx)
            a.je(found)
            a.add(Register64.rbx, 16)
            a.cmp(Register64.rbx, 0x10_0000)
            a.jne(scan)
            a.debugExit(code: 1)
            a.bind(found)
            a.mov(Register32.eax, Register32.ebx)
            a.out(0x77, Register32.eax)  // the RSDP's address
            a.mov(Register64.rbx, .at(Register64.rbx, 24))  // XsdtAddress
            a.mov(Register64.rbx, .at(Register64.rbx, 36))  // Entry[0]: the FADT
            a.mov(Register32.eax, .at(Register64.rbx, 76))  // PM_TMR_BLK
            a.out(0x77, Register32.eax)
            a.mov(Register32.edx, Register32.eax)
            a.in(Register32.eax, Register16.dx)
            a.mov(Register32.esi, Register32.eax)
            a.in(Register32.eax, Register16.dx)
            a.mov(Register32.edi, Register32.eax)
            a.mov(Register32.eax, Register32.esi)
            a.out(0x77, Register32.eax)
            a.mov(Register32.eax, Register32.edi)
            a.out(0x77, Register32.eax)
            a.debugExit(code: 0)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 0))
        let values = recorder.accesses.map { $0.values[0] }
        try #require(values.count == 4)
        #expect(values[0] == 0xE_0000)
        #expect(values[1] == 0x608)
        let ticks = (values[3] &- values[2]) & 0xFF_FFFF
        #expect(ticks > 0 && ticks < 3_579_545 * 5, "the timer advanced \(ticks) ticks between two reads")
    }
}
