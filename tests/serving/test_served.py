"""Against a real `codi2-agent serve` (Ray Serve on loopback, see conftest.py): a Session through
`RemoteBackend`, batching, SSE streaming, the HTTP API's media by value and by reference, named
errors and timeouts, sessions kept on one of two replicas, and a clean stop. The stop test is last:
it ends the shared server."""

from __future__ import annotations

import base64
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import numpy as np
import pytest
from served_model import PAIR_PREFIX, STEPS, Server, port_is_free

from codi2_agent import Media, Session
from codi2_agent.artifacts import ArtifactNotFoundError, ArtifactStore
from codi2_agent.backends import GenerateRequest, GenerateResult, PromptTurn, TransientBackendError
from codi2_agent.serving import BackendTimeoutError, RemoteBackend, RemoteRequestError

COLOURS = ["red", "green", "blue", "yellow"]


def request(text: str, *, output: str = "image", seed: int = 0, **options: object) -> GenerateRequest:
    return GenerateRequest(
        prompt=(PromptTurn(role="user", parts=(text,)),), output=output, seed=seed, **options
    )


def stats(server: Server) -> dict:
    return httpx.get(server.url + "/v1/stats").json()


@pytest.fixture
def remote(server: Server, tmp_path: Path) -> RemoteBackend:
    backend = RemoteBackend(server.url, artifacts=tmp_path / "client-artifacts", timeout=120)
    yield backend
    backend.close()


def test_session_edits_a_picture_three_times_through_the_server(server: Server, tmp_path: Path) -> None:
    session = Session(model=server.url, thread="edits", root=tmp_path / "session", progress=False)
    try:
        assert session.backend.name.startswith("codi2-remote:") and server.url in session.backend.name
        made = session.say("draw a large red star in the desert")
        blue = session.say("make it blue")
        snowy = session.say("now put it in the snow")
        turns = [made, blue, snowy]
        assert [t.turn for t in turns] == [1, 2, 3]
        assert [t.task for t in turns] == ["generate", "edit", "edit"]
        local = ArtifactStore(tmp_path / "session" / "artifacts")
        for turn in turns:
            (ref,) = turn.refs
            assert ref.id in local  # downloaded into the session's own store
            picture = Media.open(local.path(ref).read_bytes())  # a real PNG, checked by our decoder
            assert picture.image.size == (32, 32) and picture.sha256() == ref.id
            assert turn.image is not None and turn.image.image.size == (32, 32)
        # lineage: each edit was made from the previous picture
        outputs = {r.turn: r for r in session.media_log() if r.role == "output"}
        assert outputs[2].parents == (made.refs[0].id,)
        assert outputs[3].parents == (blue.refs[0].id,)
        # the server holds the same artifacts: produced there, never uploaded back
        for turn in turns:
            assert httpx.get(f"{server.url}/v1/artifacts/{turn.refs[0].id}").status_code == 200
    finally:
        session.close()


def test_media_are_uploaded_once_then_referred_to_by_id(server: Server, tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    picture = Media.from_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    session = Session(model=server.url, thread="uploads", root=tmp_path / "s", progress=False)
    try:
        before = stats(server)["uploads"]
        first = session.say("make it blue", picture)
        assert stats(server)["uploads"] == before + 1
        session.say("make it green", picture)  # the same picture again: the server has it
        assert stats(server)["uploads"] == before + 1
        assert first.refs and first.refs[0].id in session.artifacts
    finally:
        session.close()


def test_generate_takes_media_by_value_and_by_reference(server: Server) -> None:
    rng = np.random.default_rng(3)
    png, mime = Media.from_image(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).to_bytes()
    inline = {"type": "image", "base64": base64.b64encode(png).decode(), "mime_type": mime}
    body = {"prompt": [{"role": "user", "parts": [inline, "make it blue"]}], "output": "image", "seed": 1}
    by_value = httpx.post(server.url + "/v1/generate", json=body, timeout=60)
    assert by_value.status_code == 200, by_value.text
    stored_id = ArtifactStore.parse_id(_sha256(png))
    by_reference = {**body, "prompt": [{"role": "user", "parts": [{"artifact": stored_id}, "make it blue"]}]}
    again = httpx.post(server.url + "/v1/generate", json=by_reference, timeout=60)
    assert again.status_code == 200, again.text
    assert again.json()["media"][0]["id"] == by_value.json()["media"][0]["id"]  # same input, same seed
    download = httpx.get(f"{server.url}/v1/artifacts/{again.json()['media'][0]['id']}")
    assert download.headers["content-type"] == "image/png"
    assert Media.open(download.content).image.size == (32, 32)
    # the outputs' bytes and embeddings can come with the answer instead
    attached = httpx.post(server.url + "/v1/generate?include=media,embeddings", json=body, timeout=60).json()
    (output,) = attached["media"]
    extra = attached["attachments"][output["id"]]
    assert _sha256(base64.b64decode(extra["base64"])) == output["id"] == by_value.json()["media"][0]["id"]
    assert extra["embedding"]["shape"][0] == 1
    refused = httpx.post(server.url + "/v1/generate?include=pixels", json=body, timeout=60)
    assert refused.status_code == 400 and "pixels" in refused.json()["error"]["message"]


def test_a_batch_answers_as_each_request_alone(server: Server, remote: RemoteBackend) -> None:
    requests = [
        request(f"draw a {c} circle in the snow", seed=i, caption_outputs=True) for i, c in enumerate(COLOURS)
    ]
    alone = [remote.generate(r) for r in requests]  # one after another: batches of one
    batches_before = stats(server)["batches"]
    together = remote.generate_batch(requests)  # sent at once: the server batches them
    after = stats(server)
    assert after["batches"] - batches_before < len(requests)  # fewer model calls than requests
    for one, batched in zip(alone, together, strict=True):
        assert batched.text == one.text
        assert batched.media[0].caption == one.media[0].caption  # captions read back in a batch too
        a = np.asarray(remote.artifacts.get(one.media[0]).image, dtype=np.int16)
        b = np.asarray(remote.artifacts.get(batched.media[0]).image, dtype=np.int16)
        assert np.abs(a - b).max() <= 2  # equal up to float rounding


def test_requests_sent_a_little_apart_reach_the_model_as_one_call(
    server: Server, remote: RemoteBackend
) -> None:
    # As sessions answered together send their next turns: one after another, 0.1 s apart, over 0.5 s
    # (the test server's quiet gap is 0.25 s). A window fixed from the first request would close on
    # the first three or so and start the model on those.
    requests = [request(f"draw a {COLOURS[i % 4]} square", seed=10 + i) for i in range(6)]
    results: list[GenerateResult | None] = [None] * len(requests)

    def send(i: int) -> None:
        results[i] = remote.generate(requests[i])

    before = stats(server)
    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
        time.sleep(0.1)
    for thread in threads:
        thread.join(timeout=120)
    after = stats(server)
    assert all(r is not None and r.media for r in results)
    assert after["batches"] - before["batches"] == 1  # one model call answered all six
    assert after["batch_sizes"].get("6", 0) == before["batch_sizes"].get("6", 0) + 1
    assert after["gather_seconds"] > before["gather_seconds"]  # the free model waited for them


def test_the_stream_sends_text_pieces_before_the_result(remote: RemoteBackend) -> None:
    # Random weights write their whole reply budget before a forced image's marker: many tokens.
    items = list(remote.stream(request("draw a red star", seed=3)))
    *pieces, final = items
    assert len(pieces) >= 2 and all(isinstance(p, str) and p for p in pieces)
    assert isinstance(final, GenerateResult) and "".join(pieces) == final.text
    assert final.media and final.media[0].id in remote.artifacts
    assert remote.generate(request("draw a red star", seed=3)).media[0].id == final.media[0].id


def test_the_embedder_and_token_counts_come_from_the_server(remote: RemoteBackend) -> None:
    result = remote.generate(request("draw a green square at night", seed=5))
    picture = remote.artifacts.get(result.media[0])
    vectors = remote.embedder.embed_media([picture])
    assert vectors.shape == (1, remote.embedder.dim) and np.isfinite(vectors).all()
    assert np.isclose(np.linalg.norm(vectors[0]), 1.0, atol=1e-4)
    texts = remote.embedder.embed_text(["a green square", "a red star"])
    assert texts.shape == (2, remote.embedder.dim) and not np.allclose(texts[0], texts[1])
    assert remote.embedder.name.startswith("codi2:")
    short = remote.count_tokens([PromptTurn(role="user", parts=("draw",))])
    longer = remote.count_tokens(
        [PromptTurn(role="user", parts=("draw a green square at night", result.media[0]))]
    )
    assert 0 < short < longer <= remote.context_limit


def test_info_names_the_precision_and_device_the_replica_loaded(remote: RemoteBackend) -> None:
    # the test server's config leaves dtype and device unset: float32 on the CPU, every parameter
    assert remote.info["parameters"] == {"dtypes": ["float32"], "devices": ["cpu"]}


def test_bad_input_comes_back_as_a_named_error(server: Server, remote: RemoteBackend) -> None:
    with pytest.raises(ValueError, match="num_inference_steps"):
        remote.generate(request("draw a red star", num_inference_steps=0))
    unknown = "ab" * 32
    with pytest.raises(ArtifactNotFoundError, match=unknown):
        remote.client.post_json(
            "/v1/generate", {"prompt": [{"role": "user", "parts": [{"artifact": unknown}, "make it blue"]}]}
        )
    with pytest.raises(RemoteRequestError, match="colour") as caught:
        remote.client.post_json("/v1/generate", {"prompt": [{"role": "user", "parts": ["x"]}], "colour": 1})
    assert caught.value.status == 400
    # the server is fine afterwards
    assert remote.generate(request("draw a red star", output="text")).text is not None


def test_a_slow_answer_times_out_with_a_named_error(remote: RemoteBackend) -> None:
    remote.client.timeout = 0.05
    started = time.monotonic()
    with pytest.raises(BackendTimeoutError, match="timeout") as caught:
        remote.generate(request("draw a red star", num_inference_steps=40))
    assert isinstance(caught.value, TransientBackendError) and isinstance(caught.value, TimeoutError)
    assert time.monotonic() - started < 5  # not retried: the graph's retry policy decides


def test_chat_model_runs_against_the_server(server: Server) -> None:
    from codi2_agent.tools import ChatCoDi2

    with ChatCoDi2(model=server.url, num_inference_steps=STEPS) as chat:
        answer = chat.invoke("draw a small red star in the snow", output="image")
        assert answer.content_blocks[-1]["type"] == "image"
        assert type(chat.backend).__name__ == "RemoteBackend"


def test_agent_tools_run_against_the_server(server: Server, tmp_path: Path) -> None:
    from codi2_agent.tools import CoDi2Toolkit

    toolkit = CoDi2Toolkit(model=server.url, root=tmp_path / "agent")
    try:
        tools = {t.name: t for t in toolkit.get_tools()}
        made = tools["codi2_generate"].invoke({"prompt": "a small red star in the snow"})
        edited = tools["codi2_edit"].invoke({"media": "the last image", "instruction": "make it blue"})
        assert "@m:" in made and "@m:" in edited and made != edited
        assert type(toolkit.session.backend).__name__ == "RemoteBackend"
        outputs = [r for r in toolkit.session.media_log() if r.role == "output"]
        assert len(outputs) == 2 and outputs[1].parents == (outputs[0].id,)
    finally:
        toolkit.close()


def pair_stats(server: Server, session: str) -> dict:
    """/v1/stats of the two-replica application, asked as `session`: its home replica answers."""
    response = httpx.get(
        server.url + PAIR_PREFIX + "/v1/stats", headers={"x-session-id": session}, timeout=60
    )
    response.raise_for_status()
    return response.json()


def test_two_replicas_keep_each_session_on_its_own_replica(server: Server, tmp_path: Path) -> None:
    sessions = [f"route-{i}" for i in range(4)]
    homes = {s: pair_stats(server, s)["replica"] for s in sessions}
    assert sorted(Counter(homes.values()).values()) == [2, 2]  # new sessions spread evenly
    backend = RemoteBackend(server.url + PAIR_PREFIX, artifacts=tmp_path / "pair-client", timeout=120)
    try:
        for round_ in range(2):
            for i, session in enumerate(sessions):
                before = pair_stats(server, session)
                result = backend.generate(request(f"draw a {COLOURS[i]} star", seed=round_, session=session))
                after = pair_stats(server, session)
                assert result.media and result.media[0].id in backend.artifacts
                # the model call ran on the session's home: its count, read there, grew by one
                assert before["replica"] == after["replica"] == homes[session]
                assert after["requests"] == before["requests"] + 1
        # a streamed answer goes home too
        before = pair_stats(server, sessions[0])
        items = list(backend.stream(request("draw a red star", seed=9, session=sessions[0])))
        assert isinstance(items[-1], GenerateResult)
        assert pair_stats(server, sessions[0])["requests"] == before["requests"] + 1
        # a request without a session is answered too (by either replica)
        assert backend.generate(request("draw a blue circle", seed=4)).media
    finally:
        backend.close()


def test_a_session_thread_stays_on_one_replica(server: Server, tmp_path: Path) -> None:
    # One probe session homed on each replica reads that replica's counts.
    probes: dict[str, str] = {}
    for i in range(8):
        probe = f"probe-{i}"
        probes.setdefault(pair_stats(server, probe)["replica"], probe)
        if len(probes) == 2:
            break
    assert len(probes) == 2
    before = {replica: pair_stats(server, probe)["requests"] for replica, probe in probes.items()}
    session = Session(model=server.url + PAIR_PREFIX, thread="sticky", root=tmp_path / "s", progress=False)
    try:
        turns = [session.say("draw a large red star in the desert"), session.say("make it blue"),
                 session.say("now put it in the snow")]  # fmt: skip
    finally:
        session.close()
    assert all(t.refs for t in turns)
    grown = sorted(pair_stats(server, probe)["requests"] - before[r] for r, probe in probes.items())
    assert grown == [0, 3]  # all three turns on one replica, none on the other


def test_the_server_stops_cleanly(server: Server) -> None:
    assert server.process.poll() is None
    done = threading.Event()
    codes: list[int] = []
    threading.Thread(target=lambda: (codes.append(server.stop()), done.set()), daemon=True).start()
    assert done.wait(90), "the server did not stop within 90 s"
    assert codes == [0], server.log_tail()
    assert "stopped" in server.log.read_text(errors="replace")
    assert port_is_free(server.port)


def _sha256(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()
