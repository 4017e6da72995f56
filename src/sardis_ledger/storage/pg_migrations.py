"""Versioned PostgreSQL schema for :mod:`sardis_ledger.storage.postgresql`.

Each migration is applied once, in order, inside one transaction that holds a
database-wide advisory lock, so any number of processes may open a new or old
database at the same moment: one upgrades it, the others wait and then find
nothing to do. Migrations are never edited once released; a change to the schema
is a new entry at the end of :data:`MIGRATIONS`, written so that it keeps every
existing row (add columns as nullable or with defaults, backfill in SQL).

Text columns that the engine compares or sorts (ids, timestamps) use the ``"C"``
collation so ordering is byte order, exactly as in SQLite, whatever the server's
default locale is.
"""

from __future__ import annotations

__all__ = ["MIGRATIONS", "MIGRATION_LOCK_KEY", "VERSION_TABLE"]

VERSION_TABLE = "ledger_schema_version"

MIGRATION_LOCK_KEY = 0x5A_4D_1E_06_0001
"""``pg_advisory_xact_lock`` key that serialises schema upgrades in a database."""

_EMPTY_ROOT_HEX = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"

_APPEND_ONLY = ("entries", "batches", "nodes", "checkpoints", "assets")

_V1_INITIAL = f"""
CREATE TABLE assets (
    code TEXT COLLATE "C" PRIMARY KEY,
    scale INTEGER NOT NULL CHECK (scale BETWEEN 0 AND 18)
);
CREATE TABLE accounts (
    account_id TEXT COLLATE "C" PRIMARY KEY,
    asset TEXT COLLATE "C" NOT NULL,
    balance BIGINT NOT NULL,
    overdraft_limit BIGINT NOT NULL CHECK (overdraft_limit >= 0),
    metadata TEXT NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    CONSTRAINT accounts_floor CHECK (balance >= -overdraft_limit)
) WITH (fillfactor = 50);  -- room on each page for balance updates to stay HOT
CREATE TABLE entries (
    seq BIGINT PRIMARY KEY CHECK (seq >= 0),
    entry_id TEXT COLLATE "C" NOT NULL UNIQUE,
    batch_id TEXT COLLATE "C" NOT NULL,
    account_id TEXT COLLATE "C" NOT NULL,
    asset TEXT COLLATE "C" NOT NULL,
    amount BIGINT NOT NULL CHECK (amount > 0),
    direction TEXT COLLATE "C" NOT NULL CHECK (direction IN ('credit', 'debit')),
    running_balance BIGINT NOT NULL,
    created_at TEXT COLLATE "C" NOT NULL,
    reference TEXT COLLATE "C",
    metadata TEXT NOT NULL,
    reverses TEXT COLLATE "C"
);
CREATE INDEX entries_account ON entries (account_id, seq);
CREATE INDEX entries_reference ON entries (reference, seq) WHERE reference IS NOT NULL;
CREATE TABLE batches (
    batch_id TEXT COLLATE "C" PRIMARY KEY,
    first_seq BIGINT NOT NULL,
    count INTEGER NOT NULL CHECK (count >= 0),
    created_at TEXT COLLATE "C" NOT NULL,
    reverses TEXT COLLATE "C",
    reason TEXT,
    idempotency_key TEXT COLLATE "C",
    request_hash TEXT
);
-- Partial: most batches have neither, and a bulk write should not index NULLs.
CREATE UNIQUE INDEX batches_reverses ON batches (reverses) WHERE reverses IS NOT NULL;
CREATE UNIQUE INDEX batches_idempotency ON batches (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE TABLE nodes (
    level INTEGER NOT NULL,
    idx BIGINT NOT NULL,
    hash BYTEA NOT NULL CHECK (length(hash) = 32),
    PRIMARY KEY (level, idx)
);
CREATE TABLE tree_head (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    size BIGINT NOT NULL CHECK (size >= 0),
    root BYTEA NOT NULL,
    updated_at TEXT COLLATE "C" NOT NULL
);
INSERT INTO tree_head (id, size, root, updated_at) VALUES (1, 0, '\\x{_EMPTY_ROOT_HEX}'::bytea, '');
CREATE TABLE checkpoints (seq BIGINT PRIMARY KEY, balances JSONB NOT NULL);

-- Entries are appended in created_at order, so a binary search on seq finds the
-- number of entries at or before a time in O(log n) index probes, in one round trip.
CREATE FUNCTION ledger_seq_after_time(ts TEXT) RETURNS BIGINT
LANGUAGE plpgsql STABLE AS $$
DECLARE
    lo BIGINT := 0;
    hi BIGINT;
    mid BIGINT;
    t TEXT;
BEGIN
    SELECT size INTO hi FROM tree_head WHERE id = 1;
    hi := coalesce(hi, 0);
    WHILE lo < hi LOOP
        mid := (lo + hi) / 2;
        SELECT created_at INTO t FROM entries WHERE seq = mid;
        IF t IS NOT NULL AND t COLLATE "C" <= ts COLLATE "C" THEN
            lo := mid + 1;
        ELSE
            hi := mid;
        END IF;
    END LOOP;
    RETURN lo;
END
$$;
"""

_V2_APPEND_ONLY = (
    """
CREATE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'ledger history is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'restrict_violation';
END
$$;
CREATE FUNCTION ledger_refuse_shrink() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the Merkle tree head never shrinks (% -> %)', OLD.size, NEW.size
        USING ERRCODE = 'restrict_violation';
END
$$;
"""
    + "".join(
        f"""
CREATE TRIGGER {t}_append_only BEFORE UPDATE OR DELETE ON {t}
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER {t}_no_truncate BEFORE TRUNCATE ON {t}
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON {t} FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON {t} FROM CURRENT_USER;
"""
        for t in _APPEND_ONLY
    )
    + """
CREATE TRIGGER accounts_no_delete BEFORE DELETE ON accounts
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER accounts_identity BEFORE UPDATE ON accounts
    FOR EACH ROW WHEN (NEW.account_id IS DISTINCT FROM OLD.account_id
                       OR NEW.asset IS DISTINCT FROM OLD.asset
                       OR NEW.created_at IS DISTINCT FROM OLD.created_at)
    EXECUTE FUNCTION ledger_refuse_change();
REVOKE DELETE, TRUNCATE ON accounts FROM PUBLIC;
REVOKE DELETE, TRUNCATE ON accounts FROM CURRENT_USER;
CREATE TRIGGER tree_head_no_delete BEFORE DELETE ON tree_head
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER tree_head_no_truncate BEFORE TRUNCATE ON tree_head
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER tree_head_no_shrink BEFORE UPDATE ON tree_head
    FOR EACH ROW WHEN (NEW.size < OLD.size) EXECUTE FUNCTION ledger_refuse_shrink();
REVOKE DELETE, TRUNCATE ON tree_head FROM PUBLIC;
REVOKE DELETE, TRUNCATE ON tree_head FROM CURRENT_USER;
"""
)

_V3_FRONTIER = """
-- The Merkle frontier (the complete subtrees on the right edge) of the tree the
-- head describes, 32 bytes per subtree, left to right: writers append without
-- reading the nodes table. NULL means unknown; the next writer reads the nodes.
ALTER TABLE tree_head ADD COLUMN frontier BYTEA;
"""

_V4_JSON_ROWS = """
-- Writers send each table's rows as one JSON array. The planner assumes a set
-- function returns 100 rows, which makes it hash-join the balance update against
-- a sequential scan of every account; this wrapper says "about one" so the
-- update probes the primary key for the few accounts a transfer touches.
CREATE FUNCTION ledger_json_rows(rows JSONB) RETURNS SETOF JSONB
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE ROWS 1
AS 'SELECT jsonb_array_elements(rows)';
"""

_V5_NODE_BLOCKS = """
-- Merkle nodes as the runs that writes create: a write's new nodes occupy
-- consecutive places in creation order (sardis_ledger.merkle.node_position), so
-- they are stored as one row of 32-byte hashes keyed by the first place, instead
-- of one row (and one index entry) per node. Nodes written before this version
-- stay in `nodes` and are still read from there.
--
-- Nothing writes per-node rows any more: a process of an older version still
-- running after this upgrade is refused its writes instead of storing nodes
-- where this version does not look for new ones. Created first, so that it waits
-- for such writers' open transactions and the count below is final.
CREATE TRIGGER nodes_closed BEFORE INSERT ON nodes
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TABLE node_blocks (
    first_pos BIGINT PRIMARY KEY CHECK (first_pos >= 0),
    hashes BYTEA NOT NULL CHECK (octet_length(hashes) > 0 AND octet_length(hashes) % 32 = 0),
    -- An INSERT cannot shadow stored nodes: blocks never overlap one another...
    CONSTRAINT node_blocks_disjoint
        EXCLUDE USING gist (int8range(first_pos, first_pos + octet_length(hashes) / 32) WITH &&)
);
-- ... nor the per-node rows written before this version.
DO $$
BEGIN
    EXECUTE format('ALTER TABLE node_blocks ADD CONSTRAINT node_blocks_after_rows CHECK (first_pos >= %s)',
                   (SELECT count(*) FROM nodes));
END
$$;
-- Uncompressed out-of-line storage: hashes do not compress, and a proof reads
-- 32-byte slices of a block without fetching the rest.
ALTER TABLE node_blocks ALTER COLUMN hashes SET STORAGE EXTERNAL;
CREATE TRIGGER node_blocks_append_only BEFORE UPDATE OR DELETE ON node_blocks
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER node_blocks_no_truncate BEFORE TRUNCATE ON node_blocks
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
REVOKE UPDATE, DELETE, TRUNCATE ON node_blocks FROM PUBLIC;
REVOKE UPDATE, DELETE, TRUNCATE ON node_blocks FROM CURRENT_USER;
"""

MIGRATIONS: list[tuple[str, str]] = [
    ("initial schema", _V1_INITIAL),
    ("append-only triggers and privileges", _V2_APPEND_ONLY),
    ("Merkle frontier in the tree head", _V3_FRONTIER),
    ("row-count hint for JSON rows", _V4_JSON_ROWS),
    ("Merkle nodes stored as one block per write", _V5_NODE_BLOCKS),
]
"""``(name, sql)``; the schema version after applying migration ``i`` is ``i + 1``."""
