// `hv run IMAGE`: run a flat binary in real or long mode (--multiboot, --elf, --kernel: RunLoaders.swift).
import ArgumentParser
import Foundation
import HVCore
import HVKVM
import HVManagement
import HVSnapshot
import HVTPM

struct Run: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run a flat binary, a Multiboot 1 or 2 kernel, an ELF executable or a Linux kernel (bzImage, or vmlinux by its PVH entry) as a guest.",
        discussion: """
            Give exactly one image: a flat binary as IMAGE, --multiboot KERNEL (a Multiboot 1 \
            kernel, ELF or a.out-kludge, entered in 32-bit protected mode with EAX = 0x2BADB002 and \
            EBX = the Multiboot info; its command line is KERNEL, a space, then --append; each \
            --module FILE becomes a boot module), --multiboot2 KERNEL (the same for a Multiboot2 \
            kernel: EAX = 0x36D76289, EBX = the tagged boot information with the ACPI RSDP; its \
            command line is --append alone, as GRUB 2 passes it), --elf FILE (ELF64 x86-64 starts in long mode, \
            ELF32 i386 in 32-bit protected mode with paging off) or --kernel BZIMAGE|VMLINUX (a \
            bzImage by the Linux x86 boot protocol 2.12+, 64-bit entry; an ELF kernel by its PVH \
            entry note; with --cmdline and --initrd). --mode, --entry and \
            --load-address apply to flat images only (Documentation/Loaders.md).

            A flat image is copied to --load-address and entered at --entry (default: the load \
            address) in real mode (16-bit, CS:IP set from the entry) or long mode (64-bit, \
            identity-mapped first 4 GiB, HV's GDT and page tables). COM1 (0x3F8) is a 16550 UART \
            and port 0xF4 a debug-exit port.

            Exit status: (v << 1) | 1 when the guest writes v to port 0xF4 (QEMU's \
            isa-debug-exit rule, truncated to 8 bits by the OS); 0 when it halts or powers off \
            (ACPI S5, "Shutdown" to port 0x8900); 2 when it \
            crashes (triple fault, emulation failure, unmapped MMIO) or resets with --on-reset \
            stop (by default a reset restarts the guest in place); 4 on --timeout or \
            --max-exits; 64 for a bad command line or image; 70 when the host cannot run VMs.
            """)

    @Argument(help: "The flat binary to run (omit it with --multiboot, --elf or --kernel).")
    var image: String?

    @Option(name: .long, help: ArgumentHelp("Boot this Multiboot 1 kernel instead of a flat IMAGE.", valueName: "kernel"))
    var multiboot: String?

    @Option(name: .long, help: ArgumentHelp("Boot this Multiboot2 kernel (GRUB 2's multiboot2) instead of a flat IMAGE.", valueName: "kernel"))
    var multiboot2: String?

    // `.unconditional`: a command line may start with a dash (kvm-unit-tests' `-x ...`).
    @Option(name: .long, parsing: .unconditional,
            help: ArgumentHelp("Arguments after the kernel name in the Multiboot command line (with --multiboot2: the whole command line); may start with a dash.", valueName: "args"))
    var append: String?

    @Option(name: .long, help: ArgumentHelp("A Multiboot or Multiboot2 boot module (e.g. an environment file); repeatable, loaded in order.", valueName: "file"))
    var module: [String] = []

    @Option(name: .long, help: ArgumentHelp("Run this ELF executable instead of a flat IMAGE.", valueName: "file"))
    var elf: String?

    @Option(name: .long, help: ArgumentHelp("Boot this Linux kernel instead of a flat IMAGE: a bzImage (Linux boot protocol, 64-bit entry) or an ELF vmlinux (PVH entry note).", valueName: "bzimage|vmlinux"))
    var kernel: String?

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("The Linux kernel command line; may start with a dash.", valueName: "args"))
    var cmdline: String?

    @Option(name: .long, help: ArgumentHelp("A Linux initial RAM disk.", valueName: "file"))
    var initrd: String?

    @Option(name: .long, help: "CPU mode at entry for a flat image: real or long (default long).")
    var mode: GuestModeArgument?

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Guest-physical entry point (default: the load address).", valueName: "address"))
    var entry: Address?

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Where the image is copied (default 0x7c00 in real mode, 0x100000 in long mode).", valueName: "address"))
    var loadAddress: Address?

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Guest RAM, a multiple of 4 KiB: 4096, 64K, 16M, 1G.", valueName: "size"))
    var mem: ByteSize = ByteSize(bytes: 16 << 20)

    @Option(name: .long, parsing: .unconditional, help: "Number of vCPUs. With interrupt controllers the BSP starts at the entry point and APs wait for INIT-SIPI-SIPI; without them every vCPU starts at the entry point.")
    var cpus: Int = 1

    @Option(name: .long, help: ArgumentHelp("Interrupt controllers: none, kernel (KVM's LAPIC, I/O APIC, PIC) or split (KVM's LAPIC, HV's I/O APIC). Default: kernel for a kernel image (--kernel, --multiboot, --multiboot2, --elf) or more than one vCPU, else none.", valueName: "mode"))
    var irqchip: IRQChipArgument?

    @Option(name: .long, help: ArgumentHelp("Where COM1 output goes: stdio or file:PATH.", valueName: "target"))
    var serial: SerialTarget = .stdio

    @Option(name: .long, help: ArgumentHelp("Attach a TPM 2.0 (TIS at 0xFED40000) whose state lives in this directory (Documentation/vTPM.md).", valueName: "dir"))
    var tpm: String?

    @Option(name: .long, help: ArgumentHelp("With --tpm, what HV leaves of the TPM's platform hierarchy before the guest runs, as firmware does: random-auth (SeaBIOS: a random password nobody keeps), disable (OVMF: turned off) or guest (untouched; the guest starts the TPM and can TPM2_Clear it).", valueName: "policy"))
    var tpmPlatform: TPMPlatformArgument = .randomAuth

    @Option(name: .long, help: ArgumentHelp("A virtio-blk disk on a raw image file, ro for read-only, direct to bypass the host's page cache (O_DIRECT), serial=ID for the serial the guest reads, bw=SIZE and iops=N to limit bytes and requests per second; repeatable (Linux's vda, vdb, ... in order). Found through the ACPI tables (--platform pc); needs --irqchip kernel or split (Documentation/Virtio.md).", valueName: "file[,ro][,direct][,serial=id][,bw=size][,iops=n]"),
            transform: DiskArgument.init(parsing:))
    var disk: [DiskArgument] = []

    @Option(name: .long, help: ArgumentHelp("A virtio-net device on a TAP interface hv creates (needs CAP_NET_ADMIN): tap=NAME, mac=52:54:00:12:34:56 by default, host-ip=10.0.2.1/24 to bring the host side up with that address, bw=SIZE and pps=N to limit bytes and frames per second each way (rx-bw, tx-bw, rx-pps, tx-pps for one way); repeatable (Linux's eth0, eth1, ...).", valueName: "tap=name[,mac=mac][,host-ip=addr/len][,bw=size][,pps=n]"),
            transform: NetArgument.init(parsing:))
    var net: [NetArgument] = []

    @Flag(name: .long, help: "Attach a virtio-rng entropy device fed by the host's getrandom(2) (Linux's /dev/hwrng).")
    var rng = false

    @Option(name: .long, help: ArgumentHelp("A virtio-vsock device: the guest's context ID (3 or more) and a Unix socket path. A guest connection to host port P reaches the socket PATH_P; a host program connects to PATH and writes \"CONNECT P\\n\" to reach guest port P (Firecracker's hybrid vsock).", valueName: "cid,path"),
            transform: VsockArgument.init(parsing:))
    var vsock: VsockArgument?

    @Option(name: .long, help: ArgumentHelp("A virtio-balloon device asking the guest for SIZE of its RAM (given back to the host), deflate-on-oom to let the guest take it back under pressure, stats=SECONDS for how often the guest's memory statistics are refreshed (default 2; 0: never). Free page reporting is on.", valueName: "size[,deflate-on-oom][,stats=seconds]"),
            transform: BalloonArgument.init(parsing:))
    var balloon: BalloonArgument?

    @Option(name: .long, help: ArgumentHelp("How the virtio devices reach the guest: mmio (virtio-mmio windows the DSDT declares, a level-triggered line each) or pci (modern virtio-pci functions on the PCI bus, MSI-X interrupts).", valueName: "kind"))
    var virtioTransport: VirtioTransportArgument = .mmio

    @Option(name: .long, help: ArgumentHelp("Where standard input goes: serial (COM1) or virtio (a virtio console, Linux's hvc0; its output goes to standard output too, and COM1 stays where --serial says).", valueName: "kind"))
    var console: ConsoleArgument = .serial

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Stop the guest after this many seconds.", valueName: "seconds"))
    var timeout: Double?

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Stop the guest after this many exits.", valueName: "count"))
    var maxExits: UInt64?

    @Option(name: .long, help: "What HLT does: stop (end the run) or resume.")
    var onHalt: HaltPolicyArgument = .stop

    @Option(name: .long, help: "What a guest reset (i8042 command 0xFE, port 0xCF9) does: restart the VM in place, as a PC reboots, or stop it (exit status 2).")
    var onReset: ResetPolicyArgument = .restart

    @Option(name: .long, help: ArgumentHelp("Platform devices: pc (fw_cfg, CMOS/RTC, i8042, PCI host bridge, ACPI PM timer and tables) or none (only COM1 and the debug-exit port).", valueName: "kind"))
    var platform: PlatformArgument = .pc

    @Option(name: .long, help: ArgumentHelp("The CPU the guest sees, as QEMU's -cpu: a model (host or max: all this host's KVM gives; qemu64, kvm64, Opteron_G1: QEMU's baselines) then +FEATURE/-FEATURE edits (Linux's flag names: x2apic, tsc-deadline, pcid, invpcid, umip, pku, ...), vendor=ID, hv-passthrough (the Hyper-V enlightenments this host's KVM emulates: SynIC, synthetic timers, reference TSC page; needs --irqchip kernel) and kvm=off (hide KVM's own paravirtual leaves). A +FEATURE the host cannot give is refused, unless enforce=off leaves it out (Documentation/KvmUnitTests.md).", valueName: "model[,+feature|-feature|vendor=id]..."),
            transform: { try CPUModel(parsing: $0) })
    var cpu: CPUModel?

    @Flag(name: .long, help: "Attach QEMU's pc-testdev and pci-testdev, the test fixtures kvm-unit-tests expects: a data port at 0xE0, a page-flush port at 0xE4, ISA interrupt-line ports at 0x2000-0x2017, 64 KiB of MMIO scratch memory at 0xFF000000 and, on the pc platform, PCI function 1b36:0005 with MMIO and port-I/O write tests, and with --cpu ...,hv-passthrough QEMU's hyperv-testdev at port 0x3000 (Documentation/KvmUnitTests.md). Not for production VMs.")
    var testDevices = false

    @Flag(name: .long, inversion: .prefixedNo, help: "Back guest RAM with the host's transparent huge pages where it can (2 MiB-aligned, MADV_HUGEPAGE), so KVM maps it with 2 MiB EPT/NPT entries, as QEMU does (Documentation/GettingStarted.md).")
    var hugePages = true

    @Flag(name: .long, help: "Print the exit table to standard error when the guest stops.")
    var stats = false

    @Option(name: .long, help: ArgumentHelp("Seccomp confinement once the VM is set up: kill (report a system call outside HV's allow-list and stop, exit status 159), refuse (report it and fail it with EPERM; the guest goes on) or off (Documentation/Confinement.md).", valueName: "mode"))
    var seccomp: SeccompArgument = .kill

    @Option(name: .long, help: ArgumentHelp("Started as root: run the guest as this user (a name or uid) once /dev/kvm, the disks, the TAP and the TPM state are open; the TPM's directory must be writable by it (Documentation/Confinement.md).", valueName: "user"))
    var user: String?

    @Option(name: .long, help: ArgumentHelp("Pin a vCPU's thread to host CPUs, as taskset's lists: 0=2 or 1=0-1,3; repeatable (Documentation/Management.md).", valueName: "vcpu=cpus"),
            transform: VCPUPinning.init(parsing:))
    var pinVcpu: [VCPUPinning] = []

    @Option(name: .long, help: ArgumentHelp("Join this cgroup v2 directory first thing, before guest memory exists (hv serve's per-VM limits).", valueName: "dir"))
    var cgroup: String?

    @Option(name: .long, help: ArgumentHelp("Serve the VM's HTTP/JSON API (state, pause, resume, reset, stop, exit statistics, registers, devices) on this Unix socket, created 0600; `hv ctl PATH` is its client (Documentation/Management.md).", valueName: "path"))
    var apiSocket: String?

    @Flag(name: .long, help: "Check the command line, the image and the devices' files, then exit 0 without running the guest (hv serve checks a VM file this way before it creates the VM).")
    var check = false

    @Option(name: .long, help: ArgumentHelp("Continue the VM a snapshot directory holds (hv ctl SOCKET snapshot DIR wrote it): the machine is built from the command line saved in it, its memory mapped copy-on-write, and the guest goes on where it stopped. Options given here (--api-socket, --serial, --timeout, ...) replace the saved ones (Documentation/Snapshots.md).", valueName: "dir"))
    var restore: String?

    @Option(name: .long, help: ArgumentHelp("Wait for a live migration on this TCP address (HOST:PORT; hv ctl SOCKET migrate HOST:PORT on the source sends it), then run the guest it brings. Options given here replace the source's, as with --restore (Documentation/Snapshots.md).", valueName: "host:port"))
    var incoming: String?

    @Option(name: .long, help: ArgumentHelp("The AES-256 key (64 hexadecimal digits, a file only its owner may read) that encrypts the snapshots this VM writes and opens the one --restore reads; $HV_SNAPSHOT_KEY otherwise. Without either, snapshots are plain.", valueName: "file"))
    var keyFile: String?

    @Flag(name: .long, inversion: .prefixedNo, help: "With --restore of a plain snapshot: hash the memory file's data against the snapshot's checksums before the guest runs (reads every page that holds data); --no-verify-memory maps it and starts at once.")
    var verifyMemory = true

    @OptionGroup var logging: LoggingOptions

    /// Where a restored machine comes from.
    enum RestoreSource {
        case snapshot(SnapshotReader)
        case migration(IncomingMigration)

    }

    func run() throws {
        let began = monotonicNanoseconds()
        let source: RestoreSource?, subject: String
        if let restore {
            source = .snapshot(openSnapshot(restore))
            subject = "--restore \(restore)"
        } else if let incoming {
            source = .migration(receiveMigration(incoming))
            subject = "--incoming \(incoming)"
        } else {
            source = nil
            subject = ""
        }
        if let source {
            // The saved command line, then this one's options (which win), build the machine.
            let savedArguments: [String]
            switch source {
            case .snapshot(let reader): savedArguments = reader.arguments
            case .migration(let incoming):
                // The source still serves its API while it sends: the destination serves its own
                // where its command line says (--api-socket here), not on the source's socket.
                savedArguments = Self.removing(["--api-socket"], from: incoming.arguments)
            }
            let overrides = Self.overrides(of: Array(CommandLine.arguments.drop { $0 != "run" }.dropFirst()))
            var saved: Run
            do { saved = try Run.parse(savedArguments + overrides) } catch {
                if case .migration(let incoming) = source { incoming.failed("the source's command line does not parse here") }
                fail(subject, "the saved command line does not parse here: \(Run.message(for: error))")
            }
            saved.restore = nil
            saved.incoming = nil
            saved.keyFile = keyFile
            saved.verifyMemory = verifyMemory
            try saved.execute(restoring: source, arguments: savedArguments + overrides, began: began)
        } else {
            try execute(restoring: nil, arguments: Array(CommandLine.arguments.drop { $0 != "run" }.dropFirst()), began: began)
        }
    }

    /// This command line without --restore, --incoming, --key-file and --[no-]verify-memory: the
    /// options that replace the snapshot's own.
    static func overrides(of arguments: [String]) -> [String] {
        removing(["--restore", "--incoming", "--key-file"], flags: ["--verify-memory", "--no-verify-memory"], from: arguments)
    }

    /// `arguments` without `options` (each with its value, as `--name VALUE` or `--name=VALUE`)
    /// and without `flags`.
    static func removing(_ options: [String], flags: [String] = [], from arguments: [String]) -> [String] {
        var result: [String] = []
        var skipNext = false
        for argument in arguments {
            if skipNext { skipNext = false; continue }
            if options.contains(argument) { skipNext = true; continue }
            if flags.contains(argument) || options.contains(where: { argument.hasPrefix($0 + "=") }) { continue }
            result.append(argument)
        }
        return result
    }

    /// The key for snapshots: --key-file, else $HV_SNAPSHOT_KEY, else none.
    private func snapshotKey() -> SnapshotKey? {
        do throws(SnapshotError) {
            if let keyFile { return try SnapshotKey.load(file: keyFile) }
            return try SnapshotKey.fromEnvironment()
        } catch { fail("--key-file", error.description) }
    }

    private func openSnapshot(_ directory: String) -> SnapshotReader {
        do throws(SnapshotError) { return try SnapshotReader(directory: directory, key: snapshotKey()) } catch {
            fail("--restore \(directory)", error.description)
        }
    }

    /// Listens on `address`, takes one migration and reads it whole (the guest runs nowhere
    /// meanwhile only for the stop-and-copy: the source keeps it running until then).
    private func receiveMigration(_ address: String) -> IncomingMigration {
        do throws(SnapshotError) {
            let key = snapshotKey()
            let connection = try MigrationTransport.acceptOne(address) { printError("hv: waiting for a migration on \($0)") }
            return try IncomingMigration(descriptor: connection, key: key, hugePages: hugePages)
        } catch { fail("--incoming \(address)", error.description) }
    }

    private func execute(restoring source: RestoreSource?, arguments: [String], began: UInt64) throws {
        let snapshot: SnapshotReader?, incomingMigration: IncomingMigration?
        switch source {
        case .snapshot(let reader)?: (snapshot, incomingMigration) = (reader, nil)
        case .migration(let incoming)?: (snapshot, incomingMigration) = (nil, incoming)
        case nil: (snapshot, incomingMigration) = (nil, nil)
        }
        logging.bootstrap()
        if let cgroup { joinCgroup(cgroup) }
        // A closed output pipe (`hv run ... | head`) becomes EPIPE on the console's writes, and
        // the VM stops cleanly below, instead of the process dying of SIGPIPE mid-run.
        signal(SIGPIPE, SIG_IGN)
        // Ctrl-C, SIGTERM and SIGHUP stop the guest and still print the summary (StopSignals);
        // before any thread exists, so that every thread blocks them.
        let stopSignals = StopSignals()
        // Linux needs a local APIC; so does any SMP guest, and a kernel image expects the PC's
        // (kvm-unit-tests' first LAPIC read at 0xFEE00020). A flat image starts bare.
        let kernelImage = kernel != nil || multiboot != nil || multiboot2 != nil || elf != nil
        let interruptMode = irqchip?.mode ?? (cpus > 1 || kernelImage ? .kernel : .none)
        var configuration = VirtualMachineConfiguration(
            memorySize: mem.bytes, cpuCount: cpus, haltPolicy: onHalt.policy, timeLimit: timeout, exitLimit: maxExits,
            interruptController: interruptMode)
        configuration.resetPolicy = onReset.policy
        configuration.cpuModel = cpu
        configuration.hugePages = hugePages
        configuration.confinement = seccomp.mode.map { Confinement(mode: $0) }
        let allowed = VCPUPinning.allowedCPUs()
        for pinning in pinVcpu {
            guard configuration.vcpuAffinity[pinning.vcpu] == nil else { fail("--pin-vcpu", "vCPU \(pinning.vcpu) is pinned twice") }
            if let allowed, let outside = pinning.cpus.first(where: { !allowed.contains($0) }) {
                fail("--pin-vcpu \(pinning.vcpu)=...", "CPU \(outside) is not one this process may run on (Cpus_allowed_list: \(VCPUPinning.allowedList() ?? "?"))")
            }
            configuration.vcpuAffinity[pinning.vcpu] = pinning.cpus
        }
        // Looked up now, so that an unknown user stops hv before anything is built.
        let runAs: UnprivilegedUser?
        do throws(ConfinementError) { runAs = try user.map { (name) throws(ConfinementError) in try UnprivilegedUser(name) } } catch { fail("--user \(user ?? "")", error.description) }
        do { try configuration.validate() } catch {
            // A size typed in hex or with a unit is echoed as typed, with its value in bytes.
            var error = error
            if error.field == "memorySize", let typed = mem.typed, typed != error.value { error.value = "\(typed) (\(mem.bytes) bytes)" }
            fail(flagName(for: error.field), error)
        }
        let virtio = try openVirtioDevices(interruptMode: interruptMode, claim: incomingMigration == nil)
        // The virtio console, when asked for, takes the slot after the disks and the rng.
        let virtioSlots = virtioTransport == .pci ? [] : try virtio.map { (attachment) throws(HVError) in try attachment.slot() } + (console == .virtio ? [try VirtioMMIOSlot(virtio.count)] : [])
        let acpiRange: Range<UInt64> = 0xE_0000..<0x10_0000
        let plannedTables = platform == .pc && mem.bytes >= acpiRange.upperBound
            ? try ACPITables.pc(cpuCount: cpus, tpm: tpm != nil, virtio: virtioSlots) : nil
        // Restoring, the image only serves a later guest reset (RAM comes from the snapshot):
        // one whose files are gone leaves RAM as it is on a reset.
        let imageFiles = [image, kernel, multiboot, multiboot2, elf, initrd].compactMap { $0 } + module
        let imageAvailable = source == nil || imageFiles.allSatisfy { FileManager.default.fileExists(atPath: $0) }
        if !imageAvailable { printError("hv: note: the guest's image files are not here; a guest reset will keep RAM as it is") }
        var image: GuestImage? = imageAvailable ? try loaderImage(acpi: plannedTables) ?? flatImage() : nil
        // ACPI tables live in 0xE0000-0xFFFFF: skip them when RAM is smaller or the image uses it.
        let imageUsesACPIArea = (image?.chunks ?? []).contains { chunk in
            let start = chunk.address.rawValue
            return start < acpiRange.upperBound && start + chunk.size > acpiRange.lowerBound
        }
        let acpiTables = platform == .pc && mem.bytes >= acpiRange.upperBound && !imageUsesACPIArea
        if !acpiTables, plannedTables != nil, image != nil, let withoutACPI = loaderImage(acpi: nil) { image = withoutACPI }
        // A Linux kernel on a host whose KVM emulates guest code stops early in boot: say so once,
        // before the run, instead of leaving a crash report to explain it.
        let emulatedLinux = kernel != nil && !HostCPU.current.hasHardwareVirtualization
        if check {
            for device in virtio { device.stop?() }
            printError("hv: the command line, the image and the devices' files are valid")
            return
        }
        if emulatedLinux { printError(Self.emulatedLinuxNote) }
        let key = snapshotKey()
        // Where a restore's time goes, for its report line: since hv began, at each step.
        var steps: [(String, UInt64)] = [("opened, checked, configured", monotonicNanoseconds())]
        func step(_ name: String) { steps.append((name, monotonicNanoseconds())) }
        func breakdown() -> String {
            var last = began
            return steps.map { name, at in
                defer { last = at }
                return String(format: "%@ %.1f", name, Double(at &- last) / 1e6)
            }.joined(separator: ", ") + " ms"
        }
        let (result, statistics) = try reportingErrors { () throws(HVError) -> (RunResult, ExitStatistics) in
            var memory: GuestMemory? = incomingMigration?.memory
            do throws(SnapshotError) { if let snapshot { memory = try snapshot.memory(verify: verifyMemory, hugePages: hugePages) } } catch {
                fail("--restore \(snapshot?.directory ?? "")", error.description)
            }
            step("memory")
            let machine = try Machine(configuration: configuration, backend: KVMBackend(), memory: memory)
            step("VM and vCPUs made")
            let uart = try attachConsole(to: machine, serial: serial)
            if interruptMode != .none { try machine.connect(uart, irq: 4) }
            stopSignals.whenCaught { machine.stop() }
            uart.output.whenReaderGone {
                printError("hv: standard output was closed; stopping the guest")
                machine.stop()
            }
            var receiver: any ConsoleReceiver = uart
            var attachments = virtio
            if self.console == .virtio {
                let device = VirtioConsole(output: .standardOutput)
                attachments.append(VirtioAttachment(device, index: virtio.count))
                receiver = device
            }
            let console = connectStandardInput(to: receiver, machine: machine)
            defer { console?.stop(); TerminalRawMode.restore() }
            let tpmEngine = try attachTPM(directory: tpm, platform: tpmPlatform.policy, to: machine, claim: incomingMigration == nil)
            if virtioTransport == .mmio { for device in attachments { try device.attachMMIO(machine) } }
            if platform == .pc {
                let pc = try machine.attachPCPlatform(acpiTables: acpiTables, tpm: tpm != nil, virtio: virtioSlots)
                if virtioTransport == .pci { for device in attachments { try device.attachPCI(machine, pc) } }
                if testDevices { try machine.attachPCITestDevice(platform: pc) }
            }
            if testDevices {
                try machine.attachTestDevices()
                if machine.hyperV != nil { try machine.attachHyperVTestDevice() }
            }
            step("devices attached")
            if let snapshot {
                try machine.restoreMachine(snapshot.saved, resetImage: image)
            } else if let incomingMigration {
                // Built while the source still sent pages; now the rest and the state.
                let saved: SavedMachine
                do throws(SnapshotError) { saved = try incomingMigration.receive() } catch { fail("--incoming", error.description) }
                do throws(HVError) {
                    try machine.restoreMachine(saved, resetImage: image)
                    try machine.claimBackings()
                } catch {
                    incomingMigration.failed(error.description)
                    throw error
                }
            } else if let image {
                try machine.load(image)
            }
            step("state put back")
            // Listening before the guest runs (and before confinement, which forbids new sockets).
            let api = try apiSocket.map { (path) throws(HVError) in try startAPI(machine, path: path, key: key, arguments: arguments) }
            defer { api?.stop() }
            if api != nil { step("API listening") }
            if let runAs { try switchUser(to: runAs) }
            try machine.start(handler: NoExitHandler())
            step("started")
            if let incomingMigration {
                do throws(SnapshotError) { try incomingMigration.started(atNanoseconds: monotonicNanoseconds()) } catch {
                    // The source did not hear that the guest runs here: it runs on there; this copy must not.
                    printError("hv: error: the source did not take the news that the guest runs here (\(error)); stopping this copy")
                    machine.stop()
                }
                printError(String(format: "hv: received the VM (%@, %llu bytes over the stream) and started the guest %.2f ms after hv began",
                                  ByteSize(bytes: incomingMigration.memory.size).description, incomingMigration.bytes,
                                  Double(monotonicNanoseconds() &- began) / 1e6))
                LogCategory.vcpu.logger.info("incoming migration: \(breakdown())")
            }
            if let snapshot {
                let pages = snapshot.manifest.memory.dataPages
                printError(String(format: "hv: restored %@ (%@, %llu data pages%@) and started the guest %.2f ms after hv began", snapshot.directory,
                                  ByteSize(bytes: snapshot.manifest.memory.size).description, pages,
                                  snapshot.manifest.encryption == nil ? (verifyMemory ? ", verified" : "") : ", decrypted",
                                  Double(monotonicNanoseconds() &- began) / 1e6))
                printError("hv: restore steps: \(breakdown())")
            }
            let result = machine.wait()
            if case .internalError = result.reason, emulatedLinux {
                printError("hv: Linux reached an instruction this host's KVM cannot emulate, as the note above said (run with --log-level debug for where)")
                LogCategory.vcpu.logger.debug("\(crashSite(of: machine, vcpu: result.vcpuID))")
            } else if result.reason.isCrash {
                printError(crashSite(of: machine, vcpu: result.vcpuID))
                // 16-bit code run as 64-bit code goes wrong at once: a boot sector, say.
                if !kernelImage, mode == nil {
                    printError("hv: hint: a flat image starts in 64-bit long mode unless --mode real is given; if this one is 16-bit real-mode code (a boot sector, for instance), run it with --mode real")
                }
            }
            try? tpmEngine?.close()
            uart.flush()
            for device in virtio {
                if let balloon = device.balloon { printError(Self.describe(balloon)) }
                if let summary = device.summary { printError(summary()) }
                device.stop?()
            }
            return (result, machine.statistics)
        }
        let resets = result.resets == 0 ? "" : result.resets == 1 ? " (1 reset)" : " (\(result.resets) resets)"
        printError("hv: \(result.reason) after \(result.exits) exits in \(String(format: "%.3f", result.seconds)) s\(resets)")
        if stats { printError(ExitTable.render(statistics)) }
        if case .backendFailure = result.reason, let error = result.error { printError("hv: error: \(error)") }
        // Stopped by a signal: the shell's status for it, as if hv had died of it (128 + number).
        let status = stopSignals.signal.map { 128 + $0 } ?? ExitStatus.forStop(result.reason)
        if status != 0 { throw ExitCode(status) }
    }

    /// Moves this process into the cgroup v2 directory `path` (its limits apply from here on).
    private func joinCgroup(_ path: String) {
        let descriptor = open(path + "/cgroup.procs", O_WRONLY | O_CLOEXEC)
        let pid = Array("\(getpid())".utf8)
        guard descriptor >= 0, write(descriptor, pid, pid.count) == pid.count else {
            fail("--cgroup \(path)", "cannot join it: \(String(cString: strerror(errno)))")
        }
        close(descriptor)
    }

    /// The VM's API on `path`, listening; a socket that cannot be made is a one-line error.
    private func startAPI<B>(_ machine: Machine<B>, path: String, key: SnapshotKey?, arguments: [String]) throws(HVError) -> VMAPIServer<B> {
        let monitor = MigrationMonitor()
        let migrate = { @Sendable (request: MigrateRequest) throws(SnapshotRefusal) -> MigrateResult in
            do throws(SnapshotError) {
                let connection = try MigrationTransport.connectUnix(request.via)
                defer { close(connection) }
                let report = try Migration.send(machine, over: connection, key: key, arguments: arguments,
                                                maximumDowntime: (request.maxDowntimeMs ?? 10) / 1000, progress: monitor)
                printError(String(format: "hv: migrated: %d rounds, %llu pages, %.1f ms of downtime; the guest runs at the destination now",
                                  report.rounds, report.pagesSent, report.downtimeSeconds * 1000))
                machine.stop()
                return MigrateResult(rounds: report.rounds, pagesSent: report.pagesSent, bytesSent: report.bytesSent, finalPages: report.finalPages,
                                     downtimeMs: report.downtimeSeconds * 1000, totalSeconds: report.totalSeconds)
            } catch {
                throw SnapshotRefusal(conflict: error.subject == "VM" && error.problem.hasPrefix("cannot migrate"), message: error.description)
            }
        }
        let describe = { @Sendable (progress: MigrationProgress) -> MigrationStatus in
            MigrationStatus(phase: progress.phase, round: progress.round, pagesSent: progress.pagesSent, bytesSent: progress.bytesSent,
                            remainingPages: progress.remainingPages, bytesPerSecond: progress.bytesPerSecond, message: progress.message)
        }
        let status = { @Sendable () -> MigrationStatus in describe(monitor.progress) }
        let changes = { @Sendable (after: UInt64) -> (latest: UInt64, changes: [MigrationStatus]) in
            let (latest, changes) = monitor.changes(after: after)
            return (latest, changes.map(describe))
        }
        let snapshot = { @Sendable (directory: String) throws(SnapshotRefusal) -> SnapshotResult in
            do throws(SnapshotError) {
                let report = try Snapshot.take(machine, to: directory, key: key, arguments: arguments)
                LogCategory.api.logger.info("snapshot written to \(report.directory) in \(String(format: "%.3f", report.seconds)) s")
                return SnapshotResult(path: report.directory, memoryBytes: report.memoryBytes, dataPages: report.dataPages,
                                      stateBytes: report.stateBytes, encrypted: report.encrypted, seconds: report.seconds)
            } catch {
                throw SnapshotRefusal(conflict: error.subject == "VM" && error.problem.hasPrefix("cannot"), message: error.description)
            }
        }
        let server = VMAPIServer(machine: machine, path: path, snapshot: snapshot, migrate: migrate, migrationStatus: status, migrationChanges: changes)
        do throws(VMAPIError) { try server.start() } catch { fail("--api-socket \(path)", error.problem) }
        return server
    }

    /// Becomes `user` now that everything that needs root is open, and checks that what the run
    /// still opens (the TPM's state files) is open to it.
    private func switchUser(to user: UnprivilegedUser) throws(HVError) {
        do throws(ConfinementError) { try user.switchTo() } catch { throw .confinement("--user \(user.name): \(error.description)") }
        if let tpm, access(tpm, W_OK) != 0 {
            fail("--user \(user.name)", "the TPM's state directory \(tpm) is not writable by \(user.name) (uid \(user.uid)); chown it to that user, or leave --user out")
        }
        LogCategory.vcpu.logger.info("running as \(user.name) (uid \(user.uid), gid \(user.gid))")
    }

    /// The --disk and --rng devices, opened before the VM is built (a missing or locked image is a
    /// one-line error), each with its virtio-mmio slot: disks first, in order, then the rng.
    /// Without `claim` (a migration's destination) disk images are locked only once the source
    /// let go of them (`Machine.claimBackings()`).
    private func openVirtioDevices(interruptMode: InterruptControllerMode, claim: Bool) throws -> [VirtioAttachment] {
        guard !disk.isEmpty || !net.isEmpty || rng || vsock != nil || balloon != nil || console == .virtio else { return [] }
        let flag = !disk.isEmpty ? "--disk" : !net.isEmpty ? "--net" : rng ? "--rng" : vsock != nil ? "--vsock" : balloon != nil ? "--balloon" : "--console virtio"
        if interruptMode == .none { fail(flag, "virtio devices interrupt the guest; add --irqchip kernel or split") }
        if platform == .none { fail(flag, "the guest finds virtio devices through the ACPI tables and the PCI bus; use --platform pc") }
        var attachments: [VirtioAttachment] = []
        for disk in disk {
            do throws(VirtioBlockError) {
                let limit = RateLimit(bandwidth: disk.bandwidth, operations: disk.operations)
                // A migration's destination takes the image's lock once the source let go of it.
                let device = try VirtioBlock(path: disk.path, readOnly: disk.readOnly, serial: disk.serial, direct: disk.direct, rateLimit: limit,
                                             claim: claim)
                attachments.append(VirtioAttachment(device, index: attachments.count))
            } catch {
                fail("--disk \(error.path)", error.problem)
            }
        }
        for net in net {
            do throws(TAPError) {
                let tap = try TAPDevice(name: net.tap)
                if net.bringUp { try tap.bringUp(address: net.hostAddress) }
                let device = VirtioNetwork(endpoint: tap, mac: net.mac, receiveLimit: net.receiveLimit, transmitLimit: net.transmitLimit)
                var attachment = VirtioAttachment(device, index: attachments.count)
                let name = net.tap
                attachment.summary = {
                    let counts = device.statistics, throttled = device.throttledFrames
                    return "hv: virtio-net \(name): received \(counts.received) frames (\(counts.receivedBytes) bytes), "
                        + "sent \(counts.transmitted) (\(counts.transmittedBytes) bytes), \(counts.transmitErrors) refused by the TAP, "
                        + "\(counts.receiveErrors) short; throttled \(throttled.receive) received, \(throttled.transmit) sent"
                }
                attachments.append(attachment)
            } catch {
                fail("--net tap=\(net.tap)", error.problem)
            }
        }
        if rng {
            attachments.append(VirtioAttachment(VirtioEntropy(), index: attachments.count))
        }
        if let vsock {
            do throws(VirtioVsockError) {
                let device = try VirtioVsock(guestCID: vsock.guestCID, path: vsock.path)
                var attachment = VirtioAttachment(device, index: attachments.count)
                attachment.stop = { device.stop() }
                attachments.append(attachment)
            } catch {
                fail("--vsock", error.description)
            }
        }
        if let balloon {
            guard balloon.size < mem.bytes else {
                fail("--balloon", "\(ByteSize(bytes: balloon.size)) is not less than the guest's RAM (--mem \(mem))")
            }
            let device: VirtioBalloon
            do {
                device = try VirtioBalloon(targetBytes: balloon.size, deflateOnOOM: balloon.deflateOnOOM, statisticsInterval: balloon.statisticsInterval)
            } catch { fail("--balloon", "\(error.value) is invalid; expected \(error.expected)") }
            var attachment = VirtioAttachment(device, index: attachments.count)
            attachment.balloon = device
            attachments.append(attachment)
        }
        return attachments
    }

    /// The balloon's line when the guest stops: what it gave back, and the guest's last figures.
    static func describe(_ balloon: VirtioBalloon) -> String {
        let counters = balloon.counters, mib = { (bytes: UInt64) in "\(bytes >> 20) MiB" }
        var line = "hv: virtio-balloon: target \(balloon.targetPages) pages; \(counters.inflatedPages) pages inflated "
            + "(\(mib(counters.inflatedBytesReturned)) returned to the host), \(counters.deflatedPages) deflated, "
            + "\(mib(counters.reportedBytesReturned)) reported free and returned"
        let statistics = balloon.statistics
        if let free = statistics.freeMemory, let total = statistics.totalMemory {
            line += "; guest: \(mib(free)) free of \(mib(total))"
        }
        return line
    }

    /// The one note `hv run --kernel` prints where the CPU has neither VT-x nor AMD-V.
    static let emulatedLinuxNote = """
        hv: note: this CPU has no VT-x/AMD-V, so KVM emulates guest code: Linux runs its early boot \
        here but stops in setup_arch (an instruction the emulator lacks). A full boot needs \
        VT-x/AMD-V, or the test bed: scripts/testbed .build/debug/hv run --kernel ... \
        (Documentation/TestBed.md)
        """

    /// With `--serial stdio`, what is typed (or piped) on standard input reaches COM1's receiver.
    /// A terminal goes into raw mode (restored on every way out) and Ctrl-A x quits, as QEMU's
    /// -nographic; a pipe is passed through byte for byte, and its end leaves the guest running.
    private func connectStandardInput<B>(to receiver: any ConsoleReceiver, machine: Machine<B>) -> SerialConsoleInput? {
        guard case .stdio = serial else { return nil }
        let interactive = TerminalRawMode.enable()
        if interactive { printError("hv: the guest's console is this terminal; C-a x quits, C-a h lists the keys") }
        let input = SerialConsoleInput(receiver: receiver, escapes: interactive,
                                       onQuit: { printError("\r\nhv: quit from the console (C-a x)"); machine.stop() },
                                       onHelp: { printError("\r\nhv: \(ConsoleEscape.helpText)") })
        input.start()
        return input
    }

    /// The flat IMAGE as a guest image, or a one-line error and exit status 64.
    private func flatImage() throws -> GuestImage {
        let bytes = try readImage()
        let guestMode: GuestMode = mode == .real ? .real : .long  // long when --mode is not given
        let load = loadAddress?.value ?? guestMode.defaultLoadAddress
        do {
            return try GuestImage.flat(bytes, mode: guestMode, loadAddress: load, entry: entry?.value ?? load,
                                       memorySize: mem.bytes)
        } catch {
            // The SDK's message names its fields; hv names the options that set them.
            var text = "\(error)"
            for (field, option) in Self.options {
                text = text.replacingOccurrences(of: "\(field):", with: "\(option):").replacingOccurrences(of: "(\(field) ", with: "(\(option) ")
            }
            fail(self.image ?? "IMAGE", text)
        }
    }

    /// The image's bytes, or a one-line error and exit status 64.
    private func readImage() throws -> [UInt8] {
        guard let image else { fail("IMAGE", "missing; give a flat binary, --multiboot KERNEL, --multiboot2 KERNEL, --elf FILE or --kernel BZIMAGE") }
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: image, isDirectory: &isDirectory) else {
            fail("\(image)", "no such file")
        }
        guard !isDirectory.boolValue else { fail("\(image)", "is a directory, not an image file") }
        guard let data = FileManager.default.contents(atPath: image) else { fail("\(image)", "cannot be read (permission denied?)") }
        guard !data.isEmpty else { fail("\(image)", "is empty; an image needs at least one instruction") }
        guard UInt64(data.count) <= mem.bytes else {
            fail("\(image)", "is \(data.count) bytes, larger than guest memory (--mem \(mem)); raise --mem")
        }
        return [UInt8](data)
    }

    /// The SDK's fields (as its errors name them) and the options that set them.
    private static let options = ["memorySize": "--mem", "cpuCount": "--cpus", "vcpuAffinity": "--pin-vcpu", "timeLimit": "--timeout", "exitLimit": "--max-exits",
                                  "loadAddress": "--load-address", "entry": "--entry"]

    private func flagName(for field: String) -> String { Self.options[field] ?? field }

    /// Prints "hv: error: SUBJECT: PROBLEM" and exits with the usage status.
    private func fail(_ subject: String, _ problem: Any) -> Never {
        var text = "\(problem)"
        if let error = problem as? ConfigurationError {
            text = "\(error.value) is invalid; expected \(error.expected)"
        }
        printError("hv: error: \(subject): \(text)")
        Run.exit(withError: ExitCode(ExitStatus.usage))
    }
}

extension StopReason {
    /// A guest crash, where the instruction the vCPU stopped at is worth showing.
    var isCrash: Bool {
        switch self {
        case .shutdown, .internalError, .entryFailure, .unmappedMMIO, .unmappedPort: true
        default: false
        }
    }
}

/// "hv: vCPU N stopped at RIP 0x... (CS.L=1): 0f 01 ..." for a crash report: the registers after
/// the exit and the instruction bytes there, read through the guest's own page tables.
func crashSite<B>(of machine: Machine<B>, vcpu id: Int) -> String {
    guard machine.vcpus.indices.contains(id), let registers = try? machine.vcpus[id].registers(),
          let special = try? machine.vcpus[id].specialRegisters()
    else { return "hv: vCPU \(id)'s registers cannot be read" }
    let mode = special.cs.long ? "64-bit" : special.cr0 & 1 == 0 ? "real mode" : special.cs.defaultSize32 ? "32-bit" : "16-bit"
    let linear = special.cs.long ? registers.rip : special.cs.base &+ registers.rip
    var line = "hv: vCPU \(id) stopped at RIP 0x\(String(registers.rip, radix: 16)) (\(mode), CR0 0x\(String(special.cr0, radix: 16)), "
        + "CR4 0x\(String(special.cr4, radix: 16)), RSP 0x\(String(registers.rsp, radix: 16)))"
    if let bytes = try? machine.readVirtualMemory(at: GuestVirtualAddress(linear), count: 15, vcpu: id) {
        line += ": " + bytes.map { $0 < 16 ? "0" + String($0, radix: 16) : String($0, radix: 16) }.joined(separator: " ")
    }
    return line
}

/// `--net tap=NAME[,mac=MAC][,host-ip=ADDR/LEN]`.
struct NetArgument {
    var tap = ""
    var mac = MACAddress.qemuDefault
    var hostAddress: IPv4Interface?
    /// Bytes and frames per second received (rx) and transmitted (tx) by the guest.
    var receiveBandwidth: TokenBucket?, transmitBandwidth: TokenBucket?
    var receiveFrames: TokenBucket?, transmitFrames: TokenBucket?

    var receiveLimit: RateLimit { RateLimit(bandwidth: receiveBandwidth, operations: receiveFrames) }
    var transmitLimit: RateLimit { RateLimit(bandwidth: transmitBandwidth, operations: transmitFrames) }
    /// Whether hv brings the host side up (with host-ip=, or up on its own).
    var bringUp: Bool { hostAddress != nil }

    init(parsing text: String) throws {
        for option in text.split(separator: ",").map(String.init) {
            if option.hasPrefix("tap=") {
                tap = String(option.dropFirst(4))
            } else if option.hasPrefix("mac=") {
                guard let mac = MACAddress(parsing: String(option.dropFirst(4))) else {
                    throw ValidationError("--net: \(option) is not a MAC address like 52:54:00:12:34:56")
                }
                self.mac = mac
            } else if option.hasPrefix("host-ip=") {
                guard let address = IPv4Interface(parsing: String(option.dropFirst(8))) else {
                    throw ValidationError("--net: \(option) is not an IPv4 address with a prefix length, like 10.0.2.1/24")
                }
                hostAddress = address
            } else if let (key, value) = Self.split(option), ["bw", "rx-bw", "tx-bw"].contains(key) {
                guard let size = ByteSize(argument: value), size.bytes > 0 else {
                    throw ValidationError("--net: \(option) is not a size in bytes per second (e.g. \(key)=10M)")
                }
                let bucket = try tokenBucket(rate: size.bytes, option: "--net \(option)")
                if key != "tx-bw" { receiveBandwidth = bucket }
                if key != "rx-bw" { transmitBandwidth = bucket }
            } else if let (key, value) = Self.split(option), ["pps", "rx-pps", "tx-pps"].contains(key) {
                guard let count = UInt64(value), count > 0 else {
                    throw ValidationError("--net: \(option) is not a positive number of frames per second")
                }
                let bucket = try tokenBucket(rate: count, option: "--net \(option)")
                if key != "tx-pps" { receiveFrames = bucket }
                if key != "rx-pps" { transmitFrames = bucket }
            } else {
                throw ValidationError("--net: unknown option \"\(option)\"; expected tap=NAME, mac=MAC, host-ip=ADDR/LEN, bw=SIZE, pps=N (or rx-/tx- each)")
            }
        }
        guard !tap.isEmpty else { throw ValidationError("--net needs tap=NAME: --net tap=NAME[,mac=MAC][,host-ip=ADDR/LEN]") }
    }

    private static func split(_ option: String) -> (String, String)? {
        let parts = option.split(separator: "=", maxSplits: 1).map(String.init)
        return parts.count == 2 ? (parts[0], parts[1]) : nil
    }
}

enum ConsoleArgument: String, ExpressibleByArgument, CaseIterable {
    case serial, virtio
}

/// A virtio device `hv run` attaches, and how: on virtio-mmio slot `index`, or as the virtio-pci
/// function in PCI slot `index + 1`.
struct VirtioAttachment {
    let index: Int
    /// The balloon, whose figures hv prints when the guest stops.
    var balloon: VirtioBalloon? = nil
    /// What to do when the guest has stopped (the vsock device takes its socket's name away).
    var stop: (@Sendable () -> Void)? = nil
    /// A line for standard error when the guest has stopped (the network device's counters).
    var summary: (@Sendable () -> String)? = nil
    let attachMMIO: (Machine<KVMBackend>) throws(HVError) -> Void
    let attachPCI: (Machine<KVMBackend>, PCPlatform) throws(HVError) -> Void

    init<D: VirtioDevice>(_ device: D, index: Int) {
        self.index = index
        attachMMIO = { machine throws(HVError) in try machine.attachVirtio(device, slot: VirtioMMIOSlot(index)) }
        attachPCI = { machine, platform throws(HVError) in try machine.attachVirtioPCI(device, platform: platform, slot: index + 1) }
    }

    func slot() throws(HVError) -> VirtioMMIOSlot { try VirtioMMIOSlot(index) }
}

enum VirtioTransportArgument: String, ExpressibleByArgument, CaseIterable {
    case mmio, pci
}

/// `--vsock CID,PATH`.
struct VsockArgument {
    var guestCID: UInt64
    var path: String

    init(parsing text: String) throws {
        let parts = text.split(separator: ",", maxSplits: 1).map(String.init)
        guard parts.count == 2, let cid = UInt64(parts[0]) else {
            throw ValidationError("--vsock takes CID,PATH: the guest's context ID (3 or more) and a Unix socket path, e.g. --vsock 3,/tmp/hv.vsock")
        }
        guestCID = cid
        path = parts[1]
    }
}

/// `--balloon SIZE[,deflate-on-oom][,stats=SECONDS]`.
struct BalloonArgument {
    var size: UInt64
    var deflateOnOOM = false
    var statisticsInterval: Double? = 2

    init(parsing text: String) throws {
        var parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        guard let size = ByteSize(argument: parts.removeFirst()) else {
            throw ValidationError("--balloon needs a size first (the RAM to take back from the guest): --balloon 128M[,deflate-on-oom][,stats=SECONDS]")
        }
        self.size = size.bytes
        for option in parts {
            if option == "deflate-on-oom" {
                deflateOnOOM = true
            } else if option.hasPrefix("stats=") {
                guard let seconds = Double(option.dropFirst(6)), seconds == 0 || VirtioBalloon.statisticsIntervals.contains(seconds) else {
                    throw ValidationError("--balloon: stats=\(option.dropFirst(6)) is not 0.1 to 86400 seconds (0 turns the refresh off)")
                }
                statisticsInterval = seconds == 0 ? nil : seconds
            } else {
                throw ValidationError("--balloon: unknown option \"\(option)\"; expected deflate-on-oom or stats=SECONDS")
            }
        }
    }
}

/// `--disk FILE[,ro][,serial=ID][,bw=SIZE][,iops=N]`.
/// The SDK's token bucket for a rate typed after `option`; its refusal in the option's words.
func tokenBucket(rate: UInt64, option: String) throws -> TokenBucket {
    do { return try TokenBucket(rate: rate) } catch { throw ValidationError("\(option): \(error.field) \(error.value) is invalid; expected \(error.expected)") }
}

struct DiskArgument {
    var path: String
    var readOnly = false
    var direct = false
    var serial: String?
    /// Bytes per second, and requests per second, the guest may move.
    var bandwidth: TokenBucket?
    var operations: TokenBucket?

    init(parsing text: String) throws {
        var parts = text.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
        path = parts.removeFirst()
        guard !path.isEmpty else { throw ValidationError("--disk needs a file: --disk FILE[,ro][,serial=ID]") }
        for option in parts {
            if option == "ro" {
                readOnly = true
            } else if option == "direct" {
                direct = true
            } else if option.hasPrefix("serial=") {
                serial = String(option.dropFirst("serial=".count))
            } else if option.hasPrefix("bw=") {
                guard let size = ByteSize(argument: String(option.dropFirst(3))), size.bytes > 0 else {
                    throw ValidationError("--disk \(path): bw=\(option.dropFirst(3)) is not a size in bytes per second (e.g. bw=20M)")
                }
                bandwidth = try tokenBucket(rate: size.bytes, option: "--disk \(path): \(option)")
            } else if option.hasPrefix("iops=") {
                guard let count = UInt64(option.dropFirst(5)), count > 0 else {
                    throw ValidationError("--disk \(path): iops=\(option.dropFirst(5)) is not a positive number of requests per second")
                }
                operations = try tokenBucket(rate: count, option: "--disk \(path): \(option)")
            } else {
                throw ValidationError("--disk \(path): unknown option \"\(option)\"; expected ro, direct, serial=ID, bw=SIZE or iops=N")
            }
        }
    }
}

enum SeccompArgument: String, ExpressibleByArgument, CaseIterable {
    case kill, refuse, off
    var mode: SeccompMode? { SeccompMode(rawValue: rawValue) }
}

enum TPMPlatformArgument: String, ExpressibleByArgument, CaseIterable {
    case randomAuth = "random-auth", disable, guest
    var policy: TPMPlatformPolicy { TPMPlatformPolicy(rawValue: rawValue)! }
}

enum GuestModeArgument: String, ExpressibleByArgument, CaseIterable {
    case real, long
}

enum PlatformArgument: String, ExpressibleByArgument, CaseIterable {
    case pc, none
}

enum IRQChipArgument: String, ExpressibleByArgument, CaseIterable {
    case none, kernel, split
    var mode: InterruptControllerMode { InterruptControllerMode(rawValue: rawValue)! }
}

enum ResetPolicyArgument: String, ExpressibleByArgument, CaseIterable {
    case restart, stop
    var policy: ResetPolicy { self == .restart ? .restart : .stop }
}

enum HaltPolicyArgument: String, ExpressibleByArgument, CaseIterable {
    case stop, resume
    var policy: HaltPolicy { self == .stop ? .stop : .resume }
}
