"""The Agent Server's built-in auth: a bearer token names the caller's tenant.

langgraph.json's ``auth.path`` names `auth`: `authenticate` looks an ``Authorization: Bearer <token>``
header up in the token table (`CODI2_SERVER_TOKENS`, a JSON object ``{"token": "tenant"}``, read when
the server starts, so a bad value stops it) and the caller becomes that tenant (its ``identity``); a
missing or unknown token is a 401. What a tenant may touch is `codi2_agent.agent_server.tenancy`'s
rules, registered here with `add_tenant_rules`.

A real identity provider replaces only the token table: write your own module with an ``Auth``
object whose ``@auth.authenticate`` handler verifies the provider's token (a JWT's signature, issuer
and audience against its published keys, or an introspection call) and returns
``{"identity": <the tenant>}``, call ``add_tenant_rules(auth)`` on it, and point ``auth.path`` at it.
"""

from __future__ import annotations

import hmac
import logging

from langgraph_sdk import Auth

from .settings import load_server_settings
from .tenancy import OWNER, STORE_ROOT, add_tenant_rules

__all__ = [
    "OWNER",
    "STORE_ROOT",
    "TokenTable",
    "add_tenant_rules",
    "auth",
    "authenticate",
]  # rules re-exported

logger = logging.getLogger(__name__)


class TokenTable:
    """Bearer tokens and the tenants they stand for; lookups compare in constant time."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = [(token.encode(), tenant) for token, tenant in tokens.items()]

    def __len__(self) -> int:
        return len(self._tokens)

    def tenant(self, authorization: str | None) -> str:
        """The tenant of an ``Authorization`` header value.

        Raises:
            Auth.exceptions.HTTPException: 401, a missing, malformed or unknown token.
        """
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Auth.exceptions.HTTPException(
                status_code=401, detail="send an 'Authorization: Bearer <token>' header"
            )
        presented = token.strip().encode()
        found = None
        for known, tenant in self._tokens:  # no early exit: timing does not tell which token matched
            if hmac.compare_digest(known, presented):
                found = tenant
        if found is None:
            raise Auth.exceptions.HTTPException(status_code=401, detail="unknown or expired token")
        return found


_table = TokenTable(load_server_settings().tokens)
if not _table:
    logger.warning("CODI2_SERVER_TOKENS is empty: the Agent Server refuses every request")

auth = Auth()


@auth.authenticate
async def authenticate(authorization: str | None) -> Auth.types.MinimalUserDict:
    """Bearer token → tenant (the caller's ``identity``)."""
    tenant = _table.tenant(authorization)
    return {"identity": tenant, "display_name": tenant}


add_tenant_rules(auth)
