// The routes an OpenAPI document declares, for the answer to a method a path does not take:
// 405 Method Not Allowed with an Allow header (RFC 9110, 15.5.6), rather than a 404 that would
// say the path does not exist. The document is the one the server serves, so the two agree.
import Foundation
import Hummingbird
import Yams

public struct OpenAPIRoutes: Sendable {
    /// Each path's segments ("{name}" matches any one segment) and the methods it takes.
    let routes: [(segments: [String], methods: [String])]

    public init(document: String) {
        let parsed = (try? Yams.load(yaml: document)) as? [String: Any]
        let paths = parsed?["paths"] as? [String: Any] ?? [:]
        let verbs = ["get", "put", "post", "delete", "patch", "head", "options"]
        routes = paths.map { path, item in
            let methods = (item as? [String: Any] ?? [:]).keys.filter { verbs.contains($0) }.map { $0.uppercased() }.sorted()
            return (path.split(separator: "/").map(String.init), methods)
        }
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
