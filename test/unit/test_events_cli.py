"""realm-events: summarize (JSON, section 6 numbers) and voxelize (section 2.7 window), errors."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from realm_testing.events import EVT3_BAG, EVT3_RAW, MONO_BAG, TE1, evt3_payloads
from realm_ros.events import encode_evt3
from realm_ros.events.bagio import make_typestore
from realm_ros.tools.events_cli import main

KEYS = ['events', 'on', 'off', 'sum_x', 'sum_y', 't_first_ns', 't_last_ns', 'triggers', 'duration', 'rate',
        'dropped', 'errors']


def run_main(capsys, *args):
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.parametrize('path', [EVT3_BAG, EVT3_RAW])
def test_summarize_matches_section6(capsys, path):
    rc, out, err = run_main(capsys, 'summarize', path)
    assert rc == 0, err
    s = json.loads(out)
    assert list(s) == KEYS
    assert (s['events'], s['on'], s['off'], s['sum_x'], s['sum_y']) == (
        TE1['events'], TE1['on'], TE1['off'], TE1['sum_x'], TE1['sum_y'])
    assert (s['t_first_ns'], s['t_last_ns']) == (TE1['t_first_us'] * 1000, TE1['t_last_us'] * 1000)
    assert s['triggers'] == TE1['triggers'] and s['dropped'] == 0 and s['errors'] == {}
    assert s['duration'] == pytest.approx(2.078178) and s['rate'] == pytest.approx(TE1['events'] / 2.078178)


def test_summarize_legacy_named_mono_bag(capsys):
    rc, out, _ = run_main(capsys, 'summarize', MONO_BAG, '--topic', '/event_camera/events')
    s = json.loads(out)
    assert rc == 0 and (s['events'], s['on'], s['sum_x'], s['sum_y'], s['t_first_ns'], s['t_last_ns']) == (
        100, 50, 34_450, 26_450, 0, 99_000)


def test_summarize_ros_time(capsys):
    rc, out, _ = run_main(capsys, 'summarize', EVT3_BAG, '--time', 'ros')
    s = json.loads(out)
    assert rc == 0 and s['events'] == TE1['events']
    assert 1_675_956_550_300_000_000 < s['t_first_ns'] < 1_675_956_550_330_000_000


def test_voxelize_reproduces_the_w1_oracle(capsys, tmp_path):
    out_file = tmp_path / 'grid.npy'
    rc, out, err = run_main(capsys, 'voxelize', EVT3_BAG, '--start-ns', 7_139_845_000, '--duration-ms', 50,
                            '--norm', 'none', '--out', out_file)
    assert rc == 0, err
    info = json.loads(out)
    g = np.load(out_file)
    assert g.shape == (5, 480, 640) and g.dtype == np.float32 and info['events'] == 3787
    assert float(g.astype(np.float64).sum()) == pytest.approx(-1461.0, abs=1e-3)
    assert int(np.count_nonzero(g)) == 5652
    rc, _, _ = run_main(capsys, 'voxelize', EVT3_RAW, '--start-ns', 7_139_845_000, '--duration-ms', 50,
                        '--out', tmp_path / 'd.npy', '--bins', 3)
    d = np.load(tmp_path / 'd.npy')
    assert rc == 0 and d.shape == (3, 480, 640)
    nz = d[d != 0].astype(np.float64)
    assert abs(nz.sum()) < 1e-2 and nz.std(ddof=1) == pytest.approx(1.0, abs=1e-4)  # dsec default


def test_errors_are_reported_not_raised(capsys, tmp_path):
    rc, _, err = run_main(capsys, 'summarize', tmp_path / 'missing')
    assert rc == 1 and 'missing' in err
    rc, _, err = run_main(capsys, 'summarize', EVT3_BAG, '--topic', '/nope')
    assert rc == 1 and '/nope' in err and '/event_camera/events' in err
    rc, _, err = run_main(capsys, 'voxelize', EVT3_BAG, '--start-ns', 0, '--duration-ms', -1, '--out',
                          tmp_path / 'x.npy')
    assert rc == 1 and 'duration' in err
    with pytest.raises(SystemExit):
        main(['voxelize', str(EVT3_BAG)])  # argparse: missing required options


def test_bag_with_two_event_topics_and_an_unknown_encoding(capsys, tmp_path):
    from rosbags.rosbag2 import StoragePlugin, Writer

    ts = make_typestore()
    T = ts.types

    def pkt(payload, seq, encoding):
        header = T['std_msgs/msg/Header'](stamp=T['builtin_interfaces/msg/Time'](sec=1, nanosec=seq), frame_id='c')
        return T['event_camera_msgs/msg/EventPacket'](header=header, height=480, width=640, seq=seq, time_base=0,
                                                      encoding=encoding, is_bigendian=False,
                                                      events=np.frombuffer(payload, np.uint8))

    bag = tmp_path / 'two'
    with Writer(bag, version=9, storage_plugin=StoragePlugin.MCAP) as w:
        a = w.add_connection('/a/events', 'event_camera_msgs/msg/EventPacket', typestore=ts)
        b = w.add_connection('/b/events', 'event_camera_msgs/msg/EventPacket', typestore=ts)
        for seq in (0, 1, 5):
            w.write(a, seq, bytes(ts.serialize_cdr(pkt(encode_evt3([seq], [1], [seq * 10], [1]), seq, 'evt3'),
                                                   'event_camera_msgs/msg/EventPacket')))
        w.write(b, 9, bytes(ts.serialize_cdr(pkt(evt3_payloads()[0][0], 0, 'evt2'),
                                             'event_camera_msgs/msg/EventPacket')))
    rc, _, err = run_main(capsys, 'summarize', bag)
    assert rc == 1 and '--topic' in err and '/a/events' in err and '/b/events' in err
    rc, out, _ = run_main(capsys, 'summarize', bag, '--topic', '/a/events')
    s = json.loads(out)
    assert rc == 0 and s['events'] == 3 and s['dropped'] == 3
    rc, out, err = run_main(capsys, 'summarize', bag, '--topic', '/b/events')
    s = json.loads(out)
    assert rc == 0 and s['events'] == 0 and s['errors'] == {'unknown_encoding': 1} and "'evt2'" in err


def test_console_script_runs():
    exe = shutil.which('realm-events')
    cmd = [exe] if exe else [sys.executable, '-m', 'realm_ros.tools.events_cli']
    proc = subprocess.run(cmd + ['summarize', str(MONO_BAG)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)['events'] == 100


# ------------------------------------------------------------------------------------------------ hostile RAW headers
_RAW_BODY = np.array([0x8000, 0x6001, 0x0005, 0x2807], '<u2').tobytes()  # TIME_HIGH, TIME_LOW, y=5, x=7 ON


@pytest.mark.parametrize('header, what', [
    (b'% evt 3.0\n% format EVT3;height=0;width=0\n% end\n', 'width 0'),
    (b'% evt 3.0\n% geometry 0x0\n% end\n', 'geometry width 0'),
    (b'% evt 3.0\n% format EVT3;height=720;width=xyz\n% end\n', "width 'xyz'"),
    (b'% evt 3.0\n% format EVT3;height=720;width=9223372036854775808\n% end\n', 'width 9223372036854775808'),
    (b'% evt 3.0\n% geometry 99999999999999999999x720\n% end\n', 'geometry width 99999999999999999999'),
    (b'% evt 3.0\n% format EVT3;height=-4;width=640\n% end\n', 'height -4'),
])
def test_summarize_raw_with_invalid_geometry_is_an_error_line(capsys, tmp_path, header, what):
    path = tmp_path / 'bad.raw'
    path.write_bytes(header + _RAW_BODY)
    rc, out, err = run_main(capsys, 'summarize', path)
    assert rc == 1 and out == ''
    assert err.startswith('realm-events: error: ') and str(path) in err and what in err, err
    assert 'Traceback' not in err


def test_summarize_raw_with_valid_geometry_still_works(capsys, tmp_path):
    path = tmp_path / 'ok.raw'
    path.write_bytes(b'% evt 3.0\n% format EVT3;height=16;width=8\n% end\n' + _RAW_BODY)
    rc, out, err = run_main(capsys, 'summarize', path)
    assert rc == 0, err
    s = json.loads(out)
    assert (s['events'], s['on'], s['sum_x'], s['sum_y'], s['t_first_ns']) == (1, 1, 7, 5, 1000)
    path.write_bytes(b'% evt 3.0\n% format EVT3;height=16;width=4\n% end\n' + _RAW_BODY)  # x=7 outside
    rc, out, _ = run_main(capsys, 'summarize', path)
    assert rc == 0 and json.loads(out)['errors'] == {'out_of_range': 1}


def test_summarize_invalid_raw_header_exits_nonzero_without_traceback(tmp_path):
    path = tmp_path / 'huge.raw'
    path.write_bytes(b'% evt 3.0\n% format EVT3;height=720;width=18446744073709551616\n% end\n' + _RAW_BODY)
    r = subprocess.run([sys.executable, '-m', 'realm_ros.tools.events_cli', 'summarize', str(path)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stdout == ''
    assert 'realm-events: error:' in r.stderr and 'Traceback' not in r.stderr, r.stderr


def test_unreadable_input_is_an_error_line(capsys, tmp_path):
    rc, _, err = run_main(capsys, 'summarize', tmp_path)  # a directory that is not a bag
    assert rc == 1 and err.startswith('realm-events: error: ')
