// Which local APICs an interrupt message reaches (SDM 11.6.2 "Determining IPI Destination",
// 11.6.2.3 "Broadcast/Self Delivery Mode", 11.6.2.4 "Lowest Priority Delivery Mode", 11.12.10).

/// Resolves a message's destination against a set of local APICs, for a monitor that owns them
/// (split irqchip, bare metal). APICs are identified by their index in the collection.
public enum APICRouting {
    /// Calls `body` with the index of every APIC `message` reaches, lowest index first.
    ///
    /// Shorthands need the sender's index (`sender`; nil for I/O APIC and MSI messages, where
    /// shorthands do not exist). Lowest-priority messages reach one APIC: among those the
    /// destination selects, the one with the lowest arbitration priority (APR), ties to the lowest
    /// index (SDM 11.6.2.4 leaves the tie-break to the implementation; focus processors are not
    /// modelled).
    public static func forEachTarget<APICs: RandomAccessCollection<LocalAPIC>>(
        of message: APICInterruptMessage, sender: APICs.Index?, among apics: APICs, _ body: (APICs.Index) -> Void
    ) {
        if message.deliveryMode == .lowestPriority && message.shorthand != .selfOnly {
            var best: APICs.Index?
            var bestPriority = UInt8.max
            for index in apics.indices where selects(message, index, sender: sender, apics[index]) {
                let priority = apics[index].arbitrationPriority
                if best == nil || priority < bestPriority {
                    best = index
                    bestPriority = priority
                }
            }
            if let best { body(best) }
            return
        }
        for index in apics.indices where selects(message, index, sender: sender, apics[index]) { body(index) }
    }

    /// Whether `message` from `sender` selects the APIC at `index`, before lowest-priority arbitration.
    static func selects<Index: Equatable>(
        _ message: APICInterruptMessage, _ index: Index, sender: Index?, _ apic: LocalAPIC
    ) -> Bool {
        switch message.shorthand {
        case .none: apic.matches(destinationMode: message.destinationMode, destination: message.destination)
        case .selfOnly: index == sender
        case .allIncludingSelf: apic.mode != .disabled
        case .allExcludingSelf: apic.mode != .disabled && index != sender
        }
    }

    /// Delivers `message` to every APIC it reaches and calls `body` with each index and what the
    /// APIC did with it (NMI, INIT and SIPI come back for the caller to act on).
    public static func deliver(
        _ message: APICInterruptMessage, sender: Int?, to apics: inout [LocalAPIC],
        _ body: (Int, APICAcceptance) -> Void
    ) {
        var targets: UInt64 = 0
        var overflow: [Int] = []
        forEachTarget(of: message, sender: sender, among: apics) { index in
            if index < 64 { targets |= 1 << UInt64(index) } else { overflow.append(index) }
        }
        while targets != 0 {
            let index = targets.trailingZeroBitCount
            targets &= targets - 1
            body(index, apics[index].accept(message))
        }
        for index in overflow { body(index, apics[index].accept(message)) }
    }
}
