// hv serve's alerts (--alerts FILE): rules over the VMs' polled figures (a threshold, with firing
// and resolved) and over their lifecycle events (a crash), each delivered to a webhook (an HTTP
// POST of JSON, through AsyncHTTPClient) or, without one, to the log; every alert is also an
// `alert.firing` / `alert.resolved` event on the event stream.
import AsyncHTTPClient
import Foundation
import Logging
import NIOCore
import Yams

/// One rule of the alerts file.
public struct AlertRule: Codable, Sendable, Equatable {
    public var name: String
    /// A figure of `vm.metrics` events: exitsPerSecond, exits, rssBytes, p99Nanoseconds.KIND.
    public var metric: String?
    /// Fires when the figure is above this, resolves when it is at or below it again.
    public var above: Double?
    /// Or: an event type that fires the rule each time (vm.crashed, vm.restarting, ...).
    public var event: String?
    /// Only this VM (default: every VM).
    public var vm: String?
    /// Where the alert is POSTed as JSON; without one, it is logged.
    public var webhook: String?

    static let fields = ["name", "metric", "above", "event", "vm", "webhook"]
}

/// What a webhook receives.
public struct AlertNotice: Codable, Sendable, Equatable {
    public var rule: String
    public var vm: String
    /// firing, resolved, or event (a lifecycle rule).
    public var state: String
    public var metric: String?
    public var value: Double?
    public var threshold: Double?
    public var event: String?
    public var message: String
    public var time: String
}

public actor AlertEngine {
    public let rules: [AlertRule]
    private let events: EventBus
    private var firing: Set<String> = []  // "rule\u{0}vm"
    private let log = Logger(label: "hv.api")
    /// Webhook deliveries that failed (for the closing line and tests).
    public private(set) var failedDeliveries = 0
    public private(set) var deliveries = 0

    public init(rules: [AlertRule], events: EventBus) {
        self.rules = rules
        self.events = events
    }

    /// Reads an alerts file (YAML or JSON: `rules:` and a list), checking each rule.
    public static func load(file path: String) throws(DaemonError) -> [AlertRule] {
        guard let data = FileManager.default.contents(atPath: path) else { throw .badRequest("--alerts \(path): cannot be read") }
        let parsed: Any?
        do { parsed = try Yams.load(yaml: String(decoding: data, as: UTF8.self)) } catch {
            throw .badRequest("--alerts \(path): not valid YAML or JSON: \(String("\(error)".split(separator: "\n").first ?? ""))")
        }
        guard let top = parsed as? [String: Any], let list = top["rules"] as? [[String: Any]], top.keys.sorted() == ["rules"] else {
            throw .badRequest("--alerts \(path): expected `rules:` with a list of rules")
        }
        var rules: [AlertRule] = []
        for (index, fields) in list.enumerated() {
            let place = "--alerts \(path): rules[\(index)]"
            if let unknown = fields.keys.sorted().first(where: { !AlertRule.fields.contains($0) }) {
                throw .badRequest("\(place): \(unknown): unknown field; a rule has \(AlertRule.fields.joined(separator: ", "))")
            }
            let rule: AlertRule
            do { rule = try JSONDecoder().decode(AlertRule.self, from: JSONSerialization.data(withJSONObject: fields)) } catch {
                throw .badRequest("\(place): \(error)")
            }
            guard !rule.name.isEmpty else { throw .badRequest("\(place): name: empty") }
            guard (rule.metric != nil && rule.above != nil && rule.event == nil) || (rule.event != nil && rule.metric == nil && rule.above == nil) else {
                throw .badRequest("\(place) (\(rule.name)): give either metric and above, or event")
            }
            if let webhook = rule.webhook, !(webhook.hasPrefix("http://") || webhook.hasPrefix("https://")) || URL(string: webhook) == nil {
                throw .badRequest("\(place) (\(rule.name)): webhook: '\(webhook)' is not an http(s) URL")
            }
            rules.append(rule)
        }
        return rules
    }

    /// Follows the event stream until it ends (the daemon stops).
    public func run() async {
        for await event in events.subscribe() {
            await consider(event)
        }
    }

    func consider(_ event: VMEvent) async {
        guard !event.type.hasPrefix("alert.") else { return }
        for rule in rules where rule.vm == nil || rule.vm == event.vm {
            if let type = rule.event, type == event.type {
                await notify(rule, AlertNotice(rule: rule.name, vm: event.vm, state: "event", event: type,
                                               message: "\(event.vm): \(type): \(event.message)", time: event.time))
            } else if let metric = rule.metric, let threshold = rule.above, event.type == "vm.metrics", let value = event.values?[metric] {
                let key = rule.name + "\u{0}" + event.vm
                if value > threshold, !firing.contains(key) {
                    firing.insert(key)
                    await notify(rule, AlertNotice(rule: rule.name, vm: event.vm, state: "firing", metric: metric, value: value, threshold: threshold,
                                                   message: "\(event.vm): \(metric) is \(value), above \(threshold)", time: event.time))
                } else if value <= threshold, firing.contains(key) {
                    firing.remove(key)
                    await notify(rule, AlertNotice(rule: rule.name, vm: event.vm, state: "resolved", metric: metric, value: value, threshold: threshold,
                                                   message: "\(event.vm): \(metric) is \(value), back at or below \(threshold)", time: event.time))
                }
            }
        }
    }

    private func notify(_ rule: AlertRule, _ notice: AlertNotice) async {
        events.publish(notice.state == "resolved" ? "alert.resolved" : "alert.firing", vm: notice.vm, message: "\(rule.name): \(notice.message)")
        guard let webhook = rule.webhook else {
            log.warning("alert \(rule.name) \(notice.state): \(notice.message)")
            return
        }
        do {
            var request = HTTPClientRequest(url: webhook)
            request.method = .POST
            request.headers.add(name: "Content-Type", value: "application/json")
            request.headers.add(name: "User-Agent", value: "hv-serve")
            request.body = .bytes(ByteBuffer(data: try JSONEncoder().encode(notice)))
            let response = try await HTTPClient.shared.execute(request, timeout: .seconds(5))
            _ = try? await response.body.collect(upTo: 64 << 10)
            guard (200..<300).contains(response.status.code) else {
                throw DaemonError(status: Int(response.status.code), message: "answered \(response.status.code)")
            }
            deliveries += 1
        } catch {
            failedDeliveries += 1
            log.error("alert \(rule.name): webhook \(webhook): \(error)")
            events.publish("alert.undelivered", vm: notice.vm, message: "\(rule.name): webhook \(webhook): \(error)")
        }
    }
}
