"""codi2-agent under the LangGraph Agent Server (``langgraph dev`` / ``langgraph up``).

`langgraph.json` at the repository root names the three parts:

- ``graphs.codi2`` → `codi2_agent.agent_server.graph:make_graph`: the session graph, compiled without
  a checkpointer or store of its own (the server persists checkpoints and the thread log), one per
  tenant, over one model, artifact store and exemplar memory per server process;
- ``auth.path`` → `codi2_agent.agent_server.auth:auth`: bearer token → tenant, with the rules of
  `codi2_agent.agent_server.tenancy` that keep each tenant to its own threads, runs and store
  namespaces (an auth module for a real identity provider reuses them);
- ``http.app`` → `codi2_agent.agent_server.app:app`: ``GET /artifacts/{id}``, a produced medium's
  bytes for the tenant that holds it.

Importing any of them loads no model (the graph module imports only the standard library); the
model loads once per process, on the first run or in the background when the server starts.
Settings come from the environment: `CODI2_MODEL` (`codi2_agent.settings`) and the
``CODI2_SERVER_*`` variables of `codi2_agent.agent_server.settings`.
"""
