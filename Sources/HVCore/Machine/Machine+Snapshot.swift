// Saving a paused machine's state and putting it back in another process
// (Documentation/Snapshots.md). Guest memory is not part of `SavedMachine`: it is large, and
// the file format writes it apart (HVSnapshot), so that a restore can map it.
import Foundation

/// Everything of a machine but its RAM, as the bytes each part encoded: the backend's VM-wide
/// state (KVM: in-kernel irqchip, PIT, clock), every vCPU, every device on the bus by its key,
/// and the power-on state a reset returns to.
public struct SavedMachine: Sendable, Equatable {
    public struct Part: Sendable, Equatable {
        public var key: String
        public var state: [UInt8]
        public init(key: String, state: [UInt8]) {
            self.key = key
            self.state = state
        }
    }

    public var cpuCount: Int
    public var memorySize: UInt64
    /// `InterruptControllerMode` as text ("kernel").
    public var interruptController: String
    public var vm: [UInt8]
    public var vcpus: [[UInt8]]
    public var devices: [Part]
    /// The backend state at `start` (restart policy or sleep), encoded; nil without one.
    public var powerOnVM: [UInt8]?
    public var powerOnVCPUs: [[UInt8]]?

    public init(cpuCount: Int, memorySize: UInt64, interruptController: String, vm: [UInt8], vcpus: [[UInt8]],
                devices: [Part], powerOnVM: [UInt8]?, powerOnVCPUs: [[UInt8]]?) {
        self.cpuCount = cpuCount
        self.memorySize = memorySize
        self.interruptController = interruptController
        self.vm = vm
        self.vcpus = vcpus
        self.devices = devices
        self.powerOnVM = powerOnVM
        self.powerOnVCPUs = powerOnVCPUs
    }
}

extension Machine {
    /// Every device object: those on the bus, the PCI functions behind a host bridge, and the
    /// virtio devices behind their transports.
    var deviceObjects: [AnyObject] {
        var result: [AnyObject] = []
        for (_, device) in devices.uniqueDevices {
            result.append(device)
            if let bridge = device as? PCIHostBridge { result += bridge.attachedFunctions.map { $0 as AnyObject } }
        }
        result += result.compactMap { ($0 as? VirtioTransport)?.virtioDevice }
        return result
    }

    /// The devices with work of their own that a pause holds.
    var activityHoldingDevices: [any ActivityHoldingDevice] { deviceObjects.compactMap { $0 as? ActivityHoldingDevice } }

    /// Lets go of what the devices hold exclusively (disk images): a migration's source, paused
    /// for its last copy, so that the destination can take hold (`HandOverDevice`).
    public func releaseBackings() {
        for device in deviceObjects { (device as? HandOverDevice)?.releaseBacking() }
    }

    /// Takes hold of what the devices hold exclusively: a migration's destination before its
    /// guest runs, or a source whose migration failed. Fails naming what another process holds.
    public func claimBackings() throws(HVError) {
        for device in deviceObjects { try (device as? HandOverDevice)?.claimBacking() }
    }

    /// The state of a paused machine (`pause()` first; its vCPUs have finished the instruction
    /// behind their last exit). A device that cannot save its state fails the whole call,
    /// naming it. Guest memory is read separately, through `memory`, while still paused.
    public func saveMachine() throws(HVError) -> SavedMachine {
        lock.lock()
        let current = _state
        let powerOn = powerOnState
        lock.unlock()
        guard current == .paused else { throw .invalidState(operation: "save the state of", state: current) }
        if hyperV != nil {
            throw .snapshot(subject: "Hyper-V SynIC", problem: "the synthetic interrupt controller's state is not saved yet; run without hv-passthrough to take snapshots")
        }
        var parts: [SavedMachine.Part] = []
        for (key, device) in devices.uniqueDevices {
            guard let device = device as? SnapshotDevice else {
                throw .snapshot(subject: key, problem: "HV cannot save this device's state yet (Documentation/Snapshots.md lists the devices it can)")
            }
            if let refusal = device.snapshotRefusal { throw .snapshot(subject: key, problem: refusal) }
            var encoder = StateEncoder()
            try device.saveState(to: &encoder)
            parts.append(SavedMachine.Part(key: key, state: encoder.bytes))
        }
        let vmState = try vm.snapshotState()
        var vcpuStates: [[UInt8]] = []
        for vcpu in vcpus { vcpuStates.append(try vcpu.encodeState(try vcpu.saveState())) }
        var powerOnVCPUs: [[UInt8]]?
        if let powerOn {
            var encoded: [[UInt8]] = []
            for (index, state) in powerOn.vcpus.enumerated() { encoded.append(try vcpus[index].encodeState(state)) }
            powerOnVCPUs = encoded
        }
        return SavedMachine(cpuCount: vcpus.count, memorySize: configuration.memorySize,
                            interruptController: "\(configuration.interruptController)", vm: vmState, vcpus: vcpuStates,
                            devices: parts, powerOnVM: try powerOn.map { (state) throws(HVError) in try vm.encodeState(state.vm) },
                            powerOnVCPUs: powerOnVCPUs)
    }

    /// Puts `saved` back into a machine built from the same configuration and devices, before
    /// `start` (guest memory already holds the snapshot's RAM: `init(configuration:backend:memory:)`).
    /// `resetImage` is what a later guest reset writes again (the image the VM was first
    /// loaded with); without it a reset keeps RAM as it is. Every difference between the
    /// snapshot and this machine is an error naming it, found before anything is changed.
    public func restoreMachine(_ saved: SavedMachine, resetImage: GuestImage? = nil) throws(HVError) {
        guard state == .created else { throw .invalidState(operation: "restore a snapshot into", state: state) }
        guard saved.cpuCount == vcpus.count else {
            throw .snapshot(subject: "vCPUs", problem: "the snapshot has \(saved.cpuCount) vCPU(s); this VM has \(vcpus.count) (give --cpus \(saved.cpuCount))")
        }
        guard saved.memorySize == configuration.memorySize else {
            throw .snapshot(subject: "memory", problem: "the snapshot has \(saved.memorySize) bytes of RAM; this VM has \(configuration.memorySize)")
        }
        guard saved.interruptController == "\(configuration.interruptController)" else {
            throw .snapshot(subject: "interrupt controllers", problem: "the snapshot's are \(saved.interruptController); this VM's are \(configuration.interruptController)")
        }
        if hyperV != nil {
            throw .snapshot(subject: "Hyper-V SynIC", problem: "the synthetic interrupt controller's state is not restored yet")
        }
        // Devices: the same keys on both sides, each one able to take its state.
        let present = devices.uniqueDevices
        let savedKeys = saved.devices.map(\.key), presentKeys = present.map(\.key)
        if let missing = savedKeys.first(where: { !presentKeys.contains($0) }) {
            throw .snapshot(subject: missing, problem: "the snapshot has this device; this VM does not (the command line differs)")
        }
        if let extra = presentKeys.first(where: { !savedKeys.contains($0) }) {
            throw .snapshot(subject: extra, problem: "this VM has this device; the snapshot does not (the command line differs)")
        }
        // Decoded first, so a state this host cannot take changes nothing.
        var vcpuStates: [B.VM.CPU.SavedState] = []
        for (index, vcpu) in vcpus.enumerated() { vcpuStates.append(try vcpu.decodeState(saved.vcpus[index])) }
        var powerOn: (vm: B.VM.SavedState, vcpus: [B.VM.CPU.SavedState])?
        if let vmBytes = saved.powerOnVM, let vcpuBytes = saved.powerOnVCPUs, vcpuBytes.count == vcpus.count {
            var states: [B.VM.CPU.SavedState] = []
            for (index, vcpu) in vcpus.enumerated() { states.append(try vcpu.decodeState(vcpuBytes[index])) }
            powerOn = (try vm.decodeState(vmBytes), states)
        }
        try vm.restoreSnapshotState(saved.vm)
        for (index, vcpu) in vcpus.enumerated() { try vcpu.restoreState(vcpuStates[index]) }
        for part in saved.devices {
            guard let device = present.first(where: { $0.key == part.key })?.device as? SnapshotDevice else {
                throw .snapshot(subject: part.key, problem: "HV cannot restore this device's state")
            }
            var decoder = StateDecoder(part.state)
            do throws(StateDecodingError) {
                try device.restoreState(from: &decoder)
                try decoder.finish("state")
            } catch {
                throw .snapshot(subject: part.key, problem: error.description)
            }
        }
        lock.lock()
        powerOnState = powerOn
        loadedChunks = resetImage?.chunks ?? []
        lock.unlock()
    }
}
