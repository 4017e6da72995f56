"""The pure parts of the engine: amounts, leaf bytes, ids and lazy receipts."""

from __future__ import annotations

import json
import os
import pickle
from decimal import Decimal, localcontext

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sardis_ledger import Ledger, Receipt, ValidationError
from sardis_ledger._requests import new_id, now_iso
from sardis_ledger.amounts import (
    MAX_MINOR_UNITS,
    canonical_amount,
    format_minor,
    from_minor,
    minor_units,
    parse_amount,
)
from sardis_ledger.models import LazyReceipt
from sardis_ledger.records import EntryRow, leaf_bytes

scales = st.integers(min_value=0, max_value=18)
units = st.integers(min_value=-MAX_MINOR_UNITS, max_value=MAX_MINOR_UNITS)


@given(units, scales)
def test_format_minor_is_the_plain_text_of_from_minor(u: int, scale: int) -> None:
    text = format_minor(u, scale)
    assert text == format(from_minor(u, scale), "f")
    assert "E" not in text
    assert "e" not in text
    assert Decimal(text) == Decimal(u).scaleb(-scale)
    if u and scale and u % 10**scale:
        assert not text.endswith("0")


@given(st.integers(min_value=1, max_value=MAX_MINOR_UNITS), scales)
def test_minor_units_round_trips_exactly(u: int, scale: int) -> None:
    assert minor_units(from_minor(u, scale), scale) == u
    assert minor_units(parse_amount(format_minor(u, scale), scale), scale) == u


def test_amount_math_ignores_the_callers_decimal_context() -> None:
    with localcontext() as ctx:
        ctx.prec = 3
        assert minor_units(Decimal("123456.789012"), 6) == 123456789012
        assert from_minor(123456789012, 6) == Decimal("123456.789012")
        assert canonical_amount(Decimal("123456.7890120")) == "123456.789012"
        with Ledger("memory://") as ledger:
            entry = ledger.create_entry("a", Decimal("123456.789012"), "credit")
            assert entry.running_balance == Decimal("123456.789012")


@pytest.mark.parametrize("text", ["1", "1.5", ".5", "5.", "1e3", " 2 ", "+3", "0.000001"])
def test_plain_decimal_text_is_accepted(text: str) -> None:
    assert parse_amount(text, 6) == Decimal(text.strip())


@pytest.mark.parametrize(
    "text", ["1_000", "NaN", "Infinity", "0x10", "1,0", "\u0661\u0662", "1e99999", "", "1 000", "١"]
)
def test_other_number_text_is_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        parse_amount(text, 6)


text = st.text(max_size=20)
ascii_id = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:@-]{0,20}", fullmatch=True)


@settings(max_examples=200)
@given(
    seq=st.integers(min_value=0, max_value=10**12), account=st.one_of(ascii_id, text), asset=st.one_of(ascii_id, text),
    amount=st.integers(min_value=1, max_value=MAX_MINOR_UNITS), running=units, scale=scales,
    reference=st.one_of(st.none(), text), reverses=st.one_of(st.none(), text), ids=st.tuples(text, text, text),
    direction=st.sampled_from(["credit", "debit"]),
    meta=st.dictionaries(st.text(max_size=5), st.one_of(st.integers(), st.text(max_size=5), st.none()), max_size=3),
)
def test_leaf_bytes_is_sorted_key_json_of_the_entry(
    seq: int, account: str, asset: str, amount: int, running: int, scale: int, reference: str | None,
    reverses: str | None, ids: tuple[str, str, str], direction: str, meta: dict[str, object],
) -> None:
    meta_text = json.dumps(meta, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    row = EntryRow(seq, ids[0], ids[1], account, asset, amount, direction, running, ids[2], reference, meta_text,
                   reverses)
    expected = {
        "account_id": account, "amount": format_minor(amount, scale), "asset": asset, "batch_id": ids[1],
        "created_at": ids[2], "entry_id": ids[0], "entry_type": direction, "metadata": meta, "reference": reference,
        "reverses": reverses, "running_balance": format_minor(running, scale), "sequence": seq + 1, "v": 1,
    }
    leaf = leaf_bytes(row, scale)
    assert leaf == json.dumps(expected, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    assert json.loads(leaf) == expected


def test_ids_are_unique_time_ordered_and_differ_in_a_forked_child() -> None:
    ids = [new_id() for _ in range(10_000)]
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 32 and int(i, 16) >= 0 for i in ids)
    assert ids[0][:12] <= ids[-1][:12]  # the time part never goes backwards within a process
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: report one id and leave at once
        os.write(write, new_id().encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child[12:22] != ids[0][12:22]  # a new node part: ids cannot collide with the parent's


def test_now_iso_is_utc_with_microseconds() -> None:
    stamp = now_iso()
    assert len(stamp) == 27
    assert stamp.endswith("Z")
    assert stamp[10] == "T"


def test_lazy_receipt_behaves_like_the_eager_one() -> None:
    calls: list[int] = []

    def prover(index: int) -> tuple[str, ...]:
        calls.append(index)
        return ("ab", "cd")

    lazy = LazyReceipt(3, 9, "ff", b"\x01" * 32, prover)
    eager = Receipt(3, 9, "01" * 32, "ff", ("ab", "cd"))
    assert calls == []  # nothing computed until read
    assert lazy.leaf_index == 3
    assert lazy.root == "ff"
    assert calls == []
    assert lazy == eager
    assert eager == lazy
    assert hash(lazy) == hash(eager)
    assert calls == [3]
    assert lazy.inclusion_proof == ("ab", "cd")
    assert calls == [3]
    assert repr(lazy) == repr(eager)
    assert lazy.to_dict() == eager.to_dict()
    copy = pickle.loads(pickle.dumps(lazy))
    assert type(copy) is Receipt
    assert copy == eager
    assert lazy != Receipt(3, 9, "01" * 32, "ff", ("ab",))


@settings(max_examples=150)
@given(before=st.integers(min_value=0, max_value=300), added=st.integers(min_value=1, max_value=70))
def test_a_commits_proofs_need_only_the_nodes_the_commit_knows(before: int, added: int) -> None:
    """Receipts are computed after the write from the frontier before it and the nodes
    it created; no stored node outside those is ever needed (so no storage read)."""
    from sardis_ledger import merkle
    from sardis_ledger._proofs import CommitProofs

    class NoStorage:
        def transaction(self, *, write: bool) -> object:
            raise AssertionError("a receipt of this commit read storage")

    frontier = merkle.Frontier()
    all_nodes: dict[tuple[int, int], bytes] = {}
    for i in range(before):
        all_nodes.update({(lv, ix): h for lv, ix, h in frontier.append(i.to_bytes(32, "big"))})
    stack = list(frontier.stack)
    created = [n for i in range(before, before + added) for n in frontier.append(i.to_bytes(32, "big"))]
    all_nodes.update({(lv, ix): h for lv, ix, h in created})
    proofs = CommitProofs(NoStorage(), before + added, stack, created)  # type: ignore[arg-type]
    root = frontier.root()
    for index in range(before, before + added):
        path = [bytes.fromhex(p) for p in proofs(index)]
        assert path == merkle.inclusion_proof(index, before + added, lambda lv, ix: all_nodes[(lv, ix)])
        assert merkle.verify_inclusion(index, before + added, index.to_bytes(32, "big"), path, root)
