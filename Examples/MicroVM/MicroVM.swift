// MicroVM: a Firecracker-style microVM built from the SDK's parts: a Linux kernel, a root disk
// and a network, all virtio, and nothing a microVM does not need.
//
//   swift run MicroVM --kernel bzImage --disk root.img [--initrd FILE] [--tap NAME --host-ip 10.0.2.1/24]
//                     [--cmdline "..."] [--mem 256] [--cpus 1] [--transport pci|mmio]
//
// What it builds (Documentation/Virtio.md explains each part):
// - a VM with KVM's interrupt controllers, COM1 as the console and the PC platform (ACPI tables
//   with the PCI root bridge; Linux finds the virtio devices through them);
// - virtio-blk on DISK (vda), virtio-net on a TAP interface it creates (eth0, with QEMU's MAC;
//   needs CAP_NET_ADMIN), virtio-rng; as virtio-pci functions with MSI-X (--transport pci, the
//   default) or virtio-mmio windows with level-triggered lines (--transport mmio);
// - each device's queue doorbells through KVM_IOEVENTFD, served by the device's own thread;
// - seccomp confinement from the moment the guest starts;
// - with --api-socket PATH, the VM's management API (HVManagement's VMAPIServer), as hv run
//   serves it: `hv ctl PATH info|pause|resume|stats|...` talks to it (Documentation/Management.md).
// It stops when the guest powers off (ACPI S5) or after --timeout seconds.
import ArgumentParser
import HVCommandLine
import Foundation
import HVCore
import HVKVM
import HVManagement

@main
struct MicroVM: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "MicroVM", abstract: "A microVM: Linux with a virtio disk, network and entropy source.")

    /// Errors as one line ("NAME: error: ..."), as `hv` prints them, not usage and help around them.
    static func main() { mainWithOneLineErrors() }

    @Option(help: "A Linux bzImage.") var kernel: String
    @Option(help: "A raw disk image (the guest's vda).") var disk: String
    @Option(help: "An initramfs.") var initrd: String?
    @Option(help: "A TAP interface to create for the guest's eth0 (needs CAP_NET_ADMIN).") var tap: String?
    @Option(help: "The host side's address on the TAP, e.g. 10.0.2.1/24.") var hostIP: String?
    @Option(help: "The kernel command line.") var cmdline = "console=ttyS0"
    @Option(parsing: .unconditional, help: "Guest RAM in MiB.") var mem: UInt64 = 256
    @Option(parsing: .unconditional, help: "vCPUs.") var cpus = 1
    @Option(help: "pci (virtio-pci with MSI-X) or mmio (virtio-mmio).") var transport = "pci"
    @Option(parsing: .unconditional, help: "Stop after this many seconds.") var timeout: Double = 300
    @Option(help: "Serve the VM's management API on this Unix socket (hv ctl PATH ...).") var apiSocket: String?

    func validate() throws {
        guard ["pci", "mmio"].contains(transport) else { throw ValidationError("--transport is pci or mmio, not \(transport)") }
        guard hostIP == nil || tap != nil else { throw ValidationError("--host-ip needs --tap") }
        // Checked here, before `mem << 20` could drop high bits of a huge value.
        guard (1...(1 << 20)).contains(mem) else { throw ValidationError("--mem is MiB of guest RAM, 1 to 1048576 (1 TiB), not \(mem)") }
        guard cpus >= 1 else { throw ValidationError("--cpus is at least 1, not \(cpus)") }
        guard timeout > 0, timeout <= 1e9 else { throw ValidationError("--timeout is a positive number of seconds, at most 1e9, not \(timeout)") }
    }

    func run() throws {
        do {
            try boot()
        } catch {
            FileHandle.standardError.write(Data("MicroVM: \(error)\n".utf8))
            throw ExitCode(1)
        }
    }

    func boot() throws {
        // The devices first: a missing image or a TAP without privileges is an error before the VM exists.
        let block = try VirtioBlock(path: disk)
        var network: VirtioNetwork?
        if let tap {
            let interface = try TAPDevice(name: tap)
            if let hostIP {
                guard let address = IPv4Interface(parsing: hostIP) else { throw ValidationError("--host-ip: \(hostIP) is not ADDRESS/LENGTH") }
                try interface.bringUp(address: address)
            }
            network = VirtioNetwork(endpoint: interface)
        }
        let devices: [any VirtioDevice] = [block] + (network.map { [$0] } ?? []) + [VirtioEntropy()]

        var configuration = VirtualMachineConfiguration(memorySize: mem << 20, cpuCount: cpus, timeLimit: timeout, interruptController: .kernel)
        configuration.resetPolicy = .stop
        // Once set up, the process may make only the calls running a VM needs; a device model a
        // guest subverted cannot exec, fork or open a network socket (Documentation/Confinement.md).
        configuration.confinement = Confinement(mode: .kill)
        try configuration.validate()
        let slots = transport == "mmio" ? try devices.indices.map { try VirtioMMIOSlot($0) } : []
        let image = try GuestImage.linux([UInt8](try Data(contentsOf: URL(fileURLWithPath: kernel))), commandLine: cmdline,
                                         initrd: try initrd.map { [UInt8](try Data(contentsOf: URL(fileURLWithPath: $0))) },
                                         memorySize: configuration.memorySize)

        let machine = try Machine(configuration: configuration, backend: KVMBackend())
        let uart = UART16550(output: .standardOutput)
        try machine.devices.register(uart, port: .com1, count: UART16550.portCount)
        try machine.connect(uart, irq: 4)
        let platform = try machine.attachPCPlatform(virtio: slots)
        for (index, device) in devices.enumerated() {
            if transport == "pci" {
                try attachPCI(device, machine: machine, platform: platform, slot: index + 1)
            } else {
                try attachMMIO(device, machine: machine, slot: slots[index])
            }
            print("MicroVM: \(device.name) on \(transport == "pci" ? "PCI 00:\(String(format: "%02x", index + 1)).0" : "virtio-mmio slot \(index)")")
        }
        fflush(nil)
        try machine.load(image)
        // The management API listens before the guest starts (and before confinement forbids
        // new sockets); stop() finishes the requests under way and removes the socket.
        let api = apiSocket.map { VMAPIServer(machine: machine, path: $0) }
        try api?.start()
        defer { api?.stop() }
        let result = try machine.run()
        uart.flush()
        print("MicroVM: \(result.reason) after \(result.exits) exits in \(String(format: "%.3f", result.seconds)) s")
    }

    // `attachVirtioPCI` and `attachVirtio` are generic over the device type; these open the existential.
    private func attachPCI<D: VirtioDevice>(_ device: D, machine: Machine<KVMBackend>, platform: PCPlatform, slot: Int) throws {
        try machine.attachVirtioPCI(device, platform: platform, slot: slot)
    }

    private func attachMMIO<D: VirtioDevice>(_ device: D, machine: Machine<KVMBackend>, slot: VirtioMMIOSlot) throws {
        try machine.attachVirtio(device, slot: slot)
    }
}
