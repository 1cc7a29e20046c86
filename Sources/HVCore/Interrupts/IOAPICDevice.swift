// HV's user-space I/O APIC for the split irqchip: HVModel's `IOAPIC` register model behind the
// device bus, delivering through MSIs to the kernel's local APICs (as QEMU's ioapic.c does with
// kernel-irqchip=split).
import Logging
import Synchronization

/// An I/O APIC at 0xFEC00000 whose deliveries become message-signalled interrupts.
public final class IOAPICDevice: MMIODevice, ResettableDevice, Sendable {
    public static let baseAddress = GuestPhysicalAddress(IOAPIC.defaultBaseAddress)
    public static let windowSize: UInt64 = 0x1000
    public static let pinCount = UInt32(IOAPIC.lineCount)

    public let name = "ioapic"
    private let model = Mutex(IOAPIC(id: 0, version: 0x20))
    /// Sends one MSI (address, data) to the local APICs.
    private let deliver: @Sendable (UInt64, UInt32) throws(HVError) -> Void
    /// Told the redirection table after every change (KVM: MSI routes for EOI exits).
    private let tableChanged: @Sendable ([MSIMessage]) -> Void
    /// Numbers each table change in the order the model made it (taken under the model lock) ...
    private let tableGeneration = Atomic<UInt64>(0)
    /// ... and the newest number published: an older table that loses the race to the backend
    /// is dropped, so the routes KVM holds are always the model's latest.
    private let publishedGeneration = Mutex<UInt64>(0)

    init(deliver: @escaping @Sendable (UInt64, UInt32) throws(HVError) -> Void,
         tableChanged: @escaping @Sendable ([MSIMessage]) -> Void = { _ in })
    {
        self.deliver = deliver
        self.tableChanged = tableChanged
    }

    /// The redirection table, as MSI messages (one per pin).
    public var routes: [MSIMessage] {
        model.withLock { model in (0..<IOAPIC.lineCount).map { MSIMessage(model.entry($0).message) } }
    }

    public func mmioRead(offset: UInt64, width: Int) -> UInt64 {
        // 82093AA datasheet 3.0: registers are 32 bits wide at 16-byte aligned offsets.
        let value = model.withLock { $0.read(offset: UInt32(truncatingIfNeeded: offset & ~3)) }
        return UInt64(value >> (8 * UInt32(offset & 3)))
    }

    public func mmioWrite(offset: UInt64, width: Int, value: UInt64) -> ExitAction {
        let (deliveries, changed, routes, generation) = model.withLock { model in
            let before = model.table
            let deliveries = model.write(offset: UInt32(truncatingIfNeeded: offset), value: UInt32(truncatingIfNeeded: value))
            let changed = model.table != before
            let routes = changed ? (0..<IOAPIC.lineCount).map { MSIMessage(model.entry($0).message) } : []
            let generation = changed ? tableGeneration.add(1, ordering: .relaxed).newValue : 0
            return (deliveries, changed, routes, generation)
        }
        if changed { publish(routes, generation: generation) }
        send(deliveries)
        return .resume
    }

    /// Hands `routes` to the backend unless a newer table got there first.
    private func publish(_ routes: [MSIMessage], generation: UInt64) {
        publishedGeneration.withLock { newest in
            guard generation > newest else { return }
            newest = generation
            tableChanged(routes)
        }
    }

    /// Every redirection entry masked, as after the 82093AA's RESET (datasheet 3.2.4); the
    /// backend's MSI routes follow.
    public func reset() {
        let (routes, generation) = model.withLock { model in
            model = IOAPIC(id: 0, version: 0x20)
            return ((0..<IOAPIC.lineCount).map { MSIMessage(model.entry($0).message) }, tableGeneration.add(1, ordering: .relaxed).newValue)
        }
        publish(routes, generation: generation)
    }

    /// Sets input `pin` (a GSI below 24) to `high`.
    func setLevel(pin: Int, high: Bool) throws(HVError) {
        if let delivery = model.withLock({ $0.setIRQ(pin, asserted: high) }) { try send(delivery) }
    }

    /// The guest ended level-triggered interrupt `vector` (KVM_EXIT_IOAPIC_EOI).
    func endOfInterrupt(vector: UInt8) {
        send(model.withLock { $0.endOfInterrupt(vector: vector) })
    }

    /// `endOfInterrupt(vector:)` for tests that play the guest's part.
    public func endOfInterruptForTesting(vector: UInt8) { endOfInterrupt(vector: vector) }

    private func send(_ deliveries: IOAPICDeliveries) {
        for delivery in deliveries {
            do { try send(delivery) } catch {
                LogCategory.devices.logger.warning("I/O APIC line \(delivery.line) could not be delivered: \(error)")
            }
        }
    }

    private func send(_ delivery: IOAPICDelivery) throws(HVError) {
        let message = MSIMessage(delivery.message)
        try deliver(message.address, message.data)
    }
}
