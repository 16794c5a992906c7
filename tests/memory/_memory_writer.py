"""A separate process that writes to an ExemplarMemory (driven by test_memory_processes.py).

usage: python _memory_writer.py JSON_ARGS
  args: {"mode": "embedded"|"server", "path" | "host"+"port", "namespace", "tenant", "thread",
         "n", "batch", "go_file" (wait for it before writing), "expect_total" (wait until the tenant
         holds this many items, then report), "crash" (exit without closing anything)}
Prints one JSON line: {"ids": [...], "seen_total": int, "other_threads": [...]}.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

os.environ["ANONYMIZED_TELEMETRY"] = "False"

from codi2_agent.media import MediaRef, Modality
from codi2_agent.memory import ExemplarMemory, HashingEmbedder, NewItem


def main() -> None:
    args = json.loads(sys.argv[1])
    embedder = HashingEmbedder(dim=args.get("dim", 32))
    if args["mode"] == "server":
        memory = ExemplarMemory(
            host=args["host"], port=args["port"], embedder=embedder, namespace=args["namespace"]
        )
    else:
        memory = ExemplarMemory(args["path"], embedder=embedder, namespace=args["namespace"])
    if args.get("go_file"):
        while not Path(args["go_file"]).exists():
            time.sleep(0.01)
    tenant, thread, n, batch = args["tenant"], args["thread"], args["n"], args.get("batch", 10)
    ids: list[str] = []
    for start in range(0, n, batch):
        entries, texts = [], []
        for i in range(start, min(n, start + batch)):
            # Fake but well-formed artifact ids: this test is about Chroma, not the artifact store.
            aid = hashlib.sha256(f"{thread}:{i}".encode()).hexdigest()
            ref = MediaRef(id=aid, uri="artifact://" + aid, modality=Modality.IMAGE, mime="image/png", turn=i)
            entries.append(NewItem(thread, ref, caption=f"{thread} picture number {i}"))
            texts.append(f"{thread} picture number {i}")
        items = memory.add_many(tenant, entries, vectors=embedder.embed_text(texts))
        ids.extend(it.id for it in items)
    if args.get("crash"):
        print(json.dumps({"ids": ids}), flush=True)
        os._exit(0)  # no close(), no atexit: what a killed worker leaves behind
    seen = memory.count(tenant)
    deadline = time.monotonic() + 60
    while seen < args.get("expect_total", 0) and time.monotonic() < deadline:
        time.sleep(0.05)
        seen = memory.count(tenant)
    others = sorted(set(memory.threads(tenant)) - {thread})
    print(json.dumps({"ids": ids, "seen_total": seen, "other_threads": others}), flush=True)
    memory.close()


if __name__ == "__main__":
    main()
