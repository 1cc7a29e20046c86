import Foundation
import Testing

/// `hv run`'s virtio flags: what it refuses, before any VM exists, with one line that names the
/// flag and what would be valid.
@Suite("hv run virtio flags")
struct VirtioCommandTests {
    static func run(_ arguments: [String]) throws -> ProcessResult {
        let image = try PackageExecutable.temporaryDirectory().appendingPathComponent("guest.bin")
        try Data([0xF4]).write(to: image)
        return try PackageExecutable.run(["run", image.path, "--irqchip", "kernel"] + arguments)
    }

    @Test("malformed values are refused with the option and the expected form",
          arguments: [
              (["--net", "tap=t0,bw=fast"], "bw=fast is not a size in bytes per second"),
              (["--net", "tap=t0,rx-pps=0"], "rx-pps=0 is not a positive number of frames per second"),
              (["--net", "tap=t0,speed=1"], "unknown option \"speed=1\""),
              (["--disk", "x.img,turbo"], "expected ro, direct, serial=ID"),
              (["--vsock", "3"], "--vsock takes CID,PATH"),
              (["--balloon", "lots"], "--balloon needs a size first"),
              (["--balloon", "8M,stats=-1"], "stats=-1 is not 0.1 to 86400 seconds"),
              (["--virtio-transport", "isa"], "--virtio-transport"),
          ])
    func malformed(_ arguments: [String], _ message: String) throws {
        let result = try Self.run(arguments)
        #expect(result.status == 64, "\(arguments): \(result.stderr)")
        #expect(result.stderr.contains(message), "\(arguments): \(result.stderr)")
    }

    @Test("a reserved guest CID, a balloon as large as RAM, and virtio without interrupt controllers are refused by name")
    func refused() throws {
        let cid = try Self.run(["--vsock", "2,/tmp/hv-test-\(getpid()).sock"])
        #expect(cid.status != 0 && cid.stderr.contains("--vsock") && cid.stderr.contains("guest CID: 2 is reserved"), "\(cid.stderr)")
        let balloon = try Self.run(["--mem", "16M", "--balloon", "16M"])
        #expect(balloon.status != 0 && balloon.stderr.contains("--balloon") && balloon.stderr.contains("not less than the guest's RAM"), "\(balloon.stderr)")
        let image = try PackageExecutable.temporaryDirectory().appendingPathComponent("guest2.bin")
        try Data([0xF4]).write(to: image)
        let noChip = try PackageExecutable.run(["run", image.path, "--irqchip", "none", "--rng"])
        #expect(noChip.status != 0 && noChip.stderr.contains("--rng") && noChip.stderr.contains("--irqchip kernel or split"), "\(noChip.stderr)")
    }
}
