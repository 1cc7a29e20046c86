// `hv acpi dump`: the ACPI tables HV gives a guest, in acpidump's style.
import ArgumentParser
import HVCore

struct ACPI: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "acpi",
        abstract: "Inspect the ACPI tables HV builds for a guest.",
        subcommands: [Dump.self])

    struct Dump: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print the RSDP, XSDT, FADT, FACS, MADT and DSDT a VM would get: each header decoded (checksums checked), then the bytes in hex.")

        @Option(name: .long, help: "Number of vCPUs (one MADT Local APIC entry each).")
        var cpus: Int = 1

        @Flag(name: .long, help: "Include the TPM (MSFT0101 at 0xFED40000) in the DSDT.")
        var tpm = false

        func validate() throws {
            // The SDK's check, in the flag's words.
            do { try ACPIConfiguration(cpuCount: cpus).validate() } catch {
                throw ValidationError("--cpus \(cpus) is invalid; expected \(error.expected).")
            }
        }

        func run() throws {
            print(try ACPITables.pc(cpuCount: cpus, tpm: tpm).dump(), terminator: "")
        }
    }
}
