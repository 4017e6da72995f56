"""HTTP routes for the ledger's evidence: signed tree heads, proofs, keys, verify.

Wire it into the app with one line (the routes then share the app's API keys,
error mapping and service)::

    app = create_app(service, routers=[audit_router()])

=====================================  ============================================
``GET  /tree-head``                    the latest signed tree head
``GET  /keys``                         the public keyring (current and retired keys)
``GET  /proofs/inclusion``             ``?sequence=N`` | ``?transfer_id=ID`` | ``?entry_id=ID``,
                                       optional ``&tree_size=M``: a self-contained
                                       inclusion bundle (see :mod:`sardis_ledger.verifier`)
``GET  /proofs/consistency``           ``?old=M&new=N`` (``new`` defaults to the signed head)
``POST /verify``                       the full audit (admin); 200 with ``ok: false``
                                       and ``first_bad_sequence`` when tampering is found
=====================================  ============================================

Who may call: any authenticated caller reads tree heads, keys and consistency
proofs (they are hashes, meant to be public); an inclusion proof reveals the
entries, so it needs read access to their accounts; ``verify`` needs admin.

The ledger comes from the :func:`get_evidence` dependency, which uses the app's
:class:`~mesh_fake_ledger.LedgerService` (``get_service``); override it with
``app.dependency_overrides[get_evidence]`` to serve another ledger.
"""

from __future__ import annotations

import json
import threading
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from sardis_ledger import Ledger
from sardis_ledger.errors import ValidationError
from sardis_ledger.evidence import Evidence

from .api_deps import PrincipalDep, ServiceDep
from .api_models import ErrorOut

__all__ = ["audit_router", "evidence_for", "get_evidence"]

_cache: dict[int, tuple[Ledger, Evidence]] = {}
_cache_lock = threading.Lock()


def evidence_for(ledger: Ledger) -> Evidence:
    """One :class:`Evidence` per ledger object (its keyring is the ledger's default),
    kept for the life of the process: an app serves one ledger for its lifetime."""
    with _cache_lock:
        found = _cache.get(id(ledger))
        if found is None or found[0] is not ledger:
            found = _cache[id(ledger)] = (ledger, Evidence(ledger))
        return found[1]


def get_evidence(service: ServiceDep) -> Evidence:
    """Dependency: the evidence of the app's ledger (the service's)."""
    return evidence_for(service.ledger)


EvidenceDep = Annotated[Evidence, Depends(get_evidence)]


# -------------------------------------------------------------- response shapes


class SignedTreeHeadOut(BaseModel):
    origin: str
    tree_size: int
    root: str = Field(description="Merkle root, hex")
    timestamp: int = Field(description="Milliseconds since the Unix epoch when it was signed")
    issued_at: str
    key_id: str = Field(description="SHA-256 of the raw Ed25519 public key, hex")
    signature: str = Field(description="Ed25519 signature over the message in sardis_ledger.verifier, hex")


class PublicKeyOut(BaseModel):
    key_id: str
    algorithm: str
    public_key: str
    created_at: str
    retired_at: str | None


class KeyringOut(BaseModel):
    keys: list[PublicKeyOut]
    current: str


class ProvenEntryOut(BaseModel):
    sequence: int
    leaf_index: int
    entry_id: str
    batch_id: str
    leaf: str = Field(description="The entry's canonical JSON: the exact bytes that were hashed")
    leaf_hash: str
    inclusion_proof: list[str]


class InclusionProofOut(BaseModel):
    origin: str
    transfer_id: str | None
    tree_size: int
    root: str
    entries: list[ProvenEntryOut]
    signed_tree_head: SignedTreeHeadOut
    consistency_proof: list[str] = Field(description="From tree_size to the signed head")


class ConsistencyProofOut(BaseModel):
    origin: str
    old_size: int
    new_size: int
    old_root: str
    new_root: str
    proof: list[str]
    signed_tree_head: SignedTreeHeadOut


class AuditReportOut(BaseModel):
    ok: bool
    entries_checked: int
    tree_size: int
    root: str
    first_bad_sequence: int | None
    problems: list[str]
    signed_heads_checked: int
    audit_store_checked: bool
    signed_tree_head: SignedTreeHeadOut | None


_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorOut, "description": "Missing or invalid API key"},
    403: {"model": ErrorOut, "description": "The key lacks the scope"},
    404: {"model": ErrorOut, "description": "No such transfer"},
    422: {"model": ErrorOut, "description": "Invalid input"},
    500: {"model": ErrorOut, "description": "Stored history does not verify (integrity_error)"},
    503: {"model": ErrorOut, "description": "Storage unavailable; retry"},
}

_Size = Annotated[int | None, Query(ge=0, le=2**62, description="Tree size (default: the signed head)")]


def _accounts(bundle: dict[str, Any]) -> list[str | None]:
    out: list[str | None] = []
    for item in bundle["entries"]:
        fields = json.loads(item["leaf"])
        out.append(fields.get("account_id"))
    return out


def audit_router(*, prefix: str = "", tags: list[str] | None = None) -> APIRouter:
    """The audit routes (see module docs), optionally under ``prefix``."""
    router = APIRouter(prefix=prefix, tags=list(tags or ["audit"]))

    @router.get("/tree-head", response_model=SignedTreeHeadOut, responses=_ERRORS)
    def tree_head(evidence: EvidenceDep, principal: PrincipalDep) -> dict[str, Any]:
        """The latest signed tree head. Keep it: later heads must be consistent with it."""
        return evidence.signed_tree_head().to_dict()

    @router.get("/keys", response_model=KeyringOut, responses=_ERRORS)
    def keys(evidence: EvidenceDep, principal: PrincipalDep) -> dict[str, Any]:
        """The public keyring: every key that ever signed a head of this ledger."""
        return evidence.public_keyring()

    @router.get("/proofs/inclusion", response_model=InclusionProofOut, responses=_ERRORS)
    def inclusion(
        evidence: EvidenceDep,
        principal: PrincipalDep,
        sequence: Annotated[int | None, Query(ge=1, le=2**62, description="Entry sequence number")] = None,
        transfer_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        entry_id: Annotated[str | None, Query(min_length=1, max_length=256)] = None,
        tree_size: _Size = None,
    ) -> dict[str, Any]:
        """Inclusion proof of an entry (or of every entry of a transfer) at ``tree_size``,
        with the consistency proof from there to the signed head."""
        given: list[tuple[int | str, str]] = [
            (v, k) for v, k in ((sequence, "sequence"), (transfer_id, "transfer"), (entry_id, "entry"))
            if v is not None
        ]
        if len(given) != 1:
            raise ValidationError("give exactly one of sequence, transfer_id or entry_id", field="sequence")
        bundle = evidence.inclusion_proof(given[0][0], tree_size, kind=given[0][1])
        principal.require_read(_accounts(bundle))
        if principal.scope == "account":
            # A leaf carries its account's running balance: a party to a transfer gets
            # the proofs of its own entries, not its counterparty's balance.
            bundle["entries"] = [
                item for item, acct in zip(bundle["entries"], _accounts(bundle), strict=True)
                if acct == principal.account
            ]
        return bundle

    @router.get("/proofs/consistency", response_model=ConsistencyProofOut, responses=_ERRORS)
    def consistency(
        evidence: EvidenceDep,
        principal: PrincipalDep,
        old: Annotated[int, Query(ge=0, le=2**62, description="The smaller tree size")],
        new: _Size = None,
    ) -> dict[str, Any]:
        """Proof that the tree of size ``old`` is a prefix of the tree of size ``new``."""
        return evidence.consistency_proof(old, new)

    @router.post("/verify", response_model=AuditReportOut, responses=_ERRORS)
    def verify(evidence: EvidenceDep, principal: PrincipalDep) -> dict[str, Any]:
        """Audit the whole ledger (admin). Slow on large ledgers: O(entries)."""
        principal.require_admin("verify the ledger")
        return evidence.verify().to_dict()

    return router
