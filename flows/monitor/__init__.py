"""The monitoring job, in parts that pass typed outcomes:

- :mod:`~flows.monitor.config`: what a run does (:class:`MonitorConfig`), from operators' text;
- :mod:`~flows.monitor.planning`: the watermark, and which windows to process;
- :mod:`~flows.monitor.window`: one window gated, scored and decided (:class:`WindowOutcome`);
- :mod:`~flows.monitor.paging`: what an outcome pages, under the episode policy;
- :mod:`~flows.monitor.decisions`: the decisions table;
- :mod:`~flows.monitor.run`: the steps in order (:class:`Monitor`, :func:`run_monitor`).
"""

from flows.monitor.config import MonitorConfig, monitor_config
from flows.monitor.run import Monitor, MonitorReport, run_monitor
from flows.monitor.window import WindowOutcome

__all__ = ["Monitor", "MonitorConfig", "MonitorReport", "WindowOutcome", "monitor_config", "run_monitor"]
