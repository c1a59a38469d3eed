-- Sample data for the test stack's functions_db database.
CREATE TABLE functions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name text NOT NULL,
    source bytea NOT NULL,
    deployed_at timestamptz NOT NULL DEFAULT '2024-03-01 12:00:00+00'
);
CREATE TABLE invocations (
    id bigserial PRIMARY KEY,
    function_name text NOT NULL,
    payload jsonb NOT NULL,
    duration_ms double precision,
    at timestamptz NOT NULL
);
INSERT INTO functions (name, source)
SELECT 'fn_' || g, convert_to(repeat('void main() => print(' || g || ');', 20), 'UTF8')
FROM generate_series(1, 50) g;
INSERT INTO invocations (function_name, payload, duration_ms, at)
SELECT 'fn_' || (g % 50 + 1), jsonb_build_object('req', g, 'ok', g % 7 <> 0),
       g / 7.0, timestamptz '2024-03-02 00:00:00+00' + g * interval '1 second'
FROM generate_series(1, 2000) g;
CREATE VIEW failures AS SELECT * FROM invocations WHERE NOT (payload->>'ok')::boolean;
