// One API for devices to raise interrupts, whatever the irqchip mode (Documentation/Interrupts.md).
import Logging
import Synchronization

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
    /// The line's other sources, when it is shared (`Machine.interruptLine` lines always are).
    private let wiring: SharedInterruptLines?
    private let source: Int

    /// A line of its own: `set` drives the controller directly.
    public init(controller: any InterruptController, gsi: UInt32) {
        self.controller = controller
        self.gsi = gsi
        self.wiring = nil
        self.source = 0
    }

    /// Source `source` of a line shared through `wiring`.
    init(controller: any InterruptController, gsi: UInt32, wiring: SharedInterruptLines, source: Int) {
        self.controller = controller
        self.gsi = gsi
        self.wiring = wiring
        self.source = source
    }

    /// Drives this source's output; the line follows the OR of every source on it. A failure
    /// (a configuration without interrupt controllers) is logged, not thrown, because devices
    /// raise interrupts from inside register writes.
    public func set(_ high: Bool) {
        do throws(HVError) {
            if let wiring {
                try wiring.set(gsi: gsi, source: source, high: high) { (level) throws(HVError) in
                    try controller.setLevel(gsi, high: level)
                }
            } else {
                try controller.setLevel(gsi, high: high)
            }
        } catch {
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

/// The wired-OR of the sources sharing each GSI, as an open-collector ISA/PCI interrupt line
/// behaves: the line is high while any source drives it high, so one device lowering its output
/// cannot drop another's pending request (a guest may configure the TPM onto COM1's IRQ).
/// Each source's level is kept; the controller hears only changes of the OR, in order (the
/// change is computed and delivered under one lock).
final class SharedInterruptLines: Sendable {
    /// GSIs that can be shared and sources per GSI (one bit each).
    static let gsiCount = 256
    static let sourcesPerLine = 64

    private struct State {
        var levels = [UInt64](repeating: 0, count: SharedInterruptLines.gsiCount)
        var sources = [Int](repeating: 0, count: SharedInterruptLines.gsiCount)
    }

    private let state = Mutex(State())

    /// A new source on `gsi`.
    func newSource(gsi: UInt32) throws(HVError) -> Int {
        guard gsi < Self.gsiCount else {
            throw .configuration(ConfigurationError(field: "gsi", value: "\(gsi)", expected: "0..<\(Self.gsiCount)"))
        }
        let source = state.withLock { state -> Int in
            defer { state.sources[Int(gsi)] += 1 }
            return state.sources[Int(gsi)]
        }
        guard source < Self.sourcesPerLine else {
            throw .configuration(ConfigurationError(field: "gsi", value: "\(gsi)",
                                                    expected: "a line with fewer than \(Self.sourcesPerLine) devices on it"))
        }
        return source
    }

    /// Every source low again, without driving anything: after the controllers themselves were
    /// put back to power-on (an in-place reset).
    func forgetLevels() {
        state.withLock { state in
            for index in state.levels.indices { state.levels[index] = 0 }
        }
    }

    /// Sets `source`'s level on `gsi` and calls `drive` with the line's new level when the OR
    /// changed.
    func set(gsi: UInt32, source: Int, high: Bool, drive: (Bool) throws(HVError) -> Void) throws(HVError) {
        try state.withLock { (state) throws(HVError) in
            let index = Int(gsi)
            let before = state.levels[index]
            let bit: UInt64 = 1 << UInt64(source)
            state.levels[index] = high ? before | bit : before & ~bit
            let wasHigh = before != 0, isHigh = state.levels[index] != 0
            if wasHigh != isHigh { try drive(isHigh) }
        }
    }
}
