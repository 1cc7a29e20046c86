// A KVM VM: its file descriptor, memory slots and vCPUs.
// Documentation/virt/kvm/api.rst, 4.2 KVM_CREATE_VM, 4.35 KVM_SET_USER_MEMORY_REGION.
#if os(Linux)
import CKVM
import HVCore
import Glibc
import Synchronization

/// Owns a VM file descriptor. vCPUs keep their VM alive.
public final class KVMVirtualMachine: VirtualMachine {
    public typealias CPU = KVMVCPU

    let fd: Int32
    let backend: KVMBackend
    public let configuration: VirtualMachineConfiguration
    /// The CPUID table every vCPU starts from (KVM_GET_SUPPORTED_CPUID), APIC ids patched per vCPU.
    let cpuid: [CPUIDEntry]
    /// The MSRs KVM lists for saving (KVM_GET_MSR_INDEX_LIST).
    let savedMSRs: [UInt32]
    /// Those of `savedMSRs` that KVM takes back: what a vCPU's saved state holds. Probed once,
    /// by the first `saveState` (at `Machine.start`, before any guest code runs), so VMs that
    /// never save state do not pay for it.
    private let restorableMSRList = Mutex<[UInt32]?>(nil)
    /// The regions `map` gave KVM, by slot, so the dirty log can register them again with
    /// KVM_MEM_LOG_DIRTY_PAGES.
    let mappedRegions = Mutex<[Int: MemoryRegion]>([:])

    func restorableMSRs(probingWith vcpu: KVMVCPU) throws(HVError) -> [UInt32] {
        if let list = restorableMSRList.withLock({ $0 }) { return list }
        let probed = try vcpu.restorableMSRs(of: savedMSRs)
        return restorableMSRList.withLock { list in
            if list == nil { list = probed }
            return list ?? probed
        }
    }

    /// Where KVM may place the three pages it needs for real mode on Intel (KVM_SET_TSS_ADDR)
    /// and the identity-map page: just below the 4 GiB BIOS area, inside the MMIO hole, as QEMU does.
    static let tssAddress: UInt = 0xFFFB_D000
    static let identityMapAddress: UInt64 = 0xFFFB_C000

    /// Every stored property is set before the first call that can fail after KVM_CREATE_VM, so
    /// from then on a failure leaves a fully initialised object whose `deinit` closes the VM
    /// descriptor: exactly once (a close here too would close whatever another thread opened
    /// under the same number in between).
    init(backend: KVMBackend, configuration: VirtualMachineConfiguration) throws(HVError) {
        self.backend = backend
        self.configuration = configuration
        var modelled = try Self.modelCPUID(
            Self.withTSCDeadline(try backend.supportedCPUID(),
                                 when: configuration.interruptController != .none && backend.check(.tscDeadline) != 0),
            model: configuration.cpuModel)
        if configuration.cpuModel?.exposesBackend == false {
            modelled.removeAll { $0.function >= 0x4000_0000 && $0.function < 0x4000_0100 }
        }
        if configuration.cpuModel?.hyperV == true {
            try Self.checkHyperV(backend: backend, configuration: configuration)
            modelled = Self.withHyperV(modelled, hyperV: try backend.supportedHyperVCPUID())
        }
        cpuid = modelled
        savedMSRs = try backend.msrIndexList()
        fd = try KVMSyscall.ioctl(backend.system.fd, HV_KVM_CREATE_VM, value: 0, "KVM_CREATE_VM")
        if backend.check(.setTSSAddress) != 0 {
            var identity = Self.identityMapAddress
            try KVMSyscall.ioctl(fd, HV_KVM_SET_IDENTITY_MAP_ADDR, &identity, "KVM_SET_IDENTITY_MAP_ADDR")
            try KVMSyscall.ioctl(fd, HV_KVM_SET_TSS_ADDR, value: Self.tssAddress, "KVM_SET_TSS_ADDR")
        }
        try Self.createInterruptControllers(fd: fd, mode: configuration.interruptController, backend: backend)
        routing.withLock { $0.pcWiring = configuration.interruptController == .kernel }
        if configuration.effectivePIT == .kernel { try Self.createPIT(fd: fd, backend: backend) }
        if configuration.trapUnknownMSRs {
            // api.rst 7.21 KVM_CAP_X86_USER_SPACE_MSR: send unknown and invalid accesses to us.
            var cap = kvm_enable_cap()
            cap.cap = UInt32(KVM_CAP_X86_USER_SPACE_MSR)
            cap.args.0 = UInt64(KVM_MSR_EXIT_REASON_UNKNOWN | KVM_MSR_EXIT_REASON_INVAL | KVM_MSR_EXIT_REASON_FILTER)
            try KVMSyscall.ioctl(fd, HV_KVM_ENABLE_CAP, &cap, "KVM_ENABLE_CAP(KVM_CAP_X86_USER_SPACE_MSR)")
        }
    }

    deinit { KVMSyscall.close(fd) }

    /// The number of I/O APIC pins HV gives a VM (the 82093AA has 24).
    public static let ioapicPins: UInt64 = 24

    /// Creates the in-kernel interrupt controllers `mode` asks for. Must run before any vCPU
    /// exists (api.rst 4.24 KVM_CREATE_IRQCHIP, 7.18 KVM_CAP_SPLIT_IRQCHIP).
    static func createInterruptControllers(fd: Int32, mode: InterruptControllerMode, backend: KVMBackend) throws(HVError) {
        switch mode {
        case .none:
            return
        case .kernel:
            guard try backend.checkReportingErrors(.irqchip) != 0 else {
                throw .unsupported(knob: "interruptController = kernel", backend: "kvm", reason: "this kernel lacks KVM_CAP_IRQCHIP")
            }
            try KVMSyscall.ioctl(fd, HV_KVM_CREATE_IRQCHIP, value: 0, "KVM_CREATE_IRQCHIP")
            try setRouting(fd: fd, pcRouting())
        case .split:
            guard try backend.checkReportingErrors(.splitIRQChip) != 0 else {
                throw .unsupported(knob: "interruptController = split", backend: "kvm", reason: "this kernel lacks KVM_CAP_SPLIT_IRQCHIP")
            }
            var cap = kvm_enable_cap()
            cap.cap = UInt32(KVM_CAP_SPLIT_IRQCHIP)
            cap.args.0 = ioapicPins
            try KVMSyscall.ioctl(fd, HV_KVM_ENABLE_CAP, &cap, "KVM_ENABLE_CAP(KVM_CAP_SPLIT_IRQCHIP)")
        }
        // 32-bit x2APIC ids and no broadcast quirk, so x2APIC guests see what hardware does
        // (api.rst 7.19 KVM_CAP_X2APIC_API).
        if backend.check(.x2apicAPI) != 0 {
            var cap = kvm_enable_cap()
            cap.cap = UInt32(KVM_CAP_X2APIC_API)
            cap.args.0 = UInt64(KVM_X2APIC_API_USE_32BIT_IDS | KVM_X2APIC_API_DISABLE_BROADCAST_QUIRK)
            try KVMSyscall.ioctl(fd, HV_KVM_ENABLE_CAP, &cap, "KVM_ENABLE_CAP(KVM_CAP_X2APIC_API)")
        }
    }

    /// Creates KVM's 8254 with the PC speaker port 0x61, whose bit 0 gates channel 2 and whose bit 5
    /// shows its output: what Linux's PIT calibration of the TSC polls (api.rst 4.59 KVM_CREATE_PIT2;
    /// without KVM_PIT_SPEAKER_DUMMY the kernel emulates port 0x61 too). Must follow
    /// KVM_CREATE_IRQCHIP: the PIT raises IRQ 0 on the in-kernel PIC and I/O APIC.
    static func createPIT(fd: Int32, backend: KVMBackend) throws(HVError) {
        guard try backend.checkReportingErrors(.pit2) != 0 else {
            throw .unsupported(knob: "pit = kernel", backend: "kvm", reason: "this kernel lacks KVM_CAP_PIT2")
        }
        var config = kvm_pit_config()
        config.flags = 0
        try KVMSyscall.ioctl(fd, HV_KVM_CREATE_PIT2, &config, "KVM_CREATE_PIT2")
    }

    /// Drives interrupt line `gsi` of the in-kernel PIC/I/O APIC. The corresponding ioctl is
    /// `KVM_IRQ_LINE`.
    public func setInterruptLine(_ gsi: UInt32, high: Bool) throws(HVError) {
        guard configuration.interruptController == .kernel else {
            throw .unsupported(knob: "interrupt lines", backend: "kvm",
                               reason: "KVM_IRQ_LINE needs interruptController = kernel (split mode routes lines through HV's I/O APIC)")
        }
        var level = kvm_irq_level()
        level.irq = gsi
        level.level = high ? 1 : 0
        try KVMSyscall.ioctl(fd, HV_KVM_IRQ_LINE, &level, "KVM_IRQ_LINE")
    }

    /// KVM_IOEVENTFD (api.rst 4.59): a guest write of `length` bytes to MMIO `address`
    /// (matching `value` when given) signals `eventFD` inside the kernel and the vCPU goes on.
    public func addWriteNotifier(address: UInt64, length: Int, value: UInt64?, eventFD: Int32) throws(HVError) {
        try ioeventfd(address: address, port: false, length: length, value: value, eventFD: eventFD, deassign: false)
    }

    public func removeWriteNotifier(address: UInt64, length: Int, value: UInt64?, eventFD: Int32) throws(HVError) {
        try ioeventfd(address: address, port: false, length: length, value: value, eventFD: eventFD, deassign: true)
    }

    /// KVM_IOEVENTFD with KVM_IOEVENTFD_FLAG_PIO: the same for an `OUT` to `port`.
    public func addPortWriteNotifier(port: UInt16, length: Int, value: UInt64?, eventFD: Int32) throws(HVError) {
        try ioeventfd(address: UInt64(port), port: true, length: length, value: value, eventFD: eventFD, deassign: false)
    }

    public func removePortWriteNotifier(port: UInt16, length: Int, value: UInt64?, eventFD: Int32) throws(HVError) {
        try ioeventfd(address: UInt64(port), port: true, length: length, value: value, eventFD: eventFD, deassign: true)
    }

    /// KVM_IOEVENTFD (api.rst 4.59); a deassign must match the assignment's address, space,
    /// length, eventfd and datamatch.
    private func ioeventfd(address: UInt64, port: Bool, length: Int, value: UInt64?, eventFD: Int32, deassign: Bool) throws(HVError) {
        var notifier = kvm_ioeventfd()
        notifier.addr = address
        notifier.len = UInt32(length)
        notifier.fd = eventFD
        if let value {
            notifier.datamatch = value
            notifier.flags = UInt32(1 << kvm_ioeventfd_flag_nr_datamatch)
        }
        if port { notifier.flags |= UInt32(1 << kvm_ioeventfd_flag_nr_pio) }
        if deassign { notifier.flags |= UInt32(1 << kvm_ioeventfd_flag_nr_deassign) }
        try KVMSyscall.ioctl(fd, HV_KVM_IOEVENTFD, &notifier, "KVM_IOEVENTFD")
    }

    /// The VM's GSI routing, which KVM_SET_GSI_ROUTING takes whole: the interrupt controllers'
    /// part (the PC wiring of `pcRouting`, or the split I/O APIC's MSI routes) and the MSI
    /// routes of device notifiers (irqfds), on GSIs from `firstNotifierGSI` up.
    private struct Routing {
        var controllers: [MSIRoute] = []
        var pcWiring = false
        var notifiers: [UInt32: NotifierRoute] = [:]

        /// The lowest GSI no notifier uses, from `firstNotifierGSI` up (freed ones are reused).
        func freeNotifierGSI() -> UInt32? {
            (KVMVirtualMachine.firstNotifierGSI..<KVMVirtualMachine.routeLimit).first { notifiers[$0] == nil }
        }
    }
    private struct MSIRoute { var gsi: UInt32, address: UInt64, data: UInt32 }
    /// Where an irqfd's GSI leads: an MSI, or a Hyper-V synthetic interrupt source of one
    /// virtual processor (KVM_IRQ_ROUTING_HV_SINT, api.rst 4.52).
    private enum NotifierRoute {
        case msi(MSIRoute)
        case syntheticInterrupt(gsi: UInt32, vpIndex: UInt32, sint: UInt32)
    }
    private let routing = Mutex(Routing())
    /// Above the I/O APIC's pins, which a split irqchip reads its routes for.
    static let firstNotifierGSI: UInt32 = 32
    /// KVM_MAX_IRQ_ROUTES.
    static let routeLimit: UInt32 = 4096

    /// Replaces the interrupt controllers' GSI routing with one MSI route per entry (api.rst 4.52
    /// KVM_SET_GSI_ROUTING), keeping the device notifiers' routes. With a split irqchip, KVM
    /// derives from these routes which vectors are level-triggered I/O APIC interrupts whose EOI
    /// must exit to user space.
    public func setMSIRoutes(_ routes: [(gsi: UInt32, address: UInt64, data: UInt32)]) throws(HVError) {
        try routing.withLock { (routing) throws(HVError) in
            routing.controllers = routes.map { MSIRoute(gsi: $0.gsi, address: $0.address, data: $0.data) }
            try apply(routing)
        }
    }

    private func apply(_ routing: Routing) throws(HVError) {
        func entry(_ route: MSIRoute) -> kvm_irq_routing_entry {
            var entry = kvm_irq_routing_entry()
            entry.gsi = route.gsi
            entry.type = UInt32(KVM_IRQ_ROUTING_MSI)
            entry.u.msi.address_lo = UInt32(truncatingIfNeeded: route.address)
            entry.u.msi.address_hi = UInt32(truncatingIfNeeded: route.address >> 32)
            entry.u.msi.data = route.data
            return entry
        }
        func entry(_ route: NotifierRoute) -> kvm_irq_routing_entry {
            switch route {
            case .msi(let msi):
                return entry(msi)
            case .syntheticInterrupt(let gsi, let vpIndex, let sint):
                var entry = kvm_irq_routing_entry()
                entry.gsi = gsi
                entry.type = UInt32(KVM_IRQ_ROUTING_HV_SINT)
                entry.u.hv_sint.vcpu = vpIndex
                entry.u.hv_sint.sint = sint
                return entry
            }
        }
        let base = routing.pcWiring ? Self.pcRouting() : routing.controllers.map(entry)
        try Self.setRouting(fd: fd, base + routing.notifiers.sorted { $0.key < $1.key }.map { entry($0.value) })
    }

    /// Routes a new GSI to `route` and attaches `eventFD` to it (KVM_IRQFD), with `resampleFD`
    /// as its resampler when given; undoes both on failure. Returns the GSI.
    private func addNotifier(_ route: (UInt32) -> NotifierRoute, eventFD: Int32, resampleFD: Int32?, knob: String) throws(HVError) -> UInt32 {
        try routing.withLock { (routing) throws(HVError) -> UInt32 in
            guard let gsi = routing.freeNotifierGSI() else {
                throw .unsupported(knob: knob, backend: "kvm", reason: "all \(Self.routeLimit) GSI routes are in use")
            }
            routing.notifiers[gsi] = route(gsi)
            do throws(HVError) { try apply(routing) } catch {
                routing.notifiers[gsi] = nil
                throw error
            }
            var irqfd = kvm_irqfd()
            irqfd.fd = UInt32(bitPattern: eventFD)
            irqfd.gsi = gsi
            if let resampleFD {
                irqfd.flags = UInt32(KVM_IRQFD_FLAG_RESAMPLE)
                irqfd.resamplefd = UInt32(bitPattern: resampleFD)
            }
            do throws(HVError) { try KVMSyscall.ioctl(fd, HV_KVM_IRQFD, &irqfd, "KVM_IRQFD") } catch {
                routing.notifiers[gsi] = nil
                try? apply(routing)
                throw error
            }
            return gsi
        }
    }

    /// KVM_IRQFD (api.rst 4.75) on a GSI of its own, routed to the message: a write to `eventFD`
    /// injects the MSI inside the kernel.
    public func addMSINotifier(eventFD: Int32, address: UInt64, data: UInt32) throws(HVError) -> UInt32 {
        guard configuration.interruptController != .none else {
            throw .unsupported(knob: "MSI notifiers", backend: "kvm", reason: "irqfd MSIs need in-kernel LAPICs (interruptController kernel or split)")
        }
        return try addNotifier({ .msi(MSIRoute(gsi: $0, address: address, data: data)) }, eventFD: eventFD, resampleFD: nil, knob: "MSI notifiers")
    }

    public func updateMSINotifier(_ id: UInt32, address: UInt64, data: UInt32) throws(HVError) {
        try routing.withLock { (routing) throws(HVError) in
            guard case .msi? = routing.notifiers[id] else {
                throw .configuration(ConfigurationError(field: "MSI notifier", value: "\(id)", expected: "an id addMSINotifier returned"))
            }
            routing.notifiers[id] = .msi(MSIRoute(gsi: id, address: address, data: data))
            try apply(routing)
        }
    }

    /// KVM_IRQFD on a GSI routed to synthetic interrupt source `sint` of Hyper-V virtual
    /// processor `vpIndex` (KVM_IRQ_ROUTING_HV_SINT): a write to `eventFD` raises the SINT in the
    /// kernel's SynIC; `ackFD`, a resampler, is signalled when the guest acknowledges it (EOI or
    /// a write to the EOM MSR, TLFS 11.8.6), which is when a busy message slot may have been freed.
    public func addSyntheticInterruptNotifier(vpIndex: UInt32, sint: UInt8, eventFD: Int32, ackFD: Int32?) throws(HVError) -> UInt32 {
        guard configuration.cpuModel?.hyperV == true else {
            throw .unsupported(knob: "synthetic interrupt notifiers", backend: "kvm", reason: "the VM's CPU model has no Hyper-V enlightenments (cpu hv-passthrough)")
        }
        guard Int(vpIndex) < configuration.cpuCount, sint < 16 else {
            throw .configuration(ConfigurationError(field: "synthetic interrupt", value: "vp \(vpIndex) sint \(sint)",
                                                    expected: "vp 0..<\(configuration.cpuCount), sint 0..<16"))
        }
        return try addNotifier({ .syntheticInterrupt(gsi: $0, vpIndex: vpIndex, sint: UInt32(sint)) },
                               eventFD: eventFD, resampleFD: ackFD, knob: "synthetic interrupt notifiers")
    }

    /// Detaches `eventFD` from notifier GSI `id` (KVM_IRQFD with KVM_IRQFD_FLAG_DEASSIGN) and
    /// frees its route, whatever the route's kind.
    public func removeNotifier(_ id: UInt32, eventFD: Int32) throws(HVError) {
        try routing.withLock { (routing) throws(HVError) in
            guard routing.notifiers[id] != nil else {
                throw .configuration(ConfigurationError(field: "notifier", value: "\(id)", expected: "an id a notifier call returned"))
            }
            var irqfd = kvm_irqfd()
            irqfd.fd = UInt32(bitPattern: eventFD)
            irqfd.gsi = id
            irqfd.flags = UInt32(KVM_IRQFD_FLAG_DEASSIGN)
            try KVMSyscall.ioctl(fd, HV_KVM_IRQFD, &irqfd, "KVM_IRQFD(deassign)")
            routing.notifiers[id] = nil
            try apply(routing)
        }
    }

    /// Lets the guest's HvSignalEvent on `connection` signal `eventFD` inside the kernel
    /// (KVM_HYPERV_EVENTFD, api.rst 4.119), or with nil stops it (the call then exits to user
    /// space as a hypercall).
    public func setHyperVEventNotifier(connection: UInt32, eventFD: Int32?) throws(HVError) {
        guard try backend.checkReportingErrors(.hyperVEventFD) != 0 else {
            throw .unsupported(knob: "Hyper-V event notifiers", backend: "kvm", reason: "this kernel lacks KVM_CAP_HYPERV_EVENTFD")
        }
        var notifier = kvm_hyperv_eventfd()
        notifier.conn_id = connection
        notifier.fd = eventFD ?? -1
        notifier.flags = eventFD == nil ? UInt32(KVM_HYPERV_EVENTFD_DEASSIGN) : 0
        try KVMSyscall.ioctl(fd, HV_KVM_HYPERV_EVENTFD, &notifier, "KVM_HYPERV_EVENTFD")
    }

    /// The PC's wiring of the in-kernel interrupt controllers, as QEMU's kvm_pc_setup_irq_routing
    /// sets it: GSI 0-15 reach the 8259 pair (IRQ 2 is the cascade), GSI 1-23 the I/O APIC pin of
    /// the same number, and GSI 0 (the PIT) I/O APIC pin 2, which the MADT's interrupt source
    /// override for ISA IRQ 0 promises (ACPI 6.4, 5.2.12.5). KVM's default routing would send
    /// the PIT to pin 0, and Linux's timer check would find it "not connected to IO-APIC".
    static func pcRouting() -> [kvm_irq_routing_entry] {
        func route(_ gsi: UInt32, chip: Int32, pin: UInt32) -> kvm_irq_routing_entry {
            var entry = kvm_irq_routing_entry()
            entry.gsi = gsi
            entry.type = UInt32(KVM_IRQ_ROUTING_IRQCHIP)
            entry.u.irqchip.irqchip = UInt32(chip)
            entry.u.irqchip.pin = pin
            return entry
        }
        var entries: [kvm_irq_routing_entry] = []
        for gsi: UInt32 in 0..<16 where gsi != 2 {
            entries.append(route(gsi, chip: gsi < 8 ? KVM_IRQCHIP_PIC_MASTER : KVM_IRQCHIP_PIC_SLAVE, pin: gsi % 8))
        }
        for gsi in 0..<UInt32(ioapicPins) where gsi != 2 {
            entries.append(route(gsi, chip: KVM_IRQCHIP_IOAPIC, pin: gsi == 0 ? 2 : gsi))
        }
        return entries
    }

    /// The corresponding ioctl is `KVM_SET_GSI_ROUTING`: `struct kvm_irq_routing` followed by its entries.
    static func setRouting(fd: Int32, _ entries: [kvm_irq_routing_entry]) throws(HVError) {
        let bytes = MemoryLayout<kvm_irq_routing>.size + max(entries.count, 1) * MemoryLayout<kvm_irq_routing_entry>.stride
        let raw = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 16)
        defer { raw.deallocate() }
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
        raw.assumingMemoryBound(to: kvm_irq_routing.self).pointee.nr = UInt32(entries.count)
        let table = (raw + MemoryLayout<kvm_irq_routing>.size).assumingMemoryBound(to: kvm_irq_routing_entry.self)
        for (index, entry) in entries.enumerated() { table[index] = entry }
        try KVMSyscall.ioctl(fd, HV_KVM_SET_GSI_ROUTING, pointer: raw, "KVM_SET_GSI_ROUTING")
    }

    /// Delivers a message-signalled interrupt to the in-kernel LAPICs (SDM Vol. 3A, 11.11).
    /// The corresponding ioctl is `KVM_SIGNAL_MSI`.
    public func signalMSI(address: UInt64, data: UInt32) throws(HVError) {
        guard configuration.interruptController != .none else {
            throw .unsupported(knob: "MSI", backend: "kvm", reason: "KVM_SIGNAL_MSI needs in-kernel LAPICs (interruptController kernel or split)")
        }
        var message = kvm_msi()
        message.address_lo = UInt32(truncatingIfNeeded: address)
        message.address_hi = UInt32(truncatingIfNeeded: address >> 32)
        message.data = data
        try KVMSyscall.ioctl(fd, HV_KVM_SIGNAL_MSI, &message, "KVM_SIGNAL_MSI")
    }

    /// The corresponding ioctl is `KVM_SET_USER_MEMORY_REGION`.
    public func map(_ region: MemoryRegion, slot: Int) throws(HVError) {
        guard slot >= 0, backend.capabilities.maxMemorySlots == 0 || slot < backend.capabilities.maxMemorySlots else {
            throw .configuration(ConfigurationError(field: "slot", value: "\(slot)",
                                                    expected: "0..<\(backend.capabilities.maxMemorySlots) (KVM_CAP_NR_MEMSLOTS)"))
        }
        try register(region, slot: slot, flags: 0)
        mappedRegions.withLock { $0[slot] = region }
    }

    /// `KVM_SET_USER_MEMORY_REGION` for `region` in `slot` with `flags` (KVM_MEM_LOG_DIRTY_PAGES).
    func register(_ region: MemoryRegion, slot: Int, flags: UInt32) throws(HVError) {
        var descriptor = kvm_userspace_memory_region(
            slot: UInt32(slot), flags: flags, guest_phys_addr: region.guestAddress.rawValue,
            memory_size: region.size, userspace_addr: UInt64(UInt(bitPattern: region.hostAddress)))
        do {
            try KVMSyscall.ioctl(fd, HV_KVM_SET_USER_MEMORY_REGION, &descriptor, "KVM_SET_USER_MEMORY_REGION")
        } catch {
            // Name the slot and the range: "Invalid argument" alone does not say which mapping.
            let guest = region.guestAddress.rawValue
            throw error.naming("KVM_SET_USER_MEMORY_REGION(slot \(slot), guest 0x\(String(guest, radix: 16))"
                               + "-0x\(String(guest &+ region.size &- 1, radix: 16)), \(region.size) bytes)")
        }
    }

    /// The corresponding ioctls are `KVM_CREATE_VCPU` and `KVM_SET_CPUID2`.
    public func createVCPU(id: Int) throws(HVError) -> KVMVCPU {
        guard id >= 0, id < backend.capabilities.maxVCPUs else {
            throw .configuration(ConfigurationError(field: "vcpuID", value: "\(id)", expected: "0..<\(backend.capabilities.maxVCPUs)"))
        }
        // The kick's handler is process-wide: installed with the first vCPU, during set-up, so
        // that a confined vCPU thread (VirtualMachineConfiguration.confinement) need not call
        // sigaction.
        try KVMKickSignal.install()
        let vcpuFD = try KVMSyscall.ioctl(fd, HV_KVM_CREATE_VCPU, value: UInt(id), "KVM_CREATE_VCPU")
        let vcpu: KVMVCPU
        do {
            let run = try KVMSyscall.mapShared(vcpuFD, size: backend.vcpuMapSize, "mmap(kvm_run)")
            vcpu = KVMVCPU(id: id, fd: vcpuFD, run: run, mapSize: backend.vcpuMapSize, vm: self)
        } catch {
            KVMSyscall.close(vcpuFD)
            throw error
        }
        let table = KVMCPUIDBuffer(entries: Self.cpuid(cpuid, forVCPU: UInt32(id)))
        try KVMSyscall.ioctl(vcpuFD, HV_KVM_SET_CPUID2, pointer: table.raw, "KVM_SET_CPUID2")
        if configuration.cpuModel?.hyperV == true {
            // api.rst 7.12 KVM_CAP_HYPERV_SYNIC2: this vCPU gets a SynIC (and its synthetic timers);
            // SYNIC2 leaves the message and event pages to the guest instead of zeroing them.
            var cap = kvm_enable_cap()
            cap.cap = UInt32(KVM_CAP_HYPERV_SYNIC2)
            try KVMSyscall.ioctl(vcpuFD, HV_KVM_ENABLE_CAP, &cap, "KVM_ENABLE_CAP(KVM_CAP_HYPERV_SYNIC2)")
        }
        return vcpu
    }

    /// What Hyper-V enlightenments need of this kernel and this configuration.
    static func checkHyperV(backend: KVMBackend, configuration: VirtualMachineConfiguration) throws(HVError) {
        for capability in [KVMCapability.hyperVSynIC2, .hyperVCPUID, .irqfd, .irqfdResample] where try backend.checkReportingErrors(capability) == 0 {
            throw .unsupported(knob: "cpu hv-passthrough", backend: "kvm",
                               reason: "this kernel's KVM does not offer what Hyper-V enlightenments need: it lacks \(capability.name)")
        }
        guard configuration.interruptController == .kernel else {
            // The SynIC sits in KVM's local APICs, and the acknowledgement of a SynIC message
            // (an irqfd resampler) needs KVM's whole irqchip (api.rst 4.75 KVM_IRQFD).
            throw .configuration(ConfigurationError(field: "interruptController", value: "\(configuration.interruptController)",
                                                    expected: "kernel with cpu hv-passthrough (the SynIC lives in KVM's interrupt controllers)"))
        }
    }

    /// `entries` as a guest with Hyper-V enlightenments sees them (TLFS 2.4 "Hypervisor
    /// discovery"): Hyper-V's leaves from `hyperV` (KVM_GET_SUPPORTED_HV_CPUID) at 0x40000000
    /// with Hyper-V's vendor signature "Microsoft Hv",
    /// and the backend's own leaves (KVM's signature and paravirtual features) moved up by
    /// 0x100, where Linux looks for them next (QEMU does the same). The synthetic debugger's
    /// leaves (0x40000080 up) and its MSRs' feature bit are left out: they need a debugger
    /// behind them, which HV does not provide (as QEMU without hv-syndbg).
    static func withHyperV(_ entries: [CPUIDEntry], hyperV: [CPUIDEntry]) -> [CPUIDEntry] {
        // A table without KVM's leaves (kvm=off) stays without them.
        var result: [CPUIDEntry] = entries.map { entry in
            guard entry.function >= 0x4000_0000, entry.function < 0x4000_0100 else { return entry }
            var moved = entry
            moved.function += 0x100
            if entry.function == 0x4000_0000 {
                moved.eax = entry.eax >= 0x4000_0000 && entry.eax < 0x4000_0100 ? entry.eax + 0x100 : 0x4000_0101
            }
            return moved
        }
        for var entry in hyperV where entry.function >= 0x4000_0000 && entry.function < 0x4000_0080 {
            switch entry.function {
            case 0x4000_0000:
                // KVM says "Linux KVM Hv"; guests that check the vendor (Linux's
                // ms_hyperv_platform) want "Microsoft Hv", which QEMU gives by default (hv-vendor-id).
                (entry.ebx, entry.ecx, entry.edx) = (0x7263_694D, 0x666F_736F, 0x7648_2074)
            case 0x4000_0003:
                // EDX bit 11: HV_FEATURE_DEBUG_MSRS_AVAILABLE.
                entry.edx &= ~UInt32(1 << 11)
            default:
                break
            }
            result.append(entry)
        }
        return result
    }

    /// `supported` narrowed to `model` (`CPUModel.apply`); a feature left out because the host
    /// lacks it (enforce=off) is logged as a warning, as QEMU prints one.
    static func modelCPUID(_ supported: [CPUIDEntry], model: CPUModel?) throws(HVError) -> [CPUIDEntry] {
        guard let model else { return supported }
        do throws(ConfigurationError) {
            let (entries, dropped) = try model.apply(to: supported)
            for feature in dropped {
                LogCategory.vcpu.logger.warning("cpu: this host's KVM cannot give the guest \(feature.name); left out (enforce=off)")
            }
            return entries
        } catch {
            throw .configuration(error)
        }
    }

    /// `entries` with CPUID.1:ECX[24] (TSC-deadline timer mode) set when `enabled`. KVM emulates
    /// the mode in its in-kernel LAPIC and says so with KVM_CAP_TSC_DEADLINE_TIMER, but leaves the
    /// bit out of KVM_GET_SUPPORTED_CPUID for the VMM to set (api.rst 4.46), as QEMU does. With it
    /// Linux need not calibrate the LAPIC timer against the PIT (SDM Vol. 3A, 11.5.4.1).
    static func withTSCDeadline(_ entries: [CPUIDEntry], when enabled: Bool) -> [CPUIDEntry] {
        guard enabled else { return entries }
        return entries.map { entry in
            var entry = entry
            if entry.function == 0x1 { entry.ecx |= 1 << 24 }
            return entry
        }
    }

    /// `entries` with the initial APIC id set to `apicID` (CPUID.1:EBX[31:24]; CPUID.0BH/1FH:EDX,
    /// SDM Vol. 2A CPUID) so each vCPU sees its own id, and the hypervisor-present bit set.
    static func cpuid(_ entries: [CPUIDEntry], forVCPU apicID: UInt32) -> [CPUIDEntry] {
        entries.map { entry in
            var entry = entry
            switch entry.function {
            case 0x1:
                entry.ebx = (entry.ebx & 0x00FF_FFFF) | (apicID << 24)
                // CPUID.1:ECX[31], reserved for hypervisors' use: "running under a hypervisor".
                // KVM_GET_SUPPORTED_CPUID leaves it clear; without it Linux never looks at
                // leaf 0x40000000, so it finds neither KVM nor kvm-clock (api.rst 4.46, cpuid.rst).
                entry.ecx |= 1 << 31
            case 0xB, 0x1F: entry.edx = apicID
            default: break
            }
            return entry
        }
    }
}
#endif
