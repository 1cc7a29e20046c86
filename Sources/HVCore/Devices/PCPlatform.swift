// The small PC that test kernels and Linux drivers probe for, attached in one call
// (Documentation/Devices.md).

extension Machine {
    /// Attaches fw_cfg (0x510), the CMOS/RTC (0x70), the i8042 (0x60/0x64, whose 0xFE command
    /// resets), System Control Port A (0x92: fast A20 and reset), the PCI host bridge on configuration mechanism #1 (0xCF8-0xCFF, with the 0xCF9
    /// reset register), the ACPI PM block (0x600, PM timer at 0x608) and the Bochs/QEMU power-off
    /// port (0x8900, "Shutdown"). With `acpiTables`, also
    /// writes RSDP/XSDT/FADT/FACS/MADT/DSDT into 0xE0000-0xFFFFF (RAM must reach 1 MiB); a VM
    /// with a TPM gets its MSFT0101 device in the DSDT when `tpm` is true, and each virtio-mmio
    /// slot in `virtio` (devices attached with `attachVirtio(_:slot:)`) a LNRO0005 device. A
    /// reset (`ResetPolicy.restart`) writes the tables again.
    ///
    /// Returns the PCI bus and its windows (memory 0xC0000000-0xCFFFFFFF and ports
    /// 0xC000-0xFFFF, inside the DSDT's PCI0 windows), where `attachVirtioPCI` and
    /// `attachPCITestDevice` put PCI functions and their BARs.
    @discardableResult
    public func attachPCPlatform(acpiTables: Bool = true, tpm: Bool = false, virtio: [VirtioMMIOSlot] = []) throws(HVError) -> PCPlatform {
        let cpus = configuration.cpuCount
        // The RTC on ISA IRQ 8 and the SCI on IRQ 9 (the FADT's SCI_INT), when there are controllers.
        let rtc = CMOSRTCDevice(ramSize: memory.size, cpuCount: cpus, interrupt: interrupts == nil ? nil : try interruptLine(8))
        let pm = ACPIPMDevice(sci: interrupts == nil ? nil : try interruptLine(9))
        rtc.onAlarm { pm.rtcAlarm() }
        pm.onWake { [weak self] in self?.wake() }
        let platform = PCPlatform(bus: PCIHostBridge(resetControl: ResetControlDevice()), window: PCIWindow(space: .memory),
                                  ioWindow: PCIWindow(space: .io), powerManagement: pm)
        do throws(DeviceBusError) {
            try devices.register(FWCfgDevice(memory: memory, ramSize: memory.size, cpuCount: cpus),
                                 port: FWCfgDevice.basePort, count: FWCfgDevice.portCount)
            try devices.register(rtc, port: CMOSRTCDevice.basePort, count: CMOSRTCDevice.portCount)
            try I8042Controller().register(on: devices)
            try devices.register(platform.bus, port: PCIHostBridge.basePort, count: PCIHostBridge.portCount)
            try devices.register(platform.window, address: GuestPhysicalAddress(platform.window.range.lowerBound),
                                 length: UInt64(platform.window.range.count))
            try devices.register(platform.ioWindow, port: IOPort(UInt16(platform.ioWindow.range.lowerBound)), count: platform.ioWindow.range.count)
            try devices.register(pm, port: ACPIPMDevice.basePort, count: ACPIPMDevice.portCount)
            try devices.register(SystemControlPortA(), port: SystemControlPortA.port, count: 1)
            try devices.register(ShutdownPortDevice(), port: ShutdownPortDevice.port, count: 1)
        } catch { throw .device(error) }
        // A kernel booted from firmware finds the PICs initialised on the BIOS's vectors (IRQ 0-7
        // on 0x08-0x0F, 8-15 on 0x70-0x77: a real-mode guest's IVT layout); HV leaves every line
        // unmasked, since no HV device raises a line before its driver enables it.
        if configuration.interruptController == .kernel {
            try vm.initializeLegacyPIC(masterBase: 0x08, slaveBase: 0x70, mask: 0)
        }
        guard acpiTables else { return platform }
        let tables: ACPITables
        do { tables = try ACPITables.pc(cpuCount: cpus, tpm: tpm, virtio: virtio) } catch { throw .configuration(error) }
        do { try tables.install(into: memory) } catch { throw .memory(error) }
        // Firmware writes its tables again at every boot; so does a reset here.
        try onReset { (machine) throws(HVError) in
            do throws(GuestMemoryError) { try tables.install(into: machine.memory) } catch { throw .memory(error) }
        }
        // Waking from S3, firmware starts the bootstrap processor in real mode at the waking
        // vector the guest wrote into the FACS (ACPI 6.4, 5.2.10 and 16.3.2); the other processors
        // wait for INIT-SIPI-SIPI, as at power-on.
        if let facs = tables.facsAddress {
            try addWakeSource { pm.wakePending }
            try onWake { (machine) throws(HVError) in
                let vector: UInt32
                do throws(GuestMemoryError) {
                    vector = try machine.memory.read(UInt32.self, at: GuestPhysicalAddress(facs + ACPITables.firmwareWakingVectorOffset))
                } catch { throw .memory(error) }
                let (registers, special) = GuestImage.realModeState(codeSegment: UInt16(truncatingIfNeeded: vector >> 4),
                                                                    instructionPointer: UInt16(vector & 0xF), dataSegment: 0)
                try machine.vcpus[0].setSpecialRegisters(special)
                try machine.vcpus[0].setRegisters(registers)
                pm.resumed()
            }
        }
        return platform
    }
}

/// The PC's PCI bus as `attachPCPlatform` built it.
public struct PCPlatform: Sendable {
    /// Configuration mechanism #1 and the functions on bus 0.
    public let bus: PCIHostBridge
    /// The 32-bit memory window the functions' memory BARs are assigned from.
    public let window: PCIWindow
    /// The I/O window (ports 0xC000-0xFFFF) the functions' I/O BARs are assigned from.
    public let ioWindow: PCIWindow
    /// The ACPI PM block: the power button (`pressPowerButton()`), sleep state.
    public let powerManagement: ACPIPMDevice
}

extension Machine {
    /// Attaches QEMU's `pc-testdev` (`PCTestDevice`: ports 0xE0-0xEB, the ISA interrupt-line ports
    /// 0x2000-0x2017, the MMIO scratch window at 0xFF000000), the test fixture kvm-unit-tests'
    /// x86 tests expect. Without interrupt controllers the interrupt-line ports do nothing.
    @discardableResult
    public func attachTestDevices() throws(HVError) -> PCTestDevice {
        var lines: [InterruptLine?] = []
        for line in 0..<PCTestDevice.irqLineCount {
            lines.append(interrupts == nil ? nil : try interruptLine(UInt32(line)))
        }
        let device = PCTestDevice(memory: memory, lines: lines)
        do { try device.register(on: devices) } catch { throw .device(error) }
        return device
    }
}
