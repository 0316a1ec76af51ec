"""The packet intake's gathering wait (realm_ros.nodes.intake.gather_wait_s): the configured wait, shortened at byte
rates where a batch would grow past GATHER_BATCH_BYTES (the publisher's shared-memory buffers must not be recycled
while packets wait in them)."""
import pytest

from realm_ros.nodes.intake import GATHER_BATCH_BYTES, gather_wait_s


def test_the_configured_wait_at_a_sensor_s_usual_rate():
    # 1000 packets/s of 3.8 KB: 8 ms collect ~30 KB, under the limit
    assert gather_wait_s(0.008, 8 * 3800, 0.008) == 0.008
    assert gather_wait_s(0.008, 3800, 0.100) == 0.008              # one packet after a quiet spell


@pytest.mark.parametrize('mb_per_s', [14.0, 50.0, 400.0])
def test_high_byte_rates_shorten_the_wait_to_keep_a_batch_under_the_limit(mb_per_s):
    interval = 0.008
    size = int(mb_per_s * 1e6 * interval)
    wait = gather_wait_s(0.008, size, interval)
    assert wait < 0.008
    assert wait * mb_per_s * 1e6 == pytest.approx(GATHER_BATCH_BYTES, rel=1e-9)   # the next batch at the limit


def test_no_gathering_and_nothing_measured():
    assert gather_wait_s(0.0, 10**6, 0.001) == 0.0                 # events.gather_ms 0: each packet as it arrives
    assert gather_wait_s(0.008, 0, 0.01) == 0.008                   # sizes unknown (messages, not serialized)
    assert gather_wait_s(0.008, 1000, 0.0) == 0.008
