"""The demo stack's sample data: the Dart Cloud backend's two databases and its functions volume.

``dart_cloud`` holds the platform (users, API keys, functions, deployments, sessions, an audit
log); ``functions_db`` holds what the functions do at run time (invocations, their logs, a
key-value store, schedules). A few MB in all, generated inside PostgreSQL so ``demo up`` is
quick; ids are derived from md5 so both databases agree on the same users and functions. The
volume is the backend's data directory: each function's versions (source, pubspec, a compiled
snapshot), a ``current`` symlink per function, build logs and uploaded avatars, owned by the
app's uid 1000.
"""

from __future__ import annotations

import io
import random
import tarfile

APP_ROLE = "dart_cloud_app"
USERS = 2_000
FUNCTIONS = 1_500
DEPLOYMENTS_PER_FUNCTION = 8
INVOCATIONS = 30_000

DART_CLOUD_SQL = f"""
DO $$ BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '{APP_ROLE}') THEN
        CREATE ROLE {APP_ROLE} LOGIN;
    END IF;
END $$;
SELECT setseed(0.42);
CREATE TABLE users (
    id uuid PRIMARY KEY,
    email text NOT NULL UNIQUE,
    display_name text NOT NULL,
    password_hash text NOT NULL,
    plan text NOT NULL DEFAULT 'free' CHECK (plan IN ('free', 'pro', 'team')),
    email_verified boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL,
    last_login_at timestamptz
);
CREATE TABLE api_keys (
    id bigserial PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name text NOT NULL,
    prefix text NOT NULL,
    key_hash text NOT NULL,
    scopes text[] NOT NULL,
    created_at timestamptz NOT NULL,
    last_used_at timestamptz,
    revoked_at timestamptz
);
CREATE TABLE functions (
    id uuid PRIMARY KEY,
    owner_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name text NOT NULL,
    runtime text NOT NULL DEFAULT 'dart-3.5',
    memory_mb int NOT NULL,
    timeout_seconds int NOT NULL,
    env jsonb NOT NULL DEFAULT '{{}}',
    created_at timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    UNIQUE (owner_id, name)
);
CREATE TABLE deployments (
    id bigserial PRIMARY KEY,
    function_id uuid NOT NULL REFERENCES functions(id) ON DELETE CASCADE,
    version int NOT NULL,
    status text NOT NULL CHECK (status IN ('building', 'active', 'superseded', 'failed')),
    source_sha256 text NOT NULL,
    image_bytes bigint,
    build_log text,
    created_at timestamptz NOT NULL,
    UNIQUE (function_id, version)
);
CREATE TABLE refresh_tokens (
    id bigserial PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    token_hash text NOT NULL,
    user_agent text,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL
);
CREATE TABLE audit_log (
    id bigserial PRIMARY KEY,
    user_id uuid REFERENCES users(id) ON DELETE SET NULL,
    action text NOT NULL,
    target text NOT NULL,
    details jsonb,
    at timestamptz NOT NULL
);

INSERT INTO users
SELECT md5('user' || g)::uuid,
       'dev' || g || '@example.dev',
       (ARRAY['Ada', 'Linus', 'Grace', 'Ken', 'Barbara', 'Dennis', 'Margaret', 'Guido'])
           [1 + g % 8] || ' ' || (ARRAY['Lovelace', 'Hopper', 'Thompson', 'Liskov', 'Ritchie',
           'Hamilton', 'Rossum', 'Torvalds'])[1 + (g / 8) % 8],
       '$argon2id$v=19$m=65536,t=3,p=4$' || md5('salt' || g) || '$' || md5('pw' || g),
       (ARRAY['free', 'free', 'free', 'pro', 'team'])[1 + g % 5],
       g % 7 <> 0,
       timestamptz '2024-01-01 00:00+00' + g * interval '3 hours 17 minutes',
       CASE WHEN g % 4 = 0 THEN NULL
            ELSE timestamptz '2026-10-01 00:00+00' + (g % 900) * interval '1 hour' END
FROM generate_series(1, {USERS}) g;

INSERT INTO api_keys (user_id, name, prefix, key_hash, scopes, created_at, last_used_at,
                      revoked_at)
SELECT md5('user' || (1 + g % {USERS}))::uuid,
       (ARRAY['ci', 'laptop', 'deploy-bot', 'staging'])[1 + g % 4],
       'dc_' || substr(md5('key' || g), 1, 8),
       encode(sha256(('secret' || g)::bytea), 'hex'),
       CASE g % 3 WHEN 0 THEN ARRAY['functions:read']
                  WHEN 1 THEN ARRAY['functions:read', 'functions:deploy']
                  ELSE ARRAY['functions:read', 'functions:deploy', 'logs:read'] END,
       timestamptz '2025-01-01 00:00+00' + g * interval '2 hours',
       timestamptz '2026-11-01 00:00+00' + (g % 500) * interval '1 hour',
       CASE WHEN g % 11 = 0 THEN timestamptz '2026-06-01 00:00+00' END
FROM generate_series(1, 3000) g;

INSERT INTO functions (id, owner_id, name, memory_mb, timeout_seconds, env, created_at,
                       updated_at)
SELECT md5('fn' || g)::uuid,
       md5('user' || (1 + g % {USERS}))::uuid,
       (ARRAY['resize-image', 'send-welcome-email', 'stripe-webhook', 'nightly-report',
              'thumbnail', 'slack-notify', 'pdf-invoice', 'geo-lookup', 'sitemap',
              'rate-limit'])[1 + g % 10] || '-' || g,
       (ARRAY[128, 256, 512, 1024])[1 + g % 4],
       (ARRAY[10, 30, 60, 300])[1 + g % 4],
       jsonb_build_object('LOG_LEVEL', (ARRAY['info', 'debug', 'warn'])[1 + g % 3],
                          'REGION', (ARRAY['eu-west', 'us-east'])[1 + g % 2]),
       timestamptz '2025-03-01 00:00+00' + g * interval '5 hours',
       timestamptz '2026-09-01 00:00+00' + g * interval '1 hour'
FROM generate_series(1, {FUNCTIONS}) g;

INSERT INTO deployments (function_id, version, status, source_sha256, image_bytes, build_log,
                         created_at)
SELECT md5('fn' || f)::uuid, v,
       CASE WHEN v = {DEPLOYMENTS_PER_FUNCTION} THEN 'active'
            WHEN (f + v) % 13 = 0 THEN 'failed' ELSE 'superseded' END,
       encode(sha256(('src' || f || '/' || v)::bytea), 'hex'),
       4000000 + ((f * 7919 + v * 104729) % 9000000),
       'Resolving dependencies...' || E'\\n' || 'Got dependencies!' || E'\\n' ||
       'Compiling bin/main.dart to AOT snapshot (' || (f * v) % 97 || ' libraries)' || E'\\n' ||
       CASE WHEN (f + v) % 13 = 0 THEN 'Error: lib/handler.dart:' || (f % 200) ||
            ': The getter ''body'' isn''t defined for the type ''Request''.'
            ELSE 'Built image sha256:' || md5('img' || f || v) END,
       timestamptz '2025-03-01 00:00+00' + f * interval '5 hours' + v * interval '9 days'
FROM generate_series(1, {FUNCTIONS}) f, generate_series(1, {DEPLOYMENTS_PER_FUNCTION}) v;

INSERT INTO refresh_tokens (user_id, token_hash, user_agent, expires_at, created_at)
SELECT md5('user' || (1 + g % {USERS}))::uuid,
       encode(sha256(('rt' || g)::bytea), 'hex'),
       (ARRAY['dart_cloud_cli/1.8.2', 'Mozilla/5.0 (X11; Linux x86_64) Firefox/131.0',
              'Dart/3.5 (dart:io)'])[1 + g % 3],
       timestamptz '2026-12-01 00:00+00' + g * interval '20 minutes',
       timestamptz '2026-11-01 00:00+00' + g * interval '20 minutes'
FROM generate_series(1, 5000) g;

INSERT INTO audit_log (user_id, action, target, details, at)
SELECT md5('user' || (1 + g % {USERS}))::uuid,
       (ARRAY['function.deploy', 'function.create', 'apikey.create', 'apikey.revoke',
              'user.login', 'function.env.update'])[1 + g % 6],
       'function/' || md5('fn' || (1 + g % {FUNCTIONS}))::uuid,
       jsonb_build_object('ip', '192.0.2.' || (g % 250), 'request_id', md5('req' || g)),
       timestamptz '2026-01-01 00:00+00' + g * interval '13 minutes'
FROM generate_series(1, 20000) g;

CREATE INDEX deployments_active ON deployments (function_id) WHERE status = 'active';
CREATE INDEX audit_log_user_at ON audit_log (user_id, at DESC);
CREATE VIEW active_deployments AS
    SELECT f.name, f.owner_id, d.version, d.created_at
    FROM functions f JOIN deployments d ON d.function_id = f.id AND d.status = 'active';
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE};
ANALYZE;
"""

FUNCTIONS_DB_SQL = f"""
CREATE TABLE invocations (
    id bigserial PRIMARY KEY,
    function_id uuid NOT NULL,
    deployment_version int NOT NULL,
    started_at timestamptz NOT NULL,
    duration_ms int NOT NULL,
    http_status smallint NOT NULL,
    cold_start boolean NOT NULL,
    memory_used_mb int NOT NULL,
    request_path text NOT NULL,
    error text
);
CREATE TABLE function_logs (
    id bigserial PRIMARY KEY,
    invocation_id bigint NOT NULL REFERENCES invocations(id) ON DELETE CASCADE,
    at timestamptz NOT NULL,
    level text NOT NULL,
    message text NOT NULL
);
CREATE TABLE kv_store (
    function_id uuid NOT NULL,
    key text NOT NULL,
    value jsonb NOT NULL,
    updated_at timestamptz NOT NULL,
    PRIMARY KEY (function_id, key)
);
CREATE TABLE schedules (
    id serial PRIMARY KEY,
    function_id uuid NOT NULL,
    cron text NOT NULL,
    enabled boolean NOT NULL DEFAULT true,
    last_run_at timestamptz
);

INSERT INTO invocations (function_id, deployment_version, started_at, duration_ms,
                         http_status, cold_start, memory_used_mb, request_path, error)
SELECT md5('fn' || (1 + (g * 31) % {FUNCTIONS}))::uuid, {DEPLOYMENTS_PER_FUNCTION},
       timestamptz '2026-11-20 00:00+00' + g * interval '17 seconds',
       5 + (g * 7919) % 1200,
       CASE WHEN g % 97 = 0 THEN 500 WHEN g % 23 = 0 THEN 404 ELSE 200 END,
       g % 19 = 0,
       20 + (g * 31) % 200,
       (ARRAY['/', '/webhook', '/api/v1/items', '/render', '/health'])[1 + g % 5],
       CASE WHEN g % 97 = 0 THEN 'Unhandled exception: SocketException: Connection reset '
                                  || '(OS Error: Broken pipe, errno = 32)' END
FROM generate_series(1, {INVOCATIONS}) g;

INSERT INTO function_logs (invocation_id, at, level, message)
SELECT i.id, i.started_at + n * interval '3 milliseconds',
       CASE WHEN i.http_status = 500 AND n = 2 THEN 'error' ELSE 'info' END,
       CASE n WHEN 1 THEN 'START ' || i.request_path || ' cold=' || i.cold_start
              ELSE 'END status=' || i.http_status || ' in ' || i.duration_ms || 'ms' END
FROM invocations i, generate_series(1, 2) n;

INSERT INTO kv_store
SELECT md5('fn' || (1 + g % {FUNCTIONS}))::uuid, 'counter:' || (g / {FUNCTIONS}),
       jsonb_build_object('hits', (g * 7) % 100000, 'last', 'item-' || g),
       timestamptz '2026-11-25 00:00+00' + g * interval '1 minute'
FROM generate_series(1, 4000) g;

INSERT INTO schedules (function_id, cron, enabled, last_run_at)
SELECT md5('fn' || (g * 10))::uuid,
       (ARRAY['0 2 * * *', '*/15 * * * *', '0 * * * *'])[1 + g % 3], g % 9 <> 0,
       timestamptz '2026-11-26 02:00+00'
FROM generate_series(1, 150) g;

CREATE INDEX invocations_function_time ON invocations (function_id, started_at DESC);
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO {APP_ROLE};
GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO {APP_ROLE};
ANALYZE;
"""

DATABASES = {"dart_cloud": DART_CLOUD_SQL, "functions_db": FUNCTIONS_DB_SQL}

BROKEN_TABLE = ("dart_cloud", "deployments")
"""What ``dcb demo break`` drops: a migration run against the wrong database."""

APP_FUNCTIONS = ("resize-image", "send-welcome-email", "stripe-webhook", "nightly-report",
                 "thumbnail", "slack-notify", "pdf-invoice", "geo-lookup")
BROKEN_FUNCTIONS = ("stripe-webhook", "pdf-invoice")
"""Function directories ``dcb demo break`` deletes from the volume (an ``rm -rf`` typo)."""
APP_UID = 1000


def functions_tree() -> bytes:
    """The functions volume as a tar: per function three versions (main.dart, pubspec.yaml,
    a compiled snapshot), ``current`` -> the newest version, an empty ``tmp``; build logs;
    avatars. Deterministic bytes."""
    rng = random.Random(42)
    buf = io.BytesIO()
    mtime = 1_764_000_000

    def add(path: str, data: bytes | None = None, *, link: str | None = None,
            mode: int = 0o644) -> None:
        ti = tarfile.TarInfo(path)
        ti.uid = ti.gid = APP_UID
        ti.uname = ti.gname = ""
        ti.mtime = mtime
        if link is not None:
            ti.type, ti.linkname, ti.mode = tarfile.SYMTYPE, link, 0o777
            tf.addfile(ti)
        elif data is None:
            ti.type, ti.mode = tarfile.DIRTYPE, 0o755
            tf.addfile(ti)
        else:
            ti.size, ti.mode = len(data), mode
            tf.addfile(ti, io.BytesIO(data))

    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tf:
        for d in ("functions", "builds", "uploads", "uploads/avatars"):
            add(d)
        for name in APP_FUNCTIONS:
            base = f"functions/{name}"
            add(base)
            add(f"{base}/tmp")
            for v in (1, 2, 3):
                add(f"{base}/v{v}")
                add(f"{base}/v{v}/main.dart", (
                    "import 'package:dart_cloud_functions/dart_cloud_functions.dart';\n\n"
                    f"// {name}, version {v}\n"
                    "Future<Response> handler(Request request) async {\n"
                    f"  return Response.ok('{name} v{v}: ${{request.url.path}}');\n"
                    "}\n").encode())
                add(f"{base}/v{v}/pubspec.yaml", (
                    f"name: {name.replace('-', '_')}\nversion: 1.{v}.0\n"
                    "environment:\n  sdk: ^3.5.0\ndependencies:\n"
                    "  dart_cloud_functions: ^1.8.0\n").encode())
                add(f"{base}/v{v}/app.aot", rng.randbytes(40_000 + 9_000 * v), mode=0o755)
                add(f"builds/{name}-v{v}.log",
                    (f"[build] {name} v{v}\nResolving dependencies...\nGot dependencies!\n"
                     "Compiling bin/main.dart to AOT snapshot\nBuild succeeded\n" * 40
                     ).encode(), mode=0o640)
            add(f"{base}/current", link="v3")
        for i in range(1, 61):
            add(f"uploads/avatars/{i:04d}.png", b"\x89PNG\r\n\x1a\n" + rng.randbytes(6_000))
    return buf.getvalue()
