// One API for devices to raise interrupts, whatever the irqchip mode (Documentation/Interrupts.md).
import Logging

/// Where a device's interrupt requests go: a global system interrupt (GSI) of the VM.
/// ISA IRQ n is GSI n (the I/O APIC's pin n; COM1 is IRQ 4).
public protocol InterruptController: AnyObject, Sendable {
    /// Sets line `gsi` high or low. Edge-triggered inputs fire on the low-to-high change.
    func setLevel(_ gsi: UInt32, high: Bool) throws(HVError)
    /// Delivers a message-signalled interrupt (SDM Vol. 3A, 11.11).
    func signalMSI(address: UInt64, data: UInt32) throws(HVError)
}

/// A device's connection to one interrupt line.
public struct InterruptLine: Sendable {
    public let controller: any InterruptController
    public let gsi: UInt32

    public init(controller: any InterruptController, gsi: UInt32) {
        self.controller = controller
        self.gsi = gsi
    }

    /// Drives the line; a failure (a configuration without interrupt controllers) is logged,
    /// not thrown, because devices raise interrupts from inside register writes.
    public func set(_ high: Bool) {
        do { try controller.setLevel(gsi, high: high) } catch {
            LogCategory.devices.logger.warning("interrupt line \(gsi) could not be set: \(error)")
        }
    }

    public func raise() { set(true) }
    public func lower() { set(false) }

    /// A rising edge followed by a return to low: one edge-triggered interrupt.
    public func pulse() {
        set(true)
        set(false)
    }
}

/// Routes lines to the right place for the VM's mode: the kernel's PIC/I/O APIC (`kernel`),
/// HV's user-space I/O APIC which then sends MSIs to the kernel's LAPICs (`split`).
final class InterruptRouter<VM: VirtualMachine>: InterruptController, @unchecked Sendable {
    // Sendable: the VM handle is thread-safe for these ioctls; the I/O APIC locks itself.
    let vm: VM
    let mode: InterruptControllerMode
    let ioapic: IOAPICDevice?

    init(vm: VM, mode: InterruptControllerMode, ioapic: IOAPICDevice?) {
        self.vm = vm
        self.mode = mode
        self.ioapic = ioapic
    }

    func setLevel(_ gsi: UInt32, high: Bool) throws(HVError) {
        switch mode {
        case .none:
            throw .unsupported(knob: "interrupt line \(gsi)", backend: "this VM",
                               reason: "its interruptController is none; choose kernel or split")
        case .kernel:
            try vm.setInterruptLine(gsi, high: high)
        case .split:
            guard let ioapic, gsi < IOAPICDevice.pinCount else {
                throw .configuration(ConfigurationError(field: "gsi", value: "\(gsi)", expected: "0..<\(IOAPICDevice.pinCount) (I/O APIC pins)"))
            }
            try ioapic.setLevel(pin: Int(gsi), high: high)
        }
    }

    func signalMSI(address: UInt64, data: UInt32) throws(HVError) {
        try vm.signalMSI(address: address, data: data)
    }
}
