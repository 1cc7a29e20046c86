// QEMU's `pci-testdev` (hw/misc/pci-testdev.c), the PCI function kvm-unit-tests measures and
// checks MMIO and port-I/O write exits with (lib/pci-testdev.c; x86/vmexit.c's `pci-mem` and
// `pci-io` timings, which compare a write that returns to the VMM with one that KVM absorbs
// through an ioeventfd, api.rst 4.59 KVM_IOEVENTFD). A test fixture, not PC hardware:
// `hv run --test-devices` attaches it on the PC platform, a production VM does not carry it.
import CKVM
import Glibc
import Synchronization

/// PCI function 1b36:0005 (Red Hat's test device ID, class 0xFF "other"), no interrupt pin, with
/// a 4 KiB memory BAR 0 and a 256-byte I/O BAR 1. Each BAR holds three write tests that the guest
/// selects by writing the test's number (0-2) to byte 0 of that BAR:
///
/// | number | name (memory / I/O)                         | writes at the test's offset                  |
/// |--------|---------------------------------------------|----------------------------------------------|
/// | 0      | `mmio-no-eventfd` / `portio-no-eventfd`     | exit to the VMM, which counts those of 0xFA  |
/// | 1      | `mmio-wildcard-eventfd` / `portio-...`      | any byte: absorbed by KVM (an eventfd)       |
/// | 2      | `mmio-datamatch-eventfd` / `portio-...`     | 0xFA absorbed by KVM; others exit, uncounted |
///
/// While a test is selected, reads of the BAR return its header byte by byte: test index (0-5),
/// access width (1), 2 bytes padding, the offset to write (LE32: 2048 + index in memory, 128 +
/// index in I/O), the data byte (0xFA, or 0xCE for the wildcard test), 3 bytes padding, the count
/// of counted writes (LE32), the NUL-terminated name. A write KVM absorbs is not counted, so a
/// guest reads a count of 0 there; where the backend has no eventfd path every test counts in
/// the VMM. Writing a number above 2 deselects. Accesses of any width act byte by byte, as
/// QEMU's 1-byte access limit makes them.
public final class PCITestDevice: PCIDevice, PCIBARDecoder, ResettableDevice, Sendable {
    public static let vendorID: UInt16 = 0x1B36
    public static let deviceID: UInt16 = 0x0005
    public static let memoryBARSize: UInt64 = 0x1000
    public static let ioBARSize: UInt64 = 0x100
    /// The data byte of the no-eventfd and datamatch tests (the only byte they count), and the
    /// wildcard test's (any byte counts there).
    public static let matchData: UInt8 = 0xFA
    public static let wildcardData: UInt8 = 0xCE

    /// One of the six tests.
    public struct Test: Sendable, Equatable {
        public enum Kind: Int, Sendable, CaseIterable {
            case noEventFD, wildcardEventFD, datamatchEventFD
        }
        public let space: PCIAddressSpace
        public let kind: Kind

        /// 0-2 in memory, 3-5 in I/O (QEMU's order).
        public var index: Int { (space == .memory ? 0 : Kind.allCases.count) + kind.rawValue }
        public var bar: Int { space == .memory ? 0 : 1 }
        public var name: String {
            let kind = switch self.kind {
            case .noEventFD: "no-eventfd"
            case .wildcardEventFD: "wildcard-eventfd"
            case .datamatchEventFD: "datamatch-eventfd"
            }
            return (space == .memory ? "mmio-" : "portio-") + kind
        }
        /// Where in the BAR the counted writes go.
        public var offset: UInt32 { (space == .memory ? 2048 : 128) + UInt32(index) }
        public var data: UInt8 { kind == .wildcardEventFD ? PCITestDevice.wildcardData : PCITestDevice.matchData }
        /// Whether KVM should absorb the writes (an eventfd) and with which data match.
        var absorbed: Bool { kind != .noEventFD }
        var dataMatch: UInt64? { kind == .wildcardEventFD ? nil : UInt64(data) }

        /// The header the guest reads, without the count (bytes 12-15, filled at each read).
        var header: [UInt8] {
            [UInt8(index), 1, 0, 0] + (0..<4).map { UInt8(truncatingIfNeeded: offset >> (8 * $0)) }
                + [data, 0, 0, 0] + [0, 0, 0, 0] + Array(name.utf8) + [0]
        }
    }

    /// Adds and removes the backend's write notifiers (KVM_IOEVENTFD) for the selected test:
    /// `(space, address or port, length, data match, eventfd)`.
    public struct WriteNotifiers: Sendable {
        public let add: @Sendable (PCIAddressSpace, UInt64, Int, UInt64?, Int32) throws(HVError) -> Void
        public let remove: @Sendable (PCIAddressSpace, UInt64, Int, UInt64?, Int32) throws(HVError) -> Void

        public init(add: @escaping @Sendable (PCIAddressSpace, UInt64, Int, UInt64?, Int32) throws(HVError) -> Void,
                    remove: @escaping @Sendable (PCIAddressSpace, UInt64, Int, UInt64?, Int32) throws(HVError) -> Void) {
            self.add = add
            self.remove = remove
        }
    }

    private struct Registered {
        let test: Test
        let address: UInt64
    }

    private struct State {
        var space: PCIConfigurationSpace
        var current: Test?
        var header: [UInt8] = []
        var count: UInt32 = 0
        /// The notifier in place for `current`, where the backend took it.
        var registered: Registered?
    }

    public let name: String
    private let state: Mutex<State>
    private let powerOn: Mutex<PCIConfigurationSpace>
    private let notifiers: WriteNotifiers?
    /// One eventfd serves every test (one test is selected at a time); -1 without notifiers.
    private let eventFD: Int32

    /// A function with its BARs unassigned; `notifiers` nil keeps every write in the VMM.
    public init(notifiers: WriteNotifiers?, name: String = "pci-testdev") {
        var space = PCIConfigurationSpace(vendorID: Self.vendorID, deviceID: Self.deviceID, classCode: 0xFF_0000,
                                          subsystemVendorID: 0x1AF4, subsystemID: 0x1100)
        // Both sizes are valid BARs (a power of two, within each kind's limits).
        try! space.setBAR(0, size: Self.memoryBARSize, kind: .memory32(prefetchable: false))
        try! space.setBAR(1, size: Self.ioBARSize, kind: .io)
        self.name = name
        self.state = Mutex(State(space: space))
        self.powerOn = Mutex(space)
        self.eventFD = notifiers == nil ? -1 : eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        self.notifiers = eventFD >= 0 ? notifiers : nil
    }

    deinit {
        if eventFD >= 0 { close(eventFD) }
    }

    /// Puts BAR 0 at `memory` and BAR 1 at port `io` with both decodings on, as firmware leaves
    /// the function; a platform reset returns them there.
    public func assign(memory: UInt64, io: UInt64) {
        state.withLock { state in
            state.space.write(offset: PCIConfigurationOffset.bar0, size: 4, value: UInt32(truncatingIfNeeded: memory))
            state.space.write(offset: PCIConfigurationOffset.bar0 + 4, size: 4, value: UInt32(truncatingIfNeeded: io))
            state.space.write(offset: PCIConfigurationOffset.command, size: 2, value: 0x0003)  // I/O and memory space
            let space = state.space
            powerOn.withLock { $0 = space }
        }
    }

    /// The selected test, if any.
    public var selectedTest: Test? { state.withLock { $0.current } }
    /// The selected test's count of writes that reached the VMM.
    public var count: UInt32 { state.withLock { $0.count } }
    /// Whether the selected test's writes go to an eventfd the backend signals.
    public var absorbsWrites: Bool { state.withLock { $0.registered != nil } }

    public func reset() {
        state.withLock { state in
            deselect(&state)
            state.space = powerOn.withLock { $0 }
        }
    }

    // MARK: Configuration space

    public func configurationRead(offset: UInt8, size: Int) -> UInt32 {
        state.withLock { $0.space.read(offset: offset, size: size) }
    }

    /// A write that moves the selected test's BAR, or turns its decoding off, moves its
    /// notifier with it (QEMU's memory API keeps an eventfd on its region).
    public func configurationWrite(offset: UInt8, size: Int, value: UInt32) {
        state.withLock { state in
            state.space.write(offset: offset, size: size, value: value)
            guard let test = state.current, test.absorbed, testAddress(test, state.space) != state.registered?.address else { return }
            unregister(&state)
            register(test, &state)
        }
    }

    // MARK: BARs

    public func decode(_ address: UInt64, width: Int, space: PCIAddressSpace) -> (bar: Int, offset: UInt64)? {
        let bar = space == .memory ? 0 : 1
        let size = space == .memory ? Self.memoryBARSize : Self.ioBARSize
        return state.withLock { $0.space.offset(of: address, width: width, inBAR: bar, size: size, space: space) }.map { (bar, $0) }
    }

    public func barRead(_ bar: Int, offset: UInt64, width: Int) -> UInt64 {
        state.withLock { state in
            // A read drains the eventfd, as QEMU's does (nothing waits on it).
            if state.registered != nil { drain() }
            var value: UInt64 = 0
            for index in 0..<min(width, 8) {
                value |= UInt64(byte(at: offset + UInt64(index), state)) << UInt64(8 * index)
            }
            return value
        }
    }

    public func barWrite(_ bar: Int, offset: UInt64, width: Int, value: UInt64) {
        let space: PCIAddressSpace = bar == 0 ? .memory : .io
        state.withLock { state in
            for index in 0..<min(width, 8) {
                write(UInt8(truncatingIfNeeded: value >> UInt64(8 * index)), at: offset + UInt64(index), space: space, &state)
            }
        }
    }

    /// Byte `offset` of the selected test's header; 0 without a test, past the header, and at
    /// its last byte (QEMU answers a read that reaches the end of its buffer with 0).
    private func byte(at offset: UInt64, _ state: State) -> UInt8 {
        guard state.current != nil, offset + 1 < UInt64(state.header.count) else { return 0 }
        if (12..<16).contains(offset) { return UInt8(truncatingIfNeeded: state.count >> (8 * UInt32(offset - 12))) }
        return state.header[Int(offset)]
    }

    private func write(_ byte: UInt8, at offset: UInt64, space: PCIAddressSpace, _ state: inout State) {
        if offset == 0 {
            deselect(&state)
            guard let kind = Test.Kind(rawValue: Int(byte)) else { return }
            let test = Test(space: space, kind: kind)
            state.current = test
            state.header = test.header
            state.count = 0
            if test.absorbed { register(test, &state) }
            return
        }
        guard let test = state.current, offset == UInt64(test.offset) else { return }
        if let match = test.dataMatch, UInt64(byte) != match { return }
        state.count &+= 1
    }

    private func deselect(_ state: inout State) {
        unregister(&state)
        state.current = nil
        state.header = []
        state.count = 0
    }

    /// Where `test`'s counted writes land now (guest-physical address or port), nil while its
    /// BAR does not decode.
    private func testAddress(_ test: Test, _ space: PCIConfigurationSpace) -> UInt64? {
        let size = test.space == .memory ? Self.memoryBARSize : Self.ioBARSize
        let base = space.barAddress(test.bar)
        guard space.offset(of: base + UInt64(test.offset), width: 1, inBAR: test.bar, size: size, space: test.space) != nil else { return nil }
        return base + UInt64(test.offset)
    }

    /// Hands `test`'s writes to the backend where it can take them; they stay in the VMM where not.
    private func register(_ test: Test, _ state: inout State) {
        guard let notifiers, let address = testAddress(test, state.space) else { return }
        drain()
        do {
            try notifiers.add(test.space, address, 1, test.dataMatch, eventFD)
            state.registered = Registered(test: test, address: address)
        } catch {
            LogCategory.devices.logger.debug("pci-testdev: \(test.name) counts in the VMM: \(error)")
        }
    }

    private func unregister(_ state: inout State) {
        guard let registered = state.registered, let notifiers else { return }
        try? notifiers.remove(registered.test.space, registered.address, 1, registered.test.dataMatch, eventFD)
        state.registered = nil
    }

    private func drain() {
        var counter: UInt64 = 0
        _ = read(eventFD, &counter, 8)
    }
}

extension Machine {
    /// Attaches QEMU's `pci-testdev` (`PCITestDevice`) to the platform's PCI bus at 00:`slot`.0
    /// (nil: the first free slot), its BARs assigned from the memory and I/O windows, its
    /// eventfd tests on the backend's write notifiers (KVM_IOEVENTFD) where it has them.
    @discardableResult
    public func attachPCITestDevice(platform: PCPlatform, slot: Int? = nil) throws(HVError) -> PCITestDevice {
        let vm = self.vm
        let device = PCITestDevice(notifiers: PCITestDevice.WriteNotifiers(
            add: { (space, address, length, value, descriptor) throws(HVError) in
                if space == .memory {
                    try vm.addWriteNotifier(address: address, length: length, value: value, eventFD: descriptor)
                } else {
                    try vm.addPortWriteNotifier(port: UInt16(truncatingIfNeeded: address), length: length, value: value, eventFD: descriptor)
                }
            },
            remove: { (space, address, length, value, descriptor) throws(HVError) in
                if space == .memory {
                    try vm.removeWriteNotifier(address: address, length: length, value: value, eventFD: descriptor)
                } else {
                    try vm.removePortWriteNotifier(port: UInt16(truncatingIfNeeded: address), length: length, value: value, eventFD: descriptor)
                }
            }))
        let chosen = slot ?? (1..<PCIHostBridge.slotCount).first { platform.bus.device(slot: $0) == nil }
        guard let chosen else {
            throw .configuration(ConfigurationError(field: "PCI slot", value: "pci-testdev", expected: "a free slot 1-31"))
        }
        do { try platform.bus.attach(device, slot: chosen) } catch {
            throw .configuration(ConfigurationError(field: "PCI slot", value: "\(chosen)", expected: "a free slot 1-31 (\(error))"))
        }
        let memory: UInt64, io: UInt64
        do {
            memory = try platform.window.allocate(size: PCITestDevice.memoryBARSize)
            io = try platform.ioWindow.allocate(size: PCITestDevice.ioBARSize)
        } catch {
            platform.bus.detach(slot: chosen)
            throw .configuration(ConfigurationError(field: "PCI slot", value: "\(chosen)", expected: "room in the PCI windows for pci-testdev's BARs (\(error))"))
        }
        device.assign(memory: memory, io: io)
        platform.window.add(device)
        platform.ioWindow.add(device)
        return device
    }
}
