// Enqueue one participant-data update into pdq from Java (JDBC, the PostgreSQL driver), then
// wait for it.
//
//     javac -d out Enqueue.java
//     DATABASE_URL=postgres://producer@host/db CONVERSATION_ID=… java -cp out:postgresql.jar Enqueue
//
// What an upstream system does:
//   1. LISTEN pdq_outcomes first, so no outcome can slip by between the INSERT and the wait.
//   2. INSERT the job with an idempotency key: a retry of the same INSERT is a no-op.
//   3. Handle a refused row by the name of the rule (constraint) that refused it.
//   4. Wait for a notification, and confirm it with pdq.job_status (a notification is only a
//      wake-up: anyone may send one). Poll now and then too: notifications are off unless an
//      operator turned them on (update pdq.settings set notify_outcomes = true), and are lost
//      while disconnected.
//
// Exit status: 0 applied, 1 dead-lettered or cancelled, 2 refused, 3 no outcome in time.

import java.net.URI;
import java.net.URLDecoder;
import java.nio.charset.StandardCharsets;
import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.Properties;
import java.util.UUID;

import org.postgresql.PGConnection;
import org.postgresql.PGNotification;
import org.postgresql.util.PSQLException;

public final class Enqueue {
    private static final String INSERT =
        "insert into pdq.jobs (conversation_id, participant_purpose, attributes, idempotency_key) "
            + "values (?::uuid, 'customer', ?::jsonb, ?) "
            + "on conflict (idempotency_key) do nothing "
            + "returning id";

    /** SQLSTATE of a check_violation: a row a rule of pdq.jobs refused. */
    private static final String CHECK_VIOLATION = "23514";

    private Enqueue() {}

    public static void main(String[] args) throws Exception {
        System.exit(run());
    }

    private static int run() throws Exception {
        String url = System.getenv("DATABASE_URL");
        String conversationId = System.getenv("CONVERSATION_ID");
        if (url == null || conversationId == null) {
            System.err.println("set DATABASE_URL and CONVERSATION_ID");
            return 2;
        }
        String key = System.getenv().getOrDefault("IDEMPOTENCY_KEY", "");
        if (key.isEmpty()) {
            key = "example-java-" + UUID.randomUUID();
        }
        double waitSecs = Double.parseDouble(System.getenv().getOrDefault("WAIT_SECS", "60"));

        try (Connection listener = connect(url); Connection conn = connect(url)) {
            try (Statement listen = listener.createStatement()) {
                listen.execute("listen pdq_outcomes");
            }

            // A refused row: the constraint's name says which rule it broke; nothing was written.
            try {
                enqueue(conn, conversationId, "{\"vip\": true}", key + "-refused");
                System.err.println("unexpected: a bad row was accepted");
                return 2;
            } catch (PSQLException error) {
                if (!CHECK_VIOLATION.equals(error.getSQLState())) {
                    throw error;
                }
                System.out.println("refused as expected by " + constraint(error));
            }

            String attributes = "{\"orderStatus\": \"shipped\", \"source\": \"java\"}";
            Long jobId;
            try {
                jobId = enqueue(conn, conversationId, attributes, key);
            } catch (PSQLException error) {
                if (!CHECK_VIOLATION.equals(error.getSQLState())) {
                    throw error;
                }
                System.out.println("refused by " + constraint(error) + ": " + error.getMessage());
                return 2;
            }
            Long again = enqueue(conn, conversationId, attributes, key);
            System.out.println(
                "enqueued job " + jobId + " with key " + key + "; the same insert again: " + again);

            PGConnection notifications = listener.unwrap(PGConnection.class);
            long deadline = System.nanoTime() + (long) (waitSecs * 1e9);
            while (System.nanoTime() < deadline) {
                String[] found = status(conn, key);
                if (found != null && isFinal(found[1])) {
                    String reason = found[2] == null ? "" : " (" + found[2] + ": " + found[3] + ")";
                    System.out.println("job " + found[0] + ": " + found[1] + reason);
                    return "applied".equals(found[1]) ? 0 : 1;
                }
                // Wake up on a notification for any job, or after a second to poll anyway.
                PGNotification[] notes = notifications.getNotifications(1000);
                if (notes != null) {
                    for (PGNotification note : notes) {
                        System.out.println("notified: " + note.getParameter());
                    }
                }
            }
            String[] last = status(conn, key);
            System.err.println("no outcome within " + (long) waitSecs + " s: "
                + (last == null ? "no row" : String.join(", ", last)));
            return 3;
        }
    }

    /** The job's id; null when the key was enqueued before (the retry did nothing). */
    private static Long enqueue(Connection conn, String conversationId, String attributes,
            String key) throws SQLException {
        try (PreparedStatement insert = conn.prepareStatement(INSERT)) {
            insert.setString(1, conversationId);
            insert.setString(2, attributes);
            insert.setString(3, key);
            try (ResultSet row = insert.executeQuery()) {
                return row.next() ? row.getLong(1) : null;
            }
        }
    }

    /** pdq.job_status by idempotency key: {job_id, state, reason, detail}, or null. */
    private static String[] status(Connection conn, String key) throws SQLException {
        try (PreparedStatement query = conn.prepareStatement(
                "select job_id, state, reason, detail from pdq.job_status(?::text)")) {
            query.setString(1, key);
            try (ResultSet row = query.executeQuery()) {
                if (!row.next()) {
                    return null;
                }
                return new String[] {
                    row.getString(1), row.getString(2), row.getString(3), row.getString(4)
                };
            }
        }
    }

    private static boolean isFinal(String state) {
        return "applied".equals(state) || "dead_lettered".equals(state)
            || "cancelled".equals(state);
    }

    /** The name of the constraint that refused the row. */
    private static String constraint(PSQLException error) {
        return error.getServerErrorMessage() == null
            ? "an unnamed rule"
            : error.getServerErrorMessage().getConstraint();
    }

    /**
     * Opens a connection from a libpq-style URL (postgres://user:password@host:port/db?sslmode=…),
     * the DATABASE_URL the other examples and pdq read; JDBC wants jdbc:postgresql://host:port/db.
     */
    private static Connection connect(String url) throws Exception {
        URI uri = new URI(url);
        if (!"postgres".equals(uri.getScheme()) && !"postgresql".equals(uri.getScheme())) {
            throw new IllegalArgumentException("DATABASE_URL must start with postgres://");
        }
        Properties props = new Properties();
        String userInfo = uri.getRawUserInfo();
        if (userInfo != null) {
            String[] parts = userInfo.split(":", 2);
            props.setProperty("user", decode(parts[0]));
            if (parts.length == 2) {
                props.setProperty("password", decode(parts[1]));
            }
        }
        String host = uri.getHost() == null ? "localhost" : uri.getHost();
        int port = uri.getPort() == -1 ? 5432 : uri.getPort();
        String database = uri.getRawPath() == null || uri.getRawPath().length() <= 1
            ? props.getProperty("user", "postgres")
            : decode(uri.getRawPath().substring(1));
        String jdbc = "jdbc:postgresql://" + host + ":" + port + "/" + database;
        if (uri.getRawQuery() != null) {
            jdbc += "?" + uri.getRawQuery();
        }
        props.setProperty("ApplicationName", "pdq-example-java");
        Connection conn = DriverManager.getConnection(jdbc, props);
        conn.setAutoCommit(true);
        return conn;
    }

    /** Percent-decoding as in a URL's user, password and path (a '+' stays a '+'). */
    private static String decode(String text) {
        return URLDecoder.decode(text.replace("+", "%2B"), StandardCharsets.UTF_8);
    }
}
