"""Fixtures the attack-pass modules share: recording loopback upstreams (their classes are in
test_attack_pass_dec03), closed in teardown."""
import pytest

from .test_attack_pass_dec03 import RecordingH2, RecordingHttp1


@pytest.fixture
def h1_up():
    up = RecordingHttp1()
    yield up
    up.close()


@pytest.fixture
def h2_up():
    up = RecordingH2()
    yield up
    up.close()
