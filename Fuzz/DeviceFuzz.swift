// libFuzzer target: every device of `hv run --platform pc --tpm ... --test-devices` (COM1 and
// the debug exit, fw_cfg with DMA, the CMOS RTC, the i8042, the PCI host bridge and its memory
// and I/O windows, the ACPI PM block, port 0x92, the shutdown port, the split irqchip's I/O
// APIC, the TPM's TIS window over libtpms, QEMU's pci-testdev and pc-testdev, a virtio-pci
// entropy device) on the scripted backend, driven through `DeviceBus` as a guest's exits reach
// it. The input is a sequence of 16-byte operations (port and MMIO reads and writes of every
// width, string I/O, stores to guest RAM, device resets); the input itself is also the first
// bytes of guest RAM, so a DMA descriptor (fw_cfg's) can point anywhere the fuzzer likes.
// Whatever it holds, the host must not trap, hang or grow: libFuzzer's -rss_limit_mb and
// -malloc_limit_mb (set by scripts/fuzz-devices.sh) turn growth into a failure.
// Built and run by scripts/fuzz-devices.sh against HVTPM and HVCore compiled with coverage.
import Foundation
import HVCore
import HVTPM
import Logging

/// Everything built once per process: a PC on the scripted backend with every device.
private struct Harness {
    static let memorySize: UInt64 = 2 << 20
    let machine: Machine<ScriptedBackend>
    let engine: LibTPMSEngine

    init() {
        // A guest's mistakes are logged once per device; here they would flood the output.
        LoggingSystem.bootstrap { _ in SwiftLogNoOpLogHandler() }
        do {
            let configuration = VirtualMachineConfiguration(memorySize: Self.memorySize, interruptController: .split)
            machine = try Machine(configuration: configuration, backend: ScriptedBackend(script: []))
            let uart = UART16550(output: .discard)
            try machine.devices.register(uart, port: .com1, count: UART16550.portCount)
            try machine.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
            try machine.connect(uart, irq: 4)
            // The TPM as `hv run --tpm` sets it up: started, platform hierarchy locked by a random auth.
            engine = try LibTPMSEngine.open(directory: nil, holder: "fuzz-devices")
            let tis = try TISDevice(engine: engine, platformPolicy: .randomAuth)
            try machine.devices.register(tis, address: GuestPhysicalAddress(TISInterface.baseAddress), length: TISInterface.windowSize)
            try machine.connect(tis)
            let pc = try machine.attachPCPlatform(acpiTables: true, tpm: true)
            try machine.attachPCITestDevice(platform: pc)
            try machine.attachVirtioPCI(VirtioEntropy(), platform: pc, slot: 3)
            try machine.attachTestDevices()
        } catch {
            fatalError("fuzz-devices: set-up failed: \(error)")
        }
    }
}

private let harness = Harness()
private let context = ExitContext(vcpuID: 0)

/// Where port operations land: each device's first port (an operation adds a small offset), so
/// most of them reach a device; a selector past the table takes the 16-bit port as it is.
private let portBases: [UInt16] = [
    0x3F8, 0xF4, 0x510, 0x70, 0x60, 0x64, 0xCF8, 0xCFC, 0xCF9, 0x600, 0x92, 0x604,
    0xE0, 0xE4, 0xE8, 0x2000, 0xC000, 0xC100,
]
/// The same for MMIO: the TIS window, the I/O APIC, the PCI memory window (pci-testdev's and the
/// virtio function's BARs), the pc-testdev scratch window, the local APIC (in-kernel: unmapped
/// here), the virtio-mmio slots (none attached) and the top of the address space.
private let mmioBases: [UInt64] = [
    TISInterface.baseAddress, 0xFEC0_0000, 0xC000_0000, 0xC000_1000, 0xC000_4000, PCTestDevice.scratchAddress,
    0xFEE0_0000, 0xD000_0000, UInt64.max - 0xFFFF,
]

/// Port data for one operation: up to 64 elements of 4 bytes.
private let portBuffer = PortIOBuffer(capacity: 64 * 4)

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzz(_ start: UnsafePointer<UInt8>, _ count: Int) -> CInt {
    let input = UnsafeBufferPointer(start: start, count: count)
    let memory = harness.machine.memory
    // Guest RAM starts with the input (the rest keeps what earlier inputs' stores left).
    try? memory.write(bytes: Array(input.prefix(64 << 10)), at: 0)
    var offset = 0
    while offset + 16 <= count {
        let op = input[offset], shape = input[offset + 1], selector = Int(input[offset + 2])
        var position: UInt32 = 0, value: UInt64 = 0
        for index in 0..<4 { position |= UInt32(input[offset + 4 + index]) << (8 * index) }
        for index in 0..<8 { value |= UInt64(input[offset + 8 + index]) << (8 * index) }
        offset += 16
        switch op % 8 {
        case 0, 1, 4, 5:  // IN, OUT, and their string forms with up to 64 elements
            let size = [1, 2, 4, 4][Int(shape & 3)]
            let elements = op % 8 >= 4 ? Int(shape >> 2) % 64 + 1 : 1
            let port = selector < portBases.count ? portBases[selector] &+ UInt16(position & 0xF) : UInt16(truncatingIfNeeded: position)
            portBuffer.beginRun()
            guard let data = PortIOData(buffer: portBuffer, size: size, count: elements) else { continue }
            for index in 0..<elements { data[index] = UInt32(truncatingIfNeeded: value >> (index % 8 * 8)) }
            let io = PortIO(port: IOPort(port), size: UInt8(size), count: UInt32(elements), data: data)
            _ = harness.machine.devices.handle(op % 2 == 0 ? .portIn(io) : .portOut(io), context: context)
        case 2, 3:  // MMIO read or write of 1, 2, 4 or 8 bytes
            let width = UInt8(1 << (shape & 3))
            let address = selector < mmioBases.count ? mmioBases[selector] &+ UInt64(position & 0xFFFF) : UInt64(position) | 0xF000_0000
            let access = MMIOAccess(address: GuestPhysicalAddress(address), width: width, value: value)
            _ = harness.machine.devices.handle(op % 8 == 2 ? .mmioRead(access) : .mmioWrite(access), context: context)
        case 6:  // a store to guest RAM (a DMA descriptor, a ring) anywhere in it
            try? memory.write(value, at: GuestPhysicalAddress(UInt64(position) % (Harness.memorySize - 8)))
        default:  // what a guest's reset does to the devices
            if shape == 0xFF { harness.machine.devices.resetDevices() }
        }
    }
    return 0
}
