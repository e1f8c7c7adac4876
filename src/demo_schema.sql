-- pgredact demo: a small customer-data platform (CDP) with the usual PII.
--
-- Run by a superuser against the database to protect (`app` in the demo and the tests), in one
-- session (psql -f, or tokio-postgres batch_execute). Deterministic: every value is derived from
-- the generate_series index through arithmetic and md5, never random(), so two runs produce the
-- same rows. Re-runnable: roles are created only when missing (and their passwords reset), and
-- the four demo tables are dropped and rebuilt.
--
-- Sizes: customers 10,000; customer_events 50,000; orders 20,000; customer_history 10,000.
-- Roles: support (SELECT), solutions (SELECT, INSERT, UPDATE), dba (member of pii_readers, ALL),
-- pii_readers (NOLOGIN), pgredact (the proxy's control-plane login). Password = role name.

SET client_min_messages = warning;

-- ---------------------------------------------------------------------------------------------
-- Roles (cluster-wide): create the missing ones, reset passwords; safe when another database of
-- the same cluster is loading this script at the same time.
-- ---------------------------------------------------------------------------------------------
DO $roles$
DECLARE
    r record;
BEGIN
    FOR r IN
        SELECT * FROM (VALUES
            ('support',     'LOGIN',   'support'),
            ('solutions',   'LOGIN',   'solutions'),
            ('dba',         'LOGIN',   'dba'),
            ('pgredact',    'LOGIN',   'pgredact'),
            ('pii_readers', 'NOLOGIN', NULL)
        ) AS v(name, login, password)
    LOOP
        IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = r.name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I %s', r.name, r.login);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL; -- created concurrently
            END;
        END IF;
        EXECUTE format('ALTER ROLE %I %s PASSWORD %L', r.name, r.login, r.password);
    END LOOP;

    IF NOT pg_catalog.pg_has_role('dba', 'pii_readers', 'MEMBER') THEN
        BEGIN
            GRANT pii_readers TO dba;
        EXCEPTION WHEN duplicate_object OR unique_violation THEN
            NULL;
        END;
    END IF;
END
$roles$;

-- ---------------------------------------------------------------------------------------------
-- Tables
-- ---------------------------------------------------------------------------------------------
BEGIN;

DROP TABLE IF EXISTS public.customer_history, public.orders, public.customer_events,
    public.customers CASCADE;

CREATE TABLE public.customers (
    customer_id    bigint PRIMARY KEY,
    first_name     text,
    last_name      text,
    email          varchar(255),
    phone          text,
    address        text,
    city           text,
    country        text,
    birth_date     date,
    tier           text NOT NULL DEFAULT 'standard',
    segment        text,
    lifetime_value numeric(12,2),
    created_at     timestamptz,
    updated_at     timestamptz
);
COMMENT ON TABLE public.customers IS 'One row per customer; most columns are PII.';

CREATE TABLE public.customer_events (
    event_id    bigserial PRIMARY KEY,
    customer_id bigint,  -- REFERENCES public.customers, added after the load
    event_type  text,
    ip_address  inet,
    user_agent  text,
    payload     jsonb,
    occurred_at timestamptz
);
COMMENT ON TABLE public.customer_events IS 'Clickstream and account events; payload may embed PII.';

CREATE TABLE public.orders (
    order_id         bigserial PRIMARY KEY,
    customer_id      bigint,  -- REFERENCES public.customers, added after the load
    amount           numeric(12,2),
    status           text,
    shipping_address text,
    ordered_at       timestamptz
);

CREATE TABLE public.customer_history (
    history_id  bigserial PRIMARY KEY,
    customer_id bigint,
    changed_at  timestamptz,
    email       varchar(255),
    phone       text,
    address     text
);
COMMENT ON TABLE public.customer_history IS 'Previous contact details (no foreign key: kept after a customer is deleted).';

-- Deterministic pseudo-random bytes for a salt and a row index: three md5 digests, 48 bytes.
-- Each INSERT below computes them once per row (MATERIALIZED CTE `r`); md5 dominates the cost.
CREATE FUNCTION pg_temp.rand_bytes(salt text, n bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT decode(md5(salt || ':1:' || n::text) || md5(salt || ':2:' || n::text)
                 || md5(salt || ':3:' || n::text), 'hex') $$;

-- Slot k (0..15) of rand_bytes as an integer in [0, 2^24). Immutable, so the planner inlines it.
CREATE FUNCTION pg_temp.u(b bytea, k integer) RETURNS integer
LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT (get_byte(b, 3 * k) << 16) | (get_byte(b, 3 * k + 1) << 8) | get_byte(b, 3 * k + 2) $$;

-- Lower-case ASCII form of a name for e-mail local parts ('Zoë' -> 'zoe', 'de Vries' -> 'devries').
CREATE FUNCTION pg_temp.ascii_lower(s text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS
$$ SELECT translate(lower(s), 'áéíóúüöëçã ', 'aeiouuoeca') $$;

-- Cities with their country and calling code.
CREATE TEMPORARY TABLE demo_geo (id integer PRIMARY KEY, city text, country text, calling_code text)
ON COMMIT DROP;
INSERT INTO demo_geo VALUES
    ( 1, 'New York',      'United States',  '+1'),
    ( 2, 'Chicago',       'United States',  '+1'),
    ( 3, 'San Francisco', 'United States',  '+1'),
    ( 4, 'Austin',        'United States',  '+1'),
    ( 5, 'Toronto',       'Canada',         '+1'),
    ( 6, 'London',        'United Kingdom', '+44'),
    ( 7, 'Manchester',    'United Kingdom', '+44'),
    ( 8, 'Dublin',        'Ireland',        '+353'),
    ( 9, 'Berlin',        'Germany',        '+49'),
    (10, 'Munich',        'Germany',        '+49'),
    (11, 'Paris',         'France',         '+33'),
    (12, 'Lyon',          'France',         '+33'),
    (13, 'Amsterdam',     'Netherlands',    '+31'),
    (14, 'Madrid',        'Spain',          '+34'),
    (15, 'Milan',         'Italy',          '+39'),
    (16, 'Warsaw',        'Poland',         '+48'),
    (17, 'Stockholm',     'Sweden',         '+46'),
    (18, 'Tokyo',         'Japan',          '+81'),
    (19, 'Sydney',        'Australia',      '+61'),
    (20, 'São Paulo',     'Brazil',         '+55');

-- Word lists (one row; `CROSS JOIN demo_words AS w`, then w.first_names[1 + n % 40]).
CREATE TEMPORARY TABLE demo_words ON COMMIT DROP AS SELECT
    ARRAY['James', 'Mary', 'Robert', 'Patricia', 'John', 'Jennifer', 'Michael', 'Linda',
        'David', 'Elizabeth', 'William', 'Barbara', 'Richard', 'Susan', 'Joseph',
        'Jessica', 'Thomas', 'Sarah', 'Charles', 'Karen', 'Emma', 'Liam', 'Olivia',
        'Noah', 'Sophie', 'Lukas', 'Hannah', 'Mateo', 'Lucía', 'José', 'Zoë', 'Chloé',
        'Aiko', 'Hiroshi', 'Priya', 'Arjun', 'Wei', 'Mei', 'Fatima', 'Omar']
        AS first_names,
    ARRAY['Smith', 'Johnson', 'Williams', 'Brown', 'Jones', 'Garcia', 'Miller', 'Davis',
        'Rodriguez', 'Martinez', 'Hernandez', 'Lopez', 'Gonzalez', 'Wilson',
        'Anderson', 'Taylor', 'Moore', 'Jackson', 'Martin', 'Lee', 'Thompson', 'White',
        'Harris', 'Clark', 'Lewis', 'Walker', 'Müller', 'Schmidt', 'Schneider',
        'Dubois', 'Lefebvre', 'Rossi', 'Bianchi', 'de Vries', 'Jansen', 'Nowak',
        'Kowalski', 'Tanaka', 'Suzuki', 'Sharma']
        AS last_names,
    ARRAY['Main Street', 'Oak Avenue', 'Maple Drive', 'Cedar Lane', 'Park Road',
        'High Street', 'Station Road', 'Church Street', 'Elm Street', 'Lake View',
        'Hill Road', 'Mill Lane', 'River Road', 'King Street', 'Queen Street',
        'Bahnhofstraße', 'Rue de la Paix', 'Via Roma', 'Calle Mayor', 'Kerkstraat']
        AS streets,
    ARRAY['retail', 'smb', 'enterprise', 'education', 'public_sector', 'nonprofit']
        AS segments,
    ARRAY['page_view', 'page_view', 'page_view', 'login', 'logout', 'add_to_cart',
        'purchase', 'email_open', 'support_ticket', 'password_reset']
        AS event_types,
    ARRAY['Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Safari/537.36',
        'Mozilla/5.0 (Macintosh; Intel Mac OS X 14_2) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.2 Safari/605.1.15',
        'Mozilla/5.0 (iPhone; CPU iPhone OS 17_2 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Mobile/15E148',
        'Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0 Mobile Safari/537.36',
        'Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0',
        'cdp-mobile-app/4.2.1 (iOS 17.2)']
        AS user_agents,
    ARRAY['/', '/products', '/products/shoes', '/products/jackets', '/cart', '/checkout',
        '/account', '/account/orders', '/help', '/blog/spring-sale']
        AS pages,
    ARRAY['mail.example.org', 'webmail.example.net', 'inbox.example.com']
        AS mail_domains;

SET LOCAL work_mem = '64MB';

-- customers: 10,000
WITH r AS MATERIALIZED (
    SELECT i, pg_temp.rand_bytes('customer', i) AS b FROM generate_series(1, 10000) AS i
), c AS (
    SELECT r.i, r.b, g.city, g.country, g.calling_code,
           w.first_names[1 + pg_temp.u(r.b, 0) % 40] AS first_name,
           w.last_names[1 + pg_temp.u(r.b, 1) % 40] AS last_name,
           -- skewed: many small customers, a few big ones
           round(((pg_temp.u(r.b, 3) % 1000)::numeric ^ 2) / 40 + (pg_temp.u(r.b, 4) % 100) / 100.0, 2)
               AS ltv,
           timestamptz '2019-01-01 00:00:00+00' + r.i * interval '2 hours'
               + (pg_temp.u(r.b, 5) % 7200) * interval '1 second' AS created_at
    FROM r
    JOIN demo_geo AS g ON g.id = 1 + pg_temp.u(r.b, 2) % 20
    CROSS JOIN demo_words AS w
)
INSERT INTO public.customers (customer_id, first_name, last_name, email, phone, address, city,
                              country, birth_date, tier, segment, lifetime_value, created_at,
                              updated_at)
SELECT c.i,
       c.first_name,
       c.last_name,
       pg_temp.ascii_lower(c.first_name) || '.' || pg_temp.ascii_lower(c.last_name) || c.i
           || '@example.com',
       CASE WHEN c.i % 20 = 7 THEN NULL
            ELSE c.calling_code || ' ' || (100 + pg_temp.u(c.b, 6) % 900) || ' '
                 || lpad((pg_temp.u(c.b, 7) % 10000000)::text, 7, '0') END,
       (1 + pg_temp.u(c.b, 8) % 250) || ' ' || w.streets[1 + pg_temp.u(c.b, 9) % 20]
           || ', ' || lpad((pg_temp.u(c.b, 10) % 100000)::text, 5, '0'),
       c.city,
       c.country,
       CASE WHEN c.i % 50 = 3 THEN NULL
            ELSE date '1945-01-01' + pg_temp.u(c.b, 11) % 21900 END,
       CASE WHEN c.ltv >= 20000 THEN 'platinum'
            WHEN c.ltv >= 8000 THEN 'gold'
            WHEN c.ltv >= 2000 THEN 'silver'
            ELSE 'standard' END,
       CASE WHEN c.i % 17 = 0 THEN NULL ELSE w.segments[1 + pg_temp.u(c.b, 12) % 6] END,
       c.ltv,
       c.created_at,
       c.created_at + (pg_temp.u(c.b, 13) % 1000) * interval '1 day'
                    + (pg_temp.u(c.b, 14) % 86400) * interval '1 second'
FROM c
CROSS JOIN demo_words AS w
ORDER BY c.i;

-- customer_events: 50,000 (about 5 per customer, over 2023)
WITH r AS MATERIALIZED (
    SELECT i, pg_temp.rand_bytes('event', i) AS b FROM generate_series(1, 50000) AS i
), e AS (
    SELECT r.i, r.b,
           1 + pg_temp.u(r.b, 0) % 10000 AS customer_id,
           w.event_types[1 + pg_temp.u(r.b, 1) % 10] AS event_type
    FROM r
    CROSS JOIN demo_words AS w
)
INSERT INTO public.customer_events (event_id, customer_id, event_type, ip_address, user_agent,
                                    payload, occurred_at)
SELECT e.i,
       e.customer_id,
       e.event_type,
       CASE WHEN pg_temp.u(e.b, 2) % 10 = 0
            THEN ('2001:db8:' || to_hex(pg_temp.u(e.b, 3) % 65536) || ':'
                  || to_hex(pg_temp.u(e.b, 4) % 65536) || '::'
                  || to_hex(1 + pg_temp.u(e.b, 5) % 65535))::inet
            ELSE ((1 + pg_temp.u(e.b, 6) % 223) || '.' || (pg_temp.u(e.b, 7) % 256) || '.'
                  || (pg_temp.u(e.b, 8) % 256) || '.' || (1 + pg_temp.u(e.b, 9) % 254))::inet
       END,
       w.user_agents[1 + pg_temp.u(e.b, 10) % 6],
       CASE e.event_type
           WHEN 'page_view' THEN jsonb_build_object(
               'path', w.pages[1 + pg_temp.u(e.b, 11) % 10],
               'duration_ms', pg_temp.u(e.b, 12) % 60000)
           WHEN 'login' THEN jsonb_build_object(
               'method', CASE WHEN pg_temp.u(e.b, 11) % 4 = 0 THEN 'sso' ELSE 'password' END,
               'success', pg_temp.u(e.b, 12) % 10 <> 0,
               'username', c.email)
           WHEN 'add_to_cart' THEN jsonb_build_object(
               'sku', 'SKU-' || lpad((pg_temp.u(e.b, 11) % 5000)::text, 5, '0'),
               'quantity', 1 + pg_temp.u(e.b, 12) % 3)
           WHEN 'purchase' THEN jsonb_build_object(
               'total', round((500 + pg_temp.u(e.b, 11) % 50000) / 100.0, 2),
               'currency', 'USD',
               'billing', jsonb_build_object('name', c.first_name || ' ' || c.last_name,
                                             'address', c.address))
           WHEN 'email_open' THEN jsonb_build_object(
               'campaign', 'newsletter-' || to_char(date '2023-01-01' + e.i / 137, 'YYYY-MM'),
               'to', c.email)
           WHEN 'support_ticket' THEN jsonb_build_object(
               'ticket', 'T-' || (100000 + e.i),
               'subject', 'Question about order',
               'callback_phone', c.phone)
           WHEN 'password_reset' THEN jsonb_build_object('email', c.email)
           ELSE '{}'::jsonb
       END,
       timestamptz '2023-01-01 00:00:00+00' + e.i * interval '10 minutes'
           + (pg_temp.u(e.b, 13) % 600) * interval '1 second'
FROM e
JOIN public.customers AS c ON c.customer_id = e.customer_id
CROSS JOIN demo_words AS w
ORDER BY e.i;

-- orders: 20,000 (10% shipped to an address other than the customer's)
WITH r AS MATERIALIZED (
    SELECT i, pg_temp.rand_bytes('order', i) AS b FROM generate_series(1, 20000) AS i
), o AS (
    SELECT r.i, r.b, 1 + pg_temp.u(r.b, 0) % 10000 AS customer_id, pg_temp.u(r.b, 1) % 100 AS roll
    FROM r
)
INSERT INTO public.orders (order_id, customer_id, amount, status, shipping_address, ordered_at)
SELECT o.i,
       o.customer_id,
       round((500 + pg_temp.u(o.b, 2) % 50000) / 100.0, 2),
       CASE WHEN o.roll < 5 THEN 'cancelled'
            WHEN o.roll < 8 THEN 'refunded'
            WHEN o.roll < 15 THEN 'pending'
            WHEN o.roll < 25 THEN 'paid'
            WHEN o.roll < 45 THEN 'shipped'
            ELSE 'delivered' END,
       CASE WHEN pg_temp.u(o.b, 3) % 10 = 0
            THEN (1 + pg_temp.u(o.b, 4) % 250) || ' ' || w.streets[1 + pg_temp.u(o.b, 5) % 20]
                 || ', ' || lpad((pg_temp.u(o.b, 6) % 100000)::text, 5, '0')
            ELSE c.address END,
       timestamptz '2022-01-01 00:00:00+00' + o.i * interval '39 minutes'
           + (pg_temp.u(o.b, 7) % 2340) * interval '1 second'
FROM o
JOIN public.customers AS c ON c.customer_id = o.customer_id
CROSS JOIN demo_words AS w
ORDER BY o.i;

-- customer_history: 10,000 previous contact details
WITH r AS MATERIALIZED (
    SELECT i, pg_temp.rand_bytes('history', i) AS b FROM generate_series(1, 10000) AS i
)
INSERT INTO public.customer_history (history_id, customer_id, changed_at, email, phone, address)
SELECT r.i,
       c.customer_id,
       c.created_at + (1 + pg_temp.u(r.b, 1) % 900) * interval '1 day',
       left(pg_temp.ascii_lower(c.first_name), 1) || '.' || pg_temp.ascii_lower(c.last_name)
           || (1950 + pg_temp.u(r.b, 2) % 50) || '@' || w.mail_domains[1 + pg_temp.u(r.b, 3) % 3],
       CASE WHEN r.i % 10 = 4 THEN NULL
            ELSE '+1 ' || (200 + pg_temp.u(r.b, 4) % 800) || ' '
                 || lpad((pg_temp.u(r.b, 5) % 10000000)::text, 7, '0') END,
       (1 + pg_temp.u(r.b, 6) % 250) || ' ' || w.streets[1 + pg_temp.u(r.b, 7) % 20]
           || ', ' || lpad((pg_temp.u(r.b, 8) % 100000)::text, 5, '0')
FROM r
JOIN public.customers AS c ON c.customer_id = 1 + pg_temp.u(r.b, 0) % 10000
CROSS JOIN demo_words AS w
ORDER BY r.i;

-- The ids above are explicit (= the series index); move the sequences past them.
SELECT setval(pg_get_serial_sequence('public.customer_events', 'event_id'), 50000),
       setval(pg_get_serial_sequence('public.orders', 'order_id'), 20000),
       setval(pg_get_serial_sequence('public.customer_history', 'history_id'), 10000);

-- Foreign keys after the load: one validating query each instead of a trigger call per row.
ALTER TABLE public.customer_events ADD FOREIGN KEY (customer_id) REFERENCES public.customers;
ALTER TABLE public.orders ADD FOREIGN KEY (customer_id) REFERENCES public.customers;

CREATE INDEX customers_email_idx ON public.customers (email);
CREATE INDEX customer_events_customer_id_idx ON public.customer_events (customer_id);
CREATE INDEX orders_customer_id_idx ON public.orders (customer_id);
CREATE INDEX customer_history_customer_id_idx ON public.customer_history (customer_id);

-- ---------------------------------------------------------------------------------------------
-- Privileges
-- ---------------------------------------------------------------------------------------------
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO support, solutions, dba, pgredact;

GRANT SELECT ON ALL TABLES IN SCHEMA public TO support;

GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO solutions;
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO solutions;

-- Raw access comes through pii_readers (the policy's unmasked role), so revoking a DBA's
-- membership takes it away at their next statement.
GRANT ALL ON ALL TABLES IN SCHEMA public TO pii_readers;
GRANT ALL ON ALL SEQUENCES IN SCHEMA public TO pii_readers;

-- The proxy's control-plane login: reads the catalog (no pg_authid needed), creates and owns its
-- own `pgredact` schema in this database, and anonymizes rows (forget).
GRANT SELECT, UPDATE, TRIGGER ON ALL TABLES IN SCHEMA public TO pgredact;
DO $grants$
BEGIN
    EXECUTE format('GRANT CONNECT, CREATE ON DATABASE %I TO pgredact', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO support, solutions, dba', current_database());
END
$grants$;

COMMIT;

ANALYZE public.customers, public.customer_events, public.orders, public.customer_history;
