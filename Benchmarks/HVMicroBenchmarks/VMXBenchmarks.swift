// VMX planning: reconcile a configuration's controls against a CPU's capability MSRs and run the
// full VM-entry check set on the VMCS it gives (issue 3: under 20 µs per configuration).
import Benchmark
import HVModel

func registerVMXBenchmarks() {
    var configuration = VMXConfiguration()
    for knob in ["ept", "vpid", "unrestricted-guest", "preemption-timer"] { _ = configuration.set(knob, true) }
    let broadwell = VMXProfile.broadwellI7_5600U.capabilities

    // What `hv vmx plan --profile broadwell-i7-5600u --enable ept,vpid,unrestricted-guest,preemption-timer` does.
    Benchmark("VMX plan: reconcile + VM-entry checks, Broadwell, ept+vpid+unrestricted+timer") { benchmark in
        for _ in benchmark.scaledIterations {
            let plan = try configuration.plan(for: broadwell)
            precondition(plan.entryFailures.isEmpty)
            blackHole(plan)
        }
    }

    // The two halves on their own: the seven control fields (SDM A.3-A.5) and the 105 checks (27.2-27.3).
    let requests = [ControlRequest(required: 0x49), ControlRequest(required: 0x9000_0080, forbidden: 0x1_8000),
                    ControlRequest(required: 0xA2, optional: 0x1008), ControlRequest(), ControlRequest(required: 0x3C_0200),
                    ControlRequest(), ControlRequest(required: 0xC200)]
    Benchmark("VMX reconcile: seven control fields, Broadwell") { benchmark in
        for _ in benchmark.scaledIterations {
            for field in VMXControlField.allCases { blackHole(try broadwell.reconcile(field, requests[field.rawValue])) }
        }
    }

    let vmcs = try! configuration.plan(for: broadwell).vmcs
    let validator = VMEntryValidator(capabilities: broadwell)
    Benchmark("VMX VM-entry checks: a planned VMCS, Broadwell") { benchmark in
        for _ in benchmark.scaledIterations { blackHole(validator.validate(vmcs)) }
    }
}
