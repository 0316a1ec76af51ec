"""/diagnostics of the perception node: the stream's, the workers' and the pipeline's plain-data reports as
diagnostic_msgs/DiagnosticStatus (``<node>: events`` and ``<node>: pipeline``)."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

from realm_ros.nodes import conversions as conv


def events_values(stream: Any, k_source: str, camera_info: Any, camera_info_problem: str,
                  publishers: Optional[int] = None, intake: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Key/values of the events status (stream counters, decoder counters, camera model in use, ``publishers``:
    how many publishers the events subscription has matched, and ``intake``: the packet intake's figures, while they
    exist)."""
    values: Dict[str, Any] = dict(stream.diagnostics()) if stream is not None else {'packets': 0}
    if publishers is not None:
        values['publishers'] = int(publishers)
    values.update(intake or {})
    values['intrinsics'] = k_source
    values['camera_info'] = ('ok' if camera_info is not None and not camera_info_problem else
                             camera_info_problem or 'not received: fallback intrinsics')
    return values


def node_statuses(name: str, stream: Any, runner: Any, pipeline: Any, *, k_source: str, camera_info: Any,
                  camera_info_problem: str, last_error: str, memory: Optional[Dict[str, Any]] = None,
                  events_publishers: Optional[int] = None, intake: Optional[Dict[str, Any]] = None) -> List[Any]:
    """The two DiagnosticStatus messages of a perception node (``memory``: a dict kept between calls, so that
    "dropping windows" is reported while it happens, not forever after; ``events_publishers``: publishers matched
    by the events subscription, None while it does not exist; ``intake``: the packet intake's figures)."""
    memory = {} if memory is None else memory
    ev = events_values(stream, k_source, camera_info, camera_info_problem, events_publishers, intake)
    problems = []
    if ev.get('bad_packets', 0) or ev.get('decode_errors', 0):
        problems.append('bad packets or decode errors')
    if camera_info is None or camera_info_problem:
        problems.append('no usable camera_info: fallback intrinsics')
    if ev.get('publishers') == 0:
        problems.append('no publisher on the events topic')
    elif ev.get('packets', 0) == 0:
        problems.append('no event packets received')
    frame = stream.frame_id if stream is not None else ''
    events_status = conv.diagnostic_status(f'{name}: events', 'WARN' if problems else 'OK',
                                           '; '.join(problems) or 'receiving events', ev, hardware_id=frame)
    pipe: Dict[str, Any] = dict(runner.diagnostics()) if runner is not None else {'state': 'unconfigured'}
    if runner is not None:                  # the names of the single-worker design, kept for dashboards
        pipe['windows_dropped'] = ev.get('windows_dropped', 0)
        pipe['output_rate_hz'] = pipe.get('dense_rate_hz', 0.0)
        pipe['latency_ms_p50'] = pipe.get('dense_latency_ms_p50', float('nan'))
        pipe['latency_ms_p95'] = pipe.get('dense_latency_ms_p95', float('nan'))
        pipe['latency_ms_max'] = pipe.get('dense_latency_ms_max', float('nan'))
        pipe['processing_ms_p50'] = pipe.get('dense_processing_ms_p50', float('nan'))
    warnings: List[str] = []
    if pipeline is not None:
        pipe.update(pipeline.diagnostics())
        warnings = list(pipeline.warnings)
    if runner is not None and runner.hold_active:
        warnings.append(f'memory hold: {runner.hold_reason}')
    if any(k.startswith('windows_skipped.') for k in pipe):
        warnings.append('windows skipped (see windows_skipped.*)')
    dropped = int(pipe.get('windows_dropped', 0) or 0)
    if dropped > memory.get('windows_dropped', dropped):
        warnings.append('overloaded: dropping windows (every packet is kept; see windows_dropped)')
    memory['windows_dropped'] = dropped
    if pipeline is None:
        level, message = 'ERROR', f'not configured: {last_error}'
    else:
        level, message = ('WARN' if warnings else 'OK'), '; '.join(warnings) or 'running'
    pipe_status = conv.diagnostic_status(f'{name}: pipeline', level, message, pipe, hardware_id=frame)
    return [events_status, pipe_status]

