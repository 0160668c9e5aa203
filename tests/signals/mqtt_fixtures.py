"""Fixtures for the MQTT tests (imported by ``conftest.py``): a real Mosquitto per test on
a free loopback port.

A missing ``mosquitto`` binary FAILS the tests (it does not skip them): CI installs it,
and a silently skipped integration suite is how a broken bridge ships.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.signals.mosquitto import Mosquitto, MosquittoMissing

DAEMON_USER, DAEMON_PASSWORD = "tradingd", "daemon-pass-4f1c9e"
PRODUCER_USER, PRODUCER_PASSWORD = "producer", "producer-pass-77ab01"
OPERATOR_USER, OPERATOR_PASSWORD = "operator", "operator-pass-c3d2e1"

REPO = Path(__file__).resolve().parents[2]
# The shipped ACL: producers may only publish signals, the operator may also publish
# control, the daemon reads signals/control and writes the rest.
ACL = (REPO / "config" / "mosquitto.acl").read_text()
USERS = {DAEMON_USER: DAEMON_PASSWORD, PRODUCER_USER: PRODUCER_PASSWORD,
         OPERATOR_USER: OPERATOR_PASSWORD}


def _start(broker: Mosquitto) -> Mosquitto:
    try:
        broker.start()
    except MosquittoMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    return broker


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """An anonymous broker: ``listener <port> 127.0.0.1``, ``allow_anonymous true``."""
    try:
        broker = Mosquitto(tmp_path / "mosquitto")
    except MosquittoMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    _start(broker)
    yield broker
    broker.stop()


@pytest.fixture
def mosquitto_auth(tmp_path: Path) -> Iterator[Mosquitto]:
    """The shipped ``config/mosquitto.conf`` and ``config/mosquitto.acl`` (port and file
    paths moved into a temp directory), with a password file made by
    ``mosquitto_passwd -b -c``."""
    try:
        broker = Mosquitto(tmp_path / "mosquitto-auth", users=USERS, acl=ACL,
                           template=REPO / "config" / "mosquitto.conf")
    except MosquittoMissing as exc:
        pytest.fail(str(exc), pytrace=False)
    _start(broker)
    yield broker
    broker.stop()
