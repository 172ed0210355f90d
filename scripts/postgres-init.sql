-- Roles and database of factflow-lineage. Idempotent; run by psql as a superuser.
--
--   scripts/stack up      runs it after every start of its own PostgreSQL, passing
--                         the names and passwords parsed from FACTFLOW_PG_DSN and
--                         FACTFLOW_PG_READ_DSN as psql variables (-v writer=...).
--   docker-compose.yml    mounts it into /docker-entrypoint-initdb.d, where the
--                         postgres image runs it once, on an empty data directory.
--   your own server       psql -U postgres -f scripts/postgres-init.sql
--                         (or read it as the list of grants the roles need).
--
-- Each value comes from a psql variable if set, else from the environment variable
-- named beside it (psql 15+ \getenv), else from the default that matches the DSNs in
-- README.md. psql variables are not expanded inside $$ bodies, hence the
-- "SELECT format(...) WHERE NOT EXISTS ... \gexec" idiom instead of DO blocks.

\set ON_ERROR_STOP on

\if :{?writer}
\else
  \getenv writer FACTFLOW_PG_WRITER
\endif
\if :{?writer}
\else
  \set writer factflow_writer
\endif

\if :{?writer_password}
\else
  \getenv writer_password FACTFLOW_PG_WRITER_PASSWORD
\endif
\if :{?writer_password}
\else
  \set writer_password factflow_writer
\endif

\if :{?reader}
\else
  \getenv reader FACTFLOW_PG_READER
\endif
\if :{?reader}
\else
  \set reader factflow_reader
\endif

\if :{?reader_password}
\else
  \getenv reader_password FACTFLOW_PG_READER_PASSWORD
\endif
\if :{?reader_password}
\else
  \set reader_password factflow_reader
\endif

\if :{?dbname}
\else
  \getenv dbname FACTFLOW_PG_DATABASE
\endif
\if :{?dbname}
\else
  \set dbname factflow
\endif

-- The writer (projector, migrations, tests) owns the database, so it may CREATE
-- SCHEMA: tests and rebuilds each use a schema of their own.
SELECT format('CREATE ROLE %I LOGIN', :'writer')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'writer') \gexec
-- Always (re)set: the DSN is the source of truth for the password.
ALTER ROLE :"writer" WITH LOGIN PASSWORD :'writer_password';

-- The reader (query side: CLI, REST API) may connect and read, nothing else.
SELECT format('CREATE ROLE %I LOGIN', :'reader')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'reader') \gexec
ALTER ROLE :"reader" WITH LOGIN PASSWORD :'reader_password';

-- CREATE DATABASE cannot run inside a transaction block (so not in a DO block either).
SELECT format('CREATE DATABASE %I OWNER %I', :'dbname', :'writer')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'dbname') \gexec
ALTER DATABASE :"dbname" OWNER TO :"writer";
REVOKE ALL ON DATABASE :"dbname" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"dbname" TO :"reader";

-- Default privileges are per database: set them inside it.
\connect :"dbname"

-- Everything the writer creates from now on is readable by the reader, whichever
-- schema it lands in; no per-schema GRANT needed after a migration.
ALTER DEFAULT PRIVILEGES FOR ROLE :"writer" GRANT USAGE ON SCHEMAS TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"writer" GRANT SELECT ON TABLES TO :"reader";
ALTER DEFAULT PRIVILEGES FOR ROLE :"writer" GRANT SELECT ON SEQUENCES TO :"reader";

-- What the writer created before this ran (a database made by someone else, or
-- this file applied to an existing server) gets the same grants now.
SELECT format('GRANT USAGE ON SCHEMA %I TO %I', n.nspname, :'reader'),
       format('GRANT SELECT ON ALL TABLES IN SCHEMA %I TO %I', n.nspname, :'reader')
  FROM pg_namespace n JOIN pg_roles r ON r.oid = n.nspowner
 WHERE r.rolname = :'writer' \gexec
