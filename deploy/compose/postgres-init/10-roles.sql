-- tradeflow's roles and schemas in PostgreSQL: run once, after initdb, as the superuser, in the database
-- the services use (Compose: the postgres image runs this folder, /docker-entrypoint-initdb.d, in
-- POSTGRES_DB; Kubernetes: CloudNativePG runs this same file, deploy/k8s/postgres-roles.yaml). Plain SQL,
-- no psql commands, and idempotent: it can run again.
--
-- Each writer owns a schema and nothing else: at start-up it creates its own tables there (CREATE TABLE
-- IF NOT EXISTS, the tradeflow_schema version table too), found through the search_path set here.
--
--   role                 may                                              used as
--   tradeflow_recorder   create, write, read, delete in schema events     the recorder's TRADEFLOW_STORE
--                                                                         (and `tradeflow store compact`)
--   tradeflow_execution  create, write, read in schema ledger             execution's TRADEFLOW_EXECUTION_LEDGER
--   tradeflow_audit      create, write, read in schema audit              audit's TRADEFLOW_AUDIT_LOG
--   tradeflow_reader     read schema events (each table the recorder      the TRADEFLOW_STORE of strategy, quant,
--                        creates, now or later); its transactions are     risk, execution and audit (their
--                        read-only                                        rebuild), and of people's queries
--
-- No role may create anything in public or in another's schema, nor write another's tables; none but
-- these (and the superuser) may connect to this database. The roles are made here without LOGIN:
-- 20-logins.sh (Compose) or CloudNativePG's managed roles (Kubernetes) give each its login and password.

DO $$
DECLARE
    role text;
BEGIN
    FOREACH role IN ARRAY ARRAY['tradeflow_recorder', 'tradeflow_execution', 'tradeflow_audit', 'tradeflow_reader']
    LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = role) THEN
            EXECUTE format('CREATE ROLE %I NOLOGIN', role);
        END IF;
    END LOOP;
END
$$;

CREATE SCHEMA IF NOT EXISTS events AUTHORIZATION tradeflow_recorder;
CREATE SCHEMA IF NOT EXISTS ledger AUTHORIZATION tradeflow_execution;
CREATE SCHEMA IF NOT EXISTS audit AUTHORIZATION tradeflow_audit;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;   -- PostgreSQL 15 does already; older ones do not

-- the rebuild reads the event store: every table the recorder has made, and every one it will make
GRANT USAGE ON SCHEMA events TO tradeflow_reader;
GRANT SELECT ON ALL TABLES IN SCHEMA events TO tradeflow_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE tradeflow_recorder IN SCHEMA events GRANT SELECT ON TABLES TO tradeflow_reader;
ALTER DEFAULT PRIVILEGES FOR ROLE tradeflow_recorder IN SCHEMA events GRANT SELECT ON SEQUENCES TO tradeflow_reader;

DO $$
BEGIN
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO tradeflow_recorder, tradeflow_execution, tradeflow_audit, '
                   'tradeflow_reader', current_database());
    EXECUTE format('GRANT TEMPORARY ON DATABASE %I TO tradeflow_recorder, tradeflow_execution, tradeflow_audit',
                   current_database());
    -- each finds its own tables (and only those) by their bare names
    EXECUTE format('ALTER ROLE tradeflow_recorder IN DATABASE %I SET search_path = events', current_database());
    EXECUTE format('ALTER ROLE tradeflow_execution IN DATABASE %I SET search_path = ledger', current_database());
    EXECUTE format('ALTER ROLE tradeflow_audit IN DATABASE %I SET search_path = audit', current_database());
    EXECUTE format('ALTER ROLE tradeflow_reader IN DATABASE %I SET search_path = events', current_database());
    EXECUTE format('ALTER ROLE tradeflow_reader IN DATABASE %I SET default_transaction_read_only = on',
                   current_database());
END
$$;
