import Foundation
import HVGuest
import Testing

/// Writes `program`'s code to a temporary file and returns its path.
private func imageFile(_ code: [UInt8], name: String = "guest.bin") throws -> String {
    let url = try PackageExecutable.temporaryDirectory().appendingPathComponent(name)
    try Data(code).write(to: url)
    return url.path
}

@Suite("hv command line")
struct HVCommandTests {
    @Test("hv demo prints the guest's greeting and the exit table, and exits 0", .needsKVM)
    func demo() throws {
        let result = try PackageExecutable.run(["demo"])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("Hello from a guest in 64-bit long mode"))
        #expect(result.stdout.contains("MMIO scratch register read back what the guest wrote."))
        #expect(result.stdout.contains("Goodbye."))
        for kind in ["io-out", "io-in", "mmio-read", "mmio-write", "hlt"] {
            #expect(result.stdout.contains("\n\(kind) "), "exit table lacks \(kind)")
        }
        #expect(result.stdout.contains("median µs"))
    }

    @Test("hv demo --serial file:PATH sends the guest's output to the file", .needsKVM)
    func demoSerialFile() throws {
        let path = try PackageExecutable.temporaryDirectory().appendingPathComponent("serial.txt").path
        let result = try PackageExecutable.run(["demo", "--serial", "file:\(path)"])
        #expect(result.status == 0)
        #expect(!result.stdout.contains("Hello from a guest"))
        let text = try String(contentsOfFile: path, encoding: .utf8)
        #expect(text.hasPrefix("Hello from a guest in 64-bit long mode"))
    }

    @Test("--append and --cmdline take a value that starts with a dash (kvm-unit-tests passes `-x ...`)")
    func dashValues() throws {
        for (flag, kernelFlag) in [("--append", "--multiboot"), ("--cmdline", "--kernel")] {
            let result = try PackageExecutable.run(["run", kernelFlag, "/nonexistent/kernel", flag, "-x test"])
            #expect(!result.stderr.contains("Missing value"), "\(flag): \(result.stderr)")
            #expect(result.status != 0 && result.stderr.contains("/nonexistent/kernel"), "\(flag): \(result.stderr)")
        }
    }

    @Test("--cpu: an unknown model or feature is a usage error naming it; a feature the host lacks is refused unless enforce=off", .needsKVM)
    func cpuModels() throws {
        let model = try PackageExecutable.run(["run", "--multiboot", "/nonexistent/kernel", "--cpu", "pentium"])
        #expect(model.status == 64 && model.stderr.contains("cpu: pentium is invalid; expected a model: host, max, qemu64"), "\(model.stderr)")
        let feature = try PackageExecutable.run(["run", "--multiboot", "/nonexistent/kernel", "--cpu", "qemu64,+warp"])
        #expect(feature.status == 64 && feature.stderr.contains("cpu: +warp is invalid"), "\(feature.stderr)")
        // VMX and SVM are never both there: one of them is missing on any host.
        let flat = try PackageExecutable.temporaryDirectory().appendingPathComponent("exit.bin")
        try Data([0xB8, 0x05, 0, 0, 0, 0xE7, 0xF4, 0xF4]).write(to: flat)  // mov eax, 5; out 0xF4, eax; hlt
        let both = try ["vmx", "svm"].map { try PackageExecutable.run(["run", flat.path, "--cpu", "host,+\($0)"]) }
        #expect(both.contains { $0.status != 11 && $0.stderr.contains("is not in its CPUID; enforce=off leaves it out instead") },
                "\(both.map(\.stderr))")
        let relaxed = try ["vmx", "svm"].map { try PackageExecutable.run(["run", flat.path, "--cpu", "host,+\($0),enforce=off"]) }
        #expect(relaxed.allSatisfy { $0.status == 11 }, "\(relaxed.map(\.stderr))")
    }

    @Test("hv info reports API version 12 in words and in JSON", .needsKVM)
    func info() throws {
        let text = try PackageExecutable.run(["info"])
        #expect(text.status == 0)
        #expect(text.stdout.contains("API version      12"))
        #expect(text.stdout.contains("KVM_CAP_IMMEDIATE_EXIT"))
        let json = try PackageExecutable.run(["info", "--json"])
        #expect(json.status == 0)
        let object = try JSONSerialization.jsonObject(with: Data(json.stdout.utf8)) as? [String: Any]
        #expect(object?["apiVersion"] as? Int == 12)
        #expect((object?["capabilities"] as? [[String: Any]])?.isEmpty == false)
    }

    @Test("hv run's exit status follows the guest's debug-exit value: (v << 1) | 1", .needsKVM)
    func runDebugExitStatus() throws {
        let program = try GuestProgram.realMode { a in
            a.printString("flat binary\n")
            a.debugExit(code: 0x21)
        }
        let path = try imageFile(program.code)
        let result = try PackageExecutable.run(["run", path, "--mode", "real", "--mem", "1M"])
        #expect(result.status == (0x21 << 1) | 1)
        #expect(result.stdout == "flat binary\n")
        #expect(result.stderr.contains("debug-exit port"))
    }

    @Test("hv run of a long-mode image that halts exits 0 and --stats prints the table", .needsKVM)
    func runHalts() throws {
        let program = try GuestProgram.longMode { a in
            a.out(0x80, Register8.al)
            a.hlt()
        }
        let result = try PackageExecutable.run(["run", try imageFile(program.code), "--stats"])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stderr.contains("halted"))
        #expect(result.stderr.contains("io-out"))
    }

    @Test("a triple-faulting image exits 2 with the reason, and the host stays healthy", .needsKVM)
    func runTripleFault() throws {
        let program = try GuestProgram.longMode { a in a.ud2() }
        let result = try PackageExecutable.run(["run", try imageFile(program.code)])
        #expect(result.status == 2)
        #expect(!result.crashed)
        #expect(result.stderr.contains("triple-faulted") || result.stderr.contains("could not emulate"))
        // Where it stopped, with the instruction bytes read through the guest's page tables.
        #expect(result.stderr.contains("hv: vCPU 0 stopped at RIP 0x100000 (64-bit"), "stderr: \(result.stderr)")
        #expect(result.stderr.contains("): 0f 0b"), "stderr: \(result.stderr)")
    }

    @Test("a guest that writes \"Shutdown\" to port 0x8900 (kvm-unit-tests' fallback) powers off: status 0", .needsKVM)
    func runPowerOff() throws {
        let program = try GuestProgram.longMode { a in
            a.mov(Register16.dx, 0x8900)
            for byte in "Shutdown".utf8 {
                a.mov(Register8.al, Immediate(byte))
                a.out(Register16.dx, Register8.al)
            }
            a.debugExit(code: 7)                                      // not reached
        }
        let result = try PackageExecutable.run(["run", try imageFile(program.code)])
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stderr.contains("the guest requested a system shutdown"), "stderr: \(result.stderr)")
    }

    @Test("SIGINT and SIGTERM stop the guest cleanly: the closing line and the --stats table, then status 128 + signal", .needsKVM,
          arguments: [SIGINT, SIGTERM])
    func signalStopsCleanly(_ signal: Int32) throws {
        let program = try GuestProgram.longMode { a in
            let again = a.label()
            a.bind(again)
            a.out(0x80, Register8.al)
            a.jmp(again)
        }
        let (process, out, err) = try PackageExecutable.start(PackageExecutable.binDirectory.appendingPathComponent("hv"),
                                                              ["run", try imageFile(program.code), "--stats"])
        let errors = StreamBox()
        let reader = Thread { [err] in
            while case let chunk = err.fileHandleForReading.availableData, !chunk.isEmpty { errors.append(chunk) }
            errors.finish()
        }
        reader.start()
        Thread.sleep(forTimeInterval: 1)
        #expect(process.isRunning, "the guest loops until the signal")
        kill(process.processIdentifier, signal)
        process.waitUntilExit()
        errors.waitForEnd()
        _ = out.fileHandleForReading.readDataToEndOfFile()
        let name = signal == SIGINT ? "SIGINT" : "SIGTERM"
        #expect(process.terminationReason == .exit, "hv exits by itself rather than dying of the signal")
        #expect(process.terminationStatus == 128 + signal)
        #expect(errors.text.contains("hv: \(name): stopping the guest"), "stderr: \(errors.text)")
        #expect(errors.text.contains("the host asked the VM to stop after"))
        #expect(errors.text.contains("io-out") && errors.text.contains("median µs"), "the --stats table")
    }

    @Test("a stop on unmapped MMIO reports the RIP and instruction bytes like any crash, with a --mode real hint unless --mode was given", .needsKVM)
    func unmappedMMIOCrashSite() throws {
        let program = try GuestProgram.longMode { a in
            a.mov(Register64.rbx, 0xE000_0000)  // in the 3-4 GiB hole: no RAM, no device
            a.mov(.at(Register64.rbx), Register8.al)
            a.hlt()
        }
        let path = try imageFile(program.code)
        let result = try PackageExecutable.run(["run", path])
        #expect(result.status == 2)
        #expect(result.stderr.contains("wrote to 0xe0000000, where there is neither RAM nor a device"), "stderr: \(result.stderr)")
        #expect(result.stderr.contains("hv: vCPU 0 stopped at RIP 0x") && result.stderr.contains("(64-bit,"), "stderr: \(result.stderr)")
        // KVM has finished the write when it exits, so RIP is past it, at the HLT (0xf4).
        #expect(result.stderr.contains("RSP 0x80000): f4 "), "the instruction bytes at RIP")
        #expect(result.stderr.contains("hint: a flat image starts in 64-bit long mode unless --mode real"))
        let explicit = try PackageExecutable.run(["run", path, "--mode", "long"])
        #expect(explicit.status == 2 && !explicit.stderr.contains("hint:"))
    }

    @Test("a guest that never stops is ended by --max-exits and by --timeout with status 4", .needsKVM)
    func runLimits() throws {
        let program = try GuestProgram.longMode { a in
            let again = a.label()
            a.bind(again)
            a.out(0x80, Register8.al)
            a.jmp(again)
        }
        let path = try imageFile(program.code)
        let exits = try PackageExecutable.run(["run", path, "--max-exits", "100"])
        #expect(exits.status == 4)
        #expect(exits.stderr.contains("exit limit"))
        let timeout = try PackageExecutable.run(["run", path, "--timeout", "0.3"])
        #expect(timeout.status == 4)
        #expect(timeout.stderr.contains("time limit"))
    }

    @Test("bad input gets a one-line error naming the problem, status 64, and no crash", arguments: [
        (["run", "/nonexistent/guest.bin"], "no such file"),
        (["run", "EMPTY"], "is empty"),
        (["run", "SMALL", "--mem", "0"], "--mem: 0 is invalid"),
        (["run", "SMALL", "--mem", "5000"], "multiple of 4096"),
        (["run", "SMALL", "--mem", "18446744073709551615"], "4096 (4 KiB) to 1 TiB"),  // 2^64 - 1: no trap rounding it up
        (["run", "SMALL", "--mem", "0xFFFFFFFFFFFFF000"], "4096 (4 KiB) to 1 TiB"),
        (["run", "SMALL", "--mem", "16777215T"], "4096 (4 KiB) to 1 TiB"),
        (["run", "SMALL", "--mem", "0x1001"], "--mem: 0x1001 (4097 bytes) is invalid; expected a multiple of 4096 (4 KiB pages), e.g. 8192"),
        // Argument errors are one line too, naming the value and the help to read; negative
        // numbers are values, not "missing".
        (["run", "SMALL", "--mem", "-1"], "The value '-1' is invalid for '--mem <size>' (see 'hv run --help')"),
        (["run", "SMALL", "--cpus", "-2"], "--cpus: -2 is invalid; expected at least 1"),
        (["run", "SMALL", "--max-exits", "-5"], "The value '-5' is invalid for '--max-exits <count>'"),
        (["run", "SMALL", "--entry", "zz"], "The value 'zz' is invalid for '--entry <address>'"),
        (["run", "SMALL", "--bogus"], "Unknown option '--bogus'"),
        (["vmx", "plan", "--profile", "nonesuch"], "nonesuch"),
        // File errors in words, not Foundation's "NSCocoaErrorDomain error 256".
        (["vmx", "plan", "--msr-file", "/nonexistent/msr"], "--msr-file /nonexistent/msr: cannot read the file (No such file or directory)"),
        (["vmx", "plan", "--profile", "broadwell-i7-5600u", "--config", "/"], "--config /: cannot read the file (Is a directory)"),
        (["tpm", "guest", "/nonexistent/dir/guest.bin"], "/nonexistent/dir/guest.bin: No such file or directory"),
        (["run", "SMALL", "--cpus", "0"], "--cpus: 0 is invalid"),
        (["run", "BIG", "--mem", "64K", "--mode", "real"], "larger than guest memory"),
        (["run", "SMALL", "--entry", "0x40000000"], "entry"),
        (["run", "SMALL", "--load-address", "0xFFFFFFFFFFFFF000"], "--load-address: a program of 1 byte at 0xFFFFFFFFFFFFF000 ends at 0xFFFFFFFFFFFFF001, past the end of guest memory (--mem 16777216 bytes)"),
        (["run", "SMALL", "--timeout=0"], "--timeout: 0.0 is invalid"),
        (["run", "SMALL", "--timeout", "18446744073709551615"], "at most 1e9"),  // traps in a deadline on old code
        (["run", "SMALL", "--timeout", "1e308"], "at most 1e9"),
        (["run", "SMALL", "--timeout", "nan"], "--timeout: nan is invalid"),
        (["run", "SMALL", "--cpus", "9223372036854775807"], "--cpus: 9223372036854775807 is invalid; expected at most 255"),
        (["run", "SMALL", "--entry", "0xFFFFFFFFFFFFFFFF"], "entry"),
        (["run", "SMALL", "--irqchip", "kernel", "--vsock", "18446744073709551615,/tmp/hv-test.sock"], "18446744073709551615 does not fit in 32 bits; use 3 ... 4294967294"),
        (["run", "SMALL", "--irqchip", "kernel", "--vsock", "2,/tmp/hv-test.sock"], "guest CID: 2 is reserved"),
        (["run", "SMALL", "--irqchip", "kernel", "--balloon", "16777215T"], "is not less than the guest's RAM"),
    ])
    func badInput(arguments: [String], message: String) throws {
        let directory = try PackageExecutable.temporaryDirectory()
        let files = ["EMPTY": Data(), "SMALL": Data([0xF4]), "BIG": Data(count: 128 << 10)]
        let resolved = try arguments.map { argument -> String in
            guard let data = files[argument] else { return argument }
            let url = directory.appendingPathComponent(argument.lowercased() + ".bin")
            try data.write(to: url)
            return url.path
        }
        let result = try PackageExecutable.run(resolved)
        #expect(result.status == 64, "stdout: \(result.stdout) stderr: \(result.stderr)")
        #expect(!result.crashed)
        let lines = result.stderr.split(separator: "\n")
        #expect(lines.count == 1, "expected one line, got: \(result.stderr)")
        #expect(result.stderr.hasPrefix("hv: error: "))
        #expect(result.stderr.contains(message), "stderr: \(result.stderr)")
    }

    @Test("every subcommand's --help explains itself", arguments: [["--help"], ["demo", "--help"], ["run", "--help"], ["info", "--help"]])
    func help(arguments: [String]) throws {
        let result = try PackageExecutable.run(arguments)
        #expect(result.status == 0)
        #expect(result.stdout.contains("USAGE"))
        if arguments.first == "run" {
            #expect(result.stdout.contains("--mode"))
            #expect(result.stdout.contains("(v << 1) | 1"))
        }
    }

    @Test("an unknown log category is rejected with the valid names")
    func logCategory() throws {
        let result = try PackageExecutable.run(["info", "--log-category", "nonsense"])
        #expect(result.status != 0)
        #expect(result.stderr.contains("kvm, vcpu, exits"))
    }
}

@Suite("hv without KVM")
struct HVWithoutKVMTests {
    @Test("hv info and hv demo say clearly that KVM is missing, exit 70, and do not crash",
          arguments: [["info"], ["demo"]])
    func missingKVM(arguments: [String]) throws {
        let result = try PackageExecutable.run(arguments, environment: ["HV_KVM_DEVICE": "/nonexistent/kvm"])
        #expect(result.status == 70)
        #expect(!result.crashed)
        #expect(result.stderr == "hv: error: /nonexistent/kvm does not exist: this host offers no KVM (load the kvm module or run on a machine with virtualization)\n")
    }
}

@Suite("hv logging")
struct HVLoggingTests {
    @Test("--log-level debug --log-category loader prints the loader's lines and nothing from other categories", .needsKVM)
    func categories() throws {
        let result = try PackageExecutable.run(["demo", "--log-level", "debug", "--log-category", "loader"])
        #expect(result.status == 0)
        #expect(result.stderr.contains("DEBUG loader: loaded program"))
        #expect(!result.stderr.contains(" vcpu: "))
    }

    @Test("HV_LOG_LEVEL and HV_LOG_CATEGORIES set the same from the environment", .needsKVM)
    func environment() throws {
        let result = try PackageExecutable.run(["demo"], environment: ["HV_LOG_LEVEL": "trace", "HV_LOG_CATEGORIES": "exits"])
        #expect(result.status == 0)
        #expect(result.stderr.contains("TRACE exits: vcpu0 rip=0x"))
        // One readable line per exit: hex operands, no Swift dumps or host pointers.
        #expect(result.stderr.contains(" io-out port=0x3f8 size=1 value=0x"))
        #expect(!result.stderr.contains("HVModel.") && !result.stderr.contains("base: 0x"))
        #expect(!result.stderr.contains("loader:"))
    }
}

@Suite("hv platform")
struct HVPlatformTests {
    @Test("hv acpi dump prints every table with its signature and an RSDP in the BIOS area")
    func acpiDump() throws {
        let result = try PackageExecutable.run(["acpi", "dump", "--cpus", "2"])
        #expect(result.status == 0)
        for signature in ["RSDP", "XSDT", "FACP", "FACS", "APIC", "DSDT"] {
            #expect(result.stdout.contains(signature), "missing \(signature)")
        }
    }

    @Test("hv run's PC platform answers a guest's fw_cfg, RTC and PCI probes", .needsKVM)
    func platformProbes() throws {
        // Reads fw_cfg's CPU count (key 0x05), CMOS register 0x0B and PCI 00:00.0's vendor ID,
        // and leaves with (cpus + 0x100 * (vendor == 0x8086) + 0x200 * (regB has 24-hour bit)).
        let program = try GuestProgram.longMode { a in
            a.mov(Register16.dx, 0x510); a.mov(Register16.ax, 0x05); a.out(Register16.dx, Register16.ax)
            a.mov(Register16.dx, 0x511); a.in(Register8.al, Register16.dx)
            a.mov(Register32.ebx, 0); a.mov(Register8.bl, Register8.al)
            a.mov(Register32.eax, 0x8000_0000); a.mov(Register16.dx, 0xCF8); a.out(Register16.dx, Register32.eax)
            a.mov(Register16.dx, 0xCFC); a.in(Register16.ax, Register16.dx)
            let notIntel = a.label(), rtc = a.label()
            a.cmp(Register16.ax, 0x8086); a.jne(notIntel); a.or(Register32.ebx, 0x100); a.bind(notIntel)
            a.mov(Register8.al, 0x0B); a.out(0x70, Register8.al); a.in(Register8.al, 0x71)
            a.test(Register8.al, 0x02); a.jz(rtc); a.or(Register32.ebx, 0x200); a.bind(rtc)
            a.mov(Register32.eax, Register32.ebx)
            a.out(0xF4, Register32.eax)
        }
        let url = try PackageExecutable.temporaryDirectory().appendingPathComponent("probe.bin")
        try Data(program.code).write(to: url)
        let result = try PackageExecutable.run(["run", url.path, "--cpus", "1"])
        // code 0x301: one CPU, an Intel host bridge, 24-hour RTC; status (code << 1 | 1) & 0xFF.
        #expect(result.stderr.contains("the guest wrote 769 (0x301)"), "stderr: \(result.stderr)")
        let none = try PackageExecutable.run(["run", url.path, "--platform", "none"])
        // Without the platform every probe reads an open bus (all-ones): 0xFF CPUs, no host bridge,
        // and bit 1 of "register B" set.
        #expect(none.stderr.contains("the guest wrote 767 (0x2ff)"), "stderr: \(none.stderr)")
    }
}
