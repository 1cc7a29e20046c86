// `hv run --multiboot KERNEL [--append ARGS] [--module FILE]...` (and --multiboot2), `hv run --elf FILE` and
// `hv run --kernel BZIMAGE|VMLINUX [--cmdline ARGS] [--initrd FILE]` (a bzImage by the Linux boot
// protocol, an ELF kernel by its PVH entry): the
// loaders of Documentation/Loaders.md behind `hv run`. The flat-image path stays in Run.swift.
import ArgumentParser
import Foundation
import HVCore

extension Run {
    /// Exactly one image source: IMAGE, --multiboot, --elf or --kernel; the flat-image options
    /// only with IMAGE, the Multiboot options only with --multiboot, the Linux ones with --kernel.
    func validate() throws {
        let sources = [image, multiboot, multiboot2, elf, kernel].compactMap { $0 }
        if restore != nil || incoming != nil {
            // The image comes from the snapshot's (or the source's) saved command line.
            guard restore == nil || incoming == nil else { throw ValidationError("Give --restore or --incoming, not both.") }
            guard sources.isEmpty else { throw ValidationError("\(restore != nil ? "--restore" : "--incoming") continues the saved guest; leave the image out.") }
            return
        }
        guard sources.count == 1 else {
            throw ValidationError(sources.isEmpty
                ? "Missing image: give a flat binary (hv run IMAGE), --multiboot KERNEL, --multiboot2 KERNEL, --elf FILE or --kernel BZIMAGE."
                : "Give one image: a flat IMAGE, --multiboot KERNEL, --multiboot2 KERNEL, --elf FILE or --kernel BZIMAGE, not several.")
        }
        if image == nil, entry != nil || loadAddress != nil {
            throw ValidationError("--entry and --load-address apply to flat images only; ELF and Multiboot files carry their own.")
        }
        if multiboot == nil, multiboot2 == nil, append != nil || !module.isEmpty {
            throw ValidationError("--append and --module apply to --multiboot and --multiboot2 kernels only.")
        }
        if kernel == nil, cmdline != nil || initrd != nil {
            throw ValidationError("--cmdline and --initrd apply to --kernel (Linux bzImage) only; use --append with --multiboot.")
        }
    }

    /// The image of --multiboot, --elf or --kernel, or nil for a flat IMAGE. A file or loader error ends
    /// the process with "hv: error: FILE: FIELD: PROBLEM" and exit status 64. `acpi`, the tables
    /// the platform will install, gives a PVH kernel its RSDP address and a Multiboot2 kernel its
    /// RSDP bytes.
    func loaderImage(acpi: ACPITables? = nil) -> GuestImage? {
        if let path = multiboot {
            let modules = module.map { MultibootModule(name: $0, bytes: readLoaderFile($0)) }
            do {
                return try GuestImage.multiboot(readLoaderFile(path), name: path, arguments: append ?? "",
                                                modules: modules, memorySize: mem.bytes)
            } catch { loaderFail(path, error) }
        }
        if let path = multiboot2 {
            let modules = module.map { MultibootModule(name: $0, bytes: readLoaderFile($0)) }
            do {
                return try GuestImage.multiboot2(readLoaderFile(path), commandLine: append ?? "", modules: modules,
                                                 rsdp: acpi?.tables.first?.bytes, memorySize: mem.bytes)
            } catch { loaderFail(path, error) }
        }
        if let path = elf {
            do { return try GuestImage.elf(readLoaderFile(path), memorySize: mem.bytes) } catch { loaderFail(path, error) }
        }
        if let path = kernel {
            let ramdisk = initrd.map { readLoaderFile($0) }
            let bytes = readLoaderFile(path)
            do {
                // An ELF kernel (vmlinux) boots by its PVH note, anything else as a bzImage.
                if ELFFile.hasMagic(bytes) {
                    return try GuestImage.pvh(bytes, commandLine: cmdline ?? "", initrd: ramdisk, rsdpAddress: acpi?.rsdpAddress ?? 0,
                                              memorySize: mem.bytes)
                }
                return try GuestImage.linux(bytes, commandLine: cmdline ?? "", initrd: ramdisk, memorySize: mem.bytes)
            } catch { loaderFail(path, error) }
        }
        return nil
    }

    private func readLoaderFile(_ path: String) -> [UInt8] {
        var isDirectory: ObjCBool = false
        guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else { loaderFail(path, "no such file") }
        guard !isDirectory.boolValue else { loaderFail(path, "is a directory, not a file") }
        guard let data = FileManager.default.contents(atPath: path) else { loaderFail(path, "cannot be read (permission denied?)") }
        return [UInt8](data)
    }

    /// A loader error; when the image does not fit in guest RAM, with the --mem that would hold it.
    private func loaderFail(_ subject: String, _ error: LoaderError) -> Never {
        // Kernels load below the PC's 3 GiB hole, so RAM up to there is what a larger --mem adds.
        let hole: UInt64 = 3 << 30
        guard case let .outsideMemory(_, _, start, size, limit) = error, limit == min(mem.bytes, hole),
              start < hole, size <= hole - start
        else { loaderFail(subject, "\(error)") }
        // What it needs in MiB, rounded up to a power of two: a kernel needs room beyond its image.
        let needed = (start + size + (1 << 20) - 1) >> 20
        var suggestion: UInt64 = 1
        while suggestion < needed { suggestion <<= 1 }
        loaderFail(subject, "\(error); it needs at least \(needed) MiB of guest RAM: try --mem \(suggestion)M")
    }

    private func loaderFail(_ subject: String, _ problem: String) -> Never {
        printError("hv: error: \(subject): \(problem)")
        Run.exit(withError: ExitCode(ExitStatus.usage))
    }
}
