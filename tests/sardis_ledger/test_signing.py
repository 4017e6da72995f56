"""Keys, signed tree heads and the evidence a ledger hands to clients."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sardis_ledger import Ledger, verifier
from sardis_ledger.errors import BatchNotFoundError, EntryNotFoundError, IntegrityError, StorageError, ValidationError
from sardis_ledger.evidence import AsyncEvidence, Evidence
from sardis_ledger.signing import HeadLog, Keyring, TreeHeadSigner, default_key_dir, store_location
from sardis_ledger.verifier import TreeHeadTracker, VerificationError


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_key_is_generated_owner_only(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    assert mode(tmp_path / "keys") == 0o700
    kid = ring.current_key_id()
    assert mode(tmp_path / "keys" / f"{kid}.pem") == 0o600
    public = ring.public_keyring()
    assert public["current"] == kid
    assert public["keys"][0]["key_id"] == kid
    assert verifier.key_id_of(bytes.fromhex(public["keys"][0]["public_key"])) == kid
    assert "PRIVATE" not in json.dumps(public)
    assert Keyring(tmp_path / "keys").current_key_id() == kid  # loaded, not regenerated


def test_refuses_key_material_others_can_read(tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir(mode=0o755)
    os.chmod(loose, 0o755)
    with pytest.raises(StorageError, match="chmod 700"):
        Keyring(loose)
    ring = Keyring(tmp_path / "keys")
    kid = ring.current_key_id()
    os.chmod(tmp_path / "keys" / f"{kid}.pem", 0o644)
    with pytest.raises(StorageError, match="chmod 600"):
        Keyring(tmp_path / "keys").sign_tree_head("o", 0, bytes(32))


def test_rotation_keeps_old_heads_verifiable(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    old = ring.sign_tree_head("sardis-ledger", 3, bytes(32))
    first = ring.current_key_id()
    second = ring.rotate()
    assert second != first
    new = ring.sign_tree_head("sardis-ledger", 4, bytes(32))
    assert new.key_id == second
    public = Keyring(tmp_path / "keys").public_keyring()
    retired = {k["key_id"]: k["retired_at"] for k in public["keys"]}
    assert retired[first] is not None
    assert retired[second] is None
    keys = verifier.load_public_keys(public)
    verifier.verify_signed_tree_head(old, keys)
    verifier.verify_signed_tree_head(new, keys)


def test_concurrent_processes_agree_on_one_first_key(tmp_path: Path) -> None:
    code = (
        "import sys; from sardis_ledger.signing import Keyring;"
        "print(Keyring(sys.argv[1]).current_key_id())"
    )
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "keys")], stdout=subprocess.PIPE, text=True)
             for _ in range(3)]
    ids = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert len(ids) == 1
    assert len(list((tmp_path / "keys").glob("*.pem"))) == 1


def test_default_key_dir_and_store_location(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_KEY_DIR", raising=False)
    assert default_key_dir(f"sqlite:///{tmp_path}/x.db") == tmp_path / "keys"
    assert default_key_dir(str(tmp_path / "l.json")) == tmp_path / "keys"
    assert default_key_dir("memory://") is None
    monkeypatch.setenv("LEDGER_KEY_DIR", str(tmp_path / "k"))
    assert default_key_dir("postgresql://u:secret@db:5433/led") == tmp_path / "k"
    assert store_location("postgresql://u:secret@db:5433/led") == "postgresql://db:5433/led"


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    led = Ledger(f"sqlite:///{tmp_path / 'ledger.db'}")
    led.create_entry("alice", 100, "credit")
    led.transfer("alice", "bob", 30)
    led.transfer("bob", "carol", 5)
    return led


def test_signer_signs_only_when_the_log_grows(ledger: Ledger, tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    log = HeadLog.for_store(ring, "sardis-ledger", ledger.database_url)
    signer = TreeHeadSigner(ledger, ring, log)
    first = signer.signed_tree_head()
    assert first.tree_size == 5
    assert signer.signed_tree_head() == first
    ledger.create_entry("dave", 1, "credit")
    second = signer.signed_tree_head()
    assert second.tree_size == 6
    assert second.timestamp >= first.timestamp
    assert [h for _, h in log.entries()] == [first, second]
    assert HeadLog(log.path).last() == second


def test_signer_refuses_to_sign_a_rolled_back_store(ledger: Ledger, tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "keys")
    log = HeadLog.for_store(ring, "sardis-ledger", ledger.database_url)
    signer = TreeHeadSigner(ledger, ring, log)
    copy = Ledger(f"sqlite:///{tmp_path / 'other.db'}")
    copy.create_entry("alice", 1, "credit")
    TreeHeadSigner(ledger, ring, log).signed_tree_head()
    with pytest.raises(IntegrityError, match="rolled back"):
        TreeHeadSigner(copy, ring, log).signed_tree_head()
    for _ in range(5):
        copy.create_entry("alice", 1, "credit")
    with pytest.raises(IntegrityError, match="rewritten"):
        TreeHeadSigner(copy, ring, log).signed_tree_head()
    assert signer.signed_tree_head().tree_size == 5


def test_inclusion_bundles_verify_offline(ledger: Ledger, tmp_path: Path) -> None:
    ev = Evidence(ledger, Keyring(tmp_path / "keys"))
    keys = verifier.load_public_keys(json.loads(json.dumps(ev.public_keyring())))
    transfer = ledger.list_entries(limit=10).items[1].batch_id
    entry_id = ledger.list_entries(limit=10).items[4].entry_id
    for ref, size, expect in ((2, None, [2]), ("3", 3, [3]), (transfer, 3, [2, 3]), (entry_id, None, [5]),
                              (1, 1, [1])):
        bundle = json.loads(json.dumps(ev.inclusion_proof(ref, size)))
        proven = verifier.verify_inclusion_bundle(bundle, keys, origin="sardis-ledger")
        assert [p.sequence for p in proven] == expect
        assert proven[0].signed_tree_head.tree_size == 5
    bundle = ev.inclusion_proof(2, 3)
    bad_leaf = json.loads(json.dumps(bundle))
    bad_leaf["entries"][0]["leaf"] = bad_leaf["entries"][0]["leaf"].replace('"amount":"30"', '"amount":"3"')
    bad_leaf["entries"][0].pop("leaf_hash")
    with pytest.raises(VerificationError):
        verifier.verify_inclusion_bundle(bad_leaf, keys)
    moved = json.loads(json.dumps(bundle))
    moved["entries"][0]["leaf_index"] = 0
    with pytest.raises(VerificationError, match="sequence"):
        verifier.verify_inclusion_bundle(moved, keys)
    bigger = {**bundle, "tree_size": 6}
    with pytest.raises(VerificationError, match="beyond"):
        verifier.verify_inclusion_bundle(bigger, keys)


def test_inclusion_proof_refuses_bad_references(ledger: Ledger, tmp_path: Path) -> None:
    ev = Evidence(ledger, Keyring(tmp_path / "keys"))
    with pytest.raises(ValidationError):
        ev.inclusion_proof(99)
    with pytest.raises(ValidationError):
        ev.inclusion_proof(0)
    with pytest.raises(ValidationError, match="not in the tree"):
        ev.inclusion_proof(5, 4)
    with pytest.raises(ValidationError, match="tree size"):
        ev.inclusion_proof(1, 6)
    with pytest.raises(EntryNotFoundError):
        ev.inclusion_proof("no-such-id")
    with pytest.raises(BatchNotFoundError):
        ev.inclusion_proof("no-such-id", kind="transfer")
    with pytest.raises(ValidationError):
        ev.inclusion_proof("abc", kind="sequence")
    with pytest.raises(ValidationError):
        ev.consistency_proof(4, 3)


def test_consistency_proofs_and_the_client(ledger: Ledger, tmp_path: Path) -> None:
    ev = Evidence(ledger, Keyring(tmp_path / "keys"))
    keys = ev.keyring.public_keys()
    client = TreeHeadTracker(tmp_path / "client.json", keys, origin=ev.origin)
    client.update(ev.signed_tree_head())
    ledger.transfer("alice", "dave", 7)
    body = ev.consistency_proof(5)
    assert body["new_size"] == 7
    verifier.verify_consistency(5, 7, bytes.fromhex(body["old_root"]), bytes.fromhex(body["new_root"]),
                                [bytes.fromhex(p) for p in body["proof"]])
    client.update(ev.signed_tree_head(), lambda old, new: ev.consistency_proof(old, new)["proof"])
    assert client.head is not None
    assert client.head.tree_size == 7
    ledger.transfer("alice", "erin", 1)
    bundle = ev.inclusion_proof(8)
    with pytest.raises(VerificationError, match="consistency proof is needed"):
        verifier.verify_inclusion_bundle(bundle, keys, tracker=client)
    assert client.head.tree_size == 7
    verifier.verify_inclusion_bundle(bundle, keys, tracker=client,
                                     fetch_proof=lambda old, new: ev.consistency_proof(old, new)["proof"])
    assert client.head.tree_size == 9  # the client moved on to the head it just verified


def test_memory_ledger_gets_in_memory_keys() -> None:
    ev = Evidence(Ledger("memory://"))
    assert ev.keyring.directory is None
    assert ev.signed_tree_head().tree_size == 0


def test_async_evidence_on_the_engine(tmp_path: Path) -> None:
    from sardis_ledger import LedgerEngine

    async def scenario() -> None:
        engine = LedgerEngine(f"sqlite:///{tmp_path / 'e.db'}")
        await engine.create_entry("a", 5, "credit")
        moved = await engine.transfer("a", "b", 2)
        ev = AsyncEvidence.for_engine(engine, Keyring(tmp_path / "keys"))
        sth = await ev.signed_tree_head()
        bundle = await ev.inclusion_proof(moved.batch_id, kind="transfer")
        proven = verifier.verify_inclusion_bundle(bundle, verifier.load_public_keys(ev.public_keyring()))
        assert [p.sequence for p in proven] == [2, 3]
        assert (await ev.consistency_proof(1, sth.tree_size))["new_size"] == 3
        assert (await ev.verify()).ok
        await engine.close()

    asyncio.run(scenario())
