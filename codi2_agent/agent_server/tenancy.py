"""Per-tenant authorisation rules for the Agent Server, for any `langgraph_sdk.Auth` object.

`add_tenant_rules(auth)` registers them; the identity an ``@auth.authenticate`` handler returns is
the tenant. Threads carry their creator's tenant in their metadata (``owner``) and every thread
read, search, update, delete and run is filtered by it, so another tenant's thread is invisible
(searches skip it; fetching it is a 404); every run's ``configurable.tenant`` is set to the caller,
whatever the client sent, so memory, artifacts and the thread log are read and written as the
caller; store namespaces must start with ``("tenants", <identity>)`` (the graph's own thread log
lives outside them, unreachable over HTTP); assistants are the deployment's graphs (read only);
crons and anything not listed are refused (403).

Importing this module reads no settings: an auth module of your own (a real identity provider) can
use it without the built-in token table.
"""

from __future__ import annotations

from typing import Any

from langgraph_sdk import Auth

__all__ = ["OWNER", "STORE_ROOT", "add_tenant_rules"]

OWNER = "owner"  # the thread metadata key holding its tenant
STORE_ROOT = "tenants"  # store API namespaces are ("tenants", <identity>, ...)


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
