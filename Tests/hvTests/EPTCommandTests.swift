import Foundation
import Testing

@Suite("hv ept")
struct EPTCommandTests {
    @Test("plan: 64 GiB identity with 1 GiB pages needs 2 table pages")
    func planHuge() throws {
        let r = try PackageExecutable.run(["ept", "plan", "--map", "0:64G:rwx", "--huge-pages"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("table pages: 2 (8 KiB) mapping 64 GiB"))
    }

    @Test("plan --json: 64 GiB with 4 KiB pages needs 1 + 1 + 64 + 32768 table pages")
    func planSmallJSON() throws {
        let r = try PackageExecutable.run(["ept", "plan", "--map", "0:64G:rwx", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let object = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any]
        #expect(object?["tablePages"] as? Int == 1 + 1 + 64 + 32768)
        let levels = object?["levels"] as? [[String: Any]]
        #expect(levels?.map { $0["tables"] as? Int } == [1, 1, 64, 32768])
    }

    @Test("walk: a write to a read-only page is an EPT violation with its exit qualification")
    func walkViolation() throws {
        let r = try PackageExecutable.run(["ept", "walk", "--map", "0:2M:rwx", "--huge-pages", "--protect", "0x5000:4K:r",
                                           "--address", "0x5008", "--access", "write"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("PTE   [  5]"))
        #expect(r.stdout.contains("EPT violation (exit reason 48), exit qualification 0xa: write | readable"))
    }

    @Test("walk: a fetch through a 2 MiB page translates; bad flags are refused with advice")
    func walkTranslateAndRefuse() throws {
        let ok = try PackageExecutable.run(["ept", "walk", "--map", "0x200000:2M:rx:WB:0x40000000", "--huge-pages",
                                            "--address", "0x212345", "--access", "fetch"])
        #expect(ok.stdout.contains("=> host-physical 0x40012345: 2 MiB page, rights r-x, WB"))
        let bad = try PackageExecutable.run(["ept", "plan", "--map", "0:4K:w"])
        #expect(bad.status != 0 && bad.stderr.contains("write without read"))
        let help = try PackageExecutable.run(["ept", "walk", "--help"])
        #expect(help.status == 0 && help.stdout.contains("--access"))
    }

    @Test("plan: a range that wraps past 2^64 is named as such; a plan too large to build is refused at once, with advice")
    func extremeRanges() throws {
        let wraps = try PackageExecutable.run(["ept", "plan", "--map", "0xFFFFFFFFFFFF0000:0x20000:rwx"])
        #expect(wraps.status == 64)
        #expect(wraps.stderr == "hv: error: --map 0xffffffffffff0000:0x20000:rwx: the range 0xffffffffffff0000 + 0x20000 runs past 2^64\n")
        let huge = try PackageExecutable.run(["ept", "plan", "--map", "0:1T:rwx"])  // old code: minutes and gigabytes
        #expect(huge.status == 64)
        #expect(huge.stderr.hasPrefix("hv: error: with 4 KiB pages these maps need about 524289 page tables") && huge.stderr.contains("--huge-pages"))
        let fine = try PackageExecutable.run(["ept", "plan", "--map", "0:1T:rwx", "--huge-pages"])
        #expect(fine.status == 0 && fine.stdout.contains("mapping 1024 GiB"))
    }
}
