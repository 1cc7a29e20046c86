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

// MARK: Snapshot

extension IOAPICDevice: SnapshotDevice {
    /// IOREGSEL, the ID, the 24 redirection entries with their remote IRR bits, and which
    /// input lines are asserted (QEMU's `vmstate_ioapic`: `ioregsel`, `id`, `irr`, `ioredtbl`).
    public func saveState(to encoder: inout StateEncoder) {
        let saved = model.withLock { $0 }
        encoder.write(saved.registerSelect)
        encoder.write(saved.id)
        encoder.write(saved.assertedLines)
        encoder.write(UInt8(saved.table.count))
        for entry in saved.table { encoder.write(entry) }
    }

    /// Rebuilds the model through its register interface (HVModel keeps its fields read-only
    /// outside the module) on a power-on I/O APIC, dropping the deliveries that replay makes:
    /// the local APICs' restored state already holds what the saved I/O APIC sent. Then hands
    /// the table to the backend as a guest's write would (KVM's MSI routes for EOI exits).
    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let registerSelect = try decoder.read(UInt8.self, "ioapic ioregsel")
        let id = try decoder.read(UInt8.self, "ioapic id", below: 0x10)
        let assertedLines = try decoder.read(UInt32.self, "ioapic asserted lines")
        guard assertedLines >> IOAPIC.lineCount == 0 else {
            throw StateDecodingError(field: "ioapic asserted lines", problem: "0x\(String(assertedLines, radix: 16)) names lines past \(IOAPIC.lineCount - 1)")
        }
        let count = try decoder.read(UInt8.self, "ioapic entry count", below: UInt8(IOAPIC.lineCount + 1))
        guard count == IOAPIC.lineCount else {
            throw StateDecodingError(field: "ioapic entry count", problem: "\(count) entries; this I/O APIC has \(IOAPIC.lineCount)")
        }
        var table: [UInt64] = []
        for line in 0..<IOAPIC.lineCount { table.append(try decoder.read(UInt64.self, "ioapic entry \(line)")) }

        var model = IOAPIC(id: 0, version: 0x20)
        let remoteIRR: UInt64 = 1 << 14, levelUnmasked: UInt32 = 1 << 15
        for (line, raw) in table.enumerated() {
            let low = UInt8(0x10 + 2 * line)
            // Remote IRR is read-only: a level-triggered, unmasked entry whose line rises sets it.
            if raw & remoteIRR != 0 {
                _ = model.writeRegister(low, value: levelUnmasked | UInt32(raw & 0xFF))
                _ = model.setIRQ(line, asserted: true)
                _ = model.setIRQ(line, asserted: false)
            }
            _ = model.writeRegister(low + 1, value: UInt32(truncatingIfNeeded: raw >> 32))
            _ = model.writeRegister(low, value: UInt32(truncatingIfNeeded: raw))
        }
        for line in 0..<IOAPIC.lineCount where assertedLines & (1 << UInt32(line)) != 0 {
            _ = model.setIRQ(line, asserted: true)
        }
        _ = model.writeRegister(0x00, value: UInt32(id) << 24)
        _ = model.write(offset: IOAPIC.registerSelectOffset, value: UInt32(registerSelect))
        // Replay reaches every state a guest can leave; one it cannot (remote IRR on an edge
        // entry, an unmasked asserted level line without it) is not an I/O APIC's.
        guard model.table == table, model.assertedLines == assertedLines else {
            let line = (0..<IOAPIC.lineCount).first { model.table[$0] != table[$0] }
            throw StateDecodingError(field: line.map { "ioapic entry \($0)" } ?? "ioapic asserted lines",
                                     problem: "is not a state the I/O APIC can be in")
        }
        let (routes, generation) = self.model.withLock { current in
            current = model
            return ((0..<IOAPIC.lineCount).map { MSIMessage(current.entry($0).message) }, tableGeneration.add(1, ordering: .relaxed).newValue)
        }
        publish(routes, generation: generation)
    }
}
