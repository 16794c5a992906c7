"""LangGraph custom auth for the Agent Server: who the caller is (a tenant) and what it may touch.

langgraph.json's ``auth.path`` names `auth`. It has two halves:

- **authentication**, `authenticate`: an ``Authorization: Bearer <token>`` header is looked up in the
  token table (`CODI2_SERVER_TOKENS`, a JSON object ``{"token": "tenant"}``) and the caller becomes
  that tenant (its ``identity``). A missing or unknown token is a 401.
- **authorisation**, `add_tenant_rules`: threads carry their creator's tenant in their metadata
  (``owner``) and every thread read, search, update, delete and run is filtered by it, so another
  tenant's thread is invisible (searches skip it; fetching it is a 404); every run's
  ``configurable.tenant`` is set to the caller, whatever the client sent, so memory, artifacts and
  the thread log are read and written as the caller; store namespaces must start with
  ``("tenants", <identity>)``; assistants are the deployment's graphs (read only); crons and
  anything not listed are refused (403).

A real identity provider replaces only the first half: write your own module with an
``Auth`` object whose ``@auth.authenticate`` handler verifies the provider's token (a JWT's
signature, issuer and audience against its JWKS, or an introspection call) and returns
``{"identity": <the tenant>}``, call ``add_tenant_rules(auth)`` on it, and point ``auth.path`` at it.
"""

from __future__ import annotations

import hmac
import logging
from typing import Any

from langgraph_sdk import Auth

from .settings import load_server_settings

__all__ = ["OWNER", "STORE_ROOT", "TokenTable", "add_tenant_rules", "auth", "authenticate"]

logger = logging.getLogger(__name__)

OWNER = "owner"  # the thread metadata key holding its tenant
STORE_ROOT = "tenants"  # store API namespaces are ("tenants", <identity>, ...)


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


def _forbidden(detail: str) -> Auth.exceptions.HTTPException:
    return Auth.exceptions.HTTPException(status_code=403, detail=detail)


def _stamp_owner(metadata: Any, identity: str) -> None:
    """Record the owner in a thread's or run's metadata, in place: the server stores this very dict."""
    if isinstance(metadata, dict):
        metadata[OWNER] = identity


def add_tenant_rules(auth: Auth) -> Auth:
    """Register the per-tenant resource rules (see the module doc) on `auth`; returns it."""

    @auth.on
    async def refuse_the_rest(ctx: Auth.types.AuthContext, value: Any) -> bool:
        raise _forbidden(f"{ctx.resource}.{ctx.action} is not available on this server")

    @auth.on.threads.create
    async def own_new_thread(
        ctx: Auth.types.AuthContext, value: Auth.types.ThreadsCreate
    ) -> Auth.types.FilterType:
        _stamp_owner(value.get("metadata"), ctx.user.identity)
        return {OWNER: ctx.user.identity}

    @auth.on.threads.create_run
    async def run_as_caller(
        ctx: Auth.types.AuthContext, value: Auth.types.RunsCreate
    ) -> Auth.types.FilterType:
        kwargs: dict[str, Any] | None = value.get("kwargs")
        if kwargs is not None:  # the run's arguments, stored as they are after this handler
            config: dict[str, Any] = kwargs.get("config") or {}
            configurable: dict[str, Any] = config.get("configurable") or {}
            configurable["tenant"] = ctx.user.identity  # the graph reads its tenant from here
            config["configurable"] = configurable
            kwargs["config"] = config
        _stamp_owner(value.get("metadata"), ctx.user.identity)
        return {OWNER: ctx.user.identity}

    @auth.on.threads(actions=["read", "search", "update", "delete"])
    async def own_threads_only(ctx: Auth.types.AuthContext, value: Any) -> Auth.types.FilterType:
        return {OWNER: ctx.user.identity}

    @auth.on.assistants(actions=["read", "search"])
    async def read_assistants(ctx: Auth.types.AuthContext, value: Any) -> bool:
        return True  # the deployment's graphs; creating or changing assistants falls to refuse_the_rest

    @auth.on.store
    async def own_namespaces_only(ctx: Auth.types.AuthContext, value: Any) -> bool:
        mine = (STORE_ROOT, ctx.user.identity)
        namespace = tuple(value.get("namespace") or ())
        if not namespace and ctx.action in ("search", "list_namespaces"):
            value["namespace"] = mine  # an unscoped listing lists the caller's own namespaces
            return True
        if namespace[:2] != mine:
            raise _forbidden(f"store namespaces of this tenant start with {list(mine)}")
        return True

    return auth


add_tenant_rules(auth)
