// hv serve's HTTP API (Resources/daemon-api.yaml, served at /openapi.yaml): VMs, their actions,
// statistics, console, events, audit log and Prometheus metrics, behind bearer tokens with roles.
import Foundation
import HTTPTypes
import HVManagement
import Hummingbird
import Logging
import NIOCore
import Prometheus

/// The request context: Hummingbird's, and who is calling once the token is checked.
public struct DaemonRequestContext: RequestContext {
    public var coreContext: CoreRequestContextStorage
    public var principal: Principal?
    /// Set by a handler for the audit log: what a refused call was told.
    public init(source: Source) { coreContext = .init(source: source) }

    /// Throws 401 without a valid token, 403 when its role is below `role`.
    func require(_ role: Role, for request: Request) throws {
        guard let principal else {
            throw HTTPError(.unauthorized, headers: [.wwwAuthenticate: "Bearer"],
                            message: "a bearer token is required (Authorization: Bearer TOKEN)")
        }
        guard principal.role >= role else {
            throw HTTPError(.forbidden, message: "token '\(principal.name)' has role \(principal.role.rawValue); \(request.method) \(request.uri.path) needs \(role.rawValue)")
        }
    }
}

/// Authenticates every request, and writes every state-changing one to the audit log with its
/// answer, refusals included.
struct AuthenticateAndAudit: RouterMiddleware {
    typealias Context = DaemonRequestContext
    let tokens: TokenStore
    let audit: AuditLog

    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        var context = context
        if let header = request.headers[.authorization], header.hasPrefix("Bearer ") {
            context.principal = tokens.authenticate(String(header.dropFirst("Bearer ".count)))
        }
        let changes = request.method != .get && request.method != .head && request.method != .options
        let action = "\(request.method) \(request.uri.path)"
        do {
            let response = try await next(request, context)
            if changes { audit.record(who: context.principal, action: action, status: Int(response.status.code), result: "ok") }
            return response
        } catch let error as HTTPError {
            if changes { audit.record(who: context.principal, action: action, status: Int(error.status.code), result: error.body ?? error.status.reasonPhrase) }
            throw error
        } catch {
            if changes { audit.record(who: context.principal, action: action, status: 500, result: "\(error)") }
            throw error
        }
    }
}

public struct DaemonServer {
    /// The OpenAPI document and the dashboard: Resources/, empty if the package's resources were
    /// not installed beside the program.
    public static let openAPIDocument = resource("daemon-api", "yaml")
    public static let dashboard = resource("dashboard", "html")

    private static func resource(_ name: String, _ type: String) -> String {
        guard let url = Bundle.module.url(forResource: name, withExtension: type),
              let text = try? String(contentsOf: url, encoding: .utf8) else { return "" }
        return text
    }

    let supervisor: Supervisor
    let events: EventBus
    let tokens: TokenStore
    let audit: AuditLog
    let history: HistoryStore
    let registry: PrometheusCollectorRegistry

    public init(supervisor: Supervisor, events: EventBus, tokens: TokenStore, audit: AuditLog, history: HistoryStore,
                registry: PrometheusCollectorRegistry = PrometheusCollectorRegistry()) {
        self.registry = registry
        self.supervisor = supervisor
        self.events = events
        self.tokens = tokens
        self.audit = audit
        self.history = history
    }

    public func makeRouter() -> Router<DaemonRequestContext> {
        let router = Router(context: DaemonRequestContext.self)
        router.middlewares.add(NotFoundMessage(routes: OpenAPIRoutes(document: Self.openAPIDocument)))
        // Every request's count and duration by route and status (http_server_request_duration_seconds).
        router.middlewares.add(MetricsMiddleware())
        router.middlewares.add(AuthenticateAndAudit(tokens: tokens, audit: audit))
        let supervisor = self.supervisor, events = self.events, audit = self.audit, history = self.history, registry = self.registry

        router.get("/") { _, _ in Self.html(Self.dashboard) }
        router.get("/openapi.yaml") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml"], body: .init(byteBuffer: ByteBuffer(string: Self.openAPIDocument)))
        }
        router.get("/v1/health") { _, _ in
            // Liveness for supervisors and load balancers: no token, no VM detail.
            Health(status: "ok", vms: await supervisor.count)
        }
        router.get("/metrics") { request, context in
            try context.require(.viewer, for: request)
            let vms = await supervisor.list()
            var statistics: [String: StatisticsReport] = [:]
            for vm in vms { if let report = try? await supervisor.statistics(of: vm.name) { statistics[vm.name] = report } }
            return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4"],
                            body: .init(byteBuffer: ByteBuffer(string: PrometheusText.render(vms, statistics: statistics) + registry.emitToString())))
        }
        router.get("/v1/vms") { request, context in
            try context.require(.viewer, for: request)
            return await supervisor.list()
        }
        router.post("/v1/vms") { request, context in
            try context.require(.admin, for: request)
            var request = request
            let body = try await Self.collect(&request, context: context)
            let yaml = request.headers[.contentType].map { $0.contains("yaml") } ?? false
            let definition: VMDefinition
            do throws(VMDefinitionError) { definition = try VMDefinition.decode(Data(buffer: body), yaml: yaml) } catch {
                throw HTTPError(.badRequest, message: error.description)
            }
            let status = try await Self.answering { () async throws(DaemonError) in try await supervisor.create(definition, fromAPI: true) }
            return try EditedResponse(status: .created, headers: [.location: "/v1/vms/\(definition.name)"], response: status)
        }
        router.get("/v1/vms/{name}") { request, context in
            try context.require(.viewer, for: request)
            let name = try context.parameters.require("name")
            guard let status = await supervisor.status(of: name) else { throw HTTPError(.notFound, message: "no VM named '\(name)'") }
            return status
        }
        router.delete("/v1/vms/{name}") { request, context in
            try context.require(.admin, for: request)
            let name = try context.parameters.require("name")
            try await Self.answering { () async throws(DaemonError) in try await supervisor.delete(name) }
            return Response(status: .noContent)
        }
        router.post("/v1/vms/{name}/{action}") { request, context in
            try context.require(.operator, for: request)
            let name = try context.parameters.require("name"), action = try context.parameters.require("action")
            return try await Self.answering { () async throws(DaemonError) -> VMStatus in
                switch action {
                case "start":
                    try await supervisor.start(name)
                    return await supervisor.status(of: name)!
                case "stop": return try await supervisor.stop(name)
                case "pause", "resume", "reset": return try await supervisor.forward(action, to: name)
                default: throw DaemonError(status: 404, message: "no action '\(action)'; use start, stop, pause, resume or reset")
                }
            }
        }
        router.get("/v1/vms/{name}/statistics") { request, context in
            try context.require(.viewer, for: request)
            let name = try context.parameters.require("name")
            guard let report = try await Self.answering({ () async throws(DaemonError) in try await supervisor.statistics(of: name) }) else {
                throw HTTPError(.conflict, message: "VM '\(name)' has no statistics yet (it is not running, or its first poll is under way)")
            }
            return report
        }
        router.get("/v1/vms/{name}/console") { request, context in
            try context.require(.viewer, for: request)
            let name = try context.parameters.require("name")
            let bytes = try Self.integer(request, "bytes", default: 65_536, range: 1...(1 << 20))
            let data = try await Self.answering { () async throws(DaemonError) in try await supervisor.console(of: name, bytes: bytes) }
            return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
        }
        router.get("/v1/events") { request, context in
            try context.require(.viewer, for: request)
            let after = try Self.integer(request, "after", default: -1, range: -1...Int.max)
            let lastEventID = request.headers[HTTPField.Name("Last-Event-ID")!].flatMap { UInt64($0) }
            let stream = events.subscribe(after: lastEventID ?? (after >= 0 ? UInt64(after) : nil))
            let body = ResponseBody { writer in
                for await event in stream {
                    let line = event.id == 0
                        ? ": keep-alive\n\n"
                        : "id: \(event.id)\nevent: \(event.type)\ndata: \(String(decoding: try JSONEncoder().encode(event), as: UTF8.self))\n\n"
                    try await writer.write(ByteBuffer(string: line))
                }
                try await writer.finish(nil)
            }
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
        }
        router.get("/v1/events/recent") { request, context in
            try context.require(.viewer, for: request)
            let after = try Self.integer(request, "after", default: 0, range: 0...Int.max)
            return events.recent(after: UInt64(after))
        }
        router.get("/v1/history") { request, context in
            try context.require(.viewer, for: request)
            guard let vm = request.uri.queryParameters.get("vm"), !vm.isEmpty else {
                throw HTTPError(.badRequest, message: "query parameter vm is required (a VM's name)")
            }
            let metric = request.uri.queryParameters.get("metric") ?? "exitsPerSecond"
            let seconds = try Self.integer(request, "seconds", default: 3600, range: 1...(366 * 86400))
            let step = try Self.integer(request, "step", default: 60, range: 1...86400)
            let known = (try? history.metrics(of: vm)) ?? []
            guard known.isEmpty || known.contains(metric) else {
                throw HTTPError(.badRequest, message: "VM '\(vm)' has no history of \(metric); it has \(known.joined(separator: ", "))")
            }
            do { return try history.query(vm: vm, metric: metric, seconds: seconds, step: step) } catch {
                throw HTTPError(.internalServerError, message: "history: \(error)")
            }
        }
        router.get("/v1/audit") { request, context in
            try context.require(.admin, for: request)
            let limit = try Self.integer(request, "limit", default: 100, range: 1...10_000)
            return audit.tail(limit)
        }
        return router
    }

    /// A supervisor call whose `DaemonError` becomes the HTTP answer.
    static func answering<T>(_ body: () async throws(DaemonError) -> T) async throws -> T {
        do { return try await body() } catch {
            throw HTTPError(HTTPResponse.Status(code: error.status), message: error.message)
        }
    }

    /// A request body of at most 64 KiB.
    static func collect(_ request: inout Request, context: DaemonRequestContext) async throws -> ByteBuffer {
        do { return try await request.collectBody(upTo: 64 << 10) } catch {
            throw HTTPError(.contentTooLarge, message: "a VM definition is at most 64 KiB")
        }
    }

    /// A query parameter that must be an integer in `range`.
    static func integer(_ request: Request, _ name: String, default value: Int, range: ClosedRange<Int>) throws -> Int {
        guard let text = request.uri.queryParameters.get(name) else { return value }
        guard let number = Int(text), range.contains(number) else {
            throw HTTPError(.badRequest, message: "query parameter \(name)=\(text) is invalid; expected an integer in \(range.lowerBound)...\(range.upperBound)")
        }
        return number
    }

    static func html(_ text: String) -> Response {
        Response(status: .ok, headers: [.contentType: "text/html; charset=utf-8", .contentSecurityPolicy: "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self' 'unsafe-inline'"],
                 body: .init(byteBuffer: ByteBuffer(string: text)))
    }
}

/// `GET /v1/health`.
struct Health: ResponseEncodable {
    var status: String
    var vms: Int
}

extension VMStatus: ResponseEncodable {}
extension HistoryReport: ResponseEncodable {}
extension VMEvent: ResponseEncodable {}
extension AuditLog.Entry: ResponseEncodable {}
