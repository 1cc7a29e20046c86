// hv serve's metric history: every VM's figures sampled into SQLite (GRDB) at a fixed interval,
// kept for a retention period, and read back aggregated per step for trends (GET /v1/history).
import Foundation
import GRDB

/// One step of a trend: the samples that fell in [time, time + step).
public struct HistoryPoint: Codable, Sendable, Equatable {
    /// The step's start, RFC 3339 UTC.
    public var time: String
    public var average: Double
    public var minimum: Double
    public var maximum: Double
    public var samples: Int
}

/// `GET /v1/history`'s answer.
public struct HistoryReport: Codable, Sendable, Equatable {
    public var vm: String
    public var metric: String
    public var stepSeconds: Int
    public var points: [HistoryPoint]
}

public final class HistoryStore: Sendable {
    public let path: String
    /// How long samples are kept, in seconds.
    public let retention: Double
    private let database: DatabaseQueue

    /// Opens (or creates) the store at `path`, 0600, and brings its schema up to date.
    public init(path: String, retention: Double) throws(DaemonError) {
        self.path = path
        self.retention = retention
        do {
            var configuration = Configuration()
            configuration.label = "hv.history"
            if !FileManager.default.fileExists(atPath: path) {
                FileManager.default.createFile(atPath: path, contents: nil, attributes: [.posixPermissions: 0o600])
            }
            database = try DatabaseQueue(path: path, configuration: configuration)
            var migrator = DatabaseMigrator()
            migrator.registerMigration("samples") { db in
                try db.create(table: "sample") { table in
                    table.column("vm", .text).notNull()
                    table.column("metric", .text).notNull()
                    table.column("time", .double).notNull()  // seconds since 1970
                    table.column("value", .double).notNull()
                }
                try db.create(index: "sample_by_series", on: "sample", columns: ["vm", "metric", "time"])
                try db.create(index: "sample_by_time", on: "sample", columns: ["time"])
            }
            try migrator.migrate(database)
        } catch {
            throw DaemonError(status: 500, message: "history \(path): \(error)")
        }
    }

    /// Records one VM's figures at `time` (one row per metric), in one transaction.
    public func record(vm: String, values: [String: Double], at time: Date = Date()) throws {
        let seconds = time.timeIntervalSince1970
        try database.write { db in
            let statement = try db.makeStatement(sql: "INSERT INTO sample (vm, metric, time, value) VALUES (?, ?, ?, ?)")
            for (metric, value) in values where value.isFinite {
                try statement.execute(arguments: [vm, metric, seconds, value])
            }
        }
    }

    /// Deletes samples older than the retention period; returns how many went.
    @discardableResult
    public func prune(now: Date = Date()) throws -> Int {
        try database.write { db in
            try db.execute(sql: "DELETE FROM sample WHERE time < ?", arguments: [now.timeIntervalSince1970 - retention])
            return db.changesCount
        }
    }

    /// The metrics recorded for `vm`, by name.
    public func metrics(of vm: String) throws -> [String] {
        try database.read { db in try String.fetchAll(db, sql: "SELECT DISTINCT metric FROM sample WHERE vm = ? ORDER BY metric", arguments: [vm]) }
    }

    /// `metric` of `vm` over the last `seconds`, averaged (and its extremes) per `step` seconds.
    public func query(vm: String, metric: String, seconds: Int, step: Int, now: Date = Date()) throws -> HistoryReport {
        let until = now.timeIntervalSince1970, since = until - Double(seconds)
        let rows = try database.read { db in
            try Row.fetchAll(db, sql: """
                SELECT CAST(time / ? AS INTEGER) * ? AS bucket, AVG(value) AS average, MIN(value) AS minimum,
                       MAX(value) AS maximum, COUNT(*) AS samples
                FROM sample WHERE vm = ? AND metric = ? AND time >= ? AND time <= ?
                GROUP BY bucket ORDER BY bucket
                """, arguments: [step, step, vm, metric, since, until])
        }
        let formatter = ISO8601DateFormatter()
        let points = rows.map { row in
            HistoryPoint(time: formatter.string(from: Date(timeIntervalSince1970: Double(row["bucket"] as Int64))),
                         average: row["average"], minimum: row["minimum"], maximum: row["maximum"], samples: row["samples"])
        }
        return HistoryReport(vm: vm, metric: metric, stepSeconds: step, points: points)
    }

    /// Rows kept now (for tests and the retention check).
    public func count() throws -> Int {
        try database.read { db in try Int.fetchOne(db, sql: "SELECT COUNT(*) FROM sample") ?? 0 }
    }
}
