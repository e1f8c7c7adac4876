// pgjdbc through pgredact (tests/drivers.rs), run as a single source file:
//   java -cp /usr/share/java/postgresql.jar tests/drivers/JdbcClient.java
// Connects with currentSchema=public (a `-c search_path=public` startup option), runs what
// DBeaver and other JDBC tools run at connect (DatabaseMetaData: product version, schemas,
// getTables, getColumns, getPrimaryKeys, getIndexInfo), a masked read through a
// PreparedStatement (past prepareThreshold it becomes a named server-side statement), and for
// solutions a non-PII write and a refused PII write. Prints one JSON report.
import java.sql.*;
import java.util.*;

public class JdbcClient {
    static String q(String s) {
        if (s == null) return "null";
        StringBuilder b = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') b.append('\\').append(c);
            else if (c < 0x20) b.append(String.format("\\u%04x", (int) c));
            else b.append(c);
        }
        return b.append('"').toString();
    }

    static String list(List<String> l) {
        StringJoiner j = new StringJoiner(",", "[", "]");
        for (String s : l) j.add(s);
        return j.toString();
    }

    static String rows(ResultSet rs) throws SQLException {
        List<String> out = new ArrayList<>();
        int n = rs.getMetaData().getColumnCount();
        while (rs.next()) {
            List<String> r = new ArrayList<>();
            for (int i = 1; i <= n; i++) r.add(q(rs.getString(i)));
            out.add(list(r));
        }
        return list(out);
    }

    static List<String> column(ResultSet rs, String name) throws SQLException {
        List<String> out = new ArrayList<>();
        while (rs.next()) out.add(q(rs.getString(name)));
        return out;
    }

    public static void main(String[] a) throws Exception {
        Map<String, String> env = System.getenv();
        String url = "jdbc:postgresql://" + env.get("PGR_HOST") + ":" + env.get("PGR_PORT") + "/"
                + env.get("PGR_DB") + "?currentSchema=public&ApplicationName=pgredact-drivers-jdbc";
        Long[] ids = Arrays.stream(env.get("PGR_IDS").split(",")).map(Long::valueOf).toArray(Long[]::new);
        String writeId = env.get("PGR_WRITE_ID");
        Map<String, String> out = new LinkedHashMap<>();
        out.put("tool", q("pgjdbc"));
        try (Connection c = DriverManager.getConnection(url, env.get("PGR_USER"), env.get("PGR_PASSWORD"))) {
            DatabaseMetaData md = c.getMetaData();
            out.put("version", q(md.getDriverVersion()));
            out.put("java", q(System.getProperty("java.version")));
            Map<String, String> intro = new LinkedHashMap<>();
            intro.put("product_version", q(md.getDatabaseProductVersion()));
            try (Statement s = c.createStatement();
                 ResultSet rs = s.executeQuery("SELECT current_schema(), session_user")) {
                rs.next();
                intro.put("current_schema", q(rs.getString(1)));
            }
            intro.put("schemas", list(column(md.getSchemas(), "TABLE_SCHEM")));
            intro.put("tables", list(column(md.getTables(null, "public", "%", new String[] {"TABLE"}), "TABLE_NAME")));
            intro.put("columns", list(column(md.getColumns(null, "public", "customers", "%"), "COLUMN_NAME")));
            intro.put("primary_key", list(column(md.getPrimaryKeys(null, "public", "customers"), "COLUMN_NAME")));
            intro.put("indexes", list(column(md.getIndexInfo(null, "public", "customers", false, true), "INDEX_NAME")));
            StringJoiner ij = new StringJoiner(",", "{", "}");
            intro.forEach((k, v) -> ij.add(q(k) + ":" + v));
            out.put("introspection", ij.toString());
            String read = "SELECT customer_id, first_name, last_name, email, phone, address, birth_date, tier "
                    + "FROM customers WHERE customer_id = ANY(?) ORDER BY customer_id";
            try (PreparedStatement ps = c.prepareStatement(read)) {
                // prepareThreshold is 5: the sixth run uses a named server-side statement.
                for (int i = 0; i < 6; i++) {
                    ps.setArray(1, c.createArrayOf("bigint", ids));
                    try (ResultSet rs = ps.executeQuery()) {
                        out.put(i == 0 ? "rows" : "rows_prepared", rows(rs));
                    }
                }
            }
            if (writeId != null) {
                long id = Long.parseLong(writeId);
                try (PreparedStatement ps = c.prepareStatement("UPDATE customers SET tier = ? WHERE customer_id = ?")) {
                    ps.setString(1, env.get("PGR_TIER"));
                    ps.setLong(2, id);
                    int n = ps.executeUpdate();
                    try (PreparedStatement t = c.prepareStatement("SELECT tier FROM customers WHERE customer_id = ?")) {
                        t.setLong(1, id);
                        try (ResultSet rs = t.executeQuery()) {
                            rs.next();
                            out.put("write", "{\"rowcount\":" + n + ",\"tier_after\":" + q(rs.getString(1)) + "}");
                        }
                    }
                }
                try (PreparedStatement ps = c.prepareStatement("UPDATE customers SET email = ? WHERE customer_id = ?")) {
                    ps.setString(1, "leak@example.com");
                    ps.setLong(2, id);
                    ps.executeUpdate();
                    out.put("pii_write", "{\"sqlstate\":null,\"message\":\"succeeded\"}");
                } catch (SQLException e) {
                    out.put("pii_write", "{\"sqlstate\":" + q(e.getSQLState()) + ",\"message\":" + q(e.getMessage()) + "}");
                }
                try (Statement s = c.createStatement(); ResultSet rs = s.executeQuery("SELECT 1")) {
                    rs.next();
                    out.put("after_refusal", String.valueOf(rs.getInt(1)));
                }
            }
        }
        StringJoiner j = new StringJoiner(",", "{", "}");
        out.forEach((k, v) -> j.add(q(k) + ":" + v));
        System.out.println(j);
    }
}
