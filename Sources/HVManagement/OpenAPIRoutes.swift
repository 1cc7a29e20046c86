// The routes an OpenAPI document declares, for the answer to a method a path does not take:
// 405 Method Not Allowed with an Allow header (RFC 9110, 15.5.6), rather than a 404 that would
// say the path does not exist. The document is the one the server serves, so the two agree.
import Foundation
import Hummingbird
import Synchronization
import Yams

public struct OpenAPIRoutes: Sendable {
    /// The document, parsed at the first request that needs it: a VMM's API must listen within
    /// a restore's few milliseconds, and parsing the whole YAML document took longer than
    /// everything else of the server's start.
    private final class Table: Sendable {
        let document: String
        let parsed = Mutex<[(segments: [String], methods: [String])]?>(nil)
        init(_ document: String) { self.document = document }

        var routes: [(segments: [String], methods: [String])] {
            if let routes = parsed.withLock({ $0 }) { return routes }
            let yaml = (try? Yams.load(yaml: document)) as? [String: Any]
            let paths = yaml?["paths"] as? [String: Any] ?? [:]
            let verbs = ["get", "put", "post", "delete", "patch", "head", "options"]
            let routes = paths.map { path, item in
                let methods = (item as? [String: Any] ?? [:]).keys.filter { verbs.contains($0) }.map { $0.uppercased() }.sorted()
                return (path.split(separator: "/").map(String.init), methods)
            }
            parsed.withLock { $0 = routes }
            return routes
        }
    }
    private let table: Table

    /// Each path's segments ("{name}" matches any one segment) and the methods it takes.
    var routes: [(segments: [String], methods: [String])] { table.routes }

    public init(document: String) {
        table = Table(document)
    }

    /// The methods `path` takes, nil when no declared path matches it.
    public func methods(for path: String) -> [String]? {
        let segments = path.split(separator: "/").map(String.init)
        let matching = routes.filter { route in
            route.segments.count == segments.count
                && zip(route.segments, segments).allSatisfy { pattern, segment in pattern.hasPrefix("{") || pattern == segment }
        }
        guard !matching.isEmpty else { return nil }
        return Array(Set(matching.flatMap(\.methods))).sorted()
    }
}

/// A 404 that says what is there, in the API's error shape; a declared path called with a method
/// it does not take is 405 with the methods it does (also hv serve's).
public struct NotFoundMessage<Context: RequestContext>: RouterMiddleware {
    let routes: OpenAPIRoutes?

    public init(routes: OpenAPIRoutes? = nil) { self.routes = routes }

    public func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let error as HTTPError where error.status == .notFound && error.body == nil {
            let path = request.uri.path
            if let methods = routes?.methods(for: path), !methods.contains(request.method.rawValue) {
                throw HTTPError(.methodNotAllowed, headers: [.allow: methods.joined(separator: ", ")],
                                message: "\(path) does not take \(request.method); it takes \(methods.joined(separator: ", "))")
            }
            throw HTTPError(.notFound, message: "no route \(request.method) \(path); the routes are listed at GET /openapi.yaml")
        }
    }
}
