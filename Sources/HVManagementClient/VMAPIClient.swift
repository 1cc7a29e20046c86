// The per-VM API's client (`hv ctl SOCKET ...`), on AsyncHTTPClient's HTTP over a Unix socket.
import AsyncHTTPClient
import Foundation
import HVManagement
import NIOCore
import NIOHTTP1

/// Why a call to a VM's API failed: no one listening, a refusal from the VM (its message), or
/// an answer that is not the API's.
public struct VMAPIClientError: Error, CustomStringConvertible, Sendable {
    /// The HTTP status of a refusal, nil when there was no answer.
    public var status: Int?
    public var message: String
    public var description: String { message }
}

/// Talks to one VM's API socket. Synchronous: each call waits for its answer (up to `timeout`).
public final class VMAPIClient: Sendable {
    public let socketPath: String
    public let timeout: TimeAmount
    private var client: HTTPClient { HTTPClient.shared }

    public init(socketPath: String, timeout: TimeAmount = .seconds(10)) {
        self.socketPath = socketPath
        self.timeout = timeout
    }

    /// Returns once something listens on the socket, or throws after `seconds` with why not.
    public func waitUntilListening(seconds: Double) throws(VMAPIClientError) {
        let deadline = Date(timeIntervalSinceNow: seconds)
        while let problem = Self.unreachable(socketPath) {
            guard Date() < deadline else { throw VMAPIClientError(status: nil, message: "\(socketPath): \(problem) after waiting \(seconds) s") }
            usleep(10_000)
        }
    }

    /// A refusal made on this side (a client-side step of a call failed), exit status 1.
    public static func failure(_ message: String) -> VMAPIClientError { VMAPIClientError(status: 0, message: message) }

    /// GET `path`, decoded as `T`.
    public func get<T: Decodable>(_ path: String, as type: T.Type = T.self) throws(VMAPIClientError) -> T {
        try decode(T.self, from: try call("GET", path))
    }

    /// POST `path` (no body), decoded as `T`.
    public func post<T: Decodable>(_ path: String, as type: T.Type = T.self) throws(VMAPIClientError) -> T {
        try decode(T.self, from: try call("POST", path))
    }

    /// GET `path`, decoded as `T`, without blocking a thread (for async callers).
    public func getAsync<T: Decodable>(_ path: String, as type: T.Type = T.self) async throws(VMAPIClientError) -> T {
        try decode(T.self, from: try await callAsync("GET", path))
    }

    /// POST `path` (no body), decoded as `T`, without blocking a thread.
    public func postAsync<T: Decodable>(_ path: String, as type: T.Type = T.self) async throws(VMAPIClientError) -> T {
        try decode(T.self, from: try await callAsync("POST", path))
    }

    /// `call` for async callers.
    public func callAsync(_ method: String, _ path: String) async throws(VMAPIClientError) -> Data {
        if let problem = Self.unreachable(socketPath) { throw VMAPIClientError(status: nil, message: "\(socketPath): \(problem)") }
        let response: HTTPClient.Response
        do {
            response = try await client.execute(HTTPMethod(rawValue: method), socketPath: socketPath, urlPath: path, deadline: .now() + timeout).get()
        } catch {
            throw VMAPIClientError(status: nil, message: "\(socketPath): \(Self.explain(error, socketPath: socketPath))")
        }
        return try check(response, method: method, path: path)
    }

    /// POST `path` with `body` as JSON, decoded as `T`.
    public func post<T: Decodable>(_ path: String, json body: some Encodable, as type: T.Type = T.self) throws(VMAPIClientError) -> T {
        try decode(T.self, from: try call("POST", path, json: body))
    }

    /// The raw answer's body to `method path` ("GET", "/v1/vm"), after checking its status is 2xx.
    public func call(_ method: String, _ path: String) throws(VMAPIClientError) -> Data {
        try call(method, path, body: nil)
    }

    /// `call` with a JSON body.
    public func call(_ method: String, _ path: String, json body: some Encodable) throws(VMAPIClientError) -> Data {
        let data: Data
        do { data = try JSONEncoder().encode(body) } catch { throw VMAPIClientError(status: nil, message: "the request body cannot be encoded: \(error)") }
        return try call(method, path, body: data)
    }

    private func call(_ method: String, _ path: String, body: Data?) throws(VMAPIClientError) -> Data {
        // AsyncHTTPClient retries a refused connection until the deadline; a socket that is
        // missing or that nobody listens on is said at once instead.
        if let problem = Self.unreachable(socketPath) { throw VMAPIClientError(status: nil, message: "\(socketPath): \(problem)") }
        let response: HTTPClient.Response
        do {
            let request = try HTTPClient.Request(url: URL(httpURLWithSocketPath: socketPath, uri: path)!, method: HTTPMethod(rawValue: method),
                                                 headers: body == nil ? [:] : ["Content-Type": "application/json"],
                                                 body: body.map { .data($0) })
            response = try client.execute(request: request, deadline: .now() + timeout).wait()
        } catch {
            throw VMAPIClientError(status: nil, message: "\(socketPath): \(Self.explain(error, socketPath: socketPath))")
        }
        return try check(response, method: method, path: path)
    }

    /// The body of a 2xx answer; any other is the VM's refusal, its message decoded.
    private func check(_ response: HTTPClient.Response, method: String, path: String) throws(VMAPIClientError) -> Data {
        let body = response.body.map { Data($0.readableBytesView) } ?? Data()
        guard (200..<300).contains(response.status.code) else {
            let message = (try? JSONDecoder().decode(APIErrorBody.self, from: body))?.error.message
                ?? String(decoding: body, as: UTF8.self)
            throw VMAPIClientError(status: Int(response.status.code), message: "\(method) \(path): \(response.status.code) \(response.status.reasonPhrase): \(message)")
        }
        return body
    }

    private func decode<T: Decodable>(_ type: T.Type, from body: Data) throws(VMAPIClientError) -> T {
        do { return try JSONDecoder().decode(T.self, from: body) } catch {
            throw VMAPIClientError(status: nil, message: "\(socketPath): the answer is not the API's \(T.self): \(error)")
        }
    }

    /// Why nothing could answer on `path`, in the words a user acts on; nil when something listens.
    static func unreachable(_ path: String) -> String? {
        switch UnixSocketProbe(path: path) {
        case .listening: nil
        case .missing: "no such socket (is `hv run --api-socket \(path)` running?)"
        case .notASocket: "not a socket"
        case .stale: "nobody listens on it (left by an hv that has ended?)"
        case .tooLong: "longer than a Unix socket path can be (\(UnixSocketProbe.maximumLength) bytes)"
        case .unreachable(let code) where code == EACCES || code == EPERM:
            "permission denied (the socket is 0600: run as the user that started hv, or root)"
        case .unreachable(let code): "cannot connect: \(String(cString: strerror(code)))"
        }
    }

    /// A failure after the socket was found listening.
    static func explain(_ error: any Error, socketPath: String) -> String {
        if let error = error as? HTTPClientError, error == .deadlineExceeded { return "no answer in time" }
        return "\(error); the VM's process may have ended"
    }
}
