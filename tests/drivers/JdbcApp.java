// pgJDBC through the pooler in transaction mode, as a Java application uses it.
//
// Usage: java -cp postgresql.jar JdbcApp.java HOST PORT CLIENTS ROUNDS
//
// prepareThreshold=1: from a PreparedStatement's first execution on, pgJDBC uses a named
// server-side statement (S_1, S_2, ...) and afterwards only binds it. pgJDBC also sends
// extra_float_digits in its startup packet (the pooler is set to ignore it, as PgBouncer users
// do) and, with autocommit off, starts each transaction with a BEGIN in the same Sync as the
// first statement. Each client (a thread, its own connection) sets its TimeZone, then runs
// ROUNDS rounds of: a prepared query with a parameter, a check of its settings, a transaction
// with a batch of inserts (several Bind/Execute under one Sync) that sees a prepared statement
// on its server connection, a failed transaction rolled back, and a server-side cursor read in
// pages (fetchSize, portal suspended between Executes).
//
// Prints "ok ..." and exits 0, or prints what went wrong and exits 1.

import java.sql.Connection;
import java.sql.DriverManager;
import java.sql.PreparedStatement;
import java.sql.ResultSet;
import java.sql.SQLException;
import java.sql.Statement;
import java.util.ArrayList;
import java.util.Collections;
import java.util.List;
import java.util.Properties;

public class JdbcApp {
    static final String[] ZONES = {"UTC", "Europe/Paris", "Asia/Tokyo", "America/New_York"};

    static void check(boolean ok, String what) {
        if (!ok) {
            throw new IllegalStateException(what);
        }
    }

    static void client(String host, int port, int i, int rounds) throws SQLException {
        String name = "jdbc" + i;
        String zone = ZONES[i % ZONES.length];
        Properties props = new Properties();
        props.setProperty("user", "postgres");
        props.setProperty("ApplicationName", name);
        props.setProperty("prepareThreshold", "1");
        props.setProperty("sslmode", "disable");
        String url = "jdbc:postgresql://" + host + ":" + port + "/postgres";
        try (Connection conn = DriverManager.getConnection(url, props)) {
            try (Statement st = conn.createStatement()) {
                st.execute("SET TimeZone = '" + zone + "'");
            }
            PreparedStatement add = conn.prepareStatement("select ?::int + 1000");
            PreparedStatement settings =
                    conn.prepareStatement("select current_setting('application_name'), current_setting('TimeZone')");
            PreparedStatement insert =
                    conn.prepareStatement("insert into driver_rows (driver, client, round) values ('jdbc', ?, ?)");
            PreparedStatement prepared = conn.prepareStatement("select count(*) from pg_prepared_statements");
            PreparedStatement divide = conn.prepareStatement("select 1 / (?::int - ?::int)");
            PreparedStatement series = conn.prepareStatement("select g from generate_series(1, 100) g");
            for (int r = 0; r < rounds; r++) {
                add.setInt(1, i * 1000 + r);
                try (ResultSet rs = add.executeQuery()) {
                    check(rs.next() && rs.getInt(1) == i * 1000 + r + 1000, name + " round " + r + ": wrong sum");
                }
                try (ResultSet rs = settings.executeQuery()) {
                    check(rs.next(), name + ": no settings row");
                    String app = rs.getString(1);
                    String tz = rs.getString(2);
                    check(app.equals(name) && tz.equals(zone),
                            name + " round " + r + ": sees application_name=" + app + " TimeZone=" + tz);
                }
                conn.setAutoCommit(false);
                for (int k = 0; k < 5; k++) {
                    insert.setInt(1, i);
                    insert.setInt(2, r);
                    insert.addBatch();
                }
                int[] counts = insert.executeBatch();
                check(counts.length == 5, name + ": batch of " + counts.length);
                try (ResultSet rs = prepared.executeQuery()) {
                    check(rs.next() && rs.getLong(1) >= 1, name + " round " + r + ": no prepared statement on the server connection");
                }
                conn.commit();
                insert.setInt(1, i);
                insert.setInt(2, -1);
                insert.executeUpdate();
                divide.setInt(1, r);
                divide.setInt(2, r);
                try {
                    divide.executeQuery().close();
                    throw new IllegalStateException(name + " round " + r + ": division by zero did not fail");
                } catch (SQLException e) {
                    check("22012".equals(e.getSQLState()), name + ": unexpected error " + e.getSQLState() + " " + e.getMessage());
                }
                conn.rollback();
                // A cursor read 10 rows at a time inside the transaction.
                series.setFetchSize(10);
                long sum = 0;
                int rows = 0;
                try (ResultSet rs = series.executeQuery()) {
                    while (rs.next()) {
                        sum += rs.getInt(1);
                        rows++;
                    }
                }
                check(rows == 100 && sum == 5050, name + " round " + r + ": cursor gave " + rows + " rows, sum " + sum);
                conn.commit();
                conn.setAutoCommit(true);
            }
            try (Statement st = conn.createStatement();
                    ResultSet rs = st.executeQuery(
                            "select count(*) from driver_rows where driver = 'jdbc' and client = " + i)) {
                check(rs.next() && rs.getLong(1) == 5L * rounds,
                        name + ": " + rs.getLong(1) + " rows committed, expected " + 5L * rounds);
            }
        }
    }

    public static void main(String[] args) throws Exception {
        String host = args[0];
        int port = Integer.parseInt(args[1]);
        int clients = Integer.parseInt(args[2]);
        int rounds = Integer.parseInt(args[3]);
        List<String> failures = Collections.synchronizedList(new ArrayList<>());
        List<Thread> threads = new ArrayList<>();
        for (int i = 0; i < clients; i++) {
            final int n = i;
            Thread t = new Thread(() -> {
                try {
                    client(host, port, n, rounds);
                } catch (Exception e) {
                    failures.add("client " + n + ": " + e);
                }
            });
            t.start();
            threads.add(t);
        }
        for (Thread t : threads) {
            t.join();
        }
        if (!failures.isEmpty()) {
            failures.forEach(System.out::println);
            System.exit(1);
        }
        System.out.println("ok pgJDBC " + org.postgresql.util.DriverInfo.DRIVER_VERSION + ": " + clients
                + " clients x " + rounds + " rounds");
    }
}
