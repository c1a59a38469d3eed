-- Sample data for the test stack's dart_cloud database: several tables and types
-- (json/jsonb, bytea, timestamps, numeric, arrays), a sequence, a view, a role.
CREATE SEQUENCE invoice_no START 1000;
CREATE TABLE users (
    id serial PRIMARY KEY,
    email text NOT NULL UNIQUE,
    created_at timestamptz NOT NULL,
    profile jsonb,
    avatar bytea
);
CREATE TABLE projects (
    id bigserial PRIMARY KEY,
    owner_id int NOT NULL REFERENCES users(id),
    name text NOT NULL,
    settings json,
    tags text[],
    budget numeric(12,2),
    updated_at timestamp
);
CREATE TABLE invoices (
    no int PRIMARY KEY DEFAULT nextval('invoice_no'),
    project_id bigint REFERENCES projects(id),
    amount numeric(12,2) NOT NULL,
    issued date NOT NULL
);
INSERT INTO users (email, created_at, profile, avatar)
SELECT 'user' || g || '@example.test',
       timestamptz '2024-01-01 00:00:00+00' + g * interval '1 hour',
       jsonb_build_object('name', 'User ' || g, 'level', g % 5, 'unicode', 'Zoë ☃ ' || g),
       decode(md5(g::text), 'hex')
FROM generate_series(1, 500) g;
INSERT INTO projects (owner_id, name, settings, tags, budget, updated_at)
SELECT (g % 500) + 1, 'project-' || g, json_build_object('runtime', 'dart', 'mem', 128 * (g % 4 + 1)),
       ARRAY['t' || (g % 3), 'x'], g * 10.5, timestamp '2024-06-01' + g * interval '1 minute'
FROM generate_series(1, 1200) g;
INSERT INTO invoices (project_id, amount, issued)
SELECT (g % 1200) + 1, (g % 97) * 3.25, date '2024-01-01' + (g % 300)
FROM generate_series(1, 3000) g;
CREATE VIEW big_spenders AS
    SELECT u.email, sum(i.amount) AS total
    FROM users u JOIN projects p ON p.owner_id = u.id JOIN invoices i ON i.project_id = p.id
    GROUP BY u.email;
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'dart_app') THEN
        CREATE ROLE dart_app LOGIN;
    END IF;
END $$;
GRANT SELECT ON ALL TABLES IN SCHEMA public TO dart_app;
