import Foundation
import Testing

/// Debian's kernel image, unpacked by scripts/fetch-linux-kernel.sh (which scripts/setup.sh runs).
private enum DebianKernel {
    static let path: String? = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let boot = root.appendingPathComponent(".build-kernel/boot")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: boot.path)) ?? []
        return names.first { $0.hasPrefix("vmlinuz-") }.map { boot.appendingPathComponent($0).path }
    }()
}

@Suite("hv run: a real Linux kernel")
struct HVRunLinuxTests {
    @Test("Debian's bzImage, loaded by the 64-bit boot protocol, prints its first early-boot serial line",
          .needsKVM,
          .enabled(if: DebianKernel.path != nil, "skipped: no Debian kernel image; run scripts/fetch-linux-kernel.sh"))
    func earlyBootLine() throws {
        // The decompressor's early console (earlyprintk=serial) speaks before decompression; full
        // boot to user space is out of reach while KVM emulates guest code (FACTS.md), so the run
        // ends at --timeout (status 4).
        let result = try PackageExecutable.run([
            "run", "--kernel", DebianKernel.path!, "--cmdline", "earlyprintk=serial,ttyS0,115200 nokaslr",
            "--mem", "256M", "--timeout", "15",
        ])
        #expect(result.stdout.contains("KASLR disabled: 'nokaslr' on cmdline."), "stdout: \(result.stdout)")
        #expect(result.status == 4, "stderr: \(result.stderr)")
        #expect(!result.crashed)
    }
}
