"""Generations (Neon's RFC 025, with claims in the object store; SPEC section 10).

Every attachment of a tenant (``tenant_create``, ``tenant_attach``, each restart of the
pageserver that holds it) claims the next generation: one more than the highest object
under ``tenants/<t>/generations/``, created with the conditional create (``If-None-Match:
*`` / ``link``), so two pageservers can never hold the same number; on a lost race the next
number is tried. The claim's content names the claiming pageserver (its ``node_id``), so a
pageserver that crashed between claiming and remembering its generation recognises its
own claim at restart instead of mistaking it for another attachment; and a nonce of the
claiming call, so a create retried after its reply was lost recognises its own claim, also
when copies of one data directory (one ``node_id``) claim the same number at once.

Every object a pageserver writes carries its generation; before it deletes anything, and
before each index upload, it lists the claims again (:func:`newest_claim`): a newer claim
means another pageserver holds the tenant, and this one becomes *stale* for it.
"""

from __future__ import annotations

import json
import secrets
import time
from functools import partial

import trio

from pageserver.remote.index import generation_key, generations_prefix, parse_generation_key
from pageserver.remote.storage import ObjectExists, ObjectNotFound, RemoteStorage, retrying


async def list_claims(storage: RemoteStorage, tenant_id: str, *, deadline: float | None) -> list[int]:
    objs = await retrying(
        f"list generations of {tenant_id}",
        lambda: storage.list_objects(generations_prefix(tenant_id)),
        deadline=deadline,
    )
    gens = [parse_generation_key(o.key) for o in objs]
    return sorted(g for g in gens if g is not None)


async def newest_claim(storage: RemoteStorage, tenant_id: str, *, deadline: float | None) -> int:
    """The highest claimed generation of the tenant (0 when none)."""
    claims = await list_claims(storage, tenant_id, deadline=deadline)
    return claims[-1] if claims else 0


async def _claim_field(
    storage: RemoteStorage, tenant_id: str, generation: int, field: str, *, deadline: float | None
) -> str | None:
    key = generation_key(tenant_id, generation)
    try:
        raw = await retrying(f"read {key}", lambda: storage.get(key), deadline=deadline)
        value = json.loads(raw).get(field)
        return value if isinstance(value, str) else None
    except (ObjectNotFound, ValueError, AttributeError):
        return None


async def claim_owner(
    storage: RemoteStorage, tenant_id: str, generation: int, *, deadline: float | None
) -> str | None:
    """The ``node_id`` written in a claim (None if unreadable)."""
    return await _claim_field(storage, tenant_id, generation, "node_id", deadline=deadline)


async def claim_generation(
    storage: RemoteStorage, tenant_id: str, node_id: str, *, deadline: float | None
) -> int:
    """Claim the next generation of the tenant; returns it."""
    gen = await newest_claim(storage, tenant_id, deadline=deadline) + 1
    # This call's own mark: two copies of one data directory (one node_id) claiming the
    # same number at once must not both take it for their own.
    nonce = secrets.token_hex(16)
    while True:
        body = json.dumps(
            {"generation": gen, "node_id": node_id, "nonce": nonce, "claimed_at": time.time()}
        ).encode()
        key = generation_key(tenant_id, gen)
        try:
            await retrying(f"claim {key}", partial(storage.create, key, body), deadline=deadline)
            return gen
        except ObjectExists:
            # A lost race, or our own create that succeeded although its reply was lost
            # (a retried request): the content tells which.
            if await _claim_field(storage, tenant_id, gen, "nonce", deadline=deadline) == nonce:
                return gen
            gen = max(gen + 1, await newest_claim(storage, tenant_id, deadline=deadline) + 1)
            await trio.lowlevel.checkpoint()
