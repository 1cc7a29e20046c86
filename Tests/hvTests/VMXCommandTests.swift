import Foundation
import HVModel
import Testing

@Suite("hv vmx")
struct VMXCommandTests {
    @Test("plan: EPT, VPID, unrestricted guest and the preemption timer pass VM entry on Broadwell")
    func planBroadwell() throws {
        let r = try PackageExecutable.run(["vmx", "plan", "--profile", "broadwell-i7-5600u",
                                           "--enable", "ept,vpid,unrestricted-guest,preemption-timer"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("secondary processor-based VM-execution controls [VMCS 0x401e] = 0x000010aa"))
        #expect(r.stdout.contains("unrestricted guest"))
        #expect(r.stdout.contains("activate VMX-preemption timer"))
        #expect(r.stdout.contains("all pass; VMLAUNCH would enter the guest."))
    }

    @Test("plan: the same wishes on a Core 2 exit 1 naming the missing bits and capability MSRs")
    func planCore2Fails() throws {
        let r = try PackageExecutable.run(["vmx", "plan", "--profile", "core2-x6800",
                                           "--enable", "ept,vpid,unrestricted-guest,preemption-timer"])
        #expect(r.status == 1)
        #expect(!r.crashed)
        #expect(r.stderr.hasPrefix("hv: error: core2-x6800 cannot provide ept, preemption-timer, vpid, unrestricted-guest"))
        #expect(r.stdout.contains("This CPU cannot provide the configuration"))
        #expect(r.stdout.contains("preemption-timer: 'activate VMX-preemption timer' (pin-based VM-execution controls bit 6) is not supported: bit 38 of IA32_VMX_PINBASED_CTLS (0x481) is 0"))
        #expect(r.stdout.contains("ept: 'enable EPT' (secondary processor-based VM-execution controls bit 1) is not supported"))
        #expect(r.stdout.contains("pat: 'load IA32_PAT' (primary VM-exit controls bit 19)"))
    }

    @Test("plan: configuration mistakes (VPID 0, a host stack running past 2^64) are the configuration's, not the CPU's, and trap nothing")
    func planConfigurationMistakes() throws {
        let file = try PackageExecutable.temporaryDirectory().appendingPathComponent("plan.yaml")
        try Data("vpid-value: 0\nhost-stack-size: 18446744073709551600\nstructure-base: 0xFFFFFFFFFFFFF000\n".utf8).write(to: file)
        let r = try PackageExecutable.run(["vmx", "plan", "--profile", "broadwell-i7-5600u", "--config", file.path])
        #expect(r.status == 1)
        #expect(!r.crashed)
        #expect(r.stdout.contains("The configuration is invalid on any CPU (3 problems):"), "\(r.stdout)")
        #expect(!r.stdout.contains("This CPU cannot provide"))
        #expect(r.stdout.contains("host-stack-size: 18446744073709551600 bytes above the host stack's base 0xffffffff83000000 runs past 2^64"))
        #expect(r.stderr.hasPrefix("hv: error: the configuration is invalid: vpid, host-stack-size, structure-base (3 problems"), "\(r.stderr)")
    }

    @Test("plan: 'knobs on' names the I/O bitmap whatever ports it traps; an MSR file whose VMX_BASIC no CPU reports is refused on its line")
    func knobsOnAndMSRFile() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        let config = folder.appendingPathComponent("io.yaml")
        try Data("io: bitmap\ntrapped-ports: [0x60, \"0x70-0x71\"]\n".utf8).write(to: config)
        let plan = try PackageExecutable.run(["vmx", "plan", "--profile", "broadwell-i7-5600u", "--config", config.path])
        #expect(plan.status == 0)
        #expect(plan.stdout.split(separator: "\n").dropFirst().first?.contains("io-bitmap") == true, "\(plan.stdout.prefix(300))")
        let msrs = folder.appendingPathComponent("zero.msr")
        try Data("MAXPHYADDR 39\nIA32_VMX_BASIC 0\n".utf8).write(to: msrs)
        let zero = try PackageExecutable.run(["vmx", "plan", "--msr-file", msrs.path])
        #expect(zero.status == 64)
        #expect(zero.stderr == "hv: error: \(msrs.path):2: IA32_VMX_BASIC 0x0000000000000000: the VMCS region size (bits 44:32) is 0; processors report 1 to 4096 bytes (SDM A.1)\n")
    }

    @Test("plan --json parses, with seven control fields, a valid verdict and no problems")
    func planJSON() throws {
        let r = try PackageExecutable.run(["vmx", "plan", "--profile", "ivybridge-i5-3570", "--enable", "ept,vpid", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(object["valid"] as? Bool == true)
        let controls = try #require(object["controls"] as? [[String: Any]])
        #expect(controls.count == 7)
        #expect(controls.first?["field"] as? String == "pin-based VM-execution controls")
        #expect((object["entryFailures"] as? [Any])?.isEmpty == true)
        #expect((object["problems"] as? [Any])?.isEmpty == true)
        #expect((object["vmcs"] as? [Any])?.isEmpty == false)
    }

    @Test("plan --json on a failing CPU lists the problems and still exits 1")
    func planJSONFailure() throws {
        let r = try PackageExecutable.run(["vmx", "plan", "--profile", "core2-x6800", "--enable", "ept", "--json"])
        #expect(r.status == 1)
        let object = try #require(try JSONSerialization.jsonObject(with: Data(r.stdout.utf8)) as? [String: Any])
        #expect(object["valid"] as? Bool == false)
        let problems = try #require(object["problems"] as? [[String: Any]])
        #expect(problems.contains { $0["knob"] as? String == "ept" })
    }

    @Test("--msr-file round trip: a profile's text plans exactly like the profile")
    func msrFileRoundTrip() throws {
        let directory = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("broadwell.msr")
        try VMXProfile.broadwellI7_5600U.capabilities.text.write(to: file, atomically: true, encoding: .utf8)
        let arguments = ["--enable", "ept,vpid,unrestricted-guest,preemption-timer", "--json"]
        let fromFile = try PackageExecutable.run(["vmx", "plan", "--msr-file", file.path] + arguments)
        let fromProfile = try PackageExecutable.run(["vmx", "plan", "--profile", "broadwell-i7-5600u"] + arguments)
        #expect(fromFile.status == 0, "\(fromFile.stderr)")
        let a = try #require(try JSONSerialization.jsonObject(with: Data(fromFile.stdout.utf8)) as? [String: Any])
        let b = try #require(try JSONSerialization.jsonObject(with: Data(fromProfile.stdout.utf8)) as? [String: Any])
        #expect(NSDictionary(dictionary: a.filter { $0.key != "source" && $0.key != "processor" })
            == NSDictionary(dictionary: b.filter { $0.key != "source" && $0.key != "processor" }))
        let caps = try PackageExecutable.run(["vmx", "caps", "--msr-file", file.path])
        #expect(caps.status == 0)
        #expect(caps.stdout.contains("VMCS revision identifier 18"))
    }

    @Test("--msr-file: a malformed line is refused with its line number")
    func msrFileBadLine() throws {
        let directory = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let file = directory.appendingPathComponent("bad.msr")
        try "# Core 2\n0x480 0x001a040000000007\n0x999 0x1\n".write(to: file, atomically: true, encoding: .utf8)
        let r = try PackageExecutable.run(["vmx", "caps", "--msr-file", file.path])
        #expect(r.status == 64)
        #expect(r.stderr == "hv: error: \(file.path):3: '0x999' is not a VMX capability MSR (0x480-0x493 or a name such as IA32_VMX_BASIC)\n")
    }

    @Test("plan --config: YAML and JSON files set knobs and values; unknown keys are named")
    func configFiles() throws {
        let directory = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let yaml = directory.appendingPathComponent("vm.yaml")
        try """
            # a real-mode guest needs unrestricted guest
            unrestricted-guest: true
            guest-mode: real
            preemption-timer-tsc: 0x100000
            trapped-ports: ["0x3f8-0x3ff", 0x80]
            """.write(to: yaml, atomically: true, encoding: .utf8)
        let r = try PackageExecutable.run(["vmx", "plan", "--profile", "ivybridge-i5-3570", "--config", yaml.path])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("interval 1048576 TSC ticks = 32768 timer ticks"))
        #expect(r.stdout.contains("9 ports trapped"))

        let json = directory.appendingPathComponent("vm.json")
        try #"{"ept": false, "vpid": false, "pat": false, "efer": false, "io": "unconditional"}"#.write(to: json, atomically: true, encoding: .utf8)
        let j = try PackageExecutable.run(["vmx", "plan", "--profile", "core2-x6800", "--config", json.path, "--json"])
        #expect(j.status == 0, "\(j.stderr)")
        let object = try #require(try JSONSerialization.jsonObject(with: Data(j.stdout.utf8)) as? [String: Any])
        #expect((object["knobsOn"] as? [String])?.contains("unconditional-io") == true)

        try "ept: true\nturbo: on\n".write(to: yaml, atomically: true, encoding: .utf8)
        let bad = try PackageExecutable.run(["vmx", "plan", "--profile", "ivybridge-i5-3570", "--config", yaml.path])
        #expect(bad.status == 64)
        #expect(bad.stderr.contains("unknown key 'turbo'; valid keys: ept, vpid"))
    }

    @Test("plan: a non-canonical host RIP fails the 27.2.4 check with VM-instruction error 8, exit 1")
    func planEntryCheckFails() throws {
        let directory = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: directory) }
        let yaml = directory.appendingPathComponent("host.yml")
        try "host-entry: 0x0000900000000000\n".write(to: yaml, atomically: true, encoding: .utf8)
        let r = try PackageExecutable.run(["vmx", "plan", "--profile", "broadwell-i7-5600u", "--config", yaml.path])
        #expect(r.status == 1)
        #expect(r.stdout.contains("[host RIP = 0x900000000000]"))
        #expect(r.stdout.contains("-> VM-instruction error 8 (VM entry with invalid host-state field(s))"))
        #expect(r.stderr.hasPrefix("hv: error: VM entry would fail: SDM 27.2.4"))
    }

    @Test("explain-exit 48 --qualification 0x181 decodes an EPT violation")
    func explainEPTViolation() throws {
        let r = try PackageExecutable.run(["vmx", "explain-exit", "48", "--qualification", "0x181"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(r.stdout.contains("exit reason 48 (0x30): EPT violation"))
        #expect(r.stdout.contains("access: data read"))
        #expect(r.stdout.contains("the EPT entries allowed: nothing (not present)"))
        #expect(r.stdout.contains("guest-linear address valid; the access was to the translation of that linear address"))
        let byName = try PackageExecutable.run(["vmx", "explain-exit", "ept-violation", "--qualification", "0x181"])
        #expect(byName.stdout == r.stdout)
    }

    @Test("explain-exit: I/O qualification, a VM-entry failure field, and an unknown reason")
    func explainOthers() throws {
        let io = try PackageExecutable.run(["vmx", "explain-exit", "30", "--qualification", "0x3f80008"])
        #expect(io.status == 0)
        #expect(io.stdout.contains("0x3f8"))
        let failure = try PackageExecutable.run(["vmx", "explain-exit", "0x80000021"])
        #expect(failure.stdout.contains("VM-entry failure due to invalid guest state"))
        #expect(failure.stdout.contains("bit 31: VM-entry failure"))
        let bad = try PackageExecutable.run(["vmx", "explain-exit", "71"])
        #expect(bad.status == 64)
        #expect(bad.stderr.contains("unknown exit reason '71'"))
    }

    @Test("bad input: unknown profile and unknown knob name what is valid")
    func badInput() throws {
        let profile = try PackageExecutable.run(["vmx", "caps", "--profile", "pentium"])
        #expect(profile.status == 64)
        #expect(profile.stderr.contains("unknown profile 'pentium'; valid profiles: core2-x6800, ivybridge-i5-3570, broadwell-i7-5600u"))
        let knob = try PackageExecutable.run(["vmx", "plan", "--profile", "core2-x6800", "--enable", "ept,warp"])
        #expect(knob.status == 64)
        #expect(knob.stderr.contains("unknown knob 'warp' in --enable; valid knobs: ept, vpid, unrestricted-guest"))
        let neither = try PackageExecutable.run(["vmx", "plan"])
        #expect(neither.status == 64)
        #expect(neither.stderr.contains("give --profile NAME"))
    }

    @Test("profiles and caps describe the CPUs in words")
    func profilesAndCaps() throws {
        let profiles = try PackageExecutable.run(["vmx", "profiles"])
        #expect(profiles.status == 0)
        for name in ["core2-x6800", "ivybridge-i5-3570", "broadwell-i7-5600u"] { #expect(profiles.stdout.contains(name)) }
        #expect(profiles.stdout.contains("VirtualBox"))
        let caps = try PackageExecutable.run(["vmx", "caps", "--profile", "core2-x6800"])
        #expect(caps.status == 0)
        #expect(caps.stdout.contains("secondary processor-based VM-execution controls: not available: IA32_VMX_PROCBASED_CTLS bit 63"))
        #expect(caps.stdout.contains("must be 1: PE, NE, PG (0x80000021)"))
    }

    @Test("--help of every vmx subcommand", arguments: ["profiles", "caps", "plan", "explain-exit"])
    func help(subcommand: String) throws {
        let r = try PackageExecutable.run(["vmx", subcommand, "--help"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("USAGE: hv vmx \(subcommand)"))
    }
}
