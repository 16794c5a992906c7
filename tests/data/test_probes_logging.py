"""Probe training reports on the module's logger, never with print()."""

from __future__ import annotations

import logging

import pytest

from codi2_agent.data.probes import train_probes


def test_training_logs_each_probe_and_prints_nothing(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    with caplog.at_level(logging.INFO, logger="codi2_agent.data.probes"):
        probes = train_probes(steps=1, n_train={"image": 16, "audio": 8}, n_test=8, batch_size=8, width=8)
    messages = [r.getMessage() for r in caplog.records if r.name == "codi2_agent.data.probes"]
    assert [m.split()[0] for m in messages] == ["image", "audio"]
    assert all(m.endswith(" s") and "probe trained in" in m for m in messages)
    assert {"shape", "image_all", "instrument", "audio_all"} <= set(probes.test_accuracy)
    assert capsys.readouterr().out == ""
